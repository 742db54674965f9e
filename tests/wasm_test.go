package tests

import (
	"errors"
	"net"
	"syscall"
)

type tcpConn = net.TCPConn

func isReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }

func errorsAs(err error, target any) bool { return errors.As(err, target) }

// Function signatures tinyModule can give a function.
const (
	sigVoid   = 0 // () -> ()
	sigHandle = 1 // (i32) -> i32, returns 0 (Close)
	sigKeep   = 2 // (i32) -> i32, returns 1 (Keep) without reading
)

type fn struct {
	name string
	sig  int
}

// tinyModule assembles a WebAssembly module that exports the given
// functions (bodies do nothing, or return 0 or 1) and a one-page "memory", for
// tests of how wcluster judges a module's shape.
func tinyModule(fns ...fn) []byte {
	section := func(id byte, body []byte) []byte {
		return append([]byte{id, byte(len(body))}, body...)
	}
	name := func(s string) []byte { return append([]byte{byte(len(s))}, s...) }

	types := []byte{2, 0x60, 0, 0, 0x60, 1, 0x7f, 1, 0x7f}
	funcs := []byte{byte(len(fns))}
	exports := []byte{byte(len(fns) + 1)}
	code := []byte{byte(len(fns))}
	for i, f := range fns {
		funcs = append(funcs, byte(min(f.sig, sigHandle)))
		exports = append(append(exports, name(f.name)...), 0x00, byte(i))
		switch f.sig {
		case sigVoid:
			code = append(code, 2, 0, 0x0b)
		case sigKeep:
			code = append(code, 4, 0, 0x41, 1, 0x0b)
		default:
			code = append(code, 4, 0, 0x41, 0, 0x0b)
		}
	}
	exports = append(append(exports, name("memory")...), 0x02, 0)

	m := []byte("\x00asm\x01\x00\x00\x00")
	m = append(m, section(1, types)...)
	m = append(m, section(3, funcs)...)
	m = append(m, section(5, []byte{1, 0, 1})...)
	m = append(m, section(7, exports)...)
	m = append(m, section(10, code)...)
	return m
}
