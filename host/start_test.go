package host

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestStartSectionUnderLimit: a module whose start section never ends is
// stopped at the time limit (instrument exports the start function for the
// host to call, as it cannot stop what runs inside instantiation), and New
// says so.
func TestStartSectionUnderLimit(t *testing.T) {
	t.Parallel()
	sec := func(id byte, parts ...[]byte) []byte { return appendSection(nil, id, parts...) }
	m := []byte("\x00asm\x01\x00\x00\x00")
	m = append(m, sec(1, []byte{2, 0x60, 0x00, 0x00, 0x60, 0x01, 0x7f, 0x01, 0x7f})...)
	m = append(m, sec(3, []byte{3, 0, 0, 1})...)
	m = append(m, sec(5, []byte{1, 0x00, 0x01})...)
	exp := appendU32(nil, 3)
	exp = append(appendName(exp, "memory"), 0x02, 0)
	exp = append(appendName(exp, "wcluster_abi_v1"), 0x00, 1)
	exp = append(appendName(exp, "wcluster_handle"), 0x00, 2)
	m = append(m, sec(7, exp)...)
	m = append(m, sec(8, []byte{0})...)
	spin := []byte{0x00, 0x03, 0x40, 0x0c, 0x00, 0x0b, 0x0b}
	nop := []byte{0x00, 0x0b}
	handle := []byte{0x00, 0x41, 0x00, 0x0b}
	code := appendU32(nil, 3)
	for _, b := range [][]byte{spin, nop, handle} {
		code = append(appendU32(code, uint32(len(b))), b...)
	}
	m = append(m, sec(10, code)...)

	ctx := context.Background()
	type result struct {
		h   *Handler
		err error
	}
	done := make(chan result, 1)
	go func() {
		h, err := New(ctx, Options{Name: "start", Wasm: m, Timeout: 300 * time.Millisecond})
		done <- result{h, err}
	}()
	select {
	case r := <-done:
		if r.err == nil {
			r.h.Close(ctx)
			t.Fatal("New served a module whose start function never ends")
		}
		if !strings.Contains(r.err.Error(), "start function ran past the 300ms time limit") {
			t.Fatalf("New: %v, want the start function named as past its time limit", r.err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("New still runs 20s after the start function's 300ms limit")
	}
}

// Helpers to build a module by hand.

func appendU32(b []byte, v uint32) []byte {
	for {
		c := byte(v & 0x7f)
		if v >>= 7; v != 0 {
			c |= 0x80
		}
		b = append(b, c)
		if v == 0 {
			return b
		}
	}
}

func appendName(b []byte, s string) []byte { return append(appendU32(b, uint32(len(s))), s...) }

func appendSection(out []byte, id byte, parts ...[]byte) []byte {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	out = appendU32(append(out, id), uint32(n))
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}
