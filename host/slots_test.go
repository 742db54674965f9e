package host

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"
)

// TestSlotsFollowSize: a slots' size is read at each acquire, so a
// change of it applies to the slots taken next; a waiter gets a slot when
// one is given back, and gives up when its context ends.
func TestSlotsFollowSize(t *testing.T) {
	t.Parallel()
	size := 1
	s := &slots{size: func() int { return size }}
	ctx := context.Background()
	if err := s.acquire(ctx); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := s.acquire(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a second slot of one: %v, want the context's deadline", err)
	}
	got := make(chan error, 1)
	go func() { got <- s.acquire(ctx) }()
	s.release()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a slot given back did not reach the one waiting in 10s")
	}
	size = 2 // (no acquire runs: this goroutine is the only user now)
	if err := s.acquire(ctx); err != nil {
		t.Fatalf("a second slot after the size grew to 2: %v", err)
	}
}

// TestRouterHandshakesFollowGOMAXPROCS: by default the TLS handshakes
// computing at once are half of GOMAXPROCS, at least one, as it is now (a
// worker's GOMAXPROCS changes when its group is scaled), not as it was when
// the router was built. (Not parallel: it sets GOMAXPROCS.)
func TestRouterHandshakesFollowGOMAXPROCS(t *testing.T) {
	h := newHello(t, "procs", Options{})
	r, err := NewRouter([]Listener{{Tenants: []*Tenant{{Name: "a", Handler: h}}}}, RouterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	for _, c := range []struct{ procs, want int }{{8, 4}, {2, 1}, {1, 1}, {6, 3}} {
		runtime.GOMAXPROCS(c.procs)
		if got := r.handshakes.size(); got != c.want {
			t.Errorf("GOMAXPROCS %d: %d handshakes at once, want %d", c.procs, got, c.want)
		}
	}
	r2, err := NewRouter([]Listener{{Tenants: []*Tenant{{Name: "a", Handler: h}}}}, RouterOptions{Handshakes: 5})
	if err != nil {
		t.Fatal(err)
	}
	if got := r2.handshakes.size(); got != 5 {
		t.Errorf("Handshakes 5: %d at once", got)
	}
}
