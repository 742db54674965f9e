//! cat: a plain WASI command handler in Zig. It copies stdin (the
//! connection) to stdout (the connection) and exits at end of stream. It
//! uses no wcluster import: any WASI program written this way is a handler.

const std = @import("std");

var buf: [64 << 10]u8 = undefined;

pub fn main() void {
    const stdin = std.io.getStdIn();
    const stdout = std.io.getStdOut();
    while (true) {
        const n = stdin.read(&buf) catch std.process.exit(1);
        if (n == 0) return;
        stdout.writeAll(buf[0..n]) catch std.process.exit(1);
    }
}
