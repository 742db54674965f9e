package host

// Micro-benchmarks of the per-request guest cost.
//
//	make guests   # out/guests: wat-hello, c-hello, go-spin, ...
//	WCLUSTER_GUESTS=$PWD/out/guests go test ./host/ -run XXX -bench . -benchtime 2s
//
// BenchmarkGuestCall     the wasm part of one keep-alive request: one call of
//                        wcluster_handle with the request already in the
//                        connection's pushed-back bytes (conn_read copies it
//                        into guest memory, no system call) and writes
//                        refused at once (conn_write returns ErrShutdown, no
//                        system call): parsing, the answer, two host calls.
// BenchmarkServeConn     one request and its answer through Handler.ServeConn
//                        over a unix socketpair, client in the same process:
//                        park (MSG_PEEK + netpoller), lend an instance, the
//                        call, read(2), write(2); next to a plain Go loop and
//                        net/http on the same socketpair.
// BenchmarkServeConnParallel  the same with 64 connections at once: ns/op is
//                        wall time per request (its inverse is requests/s).
// BenchmarkSpin          a compute-heavy call with Timeout 0 (no termination
//                        checks compiled in) against Timeout 30s (checks in
//                        every loop and function entry, issue 4).
// BenchmarkNewInstance   instantiate + _initialize + close of one instance.
//
// go-hello is the embedded default handler when WCLUSTER_GUESTS has none;
// other guests are skipped, with the reason, when not built.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wcluster/wcluster/guests/embedded"
)

// benchRequest is what wrk sends.
const benchRequest = "GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"

// benchSpinWasm is a hand-written ABI v1 handler (no imports) whose
// wcluster_handle runs 1<<20 rounds of xorshift64 and returns Close:
//
//	(module
//	  (memory (export "memory") 1)
//	  (func (export "wcluster_abi_v1"))
//	  (func (export "wcluster_handle") (param i32) (result i32)
//	    (local $i i32) (local $x i64)
//	    (local.set $x (i64.const 88172645463325252))
//	    (local.set $i (i32.const 1048576))
//	    (loop $l
//	      (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 13))))
//	      (local.set $x (i64.xor (local.get $x) (i64.shr_u (local.get $x) (i64.const 7))))
//	      (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 17))))
//	      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
//	      (br_if $l (local.get $i)))
//	    (i64.store (i32.const 0) (local.get $x))
//	    (i32.const 0)))
const benchSpinWasm = "\x00\x61\x73\x6d\x01\x00\x00\x00\x01\x09\x02\x60\x00\x00\x60\x01\x7f\x01\x7f\x03\x03\x02\x00\x01" +
	"\x05\x03\x01\x00\x01\x07\x2e\x03\x06\x6d\x65\x6d\x6f\x72\x79\x02\x00\x0f\x77\x63\x6c\x75\x73\x74" +
	"\x65\x72\x5f\x61\x62\x69\x5f\x76\x31\x00\x00\x0f\x77\x63\x6c\x75\x73\x74\x65\x72\x5f\x68\x61\x6e" +
	"\x64\x6c\x65\x00\x01\x0a\x53\x02\x02\x00\x0b\x4e\x02\x01\x7f\x01\x7e\x42\xc4\xf4\xfd\xdd\xdc\x91" +
	"\xd0\x9c\x01\x21\x02\x41\x80\x80\xc0\x00\x21\x01\x03\x40\x20\x02\x20\x02\x42\x0d\x86\x85\x21\x02" +
	"\x20\x02\x20\x02\x42\x07\x88\x85\x21\x02\x20\x02\x20\x02\x42\x11\x86\x85\x21\x02\x20\x01\x41\x01" +
	"\x6b\x21\x01\x20\x01\x0d\x00\x0b\x41\x00\x20\x02\x37\x03\x00\x41\x00\x0b"

const benchSpinRounds = 1 << 20

// benchGuest returns a built guest's bytes, or skips.
func benchGuest(b *testing.B, name string) []byte {
	b.Helper()
	if dir := os.Getenv("WCLUSTER_GUESTS"); dir != "" {
		if wasm, err := os.ReadFile(filepath.Join(dir, name+".wasm")); err == nil {
			return wasm
		}
	}
	if name == "go-hello" {
		return embedded.Hello
	}
	b.Skipf("%s.wasm not found: run `make guests` and set WCLUSTER_GUESTS=$PWD/out/guests", name)
	return nil
}

// benchOptions are the CLI's defaults, or no limits at all.
func benchOptions(wasm []byte, name string, limits bool) Options {
	o := Options{Wasm: wasm, Name: name, WorkerID: 1, Instances: 64, MinInstances: 1}
	if limits {
		o.MemoryLimit = 128 << 20
		o.Timeout = 30 * time.Second
		o.ReadTimeout, o.WriteTimeout = 30*time.Second, 30*time.Second
		o.IdleTimeout = 60 * time.Second
	}
	return o
}

func benchHandler(b *testing.B, o Options) *Handler {
	b.Helper()
	h, err := New(context.Background(), o)
	if err != nil {
		b.Fatal(err)
	}
	return h
}

// benchSocketpair returns both ends of a unix stream socketpair, non-blocking
// (as ServeConn wants; the client's end waits in the netpoller too).
func benchSocketpair(b *testing.B) (server, client *os.File) {
	b.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		b.Fatal(err)
	}
	return os.NewFile(uintptr(fds[0]), "server"), os.NewFile(uintptr(fds[1]), "client")
}

// benchRoundTrip writes req on c and reads one whole HTTP answer (headers
// and a Content-Length body) into buf, returning its length.
func benchRoundTrip(c *os.File, req, buf []byte) (int, error) {
	if _, err := c.Write(req); err != nil {
		return 0, err
	}
	n := 0
	for {
		m, err := c.Read(buf[n:])
		if m == 0 && err == nil {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			return n, err
		}
		n += m
		if end := bytes.Index(buf[:n], []byte("\r\n\r\n")); end >= 0 {
			length := 0
			for _, l := range bytes.Split(buf[:end], []byte("\r\n")) {
				if k, v, ok := bytes.Cut(l, []byte(":")); ok && bytes.EqualFold(k, []byte("Content-Length")) {
					length, _ = strconv.Atoi(string(bytes.TrimSpace(v)))
				}
			}
			if n >= end+4+length {
				if !bytes.HasPrefix(buf, []byte("HTTP/1.1 200 ")) {
					return n, fmt.Errorf("answer %q", buf[:n])
				}
				return n, nil
			}
		}
		if n == len(buf) {
			return n, errors.New("answer too long")
		}
	}
}

// BenchmarkGuestCall measures the wasm part of one request: no system call.
func BenchmarkGuestCall(b *testing.B) {
	for _, guest := range []string{"go-hello", "wat-hello", "c-hello", "rust-hello", "zig-hello", "as-hello"} {
		for _, limits := range []bool{false, true} {
			b.Run(fmt.Sprintf("%s/timeout=%v", guest, limits), func(b *testing.B) {
				h := benchHandler(b, benchOptions(benchGuest(b, guest), guest, limits))
				defer h.Close(context.Background())
				benchCheckAnswer(b, h)
				inst, err := h.acquire(context.Background())
				if err != nil {
					b.Fatal(err)
				}
				defer h.release(inst, true, time.Now())
				c := &conn{id: 1, h: h}
				req := []byte(benchRequest)
				b.ReportAllocs()
				b.ResetTimer()
				for range b.N {
					c.pending, c.wclosed = req, true
					if _, err := inst.handle(c, 0, time.Now()); err != nil {
						b.Fatal(err)
					}
					if len(c.pending) != 0 {
						b.Fatalf("the guest left %d bytes of the request unread", len(c.pending))
					}
				}
			})
		}
	}
}

// benchCheckAnswer serves one request on a socketpair and checks the answer,
// so a guest measured without I/O is known to answer properly.
func benchCheckAnswer(b *testing.B, h *Handler) {
	b.Helper()
	f, client := benchSocketpair(b)
	defer client.Close()
	done := make(chan struct{})
	go func() { h.ServeConn(context.Background(), f); close(done) }()
	buf := make([]byte, 4096)
	if _, err := benchRoundTrip(client, []byte(benchRequest), buf); err != nil {
		b.Fatalf("first request: %v", err)
	}
	if rc, err := client.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { unix.Shutdown(int(fd), unix.SHUT_WR) })
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		b.Fatal("ServeConn did not return after the client closed")
	}
}

// benchServer serves one end of a socketpair; stop closes the client end and
// waits (bounded) for the server to finish.
type benchServer struct {
	c       *os.File // the client's end
	done    chan struct{}
	cleanup func()
}

func (s *benchServer) stop(b *testing.B) {
	s.c.Close()
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		b.Error("server did not return after the client closed")
	}
	if s.cleanup != nil {
		s.cleanup()
	}
}

// benchServe starts one connection on kind: a guest name, "nethttp" or
// "rawgo"; h is nil for the last two.
func benchServe(b *testing.B, kind string, h *Handler) *benchServer {
	f, client := benchSocketpair(b)
	s := &benchServer{c: client, done: make(chan struct{})}
	switch kind {
	case "nethttp":
		nc, err := net.FileConn(f)
		f.Close()
		if err != nil {
			b.Fatal(err)
		}
		var once sync.Once
		srv := &http.Server{Handler: benchNetHTTP, ConnState: func(_ net.Conn, st http.ConnState) {
			if st == http.StateClosed {
				once.Do(func() { close(s.done) })
			}
		}}
		l := &oneConnListener{c: nc, closed: make(chan struct{})}
		go srv.Serve(l)
		s.cleanup = func() { l.Close() }
	case "rawgo":
		go func() { benchRawGo(f); close(s.done) }()
	default:
		go func() { h.ServeConn(context.Background(), f); close(s.done) }()
	}
	return s
}

var benchNetHTTP = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain")
	w.Write([]byte("hello world\n"))
})

// benchRawGo is the least a Go server can do per request on the same
// socketpair: one netpoller read, one write, no parsing.
func benchRawGo(f *os.File) {
	defer f.Close()
	answer := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nX-Wcluster-Worker: 1\r\n\r\nhello world\n")
	buf := make([]byte, 4096)
	for {
		n, err := f.Read(buf)
		if n == 0 || err != nil {
			return
		}
		if _, err := f.Write(answer); err != nil {
			return
		}
	}
}

// oneConnListener hands out one connection, then blocks until closed.
type oneConnListener struct {
	mu     sync.Mutex
	c      net.Conn
	closed chan struct{}
	once   sync.Once
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	c := l.c
	l.c = nil
	l.mu.Unlock()
	if c != nil {
		return c, nil
	}
	<-l.closed
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return &net.UnixAddr{Net: "unix"} }

var benchServeKinds = []string{"go-hello", "wat-hello", "c-hello", "nethttp", "rawgo"}

// benchServeHandler builds the Handler for a guest kind (nil otherwise).
func benchServeHandler(b *testing.B, kind string, limits bool) *Handler {
	if kind == "nethttp" || kind == "rawgo" {
		return nil
	}
	return benchHandler(b, benchOptions(benchGuest(b, kind), kind, limits))
}

// BenchmarkServeConn: one keep-alive connection, one request at a time.
func BenchmarkServeConn(b *testing.B) {
	for _, kind := range benchServeKinds {
		for _, limits := range []bool{false, true} {
			if !limits && (kind == "nethttp" || kind == "rawgo") {
				continue
			}
			b.Run(fmt.Sprintf("%s/limits=%v", kind, limits), func(b *testing.B) {
				h := benchServeHandler(b, kind, limits)
				s := benchServe(b, kind, h)
				req, buf := []byte(benchRequest), make([]byte, 4096)
				if _, err := benchRoundTrip(s.c, req, buf); err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				b.ResetTimer()
				for range b.N {
					if _, err := benchRoundTrip(s.c, req, buf); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				s.stop(b)
				if h != nil {
					h.Close(context.Background())
				}
			})
		}
	}
}

// BenchmarkServeConnParallel: 64 keep-alive connections at once, as wrk -c64.
func BenchmarkServeConnParallel(b *testing.B) {
	for _, kind := range benchServeKinds {
		for _, limits := range []bool{false, true} {
			if !limits && (kind == "nethttp" || kind == "rawgo") {
				continue
			}
			b.Run(fmt.Sprintf("%s/limits=%v", kind, limits), func(b *testing.B) {
				benchParallel(b, kind, limits)
			})
		}
	}
}

func benchParallel(b *testing.B, kind string, limits bool) {
	h := benchServeHandler(b, kind, limits)
	if h != nil {
		// Grow the pool first: a pool miss costs a whole instance
		// (BenchmarkNewInstance), which is not what this measures.
		var insts []*instance
		for range 64 {
			inst, err := h.acquire(context.Background())
			if err != nil {
				b.Fatal(err)
			}
			insts = append(insts, inst)
		}
		for _, inst := range insts {
			h.release(inst, true, time.Now())
		}
	}
	var mu sync.Mutex
	var servers []*benchServer
	var failed atomic.Value
	b.SetParallelism((64 + benchProcs() - 1) / benchProcs())
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		s := benchServe(b, kind, h)
		mu.Lock()
		servers = append(servers, s)
		mu.Unlock()
		req, buf := []byte(benchRequest), make([]byte, 4096)
		for pb.Next() {
			if _, err := benchRoundTrip(s.c, req, buf); err != nil {
				failed.CompareAndSwap(nil, err)
				return
			}
		}
	})
	b.StopTimer()
	for _, s := range servers {
		s.stop(b)
	}
	if h != nil {
		h.Close(context.Background())
	}
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
}

func benchProcs() int { return runtime.GOMAXPROCS(0) }

// BenchmarkSpin: a compute-heavy call with and without a time limit.
func BenchmarkSpin(b *testing.B) {
	type spinGuest struct {
		name   string
		wasm   func(*testing.B) []byte
		req    string
		rounds int
	}
	const goRounds = 1 << 20
	guests := []spinGuest{
		{"wat", func(*testing.B) []byte { return []byte(benchSpinWasm) }, "", benchSpinRounds},
		{"go-spin", func(b *testing.B) []byte { return benchGuest(b, "go-spin") },
			"GET /?n=" + strconv.Itoa(goRounds) + " HTTP/1.1\r\nHost: bench\r\n\r\n", goRounds},
	}
	for _, g := range guests {
		for _, timeout := range []time.Duration{0, 30 * time.Second} {
			b.Run(fmt.Sprintf("%s/timeout=%v", g.name, timeout), func(b *testing.B) {
				o := Options{Wasm: g.wasm(b), Name: g.name, Timeout: timeout, MinInstances: 1}
				h := benchHandler(b, o)
				defer h.Close(context.Background())
				inst, err := h.acquire(context.Background())
				if err != nil {
					b.Fatal(err)
				}
				defer h.release(inst, true, time.Now())
				c := &conn{id: 1, h: h}
				req := []byte(g.req)
				b.ResetTimer()
				for range b.N {
					c.pending, c.wclosed = req, true
					if _, err := inst.handle(c, 0, time.Now()); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(g.rounds), "ns/round")
			})
		}
	}
}

// BenchmarkNewInstance: what a pool miss (or --instances fresh) costs.
func BenchmarkNewInstance(b *testing.B) {
	for _, guest := range []string{"go-hello", "wat-hello", "c-hello"} {
		b.Run(guest, func(b *testing.B) {
			h := benchHandler(b, benchOptions(benchGuest(b, guest), guest, true))
			defer h.Close(context.Background())
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				inst, err := h.newInstance(context.Background(), 0)
				if err != nil {
					b.Fatal(err)
				}
				inst.close(context.Background())
			}
		})
	}
}

// BenchmarkRouterKeepAlive: one keep-alive connection through a Router,
// one request at a time, with the Go hello: a listener with one default
// tenant (not routed), and one shared by two tenants, every request for
// the same host or alternating between them (the connection moves).
func BenchmarkRouterKeepAlive(b *testing.B) {
	wasm := benchGuest(b, "go-hello")
	ha := benchHandler(b, benchOptions(wasm, "a", true))
	hb := benchHandler(b, benchOptions(wasm, "b", true))
	defer ha.Close(context.Background())
	defer hb.Close(context.Background())
	a := &Tenant{Name: "a", Handler: ha, Hosts: []string{"a.test"}}
	bt := &Tenant{Name: "b", Handler: hb, Hosts: []string{"b.test"}}
	d := &Tenant{Name: "d", Handler: ha}
	r, err := NewRouter([]Listener{{Tenants: []*Tenant{d}}, {Tenants: []*Tenant{a, bt}}}, RouterOptions{})
	if err != nil {
		b.Fatal(err)
	}
	reqA := []byte("GET / HTTP/1.1\r\nHost: a.test\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
	reqB := []byte("GET / HTTP/1.1\r\nHost: b.test\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
	for _, c := range []struct {
		name     string
		listener int
		reqs     [][]byte
	}{
		{"direct", 0, [][]byte{reqA}},
		{"shared-same", 1, [][]byte{reqA}},
		{"shared-alternating", 1, [][]byte{reqA, reqB}},
	} {
		b.Run(c.name, func(b *testing.B) {
			f, client := benchSocketpair(b)
			done := make(chan struct{})
			go func() { r.ServeConn(context.Background(), f, c.listener); close(done) }()
			buf := make([]byte, 4096)
			if _, err := benchRoundTrip(client, c.reqs[0], buf); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			var ru0, ru1 unix.Rusage
			unix.Getrusage(unix.RUSAGE_SELF, &ru0)
			b.ResetTimer()
			for i := range b.N {
				if _, err := benchRoundTrip(client, c.reqs[i%len(c.reqs)], buf); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			// CPU time (server and client, user and system) tells the cost
			// apart from waits on a loaded machine.
			unix.Getrusage(unix.RUSAGE_SELF, &ru1)
			cpu := time.Duration(ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano())
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
			(&benchServer{c: client, done: done}).stop(b)
		})
	}
}

// BenchmarkRouteHead: what routing adds per request on a shared listener:
// the strict parse of a typical proxied head and the tenant's lookup.
func BenchmarkRouteHead(b *testing.B) {
	head := []byte("GET /api/items?page=2 HTTP/1.1\r\nHost: b.test\r\nX-Real-IP: 127.0.0.1\r\n" +
		"X-Forwarded-For: 127.0.0.1\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\nAccept: */*\r\n" +
		"Accept-Encoding: gzip, deflate\r\nCookie: session=0123456789abcdef0123456789abcdef\r\n\r\n")
	rt := routeTable{exact: map[string]*tenantState{"a.test": {}, "b.test": {}}, wild: map[string]*tenantState{}}
	other := hostSet{exact: map[string]bool{"c.test": true}, wild: map[string]bool{}}
	b.SetBytes(int64(len(head)))
	b.ReportAllocs()
	var ru0, ru1 unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru0)
	for range b.N {
		h, complete, bad := parseHead(head)
		var buf [64]byte
		if t, _ := rt.route(appendNormalHost(buf[:0], h.host), &other); !complete || bad != nil || t == nil {
			b.Fatal("not routed")
		}
	}
	// CPU time: the cost without the waits of a loaded machine.
	unix.Getrusage(unix.RUSAGE_SELF, &ru1)
	b.ReportMetric(float64(ru1.Utime.Nano()+ru1.Stime.Nano()-ru0.Utime.Nano()-ru0.Stime.Nano())/float64(b.N), "cpu-ns/op")
}

// BenchmarkCommandConn: one connection per request to a WASI command that
// answers it and exits (a fresh instance, started, per connection), with
// the CLI's limits: what bounds commands' connections per second.
func BenchmarkCommandConn(b *testing.B) {
	for _, guest := range []string{"c-httpcmd", "go-httpcmd"} {
		b.Run(guest, func(b *testing.B) {
			h := benchHandler(b, benchOptions(benchGuest(b, guest), guest, true))
			defer h.Close(context.Background())
			req, buf := []byte(benchRequest), make([]byte, 4096)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					b.Fatal(err)
				}
				done := make(chan struct{})
				go func() {
					defer close(done)
					h.ServeConn(context.Background(), os.NewFile(uintptr(fds[0]), "server"))
				}()
				c := os.NewFile(uintptr(fds[1]), "client")
				if _, err := c.Write(req); err != nil {
					b.Fatal(err)
				}
				n := 0
				for {
					m, err := c.Read(buf[n:])
					n += m
					if err != nil {
						break
					}
				}
				c.Close()
				<-done
				if !bytes.Contains(buf[:n], []byte("hello world")) {
					b.Fatalf("answer %q", buf[:n])
				}
			}
		})
	}
}
