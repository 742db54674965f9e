package host

import (
	"bufio"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/wcluster/wcluster/guests/embedded"
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

// TestSplitRequestInLoop: on a kept-alive connection, a request whose end
// arrives later makes the guest (the Go hello, which waits for the rest
// within its call) read inside the wait loop, through the dup of the
// socket; the answer still comes, and so does the next one.
func TestSplitRequestInLoop(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h, err := New(ctx, Options{Name: "split", Wasm: embedded.Hello, Timeout: 10 * time.Second,
		CacheDir: filepath.Join(os.TempDir(), "wcluster-host-test-cache")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close(ctx) })
	c, f := socketPair(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.ServeConn(ctx, f)
	}()
	t.Cleanup(func() { c.Close(); waitClosed(t, done) })
	br := bufio.NewReader(c)
	if code, _ := roundTrip(t, br, c, "x", "/"); code != 200 {
		t.Fatalf("first request: status %d", code)
	}
	// The first half, then (once the guest is surely waiting for the rest)
	// the second.
	if _, err := io.WriteString(c, "GET /split HTTP/1.1\r\nHost: x\r\n"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if _, err := io.WriteString(c, "\r\n"); err != nil {
		t.Fatal(err)
	}
	if code, body := readResponse(t, br); code != 200 || body != "hello world\n" {
		t.Fatalf("split request: status %d, body %q", code, body)
	}
	if code, _ := roundTrip(t, br, c, "x", "/"); code != 200 {
		t.Fatalf("request after the split one: status %d", code)
	}
}
