//! Guest SDK for the wcluster host ABI v1 (see `abi/README.md` in the wcluster tree).
//!
//! The connection of the current call is a [`Conn`], which implements
//! [`std::io::Read`] (end of stream is `Ok(0)`) and [`std::io::Write`]. Host
//! error codes are the [`Error`] enum, which converts into [`std::io::Error`]
//! and back ([`Error::from_io`]). [`handler!`] exports `wcluster_abi_v1` and
//! `wcluster_handle` and calls your function with the call's [`Flags`]:
//!
//! ```ignore
//! use std::io::{Read, Write};
//! use wcluster::{Action, Conn, Flags};
//!
//! fn echo(_flags: Flags) -> std::io::Result<Action> {
//!     let mut conn = Conn::new();
//!     let mut buf = [0u8; 4096];
//!     loop {
//!         let n = conn.read(&mut buf)?;
//!         if n == 0 { break; }
//!         conn.write_all(&buf[..n])?;
//!     }
//!     conn.close_write()?;
//!     Ok(Action::Close)
//! }
//!
//! wcluster::handler!(echo);
//! ```
//!
//! Build the handler as a `cdylib` for `wasm32-wasi`. Between calls that
//! returned [`Action::Keep`] the connection holds no instance, and the next call
//! may run on another one: keep per-connection state out of globals, and push
//! unconsumed bytes back with [`Conn::unread`].
//!
//! Off `wasm32` the host functions are stubs that fail with [`Error::NoConn`],
//! so code using this crate can be unit-tested natively.

use std::fmt;
use std::io;

/// Raw host imports, exactly as in ABI v1. Prefer the safe wrappers.
pub mod sys {
    #[cfg(target_arch = "wasm32")]
    #[link(wasm_import_module = "wcluster")]
    extern "C" {
        pub fn conn_read(buf: *mut u8, buf_len: i32) -> i32;
        pub fn conn_write(buf: *const u8, buf_len: i32) -> i32;
        pub fn conn_close_write() -> i32;
        pub fn conn_unread(buf: *const u8, buf_len: i32) -> i32;
        pub fn conn_peer_addr(buf: *mut u8, buf_len: i32) -> i32;
        pub fn conn_id() -> i64;
        pub fn worker_id() -> i32;
        pub fn log(level: i32, buf: *const u8, buf_len: i32) -> i32;
        // Added within v1: imported only by a module that calls them.
        pub fn config_get(key: *const u8, key_len: i32, buf: *mut u8, buf_len: i32) -> i32;
        pub fn kv_get(key: *const u8, key_len: i32, buf: *mut u8, buf_len: i32) -> i32;
        pub fn kv_set(key: *const u8, key_len: i32, value: *const u8, value_len: i32) -> i32;
        pub fn kv_delete(key: *const u8, key_len: i32) -> i32;
        pub fn kv_add(key: *const u8, key_len: i32, delta: i64, out: *mut i64) -> i32;
        pub fn kv_list(prefix: *const u8, prefix_len: i32, buf: *mut u8, buf_len: i32) -> i32;
    }

    /// Native stand-ins so the crate builds and tests off wasm: every call
    /// behaves as if made outside a connection.
    #[cfg(not(target_arch = "wasm32"))]
    mod native {
        use super::super::{ERR_NOT_FOUND, ERR_NO_CONN, ERR_UNAVAILABLE};
        pub unsafe fn conn_read(_: *mut u8, _: i32) -> i32 {
            ERR_NO_CONN
        }
        pub unsafe fn conn_write(_: *const u8, _: i32) -> i32 {
            ERR_NO_CONN
        }
        pub unsafe fn conn_close_write() -> i32 {
            ERR_NO_CONN
        }
        pub unsafe fn conn_unread(_: *const u8, _: i32) -> i32 {
            ERR_NO_CONN
        }
        pub unsafe fn conn_peer_addr(_: *mut u8, _: i32) -> i32 {
            ERR_NO_CONN
        }
        pub unsafe fn conn_id() -> i64 {
            0
        }
        pub unsafe fn worker_id() -> i32 {
            0
        }
        pub unsafe fn log(_: i32, _: *const u8, _: i32) -> i32 {
            0
        }
        pub unsafe fn config_get(_: *const u8, _: i32, _: *mut u8, _: i32) -> i32 {
            ERR_NOT_FOUND
        }
        // No store off wasm.
        pub unsafe fn kv_get(_: *const u8, _: i32, _: *mut u8, _: i32) -> i32 {
            ERR_UNAVAILABLE
        }
        pub unsafe fn kv_set(_: *const u8, _: i32, _: *const u8, _: i32) -> i32 {
            ERR_UNAVAILABLE
        }
        pub unsafe fn kv_delete(_: *const u8, _: i32) -> i32 {
            ERR_UNAVAILABLE
        }
        pub unsafe fn kv_add(_: *const u8, _: i32, _: i64, _: *mut i64) -> i32 {
            ERR_UNAVAILABLE
        }
        pub unsafe fn kv_list(_: *const u8, _: i32, _: *mut u8, _: i32) -> i32 {
            ERR_UNAVAILABLE
        }
    }
    #[cfg(not(target_arch = "wasm32"))]
    pub use native::*;
}

/// The ABI version this crate speaks (`wcluster_abi_v1`).
pub const ABI_VERSION: u32 = 1;

/// The most bytes [`Conn::unread`] may hold pending for one connection.
pub const MAX_UNREAD: usize = 64 << 10;

pub const ERR_FAULT: i32 = -1;
pub const ERR_INVALID: i32 = -2;
pub const ERR_CLOSED: i32 = -3;
pub const ERR_TIMEOUT: i32 = -4;
pub const ERR_TOO_LARGE: i32 = -5;
pub const ERR_NO_CONN: i32 = -6;
pub const ERR_SHUTDOWN: i32 = -7;
pub const ERR_NOT_FOUND: i32 = -8;
pub const ERR_UNAVAILABLE: i32 = -9;
pub const ERR_QUOTA: i32 = -10;

/// What `wcluster_handle` returns for a handler's own error (an `io::Error`
/// that is no host code): results `<= -100` are the guest's, `-1..-99` the
/// host's codes.
pub const ERR_HANDLER: i32 = -100;

/// The longest key of the key-value store, in bytes.
pub const KV_MAX_KEY: usize = 1024;

/// A host error code (the negative results of the ABI functions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Error {
    /// `ERR_FAULT` (-1): a buffer lies outside guest memory (a guest bug).
    Fault,
    /// `ERR_INVALID` (-2): an argument is out of range.
    Invalid,
    /// `ERR_CLOSED` (-3): the connection was reset or closed; return `Close`.
    Closed,
    /// `ERR_TIMEOUT` (-4): idle timeout or call deadline; return `Close`.
    Timeout,
    /// `ERR_TOO_LARGE` (-5): `unread` would hold more than [`MAX_UNREAD`] bytes;
    /// a key-value store key or value over its limit.
    TooLarge,
    /// `ERR_NO_CONN` (-6): called outside `wcluster_handle`.
    NoConn,
    /// `ERR_SHUTDOWN` (-7): write after `close_write`.
    Shutdown,
    /// `ERR_NOT_FOUND` (-8): no config value or key-value store value has that name.
    NotFound,
    /// `ERR_UNAVAILABLE` (-9): the key-value store failed; try again later
    /// (an HTTP handler answers 503).
    Unavailable,
    /// `ERR_QUOTA` (-10): the change would take the tenant's key-value store
    /// past its quota; nothing was changed.
    Quota,
    /// A negative code this SDK does not know.
    Other(i32),
}

impl Error {
    /// The error for a negative host result.
    pub fn from_code(code: i32) -> Error {
        match code {
            ERR_FAULT => Error::Fault,
            ERR_INVALID => Error::Invalid,
            ERR_CLOSED => Error::Closed,
            ERR_TIMEOUT => Error::Timeout,
            ERR_TOO_LARGE => Error::TooLarge,
            ERR_NO_CONN => Error::NoConn,
            ERR_SHUTDOWN => Error::Shutdown,
            ERR_NOT_FOUND => Error::NotFound,
            ERR_UNAVAILABLE => Error::Unavailable,
            ERR_QUOTA => Error::Quota,
            c => Error::Other(c),
        }
    }

    /// The host's numeric code.
    pub fn code(self) -> i32 {
        match self {
            Error::Fault => ERR_FAULT,
            Error::Invalid => ERR_INVALID,
            Error::Closed => ERR_CLOSED,
            Error::Timeout => ERR_TIMEOUT,
            Error::TooLarge => ERR_TOO_LARGE,
            Error::NoConn => ERR_NO_CONN,
            Error::Shutdown => ERR_SHUTDOWN,
            Error::NotFound => ERR_NOT_FOUND,
            Error::Unavailable => ERR_UNAVAILABLE,
            Error::Quota => ERR_QUOTA,
            Error::Other(c) => c,
        }
    }

    /// The symbolic name used by the spec (`ErrClosed`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Error::Fault => "ErrFault",
            Error::Invalid => "ErrInvalid",
            Error::Closed => "ErrClosed",
            Error::Timeout => "ErrTimeout",
            Error::TooLarge => "ErrTooLarge",
            Error::NoConn => "ErrNoConn",
            Error::Shutdown => "ErrShutdown",
            Error::NotFound => "ErrNotFound",
            Error::Unavailable => "ErrUnavailable",
            Error::Quota => "ErrQuota",
            Error::Other(_) => "unknown",
        }
    }

    /// The wcluster error inside an `io::Error` made from one, if any.
    pub fn from_io(e: &io::Error) -> Option<Error> {
        e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()).copied()
    }

    fn io_kind(self) -> io::ErrorKind {
        match self {
            Error::Fault | Error::Invalid | Error::TooLarge => io::ErrorKind::InvalidInput,
            Error::Closed => io::ErrorKind::ConnectionReset,
            Error::Timeout => io::ErrorKind::TimedOut,
            Error::NoConn => io::ErrorKind::NotConnected,
            Error::Shutdown => io::ErrorKind::BrokenPipe,
            Error::NotFound => io::ErrorKind::NotFound,
            Error::Unavailable | Error::Quota | Error::Other(_) => io::ErrorKind::Other,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self {
            Error::Fault => "buffer outside guest memory",
            Error::Invalid => "invalid argument",
            Error::Closed => "connection closed",
            Error::Timeout => "timeout",
            Error::TooLarge => "too large",
            Error::NoConn => "no connection",
            Error::Shutdown => "write after close_write",
            Error::NotFound => "not found",
            Error::Unavailable => "key-value store unavailable",
            Error::Quota => "key-value store quota reached",
            Error::Other(c) => return write!(f, "wcluster: error {}", c),
        };
        write!(f, "wcluster: {}", what)
    }
}

impl std::error::Error for Error {}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        io::Error::new(e.io_kind(), e)
    }
}

/// Turns a host result into `Ok(value)` or the error it encodes.
fn check(r: i32) -> Result<usize, Error> {
    if r < 0 {
        Err(Error::from_code(r))
    } else {
        Ok(r as usize)
    }
}

/// Clamps a buffer length to what an `i32` argument can carry.
fn arg_len(len: usize) -> i32 {
    if len > i32::MAX as usize {
        i32::MAX
    } else {
        len as i32
    }
}

/// The flags passed to `wcluster_handle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(i32);

impl Flags {
    /// `FLAG_NEW` (1): first call for this connection.
    pub const NEW: Flags = Flags(1 << 0);
    /// `FLAG_DRAINING` (2): the worker is stopping or reloading; finish the
    /// exchange in progress (an HTTP handler answers `Connection: close`) and
    /// return [`Action::Close`].
    pub const DRAINING: Flags = Flags(1 << 1);

    pub const fn from_bits(bits: i32) -> Flags {
        Flags(bits)
    }
    pub const fn bits(self) -> i32 {
        self.0
    }
    /// True when every bit of `other` is set.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
    pub const fn is_new(self) -> bool {
        self.contains(Flags::NEW)
    }
    pub const fn is_draining(self) -> bool {
        self.contains(Flags::DRAINING)
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

/// What the host does with the connection when the handler returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Action {
    /// `CLOSE` (0): close the connection.
    Close = 0,
    /// `KEEP` (1): park the connection, holding no instance, until the peer
    /// sends more (or closes); the handler is then called again, perhaps on
    /// another instance.
    Keep = 1,
}

/// What a handler passed to [`handler!`] may return.
///
/// * [`Action`]: returned as is.
/// * `Result<Action, Error>`: `Err(Closed)` and `Err(Timeout)` become
///   [`Action::Close`] (what the spec asks for); any other error is returned
///   as its negative code, which the host logs before closing the connection.
/// * `Result<Action, io::Error>`: the same for wcluster errors inside; any
///   other error is written to the worker's log and returned as
///   [`ERR_HANDLER`] (-100).
pub trait HandlerResult {
    /// The value `wcluster_handle` returns to the host.
    fn into_code(self) -> i32;
}

impl HandlerResult for Action {
    fn into_code(self) -> i32 {
        self as i32
    }
}

impl HandlerResult for Result<Action, Error> {
    fn into_code(self) -> i32 {
        match self {
            Ok(a) => a as i32,
            Err(Error::Closed) | Err(Error::Timeout) => Action::Close as i32,
            Err(e) => e.code(),
        }
    }
}

impl HandlerResult for io::Result<Action> {
    fn into_code(self) -> i32 {
        match self {
            Ok(a) => a as i32,
            Err(e) => match Error::from_io(&e) {
                Some(w) => Err::<Action, Error>(w).into_code(),
                None => {
                    log(Level::Error, &format!("handler error: {}", e));
                    ERR_HANDLER
                }
            },
        }
    }
}

/// Exports the ABI v1 entry points for a handler function.
///
/// `wcluster::handler!(serve);` defines `wcluster_abi_v1` (the version
/// marker) and `wcluster_handle`, which calls `serve(flags)`; `serve` takes
/// [`Flags`] and returns any [`HandlerResult`]. Use it once, in a `cdylib`.
#[macro_export]
macro_rules! handler {
    ($f:expr) => {
        /// ABI version marker; the host never calls it.
        #[no_mangle]
        pub extern "C" fn wcluster_abi_v1() {}

        /// Entry point: called for each connection event.
        #[no_mangle]
        pub extern "C" fn wcluster_handle(flags: i32) -> i32 {
            $crate::HandlerResult::into_code(($f)($crate::Flags::from_bits(flags)))
        }
    };
}

/// The connection being served by the current call.
///
/// It is a zero-sized handle: every `Conn` refers to the connection of the
/// call in progress. Reads return `Ok(0)` at end of stream (the peer
/// half-closed); writes write everything or fail.
#[derive(Debug, Clone, Copy, Default)]
pub struct Conn {
    _private: (),
}

impl Conn {
    pub const fn new() -> Conn {
        Conn { _private: () }
    }

    /// Reads into `buf`, waiting for at least one byte. `Ok(0)` is end of
    /// stream (or an empty `buf`).
    pub fn read_raw(&self, buf: &mut [u8]) -> Result<usize, Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        check(unsafe { sys::conn_read(buf.as_mut_ptr(), arg_len(buf.len())) })
    }

    /// Writes all of `buf` (for buffers up to 2 GiB; larger ones are written
    /// in part and the count returned).
    pub fn write_raw(&self, buf: &[u8]) -> Result<usize, Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        check(unsafe { sys::conn_write(buf.as_ptr(), arg_len(buf.len())) })
    }

    /// Half-closes the connection: the peer reads end of stream, and this side
    /// may still read. Later writes fail with [`Error::Shutdown`].
    pub fn close_write(&self) -> Result<(), Error> {
        check(unsafe { sys::conn_close_write() }).map(|_| ())
    }

    /// Pushes `buf` back in front of the read stream: the next read, in this
    /// call or a later one, returns it first. At most [`MAX_UNREAD`] bytes may
    /// be pending. Push back only an incomplete message before returning
    /// [`Action::Keep`]: the host still waits for new bytes from the peer.
    pub fn unread(&self, buf: &[u8]) -> Result<(), Error> {
        if buf.is_empty() {
            return Ok(());
        }
        if buf.len() > i32::MAX as usize {
            return Err(Error::TooLarge);
        }
        check(unsafe { sys::conn_unread(buf.as_ptr(), buf.len() as i32) }).map(|_| ())
    }

    /// The peer's address as text (`127.0.0.1:51234`, `[::1]:51234`).
    pub fn peer_addr(&self) -> Result<String, Error> {
        let mut buf = vec![0u8; 64];
        loop {
            let n = check(unsafe { sys::conn_peer_addr(buf.as_mut_ptr(), arg_len(buf.len())) })?;
            if n <= buf.len() {
                buf.truncate(n);
                return Ok(match String::from_utf8(buf) {
                    Ok(s) => s,
                    Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
                });
            }
            buf.resize(n, 0);
        }
    }

    /// The connection's id within its worker, stable across its calls.
    pub fn id(&self) -> i64 {
        conn_id()
    }
}

impl io::Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(self.read_raw(buf)?)
    }
}

impl io::Read for &Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(self.read_raw(buf)?)
    }
}

impl io::Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(self.write_raw(buf)?)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl io::Write for &Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(self.write_raw(buf)?)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The id of the current connection within its worker; 0 outside a connection.
pub fn conn_id() -> i64 {
    unsafe { sys::conn_id() }
}

/// The id (1..N) of the worker process serving the call.
pub fn worker_id() -> u32 {
    unsafe { sys::worker_id() as u32 }
}

/// Log levels for [`log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Level {
    Debug = 0,
    Info = 1,
    Warn = 2,
    Error = 3,
}

/// Writes `msg` to the worker's log at `level`, tagged by the host with the
/// worker and connection ids. Failures are ignored (there is nowhere to report
/// them); use [`sys::log`] to see the result.
pub fn log(level: Level, msg: &str) {
    if !msg.is_empty() {
        unsafe {
            sys::log(level as i32, msg.as_ptr(), arg_len(msg.len()));
        }
    }
}

/// Calls `f(buf)` for a host function that copies what fits of a value
/// into `buf` and returns its full length, growing `buf` until it fits.
fn read_grown(mut f: impl FnMut(&mut [u8]) -> i32, first: usize) -> Result<Vec<u8>, Error> {
    let mut buf = vec![0u8; first];
    loop {
        let n = check(f(&mut buf))?;
        if n <= buf.len() {
            buf.truncate(n);
            return Ok(buf);
        }
        buf.resize(n, 0);
    }
}

/// The config value the operator set under `name` for this tenant (the
/// `config` table), or `None`.
pub fn config(name: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, Error> {
    let k = name.as_ref();
    let r = read_grown(
        |b| unsafe { sys::config_get(k.as_ptr(), arg_len(k.len()), b.as_mut_ptr(), arg_len(b.len())) },
        256,
    );
    match r {
        Err(Error::NotFound) => Ok(None),
        r => r.map(Some),
    }
}

// The key-value store: the tenant's own, shared by every instance of every
// worker, durable (abi/README.md, "The key-value store"). Keys and values
// are any bytes; every function may fail with `Error::Unavailable` (try
// again later) and `Error::TooLarge` (a key over [`KV_MAX_KEY`], a value over
// the tenant's `kv_max_value`).

/// The value of `key`, or `None` when it has none.
pub fn kv_get(key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, Error> {
    let k = key.as_ref();
    let r = read_grown(
        |b| unsafe { sys::kv_get(k.as_ptr(), arg_len(k.len()), b.as_mut_ptr(), arg_len(b.len())) },
        512,
    );
    match r {
        Err(Error::NotFound) => Ok(None),
        r => r.map(Some),
    }
}

/// Sets `key` to `value`; returns once the value is durable and every worker
/// reads it. `Error::Quota` when the tenant's store would pass its quota.
pub fn kv_set(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<(), Error> {
    let (k, v) = (key.as_ref(), value.as_ref());
    if v.len() > i32::MAX as usize {
        return Err(Error::TooLarge);
    }
    check(unsafe { sys::kv_set(k.as_ptr(), arg_len(k.len()), v.as_ptr(), v.len() as i32) }).map(|_| ())
}

/// Removes `key` (no error when it had no value).
pub fn kv_delete(key: impl AsRef<[u8]>) -> Result<(), Error> {
    let k = key.as_ref();
    check(unsafe { sys::kv_delete(k.as_ptr(), arg_len(k.len())) }).map(|_| ())
}

/// Atomically adds `delta` to the integer value of `key` (decimal text; no
/// value counts as 0) and returns the sum. `Error::Invalid` when the value is
/// not an integer or the sum overflows.
pub fn kv_add(key: impl AsRef<[u8]>, delta: i64) -> Result<i64, Error> {
    let k = key.as_ref();
    let mut sum = 0i64;
    check(unsafe { sys::kv_add(k.as_ptr(), arg_len(k.len()), delta, &mut sum) })?;
    Ok(sum)
}

/// The keys beginning with `prefix`, in byte order (at most 1,000).
pub fn kv_list(prefix: impl AsRef<[u8]>) -> Result<Vec<Vec<u8>>, Error> {
    let p = prefix.as_ref();
    let listing = read_grown(
        |b| unsafe { sys::kv_list(p.as_ptr(), arg_len(p.len()), b.as_mut_ptr(), arg_len(b.len())) },
        4096,
    )?;
    Ok(split_listing(&listing))
}

/// Splits a `kv_list` listing: each key a little-endian u32 length, then its bytes.
fn split_listing(mut b: &[u8]) -> Vec<Vec<u8>> {
    let mut keys = Vec::new();
    while b.len() >= 4 {
        let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if n > b.len() - 4 {
            break;
        }
        keys.push(b[4..4 + n].to_vec());
        b = &b[4 + n..];
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_round_trip() {
        for c in -10..0 {
            assert_eq!(Error::from_code(c).code(), c);
        }
        assert_eq!(Error::from_code(-3), Error::Closed);
        let io: io::Error = Error::Timeout.into();
        assert_eq!(io.kind(), io::ErrorKind::TimedOut);
        assert_eq!(Error::from_io(&io), Some(Error::Timeout));
        assert_eq!(Error::from_io(&io::Error::from(io::ErrorKind::Other)), None);
    }

    #[test]
    fn results() {
        assert_eq!(Action::Keep.into_code(), 1);
        assert_eq!(Err::<Action, Error>(Error::Closed).into_code(), 0);
        assert_eq!(Err::<Action, Error>(Error::Fault).into_code(), -1);
        let r: io::Result<Action> = Err(Error::Shutdown.into());
        assert_eq!(r.into_code(), -7);
        let r: io::Result<Action> = Err(Error::Timeout.into());
        assert_eq!(r.into_code(), 0);
        let r: io::Result<Action> = Err(io::Error::new(io::ErrorKind::Other, "mine"));
        assert_eq!(r.into_code(), ERR_HANDLER);
    }

    #[test]
    fn flags() {
        let f = Flags::from_bits(3);
        assert!(f.is_new() && f.is_draining());
        assert!(!Flags::from_bits(1).is_draining());
        assert_eq!((Flags::NEW | Flags::DRAINING).bits(), 3);
    }

    #[test]
    fn native_stubs() {
        let mut c = Conn::new();
        let mut b = [0u8; 4];
        assert_eq!(c.read_raw(&mut b), Err(Error::NoConn));
        assert_eq!(io::Read::read(&mut c, &mut []).unwrap(), 0);
        assert_eq!(c.peer_addr(), Err(Error::NoConn));
        assert_eq!(kv_get("k"), Err(Error::Unavailable));
        assert_eq!(kv_set("k", b"v"), Err(Error::Unavailable));
        assert_eq!(kv_add("k", 1), Err(Error::Unavailable));
        assert_eq!(config("name"), Ok(None));
    }

    #[test]
    fn listing() {
        let b = b"\x01\x00\x00\x00a\x00\x00\x00\x00\x02\x00\x00\x00bc";
        assert_eq!(split_listing(b), vec![b"a".to_vec(), Vec::new(), b"bc".to_vec()]);
        assert_eq!(split_listing(b"\x09\x00\x00\x00ab"), Vec::<Vec<u8>>::new());
        let mut calls = 0;
        let got = read_grown(
            |buf| {
                calls += 1;
                let v = b"0123456789";
                let n = v.len().min(buf.len());
                buf[..n].copy_from_slice(&v[..n]);
                v.len() as i32
            },
            4,
        );
        assert_eq!((got, calls), (Ok(b"0123456789".to_vec()), 2));
    }
}
