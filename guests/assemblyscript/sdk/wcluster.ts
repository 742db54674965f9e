// wcluster guest SDK for AssemblyScript 0.28: the host ABI v1
// (abi/README.md) as functions over Uint8Array, its codes as named constants,
// and the exports `wcluster_abi_v1` and `wcluster_handle`.
//
// AssemblyScript cannot catch exceptions (a `throw` aborts the instance), so
// the host's errors stay what they are on the wire: negative i32 results,
// compared against the ERR_* constants below. `errorName` names one.
//
// A handler's entry file re-exports the two exports and registers its handler
// from top-level code (which runs in `_initialize`, once per instance):
//
//   import * as wcluster from "../sdk/wcluster";
//   export { wcluster_abi_v1, wcluster_handle } from "../sdk/wcluster";
//   wcluster.handle((flags: i32): i32 => { ...; return wcluster.CLOSE; });
//
// and is built as a WASI reactor (see ../README.md):
//
//   asc main.ts --config node_modules/@assemblyscript/wasi-shim/asconfig.json \
//       --exportStart _initialize -O3 --noAssert -o handler.wasm
//
// The next call for a connection may run on another instance: keep nothing
// that belongs to one connection in globals across a returned KEEP; push
// unconsumed input back with `unread` instead.

// The host functions exactly as imported from module "wcluster". Prefer the
// wrappers below; these take raw pointers into linear memory.

// @ts-ignore: decorator
@external("wcluster", "conn_read")
export declare function conn_read(buf: usize, buf_len: i32): i32;
// @ts-ignore: decorator
@external("wcluster", "conn_write")
export declare function conn_write(buf: usize, buf_len: i32): i32;
// @ts-ignore: decorator
@external("wcluster", "conn_close_write")
export declare function conn_close_write(): i32;
// @ts-ignore: decorator
@external("wcluster", "conn_unread")
export declare function conn_unread(buf: usize, buf_len: i32): i32;
// @ts-ignore: decorator
@external("wcluster", "conn_peer_addr")
export declare function conn_peer_addr(buf: usize, buf_len: i32): i32;
// @ts-ignore: decorator
@external("wcluster", "conn_id")
export declare function conn_id(): i64;
// @ts-ignore: decorator
@external("wcluster", "worker_id")
export declare function worker_id(): i32;
// @ts-ignore: decorator
@external("wcluster", "log")
export declare function host_log(level: i32, buf: usize, buf_len: i32): i32;
// @ts-ignore: decorator
@external("wcluster", "config_get")
export declare function config_get(key: usize, key_len: i32, buf: usize, buf_len: i32): i32;
// @ts-ignore: decorator
@external("wcluster", "kv_get")
export declare function kv_get(key: usize, key_len: i32, buf: usize, buf_len: i32): i32;
// @ts-ignore: decorator
@external("wcluster", "kv_set")
export declare function kv_set(key: usize, key_len: i32, value: usize, value_len: i32): i32;
// @ts-ignore: decorator
@external("wcluster", "kv_delete")
export declare function kv_delete(key: usize, key_len: i32): i32;
// @ts-ignore: decorator
@external("wcluster", "kv_add")
export declare function kv_add(key: usize, key_len: i32, delta: i64, out: usize): i32;
// @ts-ignore: decorator
@external("wcluster", "kv_list")
export declare function kv_list(prefix: usize, prefix_len: i32, buf: usize, buf_len: i32): i32;

/** The ABI version this SDK speaks (the export `wcluster_abi_v1`). */
export const ABI_VERSION: i32 = 1;

// Flags passed to the handler.
/** First call for this connection. */
export const FLAG_NEW: i32 = 1;
/** The worker is stopping or reloading: finish the exchange in progress
 *  (HTTP: answer `Connection: close`) and return CLOSE. */
export const FLAG_DRAINING: i32 = 2;

// What the handler returns.
/** Close the connection. */
export const CLOSE: i32 = 0;
/** Park the connection, holding no instance, until the peer sends more bytes
 *  (or closes); then call the handler again, perhaps on another instance. */
export const KEEP: i32 = 1;

// The host's error codes (always negative; a result >= 0 is success).
/** A (pointer, length) lies outside guest memory: a bug in the guest. */
export const ERR_FAULT: i32 = -1;
/** An argument is out of range (negative length, unknown log level). */
export const ERR_INVALID: i32 = -2;
/** The connection was reset or closed: return CLOSE. */
export const ERR_CLOSED: i32 = -3;
/** The idle timeout or the call's deadline passed: return CLOSE. */
export const ERR_TIMEOUT: i32 = -4;
/** `unread` would hold more than MAX_UNREAD bytes; a key-value store key
 *  over 1,024 bytes or a value over the tenant's `kv_max_value`. */
export const ERR_TOO_LARGE: i32 = -5;
/** Called outside the handler (from `_initialize`, say). */
export const ERR_NO_CONN: i32 = -6;
/** `write` after `closeWrite`. */
export const ERR_SHUTDOWN: i32 = -7;
/** `kvGet`: the key has no value. */
export const ERR_NOT_FOUND: i32 = -8;
/** The key-value store could not be opened or reached, or failed: try again
 *  later (an HTTP handler answers 503). */
export const ERR_UNAVAILABLE: i32 = -9;
/** The change would take the tenant's key-value store past its `kv_quota`;
 *  nothing was changed. */
export const ERR_QUOTA: i32 = -10;

/** The most bytes `unread` may hold pending for one connection. */
export const MAX_UNREAD: i32 = 64 << 10;

// Log levels.
export const LOG_DEBUG: i32 = 0;
export const LOG_INFO: i32 = 1;
export const LOG_WARN: i32 = 2;
export const LOG_ERROR: i32 = 3;

/** The symbolic name of an error code ("ERR_CLOSED"), or "" if it is none. */
export function errorName(code: i32): string {
  switch (code) {
    case ERR_FAULT: return "ERR_FAULT";
    case ERR_INVALID: return "ERR_INVALID";
    case ERR_CLOSED: return "ERR_CLOSED";
    case ERR_TIMEOUT: return "ERR_TIMEOUT";
    case ERR_TOO_LARGE: return "ERR_TOO_LARGE";
    case ERR_NO_CONN: return "ERR_NO_CONN";
    case ERR_SHUTDOWN: return "ERR_SHUTDOWN";
    case ERR_NOT_FOUND: return "ERR_NOT_FOUND";
    case ERR_UNAVAILABLE: return "ERR_UNAVAILABLE";
    case ERR_QUOTA: return "ERR_QUOTA";
  }
  return "";
}

// The handler and the exports.

function noHandler(flags: i32): i32 {
  log(LOG_ERROR, "no handler registered: call wcluster.handle from top-level code");
  return ERR_INVALID;
}

let handler: (flags: i32) => i32 = noHandler;

/** Registers the function called for each connection event: it gets the
 *  FLAG_* bits and returns CLOSE, KEEP, or a negative error (logged by the
 *  host, which then closes the connection). Call it from top-level code. */
export function handle(h: (flags: i32) => i32): void {
  handler = h;
}

/** Marks the module as built for ABI v1; the host never calls it. */
export function wcluster_abi_v1(): void {}

/** The entry point the host calls; re-export it from the entry file. */
export function wcluster_handle(flags: i32): i32 {
  return handler(flags);
}

// Connection I/O. Each takes a Uint8Array and an optional range in it
// (offset, length; length -1 means "to the end"), checks the range, and
// returns the host's result.

function checkRange(buf: Uint8Array, offset: i32, length: i32): i32 {
  if (length < 0) length = buf.length - offset;
  if (offset < 0 || length < 0 || <u32>offset + <u32>length > <u32>buf.length) return ERR_INVALID;
  return length;
}

/** Reads into buf[offset, offset+length), waiting for at least one byte.
 *  Returns the count (> 0), 0 at end of stream (the peer half-closed), or an
 *  ERR_* code. Bytes pushed back with `unread` come first. */
export function read(buf: Uint8Array, offset: i32 = 0, length: i32 = -1): i32 {
  const n = checkRange(buf, offset, length);
  if (n <= 0) return n;
  return conn_read(buf.dataStart + <usize>offset, n);
}

/** Writes all of buf[offset, offset+length). Returns the length written, or
 *  an ERR_* code. */
export function write(buf: Uint8Array, offset: i32 = 0, length: i32 = -1): i32 {
  const n = checkRange(buf, offset, length);
  if (n <= 0) return n;
  return conn_write(buf.dataStart + <usize>offset, n);
}

/** Writes s as UTF-8. Returns the byte count written, or an ERR_* code. */
export function writeString(s: string): i32 {
  const b = String.UTF8.encode(s);
  if (b.byteLength == 0) return 0;
  return conn_write(changetype<usize>(b), b.byteLength);
}

/** Half-closes the connection: the peer reads end of stream; this side may
 *  still read. Returns 0 or an ERR_* code. */
export function closeWrite(): i32 {
  return conn_close_write();
}

/** Pushes buf[offset, offset+length) back in front of the read stream: the
 *  next `read`, in this call or a later one, returns it first (at most
 *  MAX_UNREAD bytes pending). Returns 0 or an ERR_* code. */
export function unread(buf: Uint8Array, offset: i32 = 0, length: i32 = -1): i32 {
  const n = checkRange(buf, offset, length);
  if (n <= 0) return n;
  return conn_unread(buf.dataStart + <usize>offset, n);
}

/** The peer's address ("127.0.0.1:51234", "[::1]:51234"), or "" on error. */
export function peerAddr(): string {
  let size = 64;
  while (true) {
    const buf = new ArrayBuffer(size);
    const n = conn_peer_addr(changetype<usize>(buf), size);
    if (n < 0) return "";
    if (n <= size) return String.UTF8.decodeUnsafe(changetype<usize>(buf), <usize>n);
    size = n;
  }
}

/** A number identifying the connection within its worker, the same on every
 *  call for that connection; 0 outside a connection. */
export function connId(): i64 {
  return conn_id();
}

/** The id (1..N) of the worker process serving the call. */
export function workerId(): i32 {
  return worker_id();
}

/** Writes msg to the worker's log at level (LOG_*), tagged with the worker
 *  and connection. Returns 0 or an ERR_* code. */
export function log(level: i32, msg: string): i32 {
  const b = String.UTF8.encode(msg);
  if (b.byteLength == 0) return 0;
  return host_log(level, changetype<usize>(b), b.byteLength);
}

function emit(level: i32, msg: string): void {
  log(level, msg);
}

// The key-value store (abi/README.md "The key-value store"): one per tenant,
// shared by every instance of every worker, durable. Keys are byte strings
// (at most 1,024 bytes); the functions taking a string key use its UTF-8
// bytes. A result is an ERR_* code when negative; ERR_UNAVAILABLE, ERR_FAULT
// and ERR_INVALID are possible from every one.

function keyBytes(key: string): ArrayBuffer {
  return String.UTF8.encode(key);
}

/** The value of the tenant's configuration key (its `config` table in the
 *  configuration file, or --env), or null when it has none. */
export function config(key: string): string | null {
  const k = Uint8Array.wrap(keyBytes(key));
  let size = 256;
  while (true) {
    const buf = new Uint8Array(size);
    const n = config_get(k.dataStart, k.length, buf.dataStart, size);
    if (n < 0) return null; // ERR_NOT_FOUND
    if (n <= size) return String.UTF8.decode(buf.buffer.slice(0, n));
    size = n;
  }
}

/** The value of key (its UTF-8 bytes), or null when the call failed: then
 *  `kvError()` is ERR_NOT_FOUND when the key has no value, or another ERR_*. */
export function kvGet(key: string): Uint8Array | null {
  return kvGetBytes(Uint8Array.wrap(keyBytes(key)));
}

/** kvGet for a key given as bytes. */
export function kvGetBytes(key: Uint8Array): Uint8Array | null {
  let size = 256;
  while (true) {
    const buf = new Uint8Array(size);
    const n = kv_get(key.dataStart, key.length, buf.dataStart, size);
    if (n < 0) {
      lastKVError = n;
      return null;
    }
    lastKVError = 0;
    if (n <= size) return buf.subarray(0, n);
    size = n; // the value changed size between calls: the loop copes
  }
}

let lastKVError: i32 = 0;

/** The ERR_* code of the last kvGet or kvGetBytes that returned null (0 after
 *  one that succeeded). */
export function kvError(): i32 {
  return lastKVError;
}

/** Sets key to value[offset, offset+length); returns 0 once the value is
 *  durable and read by every worker, or ERR_TOO_LARGE, ERR_QUOTA, ... */
export function kvSet(key: string, value: Uint8Array, offset: i32 = 0, length: i32 = -1): i32 {
  return kvSetBytes(Uint8Array.wrap(keyBytes(key)), value, offset, length);
}

/** kvSet for a key given as bytes. */
export function kvSetBytes(key: Uint8Array, value: Uint8Array, offset: i32 = 0, length: i32 = -1): i32 {
  const n = checkRange(value, offset, length);
  if (n < 0) return n;
  return kv_set(key.dataStart, key.length, value.dataStart + <usize>offset, n);
}

/** Removes key; 0, also when it had no value. */
export function kvDelete(key: string): i32 {
  return kvDeleteBytes(Uint8Array.wrap(keyBytes(key)));
}

/** kvDelete for a key given as bytes. */
export function kvDeleteBytes(key: Uint8Array): i32 {
  return kv_delete(key.dataStart, key.length);
}

/** Atomically adds delta to the integer value of key (none counts as 0)
 *  and stores the sum. Returns 0 and sets `kvSum()`, or an ERR_* code
 *  (ERR_INVALID when the value is not a decimal integer or the sum
 *  overflows). */
export function kvAdd(key: string, delta: i64): i32 {
  const k = keyBytes(key);
  const out = memory.data(8);
  const n = kv_add(changetype<usize>(k), k.byteLength, delta, out);
  if (n == 0) lastKVSum = load<i64>(out);
  return n;
}

let lastKVSum: i64 = 0;

/** The sum the last successful kvAdd stored. */
export function kvSum(): i64 {
  return lastKVSum;
}

/** The keys that begin with prefix (at most 1,000, in byte order, decoded
 *  as UTF-8), or null when the call failed (`kvError()` says why). */
export function kvList(prefix: string): string[] | null {
  const p = keyBytes(prefix);
  let size = 4096;
  while (true) {
    const buf = new Uint8Array(size);
    const n = kv_list(changetype<usize>(p), p.byteLength, buf.dataStart, size);
    if (n < 0) {
      lastKVError = n;
      return null;
    }
    if (n <= size) {
      lastKVError = 0;
      return splitKeys(buf, n);
    }
    size = n; // the listing grew between calls: the loop copes
  }
}

// The keys of a kv_list listing: each a little-endian u32 length and bytes.
function splitKeys(buf: Uint8Array, n: i32): string[] {
  const keys = new Array<string>();
  let i: i32 = 0;
  while (i + 4 <= n) {
    const len = <i32>load<u32>(buf.dataStart + <usize>i);
    i += 4;
    if (len < 0 || i + len > n) break;
    keys.push(String.UTF8.decodeUnsafe(buf.dataStart + <usize>i, <usize>len));
    i += len;
  }
  return keys;
}

let timers: Map<string, u64> | null = null;

function timersMap(): Map<string, u64> {
  let m = timers;
  if (m === null) {
    m = new Map<string, u64>();
    timers = m;
  }
  return m;
}

function elapsed(label: string, start: u64): string {
  const ns = process.hrtime() - start;
  return label + ": " + (<f64>ns / 1e6).toString() + "ms";
}

/** A `console` for reactors that writes to the worker's log with its level.
 *  The wasi-shim's console writes to stdout and stderr, which wcluster logs
 *  at info and warn whatever the level. Selected at build time with
 *  `--use console=sdk/wcluster/logConsole` (see ../README.md). */
export namespace logConsole {
  export function assert<T>(condition: T, message: string = ""): void {
    if (!condition) emit(LOG_ERROR, "Assertion failed: " + message);
  }
  export function log(message: string = ""): void {
    emit(LOG_INFO, message);
  }
  export function debug(message: string = ""): void {
    emit(LOG_DEBUG, message);
  }
  export function info(message: string = ""): void {
    emit(LOG_INFO, message);
  }
  export function warn(message: string = ""): void {
    emit(LOG_WARN, message);
  }
  export function error(message: string = ""): void {
    emit(LOG_ERROR, message);
  }
  export function time(label: string = "default"): void {
    const m = timersMap();
    if (m.has(label)) {
      emit(LOG_WARN, "Label '" + label + "' already exists for console.time()");
      return;
    }
    m.set(label, process.hrtime());
  }
  export function timeLog(label: string = "default"): void {
    const m = timersMap();
    if (!m.has(label)) {
      emit(LOG_WARN, "No such label '" + label + "' for console.timeLog()");
      return;
    }
    emit(LOG_INFO, elapsed(label, m.get(label)));
  }
  export function timeEnd(label: string = "default"): void {
    const m = timersMap();
    if (!m.has(label)) {
      emit(LOG_WARN, "No such label '" + label + "' for console.timeEnd()");
      return;
    }
    emit(LOG_INFO, elapsed(label, m.get(label)));
    m.delete(label);
  }
}

/** An `abort` for reactors: reports a failed assertion or an uncaught throw
 *  to the worker's log (tagged with the connection) and traps, so that the
 *  host discards the instance and closes the connection. Selected at build
 *  time with `--use abort=sdk/wcluster/onAbort` (see ../README.md); the
 *  wasi-shim's own abort would print to stderr and call proc_exit instead. */
export function onAbort(message: string | null, fileName: string | null, line: u32, column: u32): void {
  let text = "abort: " + (message !== null ? message : "(no message)");
  if (fileName !== null) text += " at " + fileName + ":" + line.toString() + ":" + column.toString();
  log(LOG_ERROR, text);
  unreachable();
}
