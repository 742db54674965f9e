package tests

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// connLoad sends requests on a new connection each from n clients until
// stop, recording when each failed request began and ended, so a test can
// tell a failure inside a killed worker from one after it.
type connLoad struct {
	ok       atomic.Int64
	mu       sync.Mutex
	failures []span
	wg       sync.WaitGroup
	stop     chan struct{}
}

type span struct {
	begin, end time.Time
	err        string
}

// startConnLoad runs until stop, until max requests in all, or at most d.
func startConnLoad(url string, n int, max int64, d time.Duration) *connLoad {
	l := &connLoad{stop: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	var issued atomic.Int64
	for i := 0; i < n; i++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			client := newClient()
			for ctx.Err() == nil && issued.Add(1) <= max {
				select {
				case <-l.stop:
					return
				default:
				}
				begin := time.Now()
				body, _, err := get(ctx, client, url, true)
				if err == nil && body == "hello world\n" {
					l.ok.Add(1)
					continue
				}
				if ctx.Err() != nil {
					return
				}
				msg := fmt.Sprintf("body %q", body)
				if err != nil {
					msg = err.Error()
				}
				l.mu.Lock()
				l.failures = append(l.failures, span{begin, time.Now(), msg})
				l.mu.Unlock()
			}
		}()
	}
	go func() { l.wg.Wait(); cancel() }()
	return l
}

func (l *connLoad) finish() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// wait waits for the load to end by itself (its request budget spent).
func (l *connLoad) wait() { l.wg.Wait() }

// TestKillUnderLoadLeaksNothing: 10,000 connections while workers are
// SIGKILLed four times. Each worker is back quickly; the only failures are
// requests in flight at a kill (inside the killed worker); afterwards the
// master's fds and goroutines return to their baseline.
func TestKillUnderLoadLeaksNothing(t *testing.T) {
	s, ctl := startControlled(t, "--workers", "2")
	base := getStatus(t, ctl)
	const total = 10000
	l := startConnLoad(s.url(), 8, total, 3*time.Minute)
	var kills []time.Time
	for k := 1; k <= 4; k++ {
		// Let the load run between kills: wait for the next 2,000 answers.
		want := int64(k * total / 5)
		deadline := time.Now().Add(time.Minute)
		for l.ok.Load() < want && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		st := getStatus(t, ctl)
		victim := st.Workers[k%2]
		at := time.Now()
		syscall.Kill(victim.PID, syscall.SIGKILL)
		kills = append(kills, at)
		waitStatus(t, ctl, "killed worker replaced", func(st status) bool {
			for _, w := range st.Workers {
				if w.ID == victim.ID {
					return w.PID != victim.PID && w.State == "ready"
				}
			}
			return false
		})
		t.Logf("kill %d: worker %d (pid %d) back in %v", k, victim.ID, victim.PID, time.Since(at).Round(time.Millisecond))
	}
	l.wait()
	l.finish()
	ok := l.ok.Load()
	t.Logf("%d requests ok, %d failed, 4 kills", ok, len(l.failures))
	for _, f := range l.failures {
		inside := false
		for _, k := range kills {
			if !f.begin.After(k) && !f.end.Before(k) {
				inside = true
			}
		}
		if !inside {
			t.Errorf("a request failed that no kill overlapped (%v–%v): %s", f.begin.Format("15:04:05.000"), f.end.Format("15:04:05.000"), f.err)
		}
	}
	if ok+int64(len(l.failures)) < total {
		t.Fatalf("only %d of %d requests were made", ok+int64(len(l.failures)), total)
	}
	// Nothing leaks in the master: fds and goroutines come back.
	after := waitStatus(t, ctl, "master fds and goroutines back to baseline", func(st status) bool {
		return st.FDs <= base.FDs && st.Goroutines <= base.Goroutines
	})
	t.Logf("master fds %d → %d, goroutines %d → %d", base.FDs, after.FDs, base.Goroutines, after.Goroutines)
	if after.Totals.Restarts != 4 {
		t.Fatalf("restarts = %d, want 4", after.Totals.Restarts)
	}
}

// TestCrashLoopStopsMaster: a worker that keeps dying stops the master with
// a message and a non-zero exit instead of restarting it for ever.
func TestCrashLoopStopsMaster(t *testing.T) {
	s, ctl := startControlled(t, "--workers", "1")
	for i := 1; i <= 5; i++ {
		var pid int
		deadline := time.Now().Add(30 * time.Second)
		for pid == 0 {
			out, err := run(t, "status", "--json", "--control", ctl)
			if err == nil && strings.Contains(out, `"state":"ready"`) {
				st := getStatus(t, ctl)
				if len(st.Workers) == 1 && st.Workers[0].State == "ready" {
					pid = st.Workers[0].PID
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("no ready worker before kill %d", i)
			}
			if pid == 0 {
				time.Sleep(10 * time.Millisecond)
			}
		}
		syscall.Kill(pid, syscall.SIGKILL)
	}
	err := s.waitExit(30 * time.Second)
	if err == nil {
		t.Fatal("master exited 0 after a crash loop")
	}
	line := s.waitOutput(`workers crashed 5 times in .*stopping`, 5*time.Second)[0]
	t.Logf("master: %s (%v)", line, err)
}

// TestHungWorkerReplaced: a worker that stops answering (SIGSTOP) is killed
// after --worker-timeout and replaced; the connections it never took are
// served by the others, and requests keep succeeding meanwhile.
func TestHungWorkerReplaced(t *testing.T) {
	s, ctl := startControlled(t, "--workers", "2", "--worker-timeout", "2s")
	victim := getStatus(t, ctl).Workers[0]
	l := startConnLoad(s.url(), 4, 1<<40, 2*time.Minute)
	stopped := time.Now()
	stopProcess(t, victim.PID)
	st := waitStatus(t, ctl, "hung worker replaced", func(st status) bool {
		return st.Totals.HungKilled == 1 && len(st.Workers) == 2 && st.Workers[0].PID != victim.PID && st.Workers[0].State == "ready"
	})
	t.Logf("stopped worker replaced after %v", time.Since(stopped).Round(time.Millisecond))
	// Requests after the replacement all succeed, on both workers.
	before := l.ok.Load()
	deadline := time.Now().Add(time.Minute)
	for l.ok.Load() < before+200 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	replaced := time.Now()
	l.finish()
	late := 0
	for _, f := range l.failures {
		if f.begin.After(replaced) {
			late++
		}
	}
	t.Logf("%d requests ok, %d failed in all (requeued by the master: %d)", l.ok.Load(), len(l.failures), st.Totals.Requeued)
	if late > 0 {
		t.Fatalf("%d requests begun after the replacement failed", late)
	}
	if l.ok.Load() < before+200 {
		t.Fatalf("load stalled after the replacement: %d ok", l.ok.Load())
	}
}

// TestRecycleUnderLoad: --max-requests and --max-worker-memory replace
// workers while clients keep requesting; not one request fails.
func TestRecycleUnderLoad(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"max-requests", []string{"--max-requests", "300"}},
		{"memory-ceiling", []string{"--max-worker-memory", "1MiB"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, ctl := startControlled(t, append([]string{"--workers", "2"}, tc.args...)...)
			first := getStatus(t, ctl)
			l := startLoad(s.url(), 4, 2*time.Minute)
			st := waitStatus(t, ctl, "three recycles", func(st status) bool { return st.Totals.Recycled >= 3 })
			ok, failed := l.finish()
			t.Logf("%s: %d recycles, %d requests ok, %d failed", tc.name, st.Totals.Recycled, ok, failed)
			if failed != 0 {
				t.Fatalf("%d requests failed while recycling (first: %v)", failed, l.firstErr.Load())
			}
			if st.Totals.Restarts != 0 {
				t.Fatalf("recycling counted as %d crashes", st.Totals.Restarts)
			}
			same := 0
			for i, w := range st.Workers {
				if w.PID == first.Workers[i].PID {
					same++
				}
			}
			if same == 2 {
				t.Fatal("recycled, yet both workers have their first pids")
			}
			s.waitOutput(`recycling worker`, 5*time.Second)
		})
	}
}

// TestSleepingGuestStopped: a guest that never reads its request and sleeps
// (blocked in the host, not in wasm code) is still stopped at --timeout,
// while the client goes on sending; the worker answers the next request.
func TestSleepingGuestStopped(t *testing.T) {
	s, ctl := startControlled(t, "--workers", "1", "--instances", "1", "--timeout", "1s", guest(t, "go-faults"))
	pid := getStatus(t, ctl).Workers[0].PID
	c := s.dial(t)
	begin := time.Now()
	c.Write([]byte("sleep\n"))
	// Keep sending what the guest never reads until the host gives up on it.
	done := make(chan error, 1)
	go func() {
		chunk := make([]byte, 64<<10)
		for {
			if _, err := c.Write(chunk); err != nil {
				done <- err
				return
			}
		}
	}()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	b, err := io.ReadAll(c)
	took := time.Since(begin)
	if err != nil && !isReset(err) {
		var ne net.Error
		if errorsAs(err, &ne) && ne.Timeout() {
			t.Fatalf("the sleeping guest's connection was still open after 30s")
		}
	}
	if len(b) != 0 {
		t.Fatalf("sleeping guest answered %q", b)
	}
	c.Close()
	<-done
	t.Logf("sleeping, never-reading guest: connection closed after %v", took.Round(time.Millisecond))
	if got := ask(t, s, "hello"); got != "ok 1 hello\n" {
		t.Fatalf("after the sleeping guest: %q", got)
	}
	if p := getStatus(t, ctl).Workers[0].PID; p != pid {
		t.Fatalf("worker restarted (%d → %d)", pid, p)
	}
}

// TestGuestKeepingWithoutReading: a guest that returns Keep but never reads
// what the client sent is not called for ever: the connection is closed
// after a few such calls, counted as a guest error, and the worker serves on.
func TestGuestKeepingWithoutReading(t *testing.T) {
	mod := filepath.Join(t.TempDir(), "keeper.wasm")
	if err := os.WriteFile(mod, tinyModule(fn{"wcluster_abi_v1", sigVoid}, fn{"wcluster_handle", sigKeep}), 0o644); err != nil {
		t.Fatal(err)
	}
	s, ctl := startControlled(t, "--workers", "1", "--idle-timeout", "5m", mod)
	pid := getStatus(t, ctl).Workers[0].PID
	for i := 0; i < 3; i++ {
		c := s.dial(t)
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		begin := time.Now()
		if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(c)
		if err != nil && !isReset(err) {
			t.Fatalf("connection %d: %v (still open: the guest is being called in a loop)", i, err)
		}
		if len(b) != 0 {
			t.Fatalf("connection %d: guest answered %q", i, b)
		}
		t.Logf("connection %d closed after %v", i, time.Since(begin).Round(time.Millisecond))
		c.Close()
	}
	s.waitOutput("guest keeps the connection without reading", 10*time.Second)
	st := waitStatus(t, ctl, "guest errors counted", func(st status) bool {
		return st.Workers[0].Handler.Traps >= 3
	})
	if st.Workers[0].PID != pid {
		t.Fatalf("worker restarted (%d → %d)", pid, st.Workers[0].PID)
	}
}

// TestStalledWorkerGetsNoNewConnections: once a stopped worker's
// acknowledgements are overdue (a tenth of --worker-timeout), rr sends it
// no new connection and status says "stalled"; the connections it already
// held are served when it resumes.
func TestStalledWorkerGetsNoNewConnections(t *testing.T) {
	t.Parallel()
	s, ctl := startControlled(t, "--workers", "2", "--worker-timeout", "40s")
	st := waitStatus(t, ctl, "two ready workers", func(st status) bool {
		return len(st.Workers) == 2 && st.Workers[0].State == "ready" && st.Workers[1].State == "ready"
	})
	stopped := st.Workers[0]
	defer syscall.Kill(stopped.PID, syscall.SIGCONT)
	stopProcess(t, stopped.PID)

	// New connections until one waits on the stopped worker (rr gives the
	// next to the one with fewer in flight, so it takes one at once).
	var held []net.Conn
	for len(held) < 4 {
		c := s.dial(t)
		fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		held = append(held, c)
	}
	waitStatus(t, ctl, "the stopped worker reported stalled", func(st status) bool {
		for _, w := range st.Workers {
			if w.PID == stopped.PID {
				return w.State == "stalled" && w.Unacked > 0
			}
		}
		return false
	})
	client := newClient()
	for i := range 20 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		body, worker, err := get(ctx, client, s.url(), true)
		cancel()
		if err != nil || body != "hello world\n" {
			t.Fatalf("new connection %d while worker %d is stalled: %q %v", i, stopped.ID, body, err)
		}
		if worker == fmt.Sprint(stopped.ID) {
			t.Fatalf("new connection %d answered by the stalled worker", i)
		}
	}
	syscall.Kill(stopped.PID, syscall.SIGCONT)
	for i, c := range held {
		c.SetDeadline(time.Now().Add(30 * time.Second))
		b := make([]byte, 64)
		if n, err := io.ReadAtLeast(c, b, 12); err != nil || !strings.HasPrefix(string(b[:n]), "HTTP/1.1 200") {
			t.Fatalf("connection %d held before the stall: %q %v", i, b[:n], err)
		}
		c.Close()
	}
	waitStatus(t, ctl, "the worker ready again", func(st status) bool {
		for _, w := range st.Workers {
			if w.PID == stopped.PID {
				return w.State == "ready"
			}
		}
		return false
	})
}

// TestRecycleAtTheCountAsked: under keep-alive load, --max-requests 2000
// replaces each worker within 2,500 requests (the worker counts its own
// requests; its replacement is started at three quarters, so the swap
// waits for nothing), and not one request fails.
func TestRecycleAtTheCountAsked(t *testing.T) {
	t.Parallel()
	s, ctl := startControlled(t, "--workers", "3", "--max-requests", "2000")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				body, _, err := get(ctx, client, s.url(), false)
				switch {
				case ctx.Err() != nil:
				case err != nil || body != "hello world\n":
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("%q %v", body, err))
				default:
					ok.Add(1)
				}
			}
		}()
	}
	st := waitStatus(t, ctl, "four recycles", func(st status) bool { return st.Totals.Recycled >= 4 })
	// The fourth recycled worker's final count comes once it drained.
	s.waitOutput(`(?s)(msg="worker drained".*){4}`, 30*time.Second)
	cancel()
	wg.Wait()
	t.Logf("%d recycles, %d requests ok, %d failed", st.Totals.Recycled, ok.Load(), failed.Load())
	if failed.Load() != 0 {
		t.Fatalf("%d requests failed while recycling (first: %v)", failed.Load(), firstErr.Load())
	}
	served := regexp.MustCompile(`msg="worker drained".* served=(\d+)`)
	n := 0
	var counts []int
	defer func() { t.Logf("requests served by each recycled worker: %v", counts) }()
	for _, m := range served.FindAllStringSubmatch(s.output(), -1) {
		v, _ := strconv.Atoi(m[1])
		counts = append(counts, v)
		n++
		if v < 2000 || v > 2500 {
			t.Errorf("a worker was recycled after %d requests, want 2,000–2,500", v)
		}
	}
	if n < 4 {
		t.Fatalf("%d final counts logged, want ≥ 4:\n%s", n, s.output())
	}
}
