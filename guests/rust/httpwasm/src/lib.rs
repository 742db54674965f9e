//! A small guest SDK for the http-wasm HTTP handler ABI (import module
//! `http_handler`), the ABI that wcluster, Traefik and Dapr host: the host
//! speaks HTTP, and the guest sees one request at a time as a [`Request`] and
//! a [`Response`] instead of the raw connection.
//!
//! A handler is a `cdylib` that registers its functions with [`handler!`]:
//!
//! ```ignore
//! fn serve(req: httpwasm::Request, resp: httpwasm::Response) -> httpwasm::Next {
//!     resp.headers().set("Content-Type", "text/plain");
//!     resp.body().write(b"hello world\n");
//!     httpwasm::Next::Done
//! }
//! httpwasm::handler!(serve);
//! ```
//!
//! Returning [`Next::Continue`] passes the request on to the host's next
//! handler (with wcluster, the `--upstream`); the response function given as
//! the second argument of [`handler!`] then sees the response.

#![forbid(unsafe_op_in_unsafe_fn)]

mod sys {
    #[link(wasm_import_module = "http_handler")]
    extern "C" {
        pub fn enable_features(features: u32) -> u32;
        pub fn get_config(buf: *mut u8, limit: u32) -> u32;
        pub fn log(level: i32, buf: *const u8, len: u32);
        pub fn log_enabled(level: i32) -> u32;
        pub fn get_method(buf: *mut u8, limit: u32) -> u32;
        pub fn set_method(buf: *const u8, len: u32);
        pub fn get_uri(buf: *mut u8, limit: u32) -> u32;
        pub fn set_uri(buf: *const u8, len: u32);
        pub fn get_protocol_version(buf: *mut u8, limit: u32) -> u32;
        pub fn get_source_addr(buf: *mut u8, limit: u32) -> u32;
        pub fn get_header_names(kind: u32, buf: *mut u8, limit: u32) -> u64;
        pub fn get_header_values(kind: u32, name: *const u8, name_len: u32, buf: *mut u8, limit: u32) -> u64;
        pub fn set_header_value(kind: u32, name: *const u8, name_len: u32, value: *const u8, value_len: u32);
        pub fn add_header_value(kind: u32, name: *const u8, name_len: u32, value: *const u8, value_len: u32);
        pub fn remove_header(kind: u32, name: *const u8, name_len: u32);
        pub fn read_body(kind: u32, buf: *mut u8, limit: u32) -> u64;
        pub fn write_body(kind: u32, buf: *const u8, len: u32);
        pub fn get_status_code() -> u32;
        pub fn set_status_code(code: u32);
    }
}

/// Features the host can be asked for with [`enable_features`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features(pub u32);

impl Features {
    /// Keeps the request body readable by the next handler after the guest read it.
    pub const BUFFER_REQUEST: Features = Features(1);
    /// Lets the response function read and rewrite what the next handler wrote.
    pub const BUFFER_RESPONSE: Features = Features(2);
    /// Gives access to request and response trailers.
    pub const TRAILERS: Features = Features(4);

    /// Whether every feature of `other` is in `self`.
    pub fn contains(self, other: Features) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Features {
    type Output = Features;
    fn bitor(self, o: Features) -> Features {
        Features(self.0 | o.0)
    }
}

/// Asks the host for features and returns those now enabled.
pub fn enable_features(f: Features) -> Features {
    Features(unsafe { sys::enable_features(f.0) })
}

/// A log level, as the ABI numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Debug = -1,
    Info = 0,
    Warn = 1,
    Error = 2,
}

/// Writes `msg` to the host's log at `level`.
pub fn log(level: Level, msg: &str) {
    unsafe { sys::log(level as i32, msg.as_ptr(), msg.len() as u32) }
}

/// Whether the host logs at `level`, so a guest can skip building messages nobody reads.
pub fn log_enabled(level: Level) -> bool {
    unsafe { sys::log_enabled(level as i32) == 1 }
}

/// The bytes the operator configured for this guest (with wcluster:
/// `--guest-config`, or a tenant's `guest_config` key).
pub fn config() -> Vec<u8> {
    fetch(|buf, limit| unsafe { sys::get_config(buf, limit) })
}

/// Calls a `(buf, limit) -> len` function, again with a buffer of the length
/// it asked for when the value did not fit (the host writes nothing then).
fn fetch(get: impl Fn(*mut u8, u32) -> u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(256);
    let n = get(v.as_mut_ptr(), v.capacity() as u32) as usize;
    if n > v.capacity() {
        v.reserve_exact(n);
        let m = get(v.as_mut_ptr(), v.capacity() as u32) as usize;
        assert!(m <= v.capacity(), "http_handler: value grew between calls");
        unsafe { v.set_len(m) };
    } else {
        unsafe { v.set_len(n) };
    }
    v
}

/// The same for a `(buf, limit) -> count << 32 | len` function; returns the
/// NUL-terminated list as strings.
fn fetch_list(get: impl Fn(*mut u8, u32) -> u64) -> Vec<String> {
    let mut v: Vec<u8> = Vec::with_capacity(256);
    let mut r = get(v.as_mut_ptr(), v.capacity() as u32);
    if (r as u32) as usize > v.capacity() {
        v.reserve_exact(r as u32 as usize);
        r = get(v.as_mut_ptr(), v.capacity() as u32);
        assert!((r as u32) as usize <= v.capacity(), "http_handler: list grew between calls");
    }
    unsafe { v.set_len(r as u32 as usize) };
    v.split(|&b| b == 0)
        .take((r >> 32) as usize)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn string(b: Vec<u8>) -> String {
    String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Which of the four header lists a [`Headers`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum HeaderKind {
    Request = 0,
    Response = 1,
    RequestTrailers = 2,
    ResponseTrailers = 3,
}

/// A header list of the current request or response.
#[derive(Clone, Copy, Debug)]
pub struct Headers(HeaderKind);

impl Headers {
    /// The names of the fields present (each once).
    pub fn names(&self) -> Vec<String> {
        let kind = self.0 as u32;
        fetch_list(|buf, limit| unsafe { sys::get_header_names(kind, buf, limit) })
    }

    /// Every value of the field `name` (case-insensitive), in order.
    pub fn values(&self, name: &str) -> Vec<String> {
        let kind = self.0 as u32;
        fetch_list(|buf, limit| unsafe { sys::get_header_values(kind, name.as_ptr(), name.len() as u32, buf, limit) })
    }

    /// The first value of the field `name`, if any.
    pub fn get(&self, name: &str) -> Option<String> {
        self.values(name).into_iter().next()
    }

    /// Replaces the field's values with `value`.
    pub fn set(&self, name: &str, value: &str) {
        unsafe { sys::set_header_value(self.0 as u32, name.as_ptr(), name.len() as u32, value.as_ptr(), value.len() as u32) }
    }

    /// Adds `value` to the field's values.
    pub fn add(&self, name: &str, value: &str) {
        unsafe { sys::add_header_value(self.0 as u32, name.as_ptr(), name.len() as u32, value.as_ptr(), value.len() as u32) }
    }

    /// Removes the field.
    pub fn remove(&self, name: &str) {
        unsafe { sys::remove_header(self.0 as u32, name.as_ptr(), name.len() as u32) }
    }
}

/// The body of the current request (kind 0) or response (kind 1).
#[derive(Clone, Copy, Debug)]
pub struct Body(u32);

impl Body {
    /// Reads the next bytes into `buf`: how many, and whether the body ended.
    pub fn read(&self, buf: &mut [u8]) -> (usize, bool) {
        assert!(!buf.is_empty(), "Body::read: empty buffer");
        let r = unsafe { sys::read_body(self.0, buf.as_mut_ptr(), buf.len() as u32) };
        (r as u32 as usize, r >> 32 == 1)
    }

    /// Reads the rest of the body.
    pub fn read_all(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let (n, eof) = self.read(&mut buf);
            out.extend_from_slice(&buf[..n]);
            if eof {
                return out;
            }
        }
    }

    /// Writes `b` to the body (the first write replaces what the next handler wrote).
    pub fn write(&self, b: &[u8]) {
        unsafe { sys::write_body(self.0, b.as_ptr(), b.len() as u32) }
    }
}

/// The request being handled.
#[derive(Clone, Copy, Debug)]
pub struct Request(());

impl Request {
    pub fn method(&self) -> String {
        string(fetch(|buf, limit| unsafe { sys::get_method(buf, limit) }))
    }
    pub fn set_method(&self, m: &str) {
        unsafe { sys::set_method(m.as_ptr(), m.len() as u32) }
    }
    /// The request target: path and query, as sent.
    pub fn uri(&self) -> String {
        string(fetch(|buf, limit| unsafe { sys::get_uri(buf, limit) }))
    }
    pub fn set_uri(&self, u: &str) {
        unsafe { sys::set_uri(u.as_ptr(), u.len() as u32) }
    }
    /// "HTTP/1.1" or "HTTP/2.0".
    pub fn protocol_version(&self) -> String {
        string(fetch(|buf, limit| unsafe { sys::get_protocol_version(buf, limit) }))
    }
    /// The client's address, "ip:port".
    pub fn source_addr(&self) -> String {
        string(fetch(|buf, limit| unsafe { sys::get_source_addr(buf, limit) }))
    }
    pub fn headers(&self) -> Headers {
        Headers(HeaderKind::Request)
    }
    /// The request trailers (needs [`Features::TRAILERS`]).
    pub fn trailers(&self) -> Headers {
        Headers(HeaderKind::RequestTrailers)
    }
    pub fn body(&self) -> Body {
        Body(0)
    }
}

/// The response: the guest's own, or, in the response function, the next handler's.
#[derive(Clone, Copy, Debug)]
pub struct Response(());

impl Response {
    pub fn status_code(&self) -> u32 {
        unsafe { sys::get_status_code() }
    }
    /// Sets the status (100–999).
    pub fn set_status_code(&self, code: u32) {
        unsafe { sys::set_status_code(code) }
    }
    pub fn headers(&self) -> Headers {
        Headers(HeaderKind::Response)
    }
    /// The response trailers (needs [`Features::TRAILERS`]).
    pub fn trailers(&self) -> Headers {
        Headers(HeaderKind::ResponseTrailers)
    }
    pub fn body(&self) -> Body {
        Body(1)
    }
}

/// What a request function decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// The guest answered (or leaves the empty 200).
    Done,
    /// Pass the request on to the next handler; the response function gets
    /// this context value back.
    Continue(u32),
}

#[doc(hidden)]
pub fn __handle_request(f: fn(Request, Response) -> Next) -> u64 {
    match f(Request(()), Response(())) {
        Next::Done => 0,
        Next::Continue(ctx) => (ctx as u64) << 32 | 1,
    }
}

#[doc(hidden)]
pub fn __handle_response(f: fn(Request, Response, u32, bool), req_ctx: u32, is_error: u32) {
    f(Request(()), Response(()), req_ctx, is_error != 0)
}

/// A response function that does nothing: the next handler's response goes out as it is.
pub fn pass(_: Request, _: Response, _: u32, _: bool) {}

/// Exports `handle_request` (calling `$request`) and `handle_response`
/// (calling `$response`, else [`pass`]), which the ABI requires of a guest.
///
/// `$request: fn(Request, Response) -> Next`;
/// `$response: fn(Request, Response, req_ctx: u32, is_error: bool)`.
#[macro_export]
macro_rules! handler {
    ($request:path) => {
        $crate::handler!($request, $crate::pass);
    };
    ($request:path, $response:path) => {
        #[no_mangle]
        pub extern "C" fn handle_request() -> u64 {
            $crate::__handle_request($request)
        }
        #[no_mangle]
        pub extern "C" fn handle_response(req_ctx: u32, is_error: u32) {
            $crate::__handle_response($response, req_ctx, is_error)
        }
    };
}
