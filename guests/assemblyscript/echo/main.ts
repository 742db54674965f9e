// echo: a raw echo handler in AssemblyScript. Every byte read is written back
// until the peer half-closes (or the connection fails); then the handler
// half-closes too and returns CLOSE.

import * as wcluster from "../sdk/wcluster";
export { wcluster_abi_v1, wcluster_handle } from "../sdk/wcluster";

const buf = new Uint8Array(64 << 10);

function serve(flags: i32): i32 {
  while (true) {
    const n = wcluster.read(buf);
    if (n <= 0) break; // end of stream or error
    if (wcluster.write(buf, 0, n) < 0) return wcluster.CLOSE;
  }
  wcluster.closeWrite();
  return wcluster.CLOSE;
}

wcluster.handle(serve);
