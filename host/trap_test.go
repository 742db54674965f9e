package host

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestSplitTrap: wazero's trap error becomes its first line and the frames,
// bounded, without the host's Go stack.
func TestSplitTrap(t *testing.T) {
	t.Parallel()
	err := errors.New("wasm error: unreachable\nwasm stack trace:\n\t.fail_here()\n\t.wcluster_handle(i32) i32\n\nGo runtime stack trace:\ngoroutine 1")
	msg, stack := splitTrap(err)
	if msg != "wasm error: unreachable" || stack != "fail_here()\nwcluster_handle(i32) i32" {
		t.Fatalf("msg %q, stack %q", msg, stack)
	}
	if msg, stack := splitTrap(errors.New("module closed with exit_code(2)")); msg != "module closed with exit_code(2)" || stack != "" {
		t.Fatalf("no stack: msg %q, stack %q", msg, stack)
	}
	start := &startError{err}
	if msg, stack := splitTrap(fmt.Errorf("x: %w", start)); msg != "x: instantiate: wasm error: unreachable" || !strings.HasPrefix(stack, "fail_here()\n") {
		t.Fatalf("start error: msg %q, stack %q", msg, stack)
	}
	long := "wasm error: unreachable\nwasm stack trace:" + strings.Repeat("\n\t.f"+strings.Repeat("x", 200)+"()", 100)
	if _, stack := splitTrap(errors.New(long)); len(stack) > maxStack+4 || !strings.HasSuffix(stack, "\n...") {
		t.Fatalf("long stack: %d bytes, ends %q", len(stack), stack[len(stack)-10:])
	}
}

// TestLineLimiter: a burst passes, then lines drop until the bucket refills;
// the first line after reports how many dropped.
func TestLineLimiter(t *testing.T) {
	t.Parallel()
	var l lineLimiter
	now := time.Unix(1000, 0)
	for i := range guestLineBurst {
		if ok, _ := l.take(now, true); !ok {
			t.Fatalf("line %d of the burst refused", i)
		}
	}
	for range 10 {
		if ok, _ := l.take(now, true); ok {
			t.Fatal("a line past the burst passed")
		}
	}
	if ok, d := l.take(now, false); ok || d != 0 {
		t.Fatalf("report before the limit lifts: %v %d", ok, d)
	}
	ok, dropped := l.take(now.Add(time.Second/guestLinesPerSec), true)
	if !ok || dropped != 10 {
		t.Fatalf("after one refill: ok %v, dropped %d; want true, 10", ok, dropped)
	}
}
