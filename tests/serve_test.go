package tests

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDefaultHandler: the embedded hello handler answers, over 1000
// sequential new connections, on both workers, for both policies.
func TestDefaultHandler(t *testing.T) {
	t.Parallel()
	for _, sched := range []string{"rr", "shared"} {
		t.Run(sched, func(t *testing.T) {
			s := start(t, "--workers", "2", "--sched", sched)
			client := newClient()
			seen := map[string]int{}
			for i := 0; i < 1000; i++ {
				body, worker, err := get(context.Background(), client, s.url(), true)
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				if body != "hello world\n" {
					t.Fatalf("request %d: body %q", i, body)
				}
				seen[worker]++
			}
			if seen["1"] == 0 || seen["2"] == 0 || len(seen) != 2 {
				t.Fatalf("want requests served by workers 1 and 2, got %v", seen)
			}
			t.Logf("%s: served by worker: %v", sched, seen)
		})
	}
}

// TestKeepAlive: one connection carries many requests.
func TestKeepAlive(t *testing.T) {
	t.Parallel()
	s := start(t, "--workers", "2")
	client := newClient()
	reused := 0
	for i := 0; i < 50; i++ {
		trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
			if info.Reused {
				reused++
			}
		}}
		ctx := httptrace.WithClientTrace(context.Background(), trace)
		body, _, err := get(ctx, client, s.url(), false)
		if err != nil || body != "hello world\n" {
			t.Fatalf("request %d: %q %v", i, body, err)
		}
	}
	if reused < 49 {
		t.Fatalf("want 49 of 50 requests on a reused connection, got %d", reused)
	}
}

// TestPipelining: requests sent in one write are all answered, in order.
func TestPipelining(t *testing.T) {
	t.Parallel()
	s := start(t, "--workers", "1")
	c := s.dial(t)
	req := "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
	if _, err := c.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), "hello world\n"); n != 3 {
		t.Fatalf("want 3 responses, got %d:\n%s", n, b)
	}
}

// echo sends payload, half-closes, and returns everything read back.
func echo(t testing.TB, c *net.TCPConn, payload []byte) []byte {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
	return got
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// TestEcho: a 1 MiB payload comes back byte-exact through the ABI.
func TestEcho(t *testing.T) {
	t.Parallel()
	s := start(t, "--workers", "2", guest(t, "go-echo"))
	payload := randomBytes(1 << 20)
	if got := echo(t, s.dial(t), payload); !bytes.Equal(got, payload) {
		t.Fatalf("echo: sent %d bytes, got %d back (or different bytes)", len(payload), len(got))
	}
}

// TestWASICommand: a plain WASI program is a handler, stdin/stdout bound to
// the connection.
func TestWASICommand(t *testing.T) {
	t.Parallel()
	s := start(t, "--workers", "2", guest(t, "go-cat"))
	payload := randomBytes(256 << 10)
	if got := echo(t, s.dial(t), payload); !bytes.Equal(got, payload) {
		t.Fatalf("cat: sent %d bytes, got %d back (or different bytes)", len(payload), len(got))
	}
}

// TestGracefulStop: SIGTERM lets an open connection finish, then the
// master exits 0.
func TestGracefulStop(t *testing.T) {
	s := start(t, "--workers", "2", guest(t, "go-echo"))
	c := s.dial(t)
	if _, err := c.Write([]byte("first ")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "first " {
		t.Fatalf("first half: %q %v", buf, err)
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	s.waitOutput("shutting down", 30*time.Second)
	// The listener is closed: new connections are refused.
	if c2, err := net.DialTimeout("tcp", s.addr, 5*time.Second); err == nil {
		c2.Close()
		t.Errorf("connection accepted after shutdown began")
	}
	if got := echo(t, c, []byte("second")); string(got) != "second" {
		t.Fatalf("second half: %q", got)
	}
	if err := s.waitExit(30 * time.Second); err != nil {
		t.Fatalf("exit: %v\n%s", err, s.output())
	}
}

// TestBadInput: each mistake gets one line naming it, and a non-zero exit.
func TestBadInput(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	notWasm := write("readme.wasm", []byte("hello, I am text\n"))
	neither := write("neither.wasm", tinyModule(fn{"foo", sigVoid}))
	v2 := write("v2.wasm", tinyModule(fn{"wcluster_abi_v2", sigVoid}, fn{"wcluster_handle", sigHandle}))
	noMarker := write("nomarker.wasm", tinyModule(fn{"wcluster_handle", sigHandle}))

	// A port in use: hold one.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()

	cases := []struct {
		name string
		args []string
		want string
	}{
		{"missing file", []string{"serve", filepath.Join(dir, "nope.wasm")}, "no such file"},
		{"not wasm", []string{"serve", notWasm}, "not a WebAssembly module"},
		{"no entry point", []string{"serve", neither}, "exports neither wcluster_handle nor _start"},
		{"abi mismatch", []string{"serve", v2}, "speaks wcluster ABI v2, but this wcluster speaks v1"},
		{"no version marker", []string{"serve", noMarker}, "no wcluster_abi_v1 marker"},
		{"port in use", []string{"serve", "--listen", busy.Addr().String()}, "address already in use"},
		{"zero workers", []string{"serve", "--workers", "0"}, "--workers must be at least 1"},
		{"bad policy", []string{"serve", "--sched", "random"}, "unknown scheduling policy"},
		{"bad size", []string{"serve", "--memory-limit", "12 parsecs"}, "--memory-limit"},
		{"check not wasm", []string{"check", notWasm}, "not a WebAssembly module"},
		{"check abi mismatch", []string{"check", v2}, "ABI v2"},
		{"handler flag with config", []string{"serve", "--config", write("c.toml", []byte("")), "--tls-cert", notWasm}, "--tls-cert does not apply with --config"},
		{"handler and config", []string{"serve", "--config", write("d.toml", []byte("")), notWasm}, "a handler or --config, not both"},
		{"tls cert alone", []string{"serve", "--tls-cert", notWasm}, "--tls-cert and --tls-key go together"},
		{"missing config", []string{"serve", "--config", filepath.Join(dir, "none.toml")}, "no such file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if args[0] == "serve" && !slices.Contains(args, "--config") {
				args = append([]string{"serve", "--cache-dir", env.cache, "--listen", "127.0.0.1:0"}, args[1:]...)
			}
			out, err := run(t, args...)
			var exit *exec.ExitError
			if err == nil || !errorsAs(err, &exit) {
				t.Fatalf("want a non-zero exit, got %v; output:\n%s", err, out)
			}
			if !strings.Contains(out, tc.want) {
				t.Fatalf("want output containing %q, got:\n%s", tc.want, out)
			}
			if lines := strings.Count(out, "\n") + 1; lines != 1 {
				t.Fatalf("want one line, got %d:\n%s", lines, out)
			}
		})
	}
}

// TestCheck: check describes a good module.
func TestCheck(t *testing.T) {
	t.Parallel()
	out, err := run(t, "check", guest(t, "go-hello"))
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	for _, want := range []string{"wcluster ABI v1", "wcluster.conn_read", "wcluster_handle"} {
		if !strings.Contains(out, want) {
			t.Errorf("check output lacks %q:\n%s", want, out)
		}
	}
	out, err = run(t, "check", guest(t, "go-cat"))
	if err != nil || !strings.Contains(out, "WASI command") {
		t.Fatalf("check go-cat: %v\n%s", err, out)
	}
}

// TestEmbeddedIsRebuilt: the committed default handler is exactly what its
// source, guests/c/examples/hello.c, builds to.
func TestEmbeddedIsRebuilt(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cmd := exec.Command(filepath.Join(env.root, "guests/c/build.sh"), dir)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("guests/c/build.sh: %v\n%s", err, b)
	}
	built, err := os.ReadFile(filepath.Join(dir, "c-hello.wasm"))
	if err != nil {
		t.Fatal(err)
	}
	committed, err := os.ReadFile(filepath.Join(env.root, "guests/embedded/hello.wasm"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(built, committed) {
		t.Fatalf("guests/embedded/hello.wasm (%d bytes) differs from a fresh build of guests/c/examples/hello.c (%d bytes): run `make embedded`",
			len(committed), len(built))
	}
}

var _ = http.MethodGet
