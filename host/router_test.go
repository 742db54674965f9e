package host

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// probeWasm returns the probe guest (guests/go/probe).
func probeWasm(t *testing.T) []byte {
	return goGuest(t, "go-probe", "../guests/go/probe", "-buildmode=c-shared")
}

// goGuest returns the Go guest name built from pkg: from WCLUSTER_GUESTS
// when built there, else built once for this test binary.
func goGuest(t *testing.T, name, pkg string, flags ...string) []byte {
	t.Helper()
	if dir := os.Getenv("WCLUSTER_GUESTS"); dir != "" {
		if b, err := os.ReadFile(filepath.Join(dir, name+".wasm")); err == nil {
			return b
		}
	}
	v, _ := builtGuests.LoadOrStore(name, &builtGuest{})
	g := v.(*builtGuest)
	g.once.Do(func() {
		dir, err := os.MkdirTemp("", "wcluster-host-test-")
		if err != nil {
			g.err = err
			return
		}
		defer os.RemoveAll(dir)
		out := filepath.Join(dir, name+".wasm")
		cmd := exec.Command("go", append(append([]string{"build"}, flags...), "-o", out, pkg)...)
		cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
		if b, err := cmd.CombinedOutput(); err != nil {
			g.err = fmt.Errorf("build %s: %v\n%s", name, err, b)
			return
		}
		g.wasm, g.err = os.ReadFile(out)
	})
	if g.err != nil {
		t.Fatal(g.err)
	}
	return g.wasm
}

// builtGuests holds each *builtGuest goGuest built, by name.
var builtGuests sync.Map

type builtGuest struct {
	once sync.Once
	wasm []byte
	err  error
}

func newProbe(t *testing.T, name string, o Options) *Handler {
	t.Helper()
	o.Wasm = probeWasm(t)
	o.Name = name
	if o.Config == nil {
		o.Config = map[string]string{"name": name}
	}
	o.Timeout = 10 * time.Second
	// Compiling under the race detector takes long: share the compiled code
	// between tests, and between runs (the cache is keyed by content).
	o.CacheDir = filepath.Join(os.TempDir(), "wcluster-host-test-cache")
	ctx := context.Background()
	h, err := New(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close(ctx) })
	return h
}

// socketPair returns a loopback TCP connection: the client end, and the
// server end as a non-blocking *os.File, as dispatch hands it over.
func socketPair(t *testing.T) (net.Conn, *os.File) {
	t.Helper()
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(lfd)
	if err := unix.Bind(lfd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(lfd, 1); err != nil {
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(lfd)
	port := sa.(*unix.SockaddrInet4).Port
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// The connection is established: accept returns at once.
	fd, _, err := unix.Accept4(lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c, os.NewFile(uintptr(fd), "conn")
}

// serveOne serves one connection on listener li of r; the returned channel
// is closed when ServeConn returned.
func serveOne(t *testing.T, r *Router, li int) (net.Conn, chan struct{}) {
	t.Helper()
	c, f := socketPair(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.ServeConn(context.Background(), f, li)
	}()
	t.Cleanup(func() {
		c.Close()
		waitClosed(t, done)
	})
	return c, done
}

func waitClosed(t *testing.T, done chan struct{}) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("ServeConn did not return within 20s")
	}
}

func roundTrip(t *testing.T, br *bufio.Reader, w io.Writer, host, path string) (int, string) {
	t.Helper()
	if _, err := fmt.Fprintf(w, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, host); err != nil {
		t.Fatal(err)
	}
	return readResponse(t, br)
}

func readResponse(t *testing.T, br *bufio.Reader) (int, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func TestParseHead(t *testing.T) {
	for _, c := range []struct {
		in       string
		host     string
		complete bool
		status   int // 0: accepted
	}{
		{"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n", "a.example", true, 0},
		{"GET / HTTP/1.1\r\nUser-Agent: x\r\nhOsT:  B.example:8080 \r\n\r\n", "B.example:8080", true, 0},
		{"GET / HTTP/1.1\r\nHost: a.exa", "", false, 0},
		{"GET / HTTP/1.0\r\nUser-Agent: x\r\n\r\n", "", true, 0},
		{"GET / HTTP/1.1\r\nHost:\r\n\r\n", "", true, 0},
		{"GET http://c.example:81/x?y HTTP/1.1\r\nHost: c.example:81\r\n\r\n", "c.example:81", true, 0},
		{"GET HTTPS://c.example HTTP/1.1\r\nHost: C.example\r\n\r\n", "c.example", true, 0},
		{"OPTIONS * HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", "[::1]:8080", true, 0},
		{"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n", "a.example:443", true, 0},
		{"GET / HTT", "", false, 0},
		{"", "", false, 0},
		{"GET / HTTP/1.1\r\nHostile: x\r\nHost: h\r\n\r\n", "h", true, 0},
		{"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "h", true, 0},
		// Refused: heads different readers read differently.
		{"GET / HTTP/1.1\r\nHost :a.example\r\n\r\n", "", true, 400},
		{"GET / HTTP/1.1\r\nHost\t: a.example\r\n\r\n", "", true, 400},
		{"GET / HTTP/1.1\r\nX-A: 1\r\n Host: b.example\r\nHost: a.example\r\n\r\n", "", true, 400},
		{"GET / HTTP/1.1\r\n Host: b.example\r\n\r\n", "", true, 400},
		{"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", "", true, 400},
		{"GET / HTTP/1.1\r\nHost: a.example\r\nhost: a.example\r\n\r\n", "", true, 400},
		{"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "", true, 400},
		{"GET / HTTP/1.1\r\nHost: user@a.example\r\n\r\n", "", true, 400},
		{"GET / HTTP/1.1\r\nHost: a.example/x\r\n\r\n", "", true, 400},
		{"GET / HTTP/1.1\r\nHost: a.example:8o\r\n\r\n", "", true, 400},
		{"GET / HTTP/1.1\r\nHost: :80\r\n\r\n", "", true, 400},
		{"GET / HTTP/1.1\r\nHost: [zz]\r\n\r\n", "", true, 400},
		{"GET / HTTP/1.1\r\n\r\n", "", true, 400},
		{"GET / HTTP/1.0\n\n", "", false, 400},
		{"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", "", true, 400},
		{"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", "", true, 400},
		{"GET http://b.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n", "", true, 400},
		{"GET http://u@b.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n", "", true, 400},
		{"GET x HTTP/1.1\r\nHost: a\r\n\r\n", "", true, 400},
		{"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", "", true, 400},
		{"GET / HTTP/2.0\r\nHost: a\r\n\r\n", "", true, 400},
		{"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", "", true, 400},
		{"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", "", true, 400},
		{"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", "", true, 400},
		{"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", "", true, 400},
		{"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "", true, 400},
		{"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", "", true, 400},
	} {
		h, complete, bad := parseHead([]byte(c.in))
		status := 0
		if bad != nil {
			status = bad.status
		}
		if complete != c.complete || status != c.status || status == 0 && string(h.host) != c.host {
			t.Errorf("parseHead(%q) = host %q, complete %v, status %d (%v); want %q, %v, %d", c.in, h.host, complete, status, bad, c.host, c.complete, c.status)
		}
	}
	h, _, _ := parseHead([]byte("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\nUpgrade: x\r\n\r\nbody"))
	if h.size != 60 || h.length != 12 || h.chunked || !h.upgrade {
		t.Errorf("framing: %+v", h)
	}
	for in, want := range map[string]string{
		"A.Example": "a.example", "a.example:80": "a.example", "[::1]:80": "::1", "::1": "::1",
		"a.example.": "a.example", "": "", "127.0.0.1:8000": "127.0.0.1",
	} {
		if got := normalizeHost(in); got != want {
			t.Errorf("normalizeHost(%q) = %q, want %q", in, got, want)
		}
		if got := string(appendNormalHost(nil, []byte(in))); got != want {
			t.Errorf("appendNormalHost(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestRouterHost: two tenants by Host on one listener; an unknown host gets
// 421; every request of a kept-alive connection, sequential or pipelined,
// reaches the tenant it names.
func TestRouterHost(t *testing.T) {
	a := &Tenant{Name: "a", Handler: newProbe(t, "a", Options{}), Hosts: []string{"a.test", "*.a.test"}}
	b := &Tenant{Name: "b", Handler: newProbe(t, "b", Options{}), Hosts: []string{"B.test"}}
	r, err := NewRouter([]Listener{{Tenants: []*Tenant{a, b}}}, RouterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for host, want := range map[string]string{"a.test": "tenant a\n", "x.y.A.test:8080": "tenant a\n", "b.test.": "tenant b\n"} {
		c, _ := serveOne(t, r, 0)
		code, body := roundTrip(t, bufio.NewReader(c), c, host, "/")
		if code != 200 || body != want {
			t.Errorf("Host %s: %d %q, want %q", host, code, body, want)
		}
	}

	c, done := serveOne(t, r, 0)
	br := bufio.NewReader(c)
	if code, body := roundTrip(t, br, c, "c.test", "/"); code != 421 || !strings.Contains(body, `"c.test"`) {
		t.Errorf("unknown host: %d %q, want 421", code, body)
	}
	waitClosed(t, done)
	if s := r.Stats(); s.Misdirected != 1 {
		t.Errorf("misdirected = %d, want 1", s.Misdirected)
	}

	// Keep-alive: each request goes to the tenant it names.
	c, _ = serveOne(t, r, 0)
	br = bufio.NewReader(c)
	for i, host := range []string{"a.test", "b.test", "b.test", "a.test"} {
		if code, body := roundTrip(t, br, c, host, "/"); code != 200 || body != "tenant "+host[:1]+"\n" {
			t.Errorf("request %d on one connection (Host %s): %d %q", i, host, code, body)
		}
	}

	// Pipelined, in one write, split inside the Host header across two; a
	// POST's body (by length, then chunked) is its tenant's, never routed.
	c, _ = serveOne(t, r, 0)
	br = bufio.NewReader(c)
	req := "GET /config?k=name HTTP/1.1\r\nHost: b.test\r\n\r\nGET / HTTP/1.1\r\nHost: a.test\r\n\r\n" +
		"GET / HTTP/1.1\r\nHost: b.test\r\n\r\n"
	c.Write([]byte(req[:20]))
	c.Write([]byte(req[20:]))
	for i, want := range []string{"b", "tenant a\n", "tenant b\n"} {
		if code, body := readResponse(t, br); code != 200 || body != want {
			t.Errorf("pipelined %d: %d %q, want %q", i, code, body, want)
		}
	}
	st := r.Stats()
	if a, b := st.Tenants["a"], st.Tenants["b"]; a.Calls != 5 || b.Calls != 5 {
		t.Errorf("stats %+v", st)
	}
}

// TestRouterFraming: a body is its request's tenant's, however it is
// framed, and what follows it is routed on its own.
func TestRouterFraming(t *testing.T) {
	a := &Tenant{Name: "a", Handler: newProbe(t, "a", Options{}), Hosts: []string{"a.test"}}
	b := &Tenant{Name: "b", Handler: newProbe(t, "b", Options{}), Hosts: []string{"b.test"}}
	r, err := NewRouter([]Listener{{Tenants: []*Tenant{a, b}}}, RouterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The probe answers each head it finds, in the bytes it is given: a
	// body that looks like a request for b must reach a, as part of a's
	// request, never b; a request for b after the body reaches b.
	smuggled := "GET / HTTP/1.1\r\nHost: b.test\r\n\r\n"
	for _, c := range []struct {
		framing string
		want    []string // answers: a body, or a status
	}{
		{fmt.Sprintf("Content-Length: %d\r\n\r\n%s", len(smuggled), smuggled), []string{"tenant a\n", "tenant a\n", "tenant b\n"}},
		// a reads the chunk-size line as a request line: 400, and closes.
		{fmt.Sprintf("Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", len(smuggled), smuggled), []string{"tenant a\n", "400"}},
	} {
		conn, _ := serveOne(t, r, 0)
		br := bufio.NewReader(conn)
		fmt.Fprintf(conn, "POST / HTTP/1.1\r\nHost: a.test\r\n%s%s", c.framing, smuggled)
		for i, want := range c.want {
			code, body := readResponse(t, br)
			if body != want && strconv.Itoa(code) != want {
				t.Errorf("%.50q: answer %d: %d %q, want %q", c.framing, i, code, body, want)
			}
		}
	}
	if s := r.Stats(); s.Tenants["b"].Calls != 1 {
		t.Errorf("b was called %d times, want 1", s.Tenants["b"].Calls)
	}
}

// TestRouterRefusals: malformed heads get 400, an oversized one 431, a host
// of another group 421, each as a whole answer closing the connection.
func TestRouterRefusals(t *testing.T) {
	a := &Tenant{Name: "a", Handler: newProbe(t, "a", Options{}), Hosts: []string{"a.test"}}
	d := &Tenant{Name: "d", Handler: newProbe(t, "d", Options{})}
	r, err := NewRouter([]Listener{{Tenants: []*Tenant{a, d}}}, RouterOptions{ForeignHosts: []string{"other.test", "*.far.test"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		req    string
		status int
	}{
		{"GET / HTTP/1.1\r\nHost :a.test\r\n\r\n", 400},
		{"GET / HTTP/1.1\r\nX: 1\r\n Host: a.test\r\nHost: x.test\r\n\r\n", 400},
		{"GET / HTTP/1.1\r\nHost: x.test\r\nHost: a.test\r\n\r\n", 400},
		{"GET / HTTP/1.1\r\nHost: a.test@x\r\n\r\n", 400},
		{"GET / HTTP/1.1\r\nX: " + strings.Repeat("y", 9000) + "\r\nHost: a.test\r\n\r\n", 431},
		{"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n", 421},
		{"GET / HTTP/1.1\r\nHost: x.far.test\r\n\r\n", 421},
		// After a request served, on the same connection.
		{"GET / HTTP/1.1\r\nHost: a.test\r\n\r\nGET / HTTP/1.1\r\nHost: OTHER.test:80\r\n\r\n", 421},
		{"GET / HTTP/1.1\r\nHost: z.test\r\n\r\nGET / HTTP/1.1\r\nHost\t: a.test\r\n\r\n", 400},
	} {
		conn, done := serveOne(t, r, 0)
		br := bufio.NewReader(conn)
		go conn.Write([]byte(c.req))
		code, body := readResponse(t, br)
		if strings.Count(c.req, "GET") == 2 {
			if code != 200 {
				t.Errorf("%.60q: first answer %d %q", c.req, code, body)
			}
			code, body = readResponse(t, br)
		}
		if code != c.status {
			t.Errorf("%.60q: %d %q, want %d", c.req, code, body, c.status)
		}
		waitClosed(t, done)
	}
	if s := r.Stats(); s.Misdirected != 3 || s.Malformed != 6 {
		t.Errorf("misdirected %d, malformed %d; want 3, 6", s.Misdirected, s.Malformed)
	}
}

// TestRouterDefault: a default tenant takes unknown hosts and requests
// without Host; a single default tenant is served without routing.
func TestRouterDefault(t *testing.T) {
	a := &Tenant{Name: "a", Handler: newProbe(t, "a", Options{}), Hosts: []string{"a.test"}}
	d := &Tenant{Name: "d", Handler: newProbe(t, "d", Options{})}
	r, err := NewRouter([]Listener{{Tenants: []*Tenant{a, d}}, {Tenants: []*Tenant{d}}}, RouterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r.lis[1].direct == nil || r.lis[0].direct != nil {
		t.Fatal("want listener 1 served directly, listener 0 routed")
	}
	c, _ := serveOne(t, r, 0)
	if code, body := roundTrip(t, bufio.NewReader(c), c, "zzz", "/"); code != 200 || body != "tenant d\n" {
		t.Errorf("unknown host: %d %q, want tenant d", code, body)
	}
	c, _ = serveOne(t, r, 0)
	fmt.Fprintf(c, "GET / HTTP/1.0\r\n\r\n")
	if code, body := readResponse(t, bufio.NewReader(c)); code != 200 || body != "tenant d\n" {
		t.Errorf("no Host: %d %q, want tenant d", code, body)
	}
	c, _ = serveOne(t, r, 1)
	if code, body := roundTrip(t, bufio.NewReader(c), c, "a.test", "/"); code != 200 || body != "tenant d\n" {
		t.Errorf("direct listener: %d %q, want tenant d", code, body)
	}
}

func TestRouterInvalid(t *testing.T) {
	h := newProbe(t, "x", Options{})
	a := &Tenant{Name: "a", Handler: h, Hosts: []string{"same.test"}}
	b := &Tenant{Name: "b", Handler: h, Hosts: []string{"SAME.test"}}
	d1 := &Tenant{Name: "d1", Handler: h}
	d2 := &Tenant{Name: "d2", Handler: h}
	cert := selfSigned(t, "c.test")
	c := &Tenant{Name: "c", Handler: h, Hosts: []string{"c.test"}, Cert: &cert}
	_, err := NewRouter([]Listener{{Tenants: []*Tenant{a, b}}, {Tenants: []*Tenant{d1, d2}}, {Tenants: []*Tenant{c, d1}}, {}}, RouterOptions{})
	if err == nil {
		t.Fatal("want an error")
	}
	for _, want := range []string{`both claim host "SAME.test"`, `"d1" and "d2" both claim to be the default`, `tenant "d1" has no certificate`, "listener 3 has no tenant"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

// selfSigned makes a certificate for names, valid for an hour.
func selfSigned(t *testing.T, names ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: names[0]},
		DNSNames: names, NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// TestRouterTLS: the tenant and certificate follow SNI; the guest sees
// plaintext; a kept-alive TLS connection parks and is served again, with
// a pipelined pair in one record; Drain wakes a parked TLS connection.
func TestRouterTLS(t *testing.T) {
	ca, cb := selfSigned(t, "a.test"), selfSigned(t, "b.test")
	a := &Tenant{Name: "a", Handler: newProbe(t, "a", Options{IdleTimeout: time.Minute}), Hosts: []string{"a.test"}, Cert: &ca}
	b := &Tenant{Name: "b", Handler: newProbe(t, "b", Options{IdleTimeout: time.Minute}), Hosts: []string{"b.test"}, Cert: &cb}
	r, err := NewRouter([]Listener{{Tenants: []*Tenant{a, b}}}, RouterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Leaf)
	roots.AddCert(cb.Leaf)
	dial := func(name string) (*tls.Conn, chan struct{}) {
		c, done := serveOne(t, r, 0)
		tc := tls.Client(c, &tls.Config{ServerName: name, RootCAs: roots})
		if err := tc.Handshake(); err != nil {
			t.Fatalf("handshake for %s: %v", name, err)
		}
		return tc, done
	}
	for _, name := range []string{"a.test", "b.test"} {
		tc, _ := dial(name)
		if got := tc.ConnectionState().PeerCertificates[0].Subject.CommonName; got != name {
			t.Errorf("SNI %s: certificate for %s", name, got)
		}
		br := bufio.NewReader(tc)
		for i := 0; i < 3; i++ { // parked between requests
			if code, body := roundTrip(t, br, tc, name, "/"); code != 200 || body != "tenant "+name[:1]+"\n" {
				t.Errorf("SNI %s request %d: %d %q", name, i, code, body)
			}
		}
		// Two requests in one record: the second is served from what tls
		// already decrypted, not from the socket.
		fmt.Fprintf(tc, "GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /config?k=name HTTP/1.1\r\nHost: x\r\n\r\n")
		for i := 0; i < 2; i++ {
			if code, _ := readResponse(t, br); code != 200 {
				t.Errorf("pipelined %d over TLS: %d", i, code)
			}
		}
	}
	// A request for b on a's connection (RFC 9110 connection reuse): 421,
	// after the answer to the one before it.
	tc, done := dial("a.test")
	br := bufio.NewReader(tc)
	fmt.Fprintf(tc, "GET / HTTP/1.1\r\nHost: a.test\r\n\r\nGET / HTTP/1.1\r\nHost: b.test\r\n\r\n")
	if code, body := readResponse(t, br); code != 200 || body != "tenant a\n" {
		t.Errorf("SNI a.test, Host a.test: %d %q", code, body)
	}
	if code, body := readResponse(t, br); code != 421 {
		t.Errorf("SNI a.test, Host b.test: %d %q, want 421", code, body)
	}
	waitClosed(t, done)

	// Unknown SNI, no default: the handshake fails.
	c, _ := serveOne(t, r, 0)
	if err := tls.Client(c, &tls.Config{ServerName: "c.test", RootCAs: roots}).Handshake(); err == nil {
		t.Error("handshake for an unknown name succeeded")
	}

	// Drain wakes a parked TLS connection: it closes without a call.
	tc, done = dial("a.test")
	br = bufio.NewReader(tc)
	roundTrip(t, br, tc, "a.test", "/")
	waitParked(t, a.Handler)
	r.Drain()
	waitClosed(t, done)
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("after Drain: read %v, want EOF", err)
	}
}

// waitParked waits (bounded) until h has a parked connection.
func waitParked(t *testing.T, h *Handler) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		h.mu.Lock()
		parked := false
		for c := range h.conns {
			parked = parked || c.parked.Load()
		}
		h.mu.Unlock()
		if parked {
			return
		}
		runtime.Gosched()
	}
	t.Fatal("no connection parked within 10s")
}

// TestSandbox: config_get, the environment, the read-only mount, and what
// stays out of reach.
func TestSandbox(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "x"), []byte("mounted"), 0o644)
	t.Setenv("WCLUSTER_HOST_SECRET", "leak")
	h := newProbe(t, "a", Options{
		Env:    []string{"TENANT=a", "A_ONLY=1"},
		Config: map[string]string{"name": "a", "big": strings.Repeat("v", 1000)},
		Mount:  dir,
	})
	bare := newProbe(t, "bare", Options{})
	r, err := NewRouter([]Listener{{Tenants: []*Tenant{{Name: "a", Handler: h}}}, {Tenants: []*Tenant{{Name: "bare", Handler: bare}}}}, RouterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	get := func(li int, path string) (int, string) {
		c, _ := serveOne(t, r, li)
		return roundTrip(t, bufio.NewReader(c), c, "x", path)
	}
	check := func(li int, path string, code int, want string) {
		t.Helper()
		gc, body := get(li, path)
		if gc != code || !strings.Contains(body, want) {
			t.Errorf("%s on %d: %d %q, want %d containing %q", path, li, gc, body, code, want)
		}
	}
	check(0, "/config?k=name", 200, "a")
	check(0, "/config?k=big", 200, strings.Repeat("v", 1000))
	check(0, "/config?k=nope", 404, "not set")
	check(1, "/config?k=big", 404, "not set")
	if _, env := get(0, "/env"); env != "TENANT=a\nA_ONLY=1\n" {
		t.Errorf("env: %q, want only TENANT and A_ONLY", env)
	}
	if _, env := get(1, "/env"); strings.TrimSpace(env) != "" {
		t.Errorf("bare env: %q, want empty", env)
	}
	check(0, "/file?path=/data/x", 200, "mounted")
	check(0, "/file?path=/data/../etc/passwd", 403, "error")
	check(0, "/file?path=/etc/passwd", 403, "error")
	check(1, "/file?path=/data/x", 403, "error")
	check(0, "/net?addr=127.0.0.1:1", 403, "error")
}

// TestMountSymlinks: a symlink inside the mount resolves when it stays
// inside, and does not when it leads out.
func TestMountSymlinks(t *testing.T) {
	dir := t.TempDir()
	outside := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(outside, []byte("SECRET"), 0o644)
	os.WriteFile(filepath.Join(dir, "in"), []byte("inside"), 0o644)
	os.Symlink(outside, filepath.Join(dir, "out"))
	os.Symlink("/etc", filepath.Join(dir, "etc"))
	os.Symlink("in", filepath.Join(dir, "alias"))
	h := newProbe(t, "a", Options{Mount: dir})
	r, err := NewRouter([]Listener{{Tenants: []*Tenant{{Name: "a", Handler: h}}}}, RouterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]int{"/data/alias": 200, "/data/in": 200, "/data/out": 403, "/data/etc/passwd": 403} {
		c, _ := serveOne(t, r, 0)
		code, body := roundTrip(t, bufio.NewReader(c), c, "x", "/file?path="+path)
		if code != want || strings.Contains(body, "SECRET") || strings.Contains(body, "root:") {
			t.Errorf("%s: %d %q, want %d", path, code, body, want)
		}
	}
}

// TestRouterLimits: a tenant at MaxConns turns new connections away with
// 503, others are unaffected; a request head unfinished at RouteTimeout is
// answered 408.
func TestRouterLimits(t *testing.T) {
	a := &Tenant{Name: "a", Handler: newProbe(t, "a", Options{}), Hosts: []string{"a.test"}, MaxConns: 1}
	b := &Tenant{Name: "b", Handler: newProbe(t, "b", Options{}), Hosts: []string{"b.test"}}
	r, err := NewRouter([]Listener{{Tenants: []*Tenant{a, b}}}, RouterOptions{RouteTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	held, _ := serveOne(t, r, 0)
	hbr := bufio.NewReader(held)
	if code, _ := roundTrip(t, hbr, held, "a.test", "/"); code != 200 {
		t.Fatalf("first connection to a: %d", code)
	}
	c, done := serveOne(t, r, 0)
	if code, body := roundTrip(t, bufio.NewReader(c), c, "a.test", "/"); code != 503 {
		t.Errorf("second connection to a (max_conns 1): %d %q, want 503", code, body)
	}
	waitClosed(t, done)
	c, _ = serveOne(t, r, 0)
	if code, _ := roundTrip(t, bufio.NewReader(c), c, "b.test", "/"); code != 200 {
		t.Errorf("b while a is full: %d", code)
	}
	if s := r.Stats().Tenants["a"]; s.Refused != 1 {
		t.Errorf("a refused %d, want 1", s.Refused)
	}
	// The held connection still works; once closed, a takes a new one.
	if code, _ := roundTrip(t, hbr, held, "a.test", "/"); code != 200 {
		t.Errorf("held connection: %d", code)
	}
	held.Close()
	deadline := time.Now().Add(10 * time.Second)
	for r.tenants[0].open.Load() > 0 && time.Now().Before(deadline) {
		runtime.Gosched()
	}
	c, _ = serveOne(t, r, 0)
	if code, _ := roundTrip(t, bufio.NewReader(c), c, "a.test", "/"); code != 200 {
		t.Errorf("a after the held connection closed: %d", code)
	}

	c, done = serveOne(t, r, 0)
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nUser-Agent: slow") // never finishes
	if code, _ := readResponse(t, bufio.NewReader(c)); code != 408 {
		t.Errorf("request head unfinished: %d, want 408", code)
	}
	waitClosed(t, done)
}

func TestChunker(t *testing.T) {
	body := "5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\n"
	for split := 0; split < len(body); split++ { // in two pieces, cut anywhere
		var k chunker
		used, done, bad := k.scan([]byte(body[:split]))
		if bad || done || used != split {
			t.Fatalf("split %d: first piece: used %d done %v bad %v", split, used, done, bad)
		}
		used, done, bad = k.scan([]byte(body[split:] + "GET /"))
		if bad || !done || used != len(body)-split {
			t.Fatalf("split %d: second piece: used %d done %v bad %v", split, used, done, bad)
		}
	}
	for _, in := range []string{"x\r\n", "5\r\nhelloX\r\n", "5\nhello", "\r\n", "0\r\nT\nx"} {
		var k chunker
		if _, _, bad := k.scan([]byte(in)); !bad {
			t.Errorf("scan(%q) accepted", in)
		}
	}
}

// TestRoutingUpgrade: after a request's end, conn_read reports the end of
// the stream, unless the guest answered 101 to an Upgrade (or 2xx to
// CONNECT): then the connection leaves routing and the bytes held back are
// the tunnel's.
func TestRoutingUpgrade(t *testing.T) {
	for _, c := range []struct {
		connect bool
		answer  string
		tunnel  bool
	}{
		{false, "HTTP/1.1 101 Switching Protocols\r\n", true},
		{false, "HTTP/1.1 200 OK\r\n", false},
		{false, "HTTP/1.1 1", false}, // too short to tell
		{true, "HTTP/1.1 200 Connection established\r\n", true},
		{true, "HTTP/1.1 407 Proxy Authentication Required\r\n", false},
	} {
		rs := &routing{upgrade: true, connect: c.connect, frame: frameDone, held: []byte("tunnel")}
		cn := &conn{route: rs}
		// Written in two pieces, as a guest may.
		rs.wrote([]byte(c.answer[:5]))
		rs.wrote([]byte(c.answer[5:]))
		buf := make([]byte, 16)
		n := cn.read(buf)
		switch {
		case c.tunnel && (n != 6 || string(buf[:n]) != "tunnel" || cn.route != nil):
			t.Errorf("%q: read %d %q, routed %v; want the tunnel's bytes, unrouted", c.answer, n, buf[:max(n, 0)], cn.route != nil)
		case !c.tunnel && (n != 0 || cn.route == nil):
			t.Errorf("%q: read %d, routed %v; want 0 (end of the request), routed", c.answer, n, cn.route != nil)
		}
	}
}

// TestRouterDirectLimit: a plaintext listener's single tenant at its
// MaxConns refuses a connection given as a descriptor (ServeFD, as dispatch
// gives them) by closing it, and takes one again once the held one ends.
func TestRouterDirectLimit(t *testing.T) {
	t.Parallel()
	a := &Tenant{Name: "a", Handler: newProbe(t, "a", Options{}), MaxConns: 1}
	if !a.Handler.servesFD() {
		t.Fatal("the probe handler is not served from descriptors")
	}
	r, err := NewRouter([]Listener{{Tenants: []*Tenant{a}}}, RouterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	serveFD := func() (net.Conn, chan struct{}) {
		c, f := socketPair(t)
		fd := dupFD(t, f)
		done := make(chan struct{})
		go func() {
			defer close(done)
			r.ServeFD(context.Background(), fd, 0)
		}()
		t.Cleanup(func() { c.Close(); waitClosed(t, done) })
		return c, done
	}
	held, heldDone := serveFD()
	if code, _ := roundTrip(t, bufio.NewReader(held), held, "x", "/"); code != 200 {
		t.Fatalf("first connection: %d", code)
	}
	c, done := serveFD()
	waitClosed(t, done)
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("a connection past max_conns 1: read %d bytes, %v; want it closed", n, err)
	}
	if s := r.Stats().Tenants["a"]; s.Refused != 1 {
		t.Errorf("refused %d, want 1", s.Refused)
	}
	held.Close()
	waitClosed(t, heldDone)
	c, _ = serveFD()
	if code, _ := roundTrip(t, bufio.NewReader(c), c, "x", "/"); code != 200 {
		t.Errorf("after the held connection closed: %d", code)
	}
}
