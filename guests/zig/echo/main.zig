//! echo: a raw echo handler in Zig. Every byte read is written back until the
//! peer half-closes (or the connection fails); then the handler half-closes
//! too and returns `.close`.

const wcluster = @import("wcluster");

comptime {
    wcluster.exportHandler(handle);
}

var buf: [64 << 10]u8 = undefined;

fn handle(_: wcluster.Flags) wcluster.Action {
    while (true) {
        const n = wcluster.read(&buf) catch break;
        if (n == 0) break;
        wcluster.write(buf[0..n]) catch return .close;
    }
    wcluster.closeWrite() catch {};
    return .close;
}
