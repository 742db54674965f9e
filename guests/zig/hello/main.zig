//! hello: wcluster's HTTP/1.1 hello handler in Zig, the same behaviour as
//! guests/go/hello: every request gets `200` "hello world\n" with the header
//! X-Wcluster-Worker naming the worker. Keep-alive and pipelining are
//! honoured: all complete requests in what was read are answered with one
//! write, an incomplete tail is pushed back with `unread`, and the handler
//! returns `.keep` so that no instance is held between requests.

const std = @import("std");
const wcluster = @import("wcluster");

comptime {
    wcluster.exportHandler(handle);
}

const max_header = 32 << 10;

// Scratch buffers, reused by every call on this instance; nothing in them
// outlives a call.
var in: [max_header]u8 = undefined;
var out: [64 << 10]u8 = undefined;
var out_len: usize = 0;

const bad_request = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
const too_large = "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
const head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nX-Wcluster-Worker: ";
const tail_close = "\r\nConnection: close";
const body = "\r\n\r\nhello world\n";
const max_response = head.len + 10 + tail_close.len + body.len;

/// Reads what the peer sent (once), answers every complete request in it
/// with one write, and pushes an incomplete tail back for the next call: a
/// request arriving in pieces holds no instance while the rest is on its
/// way.
fn handle(flags: wcluster.Flags) wcluster.Action {
    out_len = 0;
    const n = wcluster.read(in[0..]) catch 0;
    if (n == 0) return .close; // end of stream or error
    var buf: []const u8 = in[0..n];
    while (true) {
        const req = parse(buf) catch {
            append(bad_request);
            return flush(.close);
        } orelse break;
        const keep = req.keep_alive and !flags.draining;
        respond(keep) catch return .close;
        if (!keep) return flush(.close);
        buf = buf[req.size..];
    }
    if (buf.len == 0) return flush(.keep);
    if (buf.len == in.len) {
        // A buffer full of one unfinished request: its head is too large.
        append(too_large);
        return flush(.close);
    }
    wcluster.unread(buf) catch return flush(.close);
    return flush(.keep);
}

fn append(s: []const u8) void {
    @memcpy(out[out_len..][0..s.len], s);
    out_len += s.len;
}

fn flush(action: wcluster.Action) wcluster.Action {
    if (out_len > 0) {
        const s = out[0..out_len];
        out_len = 0;
        wcluster.write(s) catch return .close;
    }
    return action;
}

fn respond(keep: bool) wcluster.Error!void {
    if (out.len - out_len < max_response) {
        // Thousands of tiny pipelined requests: write what is ready first.
        try wcluster.write(out[0..out_len]);
        out_len = 0;
    }
    append(head);
    var digits: [10]u8 = undefined;
    append(std.fmt.bufPrintIntToSlice(&digits, wcluster.workerId(), 10, .lower, .{}));
    if (!keep) append(tail_close);
    append(body);
}

const Request = struct {
    size: usize, // header and body bytes
    keep_alive: bool,
};

/// Finds one complete request at the start of b: null while more bytes are
/// needed, error.Bad for a request this handler cannot serve.
fn parse(b: []const u8) error{Bad}!?Request {
    const end = std.mem.indexOf(u8, b, "\r\n\r\n") orelse return null;
    var lines = std.mem.splitSequence(u8, b[0..end], "\r\n");
    const line = lines.first();
    const sp = std.mem.lastIndexOfScalar(u8, line, ' ') orelse return error.Bad;
    const version = line[sp + 1 ..];
    if (!std.mem.startsWith(u8, version, "HTTP/1.")) return error.Bad;
    var keep_alive = std.mem.eql(u8, version, "HTTP/1.1");
    var content_length: usize = 0;
    while (lines.next()) |h| {
        const colon = std.mem.indexOfScalar(u8, h, ':') orelse return error.Bad;
        const name = h[0..colon];
        const value = std.mem.trim(u8, h[colon + 1 ..], " \t");
        if (std.ascii.eqlIgnoreCase(name, "Content-Length")) {
            content_length = try parseLength(value);
        } else if (std.ascii.eqlIgnoreCase(name, "Transfer-Encoding")) {
            return error.Bad; // chunked request bodies are not served
        } else if (std.ascii.eqlIgnoreCase(name, "Connection")) {
            if (std.ascii.eqlIgnoreCase(value, "close")) {
                keep_alive = false;
            } else if (std.ascii.eqlIgnoreCase(value, "keep-alive")) {
                keep_alive = true;
            }
        }
    }
    const size = end + 4 + content_length;
    if (size > b.len) {
        if (size > in.len) return error.Bad; // body larger than the buffer
        return null;
    }
    return .{ .size = size, .keep_alive = keep_alive };
}

/// Parses a Content-Length: decimal digits only; anything larger than the
/// input buffer is as unservable as garbage.
fn parseLength(s: []const u8) error{Bad}!usize {
    if (s.len == 0) return error.Bad;
    var v: usize = 0;
    for (s) |c| {
        if (c < '0' or c > '9') return error.Bad;
        v = v * 10 + (c - '0');
        if (v > max_header) return error.Bad;
    }
    return v;
}
