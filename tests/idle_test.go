package tests

import (
	"bytes"
	"debug/buildinfo"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const (
	idleConns   = 10000
	idleDialers = 16
	idleWarm    = idleDialers * 8 // warm-up requests, each on its own connection
	idleSample  = 100
	// Generous bounds on the growth per idle connection; the target (issue
	// 6) is 16 KiB. The race detector's shadow memory and per-goroutine
	// state multiply a worker's memory (about 4x here).
	idleMaxPerConn     = 64 << 10
	idleMaxPerConnRace = 256 << 10
)

// TestIdleKeepAliveConnections opens 10,000 keep-alive connections to one
// worker, each answered once and then left idle, and measures how much the
// worker's RSS grew per connection: an idle connection must pin no guest
// instance. It asserts that every connection was served, that a sample of
// them still serves a second request, and a generous bound per connection;
// the measured figure is logged (target: 16 KiB).
//
// The harness's binary is built with -race, which inflates memory; to
// measure a plain build, point WCLUSTER_IDLE_BIN at one:
//
//	go build -o /tmp/wcluster ./cmd/wcluster
//	WCLUSTER_IDLE_BIN=/tmp/wcluster go test -count=1 -run TestIdle -v ./tests/
func TestIdleKeepAliveConnections(t *testing.T) {
	// This process holds 10,000 client sockets and the worker as many server
	// ones (each process its own 10,000 and a few more), so each needs a
	// limit of some 12,000: ask for 25,000 (raising the hard limit needs
	// CAP_SYS_RESOURCE), else settle for the hard limit if it is enough.
	// Children inherit it (Setrlimit also stops Go restoring the old soft
	// limit in them).
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	const want, need = 25000, idleConns + 2000
	if old.Cur < want {
		lim := syscall.Rlimit{Cur: want, Max: max(old.Max, want)}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			lim = syscall.Rlimit{Cur: old.Max, Max: old.Max}
			if old.Max < need || syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim) != nil {
				missing(t, "cannot raise RLIMIT_NOFILE from %d/%d to %d (nor to %d): %v", old.Cur, old.Max, want, need, err)
			}
		}
		t.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
	}
	if bin := os.Getenv("WCLUSTER_IDLE_BIN"); bin != "" {
		saved := env.bin
		env.bin = bin
		defer func() { env.bin = saved }()
		t.Logf("measuring %s (not the race build)", bin)
	}

	t0 := time.Now()
	s, ctl := startControlled(t, "--workers", "1", "--sched", "rr",
		"--max-conns", strconv.Itoa(idleConns+2000), "--idle-timeout", "10m")
	st := getStatus(t, ctl)
	if len(st.Workers) != 1 {
		t.Fatalf("want one worker, status lists %d", len(st.Workers))
	}
	worker := st.Workers[0].PID
	t.Logf("server up in %v", time.Since(t0).Round(time.Millisecond))
	deadline := time.Now().Add(90 * time.Second)

	// Warm up at the concurrency used below, so the instance pool has grown
	// to what that needs before the baseline is read.
	warm, err := openIdle(s.addr, idleWarm, idleDialers, deadline)
	if err != nil {
		t.Fatalf("warm-up: %v", err)
	}
	for _, c := range warm {
		c.Close()
	}
	// The handler's counters come with the worker's heartbeat: wait for
	// one that includes the warm-up, so the pool size read is current.
	st = waitStatus(t, ctl, "a heartbeat counting the warm-up", func(s status) bool {
		if len(s.Workers) != 1 {
			return false
		}
		return s.Workers[0].Handler.Calls >= idleWarm
	})
	before := procKiB(t, worker)
	liveBefore := instancesLive(st)

	start := time.Now()
	conns, err := openIdle(s.addr, idleConns, idleDialers, deadline)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	if err != nil {
		t.Fatalf("%d of %d connections served, then: %v", len(conns), idleConns, err)
	}
	opened := time.Since(start)
	after := procKiB(t, worker)
	st = getStatus(t, ctl)
	if st.Workers[0].PID != worker {
		t.Fatalf("the worker was replaced (pid %d, now %d)", worker, st.Workers[0].PID)
	}
	if fds := fdCount(t, worker); fds < idleConns {
		t.Errorf("the worker holds %d fds, fewer than the %d open connections", fds, idleConns)
	}

	growth := after["VmRSS"] - before["VmRSS"]
	per := float64(growth) * 1024 / idleConns
	t.Logf("%d idle keep-alive connections opened and served in %v", idleConns, opened.Round(time.Millisecond))
	t.Logf("worker RSS %d KiB -> %d KiB (anon %d -> %d KiB): %.1f KiB per idle connection (target 16 KiB; %s); instances live %s -> %s (last heartbeat)",
		before["VmRSS"], after["VmRSS"], before["RssAnon"], after["RssAnon"], per/1024,
		map[bool]string{true: "race build", false: "plain build"}[raceBuild(t, env.bin)], liveBefore, instancesLive(st))
	bound, build := idleMaxPerConn, "plain build"
	if raceBuild(t, env.bin) {
		bound, build = idleMaxPerConnRace, "race build"
	}
	if per > float64(bound) {
		t.Errorf("RSS grew %.1f KiB per idle connection, more than %d KiB (%s)", per/1024, bound>>10, build)
	}

	// A sample of the idle connections still serves a second request.
	step := len(conns) / idleSample
	buf := make([]byte, 1024)
	for i := 0; i < idleSample; i++ {
		c := conns[i*step]
		c.SetDeadline(time.Now().Add(20 * time.Second))
		if err := idleRequest(c, buf); err != nil {
			t.Fatalf("connection %d, second request after idling: %v", i*step, err)
		}
	}
}

// openIdle opens n connections from `dialers` goroutines; on each it sends
// one request and reads the answer, then leaves it open. It returns the
// connections served so far and the first error.
func openIdle(addr string, n, dialers int, deadline time.Time) ([]net.Conn, error) {
	var (
		mu    sync.Mutex
		conns = make([]net.Conn, 0, n)
		next  atomic.Int64
		first atomic.Value
		wg    sync.WaitGroup
	)
	for range dialers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1024)
			for next.Add(1) <= int64(n) && first.Load() == nil {
				if time.Now().After(deadline) {
					first.CompareAndSwap(nil, errors.New("out of time"))
					return
				}
				c, err := net.DialTimeout("tcp", addr, 10*time.Second)
				if err != nil {
					first.CompareAndSwap(nil, err)
					return
				}
				c.SetDeadline(deadline)
				if err := idleRequest(c, buf); err != nil {
					c.Close()
					first.CompareAndSwap(nil, err)
					return
				}
				c.SetDeadline(time.Time{})
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	err, _ := first.Load().(error)
	return conns, err
}

// idleRequest sends one keep-alive request and reads its whole answer.
func idleRequest(c net.Conn, buf []byte) error {
	if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: idle\r\n\r\n")); err != nil {
		return err
	}
	n := 0
	for {
		m, err := c.Read(buf[n:])
		n += m
		if end := bytes.Index(buf[:n], []byte("\r\n\r\n")); end >= 0 {
			length := -1
			for _, l := range strings.Split(string(buf[:end]), "\r\n") {
				if k, v, ok := strings.Cut(l, ":"); ok && strings.EqualFold(k, "Content-Length") {
					length, _ = strconv.Atoi(strings.TrimSpace(v))
				}
			}
			if length >= 0 && n >= end+4+length {
				if !bytes.HasPrefix(buf, []byte("HTTP/1.1 200 ")) {
					return fmt.Errorf("answer %q", buf[:n])
				}
				if bytes.Contains(bytes.ToLower(buf[:end]), []byte("connection: close")) {
					return errors.New("the server closes the connection")
				}
				return nil
			}
		}
		if err != nil {
			return fmt.Errorf("after %d bytes: %w", n, err)
		}
		if n == len(buf) {
			return fmt.Errorf("answer too long: %q", buf[:n])
		}
	}
}

// raceBuild reports whether the binary was built with -race.
func raceBuild(t *testing.T, bin string) bool {
	t.Helper()
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatalf("build info of %s: %v", bin, err)
	}
	for _, s := range info.Settings {
		if s.Key == "-race" && s.Value == "true" {
			return true
		}
	}
	return false
}

func instancesLive(s status) string {
	var p []string
	for _, w := range s.Workers {
		if !w.Handler.Reported() {
			p = append(p, "?")
			continue
		}
		p = append(p, strconv.Itoa(int(w.Handler.InstancesLive)))
	}
	return strings.Join(p, ",")
}
