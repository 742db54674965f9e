package host

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/wcluster/wcluster/guests/embedded"
	"golang.org/x/sys/unix"
)

// newHello is a Handler of the default handler with o (its Name, Wasm, the
// tests' compilation cache, and a 10 s Timeout unless o has one), closed
// when the test ends.
func newHello(t *testing.T, name string, o Options) *Handler {
	t.Helper()
	ctx := context.Background()
	o.Name, o.Wasm = name, embedded.Hello
	o.CacheDir = filepath.Join(os.TempDir(), "wcluster-host-test-cache")
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Second
	}
	h, err := New(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close(ctx) })
	return h
}

// ways are the two ways a Handler is given a connection: an *os.File
// (ServeConn), or its descriptor as dispatch hands it over (serveFD, the
// socket outside Go's poller until it waits).
var ways = []string{"file", "fd"}

// bothWays runs test once for each of ways, in parallel.
func bothWays(t *testing.T, test func(t *testing.T, way string)) {
	t.Parallel()
	for _, way := range ways {
		t.Run(way, func(t *testing.T) {
			t.Parallel()
			test(t, way)
		})
	}
}

// serveVia serves f with h the way named.
func serveVia(ctx context.Context, t *testing.T, h *Handler, f *os.File, way string) {
	if way == "file" {
		h.ServeConn(ctx, f)
		return
	}
	h.serveFD(ctx, dupFD(t, f))
}

// dupFD returns a descriptor of f's socket (non-blocking, as f's) and closes
// f. (f.Fd would make the socket blocking.)
func dupFD(t *testing.T, f *os.File) int {
	rc, err := f.SyscallConn()
	if err != nil {
		t.Error(err)
		return -1
	}
	fd, derr := -1, error(nil)
	rc.Control(func(s uintptr) { fd, derr = unix.Dup(int(s)) })
	f.Close()
	if derr != nil {
		t.Error(derr)
	}
	return fd
}

// TestServeFDWithoutFile: a connection given as a descriptor whose request
// is there when it is served, and asks to close, is answered and closed
// without an *os.File (never in Go's poller); one kept alive makes its file
// when it waits, and is served after the wait.
func TestServeFDWithoutFile(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := newHello(t, "fd", Options{})
	for _, keep := range []bool{false, true} {
		client, f := socketPair(t)
		fd := dupFD(t, f)
		req := "GET / HTTP/1.1\r\nHost: x\r\n"
		if !keep {
			req += "Connection: close\r\n"
		}
		if _, err := io.WriteString(client, req+"\r\n"); err != nil {
			t.Fatal(err)
		}
		// The request is in the socket before the handler looks, as under
		// deferred accept.
		if n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 10000); n != 1 || err != nil {
			t.Fatalf("the request did not reach the server's socket in 10s: %v", err)
		}
		c := newConnFD(fd, int64(len(req)), h)
		done := make(chan struct{})
		go func() {
			defer close(done)
			h.serve(ctx, c)
		}()
		br := bufio.NewReader(client)
		if code, body := readResponse(t, br); code != 200 || body != "hello world\n" {
			t.Fatalf("keep-alive %v: status %d, body %q", keep, code, body)
		}
		if keep {
			// A second request after the connection waited.
			if code, _ := roundTrip(t, br, client, "x", "/"); code != 200 {
				t.Fatalf("the request after a wait: status %d", code)
			}
			client.Close()
		}
		waitClosed(t, done)
		if got := c.f != nil; got != keep {
			t.Errorf("keep-alive %v: the connection made its file: %v, want %v", keep, got, keep)
		}
		if !keep {
			if _, err := br.ReadByte(); err != io.EOF {
				t.Fatalf("after the answer to Connection: close: %v, want EOF", err)
			}
		}
	}
}

// TestIdleTimeout: a kept-alive connection that sends a request well within
// the idle timeout each time stays open across several timeouts' worth of
// time (park moves its deadline lazily, and a deadline that passed while the
// connection was busy must not close it); once silent, it is closed, not
// before the idle timeout.
func TestIdleTimeout(t *testing.T) { bothWays(t, testIdleTimeout) }

func testIdleTimeout(t *testing.T, way string) {
	const idle = time.Second
	h := newProbe(t, "idle", Options{IdleTimeout: idle})
	c, f := socketPair(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		serveVia(context.Background(), t, h, f, way)
	}()
	t.Cleanup(func() { c.Close(); waitClosed(t, done) })
	br := bufio.NewReader(c)
	start := time.Now()
	n := 0
	var last time.Time // when the last request was sent: its call ended after
	for time.Since(start) < 3*idle {
		last = time.Now()
		if code, _ := roundTrip(t, br, c, "x", "/"); code != 200 {
			t.Fatalf("request %d: status %d", n, code)
		}
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
// arrives later is answered (the Go hello pushes the first half back and
// returns Keep; the wait loop calls it again with both halves), and so is
// the next one.
func TestSplitRequestInLoop(t *testing.T) { bothWays(t, testSplitRequestInLoop) }

func testSplitRequestInLoop(t *testing.T, way string) {
	ctx := context.Background()
	h := newHello(t, "split", Options{})
	c, f := socketPair(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		serveVia(ctx, t, h, f, way)
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

// TestDrainGrace: a draining handler keeps an idle kept-alive connection for
// the client's next request, answers it with "Connection: close" and closes;
// one that stays silent is closed when the grace ends, not before.
func TestDrainGrace(t *testing.T) { bothWays(t, testDrainGrace) }

func testDrainGrace(t *testing.T, way string) {
	ctx := context.Background()
	const grace = 2 * time.Second
	h := newHello(t, "drain", Options{DrainGrace: grace})
	type client struct {
		c    io.ReadWriteCloser
		br   *bufio.Reader
		done chan struct{}
	}
	var cs [2]client
	for i := range cs {
		c, f := socketPair(t)
		done := make(chan struct{})
		go func() {
			defer close(done)
			serveVia(ctx, t, h, f, way)
		}()
		t.Cleanup(func() { c.Close(); waitClosed(t, done) })
		cs[i] = client{c, bufio.NewReader(c), done}
		if code, _ := roundTrip(t, cs[i].br, c, "x", "/"); code != 200 {
			t.Fatalf("connection %d: status %d", i, code)
		}
	}
	h.Drain()
	drained := time.Now()

	// The first client reuses its connection during the grace.
	time.Sleep(100 * time.Millisecond)
	if _, err := io.WriteString(cs[0].c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatalf("write during the drain's grace: %v", err)
	}
	resp, err := http.ReadResponse(cs[0].br, nil)
	if err != nil {
		t.Fatalf("request during the drain's grace: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || !resp.Close {
		t.Fatalf("request during the drain's grace: status %d, Connection: close %v", resp.StatusCode, resp.Close)
	}
	waitClosed(t, cs[0].done)

	// The second stays silent: closed at the end of the grace.
	waitClosed(t, cs[1].done)
	if d := time.Since(drained); d < grace-100*time.Millisecond {
		t.Fatalf("a silent connection closed %v after Drain, before the %v grace", d, grace)
	}
}

// TestFirstByteWait: with one instance, connections that send nothing hold
// none; past FirstByteLimit the one waiting longest is closed, and one that
// stays silent is closed at FirstByteTimeout, with no call for either.
func TestFirstByteWait(t *testing.T) { bothWays(t, testFirstByteWait) }

func testFirstByteWait(t *testing.T, way string) {
	ctx := context.Background()
	h := newHello(t, "first", Options{Instances: 1, FirstByteTimeout: time.Second, FirstByteLimit: 2})
	open := func(waiting int64) (io.ReadWriteCloser, chan struct{}) {
		c, f := socketPair(t)
		done := make(chan struct{})
		go func() {
			defer close(done)
			serveVia(ctx, t, h, f, way)
		}()
		t.Cleanup(func() { c.Close(); waitClosed(t, done) })
		// In order: the limit closes the one that arrived first.
		for deadline := time.Now().Add(10 * time.Second); h.Stats().AwaitingFirst != waiting; {
			if time.Now().After(deadline) {
				t.Fatalf("%d connections waiting for a first byte, want %d", h.Stats().AwaitingFirst, waiting)
			}
			time.Sleep(time.Millisecond)
		}
		return c, done
	}
	_, done1 := open(1)
	_, done2 := open(2)
	c3, _ := open(2) // past the limit: the first is closed
	waitClosed(t, done1)
	if st := h.Stats(); st.FirstByteShed != 1 {
		t.Fatalf("FirstByteShed %d, want 1", st.FirstByteShed)
	}
	// The one instance is free: the third connection speaks and is served.
	if code, _ := roundTrip(t, bufio.NewReader(c3), c3, "x", "/"); code != 200 {
		t.Fatalf("status %d beside a silent connection, with one instance", code)
	}
	waitClosed(t, done2) // silent past FirstByteTimeout
	st := h.Stats()
	if st.FirstByteTimeouts != 1 || st.Calls != 1 || st.AwaitingFirst != 0 {
		t.Fatalf("FirstByteTimeouts %d (want 1), calls %d (want 1), waiting %d (want 0)", st.FirstByteTimeouts, st.Calls, st.AwaitingFirst)
	}
}

// TestHandedOffSendsFIN: under rr the master keeps its copy of a connection
// until the worker's ack, so the worker's close is often not the last; with
// HandedOff a connection the guest closes still reaches its peer's end of
// stream at once, while that copy is open. Both ways in.
func TestHandedOffSendsFIN(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := newHello(t, "handedoff", Options{HandedOff: true})
	for _, way := range ways {
		client, served := handedOff(t)
		done := make(chan struct{})
		go func() {
			defer close(done)
			serveVia(ctx, t, h, served, way)
		}()
		if _, err := io.WriteString(client, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(client)
		if code, _ := readResponse(t, br); code != 200 {
			t.Fatalf("%s: status %d", way, code)
		}
		waitClosed(t, done)
		client.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := br.ReadByte(); err != io.EOF {
			t.Fatalf("%s: after the answer to Connection: close, with the master's copy open: %v, want EOF", way, err)
		}
	}
}

// TestHandedOffSendsFINOverTLS: the same for a connection the worker
// terminates TLS on: after close_notify the peer reads the end of the TCP
// stream at once, while the master's copy is open.
func TestHandedOffSendsFINOverTLS(t *testing.T) {
	t.Parallel()
	cert := selfSigned(t, "t.test")
	h := newHello(t, "handedoff-tls", Options{HandedOff: true})
	r, err := NewRouter([]Listener{{Tenants: []*Tenant{{Name: "t", Handler: h, Hosts: []string{"t.test"}, Cert: &cert}}}}, RouterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	client, served := handedOff(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.ServeConn(context.Background(), served, 0)
	}()
	roots := x509.NewCertPool()
	roots.AddCert(cert.Leaf)
	tc := tls.Client(client, &tls.Config{ServerName: "t.test", RootCAs: roots})
	if _, err := io.WriteString(tc, "GET / HTTP/1.1\r\nHost: t.test\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(tc)
	if code, _ := readResponse(t, br); code != 200 {
		t.Fatalf("status %d", code)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("after the answer to Connection: close: %v, want EOF (close_notify)", err)
	}
	waitClosed(t, done)
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := client.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("the TCP stream after close_notify, with the master's copy open: %d bytes, %v; want EOF", n, err)
	}
}

// handedOff is a connected pair whose server side has a second descriptor,
// open until the test ends, as the master keeps its copy of a connection
// it handed to a worker until the worker's ack.
func handedOff(t *testing.T) (client net.Conn, served *os.File) {
	t.Helper()
	client, f := socketPair(t)
	fd := dupFD(t, f)
	masterCopy, err := unix.Dup(fd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(masterCopy) })
	return client, os.NewFile(uintptr(fd), "conn")
}

// TestFirstWaitSeesNextRequest: a connection given as its descriptor makes
// its file when it first waits; a request sent the moment the first answer
// arrives (while the socket joins the poller) is served, not left waiting
// for the idle timeout. Many connections at once, so that on some of them
// the poller runs in that moment.
func TestFirstWaitSeesNextRequest(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := newHello(t, "first-wait", Options{})
	const rounds, clients = 150, 8
	const req = "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
	for r := 0; r < rounds; r++ {
		errs := make(chan error, clients)
		for i := 0; i < clients; i++ {
			client, f := socketPair(t)
			fd := dupFD(t, f)
			go func() {
				errs <- func() error {
					if _, err := io.WriteString(client, req); err != nil {
						return err
					}
					done := make(chan struct{})
					go func() {
						defer close(done)
						h.serve(ctx, newConnFD(fd, int64(len(req)), h))
					}()
					defer func() { client.Close(); <-done }()
					br := bufio.NewReader(client)
					for n := 0; n < 2; n++ {
						client.SetDeadline(time.Now().Add(5 * time.Second))
						resp, err := http.ReadResponse(br, nil)
						if err != nil {
							return fmt.Errorf("round %d, answer %d: %w", r, n, err)
						}
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if n == 0 {
							if _, err := io.WriteString(client, req); err != nil {
								return err
							}
						}
					}
					return nil
				}()
			}()
		}
		for i := 0; i < clients; i++ {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestCommandFromFD: a WASI command's connection given as a descriptor
// whose input is all there when it is served (bytes, then the end of the
// stream) is answered and closed without an *os.File (never in Go's
// poller); one whose input comes later makes its file for the wait and is
// answered the same.
func TestCommandFromFD(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h, err := New(ctx, Options{Name: "cat", Wasm: goGuest(t, "go-cat", "../guests/go/catcmd"),
		CacheDir: filepath.Join(os.TempDir(), "wcluster-host-test-cache"), Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close(ctx) })
	if !h.servesFD() {
		t.Fatal("a WASI command is not served from descriptors")
	}
	for _, early := range []bool{true, false} {
		client, f := socketPair(t)
		fd := dupFD(t, f)
		send := func() {
			if _, err := io.WriteString(client, "ping"); err != nil {
				t.Fatal(err)
			}
			client.(*net.TCPConn).CloseWrite()
		}
		if early {
			send()
			if n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 10000); n != 1 || err != nil {
				t.Fatalf("the input did not reach the server's socket in 10s: %v", err)
			}
		}
		c := newConnFD(fd, 1, h)
		done := make(chan struct{})
		go func() {
			defer close(done)
			h.serve(ctx, c)
		}()
		if !early {
			for deadline := time.Now().Add(10 * time.Second); !c.hasFile.Load(); time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("a connection with nothing to read did not make its file to wait")
				}
			}
			send()
		}
		client.SetDeadline(time.Now().Add(20 * time.Second))
		if b, err := io.ReadAll(client); err != nil || string(b) != "ping" {
			t.Fatalf("input there early %v: read %q %v, want ping", early, b, err)
		}
		waitClosed(t, done)
		client.Close()
		if got := c.f != nil; got == early {
			t.Errorf("input there early %v: the connection made its file: %v", early, got)
		}
	}
}

// TestWriteInStepWaits: writes made in step (the guest's call inside the
// connection's wait loop, straight to the descriptor) that find the socket
// full wait for the client and lose nothing: 8 MiB echoed from a socket
// whose send buffer is 4 KiB, so every 64 KiB write of the guest's finds it
// full.
func TestWriteInStepWaits(t *testing.T) { bothWays(t, testWriteInStepWaits) }

func testWriteInStepWaits(t *testing.T, way string) {
	ctx := context.Background()
	h, err := New(ctx, Options{Name: "echo", Wasm: goGuest(t, "go-echo", "../guests/go/echo", "-buildmode=c-shared"),
		Timeout: 30 * time.Second, CacheDir: filepath.Join(os.TempDir(), "wcluster-host-test-cache")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close(ctx) })
	c, f := socketPair(t)
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<10) })
	if serr != nil {
		t.Fatal(serr)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		serveVia(ctx, t, h, f, way)
	}()
	t.Cleanup(func() { c.Close(); waitClosed(t, done) })
	want := make([]byte, 8<<20)
	for i := range want {
		want[i] = byte(i * 7 / 3)
	}
	wrote := make(chan error, 1)
	go func() {
		_, err := c.Write(want)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		wrote <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read the echo: %v (after %d bytes)", err, len(got))
	}
	if werr := <-wrote; werr != nil {
		t.Fatalf("write: %v", werr)
	}
	if len(got) != len(want) {
		t.Fatalf("echoed %d bytes of %d", len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("echo differs at byte %d", i)
		}
	}
}
