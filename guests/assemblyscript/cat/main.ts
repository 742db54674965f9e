// cat: a plain WASI command handler in AssemblyScript. It copies stdin (the
// connection) to stdout (the connection) and exits at end of stream. It uses
// no wcluster import: any WASI program written this way is a handler.

import { fd_read, fd_write } from "bindings/wasi_snapshot_preview1";

const BUF_SIZE: usize = 64 << 10;
const buf = heap.alloc(BUF_SIZE);
const iov = heap.alloc(3 * sizeof<usize>()); // one iovec and a result word

function read(): usize {
  store<usize>(iov, buf);
  store<usize>(iov, BUF_SIZE, sizeof<usize>());
  if (fd_read(0, iov, 1, iov + 2 * sizeof<usize>()) != 0) process.exit(1);
  return load<usize>(iov, 2 * sizeof<usize>());
}

function writeAll(ptr: usize, len: usize): void {
  while (len > 0) {
    store<usize>(iov, ptr);
    store<usize>(iov, len, sizeof<usize>());
    if (fd_write(1, iov, 1, iov + 2 * sizeof<usize>()) != 0) process.exit(1);
    const n = load<usize>(iov, 2 * sizeof<usize>());
    ptr += n;
    len -= n;
  }
}

while (true) {
  const n = read();
  if (n == 0) break;
  writeAll(buf, n);
}
