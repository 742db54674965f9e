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
	waitFor(t, "a waiter", waiting(s, 1))
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

// TestSlotsOldestFirst: a slot given back goes to the one that has waited
// longest, and wakes only it; one that gave up is passed over.
func TestSlotsOldestFirst(t *testing.T) {
	t.Parallel()
	s := &slots{size: func() int { return 1 }}
	ctx := context.Background()
	if err := s.acquire(ctx); err != nil {
		t.Fatal(err)
	}
	quit, cancel := context.WithCancel(ctx)
	got := make(chan int, 3)
	gaveUp := make(chan error, 1)
	for i := 0; i < 3; i++ {
		c := ctx
		if i == 1 {
			c = quit
		}
		go func() {
			if err := s.acquire(c); err != nil {
				gaveUp <- err
				return
			}
			got <- i
		}()
		waitFor(t, "the next waiter", waiting(s, i+1)) // queued in this order
	}
	cancel()
	if err := <-gaveUp; !errors.Is(err, context.Canceled) {
		t.Fatalf("the second waiter: %v, want canceled", err)
	}
	for _, want := range []int{0, 2} {
		s.release()
		select {
		case i := <-got:
			if i != want {
				t.Fatalf("a slot given back went to waiter %d, want %d", i, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("a slot given back reached no waiter in 10s (want %d)", want)
		}
		select {
		case i := <-got:
			t.Fatalf("one release woke waiter %d too", i)
		default:
		}
	}
}

// waiting reports whether n wait for a slot of s.
func waiting(s *slots, n int) func() bool {
	return func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.waiting.Len() == n
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
