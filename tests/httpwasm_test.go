package tests

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/http-wasm/http-wasm-host-go/tck"
)

// httpWasmExample returns the path of an example guest of the http-wasm
// reference host's module (router, auth, redact, config, log, wasi).
func httpWasmExample(t *testing.T, name string) string {
	t.Helper()
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/http-wasm/http-wasm-host-go")
	cmd.Dir = env.root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list the http-wasm module: %v", err)
	}
	p := filepath.Join(strings.TrimSpace(string(out)), "examples", name+".wasm")
	if !exists(p) {
		t.Fatalf("%s: missing from the http-wasm module", p)
	}
	return p
}

// TestHTTPWasmTCK: the http-wasm TCK passes against wcluster serving its
// guest with the TCK backend as the upstream, over HTTP/1.1 in plaintext and
// over TLS, and over HTTP/2 (ALPN h2).
func TestHTTPWasmTCK(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	wasm := filepath.Join(dir, "tck.wasm")
	if err := os.WriteFile(wasm, tck.GuestWASM, 0o644); err != nil {
		t.Fatal(err)
	}
	backend := tck.StartBackend("127.0.0.1:0")
	t.Cleanup(backend.Close)
	if out, err := run(t, "check", wasm); err != nil || !strings.Contains(out, "speaks the http-wasm handler ABI") ||
		!strings.Contains(out, "features enabled at start: buffer_request, buffer_response, trailers") {
		t.Fatalf("check tck.wasm: %v\n%s", err, out)
	}
	s := start(t, "--workers", "2", "--upstream", backend.URL, wasm)
	t.Run("HTTP/1.1", func(t *testing.T) { tck.Run(t, newClient(), "http://"+s.addr) })

	cert, key := writeTestCert(t, dir, "tck", "localhost")
	ts := start(t, "--workers", "2", "--upstream", backend.URL, "--tls-cert", cert, "--tls-key", key, wasm)
	pool := certPool(t, cert)
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"},
	}}
	t.Run("HTTP/1.1+TLS", func(t *testing.T) { tck.Run(t, client, "https://"+ts.addr) })
	h2 := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}, ForceAttemptHTTP2: true,
	}}
	resp, err := h2.Get("https://" + ts.addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("ALPN gave %s, want HTTP/2", resp.Proto)
	}
	t.Run("HTTP/2+TLS", func(t *testing.T) { tck.Run(t, h2, "https://"+ts.addr) })
}

// do sends one request and returns status, headers and body.
func do(t *testing.T, client *http.Client, req *http.Request) (int, http.Header, string) {
	t.Helper()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: body: %v", req.Method, req.URL, err)
	}
	return resp.StatusCode, resp.Header, string(b)
}

func newRequest(t *testing.T, method, url, body string, hdr ...string) *http.Request {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	return req
}

// TestHTTPWasmExamples: the example guests of the http-wasm module behave
// as their sources say, served by wcluster with an upstream.
func TestHTTPWasmExamples(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var received []string // request bodies the upstream got
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		received = append(received, string(b))
		mu.Unlock()
		w.Header().Set("X-Upstream-Path", r.URL.Path)
		w.Header().Set("X-Upstream-XFF", r.Header.Get("X-Forwarded-For"))
		w.Header().Set("X-Upstream-Connection", r.Header.Get("Connection")+r.Header.Get("X-Hop"))
		fmt.Fprint(w, r.Header.Get("X-Reply"))
	}))
	t.Cleanup(upstream.Close)
	client := newClient()

	t.Run("router", func(t *testing.T) {
		s := start(t, "--workers", "2", "--upstream", upstream.URL, httpWasmExample(t, "router"))
		for _, p := range []string{"", "nothost", "a/b?c=d"} {
			code, hdr, body := do(t, client, newRequest(t, "GET", s.url()+p, ""))
			if code != 200 || body != "hello world" || hdr.Get("Content-Type") != "text/plain" {
				t.Fatalf("GET /%s: %d %q %v, want 200 \"hello world\" text/plain", p, code, body, hdr)
			}
		}
		// /host... is passed on, /host stripped: hop-by-hop headers dropped,
		// X-Forwarded-For set.
		code, hdr, body := do(t, client, newRequest(t, "GET", s.url()+"host/a", "", "X-Reply", "from upstream", "Connection", "X-Hop", "X-Hop", "secret"))
		if code != 200 || body != "from upstream" || hdr.Get("X-Upstream-Path") != "/a" {
			t.Fatalf("GET /host/a: %d %q path %q, want 200 \"from upstream\" /a", code, body, hdr.Get("X-Upstream-Path"))
		}
		if xff := hdr.Get("X-Upstream-XFF"); xff != "127.0.0.1" {
			t.Errorf("upstream saw X-Forwarded-For %q, want 127.0.0.1", xff)
		}
		if c := hdr.Get("X-Upstream-Connection"); c != "" {
			t.Errorf("hop-by-hop headers reached the upstream: %q", c)
		}
	})

	t.Run("auth", func(t *testing.T) {
		s := start(t, "--workers", "1", "--upstream", upstream.URL, httpWasmExample(t, "auth"))
		code, hdr, _ := do(t, client, newRequest(t, "GET", s.url(), ""))
		if code != 401 || hdr.Get("Www-Authenticate") != `Basic realm="test"` {
			t.Fatalf("no credentials: %d %v, want 401 with WWW-Authenticate", code, hdr)
		}
		req := newRequest(t, "GET", s.url(), "", "X-Reply", "welcome")
		req.SetBasicAuth("Aladdin", "open sesame")
		if code, _, body := do(t, client, req); code != 200 || body != "welcome" {
			t.Fatalf("Aladdin:open sesame: %d %q, want 200 from the upstream", code, body)
		}
		req = newRequest(t, "GET", s.url(), "")
		req.SetBasicAuth("Aladdin", "wrong")
		if code, _, _ := do(t, client, req); code != 401 {
			t.Fatalf("wrong password: %d, want 401", code)
		}
	})

	t.Run("redact", func(t *testing.T) {
		s := start(t, "--workers", "1", "--upstream", upstream.URL, "--guest-config", "open sesame", httpWasmExample(t, "redact"))
		for _, tc := range []struct{ in, out string }{
			{"open sesame", "###########"},
			{"hello world", "hello world"},
			{"hello open sesame world", "hello ########### world"},
		} {
			mu.Lock()
			received = nil
			mu.Unlock()
			code, _, body := do(t, client, newRequest(t, "POST", s.url(), tc.in, "X-Reply", tc.in))
			mu.Lock()
			got := strings.Join(received, "|")
			mu.Unlock()
			if code != 200 || body != tc.out || got != tc.out {
				t.Fatalf("POST %q: %d, response %q, upstream got %q; want %q both ways", tc.in, code, body, got, tc.out)
			}
		}
		// A chunked request body is redacted too.
		c := s.dial(t)
		fmt.Fprint(c, "POST / HTTP/1.1\r\nHost: x\r\nX-Reply: ok\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nopen \r\n6\r\nsesame\r\n0\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		mu.Lock()
		got := strings.Join(received, "|")
		mu.Unlock()
		if resp.StatusCode != 200 || !strings.HasSuffix(got, "|###########") {
			t.Fatalf("chunked POST: %d, upstream got %q", resp.StatusCode, got)
		}
	})

	t.Run("config", func(t *testing.T) {
		// Its start function traps unless the config is 8 bytes naming the
		// features it requires (2: buffer_response) and the host enables them.
		cfg := filepath.Join(t.TempDir(), "features")
		if err := os.WriteFile(cfg, []byte{2, 0, 0, 0, 0, 0, 0, 0}, 0o644); err != nil {
			t.Fatal(err)
		}
		wasm := httpWasmExample(t, "config")
		out, err := run(t, "check", "--guest-config", "@"+cfg, wasm)
		if err != nil || !strings.Contains(out, "features enabled at start: buffer_response") {
			t.Fatalf("check --guest-config: %v\n%s", err, out)
		}
		s := start(t, "--workers", "1", "--guest-config", "@"+cfg, "--upstream", upstream.URL, wasm)
		if code, _, body := do(t, client, newRequest(t, "GET", s.url(), "", "X-Reply", "configured")); code != 200 || body != "configured" {
			t.Fatalf("GET: %d %q", code, body)
		}
		if out, err := run(t, "serve", "--listen", "127.0.0.1:0", "--workers", "1", wasm); err == nil ||
			!strings.Contains(out, "--guest-config") || !strings.Contains(out, "unreachable") {
			t.Fatalf("serve without its config: %v\n%s", err, out)
		}
	})

	t.Run("log", func(t *testing.T) {
		s := start(t, "--workers", "1", httpWasmExample(t, "log"))
		if code, _, _ := do(t, client, newRequest(t, "GET", s.url(), "")); code != 404 {
			t.Fatalf("GET without upstream: %d, want 404 from next", code)
		}
		// A chunked body goes to net/http's path, on a connection of its own.
		chunked, err := http.NewRequest("POST", s.url(), io.MultiReader(strings.NewReader("x")))
		if err != nil {
			t.Fatal(err)
		}
		client.CloseIdleConnections()
		if code, _, _ := do(t, client, chunked); code != 404 {
			t.Fatalf("chunked POST without upstream: %d, want 404 from next", code)
		}
		// Each entry names its connection (0 would be the guest starting).
		lines := s.waitOutputN(`msg="hello world" .*source=guest`, 2, 30*time.Second)
		conns := map[string]bool{}
		for _, l := range lines {
			if m := regexp.MustCompile(` conn=([1-9][0-9]*)`).FindStringSubmatch(l); m != nil {
				conns[m[1]] = true
			}
		}
		if len(conns) != 2 {
			t.Fatalf("the guest's log entries of two connections name %d connections, want 2:\n%s", len(conns), strings.Join(lines, "\n"))
		}
	})

	t.Run("wasi", func(t *testing.T) {
		s := start(t, "--workers", "1", "--upstream", upstream.URL, httpWasmExample(t, "wasi"))
		if code, _, body := do(t, client, newRequest(t, "POST", s.url(), `{"hello": "panda"}`, "X-Reply", "{}")); code != 200 || body != "{}" {
			t.Fatalf("POST: %d %q", code, body)
		}
		s.waitOutput(`POST / HTTP/1.1`, 30*time.Second)
		s.waitOutput(`\{\\"hello\\": \\"panda\\"\}`, 30*time.Second)
	})
}

// faultsWAT is an http-wasm guest that misbehaves as its x-fault header
// asks: n a bad header name, v a header value with CR LF, s status 1000,
// t a trap, l an endless loop, m memory grown to the limit, a a response
// change after next without buffer_response; otherwise it answers "ok".
const faultsWAT = `(module
  (import "http_handler" "get_header_values" (func $get_header_values (param i32 i32 i32 i32 i32) (result i64)))
  (import "http_handler" "set_header_value" (func $set_header_value (param i32 i32 i32 i32 i32)))
  (import "http_handler" "set_status_code" (func $set_status_code (param i32)))
  (import "http_handler" "write_body" (func $write_body (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "x-fault")
  (data (i32.const 16) "bad name")
  (data (i32.const 32) "a\0d\0ab")
  (data (i32.const 48) "ok")
  (func (export "handle_request") (result i64)
    (local $mode i32)
    (if (i64.ne (call $get_header_values (i32.const 0) (i32.const 0) (i32.const 7) (i32.const 64) (i32.const 16)) (i64.const 0))
      (then (local.set $mode (i32.load8_u (i32.const 64)))))
    (if (i32.eq (local.get $mode) (i32.const 110))
      (then (call $set_header_value (i32.const 1) (i32.const 16) (i32.const 8) (i32.const 48) (i32.const 2))))
    (if (i32.eq (local.get $mode) (i32.const 118))
      (then (call $set_header_value (i32.const 1) (i32.const 0) (i32.const 7) (i32.const 32) (i32.const 4))))
    (if (i32.eq (local.get $mode) (i32.const 115))
      (then (call $set_status_code (i32.const 1000))))
    (if (i32.eq (local.get $mode) (i32.const 116))
      (then unreachable))
    (if (i32.eq (local.get $mode) (i32.const 108))
      (then (loop $spin (br $spin))))
    (if (i32.eq (local.get $mode) (i32.const 109))
      (then (loop $grow (br_if $grow (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) unreachable))
    (if (i32.eq (local.get $mode) (i32.const 97))
      (then (return (i64.const 1))))
    (call $write_body (i32.const 1) (i32.const 48) (i32.const 2))
    (i64.const 0))
  (func (export "handle_response") (param i32 i32)
    (call $set_status_code (i32.const 201))))
`

// TestHTTPWasmBadInput: malformed requests, oversize heads and bodies, and
// a guest's invalid calls get clear HTTP errors (a trap or a time-limit hit
// before the response started is a 500, counted); the worker lives on and
// keeps its connections.
func TestHTTPWasmBadInput(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	wat := filepath.Join(dir, "faults.wat")
	wasm := filepath.Join(dir, "faults.wasm")
	if err := os.WriteFile(wat, []byte(faultsWAT), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("wat2wasm", "-o", wasm, wat).CombinedOutput(); err != nil {
		t.Fatalf("wat2wasm (wabt): %v\n%s", err, out)
	}
	s, ctl := startControlled(t, "--workers", "1", "--timeout", "500ms", "--memory-limit", "1MiB", wasm)
	client := newClient()
	ok := func() {
		t.Helper()
		// (No Content-Type from the guest: sniffed, as net/http does.)
		if code, hdr, body := do(t, client, newRequest(t, "GET", s.url(), "")); code != 200 || body != "ok" ||
			hdr.Get("Content-Type") != "text/plain; charset=utf-8" {
			t.Fatalf("plain request: %d %q %v, want 200 ok text/plain", code, body, hdr)
		}
	}
	ok()
	for _, tc := range []struct {
		fault, log string
		code       int
	}{
		{"n", `set_header_value: .*bad name.* is not a header name`, 500},
		{"v", `holds a control character`, 500},
		{"s", `set_status_code: 1000 is not a status code`, 500},
		{"t", `guest trapped`, 500},
		{"l", `guest stopped at its time limit`, 500},
		{"m", `guest ran out of memory`, 500},
		{"a", `response went out already: enable buffer_response`, 404},
	} {
		code, _, body := do(t, client, newRequest(t, "GET", s.url(), "", "X-Fault", tc.fault))
		if code != tc.code {
			t.Fatalf("fault %s: %d %q, want %d", tc.fault, code, body, tc.code)
		}
		s.waitOutput(tc.log, 30*time.Second)
		ok()
	}
	st := waitStatus(t, ctl, "traps, timeouts and memory limit hits counted", func(st status) bool {
		h := st.Workers[0].Handler
		return h.Traps == 5 && h.Timeouts == 1 && h.MemoryLimitHits == 1
	})
	if st.Totals.Restarts != 0 {
		t.Fatalf("a worker restarted: %+v", st.Totals)
	}

	raw := func(req string) string {
		t.Helper()
		c := s.dial(t)
		fmt.Fprint(c, req)
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			t.Fatalf("%q: %v", req[:min(len(req), 40)], err)
		}
		return strings.TrimSpace(line)
	}
	if got := raw("GARBAGE\r\n\r\n"); !strings.HasPrefix(got, "HTTP/1.1 400") {
		t.Errorf("malformed request line: %q, want 400", got)
	}
	if got := raw("GET / HTTP/1.1\nHost: x\n\n"); !strings.HasPrefix(got, "HTTP/1.1 200") {
		t.Errorf("lines ended by bare LFs: %q, want 200", got)
	}
	if got := raw("GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n"); !strings.HasPrefix(got, "HTTP/1.1 400") {
		t.Errorf("two Host headers: %q, want 400", got)
	}
	if got := raw("GET / HTTP/1.1\r\nHost: x\r\nBad Name: y\r\n\r\n"); !strings.HasPrefix(got, "HTTP/1.1 400") {
		t.Errorf("a header name with a space: %q, want 400", got)
	}
	if got := raw("GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 100<<10) + "\r\n\r\n"); !strings.HasPrefix(got, "HTTP/1.1 431") {
		t.Errorf("100 KiB head: %q, want 431", got)
	}
	if got := raw("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000\r\n\r\n"); !strings.HasPrefix(got, "HTTP/1.1 413") {
		t.Errorf("100 GB body: %q, want 413", got)
	}
	// Pipelined requests on one connection are answered in order, by the
	// host's fast path, then, from the one with a chunked body on, by
	// net/http's server.
	c := s.dial(t)
	fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nX-Fault: s\r\n\r\nHEAD / HTTP/1.1\r\nHost: x\r\n\r\n"+
		"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"+
		"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	br := bufio.NewReader(c)
	for i, want := range []int{200, 500, 200, 200, 200, 200} {
		method := "GET"
		if i == 2 {
			method = "HEAD"
		}
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			t.Fatalf("pipelined response %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("pipelined response %d: %d, want %d", i, resp.StatusCode, want)
		}
		if i == 2 && resp.ContentLength != 2 {
			t.Fatalf("HEAD: Content-Length %d, want 2", resp.ContentLength)
		}
		if i == 5 && !resp.Close {
			t.Fatalf("last pipelined response: no Connection: close")
		}
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("after Connection: close: %v, want EOF", err)
	}
	ok()
}

// TestHTTPWasmUpstream: an upstream that fails gives 502, a log line and a
// counter; Expect: 100-continue is answered before the body is sent; an
// idle kept-alive connection holds no instance.
func TestHTTPWasmUpstream(t *testing.T) {
	t.Parallel()
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL
	dead.Close() // nothing listens there now
	s, ctl := startControlled(t, "--workers", "1", "--upstream", deadURL, httpWasmExample(t, "router"))
	client := newClient()
	code, _, _ := do(t, client, newRequest(t, "GET", s.url()+"host/x", ""))
	if code != 502 {
		t.Fatalf("dead upstream: %d, want 502", code)
	}
	s.waitOutput(`upstream failed`, 30*time.Second)
	waitStatus(t, ctl, "upstream error counted", func(st status) bool {
		return st.Workers[0].Handler.UpstreamErrors == 1
	})

	var mu sync.Mutex
	var got string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = string(b)
		mu.Unlock()
		w.Header().Set("Trailer", "X-Sum")
		w.Write([]byte("streamed"))
		w.Header().Set("X-Sum", "42")
	}))
	t.Cleanup(up.Close)
	// One instance: an idle kept-alive connection must not hold it, or the
	// request on the second connection would wait for it.
	s2 := start(t, "--workers", "1", "--instances", "1", "--instances-min", "1", "--upstream", up.URL, httpWasmExample(t, "router"))
	c := s2.dial(t)
	fmt.Fprint(c, "POST /host/up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100") {
		t.Fatalf("Expect: 100-continue: %q %v, want 100 Continue first", line, err)
	}
	br.ReadString('\n') // the empty line ending the interim response
	fmt.Fprint(c, "hello")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	mu.Lock()
	sent := got
	mu.Unlock()
	if resp.StatusCode != 200 || string(body) != "streamed" || sent != "hello" || resp.Trailer.Get("X-Sum") != "42" {
		t.Fatalf("after 100-continue: %d %q trailer %v, upstream got %q", resp.StatusCode, body, resp.Trailer, sent)
	}
	if code, _, body := do(t, client, newRequest(t, "GET", s2.url(), "")); code != 200 || body != "hello world" {
		t.Fatalf("second connection while the first is idle: %d %q", code, body)
	}
	// A request without a body (the fast path) gets the upstream's
	// streamed answer chunked, trailer included.
	resp2, err := client.Get(s2.url() + "host/stream")
	if err != nil {
		t.Fatal(err)
	}
	body2, _ := io.ReadAll(resp2.Body)
	resp2.Body.Close()
	if resp2.StatusCode != 200 || string(body2) != "streamed" || resp2.Trailer.Get("X-Sum") != "42" || len(resp2.TransferEncoding) == 0 {
		t.Fatalf("GET through the upstream: %d %q trailer %v encoding %v", resp2.StatusCode, body2, resp2.Trailer, resp2.TransferEncoding)
	}
	// The first connection is still usable.
	fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, err = http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("second request on the kept-alive connection: %v", err)
	}
	resp.Body.Close()
}

// TestHTTPWasmDrain: on reload the old worker drains its HTTP connections:
// an idle kept-alive one is closed, one in the middle of a request gets its
// answer with Connection: close, and new connections reach the new workers.
func TestHTTPWasmDrain(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var once sync.Once
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			select {
			case <-release:
			case <-time.After(30 * time.Second):
			}
		}
		fmt.Fprint(w, "up")
	}))
	t.Cleanup(func() { once.Do(func() { close(release) }); up.Close() })
	s, ctl := startControlled(t, "--workers", "1", "--upstream", up.URL, httpWasmExample(t, "router"))

	idle := s.dial(t)
	fmt.Fprint(idle, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	idleR := bufio.NewReader(idle)
	resp, err := http.ReadResponse(idleR, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("first request: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	busy := s.dial(t)
	fmt.Fprint(busy, "GET /host/slow HTTP/1.1\r\nHost: x\r\n\r\n")
	waitStatus(t, ctl, "the slow request in the guest", func(st status) bool {
		return len(st.Workers) == 1 && st.Workers[0].Handler.Calls == 2
	})
	t0 := time.Now()
	if out, err := run(t, "reload", "--control", ctl); err != nil {
		t.Fatalf("reload: %v: %s", err, out)
	}
	t.Logf("reload took %v", time.Since(t0))
	// The idle connection is closed by the old worker.
	if _, err := idleR.ReadByte(); err != io.EOF {
		t.Fatalf("idle kept-alive connection after reload: %v, want EOF", err)
	}
	if code, _, body := do(t, newClient(), newRequest(t, "GET", s.url(), "")); code != 200 || body != "hello world" {
		t.Fatalf("new connection after reload: %d %q", code, body)
	}
	t.Logf("idle closed and new connection served %v after the reload began", time.Since(t0))
	once.Do(func() { close(release) })
	resp, err = http.ReadResponse(bufio.NewReader(busy), nil)
	if err != nil {
		t.Fatalf("request in flight across the reload: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "up" || !resp.Close {
		t.Fatalf("request in flight across the reload: %d %q close=%v, want 200 \"up\" with Connection: close", resp.StatusCode, b, resp.Close)
	}
}

// TestHTTPWasmGoGuest: the Go http-wasm example (guests/go/hwhello, on the
// SDK in guests/go/httpwasm) answers /hello itself, checks its API key from
// --guest-config, and passes other requests on with a header added.
func TestHTTPWasmGoGuest(t *testing.T) {
	t.Parallel()
	wasm := filepath.Join(t.TempDir(), "go-httpwasm.wasm")
	if err := goBuild([]string{"GOOS=wasip1", "GOARCH=wasm"}, wasm, "-buildmode=c-shared", "./guests/go/hwhello"); err != nil {
		t.Fatal(err)
	}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "upstream: %s guest=%s", r.URL.Path, r.Header.Get("X-Guest"))
	}))
	t.Cleanup(up.Close)
	s := start(t, "--workers", "2", "--upstream", up.URL, "--guest-config", "k1", wasm)
	client := newClient()
	if code, _, _ := do(t, client, newRequest(t, "GET", s.url()+"hello", "")); code != 401 {
		t.Fatalf("without the key: %d, want 401", code)
	}
	if code, _, body := do(t, client, newRequest(t, "GET", s.url()+"hello", "", "X-Api-Key", "k1")); code != 200 || body != "hello world" {
		t.Fatalf("/hello: %d %q", code, body)
	}
	if code, _, body := do(t, client, newRequest(t, "GET", s.url()+"other", "", "X-Api-Key", "k1")); code != 200 || body != "upstream: /other guest=go" {
		t.Fatalf("/other: %d %q", code, body)
	}
}

// TestHTTPWasmRustGuest: the Rust http-wasm example (guests/rust/examples/
// hwhello, on the SDK crate guests/rust/httpwasm, built by `make guests`)
// checks its API key from --guest-config, answers /hello itself, and passes
// other requests on with a header added; its response function sees the
// upstream's answer go out unchanged.
func TestHTTPWasmRustGuest(t *testing.T) {
	t.Parallel()
	wasm := guest(t, "rust-httpwasm")
	if out, err := run(t, "check", wasm); err != nil || !strings.Contains(out, "http-wasm handler ABI") {
		t.Fatalf("check rust-httpwasm: %v\n%s", err, out)
	}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Upstream", "1")
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprintf(w, "upstream: %s %s guest=%s", r.Method, r.URL.RequestURI(), r.Header.Get("X-Guest"))
	}))
	t.Cleanup(up.Close)
	s := start(t, "--workers", "2", "--upstream", up.URL, "--guest-config", "k1", wasm)
	client := newClient()
	if code, _, body := do(t, client, newRequest(t, "GET", s.url()+"hello", "")); code != 401 || body != "missing or wrong X-Api-Key\n" {
		t.Fatalf("without the key: %d %q, want 401", code, body)
	}
	if code, _, _ := do(t, client, newRequest(t, "GET", s.url()+"hello", "", "X-Api-Key", "k2")); code != 401 {
		t.Fatalf("with a wrong key: %d, want 401", code)
	}
	if code, hdr, body := do(t, client, newRequest(t, "GET", s.url()+"hello", "", "X-Api-Key", "k1")); code != 200 || body != "hello world" || hdr.Get("Content-Type") != "text/plain" {
		t.Fatalf("/hello: %d %q %v", code, body, hdr)
	}
	code, hdr, body := do(t, client, newRequest(t, "POST", s.url()+"other?q=1", "data", "X-Api-Key", "k1"))
	if code != http.StatusAccepted || body != "upstream: POST /other?q=1 guest=rust" || hdr.Get("X-Upstream") != "1" {
		t.Fatalf("/other: %d %q %v", code, body, hdr)
	}
}

// TestHTTPWasmTenant: an http-wasm tenant (the C example, guests/c) beside
// an ABI tenant on one port, chosen by Host, with its upstream and guest
// config from the config file; the C guest answers itself or passes /api on.
func TestHTTPWasmTenant(t *testing.T) {
	t.Parallel()
	cGuest := guest(t, "c-httpwasm")
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "upstream %s guest=%s host=%s", r.URL.Path, r.Header.Get("X-Guest"), r.Host)
	}))
	t.Cleanup(up.Close)
	dir := t.TempDir()
	port := freePort(t)
	cfg := filepath.Join(dir, "wcluster.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`[cluster]
workers = 2
cache_dir = %q

[[tenant]]
name = "web"
handler = %q
listen = ["127.0.0.1:%d"]
hosts = ["web.test"]
upstream = %q
guest_config = "unused"

[[tenant]]
name = "hello"
handler = %q
listen = ["127.0.0.1:%d"]
`, env.cache, cGuest, port, up.URL, guest(t, "c-hello"), port)), 0o644); err != nil {
		t.Fatal(err)
	}
	startConfig(t, cfg)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if code, body := mustGet(t, addr, "web.test", "/"); code != 200 || body != "hello from C" {
		t.Fatalf("web.test /: %d %q", code, body)
	}
	if code, body := mustGet(t, addr, "web.test", "/api/x"); code != 200 || body != "upstream /api/x guest=c host=web.test" {
		t.Fatalf("web.test /api/x: %d %q", code, body)
	}
	if code, body := mustGet(t, addr, "other.test", "/"); code != 200 || body != "hello world\n" {
		t.Fatalf("other.test: %d %q, want the ABI tenant's hello", code, body)
	}
}

// TestHTTPWasmCheck: a module importing http_handler is checked against
// the ABI: a wrong signature, an unknown function, a missing export are
// refused with one line naming them, by check and by serve; --upstream
// for an ABI handler is refused too.
func TestHTTPWasmCheck(t *testing.T) {
	t.Parallel()
	if out, err := run(t, "serve", "--listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:9", guest(t, "c-hello")); err == nil ||
		!strings.Contains(out, "are for http-wasm handlers, and this module is a wcluster ABI handler") || strings.Count(out, "\n") != 0 {
		t.Errorf("--upstream for an ABI handler: %v\n%s", err, out)
	}
	dir := t.TempDir()
	const exports = `(memory (export "memory") 1)
  (func (export "handle_request") (result i64) (i64.const 0))`
	for _, tc := range []struct{ name, wat, want string }{
		{"signature", `(import "http_handler" "get_uri" (func (param i32) (result i32))) ` + exports +
			` (func (export "handle_response") (param i32 i32))`,
			"imports http_handler.get_uri with signature (i32) -> (i32), but the http-wasm handler ABI defines (i32, i32) -> (i32)"},
		{"unknown", `(import "http_handler" "get_body" (func (param i32 i32) (result i32))) ` + exports +
			` (func (export "handle_response") (param i32 i32))`,
			"imports http_handler.get_body, which the http-wasm handler ABI does not define"},
		{"no-response", `(import "http_handler" "get_uri" (func (param i32 i32) (result i32))) ` + exports,
			"exports handle_request but no handle_response"},
		{"mixed", `(import "http_handler" "get_uri" (func (param i32 i32) (result i32)))
  (import "wcluster" "conn_id" (func (result i64))) ` + exports + ` (func (export "handle_response") (param i32 i32))`,
			`imports wcluster.conn_id from "wcluster" beside "http_handler": an http-wasm guest may use only config_get, worker_id and kv_*`},
	} {
		wat := filepath.Join(dir, tc.name+".wat")
		wasm := filepath.Join(dir, tc.name+".wasm")
		if err := os.WriteFile(wat, []byte("(module "+tc.wat+")"), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("wat2wasm", "-o", wasm, wat).CombinedOutput(); err != nil {
			t.Fatalf("wat2wasm (wabt): %v\n%s", err, out)
		}
		for _, args := range [][]string{{"check", wasm}, {"serve", "--listen", "127.0.0.1:0", wasm}} {
			out, err := run(t, args...)
			if err == nil || !strings.Contains(out, tc.want) || strings.Count(out, "\n") != 0 {
				t.Errorf("%s %s: %v\n%s\nwant one line with %q", args[0], tc.name, err, out, tc.want)
			}
		}
	}
}

// TestHTTPWasmSharedKeepAlive: on a listener shared by two http-wasm
// tenants and an ABI one, sequential and pipelined requests alternating
// hosts on one kept-alive connection each reach their own tenant, and the
// connection stays open between them; a bad head or an unknown host after
// an http-wasm answer gets the Router's 400 or 421 and the close; a request
// the fast path leaves to net/http (a chunked body) is answered and closes.
func TestHTTPWasmSharedKeepAlive(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	port := freePort(t)
	cfg := filepath.Join(dir, "wcluster.toml")
	writeConfig(t, cfg, fmt.Sprintf(`[cluster]
workers = 2
cache_dir = %q

[[tenant]]
name = "web"
handler = %q
listen = ["127.0.0.1:%d"]
hosts = ["web.test"]

[[tenant]]
name = "router"
handler = %q
listen = ["127.0.0.1:%d"]
hosts = ["router.test"]

[[tenant]]
name = "abi"
handler = %q
listen = ["127.0.0.1:%d"]
hosts = ["abi.test"]
`, env.cache, guest(t, "c-httpwasm"), port, httpWasmExample(t, "router"), port, guest(t, "c-hello"), port))
	startConfig(t, cfg)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	// (The router example answers "hello world", the C ABI hello "hello world\n".)
	want := map[string]string{"web.test": "hello from C", "router.test": "hello world", "abi.test": "hello world\n"}
	get := func(host string) string { return "GET / HTTP/1.1\r\nHost: " + host + "\r\n\r\n" }
	post := "POST / HTTP/1.1\r\nHost: router.test\r\nContent-Length: 5\r\n\r\nhello"
	hosts := []string{"web.test", "abi.test", "router.test", "web.test", "router.test", "router.test", "abi.test", "web.test"}

	t.Run("sequential", func(t *testing.T) {
		c, br := dialRaw(t, addr)
		for i, h := range append(hosts, "router.test (POST)", "web.test") {
			req := get(h)
			if h == "router.test (POST)" {
				req, h = post, "router.test"
			}
			if _, err := io.WriteString(c, req); err != nil {
				t.Fatalf("request %d (Host %s): the connection was closed: %v", i, h, err)
			}
			if code, body, closed := readAnswer(t, br); code != 200 || body != want[h] || closed {
				t.Errorf("request %d (Host %s) on one connection: %d %q (close %v), want 200 %q, kept alive", i, h, code, body, closed, want[h])
			}
		}
	})

	t.Run("pipelined", func(t *testing.T) {
		c, br := dialRaw(t, addr)
		var all strings.Builder
		for _, h := range hosts {
			all.WriteString(get(h))
			if h == "web.test" {
				all.WriteString(post)
			}
		}
		io.WriteString(c, all.String())
		for i, h := range hosts {
			for _, h := range []string{h, "router.test"}[:1+strings.Count(h, "web")] {
				if code, body, closed := readAnswer(t, br); code != 200 || body != want[h] || closed {
					t.Errorf("pipelined request %d (Host %s): %d %q (close %v), want 200 %q, kept alive", i, h, code, body, closed, want[h])
				}
			}
		}
		// Still open: one more request on it is answered.
		io.WriteString(c, get("web.test"))
		if code, body, closed := readAnswer(t, br); code != 200 || body != want["web.test"] || closed {
			t.Errorf("after the pipelined ones: %d %q (close %v)", code, body, closed)
		}
	})

	t.Run("refused after an http-wasm answer", func(t *testing.T) {
		for name, tc := range map[string]struct {
			req  string
			code int
		}{
			"space before colon": {"GET / HTTP/1.1\r\nHost :abi.test\r\n\r\n", http.StatusBadRequest},
			"duplicate Host":     {"GET / HTTP/1.1\r\nHost: web.test\r\nHost: abi.test\r\n\r\n", http.StatusBadRequest},
			"unknown host":       {get("nobody.test"), http.StatusMisdirectedRequest},
			"oversized head":     {"GET / HTTP/1.1\r\nCookie: " + strings.Repeat("s", 9<<10) + "\r\nHost: web.test\r\n\r\n", http.StatusRequestHeaderFieldsTooLarge},
		} {
			c, br := dialRaw(t, addr)
			go io.WriteString(c, get("web.test")+tc.req)
			if code, body, _ := readAnswer(t, br); code != 200 || body != want["web.test"] {
				t.Errorf("%s: first answer %d %q", name, code, body)
			}
			if code, body, closed := readAnswer(t, br); code != tc.code || !closed {
				t.Errorf("%s: %d %q (close %v), want %d and close", name, code, body, closed, tc.code)
			}
			expectClosed(t, name, c, br)
		}
	})

	t.Run("chunked body goes to net/http and closes", func(t *testing.T) {
		c, br := dialRaw(t, addr)
		io.WriteString(c, get("abi.test")+"POST / HTTP/1.1\r\nHost: router.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
		if code, body, _ := readAnswer(t, br); code != 200 || body != want["abi.test"] {
			t.Errorf("abi.test first: %d %q", code, body)
		}
		if code, body, closed := readAnswer(t, br); code != 200 || body != want["router.test"] || !closed {
			t.Errorf("chunked POST to router.test: %d %q (close %v), want 200 %q and close", code, body, closed, want["router.test"])
		}
		expectClosed(t, "after the chunked request", c, br)
	})
}

// TestHTTPWasmWAF: the firewall example (guests/go/waf, the benchmark's
// CPU-heavy guest) passes a clean request on to the upstream, with its
// body, and answers 403 naming the rule for attacks in the target, a
// header or the body.
func TestHTTPWasmWAF(t *testing.T) {
	t.Parallel()
	wasm := guest(t, "go-waf")
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "upstream: %s %s %s", r.Method, r.URL.RequestURI(), b)
	}))
	t.Cleanup(up.Close)
	s := start(t, "--workers", "1", "--upstream", up.URL, wasm)
	client := newClient()
	if code, _, body := do(t, client, newRequest(t, "POST", s.url()+"search?q=wasm+cluster", "name=ada")); code != 200 || body != "upstream: POST /search?q=wasm+cluster name=ada" {
		t.Fatalf("clean request: %d %q", code, body)
	}
	for _, c := range []struct {
		name, path, body string
		hdr              []string
		rule             string
	}{
		{"sqli in the query", "search?q=1%27%20or%20%271%27=%271", "", nil, "sqli-tautology"},
		{"traversal", "files/..%2f..%2fetc/passwd", "", nil, "traversal"},
		{"scanner", "", "", []string{"User-Agent", "sqlmap/1.7"}, "scanner-agent"},
		{"xss in the body", "comment", "<script>alert(1)</script>", nil, "xss-script"},
		{"log4shell in a header", "", "", []string{"X-Api-Version", "${jndi:ldap://x/a}"}, "log4shell"},
	} {
		method := "GET"
		if c.body != "" {
			method = "POST"
		}
		code, _, body := do(t, client, newRequest(t, method, s.url()+c.path, c.body, c.hdr...))
		if code != 403 || !strings.Contains(body, c.rule) {
			t.Errorf("%s: %d %q, want 403 naming %s", c.name, code, body, c.rule)
		}
	}
}
