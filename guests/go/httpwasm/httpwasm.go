//go:build wasip1

// Package httpwasm is a small Go guest SDK for the http-wasm HTTP handler
// ABI (import module http_handler; see abi/README.md): the request and the
// response as values with methods, and the handle_request and
// handle_response exports wired to the functions a program registers with
// Handle.
//
// Build a handler as a WASI reactor:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o handler.wasm .
//
// Register the handler from an init function: in a reactor, main never runs.
package httpwasm

import (
	"strings"
	"unsafe"
)

//go:wasmimport http_handler enable_features
func enableFeatures(features uint32) uint32

//go:wasmimport http_handler get_config
func getConfig(buf unsafe.Pointer, limit uint32) uint32

//go:wasmimport http_handler log
func hostLog(level int32, buf unsafe.Pointer, n uint32)

//go:wasmimport http_handler get_method
func getMethod(buf unsafe.Pointer, limit uint32) uint32

//go:wasmimport http_handler get_uri
func getURI(buf unsafe.Pointer, limit uint32) uint32

//go:wasmimport http_handler set_uri
func setURI(buf unsafe.Pointer, n uint32)

//go:wasmimport http_handler get_header_values
func getHeaderValues(kind uint32, name unsafe.Pointer, nameLen uint32, buf unsafe.Pointer, limit uint32) uint64

//go:wasmimport http_handler set_header_value
func setHeaderValue(kind uint32, name unsafe.Pointer, nameLen uint32, value unsafe.Pointer, valueLen uint32)

//go:wasmimport http_handler read_body
func readBody(kind uint32, buf unsafe.Pointer, limit uint32) uint64

//go:wasmimport http_handler write_body
func writeBody(kind uint32, buf unsafe.Pointer, n uint32)

//go:wasmimport http_handler set_status_code
func setStatusCode(code uint32)

// Features a guest can enable.
const (
	BufferRequest  uint32 = 1
	BufferResponse uint32 = 2
	Trailers       uint32 = 4
)

// EnableFeatures asks the host for features and returns those enabled.
func EnableFeatures(f uint32) uint32 { return enableFeatures(f) }

// buf is the scratch buffer host values are read into; it grows to fit.
var buf = make([]byte, 2048)

// get calls a (buf, limit) -> len function, growing buf until the value
// fits.
func get(fn func(unsafe.Pointer, uint32) uint32) string {
	for {
		n := fn(unsafe.Pointer(&buf[0]), uint32(len(buf)))
		if int(n) <= len(buf) {
			return string(buf[:n])
		}
		buf = make([]byte, n)
	}
}

func ptr(s string) (unsafe.Pointer, uint32) {
	if s == "" {
		return nil, 0
	}
	return unsafe.Pointer(unsafe.StringData(s)), uint32(len(s))
}

// Config is what the operator gave the guest (wcluster serve --guest-config).
func Config() string { return get(getConfig) }

// Log writes a line to the host's log at level -1 debug, 0 info, 1 warn
// or 2 error.
func Log(level int32, msg string) {
	p, n := ptr(msg)
	hostLog(level, p, n)
}

// Header kinds.
const (
	kindRequest  = 0
	kindResponse = 1
)

// Request is the request being handled.
type Request struct{}

// Method is the request's method.
func (Request) Method() string { return get(getMethod) }

// URI is the request's path and query, escaped.
func (Request) URI() string { return get(getURI) }

// SetURI changes the URI the next handler gets.
func (Request) SetURI(uri string) {
	p, n := ptr(uri)
	setURI(p, n)
}

// Header returns a request header's first value ("" if none).
func (Request) Header(name string) string {
	vs := headerValues(kindRequest, name)
	if len(vs) == 0 {
		return ""
	}
	return vs[0]
}

// SetHeader sets a request header for the next handler.
func (Request) SetHeader(name, value string) { setHeader(kindRequest, name, value) }

// Body reads the whole request body.
func (Request) Body() []byte {
	var body []byte
	for {
		r := readBody(kindRequest, unsafe.Pointer(&buf[0]), uint32(len(buf)))
		body = append(body, buf[:uint32(r)]...)
		if r>>32 != 0 {
			return body
		}
	}
}

func headerValues(kind uint32, name string) []string {
	np, nn := ptr(name)
	for {
		r := getHeaderValues(kind, np, nn, unsafe.Pointer(&buf[0]), uint32(len(buf)))
		count, n := uint32(r>>32), uint32(r)
		if count == 0 {
			return nil
		}
		if int(n) > len(buf) {
			buf = make([]byte, n)
			continue
		}
		return strings.Split(string(buf[:n-1]), "\x00")
	}
}

func setHeader(kind uint32, name, value string) {
	np, nn := ptr(name)
	vp, vn := ptr(value)
	setHeaderValue(kind, np, nn, vp, vn)
}

// Response is the response being made.
type Response struct{}

// SetStatus sets the status code (100-999).
func (Response) SetStatus(code int) { setStatusCode(uint32(code)) }

// SetHeader sets a response header.
func (Response) SetHeader(name, value string) { setHeader(kindResponse, name, value) }

// Write adds to the response body.
func (Response) Write(b []byte) {
	if len(b) == 0 {
		return
	}
	writeBody(kindResponse, unsafe.Pointer(&b[0]), uint32(len(b)))
}

// WriteString adds to the response body.
func (Response) WriteString(s string) {
	p, n := ptr(s)
	if n > 0 {
		writeBody(kindResponse, p, n)
	}
}

var (
	onRequest  func(Request, Response) (next bool, ctx uint32)
	onResponse func(ctx uint32, isError bool)
)

// Handle registers the request handler: it answers through Response and
// returns next false, or returns next true to pass the request on, with a
// ctx given back to the response handler.
func Handle(fn func(Request, Response) (next bool, ctx uint32)) { onRequest = fn }

// HandleResponse registers what runs after the next handler answered.
func HandleResponse(fn func(ctx uint32, isError bool)) { onResponse = fn }

//go:wasmexport handle_request
func handleRequest() uint64 {
	if onRequest == nil {
		return 1
	}
	next, ctx := onRequest(Request{}, Response{})
	if !next {
		return 0
	}
	return uint64(ctx)<<32 | 1
}

//go:wasmexport handle_response
func handleResponse(ctx uint32, isError uint32) {
	if onResponse != nil {
		onResponse(ctx, isError != 0)
	}
}
