//go:build wasip1

// Package httpwasm is a small Go guest SDK for the http-wasm HTTP handler ABI
// (import module "http_handler"), the ABI that wcluster, Traefik and Dapr
// host: the host speaks HTTP and the guest sees one request at a time as a
// Request and a Response, instead of the raw connection.
//
// Build a handler as a WASI reactor with Go's own toolchain:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o handler.wasm .
//
// and register the functions from an init function (in a reactor, main
// never runs):
//
//	func init() {
//		httpwasm.HandleRequest(func(req httpwasm.Request, resp httpwasm.Response) (next bool, reqCtx uint32) {
//			resp.Headers().Set("Content-Type", "text/plain")
//			resp.Body().WriteString("hello world\n")
//			return false, 0
//		})
//	}
//
// Returning next = true passes the request on to the host's next handler
// (with wcluster, the --upstream); the handler registered with
// HandleResponse then sees the response before it is sent.
//
// Beside the http-wasm ABI, wcluster gives such a handler its tenant's
// config values (ConfigGet), its worker's id (WorkerID) and the key-value
// store (KVGet, KVSet, KVDelete, KVAdd, KVList: the functions and errors of
// package wcluster). A handler that calls none of them imports nothing but
// http_handler, and runs on any http-wasm host.
package httpwasm

import (
	"io"
	"unsafe"

	"github.com/wcluster/wcluster/guests/go/wcluster/store"
)

//go:wasmimport http_handler enable_features
func enableFeatures(features uint32) uint32

//go:wasmimport http_handler get_config
func getConfig(buf unsafe.Pointer, limit uint32) uint32

//go:wasmimport http_handler log
func hostLog(level int32, buf unsafe.Pointer, n uint32)

//go:wasmimport http_handler log_enabled
func logEnabled(level int32) uint32

//go:wasmimport http_handler get_method
func getMethod(buf unsafe.Pointer, limit uint32) uint32

//go:wasmimport http_handler set_method
func setMethod(buf unsafe.Pointer, n uint32)

//go:wasmimport http_handler get_uri
func getURI(buf unsafe.Pointer, limit uint32) uint32

//go:wasmimport http_handler set_uri
func setURI(buf unsafe.Pointer, n uint32)

//go:wasmimport http_handler get_protocol_version
func getProtocolVersion(buf unsafe.Pointer, limit uint32) uint32

//go:wasmimport http_handler get_source_addr
func getSourceAddr(buf unsafe.Pointer, limit uint32) uint32

//go:wasmimport http_handler get_header_names
func getHeaderNames(kind uint32, buf unsafe.Pointer, limit uint32) uint64

//go:wasmimport http_handler get_header_values
func getHeaderValues(kind uint32, name unsafe.Pointer, nameLen uint32, buf unsafe.Pointer, limit uint32) uint64

//go:wasmimport http_handler set_header_value
func setHeaderValue(kind uint32, name unsafe.Pointer, nameLen uint32, value unsafe.Pointer, valueLen uint32)

//go:wasmimport http_handler add_header_value
func addHeaderValue(kind uint32, name unsafe.Pointer, nameLen uint32, value unsafe.Pointer, valueLen uint32)

//go:wasmimport http_handler remove_header
func removeHeader(kind uint32, name unsafe.Pointer, nameLen uint32)

//go:wasmimport http_handler read_body
func readBody(kind uint32, buf unsafe.Pointer, limit uint32) uint64

//go:wasmimport http_handler write_body
func writeBody(kind uint32, buf unsafe.Pointer, n uint32)

//go:wasmimport http_handler get_status_code
func getStatusCode() uint32

//go:wasmimport http_handler set_status_code
func setStatusCode(code uint32)

// Features the host can be asked for with EnableFeatures.
type Features uint32

const (
	// BufferRequest keeps the request body readable by the next handler
	// after the guest read it.
	BufferRequest Features = 1 << 0
	// BufferResponse lets HandleResponse read and rewrite the response the
	// next handler wrote.
	BufferResponse Features = 1 << 1
	// Trailers gives access to request and response trailers.
	Trailers Features = 1 << 2
)

// EnableFeatures asks the host for features and returns those now enabled.
func EnableFeatures(f Features) Features { return Features(enableFeatures(uint32(f))) }

// Level is a log level.
type Level int32

// Log levels, as the ABI numbers them.
const (
	LevelDebug Level = -1
	LevelInfo  Level = 0
	LevelWarn  Level = 1
	LevelError Level = 2
)

// Log writes msg to the host's log at level.
func Log(level Level, msg string) {
	if len(msg) > 0 {
		hostLog(int32(level), unsafe.Pointer(unsafe.StringData(msg)), uint32(len(msg)))
	}
}

// LogEnabled reports whether the host logs at level, so a guest can skip
// building messages nobody reads.
func LogEnabled(level Level) bool { return logEnabled(int32(level)) == 1 }

// Config returns the bytes the operator configured for this guest (with
// wcluster: --guest-config, or a tenant's guest_config key).
func Config() []byte { return fetch(getConfig) }

// scratch is reused by every read from the host. A guest instance serves one
// request at a time, so one buffer suffices.
type scratch struct{ b []byte }

var buf = scratch{b: make([]byte, 2048)}

func (s *scratch) ptr() unsafe.Pointer { return unsafe.Pointer(unsafe.SliceData(s.b)) }

func (s *scratch) grow(n uint32) {
	if int(n) > len(s.b) {
		s.b = make([]byte, n)
	}
}

// fetch calls a (buf, limit) -> len function, again with a larger buffer
// when the value did not fit, and returns a copy of the value.
func fetch(get func(unsafe.Pointer, uint32) uint32) []byte {
	n := get(buf.ptr(), uint32(len(buf.b)))
	if int(n) > len(buf.b) {
		buf.grow(n)
		n = get(buf.ptr(), uint32(len(buf.b)))
	}
	return append([]byte(nil), buf.b[:n]...)
}

func strPtr(s string) (unsafe.Pointer, uint32) {
	return unsafe.Pointer(unsafe.StringData(s)), uint32(len(s))
}

// Request is the request being handled.
type Request struct{}

// Method returns the request's method, such as "GET".
func (Request) Method() string { return string(fetch(getMethod)) }

// SetMethod changes the method the next handler sees.
func (Request) SetMethod(m string) { p, n := strPtr(m); setMethod(p, n) }

// URI returns the request target: path and query, such as "/a?b=c".
func (Request) URI() string { return string(fetch(getURI)) }

// SetURI changes the target the next handler sees.
func (Request) SetURI(u string) { p, n := strPtr(u); setURI(p, n) }

// ProtocolVersion returns "HTTP/1.1", "HTTP/2.0" and so on.
func (Request) ProtocolVersion() string { return string(fetch(getProtocolVersion)) }

// SourceAddr returns the client's address, such as "127.0.0.1:5000".
func (Request) SourceAddr() string { return string(fetch(getSourceAddr)) }

// Headers returns the request's header fields.
func (Request) Headers() Header { return Header(0) }

// Trailers returns the request's trailer fields (needs the Trailers feature).
func (Request) Trailers() Header { return Header(2) }

// Body returns the request body, to read (or, before next, to replace).
func (Request) Body() Body { return Body(0) }

// Response is the response being built, or after next, the next handler's.
type Response struct{}

// StatusCode returns the response's status code (200 until set).
func (Response) StatusCode() uint32 { return getStatusCode() }

// SetStatusCode sets the status code, 100–999.
func (Response) SetStatusCode(code uint32) { setStatusCode(code) }

// Headers returns the response's header fields.
func (Response) Headers() Header { return Header(1) }

// Trailers returns the response's trailer fields (needs the Trailers feature).
func (Response) Trailers() Header { return Header(3) }

// Body returns the response body, to write (or, after next with
// BufferResponse, to read).
func (Response) Body() Body { return Body(1) }

// Header is one kind of header fields: the request's or response's headers
// or trailers. Names are case-insensitive.
type Header uint32

// Names returns every field name present.
func (h Header) Names() []string {
	return split(getHeaderNames(uint32(h), buf.ptr(), uint32(len(buf.b))), func() uint64 {
		return getHeaderNames(uint32(h), buf.ptr(), uint32(len(buf.b)))
	})
}

// Values returns every value of the field name.
func (h Header) Values(name string) []string {
	np, nn := strPtr(name)
	get := func() uint64 { return getHeaderValues(uint32(h), np, nn, buf.ptr(), uint32(len(buf.b))) }
	return split(get(), get)
}

// Get returns the first value of the field name and whether it is present.
func (h Header) Get(name string) (string, bool) {
	if v := h.Values(name); len(v) > 0 {
		return v[0], true
	}
	return "", false
}

// Set replaces every value of the field name with value.
func (h Header) Set(name, value string) {
	np, nn := strPtr(name)
	vp, vn := strPtr(value)
	setHeaderValue(uint32(h), np, nn, vp, vn)
}

// Add adds value to the field name's values.
func (h Header) Add(name, value string) {
	np, nn := strPtr(name)
	vp, vn := strPtr(value)
	addHeaderValue(uint32(h), np, nn, vp, vn)
}

// Remove deletes the field name.
func (h Header) Remove(name string) {
	np, nn := strPtr(name)
	removeHeader(uint32(h), np, nn)
}

// split decodes a count<<32|length result of NUL-terminated strings in buf,
// calling get again with a larger buffer when they did not fit.
func split(r uint64, get func() uint64) []string {
	count, n := uint32(r>>32), uint32(r)
	if count == 0 {
		return nil
	}
	if int(n) > len(buf.b) {
		buf.grow(n)
		r = get()
		count, n = uint32(r>>32), uint32(r)
	}
	out := make([]string, 0, count)
	start := 0
	for i, c := range buf.b[:n] {
		if c == 0 {
			out = append(out, string(buf.b[start:i]))
			start = i + 1
		}
	}
	return out
}

// Body is the request's or the response's body: an io.Reader and io.Writer.
type Body uint32

// Read reads the next bytes of the body; io.EOF after the last.
func (b Body) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r := readBody(uint32(b), unsafe.Pointer(unsafe.SliceData(p)), uint32(len(p)))
	n, eof := int(uint32(r)), r>>32 == 1
	if eof && n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

// Write appends p to the body. The first write replaces a body the host
// already had (the request's, before next; the next handler's, after).
func (b Body) Write(p []byte) (int, error) {
	if len(p) > 0 {
		writeBody(uint32(b), unsafe.Pointer(unsafe.SliceData(p)), uint32(len(p)))
	}
	return len(p), nil
}

// WriteString appends s to the body.
func (b Body) WriteString(s string) (int, error) {
	if len(s) > 0 {
		p, n := strPtr(s)
		writeBody(uint32(b), p, n)
	}
	return len(s), nil
}

// RequestHandler handles a request. It returns next = true to pass the
// request on to the host's next handler, and a value the host hands back to
// the ResponseHandler (request-scoped state: an instance may serve other
// requests in between).
type RequestHandler func(req Request, resp Response) (next bool, reqCtx uint32)

// ResponseHandler sees the response after the next handler wrote it;
// isError says the next handler failed.
type ResponseHandler func(reqCtx uint32, req Request, resp Response, isError bool)

// handlers are what the program registered (in init).
type handlers struct {
	request  RequestHandler
	response ResponseHandler
}

var registered handlers

// HandleRequest registers the function the host calls for every request.
func HandleRequest(fn RequestHandler) { registered.request = fn }

// HandleResponse registers the function the host calls after next.
func HandleResponse(fn ResponseHandler) { registered.response = fn }

//go:wasmexport handle_request
func handleRequest() uint64 {
	if registered.request == nil {
		setStatusCode(500)
		Log(LevelError, "httpwasm: no request handler registered (call httpwasm.HandleRequest from init)")
		return 0
	}
	next, reqCtx := registered.request(Request{}, Response{})
	r := uint64(reqCtx) << 32
	if next {
		r |= 1
	}
	return r
}

//go:wasmexport handle_response
func handleResponse(reqCtx uint32, isError uint32) {
	if registered.response != nil {
		registered.response(reqCtx, Request{}, Response{}, isError == 1)
	}
}

// wcluster's functions that need no connection (abi/README.md): an http-wasm
// guest may import them beside http_handler.

//go:wasmimport wcluster worker_id
func workerID() int32

//go:wasmimport wcluster config_get
func configGet(key unsafe.Pointer, keyLen int32, buf unsafe.Pointer, n int32) int32

// WorkerID is the id (1..N) of the wcluster worker process serving the
// request.
func WorkerID() int { return int(workerID()) }

// ConfigGet returns the operator's config value named key (the tenant's
// `config` table, wcluster's config_get), and whether it is set. Config
// returns the http-wasm guest configuration instead (get_config).
func ConfigGet(key string) (string, bool) {
	k := unsafe.Pointer(unsafe.StringData(key))
	b := make([]byte, 256)
	for {
		n := configGet(k, int32(len(key)), unsafe.Pointer(&b[0]), int32(len(b)))
		if n < 0 {
			return "", false
		}
		if int(n) <= len(b) {
			return string(b[:n]), true
		}
		b = make([]byte, n)
	}
}

// Error is a wcluster host error code (always negative), the type of
// package wcluster's errors.
type Error = store.Error

// The key-value store's error codes, as package wcluster names them; see
// abi/README.md.
const (
	ErrFault       = store.ErrFault
	ErrInvalid     = store.ErrInvalid
	ErrTooLarge    = store.ErrTooLarge
	ErrNotFound    = store.ErrNotFound
	ErrUnavailable = store.ErrUnavailable
	ErrQuota       = store.ErrQuota
)

// The key-value store: the tenant's own, shared by every instance of every
// worker, durable (see abi/README.md, "Where state lives").

// KVGet returns the value of key, or ErrNotFound.
func KVGet(key string) ([]byte, error) { return store.Get(key) }

// KVSet sets key to value; it returns once every worker reads it.
// ErrTooLarge for a key or value over the store's limits, ErrQuota when
// the tenant's store would pass its quota.
func KVSet(key string, value []byte) error { return store.Set(key, value) }

// KVDelete removes key (no error when it had no value).
func KVDelete(key string) error { return store.Delete(key) }

// KVAdd atomically adds delta to the integer value of key (none counts as
// 0) and returns the sum.
func KVAdd(key string, delta int64) (int64, error) { return store.Add(key, delta) }

// KVList returns the keys beginning with prefix, in byte order (at most
// 1,000).
func KVList(prefix string) ([]string, error) { return store.List(prefix) }
