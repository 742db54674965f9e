package tests

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fdFloodConns opens up to n connections to addr (a few dozen dials at a time,
// each bounded) and returns those that connected, held open.
func fdFloodConns(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()
	var mu sync.Mutex
	var conns []net.Conn
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := net.DialTimeout("tcp", addr, 3*time.Second)
			if err != nil {
				return // beyond the backlog: the kernel dropped the SYN
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return conns
}

// TestFDFloodMasterSurvives: a master and workers limited to 256 open
// files, flooded with 1,000 held connections, run out of descriptors; a
// worker killed meanwhile cannot be replaced (the master has no fd left to
// start one). The master stays up, says it paused accepting once rather
// than thousands of times, retries the start, and once the flood's
// connections close it serves again with the slot refilled. Its admin
// endpoint, asked during the flood, pauses and says so once too, answers
// after it, and its metrics count the shortage.
func TestFDFloodMasterSurvives(t *testing.T) {
	t.Parallel()
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Fatal("prlimit (util-linux) is needed to run the master with a low fd limit:", err)
	}
	ctl := filepath.Join(t.TempDir(), "ctl.sock")
	// The queue lets the master itself hold connections until it is out
	// of descriptors, so the restart below meets EMFILE for sure.
	s, err := launch(t, exec.Command(prlimit, "--nofile=256:256", "--", env.bin, "serve",
		"--listen", "127.0.0.1:0", "--cache-dir", env.cache, "--control", ctl,
		"--workers", "2", "--queue-size", "1000", "--queue-timeout", "2m", "--admin", "127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	admin := adminAddr(t, s)
	before := getStatus(t, ctl)
	if len(before.Workers) != 2 {
		t.Fatalf("workers: %+v", before.Workers)
	}
	victim := before.Workers[0]

	conns := fdFloodConns(t, s.addr, 1000)
	t.Logf("flood: %d of 1000 connections open", len(conns))
	closeConns := sync.OnceFunc(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	t.Cleanup(closeConns)
	if len(conns) < 600 {
		t.Fatalf("only %d flood connections connected", len(conns))
	}
	s.waitOutput(`pausing accepts on this listener`, 30*time.Second)
	// Wait for the steady state of the flood: both workers out of
	// descriptors, and the master holding all 256 of its own (the queued
	// connections) for a while, not merely passing through the limit.
	deadline := time.Now().Add(time.Minute)
	for strings.Count(s.output(), "out of file descriptors: handing the connections the master sends back") < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the workers did not run out of descriptors")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for stable := 0; stable < 10; time.Sleep(50 * time.Millisecond) {
		if fdCount(t, s.cmd.Process.Pid) < 256 {
			stable = 0
		} else {
			stable++
		}
		if time.Now().After(deadline) {
			t.Fatalf("the master does not stay at its fd limit: %d open", fdCount(t, s.cmd.Process.Pid))
		}
	}

	// A scrape now waits in the admin listener's backlog: its accept fails,
	// and the endpoint pauses (answered below, once the flood is over).
	scraped := make(chan string, 1)
	go func() {
		c := &http.Client{Timeout: 2 * time.Minute}
		resp, err := c.Get("http://" + admin + "/metrics")
		if err != nil {
			scraped <- "error: " + err.Error()
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		scraped <- string(b)
	}()
	s.waitOutput(`pausing accepts on this listener.*component=admin|component=admin.*pausing accepts on this listener`, 30*time.Second)

	// A worker dies under the flood: its replacement cannot be started.
	syscall.Kill(victim.PID, syscall.SIGKILL)
	s.waitOutput(`cannot start a worker.*too many open files`, 30*time.Second)
	select {
	case <-s.done:
		t.Fatalf("master exited under the flood: %v", s.err)
	case <-time.After(time.Second): // a few more attempts fail meanwhile
	}

	closeConns()
	st := waitStatus(t, ctl, "the killed worker's slot refilled", func(st status) bool {
		return len(st.Workers) == 2 && st.Workers[0].PID != victim.PID &&
			st.Workers[0].State == "ready" && st.Workers[1].State == "ready"
	})
	s.waitOutput(`worker started after failed attempts`, 10*time.Second)
	// Worker 2 ran out of descriptors too (truncated fd messages), and
	// handed those connections back over a channel that survived it.
	s.waitOutput(`out of file descriptors: handing the connections the master sends back`, time.Second)
	if st.Workers[1].PID != before.Workers[1].PID {
		t.Errorf("worker 2 was replaced (%d → %d): it should have survived running out of descriptors", before.Workers[1].PID, st.Workers[1].PID)
	}
	if st.Totals.Restarts != 1 {
		t.Errorf("restarts = %d, want 1 (the kill)", st.Totals.Restarts)
	}
	extra := getStatus(t, ctl)
	t.Logf("status: %+v", extra.Totals)
	if table, err := run(t, "status", "--control", ctl); err != nil || !strings.Contains(table, "short of descriptors: accept pauses") {
		t.Errorf("status table does not show the shortage: %v\n%s", err, table)
	}
	if extra.Totals.SpawnFailures == 0 || extra.Totals.AcceptPauses == 0 || extra.Totals.Starved == 0 {
		t.Errorf("status totals %+v: want spawn failures, accept pauses and starved connections counted", extra.Totals)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := 0; i < 20; i++ {
		if body, _, err := get(ctx, newClient(), s.url(), true); err != nil || body != "hello world\n" {
			t.Fatalf("request %d after the flood: %q %v", i, body, err)
		}
	}
	select {
	case <-s.done:
		t.Fatalf("master exited: %v", s.err)
	default:
	}

	var scrape string
	select {
	case scrape = <-scraped:
	case <-time.After(2 * time.Minute):
		t.Fatal("the scrape asked during the flood was not answered after it")
	}
	if _, ok := metricSum(scrape, "wcluster_accept_pauses_total"); !ok {
		t.Errorf("the scrape asked during the flood was answered without the metrics:\n%.2000s", scrape)
	}
	// That scrape may have slipped through while a descriptor was briefly
	// free, before the failed restart; a scrape now sees all of the flood.
	_, scrape = httpGet(t, "http://"+admin+"/metrics")
	for _, name := range []string{"wcluster_accept_pauses_total", "wcluster_starved_connections_total", "wcluster_worker_spawn_failures_total"} {
		if v, ok := metricSum(scrape, name); !ok || v < 1 {
			t.Errorf("the scrape after the flood: %s = %v (present %v), want ≥ 1\n%.2000s", name, v, ok, scrape)
		}
	}

	out := s.output()
	if n := len(regexp.MustCompile(`pausing accepts on this listener.*listener=`+regexp.QuoteMeta(admin)).FindAllString(out, -1)); n != 1 {
		t.Errorf("%d accept-pause lines for the admin endpoint %s: want one", n, admin)
	}
	if strings.Contains(out, "http: Accept error") {
		t.Errorf("net/http's line per failed accept reached the log:\n%s", out)
	}
	pauses := len(regexp.MustCompile(`pausing accepts on this listener.*listener=`+regexp.QuoteMeta(s.addr)).FindAllString(out, -1))
	spawnErrs := strings.Count(out, "cannot start a worker")
	lines := strings.Count(out, "\n")
	t.Logf("restarts %d; log: %d lines, %d accept pauses, %d spawn-failure lines", st.Totals.Restarts, lines, pauses, spawnErrs)
	if pauses != 1 {
		t.Errorf("%d accept-pause lines for %s: want one for the flood", pauses, s.addr)
	}
	if spawnErrs != 1 {
		t.Errorf("%d spawn-failure lines: want one per episode", spawnErrs)
	}
	if lines > 50 {
		t.Errorf("%d log lines for one flood", lines)
	}
}

// TestFDFloodSharedWorkersPause: with --sched shared the workers accept
// themselves; at 256 open files and 1,000 held connections their accepts
// fail with EMFILE. Each pauses and says so once, none dies, and after the
// flood they serve.
func TestFDFloodSharedWorkersPause(t *testing.T) {
	t.Parallel()
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Fatal("prlimit (util-linux) is needed to run the master with a low fd limit:", err)
	}
	ctl := filepath.Join(t.TempDir(), "ctl.sock")
	s, err := launch(t, exec.Command(prlimit, "--nofile=256:256", "--", env.bin, "serve",
		"--listen", "127.0.0.1:0", "--cache-dir", env.cache, "--control", ctl, "--workers", "2", "--sched", "shared"))
	if err != nil {
		t.Fatal(err)
	}
	before := getStatus(t, ctl)
	conns := fdFloodConns(t, s.addr, 1000)
	t.Logf("flood: %d of 1000 connections open", len(conns))
	closeConns := sync.OnceFunc(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	t.Cleanup(closeConns)
	if len(conns) < 600 {
		t.Fatalf("only %d flood connections connected", len(conns))
	}
	s.waitOutput(`pausing accepts on this listener`, 30*time.Second)
	closeConns()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := 0; i < 20; i++ {
		if body, _, err := get(ctx, newClient(), s.url(), true); err != nil || body != "hello world\n" {
			t.Fatalf("request %d after the flood: %q %v", i, body, err)
		}
	}
	st := getStatus(t, ctl)
	for i, w := range st.Workers {
		if w.PID != before.Workers[i].PID || w.State != "ready" {
			t.Errorf("worker %d: pid %d → %d, %s: it should have lived through the flood", w.ID, before.Workers[i].PID, w.PID, w.State)
		}
	}
	out := s.output()
	pauses := strings.Count(out, "pausing accepts on this listener")
	t.Logf("log: %d lines, %d accept pauses", strings.Count(out, "\n"), pauses)
	if pauses > 2 {
		t.Errorf("%d accept-pause lines: want at most one per worker", pauses)
	}
}

// TestSpawnFailureRetried: a worker that cannot be started (here its
// executable is gone, as in a botched deploy) is retried with backoff while
// the other worker serves; the master neither exits nor counts it as a
// crash, and the slot is refilled once the executable is back.
func TestSpawnFailureRetried(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "wcluster")
	copyBinaryForNobody(t, env.bin, bin, 0o755)
	ctl := filepath.Join(t.TempDir(), "ctl.sock")
	s, err := launch(t, exec.Command(bin, "serve", "--listen", "127.0.0.1:0", "--cache-dir", env.cache,
		"--control", ctl, "--workers", "2"))
	if err != nil {
		t.Fatal(err)
	}
	before := getStatus(t, ctl)
	victim := before.Workers[0]
	if err := os.Rename(bin, bin+".away"); err != nil {
		t.Fatal(err)
	}
	syscall.Kill(victim.PID, syscall.SIGKILL)
	s.waitOutput(`cannot start a worker.*no such file or directory`, 30*time.Second)

	// The other worker serves meanwhile, and starts keep being tried.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := 0; i < 10; i++ {
		if body, _, err := get(ctx, newClient(), s.url(), true); err != nil || body != "hello world\n" {
			t.Fatalf("request %d while a slot is empty: %q %v", i, body, err)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for masterSpawnFailures(t, ctl) < 3 {
		if time.Now().After(deadline) {
			t.Fatal("the empty slot is not being retried")
		}
		time.Sleep(50 * time.Millisecond)
	}

	if err := os.Rename(bin+".away", bin); err != nil {
		t.Fatal(err)
	}
	st := waitStatus(t, ctl, "the empty slot refilled", func(st status) bool {
		return len(st.Workers) == 2 && st.Workers[0].PID != victim.PID && st.Workers[0].State == "ready"
	})
	s.waitOutput(`worker started after failed attempts`, 10*time.Second)
	if st.Totals.Restarts != 1 {
		t.Errorf("restarts = %d, want 1: failed starts are not crashes", st.Totals.Restarts)
	}
	if n := strings.Count(s.output(), "cannot start a worker"); n != 1 {
		t.Errorf("%d spawn-failure lines: want one for the episode", n)
	}
}

// masterSpawnFailures reads the master's count of workers it could not start.
func masterSpawnFailures(t *testing.T, ctl string) uint64 {
	t.Helper()
	return getStatus(t, ctl).Totals.SpawnFailures
}

// TestStoppedWorkerDoesNotStallAccept: a worker that stops reading its
// channel (SIGSTOP, long before --worker-timeout) gets no more than the
// master lets a worker hold unacknowledged (256); the master must not wait
// on it, but send the rest to the other worker, so a normal client is
// served at once.
func TestStoppedWorkerDoesNotStallAccept(t *testing.T) {
	t.Parallel()
	s, ctl := startControlled(t, "--workers", "2", "--worker-timeout", "5m")
	before := getStatus(t, ctl)
	victim := before.Workers[0]
	t.Cleanup(func() { syscall.Kill(victim.PID, syscall.SIGKILL) })
	stopProcess(t, victim.PID)

	// Connections that each send a request and keep the connection: the
	// other worker answers and keeps them; those sent to the stopped one
	// stay in its channel, more than it may hold unacknowledged.
	conns := fdFloodConns(t, s.addr, 800)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for _, c := range conns {
		c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(time.Minute)
	for {
		st := getStatus(t, ctl)
		if st.Totals.Accepted >= uint64(len(conns)) {
			t.Logf("accepted %d; worker 1 unacked %d, worker 2 in flight %d", st.Totals.Accepted, st.Workers[0].Unacked, st.Workers[1].InFlight)
			if st.Workers[0].Unacked > 256 {
				t.Fatalf("the stopped worker holds %d connections unacknowledged; a worker may hold 256", st.Workers[0].Unacked)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the master accepted %d of %d connections in a minute: its accept loop is stuck on the stopped worker", st.Totals.Accepted, len(conns))
		}
		time.Sleep(50 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i := 0; i < 10; i++ {
		if body, _, err := get(ctx, newClient(), s.url(), true); err != nil || body != "hello world\n" {
			t.Fatalf("request %d beside the stopped worker: %q %v", i, body, err)
		}
	}
}
