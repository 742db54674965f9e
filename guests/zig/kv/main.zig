//! kv: an HTTP key-value API on wcluster's store in Zig, the same API as
//! guests/go/kv, one request per call (a kept-alive connection holds no
//! instance between requests):
//!
//!     PUT /kv/KEY (body: the value) -> 204
//!     GET /kv/KEY -> 200 with the value, or 404
//!     DELETE /kv/KEY -> 204
//!     POST /kv/KEY?add=N -> 200 with the new integer value
//!     GET /kv/?prefix=P -> 200, the keys beginning with P, one per line
//!
//! 413 for a key or value over the store's limits or its quota, 503 while
//! the store is unavailable. Every answer names the worker
//! (X-Wcluster-Worker). KEY and P are percent-decoded bytes.

const std = @import("std");
const wcluster = @import("wcluster");

comptime {
    wcluster.exportHandler(handle);
}

const max_header = 32 << 10;
const max_body = 64 << 20;

// Everything a call allocates is freed before it returns.
const allocator = std.heap.wasm_allocator;

const Request = struct {
    method: []const u8,
    target: []const u8,
    content_length: usize,
    keep_alive: bool,
};

fn handle(flags: wcluster.Flags) !wcluster.Action {
    var in = std.ArrayList(u8).init(allocator);
    defer in.deinit();
    var out = std.ArrayList(u8).init(allocator);
    defer out.deinit();
    var head: ?usize = null; // bytes of the head, "\r\n\r\n" included
    var content_length: usize = 0;
    var chunk: [16 << 10]u8 = undefined;
    while (true) {
        if (head == null) {
            if (std.mem.indexOf(u8, in.items, "\r\n\r\n")) |end| {
                head = end + 4;
                const req = parseHead(in.items[0..end]) catch return reply(&out, 400, "", false);
                if (req.content_length > max_body) return reply(&out, 413, "body too large\n", false);
                content_length = req.content_length;
                try in.ensureTotalCapacity(end + 4 + content_length);
            } else if (in.items.len >= max_header) {
                return reply(&out, 431, "", false);
            }
        }
        if (head) |h| {
            if (in.items.len >= h + content_length) break;
        }
        const m = wcluster.read(&chunk) catch 0;
        if (m == 0) return .close; // end of stream or error
        try in.appendSlice(chunk[0..m]);
    }
    const h = head.?;
    const total = h + content_length;
    // Parsed again: the slices of the first parse died when `in` grew.
    const req = parseHead(in.items[0 .. h - 4]) catch unreachable;
    const keep = req.keep_alive and !flags.draining;
    const action = try serve(&out, req, in.items[h..total], keep);
    if (action == .keep and in.items.len > total) {
        // A pipelined request read ahead waits for the next call.
        wcluster.unread(in.items[total..]) catch return .close;
    }
    return action;
}

fn serve(out: *std.ArrayList(u8), req: Request, body: []const u8, keep: bool) !wcluster.Action {
    const q = std.mem.indexOfScalar(u8, req.target, '?');
    const path = req.target[0 .. q orelse req.target.len];
    const query = if (q) |i| req.target[i + 1 ..] else "";
    if (!std.mem.startsWith(u8, path, "/kv/")) return reply(out, 404, "not found: use /kv/KEY\n", keep);
    const key = unescape(path[4..], false) catch |err| switch (err) {
        error.BadEscape => return reply(out, 400, "bad escape in the key\n", keep),
        else => return err,
    };
    defer allocator.free(key);
    const eql = std.mem.eql;
    if (key.len == 0 and eql(u8, req.method, "GET")) {
        const prefix = (queryValue(query, "prefix") catch return reply(out, 400, "bad escape in prefix\n", keep)) orelse try allocator.alloc(u8, 0);
        defer allocator.free(prefix);
        const listing = wcluster.kvListAlloc(allocator, prefix) catch |err| return fail(out, err, keep);
        defer allocator.free(listing);
        var text = std.ArrayList(u8).init(allocator);
        defer text.deinit();
        var it = wcluster.KeyIterator{ .listing = listing };
        while (it.next()) |k| {
            try text.appendSlice(k);
            try text.append('\n');
        }
        return reply(out, 200, text.items, keep);
    }
    if (eql(u8, req.method, "GET")) {
        const v = wcluster.kvGetAlloc(allocator, key) catch |err| return fail(out, err, keep);
        defer allocator.free(v);
        return reply(out, 200, v, keep);
    }
    if (eql(u8, req.method, "PUT")) {
        wcluster.kvSet(key, body) catch |err| return fail(out, err, keep);
        return reply(out, 204, "", keep);
    }
    if (eql(u8, req.method, "DELETE")) {
        wcluster.kvDelete(key) catch |err| return fail(out, err, keep);
        return reply(out, 204, "", keep);
    }
    if (eql(u8, req.method, "POST")) {
        const add = queryValue(query, "add") catch null;
        if (add) |a| {
            defer allocator.free(a);
            const delta = std.fmt.parseInt(i64, a, 10) catch return reply(out, 400, "add: give an integer\n", keep);
            const sum = wcluster.kvAdd(key, delta) catch |err| return fail(out, err, keep);
            var buf: [24]u8 = undefined;
            const text = std.fmt.bufPrint(&buf, "{d}\n", .{sum}) catch unreachable;
            return reply(out, 200, text, keep);
        }
    }
    return reply(out, 405, "", keep);
}

// Answers a store error with its status and name; an allocation failure is
// the handler's own error.
fn fail(out: *std.ArrayList(u8), err: anyerror, keep: bool) !wcluster.Action {
    const status: u16 = switch (err) {
        error.OutOfMemory => return error.OutOfMemory,
        error.NotFound => 404,
        error.TooLarge, error.Quota => 413,
        error.Unavailable => 503,
        error.Invalid => 409,
        else => 500,
    };
    if (status == 404) return reply(out, 404, "", keep);
    var buf: [64]u8 = undefined;
    const text = std.fmt.bufPrint(&buf, "{s}\n", .{@errorName(err)}) catch unreachable;
    return reply(out, status, text, keep);
}

fn reason(status: u16) []const u8 {
    return switch (status) {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Request Entity Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        else => "Internal Server Error",
    };
}

/// Writes the response in one write; returns .keep or .close.
fn reply(out: *std.ArrayList(u8), status: u16, body: []const u8, keep: bool) !wcluster.Action {
    try out.writer().print("HTTP/1.1 {d} {s}\r\nContent-Length: {d}\r\nX-Wcluster-Worker: {d}\r\n", .{ status, reason(status), body.len, wcluster.workerId() });
    if (!keep) try out.appendSlice("Connection: close\r\n");
    try out.appendSlice("\r\n");
    try out.appendSlice(body);
    wcluster.write(out.items) catch return .close;
    return if (keep) .keep else .close;
}

/// Parses the request line and headers (the head without its final
/// "\r\n\r\n"): HTTP/1.x with a Content-Length body only.
fn parseHead(b: []const u8) error{Bad}!Request {
    var lines = std.mem.splitSequence(u8, b, "\r\n");
    var parts = std.mem.splitScalar(u8, lines.first(), ' ');
    const method = parts.next() orelse return error.Bad;
    const target = parts.next() orelse return error.Bad;
    const version = parts.next() orelse return error.Bad;
    if (parts.next() != null or !std.mem.startsWith(u8, version, "HTTP/1.")) return error.Bad;
    var req = Request{
        .method = method,
        .target = target,
        .content_length = 0,
        .keep_alive = std.mem.eql(u8, version, "HTTP/1.1"),
    };
    while (lines.next()) |h| {
        const colon = std.mem.indexOfScalar(u8, h, ':') orelse return error.Bad;
        const name = h[0..colon];
        const value = std.mem.trim(u8, h[colon + 1 ..], " \t");
        if (std.ascii.eqlIgnoreCase(name, "Content-Length")) {
            if (value.len == 0 or value.len > 10) return error.Bad;
            for (value) |c| if (c < '0' or c > '9') return error.Bad;
            req.content_length = std.fmt.parseInt(usize, value, 10) catch return error.Bad;
        } else if (std.ascii.eqlIgnoreCase(name, "Transfer-Encoding")) {
            return error.Bad; // chunked request bodies are not served
        } else if (std.ascii.eqlIgnoreCase(name, "Connection")) {
            if (std.ascii.eqlIgnoreCase(value, "close")) {
                req.keep_alive = false;
            } else if (std.ascii.eqlIgnoreCase(value, "keep-alive")) {
                req.keep_alive = true;
            }
        }
    }
    return req;
}

/// The percent-decoded value of `name` in the query (caller frees), or null
/// when it is absent.
fn queryValue(query: []const u8, name: []const u8) !?[]u8 {
    if (query.len == 0) return null;
    var pairs = std.mem.splitScalar(u8, query, '&');
    while (pairs.next()) |p| {
        const eq = std.mem.indexOfScalar(u8, p, '=');
        const k = p[0 .. eq orelse p.len];
        if (!std.mem.eql(u8, k, name)) continue;
        return try unescape(if (eq) |i| p[i + 1 ..] else "", true);
    }
    return null;
}

/// The bytes of `s` with %XX escapes decoded (and '+' as a space in a
/// query), in memory the caller frees.
fn unescape(s: []const u8, query: bool) error{ BadEscape, OutOfMemory }![]u8 {
    const out = try allocator.alloc(u8, s.len);
    errdefer allocator.free(out);
    var j: usize = 0;
    var i: usize = 0;
    while (i < s.len) : (i += 1) {
        var c = s[i];
        if (c == '%') {
            if (i + 2 >= s.len) return error.BadEscape;
            c = std.fmt.parseInt(u8, s[i + 1 .. i + 3], 16) catch return error.BadEscape;
            i += 2;
        } else if (c == '+' and query) {
            c = ' ';
        }
        out[j] = c;
        j += 1;
    }
    if (allocator.resize(out, j)) return out[0..j];
    defer allocator.free(out);
    return allocator.dupe(u8, out[0..j]);
}
