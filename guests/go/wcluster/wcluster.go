//go:build wasip1

// Package wcluster is the Go guest SDK for the wcluster host ABI v1
// (see abi/README.md): the connection as an io.Reader/io.Writer, the host's
// error codes as Go errors, and the wcluster_handle export wired to a
// function the program registers with Handle.
//
// Build a handler as a WASI reactor:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o handler.wasm .
//
// Register the handler from an init function: in a reactor, main never runs.
package wcluster

import (
	"io"
	"unsafe"

	"github.com/wcluster/wcluster/guests/go/wcluster/store"
)

//go:wasmimport wcluster conn_read
func connRead(buf unsafe.Pointer, n int32) int32

//go:wasmimport wcluster conn_write
func connWrite(buf unsafe.Pointer, n int32) int32

//go:wasmimport wcluster conn_close_write
func connCloseWrite() int32

//go:wasmimport wcluster conn_unread
func connUnread(buf unsafe.Pointer, n int32) int32

//go:wasmimport wcluster conn_peer_addr
func connPeerAddr(buf unsafe.Pointer, n int32) int32

//go:wasmimport wcluster conn_id
func connID() int64

//go:wasmimport wcluster worker_id
func workerID() int32

//go:wasmimport wcluster log
func hostLog(level int32, buf unsafe.Pointer, n int32) int32

//go:wasmimport wcluster config_get
func configGet(key unsafe.Pointer, keyLen int32, buf unsafe.Pointer, n int32) int32

// Error is a host ABI error code (always negative); the type is package
// store's, so the key-value store's errors are these too.
type Error = store.Error

// The host's error codes; see abi/README.md.
const (
	ErrFault       = store.ErrFault
	ErrInvalid     = store.ErrInvalid
	ErrClosed      = store.ErrClosed
	ErrTimeout     = store.ErrTimeout
	ErrTooLarge    = store.ErrTooLarge
	ErrNoConn      = store.ErrNoConn
	ErrShutdown    = store.ErrShutdown
	ErrNotFound    = store.ErrNotFound
	ErrUnavailable = store.ErrUnavailable
	ErrQuota       = store.ErrQuota
)

// Flags tell the handler why it was called.
type Flags int32

const (
	// New is set on the first call for a connection, made when its first
	// bytes have arrived (at once for a handler importing the speaksfirst
	// package).
	New Flags = 1 << 0
	// Draining is set when the worker is stopping: finish the exchange (an
	// HTTP handler answers "Connection: close") and return Close.
	Draining Flags = 1 << 1
)

// Action is what the host does with the connection when the handler returns.
type Action int32

const (
	// Close closes the connection.
	Close Action = 0
	// Keep parks the connection, holding no instance, until the peer sends
	// more; the handler is then called again, perhaps on another instance.
	Keep Action = 1
)

var handler func(Flags) Action

// Handle registers the function called for each connection event. Call it
// from an init function.
func Handle(h func(Flags) Action) { handler = h }

//go:wasmexport wcluster_abi_v1
func abiV1() {}

//go:wasmexport wcluster_handle
func handle(flags int32) int32 {
	if handler == nil {
		Log(LevelError, "no handler registered: call wcluster.Handle from init")
		return -1
	}
	return int32(handler(Flags(flags)))
}

// Conn is the connection of the current call, as an io.ReadWriter.
var Conn io.ReadWriter = conn{}

type conn struct{}

func (conn) Read(p []byte) (int, error)  { return Read(p) }
func (conn) Write(p []byte) (int, error) { return Write(p) }

// Read reads into p, waiting for at least one byte. It returns io.EOF when
// the peer has half-closed the connection.
func Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n := connRead(unsafe.Pointer(&p[0]), int32(len(p)))
	switch {
	case n > 0:
		return int(n), nil
	case n == 0:
		return 0, io.EOF
	}
	return 0, Error(n)
}

// Write writes all of p.
func Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n := connWrite(unsafe.Pointer(&p[0]), int32(len(p)))
	if n < 0 {
		return 0, Error(n)
	}
	return int(n), nil
}

// CloseWrite half-closes the connection: the peer reads end of stream.
func CloseWrite() error {
	if r := connCloseWrite(); r < 0 {
		return Error(r)
	}
	return nil
}

// Unread pushes p back in front of the read stream, for the next Read in this
// call or a later one (at most 64 KiB pending). A handler that has read only
// part of a message pushes it back and returns Keep, rather than wait in
// Read for the rest holding its instance: it is called again when more
// arrives.
func Unread(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	if r := connUnread(unsafe.Pointer(&p[0]), int32(len(p))); r < 0 {
		return Error(r)
	}
	return nil
}

// PeerAddr returns the peer's address, "ip:port".
func PeerAddr() string {
	buf := make([]byte, 64)
	for {
		n := connPeerAddr(unsafe.Pointer(&buf[0]), int32(len(buf)))
		if n < 0 {
			return ""
		}
		if int(n) <= len(buf) {
			return string(buf[:n])
		}
		buf = make([]byte, n)
	}
}

// ConnID identifies the connection within its worker.
func ConnID() int64 { return connID() }

// WorkerID is the id (1..N) of the worker process serving the call.
func WorkerID() int { return int(workerID()) }

// Log levels.
const (
	LevelDebug = 0
	LevelInfo  = 1
	LevelWarn  = 2
	LevelError = 3
)

// Log writes msg to the worker's log at level.
func Log(level int, msg string) {
	if len(msg) == 0 {
		return
	}
	hostLog(int32(level), unsafe.Pointer(unsafe.StringData(msg)), int32(len(msg)))
}

// Config returns the operator's config value named key (the tenant's
// `config` table), and whether it is set. It works in init too.
func Config(key string) (string, bool) {
	k := unsafe.Pointer(unsafe.StringData(key))
	buf := make([]byte, 256)
	for {
		n := configGet(k, int32(len(key)), unsafe.Pointer(&buf[0]), int32(len(buf)))
		if n < 0 {
			return "", false
		}
		if int(n) <= len(buf) {
			return string(buf[:n]), true
		}
		buf = make([]byte, n)
	}
}

// The key-value store: the tenant's own, shared by every instance of every
// worker, durable (package store; see abi/README.md, "Where state lives").

// KVGet returns the value of key, or ErrNotFound.
func KVGet(key string) ([]byte, error) {
	v, err := store.Get(key)
	return v, err
}

// KVSet sets key to value; it returns once every worker reads it.
func KVSet(key string, value []byte) error { return store.Set(key, value) }

// KVDelete removes key (no error when it had no value).
func KVDelete(key string) error { return store.Delete(key) }

// KVAdd atomically adds delta to the integer value of key (none counts as
// 0) and returns the sum.
func KVAdd(key string, delta int64) (int64, error) {
	sum, err := store.Add(key, delta)
	return sum, err
}

// KVList returns the keys beginning with prefix, in byte order (at most
// 1,000).
func KVList(prefix string) ([]string, error) {
	keys, err := store.List(prefix)
	return keys, err
}
