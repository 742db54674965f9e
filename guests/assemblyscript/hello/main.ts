// hello: wcluster's HTTP/1.1 hello handler in AssemblyScript, the same
// behaviour as guests/go/hello: every request gets `200` "hello world\n" with
// the header X-Wcluster-Worker naming the worker. Keep-alive and pipelining
// are honoured: all complete requests in what was read are answered with one
// write, an incomplete tail is pushed back with `unread`, and the handler
// returns KEEP so that no instance is held between requests.

import * as wcluster from "../sdk/wcluster";
export { wcluster_abi_v1, wcluster_handle } from "../sdk/wcluster";

const MAX_HEADER: i32 = 32 << 10;
const OUT_SIZE: i32 = 64 << 10;

// Scratch buffers, reused by every call on this instance; nothing in them
// outlives a call.
const input = new Uint8Array(MAX_HEADER);
const output = new Uint8Array(OUT_SIZE);
let outLen: i32 = 0;

function bytes(s: string): Uint8Array {
  return Uint8Array.wrap(String.UTF8.encode(s));
}

const BAD_REQUEST = bytes("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
const TOO_LARGE = bytes("HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
const HEAD = bytes("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nX-Wcluster-Worker: ");
const TAIL_CLOSE = bytes("\r\nConnection: close");
const BODY = bytes("\r\n\r\nhello world\n");
const MAX_RESPONSE: i32 = HEAD.length + 10 + TAIL_CLOSE.length + BODY.length;

// Reads what the peer sent (once), answers every complete request in it with
// one write, and pushes an incomplete tail back for the next call: a request
// arriving in pieces holds no instance while the rest is on its way.
function serve(flags: i32): i32 {
  outLen = 0;
  const n = wcluster.read(input, 0, MAX_HEADER);
  if (n <= 0) return wcluster.CLOSE; // end of stream or error
  let pos: i32 = 0;
  while (true) {
    const size = parse(pos, n);
    if (size < 0) {
      append(BAD_REQUEST);
      return flush(wcluster.CLOSE);
    }
    if (size == 0) break;
    const keep = parsedKeepAlive && (flags & wcluster.FLAG_DRAINING) == 0;
    if (!respond(keep)) return wcluster.CLOSE;
    if (!keep) return flush(wcluster.CLOSE);
    pos += size;
  }
  if (pos == n) return flush(wcluster.KEEP);
  if (pos == 0 && n == MAX_HEADER) {
    // A buffer full of one unfinished request: its head is too large.
    append(TOO_LARGE);
    return flush(wcluster.CLOSE);
  }
  if (wcluster.unread(input, pos, n - pos) < 0) return flush(wcluster.CLOSE);
  return flush(wcluster.KEEP);
}

function append(b: Uint8Array): void {
  memory.copy(output.dataStart + <usize>outLen, b.dataStart, <usize>b.length);
  outLen += b.length;
}

function flush(action: i32): i32 {
  if (outLen > 0) {
    const len = outLen;
    outLen = 0;
    if (wcluster.write(output, 0, len) < 0) return wcluster.CLOSE;
  }
  return action;
}

function respond(keep: bool): bool {
  if (OUT_SIZE - outLen < MAX_RESPONSE) {
    // Thousands of tiny pipelined requests: write what is ready first.
    const len = outLen;
    outLen = 0;
    if (wcluster.write(output, 0, len) < 0) return false;
  }
  append(HEAD);
  appendUint(<u32>wcluster.workerId());
  if (!keep) append(TAIL_CLOSE);
  append(BODY);
  return true;
}

function appendUint(v: u32): void {
  let digits: i32 = 1;
  for (let t = v; t >= 10; t /= 10) digits++;
  let p = output.dataStart + <usize>(outLen + digits);
  do {
    p--;
    store<u8>(p, 0x30 + v % 10);
    v /= 10;
  } while (v != 0);
  outLen += digits;
}

// Set by parse for the request it found.
let parsedKeepAlive = false;

const CR: u8 = 0x0d;
const LF: u8 = 0x0a;

// Finds one complete request in input[pos, end): returns its size (header
// and body bytes), 0 while more bytes are needed, -1 for a request this
// handler cannot serve. Sets parsedKeepAlive.
function parse(pos: i32, end: i32): i32 {
  const base = input.dataStart;
  // The end of the header block: "\r\n\r\n".
  let headEnd: i32 = -1;
  for (let i = pos; i + 3 < end; i++) {
    if (load<u8>(base + i) == CR && load<u8>(base + i + 1) == LF &&
        load<u8>(base + i + 2) == CR && load<u8>(base + i + 3) == LF) {
      headEnd = i;
      break;
    }
  }
  if (headEnd < 0) return 0;

  // Request line: the version is after its last space.
  let lineEnd = lineEndAt(pos, headEnd);
  let sp: i32 = -1;
  for (let i = lineEnd - 1; i >= pos; i--) {
    if (load<u8>(base + i) == 0x20) {
      sp = i;
      break;
    }
  }
  if (sp < 0 || !hasPrefix(sp + 1, lineEnd, "HTTP/1.")) return -1;
  let keepAlive = lineEnd - (sp + 1) == 8 && hasPrefix(sp + 1, lineEnd, "HTTP/1.1");

  // Header lines.
  let contentLength: i32 = 0;
  let i = lineEnd;
  while (i < headEnd) {
    const start = i + 2; // past "\r\n"
    const stop = lineEndAt(start, headEnd);
    i = stop;
    let colon: i32 = -1;
    for (let j = start; j < stop; j++) {
      if (load<u8>(base + j) == 0x3a) {
        colon = j;
        break;
      }
    }
    if (colon < 0) return -1;
    let vs = colon + 1;
    let ve = stop;
    while (vs < ve && isSpace(load<u8>(base + vs))) vs++;
    while (ve > vs && isSpace(load<u8>(base + ve - 1))) ve--;
    if (equalsIgnoreCase(start, colon, "content-length")) {
      contentLength = parseLength(vs, ve);
      if (contentLength < 0) return -1;
    } else if (equalsIgnoreCase(start, colon, "transfer-encoding")) {
      return -1; // chunked request bodies are not served
    } else if (equalsIgnoreCase(start, colon, "connection")) {
      if (equalsIgnoreCase(vs, ve, "close")) keepAlive = false;
      else if (equalsIgnoreCase(vs, ve, "keep-alive")) keepAlive = true;
    }
  }
  parsedKeepAlive = keepAlive;
  const size = headEnd + 4 + contentLength - pos;
  if (size > end - pos) {
    if (size > MAX_HEADER) return -1; // body larger than the buffer
    return 0;
  }
  return size;
}

// The index of the next "\r\n" in input[from, limit), or limit.
function lineEndAt(from: i32, limit: i32): i32 {
  const base = input.dataStart;
  for (let i = from; i + 1 < limit; i++) {
    if (load<u8>(base + i) == CR && load<u8>(base + i + 1) == LF) return i;
  }
  return limit;
}

function isSpace(c: u8): bool {
  return c == 0x20 || c == 0x09;
}

function lower(c: u32): u32 {
  return c - 0x41 < 26 ? c | 0x20 : c;
}

// Whether input[from, to) begins with the ASCII text s.
function hasPrefix(from: i32, to: i32, s: string): bool {
  if (to - from < s.length) return false;
  for (let k = 0; k < s.length; k++) {
    if (<u32>load<u8>(input.dataStart + from + k) != <u32>s.charCodeAt(k)) return false;
  }
  return true;
}

// Whether input[from, to) equals s, an ASCII text in lower case, ignoring case.
function equalsIgnoreCase(from: i32, to: i32, s: string): bool {
  if (to - from != s.length) return false;
  for (let k = 0; k < s.length; k++) {
    if (lower(<u32>load<u8>(input.dataStart + from + k)) != lower(<u32>s.charCodeAt(k))) return false;
  }
  return true;
}

// A Content-Length: decimal digits only; -1 for anything else, or for a
// length larger than the input buffer (as unservable as garbage).
function parseLength(from: i32, to: i32): i32 {
  if (from == to) return -1;
  let v: i32 = 0;
  for (let k = from; k < to; k++) {
    const c = <i32>load<u8>(input.dataStart + k) - 0x30;
    if (c < 0 || c > 9) return -1;
    v = v * 10 + c;
    if (v > MAX_HEADER) return -1;
  }
  return v;
}

wcluster.handle(serve);
