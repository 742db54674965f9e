package tests

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// TestDeferAccept: on a listener whose handler waits for the client to
// speak (the default hello handler), the kernel holds a new connection
// until its first bytes arrive: one dialled first and left silent is not
// handed over while a later one is served, and is served once it speaks.
// With --defer-accept=off, and for a handler that speaks first, the
// silent one is handed over at once, before the later one (accept takes
// connections in the order their handshakes completed).
func TestDeferAccept(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		args     []string
		deferred bool
		greets   bool
	}{
		{"hello", nil, true, false},
		{"reuseport", []string{"--sched", "reuseport"}, true, false},
		{"off", []string{"--defer-accept", "off"}, false, false},
		{"speaks-first", []string{guest(t, "go-greet")}, false, true},
	}
	t.Run("bad-value", func(t *testing.T) {
		t.Parallel()
		if out, err := tryStart(t, "--defer-accept", "maybe"); err == nil || !strings.Contains(fmt.Sprint(err), `--defer-accept "maybe": use on or off`) {
			t.Errorf("--defer-accept maybe: want a one-line error, got %v %v", out, err)
		}
	})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, ctl := startControlled(t, append([]string{"--workers", "1"}, tc.args...)...)
			// rr: the master counts what it accepted; reuseport: the
			// worker, in its heartbeat.
			accepted := func(st status) uint64 {
				if tc.name != "reuseport" {
					return st.Totals.Accepted
				}
				var n uint64
				for _, w := range st.Workers {
					n += w.Accepted
				}
				return n
			}
			silent := s.dial(t) // handshaken: unless deferred, in the accept queue now
			later := s.dial(t)
			later.SetDeadline(time.Now().Add(20 * time.Second))
			if tc.greets {
				line, err := bufio.NewReader(later).ReadString('\n')
				if err != nil || line != "220 greet ready\r\n" {
					t.Fatalf("greeting of the later connection: %q %v", line, err)
				}
			} else {
				served(t, later, "the later connection")
			}
			// Whenever the later one is counted, the silent one is too
			// unless the kernel still holds it.
			st := waitStatus(t, ctl, "the later connection counted", func(st status) bool { return accepted(st) >= 1 })
			want := uint64(2)
			if tc.deferred {
				want = 1
			}
			if got := accepted(st); got != want {
				t.Fatalf("accepted %d connections once the later one was served, want %d (deferred: %v)", got, want, tc.deferred)
			}
			if tc.greets {
				return
			}
			silent.SetDeadline(time.Now().Add(20 * time.Second))
			served(t, silent, "the silent connection, once it spoke")
			waitStatus(t, ctl, "both connections counted", func(st status) bool { return accepted(st) == 2 })
		})
	}
}

// served sends a request that closes c and checks the answer.
func served(t *testing.T, c net.Conn, what string) {
	t.Helper()
	if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	resp, err := io.ReadAll(c)
	if err != nil || !strings.HasPrefix(string(resp), "HTTP/1.1 200 OK") || !strings.HasSuffix(string(resp), "hello world\n") {
		t.Fatalf("%s: %q %v", what, resp, err)
	}
}
