//go:build wasip1

// Package store is wcluster's key-value store for any guest: an ABI
// handler (through package wcluster, which wraps it), a WASI command, or an
// http-wasm handler, which imports these wcluster functions beside
// http_handler. It exports nothing, so importing it does not make a module
// an ABI handler. One store per tenant, shared by every instance of every
// worker, durable (abi/README.md, "The key-value store").
package store

import (
	"strconv"
	"unsafe"
)

//go:wasmimport wcluster kv_get
func kvGet(key unsafe.Pointer, keyLen int32, buf unsafe.Pointer, n int32) int32

//go:wasmimport wcluster kv_set
func kvSet(key unsafe.Pointer, keyLen int32, val unsafe.Pointer, n int32) int32

//go:wasmimport wcluster kv_delete
func kvDelete(key unsafe.Pointer, keyLen int32) int32

//go:wasmimport wcluster kv_add
func kvAdd(key unsafe.Pointer, keyLen int32, delta int64, out unsafe.Pointer) int32

//go:wasmimport wcluster kv_list
func kvList(prefix unsafe.Pointer, prefixLen int32, buf unsafe.Pointer, n int32) int32

// Error is a host ABI error code (always negative); package wcluster's
// Error is this type.
type Error int32

// The host's error codes; see abi/README.md.
const (
	ErrFault       Error = -1
	ErrInvalid     Error = -2
	ErrClosed      Error = -3
	ErrTimeout     Error = -4
	ErrTooLarge    Error = -5
	ErrNoConn      Error = -6
	ErrShutdown    Error = -7
	ErrNotFound    Error = -8
	ErrUnavailable Error = -9
	ErrQuota       Error = -10
)

func (e Error) Error() string {
	switch e {
	case ErrFault:
		return "wcluster: buffer outside guest memory"
	case ErrInvalid:
		return "wcluster: invalid argument"
	case ErrClosed:
		return "wcluster: connection closed"
	case ErrTimeout:
		return "wcluster: timeout"
	case ErrTooLarge:
		return "wcluster: too large"
	case ErrNoConn:
		return "wcluster: no connection"
	case ErrShutdown:
		return "wcluster: write after close_write"
	case ErrNotFound:
		return "wcluster: not found"
	case ErrUnavailable:
		return "wcluster: key-value store unavailable"
	case ErrQuota:
		return "wcluster: key-value store quota reached"
	}
	return "wcluster: error " + strconv.Itoa(int(e))
}

func ptr(b []byte) unsafe.Pointer {
	if len(b) == 0 {
		return nil
	}
	return unsafe.Pointer(&b[0])
}

func str(s string) (unsafe.Pointer, int32) {
	return unsafe.Pointer(unsafe.StringData(s)), int32(len(s))
}

// scratch receives values of up to its size: a guest instance runs one call
// at a time, and Get returns a copy of the value's own size, so a small
// value costs one small allocation. Made on first use: a module that never
// calls Get does not carry it.
var scratch []byte

// Get returns the value of key, or ErrNotFound.
func Get(key string) ([]byte, error) {
	if scratch == nil {
		scratch = make([]byte, 512)
	}
	k, kn := str(key)
	buf := scratch
	for {
		n := kvGet(k, kn, unsafe.Pointer(&buf[0]), int32(len(buf)))
		if n < 0 {
			return nil, Error(n)
		}
		if int(n) <= len(buf) {
			if len(buf) == len(scratch) {
				return append(make([]byte, 0, n), buf[:n]...), nil
			}
			return buf[:n], nil
		}
		buf = make([]byte, n)
	}
}

// Set sets key to value; it returns once every worker reads it.
func Set(key string, value []byte) error {
	k, kn := str(key)
	if n := kvSet(k, kn, ptr(value), int32(len(value))); n < 0 {
		return Error(n)
	}
	return nil
}

// Delete removes key (no error when it had no value).
func Delete(key string) error {
	k, kn := str(key)
	if n := kvDelete(k, kn); n < 0 {
		return Error(n)
	}
	return nil
}

// Add atomically adds delta to the integer value of key (none counts as 0)
// and returns the sum.
func Add(key string, delta int64) (int64, error) {
	var sum int64
	k, kn := str(key)
	if n := kvAdd(k, kn, delta, unsafe.Pointer(&sum)); n < 0 {
		return 0, Error(n)
	}
	return sum, nil
}

// List returns the keys beginning with prefix, in byte order (at most
// 1,000).
func List(prefix string) ([]string, error) {
	p, pn := str(prefix)
	buf := make([]byte, 4096)
	for {
		n := kvList(p, pn, unsafe.Pointer(&buf[0]), int32(len(buf)))
		if n < 0 {
			return nil, Error(n)
		}
		if int(n) > len(buf) {
			buf = make([]byte, n)
			continue
		}
		var keys []string
		for b := buf[:n]; len(b) >= 4; {
			l := int(b[0]) | int(b[1])<<8 | int(b[2])<<16 | int(b[3])<<24
			keys = append(keys, string(b[4:4+l]))
			b = b[4+l:]
		}
		return keys, nil
	}
}
