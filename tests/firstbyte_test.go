package tests

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/wcluster/wcluster/internal/stats"
)

// handlerSum sums the handler counters of the workers of a status.
func handlerSum(s status) stats.Counters {
	var c stats.Counters
	for _, w := range s.Workers {
		c.Add(w.Handler.Counters)
	}
	return c
}

// trickle writes req one byte every gap on c until it is all sent, the
// connection fails or stop closes; it reports whether the server closed it.
func trickle(c net.Conn, req string, gap time.Duration, stop <-chan struct{}) (closed bool) {
	for i := 0; i < len(req); i++ {
		if _, err := c.Write([]byte{req[i]}); err != nil {
			return true
		}
		select {
		case <-stop:
			return false
		case <-time.After(gap):
		}
	}
	return false
}

// TestIdleAndTricklingDoNotDenyService: 300 connections that send nothing
// and 200 that send one byte a second, against default flags, must not stop
// a normal client: a new connection holds no instance until its first bytes
// arrive, and the hello handler pushes an incomplete request back rather
// than wait for the rest holding its instance.
func TestIdleAndTricklingDoNotDenyService(t *testing.T) {
	t.Parallel()
	s, ctl := startControlled(t, "--workers", "2")
	const idle, trickling = 300, 200
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range idle {
		c, err := net.DialTimeout("tcp", s.addr, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	defer func() { close(stop); wg.Wait() }()
	for range trickling {
		c, err := net.DialTimeout("tcp", s.addr, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		wg.Add(1)
		go func() {
			defer wg.Done()
			trickle(c, "GET / HTTP/1.1\r\nHost: trickle.example\r\nUser-Agent: one byte a second\r\n\r\n", time.Second, stop)
		}()
	}
	// Every idle connection is waiting for its first byte, and every
	// trickling one has been called once at least (its first byte).
	waitStatus(t, ctl, "idle connections waiting, tricklers called", func(st status) bool {
		return handlerSum(st).AwaitingFirstByte >= idle && handlerSum(st).Calls >= trickling
	})

	client := newClient()
	var worst time.Duration
	for i := range 40 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		begin := time.Now()
		body, _, err := get(ctx, client, s.url(), i%2 == 0)
		cancel()
		if err != nil || body != "hello world\n" {
			t.Fatalf("request %d beside %d idle and %d trickling connections: %q %v", i, idle, trickling, body, err)
		}
		worst = max(worst, time.Since(begin))
	}
	st := getStatus(t, ctl)
	t.Logf("40 requests answered beside %d idle and %d trickling connections; slowest %v; instances live %s",
		idle, trickling, worst.Round(time.Millisecond), instancesLive(st))
	if n := handlerSum(st).AwaitingFirstByte; n < idle {
		t.Fatalf("%d connections waiting for a first byte, want %d: idle ones were closed or called", n, idle)
	}
}

// TestFirstByteDeadline: a connection that never sends is closed at the
// first-byte deadline, without a call; one that sends in time is served.
func TestFirstByteDeadline(t *testing.T) {
	t.Parallel()
	s, ctl := startControlled(t, "--workers", "1", "--first-byte-timeout", "1s")
	silent := s.dial(t)
	begin := time.Now()
	silent.SetReadDeadline(time.Now().Add(20 * time.Second))
	n, err := silent.Read(make([]byte, 16))
	took := time.Since(begin)
	if n != 0 || !(errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
		t.Fatalf("silent connection: read %d bytes, err %v; want it closed at the first-byte deadline", n, err)
	}
	if took < 900*time.Millisecond {
		t.Fatalf("silent connection closed after %v, before the 1s first-byte deadline", took)
	}
	t.Logf("silent connection closed after %v (first-byte timeout 1s)", took.Round(time.Millisecond))
	st := waitStatus(t, ctl, "a first-byte timeout counted", func(st status) bool {
		return handlerSum(st).FirstByteTimeouts >= 1
	})
	if calls := handlerSum(st).Calls; calls != 0 {
		t.Fatalf("%d guest calls for a connection that sent nothing", calls)
	}
	if body, _, err := get(context.Background(), newClient(), s.url(), true); err != nil || body != "hello world\n" {
		t.Fatalf("a client that speaks: %q %v", body, err)
	}
}

// TestFirstByteLimit: past --first-byte-limit, the connection waiting
// longest for its first byte is closed; the shedding is logged once per
// burst and counted, and a client that speaks is served.
func TestFirstByteLimit(t *testing.T) {
	t.Parallel()
	const limit, extra = 20, 30
	s, ctl := startControlled(t, "--workers", "1", "--first-byte-limit", strconv.Itoa(limit))
	var conns []net.Conn
	for range limit + extra {
		c := s.dial(t)
		conns = append(conns, c)
	}
	waitStatus(t, ctl, "connections shed", func(st status) bool {
		return handlerSum(st).FirstByteShed == extra && handlerSum(st).AwaitingFirstByte == limit
	})
	// Exactly extra of them were closed; the others still wait. (Which
	// ones is the worker's order of arrival, near but not exactly the
	// order of dialling.)
	var closed atomic.Int32
	waiting := make(chan net.Conn, len(conns))
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
				closed.Add(1)
			} else {
				waiting <- c
			}
		}()
	}
	wg.Wait()
	if closed.Load() != extra {
		t.Fatalf("%d connections closed, want %d (past a limit of %d waiting)", closed.Load(), extra, limit)
	}
	// One of those still waiting speaks and is answered.
	c := <-waiting
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	resp, err := io.ReadAll(c)
	if err != nil || !bytes.HasPrefix(resp, []byte("HTTP/1.1 200 OK")) {
		t.Fatalf("waiting connection that then spoke: %q %v", resp, err)
	}
	if n := strings.Count(s.output(), "too many connections waiting for their first byte"); n != 1 {
		t.Fatalf("shedding logged %d times, want once per burst:\n%s", n, s.output())
	}
}

// TestTricklerClosedAtPartialTimeout: a request head trickled a byte at a
// time is closed when it stays incomplete past --partial-timeout, while a
// request sent in a few quick pieces is answered.
func TestTricklerClosedAtPartialTimeout(t *testing.T) {
	t.Parallel()
	s, ctl := startControlled(t, "--workers", "1", "--partial-timeout", "2s")

	// Pieces 50ms apart: each call pushes the incomplete head back.
	c := s.dial(t)
	req := "GET / HTTP/1.1\r\nHost: pieces.example\r\nConnection: close\r\n\r\n"
	for _, piece := range []string{req[:5], req[5:20], req[20:]} {
		if _, err := c.Write([]byte(piece)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	resp, err := io.ReadAll(c)
	if err != nil || !bytes.HasPrefix(resp, []byte("HTTP/1.1 200 OK")) {
		t.Fatalf("request in pieces: %q %v", resp, err)
	}

	tc := s.dial(t)
	stop := make(chan struct{})
	defer close(stop)
	head := "GET / HTTP/1.1\r\nHost: trickle.example\r\nX-Padding: " + strings.Repeat("p", 200) + "\r\n\r\n"
	done := make(chan bool, 1)
	go func() { done <- trickle(tc, head, 200*time.Millisecond, stop) }()
	// The server closes it: the read sees the end (or a reset).
	tc.SetReadDeadline(time.Now().Add(30 * time.Second))
	n, err := tc.Read(make([]byte, 64))
	if n != 0 || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("trickling connection: read %d bytes, err %v; want it closed at the partial timeout", n, err)
	}
	waitStatus(t, ctl, "a partial timeout counted", func(st status) bool {
		return handlerSum(st).PartialTimeouts >= 1
	})
}

// TestSpeaksFirstGreets: a handler exporting wcluster_speaks_first is called
// as soon as a connection is accepted, and greets before the client says
// anything.
func TestSpeaksFirstGreets(t *testing.T) {
	t.Parallel()
	s := start(t, guest(t, "go-greet"))
	if !strings.Contains(s.output(), "speaks first") {
		t.Fatalf("the banner does not say the handler speaks first:\n%s", s.output())
	}
	c := s.dial(t)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil || line != "220 greet ready\r\n" {
		t.Fatalf("greeting: %q %v", line, err)
	}
	if _, err := c.Write([]byte("HELO client\r\nQUIT\r\n")); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(r)
	if err != nil || string(rest) != "250 HELO client\r\n221 bye\r\n" {
		t.Fatalf("after HELO and QUIT: %q %v", rest, err)
	}
}

var wrkRequestsRE = regexp.MustCompile(`(\d+) requests in`)

// TestDrainKeepAliveNoErrors: wrk on kept-alive connections sees no failed
// request across 5 reloads (SIGHUP) and a scale 2 → 4 → 2: a draining
// worker keeps its idle connections for the client's next request, answers
// it with "Connection: close", and only then closes.
func TestDrainKeepAliveNoErrors(t *testing.T) {
	t.Parallel()
	wrk, err := exec.LookPath("wrk")
	if err != nil {
		t.Fatalf("wrk is needed for this test (apt-get install wrk): %v", err)
	}
	s, ctl := startControlled(t, "--workers", "2")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, wrk, "-t2", "-c16", "-d120s", "--timeout", "10s", s.url())
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Every worker seen, to wait at the end until the drained ones are gone.
	pids := map[int]bool{}
	seen := func(st status) {
		for _, w := range st.Workers {
			pids[w.PID] = true
		}
	}
	// wrk is under way once requests are being served.
	seen(waitStatus(t, ctl, "wrk's requests served", func(st status) bool { return handlerSum(st).Calls >= 1000 }))

	for i := 1; i <= 5; i++ {
		if err := s.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		seen(waitStatus(t, ctl, fmt.Sprintf("reload %d", i), func(st status) bool {
			return st.Totals.Generation == i && len(st.Workers) == 2
		}))
	}
	for _, n := range []int{4, 2} {
		if out, err := run(t, "scale", "--control", ctl, strconv.Itoa(n)); err != nil {
			t.Fatalf("scale %d: %v %s", n, err, out)
		}
		seen(waitStatus(t, ctl, fmt.Sprintf("%d workers ready", n), func(st status) bool {
			ready := 0
			for _, w := range st.Workers {
				if w.State == "ready" {
					ready++
				}
			}
			return len(st.Workers) == n && ready == n
		}))
	}
	// wrk goes on until every drained worker has exited: its last
	// connections' closes are counted too.
	current := map[int]bool{}
	for _, w := range getStatus(t, ctl).Workers {
		current[w.PID] = true
	}
	for pid := range pids {
		for deadline := time.Now().Add(30 * time.Second); !current[pid] && syscall.Kill(pid, 0) == nil; {
			if time.Now().After(deadline) {
				t.Fatalf("drained worker %d still running after 30s", pid)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	cmd.Process.Signal(os.Interrupt) // wrk stops and prints its summary
	if err := cmd.Wait(); err != nil {
		t.Fatalf("wrk: %v\n%s", err, out.String())
	}
	report := out.String()
	t.Logf("wrk across 5 reloads and a scale 2 → 4 → 2:\n%s", report)
	m := wrkRequestsRE.FindStringSubmatch(report)
	if m == nil {
		t.Fatalf("no request count in wrk's output:\n%s", report)
	}
	if n, _ := strconv.Atoi(m[1]); n < 1000 {
		t.Fatalf("only %d requests", n)
	}
	for _, bad := range []string{"Socket errors", "Non-2xx"} {
		if strings.Contains(report, bad) {
			t.Fatalf("wrk reports %s across reloads and scaling:\n%s", bad, report)
		}
	}
}

// TestSilentConnsHoldNoInstance: with one instance per worker, connections
// that send nothing hold none — after a TLS handshake, and for a WASI
// command (whose instance would otherwise block reading stdin) — so the
// next client is served.
func TestSilentConnsHoldNoInstance(t *testing.T) {
	t.Parallel()
	t.Run("tls", func(t *testing.T) {
		t.Parallel()
		cert, key := writeTestCert(t, t.TempDir(), "one", "localhost")
		s := start(t, "--workers", "1", "--instances", "1", "--tls-cert", cert, "--tls-key", key)
		cfg := &tls.Config{RootCAs: certPool(t, cert), ServerName: "localhost"}
		dial := func() *tls.Conn {
			c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", s.addr, cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			c.SetDeadline(time.Now().Add(30 * time.Second))
			return c
		}
		for range 3 {
			dial() // handshaken, then silent
		}
		c := dial()
		if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		resp, err := io.ReadAll(c)
		if err != nil || !bytes.HasPrefix(resp, []byte("HTTP/1.1 200 OK")) {
			t.Fatalf("TLS request beside 3 silent TLS connections, one instance: %q %v", resp, err)
		}
	})
	t.Run("command", func(t *testing.T) {
		t.Parallel()
		s := start(t, "--workers", "1", "--instances", "1", guest(t, "go-cat"))
		for range 3 {
			s.dial(t) // silent
		}
		c := s.dial(t)
		if _, err := c.Write([]byte("echo me\n")); err != nil {
			t.Fatal(err)
		}
		c.CloseWrite()
		out, err := io.ReadAll(c)
		if err != nil || string(out) != "echo me\n" {
			t.Fatalf("command beside 3 silent connections, one instance: %q %v", out, err)
		}
	})
}
