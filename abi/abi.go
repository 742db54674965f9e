// Package abi is the contract between wcluster and its guests: the import
// module name, every host function's name and signature, the exports a guest
// provides, the result codes a guest can act on, and the ABI version.
//
// It imports neither the host nor the dispatcher, so guest SDKs, tools and
// tests can depend on it alone. The prose specification lives beside it in
// README.md; a test keeps the two in step.
//
// Every function takes and returns plain i32/i64 values: buffers are passed as
// (pointer, length) pairs into the guest's exported "memory", so any language
// that compiles to WebAssembly can call them without bindings.
package abi

// Version is the ABI version this host speaks. A guest declares the version it
// was built for by exporting a function named VersionExportPrefix+"<n>".
const Version = 1

// HostModule is the import module name of every host function.
const HostModule = "wcluster"

// Exports a guest module provides.
const (
	// VersionExportPrefix followed by the decimal version ("wcluster_abi_v1")
	// names an exported function of type () -> () that the host never calls:
	// its presence alone tells which ABI the module speaks, without running it.
	VersionExportPrefix = "wcluster_abi_v"

	// ExportHandle is the handler entry point, type (flags i32) -> i32.
	//
	// The host calls it when a connection's first bytes arrive (flags has
	// FlagNew; at once for a module exporting ExportSpeaksFirst) and,
	// after the guest returned Keep, each time the connection is readable
	// again. Between calls the connection holds no guest instance: the next
	// call may run on another pooled instance, so per-connection state must
	// not live in guest globals (push unconsumed bytes back with FuncConnUnread).
	//
	// Results: Close (0) closes the connection; Keep (1) parks it until it is
	// readable; a negative value is logged as the guest's error and closes it.
	ExportHandle = "wcluster_handle"

	// ExportInitialize is the reactor initialiser (WASI convention). When
	// exported, the host calls it once per instance before any ExportHandle.
	ExportInitialize = "_initialize"

	// ExportStart marks a plain WASI command module. Such a module exporting
	// no ExportHandle is served one fresh instance per connection: stdin
	// reads the connection, stdout writes it, and the connection closes when
	// _start returns.
	ExportStart = "_start"

	// ExportMemory is the linear memory all buffer pointers refer to.
	ExportMemory = "memory"

	// ExportSpeaksFirst names an exported function of type () -> () that the
	// host never calls: its presence declares a protocol in which the server
	// speaks first (an SMTP or database greeting), so the first call for a
	// connection comes as soon as it is accepted. Without it the host waits,
	// holding no instance, until the peer's first bytes arrive.
	ExportSpeaksFirst = "wcluster_speaks_first"
)

// Flags passed to ExportHandle.
const (
	// FlagNew is set on the first call for a connection: when its first
	// bytes have arrived (or at once, for a module exporting
	// ExportSpeaksFirst).
	FlagNew int32 = 1 << 0
	// FlagDraining is set when the worker is shutting down or reloading: the
	// guest should finish the exchange in progress (an HTTP guest answers with
	// "Connection: close") and return Close.
	FlagDraining int32 = 1 << 1
)

// Results of ExportHandle.
const (
	// Close asks the host to close the connection.
	Close int32 = 0
	// Keep parks the connection, holding no instance, until the peer sends
	// more bytes or closes, then calls ExportHandle again.
	Keep int32 = 1
)

// Host functions, all in HostModule. Each comment gives the WebAssembly
// signature, what it does, and the results. Error results are the negative
// Err* codes below.
const (
	// FuncConnRead: (buf i32, buf_len i32) -> i32.
	// Reads up to buf_len bytes of the connection into guest memory at buf,
	// waiting until at least one byte is available. Returns the count read
	// (> 0), 0 at end of stream (the peer half-closed), or ErrFault,
	// ErrInvalid, ErrClosed, ErrTimeout, ErrNoConn. Bytes pushed back with
	// FuncConnUnread are returned first.
	FuncConnRead = "conn_read"

	// FuncConnWrite: (buf i32, buf_len i32) -> i32.
	// Writes all buf_len bytes at buf to the connection, waiting while the
	// socket buffer is full. Returns buf_len, or ErrFault, ErrInvalid,
	// ErrClosed, ErrTimeout, ErrShutdown, ErrNoConn.
	FuncConnWrite = "conn_write"

	// FuncConnCloseWrite: () -> i32.
	// Half-closes the connection: the peer reads end of stream, while this
	// side may still read. Returns 0, or ErrClosed, ErrNoConn.
	FuncConnCloseWrite = "conn_close_write"

	// FuncConnUnread: (buf i32, buf_len i32) -> i32.
	// Pushes buf_len bytes back in front of the connection's read stream: the
	// next FuncConnRead, in this call or a later one, returns them first. A
	// connection parked with Keep still waits for new bytes from the peer, so
	// push back only an incomplete message. At most MaxUnread bytes may be
	// pending. Returns 0, or ErrFault, ErrInvalid,
	// ErrTooLarge, ErrNoConn.
	FuncConnUnread = "conn_unread"

	// FuncConnPeerAddr: (buf i32, buf_len i32) -> i32.
	// Writes the peer's address as text ("127.0.0.1:5000", "[::1]:5000") at
	// buf when it fits in buf_len, and returns its full length either way, so
	// a guest with too small a buffer calls again with a larger one. Returns
	// ErrFault, ErrInvalid, ErrNoConn on error.
	FuncConnPeerAddr = "conn_peer_addr"

	// FuncConnID: () -> i64.
	// Returns a number identifying the connection within its worker, stable
	// across the calls of one connection (for logs and correlation); 0 when
	// there is no connection.
	FuncConnID = "conn_id"

	// FuncWorkerID: () -> i32.
	// Returns the id of the worker process serving the call, 1..N.
	FuncWorkerID = "worker_id"

	// FuncLog: (level i32, buf i32, buf_len i32) -> i32.
	// Writes the text at buf to the worker's log at level (LogDebug..LogError),
	// tagged with the worker and connection. Returns 0, or ErrFault, ErrInvalid.
	FuncLog = "log"

	// FuncConfigGet: (key i32, key_len i32, buf i32, buf_len i32) -> i32.
	// Looks up the operator's config value named by the text at key (the
	// tenant's `config` table) and copies min(length, buf_len) bytes of it to
	// buf. Returns the value's full length, so a guest whose buffer was too
	// small calls again with a larger one; ErrNotFound when no value has that
	// name; ErrFault, ErrInvalid. Works outside a connection too (from
	// _initialize). Added within ABI v1: a guest that does not import it is
	// unaffected.
	FuncConfigGet = "config_get"

	// The key-value store: one per tenant, shared by every instance of
	// every worker (and, with Redis, every machine), durable. Added within
	// ABI v1: a guest that does not import them is unaffected. Keys are at
	// most MaxKVKey bytes; values at most the tenant's kv_max_value; the
	// keys and values of a tenant together at most its kv_quota. Each may
	// return ErrUnavailable (the store could not be reached or failed: try
	// later), ErrFault, ErrInvalid.

	// FuncKVGet: (key i32, key_len i32, buf i32, buf_len i32) -> i32.
	// Copies min(length, buf_len) bytes of the value of key to buf and
	// returns its full length (call again with a larger buffer when it
	// did not fit); ErrNotFound when the key has no value.
	FuncKVGet = "kv_get"

	// FuncKVSet: (key i32, key_len i32, value i32, value_len i32) -> i32.
	// Sets key to value; returns 0 once it is durable and visible to every
	// worker. ErrTooLarge for a key or value over the limits, ErrQuota when
	// the tenant's store would pass its quota.
	FuncKVSet = "kv_set"

	// FuncKVDelete: (key i32, key_len i32) -> i32. Removes key; 0, also
	// when it had no value.
	FuncKVDelete = "kv_delete"

	// FuncKVAdd: (key i32, key_len i32, delta i64, out i32) -> i32.
	// Atomically adds delta to the integer value of key (decimal text; no
	// value counts as 0), stores the sum as the value and writes it as a
	// little-endian i64 at out. Returns 0; ErrInvalid when the value is not
	// a decimal integer or the sum overflows; ErrQuota.
	FuncKVAdd = "kv_add"

	// FuncKVList: (prefix i32, prefix_len i32, buf i32, buf_len i32) -> i32.
	// Lists the tenant's keys that begin with prefix, in byte order, at most
	// MaxKVList of them: each as a little-endian u32 length and the key's
	// bytes. Copies min(length, buf_len) bytes of that listing to buf and
	// returns its full length.
	FuncKVList = "kv_list"
)

// MaxKVKey is the longest key of the key-value store, in bytes.
const MaxKVKey = 1024

// MaxKVList is the most keys one FuncKVList returns.
const MaxKVList = 1000

// Funcs lists every host function in specification order.
var Funcs = []string{
	FuncConnRead, FuncConnWrite, FuncConnCloseWrite, FuncConnUnread,
	FuncConnPeerAddr, FuncConnID, FuncWorkerID, FuncLog, FuncConfigGet,
	FuncKVGet, FuncKVSet, FuncKVDelete, FuncKVAdd, FuncKVList,
}

// Log levels for FuncLog.
const (
	LogDebug int32 = 0
	LogInfo  int32 = 1
	LogWarn  int32 = 2
	LogError int32 = 3
)

// MaxUnread is the most bytes FuncConnUnread may hold for one connection.
const MaxUnread = 64 << 10

// Error codes returned by host functions: always negative, so a result >= 0
// is a success value. Guests compare against these numbers; they never change
// within an ABI version.
const (
	// ErrFault: a (pointer, length) pair lies outside the guest's memory.
	ErrFault int32 = -1
	// ErrInvalid: an argument is out of range (negative length, unknown level).
	ErrInvalid int32 = -2
	// ErrClosed: the connection was reset by the peer or closed by the host;
	// nothing more can be read or written. Return Close.
	ErrClosed int32 = -3
	// ErrTimeout: the read or write idle timeout, or the call's deadline,
	// passed. The connection is still open, but the host is about to close it.
	ErrTimeout int32 = -4
	// ErrTooLarge: FuncConnUnread would hold more than MaxUnread bytes; a
	// key-value store key or value is over its limit.
	ErrTooLarge int32 = -5
	// ErrNoConn: called outside ExportHandle (for example from _initialize).
	ErrNoConn int32 = -6
	// ErrShutdown: write after FuncConnCloseWrite.
	ErrShutdown int32 = -7
	// ErrNotFound: FuncConfigGet was asked for a key the operator did not
	// set; FuncKVGet for a key with no value.
	ErrNotFound int32 = -8
	// ErrUnavailable: the key-value store could not be reached or failed
	// (nothing was changed, or the change is unknown): try again later.
	ErrUnavailable int32 = -9
	// ErrQuota: the change would take the tenant's store past its quota.
	ErrQuota int32 = -10
)

// ErrorName returns the symbolic name of an error code, or "" if code is not one.
func ErrorName(code int32) string {
	switch code {
	case ErrFault:
		return "ErrFault"
	case ErrInvalid:
		return "ErrInvalid"
	case ErrClosed:
		return "ErrClosed"
	case ErrTimeout:
		return "ErrTimeout"
	case ErrTooLarge:
		return "ErrTooLarge"
	case ErrNoConn:
		return "ErrNoConn"
	case ErrShutdown:
		return "ErrShutdown"
	case ErrNotFound:
		return "ErrNotFound"
	case ErrUnavailable:
		return "ErrUnavailable"
	case ErrQuota:
		return "ErrQuota"
	}
	return ""
}
