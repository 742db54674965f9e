//! wcluster guest SDK for Zig 0.11: the host ABI v1 (abi/README.md) as Zig
//! functions, the host's negative error codes as the error set `Error`, and
//! the exports `wcluster_abi_v1` and `wcluster_handle`.
//!
//! A handler's root file declares
//!
//!     const wcluster = @import("wcluster");
//!     comptime {
//!         wcluster.exportHandler(handle);
//!     }
//!     fn handle(flags: wcluster.Flags) !wcluster.Action { ... }
//!
//! (the return type may also be a plain `wcluster.Action`), and is built as a
//! wasm32-wasi reactor library with this file as the module "wcluster":
//!
//!     zig build-lib -target wasm32-wasi -dynamic -rdynamic -O ReleaseSmall \
//!         --mod wcluster::sdk/wcluster.zig --deps wcluster hello/main.zig
//!
//! The exports are emitted only by `exportHandler`, so a WASI command
//! (`zig build-exe`) may import this module for `workerId` or `log` without
//! becoming an ABI handler.
//!
//! The next call for a connection may run on another instance: keep nothing
//! that belongs to one connection in globals across a returned `.keep`; push
//! unconsumed input back with `unread` instead.

const std = @import("std");

/// The ABI version this SDK speaks (the export `wcluster_abi_v1`).
pub const abi_version = 1;

/// The most bytes `unread` may hold pending for one connection.
pub const max_unread = 64 << 10;

/// The host functions exactly as imported from module "wcluster". Prefer the
/// wrappers below; these are here for code that wants the raw i32 results.
pub const raw = struct {
    pub extern "wcluster" fn conn_read(buf: [*]u8, buf_len: i32) i32;
    pub extern "wcluster" fn conn_write(buf: [*]const u8, buf_len: i32) i32;
    pub extern "wcluster" fn conn_close_write() i32;
    pub extern "wcluster" fn conn_unread(buf: [*]const u8, buf_len: i32) i32;
    pub extern "wcluster" fn conn_peer_addr(buf: [*]u8, buf_len: i32) i32;
    pub extern "wcluster" fn conn_id() i64;
    pub extern "wcluster" fn worker_id() i32;
    pub extern "wcluster" fn log(level: i32, buf: [*]const u8, buf_len: i32) i32;
    pub extern "wcluster" fn config_get(key: [*]const u8, key_len: i32, buf: [*]u8, buf_len: i32) i32;
    pub extern "wcluster" fn kv_get(key: [*]const u8, key_len: i32, buf: [*]u8, buf_len: i32) i32;
    pub extern "wcluster" fn kv_set(key: [*]const u8, key_len: i32, value: [*]const u8, value_len: i32) i32;
    pub extern "wcluster" fn kv_delete(key: [*]const u8, key_len: i32) i32;
    pub extern "wcluster" fn kv_add(key: [*]const u8, key_len: i32, delta: i64, out: *i64) i32;
    pub extern "wcluster" fn kv_list(prefix: [*]const u8, prefix_len: i32, buf: [*]u8, buf_len: i32) i32;
};

/// The host's error codes as numbers (always negative).
pub const code = struct {
    pub const fault: i32 = -1;
    pub const invalid: i32 = -2;
    pub const closed: i32 = -3;
    pub const timeout: i32 = -4;
    pub const too_large: i32 = -5;
    pub const no_conn: i32 = -6;
    pub const shutdown: i32 = -7;
    pub const not_found: i32 = -8;
    pub const unavailable: i32 = -9;
    pub const quota: i32 = -10;
    /// What `wcluster_handle` returns for an error of the handler's own
    /// (not one of the host's): the error's name is logged first.
    pub const guest: i32 = -100;
};

/// The host's error codes as a Zig error set.
pub const Error = error{
    /// A (pointer, length) lies outside guest memory: a bug in the guest.
    Fault,
    /// An argument is out of range (negative length, unknown log level).
    Invalid,
    /// The connection was reset or closed: return `.close`.
    Closed,
    /// The idle timeout or the call's deadline passed: return `.close`.
    Timeout,
    /// `unread` would hold more than `max_unread` bytes; a key-value store
    /// key over 1,024 bytes or a value over the tenant's `kv_max_value`.
    TooLarge,
    /// Called outside `wcluster_handle` (from an initialiser, say).
    NoConn,
    /// `write` after `closeWrite`.
    Shutdown,
    /// `kvGet`: the key has no value.
    NotFound,
    /// The key-value store could not be opened or reached, or failed: try
    /// again later (an HTTP handler answers 503).
    Unavailable,
    /// The change would take the tenant's key-value store past its
    /// `kv_quota`; nothing was changed.
    Quota,
    /// A negative code this SDK does not know (a newer host?).
    Unexpected,
};

/// Maps a negative host result to its error.
pub fn errorFromCode(c: i32) Error {
    return switch (c) {
        code.fault => error.Fault,
        code.invalid => error.Invalid,
        code.closed => error.Closed,
        code.timeout => error.Timeout,
        code.too_large => error.TooLarge,
        code.no_conn => error.NoConn,
        code.shutdown => error.Shutdown,
        code.not_found => error.NotFound,
        code.unavailable => error.Unavailable,
        code.quota => error.Quota,
        else => error.Unexpected,
    };
}

/// Maps an error back to the host's code (`code.guest` for any other error).
pub fn codeFromError(err: anyerror) i32 {
    return switch (err) {
        error.Fault => code.fault,
        error.Invalid => code.invalid,
        error.Closed => code.closed,
        error.Timeout => code.timeout,
        error.TooLarge => code.too_large,
        error.NoConn => code.no_conn,
        error.Shutdown => code.shutdown,
        error.NotFound => code.not_found,
        error.Unavailable => code.unavailable,
        error.Quota => code.quota,
        else => code.guest,
    };
}

fn check(r: i32) Error!usize {
    if (r < 0) return errorFromCode(r);
    return @intCast(r);
}

fn len32(n: usize) Error!i32 {
    return std.math.cast(i32, n) orelse error.Invalid;
}

/// The `flags` argument of `wcluster_handle`.
pub const Flags = packed struct(u32) {
    /// FLAG_NEW (1): first call for this connection.
    new: bool = false,
    /// FLAG_DRAINING (2): the worker is stopping or reloading: finish the
    /// exchange in progress (HTTP: answer `Connection: close`), return `.close`.
    draining: bool = false,
    _: u30 = 0,

    pub const bit_new: i32 = 1;
    pub const bit_draining: i32 = 2;
};

/// What the host does with the connection when the handler returns.
pub const Action = enum(i32) {
    /// CLOSE (0): close the connection.
    close = 0,
    /// KEEP (1): park the connection, holding no instance, until the peer
    /// sends more bytes (or closes); then call the handler again, perhaps on
    /// another instance.
    keep = 1,
};

/// Reads into `buf`, waiting for at least one byte. Returns the count, or 0
/// at end of stream (the peer half-closed). Bytes pushed back with `unread`
/// come first. An empty `buf` returns 0 at once.
pub fn read(buf: []u8) Error!usize {
    if (buf.len == 0) return 0;
    const n: i32 = @intCast(@min(buf.len, std.math.maxInt(i32)));
    return check(raw.conn_read(buf.ptr, n));
}

/// Writes all of `buf` (the host waits while the socket buffer is full).
pub fn write(buf: []const u8) Error!void {
    if (buf.len == 0) return;
    _ = try check(raw.conn_write(buf.ptr, try len32(buf.len)));
}

/// Half-closes the connection: the peer reads end of stream; this side may
/// still read.
pub fn closeWrite() Error!void {
    _ = try check(raw.conn_close_write());
}

/// Pushes `buf` back in front of the read stream: the next `read`, in this
/// call or a later one, returns it first (at most `max_unread` pending).
pub fn unread(buf: []const u8) Error!void {
    if (buf.len == 0) return;
    _ = try check(raw.conn_unread(buf.ptr, try len32(buf.len)));
}

/// Writes the peer's address ("127.0.0.1:51234", "[::1]:51234") into `buf`
/// and returns it; error.NoSpaceLeft when `buf` is too small (64 bytes always
/// suffice for an IP address and port without an IPv6 zone).
pub fn peerAddr(buf: []u8) (Error || error{NoSpaceLeft})![]u8 {
    const n = try check(raw.conn_peer_addr(buf.ptr, try len32(buf.len)));
    if (n > buf.len) return error.NoSpaceLeft;
    return buf[0..n];
}

/// Returns the peer's address in memory from `allocator` (caller frees).
pub fn peerAddrAlloc(allocator: std.mem.Allocator) (Error || std.mem.Allocator.Error)![]u8 {
    var size: usize = 64;
    while (true) {
        const buf = try allocator.alloc(u8, size);
        const n = check(raw.conn_peer_addr(buf.ptr, try len32(buf.len))) catch |err| {
            allocator.free(buf);
            return err;
        };
        if (n <= buf.len) {
            if (allocator.resize(buf, n)) return buf[0..n];
            defer allocator.free(buf);
            return allocator.dupe(u8, buf[0..n]);
        }
        allocator.free(buf);
        size = n;
    }
}

/// A number identifying the connection within its worker, the same on every
/// call for that connection; 0 outside a connection.
pub fn connId() i64 {
    return raw.conn_id();
}

/// The id (1..N) of the worker process serving the call.
pub fn workerId() u32 {
    return @bitCast(raw.worker_id());
}

/// Log levels of `log`.
pub const Level = enum(i32) {
    debug = 0,
    info = 1,
    warn = 2,
    err = 3,
};

/// Writes `msg` to the worker's log, tagged with the worker and connection.
pub fn log(level: Level, msg: []const u8) void {
    if (msg.len == 0) return;
    const n = len32(msg.len) catch return;
    _ = raw.log(@intFromEnum(level), msg.ptr, n);
}

/// Formats into a 1 KiB stack buffer (longer messages are cut) and logs it.
pub fn logf(level: Level, comptime fmt: []const u8, args: anytype) void {
    var buf: [1024]u8 = undefined;
    const msg = std.fmt.bufPrint(&buf, fmt, args) catch blk: {
        const tail = "...";
        @memcpy(buf[buf.len - tail.len ..], tail);
        break :blk buf[0..];
    };
    log(level, msg);
}

/// A `std.log` backend writing to the worker's log: in the root file,
///
///     pub const std_options = struct {
///         pub const logFn = wcluster.stdLogFn;
///         pub const log_level = .info; // ReleaseSmall keeps only .err by default
///     };
///
/// (Zig's default logFn writes to stderr, which wcluster also logs, at warn
/// whatever the level.)
pub fn stdLogFn(
    comptime message_level: std.log.Level,
    comptime scope: @TypeOf(.EnumLiteral),
    comptime format: []const u8,
    args: anytype,
) void {
    const level: Level = switch (message_level) {
        .debug => .debug,
        .info => .info,
        .warn => .warn,
        .err => .err,
    };
    const prefix = if (scope == .default) "" else "(" ++ @tagName(scope) ++ ") ";
    logf(level, prefix ++ format, args);
}

// The key-value store (abi/README.md "The key-value store"): one per tenant,
// shared by every instance of every worker, durable. Keys are byte strings
// of at most 1,024 bytes. Every function may also fail with
// error.Unavailable, error.Fault or error.Invalid.

// An empty slice's pointer may lie anywhere; the host checks (pointer,
// length) even for length 0, so pass one inside memory.
var no_bytes: [1]u8 = undefined;

fn ptrOf(b: []const u8) [*]const u8 {
    return if (b.len == 0) &no_bytes else b.ptr;
}

/// The host calls that copy a value for a key (or prefix) into a buffer
/// and return its full length.
const CopyOut = fn (key: [*]const u8, key_len: i32, buf: [*]u8, buf_len: i32) callconv(.C) i32;

fn copyOut(comptime f: CopyOut, key: []const u8, buf: []u8) Error!usize {
    const p: [*]u8 = if (buf.len == 0) &no_bytes else buf.ptr;
    return check(f(ptrOf(key), try len32(key.len), p, try len32(buf.len)));
}

/// Copies the value of the tenant's configuration `key` (its `config`
/// table) into `buf` (what fits) and returns its full length;
/// error.NotFound when it has none.
pub fn config(key: []const u8, buf: []u8) Error!usize {
    return copyOut(raw.config_get, key, buf);
}

/// Copies the value of `key` into `buf` (as much as fits) and returns the
/// value's full length: when it is larger than `buf.len`, call again with a
/// larger buffer. error.NotFound when the key has no value, error.TooLarge
/// for a key over 1,024 bytes.
pub fn kvGet(key: []const u8, buf: []u8) Error!usize {
    return copyOut(raw.kv_get, key, buf);
}

/// Returns the value of `key` in memory from `allocator` (caller frees).
pub fn kvGetAlloc(allocator: std.mem.Allocator, key: []const u8) (Error || std.mem.Allocator.Error)![]u8 {
    var size: usize = 256;
    while (true) {
        const buf = try allocator.alloc(u8, size);
        const n = kvGet(key, buf) catch |err| {
            allocator.free(buf);
            return err;
        };
        if (n <= buf.len) {
            if (allocator.resize(buf, n)) return buf[0..n];
            defer allocator.free(buf);
            return allocator.dupe(u8, buf[0..n]);
        }
        allocator.free(buf);
        size = n; // the value grew between calls: the loop copes
    }
}

/// Sets `key` to `value`; returns once the value is durable and read by every
/// worker. error.TooLarge for a key or value over the limits, error.Quota
/// when the tenant's store would pass its quota (nothing is changed).
pub fn kvSet(key: []const u8, value: []const u8) Error!void {
    _ = try check(raw.kv_set(ptrOf(key), try len32(key.len), ptrOf(value), try len32(value.len)));
}

/// Removes `key` (no error when it had no value).
pub fn kvDelete(key: []const u8) Error!void {
    _ = try check(raw.kv_delete(ptrOf(key), try len32(key.len)));
}

/// Atomically adds `delta` to the integer value of `key` (decimal text; none
/// counts as 0), stores the sum and returns it. error.Invalid when the value
/// is not a decimal integer or the sum overflows; error.Quota.
pub fn kvAdd(key: []const u8, delta: i64) Error!i64 {
    var sum: i64 = 0;
    _ = try check(raw.kv_add(ptrOf(key), try len32(key.len), delta, &sum));
    return sum;
}

/// Copies the listing of the keys beginning with `prefix` (at most 1,000, in
/// byte order) into `buf` (as much as fits) and returns its full length;
/// read a complete listing with `KeyIterator`.
pub fn kvList(prefix: []const u8, buf: []u8) Error!usize {
    return copyOut(raw.kv_list, prefix, buf);
}

/// Returns the listing of the keys beginning with `prefix` in memory from
/// `allocator` (caller frees); iterate it with `KeyIterator`.
pub fn kvListAlloc(allocator: std.mem.Allocator, prefix: []const u8) (Error || std.mem.Allocator.Error)![]u8 {
    var size: usize = 4096;
    while (true) {
        const buf = try allocator.alloc(u8, size);
        const n = kvList(prefix, buf) catch |err| {
            allocator.free(buf);
            return err;
        };
        if (n <= buf.len) {
            if (allocator.resize(buf, n)) return buf[0..n];
            defer allocator.free(buf);
            return allocator.dupe(u8, buf[0..n]);
        }
        allocator.free(buf);
        size = n; // the listing grew between calls: the loop copes
    }
}

/// The keys of a listing from `kvList`/`kvListAlloc`: each a little-endian
/// u32 length followed by the key's bytes.
pub const KeyIterator = struct {
    listing: []const u8,
    pos: usize = 0,

    pub fn next(it: *KeyIterator) ?[]const u8 {
        if (it.listing.len - it.pos < 4) return null;
        const len = std.mem.readIntLittle(u32, it.listing[it.pos..][0..4]);
        const start = it.pos + 4;
        if (len > it.listing.len - start) return null;
        it.pos = start + len;
        return it.listing[start..it.pos];
    }
};

fn connReadFn(_: void, buf: []u8) Error!usize {
    return read(buf);
}

fn connWriteFn(_: void, buf: []const u8) Error!usize {
    try write(buf);
    return buf.len;
}

/// The connection as a `std.io.Reader` (end of stream reads as 0).
pub const Reader = std.io.Reader(void, Error, connReadFn);
/// The connection as a `std.io.Writer`.
pub const Writer = std.io.Writer(void, Error, connWriteFn);

pub fn reader() Reader {
    return .{ .context = {} };
}

pub fn writer() Writer {
    return .{ .context = {} };
}

// The exports.

fn wclusterAbiV1() callconv(.C) void {}

/// Exports `wcluster_abi_v1` and `wcluster_handle`, the latter calling
/// `handler`, a `fn (Flags) Action` or `fn (Flags) !Action`. Call it once,
/// from a comptime block of the root file:
///
///     comptime {
///         wcluster.exportHandler(handle);
///     }
///
/// A handler error that is one of `Error` returns its host code (logged by
/// the host, by name), but `Closed` and `Timeout` (the peer went away, or
/// its time ran out) close the connection normally; any other error is
/// logged by name and returns `code.guest`.
pub fn exportHandler(comptime handler: anytype) void {
    const S = struct {
        fn wclusterHandle(flags: i32) callconv(.C) i32 {
            const result = handler(@as(Flags, @bitCast(flags)));
            const action: Action = switch (@typeInfo(@TypeOf(result))) {
                .ErrorUnion => result catch |err| {
                    const c = codeFromError(err);
                    // The peer went away, or its time ran out: a normal close.
                    if (c == code.closed or c == code.timeout) return @intFromEnum(Action.close);
                    if (c == code.guest) logf(.err, "handler error: {s}", .{@errorName(err)});
                    return c;
                },
                else => result,
            };
            return @intFromEnum(action);
        }
    };
    @export(wclusterAbiV1, .{ .name = "wcluster_abi_v1" });
    @export(S.wclusterHandle, .{ .name = "wcluster_handle" });
}
