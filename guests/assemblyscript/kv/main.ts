// kv: an HTTP key-value API on wcluster's store in AssemblyScript, the same
// API as guests/go/kv, one request per call (a kept-alive connection holds
// no instance between requests):
//
//   PUT /kv/KEY (body: the value) -> 204
//   GET /kv/KEY -> 200 with the value, or 404
//   DELETE /kv/KEY -> 204
//   POST /kv/KEY?add=N -> 200 with the new integer value
//   GET /kv/?prefix=P -> 200, the keys beginning with P, one per line
//
// 413 for a key or value over the store's limits or its quota, 503 while the
// store is unavailable. Every answer names the worker (X-Wcluster-Worker).
// KEY and P are percent-decoded bytes.

import * as wcluster from "../sdk/wcluster";
export { wcluster_abi_v1, wcluster_handle } from "../sdk/wcluster";

const MAX_HEADER: i32 = 32 << 10;
const MAX_BODY: i32 = 64 << 20;

// The request buffer, grown for a large body; nothing in it outlives a call.
let input = new Uint8Array(16 << 10);

// The request parsed by parseHead.
let method = "";
let target = "";
let contentLength: i32 = 0;
let keepAlive = false;

function serve(flags: i32): i32 {
  let n: i32 = 0;
  let head: i32 = -1; // bytes of the head, "\r\n\r\n" included, once complete
  while (true) {
    if (head < 0) {
      const end = headEnd(n);
      if (end >= 0) {
        head = end + 4;
        if (!parseHead(end)) return reply(400, empty(), false);
        if (contentLength > MAX_BODY) return reply(413, text("body too large\n"), false);
        if (head + contentLength > input.length) grow(head + contentLength);
      } else if (n >= MAX_HEADER) {
        return reply(431, empty(), false);
      } else if (n == input.length) {
        grow(input.length * 2);
      }
    }
    if (head >= 0 && n >= head + contentLength) break;
    const m = wcluster.read(input, n, input.length - n);
    if (m <= 0) return wcluster.CLOSE; // end of stream or error
    n += m;
  }
  const total = head + contentLength;
  const keep = keepAlive && (flags & wcluster.FLAG_DRAINING) == 0;
  const action = handle(input.subarray(head, total), keep);
  if (action == wcluster.KEEP && n > total) {
    // A pipelined request read ahead waits for the next call.
    if (wcluster.unread(input, total, n - total) < 0) return wcluster.CLOSE;
  }
  return action;
}

function grow(size: i32): void {
  const b = new Uint8Array(size);
  b.set(input);
  input = b;
}

function handle(body: Uint8Array, keep: bool): i32 {
  const q = target.indexOf("?");
  const path = q < 0 ? target : target.substring(0, q);
  const query = q < 0 ? "" : target.substring(q + 1);
  if (!path.startsWith("/kv/")) return reply(404, text("not found: use /kv/KEY\n"), keep);
  const key = unescape(path.substring(4), false);
  if (key === null) return reply(400, text("bad escape in the key\n"), keep);
  if (key.length == 0 && method == "GET") {
    let prefix = queryValue(query, "prefix");
    if (prefix === null) prefix = "";
    const keys = wcluster.kvList(prefix);
    if (keys === null) return fail(wcluster.kvError(), keep);
    let out = "";
    for (let i = 0; i < keys.length; i++) out += keys[i] + "\n";
    return reply(200, text(out), keep);
  }
  if (method == "GET") {
    const v = wcluster.kvGetBytes(key);
    if (v === null) return reply(status(wcluster.kvError()), empty(), keep);
    return reply(200, v, keep);
  }
  if (method == "PUT") {
    const r = wcluster.kvSetBytes(key, body);
    if (r < 0) return fail(r, keep);
    return reply(204, empty(), keep);
  }
  if (method == "DELETE") {
    const r = wcluster.kvDeleteBytes(key);
    if (r < 0) return fail(r, keep);
    return reply(204, empty(), keep);
  }
  if (method == "POST") {
    const add = queryValue(query, "add");
    if (add !== null) {
      if (!isInteger(add)) return reply(400, text("add: give an integer\n"), keep);
      const r = wcluster.kvAdd(String.UTF8.decode(key.buffer), I64.parseInt(add, 10));
      if (r < 0) return fail(r, keep);
      return reply(200, text(wcluster.kvSum().toString() + "\n"), keep);
    }
  }
  return reply(405, empty(), keep);
}

function fail(code: i32, keep: bool): i32 {
  return reply(status(code), text(wcluster.errorName(code) + "\n"), keep);
}

function status(code: i32): i32 {
  switch (code) {
    case wcluster.ERR_NOT_FOUND: return 404;
    case wcluster.ERR_TOO_LARGE:
    case wcluster.ERR_QUOTA: return 413;
    case wcluster.ERR_UNAVAILABLE: return 503;
    case wcluster.ERR_INVALID: return 409;
  }
  return 500;
}

function reasonPhrase(code: i32): string {
  switch (code) {
    case 200: return "OK";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 413: return "Request Entity Too Large";
    case 431: return "Request Header Fields Too Large";
    case 503: return "Service Unavailable";
  }
  return "Internal Server Error";
}

// Writes the response in one write; returns KEEP or CLOSE.
function reply(code: i32, body: Uint8Array, keep: bool): i32 {
  let h = "HTTP/1.1 " + code.toString() + " " + reasonPhrase(code) + "\r\n";
  h += "Content-Length: " + body.length.toString() + "\r\n";
  h += "X-Wcluster-Worker: " + wcluster.workerId().toString() + "\r\n";
  if (!keep) h += "Connection: close\r\n";
  h += "\r\n";
  const hb = text(h);
  const out = new Uint8Array(hb.length + body.length);
  out.set(hb);
  out.set(body, hb.length);
  if (wcluster.write(out) < 0 || !keep) return wcluster.CLOSE;
  return wcluster.KEEP;
}

function text(s: string): Uint8Array {
  return Uint8Array.wrap(String.UTF8.encode(s));
}

function empty(): Uint8Array {
  return new Uint8Array(0);
}

const CR: u8 = 0x0d;
const LF: u8 = 0x0a;

// The index of the "\r\n\r\n" ending the head in input[0, n), or -1.
function headEnd(n: i32): i32 {
  for (let i = 0; i + 3 < n; i++) {
    if (input[i] == CR && input[i + 1] == LF && input[i + 2] == CR && input[i + 3] == LF) return i;
  }
  return -1;
}

// Parses the request line and headers in input[0, end); false for a request
// this handler cannot serve (HTTP/1.x with a Content-Length body only).
function parseHead(end: i32): bool {
  const lines = String.UTF8.decodeUnsafe(input.dataStart, <usize>end).split("\r\n");
  const parts = lines[0].split(" ");
  if (parts.length != 3 || !parts[2].startsWith("HTTP/1.")) return false;
  method = parts[0];
  target = parts[1];
  keepAlive = parts[2] == "HTTP/1.1";
  contentLength = 0;
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i];
    const colon = line.indexOf(":");
    if (colon < 0) return false;
    const name = line.substring(0, colon).toLowerCase();
    const value = line.substring(colon + 1).trim();
    if (name == "content-length") {
      if (!isDigits(value) || value.length > 9) return false;
      contentLength = I32.parseInt(value, 10);
    } else if (name == "transfer-encoding") {
      return false; // chunked request bodies are not served
    } else if (name == "connection") {
      const v = value.toLowerCase();
      if (v == "close") keepAlive = false;
      else if (v == "keep-alive") keepAlive = true;
    }
  }
  return true;
}

function isDigits(s: string): bool {
  if (s.length == 0) return false;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x30 || c > 0x39) return false;
  }
  return true;
}

function isInteger(s: string): bool {
  if (s.startsWith("-") || s.startsWith("+")) s = s.substring(1);
  return isDigits(s) && s.length <= 18;
}

// The percent-decoded value of name in the query, or null if it is absent.
function queryValue(query: string, name: string): string | null {
  if (query.length == 0) return null;
  const pairs = query.split("&");
  for (let i = 0; i < pairs.length; i++) {
    const p = pairs[i];
    const eq = p.indexOf("=");
    const k = eq < 0 ? p : p.substring(0, eq);
    if (k != name) continue;
    const v = unescape(eq < 0 ? "" : p.substring(eq + 1), true);
    return v === null ? null : String.UTF8.decode(v.buffer);
  }
  return null;
}

function hexValue(c: i32): i32 {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x41 && c <= 0x46) return c - 0x41 + 10;
  if (c >= 0x61 && c <= 0x66) return c - 0x61 + 10;
  return -1;
}

// The bytes of s with %XX escapes decoded (and "+" as a space in a query),
// or null for a malformed escape.
function unescape(s: string, query: bool): Uint8Array | null {
  const b = text(s);
  const out = new Uint8Array(b.length);
  let j: i32 = 0;
  for (let i = 0; i < b.length; i++) {
    let c = <i32>b[i];
    if (c == 0x25) {
      if (i + 2 >= b.length) return null;
      const hi = hexValue(b[i + 1]);
      const lo = hexValue(b[i + 2]);
      if (hi < 0 || lo < 0) return null;
      c = hi * 16 + lo;
      i += 2;
    } else if (c == 0x2b && query) {
      c = 0x20;
    }
    out[j++] = <u8>c;
  }
  return out.slice(0, j);
}

wcluster.handle(serve);
