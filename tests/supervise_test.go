package tests

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
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
	syscall.Kill(victim.PID, syscall.SIGSTOP)
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
