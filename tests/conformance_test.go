package tests

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"
)

// languages whose guests the conformance suite runs: each builds
// <prefix>-hello.wasm, <prefix>-echo.wasm and <prefix>-cat.wasm.
var languages = []string{"go", "c", "wat", "rust", "as", "zig"}

// TestConformance runs every language's handlers through the same cases on
// both policies. Every language's guests must be built (`make guests`, which
// `make test` runs, with WCLUSTER_GUESTS naming their folder): a language
// whose guests are missing fails, it is not skipped.
func TestConformance(t *testing.T) {
	t.Parallel()
	for _, lang := range languages {
		t.Run(lang, func(t *testing.T) {
			if !exists(env.guests + "/" + lang + "-hello.wasm") {
				missing(t, "%s guests not built (run `make guests`)", lang)
			}
			for _, sched := range []string{"rr", "shared"} {
				t.Run(sched, func(t *testing.T) { conformance(t, lang, sched) })
			}
		})
	}
}

func conformance(t *testing.T, lang, sched string) {
	common := []string{"--workers", "2", "--sched", sched}
	hello := start(t, append(common, guest(t, lang+"-hello"))...)
	t.Run("hello", func(t *testing.T) {
		client := newClient()
		for _, closing := range []bool{false, true} {
			for i := 0; i < 20; i++ {
				body, worker, err := get(context.Background(), client, hello.url(), closing)
				if err != nil || body != "hello world\n" {
					t.Fatalf("close=%v request %d: %q %v", closing, i, body, err)
				}
				if worker != "1" && worker != "2" {
					t.Fatalf("X-Wcluster-Worker = %q, want 1 or 2", worker)
				}
			}
		}
	})
	t.Run("pipelined", func(t *testing.T) {
		c := hello.dial(t)
		c.Write([]byte(strings.Repeat("GET / HTTP/1.1\r\nHost: x\r\n\r\n", 4) + "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
		b, err := io.ReadAll(c)
		if err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(string(b), "hello world\n"); n != 5 {
			t.Fatalf("want 5 answers, got %d:\n%s", n, b)
		}
	})
	t.Run("http/1.0", func(t *testing.T) {
		c := hello.dial(t)
		c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
		b, err := io.ReadAll(c) // HTTP/1.0 without keep-alive: the server closes
		if err != nil || !strings.Contains(string(b), "hello world\n") {
			t.Fatalf("%q %v", b, err)
		}
	})

	echoSrv := start(t, append(common, guest(t, lang+"-echo"))...)
	for _, size := range []int{0, 1, 64 << 10, 8 << 20} {
		t.Run(fmt.Sprintf("echo-%d", size), func(t *testing.T) {
			payload := randomBytes(size)
			if got := echo(t, echoSrv.dial(t), payload); !bytes.Equal(got, payload) {
				t.Fatalf("sent %d bytes, got %d (or different bytes)", size, len(got))
			}
		})
	}
	t.Run("peer-closes-mid-transfer", func(t *testing.T) {
		c := echoSrv.dial(t)
		c.Write(randomBytes(1 << 20))
		c.SetLinger(0)
		c.Close() // reset while the guest is still echoing
		payload := randomBytes(1000)
		for i := 0; i < 4; i++ { // every worker still serves
			if got := echo(t, echoSrv.dial(t), payload); !bytes.Equal(got, payload) {
				t.Fatalf("after a reset: got %d bytes", len(got))
			}
		}
	})

	cat := start(t, append(common, guest(t, lang+"-cat"))...)
	t.Run("wasi-command", func(t *testing.T) {
		payload := randomBytes(64 << 10)
		if got := echo(t, cat.dial(t), payload); !bytes.Equal(got, payload) {
			t.Fatalf("sent %d bytes, got %d (or different bytes)", len(payload), len(got))
		}
	})
	_ = time.Second
}

// TestPartialRequestHoldsNoInstance: every language's hello example, given
// the first part of a request, pushes it back and returns Keep rather than
// waiting in conn_read for the rest: with one instance, another client is
// answered meanwhile (a handler that waits would hold the instance until
// --read-timeout, 30 s), and the first is answered once its request is
// whole. The examples are what handler authors copy.
func TestPartialRequestHoldsNoInstance(t *testing.T) {
	t.Parallel()
	for _, lang := range languages {
		t.Run(lang, func(t *testing.T) {
			t.Parallel()
			if !exists(env.guests + "/" + lang + "-hello.wasm") {
				missing(t, "%s guests not built (run `make guests`)", lang)
			}
			s, ctl := startControlled(t, "--workers", "1", "--instances", "1", guest(t, lang+"-hello"))
			slow := s.dial(t)
			head := "GET /slow HTTP/1.1\r\nHost: x\r\n"
			if _, err := slow.Write([]byte(head)); err != nil {
				t.Fatal(err)
			}
			// Its first call has read the part sent.
			waitStatus(t, ctl, "the partial request's call", func(st status) bool { return handlerSum(st).Calls >= 1 })

			quick := s.dial(t)
			quick.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := quick.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")); err != nil {
				t.Fatal(err)
			}
			if b, err := io.ReadAll(quick); err != nil || !strings.Contains(string(b), "hello world\n") {
				t.Fatalf("a whole request beside a partial one, with one instance: %q %v (the partial one holds the instance?)", b, err)
			}

			slow.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := slow.Write([]byte("Connection: close\r\n\r\n")); err != nil {
				t.Fatal(err)
			}
			if b, err := io.ReadAll(slow); err != nil || !strings.Contains(string(b), "hello world\n") {
				t.Fatalf("the partial request completed: %q %v", b, err)
			}
		})
	}
}
