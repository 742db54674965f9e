package host

import (
	"bufio"
	"context"
	"testing"
	"time"
)

// TestIdleTimeout: a kept-alive connection that sends a request well within
// the idle timeout each time stays open across several timeouts' worth of
// time (park moves its deadline lazily, and a deadline that passed while the
// connection was busy must not close it); once silent, it is closed, not
// before the idle timeout.
func TestIdleTimeout(t *testing.T) {
	t.Parallel()
	const idle = time.Second
	h := newProbe(t, "idle", Options{IdleTimeout: idle})
	c, f := socketPair(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.ServeConn(context.Background(), f)
	}()
	t.Cleanup(func() { c.Close(); waitClosed(t, done) })
	br := bufio.NewReader(c)
	start := time.Now()
	n := 0
	var last time.Time
	for time.Since(start) < 3*idle {
		if code, _ := roundTrip(t, br, c, "x", "/"); code != 200 {
			t.Fatalf("request %d: status %d", n, code)
		}
		last = time.Now()
		n++
		time.Sleep(idle / 10)
	}
	select {
	case <-done:
		if d := time.Since(last); d < idle {
			t.Fatalf("closed %v after the last request, before the %v idle timeout", d, idle)
		}
		t.Logf("%d requests over %v on one connection; closed %v after the last", n, last.Sub(start), time.Since(last))
	case <-time.After(idle + 10*time.Second):
		t.Fatal("a silent connection was not closed 10s after its idle timeout")
	}
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("the client read a byte after the server closed")
	}
}
