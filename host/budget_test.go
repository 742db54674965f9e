package host

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// serveHandler serves one connection with h; the channel is closed when
// ServeConn returned.
func serveHandler(t *testing.T, h *Handler) (net.Conn, *bufio.Reader, chan struct{}) {
	t.Helper()
	c, f := socketPair(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.ServeConn(context.Background(), f)
	}()
	t.Cleanup(func() {
		c.Close()
		waitClosed(t, done)
	})
	return c, bufio.NewReader(c), done
}

// get sends one request and returns the status, or the error that ended
// the connection instead.
func tryGet(c net.Conn, br *bufio.Reader, path string) (int, string, error) {
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path); err != nil {
		return 0, "", err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// waitFor polls cond (at most 20s).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestBudgetRefusesGrowth: a guest that allocates past the worker's budget
// (though within its own limit) sees its memory.grow fail and dies of it;
// its memory goes back to the budget, and the next call may use it.
func TestBudgetRefusesGrowth(t *testing.T) {
	t.Parallel()
	const limit = 48 << 20
	b := NewBudget(limit)
	h := newProbe(t, "bomb", Options{Budget: b, MemoryLimit: 256 << 20})
	start := b.Stats().Used
	if start == 0 || start != h.Stats().Memory.Used {
		t.Fatalf("after start: worker budget uses %d, tenant %d: want the warm instance's memory in both", start, h.Stats().Memory.Used)
	}
	c, br, _ := serveHandler(t, h)
	if code, body, err := tryGet(c, br, "/alloc?mb=200"); err == nil {
		t.Fatalf("allocating 200 MiB within a 48 MiB budget answered %d %q", code, body)
	}
	st := b.Stats()
	if st.Refusals == 0 || h.Stats().Memory.Refusals == 0 {
		t.Fatalf("refusals: worker %d, tenant %d; want the refused grow counted in both", st.Refusals, h.Stats().Memory.Refusals)
	}
	if h.Stats().MemLimit == 0 {
		t.Errorf("the call that ran out of budget is not counted as out of memory")
	}
	// The instance that died is closed: its memory is the budget's again.
	waitFor(t, "the dead instance's memory to return", func() bool { return b.Stats().Used <= start })
	if st.Used > limit {
		t.Fatalf("budget in use %d past its limit %d", st.Used, limit)
	}
	c, br, _ = serveHandler(t, h)
	if code, body, err := tryGet(c, br, "/alloc?mb=16"); err != nil || code != 200 {
		t.Fatalf("16 MiB after the bomb: %d %q %v", code, body, err)
	}
	if u := b.Stats().Used; u > limit || u != h.Stats().Memory.Used {
		t.Fatalf("in use: worker %d, tenant %d (limit %d)", u, h.Stats().Memory.Used, limit)
	}
}

// TestTenantBudget: a tenant's own budget refuses its growth while the
// worker's has room.
func TestTenantBudget(t *testing.T) {
	t.Parallel()
	b := NewBudget(1 << 30)
	h := newProbe(t, "small", Options{Budget: b, MemoryBudget: 40 << 20, MemoryLimit: 256 << 20})
	c, br, _ := serveHandler(t, h)
	if code, _, err := tryGet(c, br, "/alloc?mb=64"); err == nil {
		t.Fatalf("64 MiB within a 40 MiB tenant budget answered %d", code)
	}
	if h.Stats().Memory.Refusals == 0 || b.Stats().Refusals != 0 {
		t.Fatalf("refusals: tenant %d, worker %d; want the tenant's only", h.Stats().Memory.Refusals, b.Stats().Refusals)
	}
	waitFor(t, "memory back", func() bool { return h.Stats().Memory.Used == b.Stats().Used })
}

// fill takes what is left of b, standing for other instances of the
// worker, and returns how much.
func fill(t *testing.T, b *Budget) uint64 {
	t.Helper()
	n := b.limit - b.used.Load()
	if !b.take(n) {
		t.Fatal("cannot fill the budget")
	}
	return n
}

// TestBudgetWait: a call that needs a new instance while the budget is
// full waits, and proceeds when memory is freed.
func TestBudgetWait(t *testing.T) {
	t.Parallel()
	b := NewBudget(64 << 20)
	h := newProbe(t, "fresh", Options{Budget: b, Fresh: true, MemoryWait: 30 * time.Second})
	n := fill(t, b)
	c, br, _ := serveHandler(t, h)
	type res struct {
		code int
		err  error
	}
	got := make(chan res, 1)
	go func() {
		code, _, err := tryGet(c, br, "/")
		got <- res{code, err}
	}()
	waitFor(t, "the call to wait for memory", func() bool { return b.Stats().Waits == 1 && b.waiting.Load() > 0 })
	select {
	case r := <-got:
		t.Fatalf("answered (%d, %v) while the budget was full", r.code, r.err)
	default:
	}
	b.give(n)
	select {
	case r := <-got:
		if r.err != nil || r.code != 200 {
			t.Fatalf("after memory freed: %d %v", r.code, r.err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no answer 20s after memory was freed")
	}
	if s := h.Stats().Memory; s.Waits != 1 || s.Refusals != 0 {
		t.Fatalf("tenant waits %d refusals %d, want 1 and 0", s.Waits, s.Refusals)
	}
}

// TestBudgetWaitTimesOut: a call that finds no room within the memory wait
// gives up: the connection is closed, and counted as a refusal.
func TestBudgetWaitTimesOut(t *testing.T) {
	t.Parallel()
	b := NewBudget(64 << 20)
	h := newProbe(t, "fresh", Options{Budget: b, Fresh: true, MemoryWait: 300 * time.Millisecond})
	fill(t, b)
	c, br, done := serveHandler(t, h)
	begin := time.Now()
	if code, _, err := tryGet(c, br, "/"); err == nil {
		t.Fatalf("answered %d with the budget full", code)
	}
	waitClosed(t, done)
	if d := time.Since(begin); d < 300*time.Millisecond {
		t.Fatalf("gave up after %v, before the 300ms memory wait", d)
	}
	if s := b.Stats(); s.Waits != 1 || s.Refusals != 1 {
		t.Fatalf("worker waits %d refusals %d, want 1 and 1", s.Waits, s.Refusals)
	}
	if s := h.Stats().Memory; s.Refusals != 1 {
		t.Fatalf("tenant refusals %d, want 1", s.Refusals)
	}
}

// TestBudgetReleasesIdle: idle instances of a tenant above its share of
// the worker's budget are closed to make room for another tenant.
func TestBudgetReleasesIdle(t *testing.T) {
	t.Parallel()
	b := NewBudget(96 << 20)
	big := newProbe(t, "big", Options{Budget: b, MemoryLimit: 256 << 20})
	other := newProbe(t, "other", Options{Budget: b, MemoryLimit: 256 << 20, MemoryWait: 20 * time.Second})
	// big's instance grows (the Go heap keeps what it had), then idles.
	c, br, _ := serveHandler(t, big)
	if code, body, err := tryGet(c, br, "/alloc?mb=56"); err != nil || code != 200 {
		t.Fatalf("big: %d %q %v", code, body, err)
	}
	c.Close()
	waitFor(t, "big's instance to idle", func() bool { return big.Stats().Open == 0 })
	held := big.Stats().Memory.Used
	if held <= b.limit/2 {
		t.Fatalf("big holds %d, not above its share %d: the test needs more", held, b.limit/2)
	}
	c, br, _ = serveHandler(t, other)
	if code, body, err := tryGet(c, br, "/alloc?mb=44"); err != nil || code != 200 {
		t.Fatalf("other: %d %q %v (budget %+v, big %+v)", code, body, err, b.Stats(), big.Stats().Memory)
	}
	if u := big.Stats().Memory.Used; u >= held {
		t.Fatalf("big still holds %d of idle memory (budget %+v, other %+v)", u, b.Stats(), other.Stats().Memory)
	}
	if s := b.Stats(); s.Used > b.limit {
		t.Fatalf("in use %d past the limit %d", s.Used, b.limit)
	}
}
