package tests

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// load sends GETs from n keep-alive clients until stop is closed, counting
// successes and failures. Bounded: it stops after max at the latest.
type load struct {
	ok, failed atomic.Int64
	firstErr   atomic.Value
	wg         sync.WaitGroup
	stop       chan struct{}
}

func startLoad(url string, n int, max time.Duration) *load {
	l := &load{stop: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), max)
	for i := 0; i < n; i++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			client := newClient()
			for {
				select {
				case <-l.stop:
					return
				case <-ctx.Done():
					return
				default:
				}
				body, _, err := get(ctx, client, url, false)
				if err == nil && body == "hello world\n" {
					l.ok.Add(1)
				} else if ctx.Err() == nil {
					l.failed.Add(1)
					if err != nil {
						l.firstErr.CompareAndSwap(nil, err.Error())
					}
				}
			}
		}()
	}
	go func() { l.wg.Wait(); cancel() }()
	return l
}

func (l *load) finish() (ok, failed int64) {
	close(l.stop)
	l.wg.Wait()
	return l.ok.Load(), l.failed.Load()
}

// TestReloadUnderLoad: ten SIGHUP reloads in a row under constant load,
// each to another module (two hellos in turn, small so that the reloads
// are many and quick), lose no request; then a broken module keeps the old
// workers serving.
func TestReloadUnderLoad(t *testing.T) {
	handler := filepath.Join(t.TempDir(), "handler.wasm")
	var hellos [2][]byte
	for i, name := range []string{"c-hello", "wat-hello"} {
		b, err := os.ReadFile(guest(t, name))
		if err != nil {
			t.Fatal(err)
		}
		hellos[i] = b
	}
	if err := os.WriteFile(handler, hellos[0], 0o644); err != nil {
		t.Fatal(err)
	}
	s, ctl := startControlled(t, "--workers", "2", handler)
	master := getStatus(t, ctl).PID
	fdsBefore := fdCount(t, master)

	l := startLoad(s.url(), 4, 3*time.Minute)
	for i := 1; i <= 10; i++ {
		if err := os.WriteFile(handler, hellos[i%2], 0o644); err != nil {
			t.Fatal(err)
		}
		syscall.Kill(s.cmd.Process.Pid, syscall.SIGHUP)
		waitStatus(t, ctl, "reload generation", func(st status) bool { return st.Totals.Generation == i })
	}
	ok, failed := l.finish()
	t.Logf("10 reloads under load: %d requests ok, %d failed (fds before %d, after %d)", ok, failed, fdsBefore, fdCount(t, master))
	if failed != 0 {
		t.Fatalf("%d requests failed during reloads (first: %v)", failed, l.firstErr.Load())
	}
	if ok == 0 {
		t.Fatal("no request succeeded")
	}

	// A broken module: the reload is refused and the old workers serve on.
	os.WriteFile(handler, []byte("not wasm"), 0o644)
	syscall.Kill(s.cmd.Process.Pid, syscall.SIGHUP)
	s.waitOutput("reload failed; the old workers keep serving", 30*time.Second)
	if body, _, err := get(context.Background(), newClient(), s.url(), true); err != nil || body != "hello world\n" {
		t.Fatalf("after a failed reload: %q %v", body, err)
	}
	if g := getStatus(t, ctl).Totals.Generation; g != 10 {
		t.Fatalf("generation %d after a failed reload, want 10", g)
	}
}

// TestWorkerRespawn: a SIGKILLed worker is replaced with a new process in
// the same slot, which then serves.
func TestWorkerRespawn(t *testing.T) {
	s, ctl := startControlled(t, "--workers", "2")
	victim := getStatus(t, ctl).Workers[0]
	killed := time.Now()
	syscall.Kill(victim.PID, syscall.SIGKILL)
	st := waitStatus(t, ctl, "worker 1 replaced", func(st status) bool {
		return len(st.Workers) == 2 && st.Workers[0].ID == 1 && st.Workers[0].PID != victim.PID && st.Workers[0].State == "ready"
	})
	t.Logf("worker 1 back in %v", time.Since(killed).Round(time.Millisecond))
	if st.Totals.Restarts != 1 {
		t.Fatalf("restarts = %d, want 1", st.Totals.Restarts)
	}
	client := newClient()
	seen := map[string]int{}
	for i := 0; i < 100; i++ {
		body, w, err := get(context.Background(), client, s.url(), true)
		if err != nil || body != "hello world\n" {
			t.Fatalf("request %d after respawn: %q %v", i, body, err)
		}
		seen[w]++
	}
	if seen["1"] == 0 {
		t.Fatalf("the new worker 1 served nothing: %v", seen)
	}
}

// ask sends one line to the faults guest and returns its answer ("" if the
// connection was closed without one).
func ask(t *testing.T, s *server, line string) string {
	t.Helper()
	c := s.dial(t)
	if _, err := c.Write([]byte(line + "\n")); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	if err != nil && !isReset(err) {
		t.Fatalf("%s: %v", line, err)
	}
	return string(b)
}

// TestGuestFaults: a guest that traps, loops or exhausts its memory costs
// its own connection; the same worker (and instance slot) serves the next.
func TestGuestFaults(t *testing.T) {
	// The time limit leaves room for the memory bomb to hit its limit first,
	// even in a race-detector build.
	s, ctl := startControlled(t, "--workers", "1", "--instances", "1", "--timeout", "3s",
		"--memory-limit", "32MiB", "--write-timeout", "1s", guest(t, "go-faults"))
	pid := getStatus(t, ctl).Workers[0].PID
	for _, fault := range []string{"trap", "loop", "oom", "flood"} {
		t.Run(fault, func(t *testing.T) {
			begin := time.Now()
			var got string
			if fault == "flood" {
				// A client that never reads: the write timeout ends the call.
				c := s.dial(t)
				c.Write([]byte("flood\n"))
				defer c.Close()
			} else if got = ask(t, s, fault); strings.HasPrefix(got, "ok") {
				t.Fatalf("%s: guest answered %q", fault, got)
			}
			// With one instance per worker, this answer proves the faulty
			// call ended and the worker is whole.
			if got := ask(t, s, "hello"); got != "ok 1 hello\n" {
				t.Fatalf("after %s: %q", fault, got)
			}
			t.Logf("%s: contained in %v", fault, time.Since(begin).Round(time.Millisecond))
		})
	}
	st := getStatus(t, ctl)
	if st.Workers[0].PID != pid {
		t.Fatalf("worker restarted (pid %d → %d): a guest fault took it down", pid, st.Workers[0].PID)
	}
	h := st.Workers[0].Handler
	st = waitStatus(t, ctl, "fault counters", func(st status) bool {
		h = st.Workers[0].Handler
		return h.Traps >= 1 && h.Timeouts >= 1 && h.MemoryLimitHits >= 1
	})
	s.waitOutput("guest stopped at its time limit", 5*time.Second)
	s.waitOutput("guest ran out of memory", 5*time.Second)
}

// TestGuestCodesLoggedByName: a code a guest returns is logged with its
// name; ERR_CLOSED (the peer went away, as an SDK reports a reset) is a
// normal end, logged at debug only, while a guest's own code (≤ -100) is
// a warning.
func TestGuestCodesLoggedByName(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	src, wasm := filepath.Join(dir, "codes.wat"), filepath.Join(dir, "codes.wasm")
	if err := os.WriteFile(src, []byte(`(module
  (import "wcluster" "conn_read" (func $read (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "wcluster_abi_v1"))
  (func (export "wcluster_handle") (param i32) (result i32)
    (drop (call $read (i32.const 0) (i32.const 1)))
    (if (result i32) (i32.eq (i32.load8_u (i32.const 0)) (i32.const 97))
      (then (i32.const -3)) (else (i32.const -100)))))`), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("wat2wasm", "-o", wasm, src).CombinedOutput(); err != nil {
		t.Fatalf("wat2wasm (wabt): %v\n%s", err, out)
	}
	s := start(t, "--workers", "1", "--log-level", "debug", wasm)
	for _, b := range []string{"a", "b"} {
		c := s.dial(t)
		c.SetDeadline(time.Now().Add(30 * time.Second))
		c.Write([]byte(b))
		io.ReadAll(c) // the guest closes it
		c.Close()
	}
	s.waitOutput(`level=DEBUG msg="guest returned an error".* code=-3 name=ErrClosed`, 30*time.Second)
	s.waitOutput(`level=WARN msg="guest returned an error".* code=-100 name=guest-defined`, 30*time.Second)
	if n := strings.Count(s.output(), `level=WARN msg="guest returned an error"`); n != 1 {
		t.Errorf("ERR_CLOSED logged as a warning:\n%s", s.output())
	}
}
