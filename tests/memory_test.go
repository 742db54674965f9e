package tests

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

// The memory bomb: the probe guest allocating (and touching) far more than
// any limit; each call dies when its memory.grow fails.
const bombPath = "/alloc?mb=100000"

// treeRSS sums the resident memory of pid and all its descendants (the
// master and its workers), from /proc.
func treeRSS(pid int) uint64 {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// The fields after the command (which may hold spaces) in parentheses.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 1 {
			if pp, err := strconv.Atoi(f[1]); err == nil {
				children[pp] = append(children[pp], p)
			}
		}
	}
	var sum uint64
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		queue = append(queue, children[p]...)
		b, err := os.ReadFile("/proc/" + strconv.Itoa(p) + "/statm")
		if err != nil {
			continue
		}
		f := strings.Fields(string(b))
		if len(f) > 1 {
			pages, _ := strconv.ParseUint(f[1], 10, 64)
			sum += pages * uint64(os.Getpagesize())
		}
	}
	return sum
}

// memTotal is the machine's memory (MemTotal of /proc/meminfo).
func memTotal(t *testing.T) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no MemTotal in /proc/meminfo")
	return 0
}

// floodBound is the bound on the RSS of all of wcluster's processes during
// a flood with 512MiB of guest memory per worker and 2 workers: 1.5 GiB.
// A race build holds more of its own (the detector's shadow memory: its
// idle processes alone are about twice a plain build's, some 270 MiB
// against 130), not the product's: it is given 512 MiB more, still below
// what a single 1GiB bomb per worker would take without the budget.
func floodBound(t *testing.T) (uint64, string) {
	if raceBuild(t, env.bin) {
		return 2 << 30, "race build: 1.5 GiB + 512 MiB for the race detector"
	}
	return 3 << 29, "plain build"
}

// floodResult is what a memory flood did.
type floodResult struct {
	calls, answered int64 // bomb calls made, and (wrongly) answered 200
	peakRSS         uint64
}

// memoryFlood sends the bomb on conns concurrent connections (host bomb)
// for d, sampling the resident memory of s's processes every 50ms until
// every connection has ended.
func memoryFlood(t *testing.T, s *server, host string, conns int, d time.Duration) floodResult {
	t.Helper()
	var res floodResult
	var calls, answered atomic.Int64
	stop := time.Now().Add(d)
	var wg sync.WaitGroup
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				c, err := net.DialTimeout("tcp", s.addr, 10*time.Second)
				if err != nil {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				c.SetDeadline(time.Now().Add(60 * time.Second))
				fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", bombPath, host)
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode == 200 {
						answered.Add(1)
					}
				}
				c.Close()
				calls.Add(1)
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	pid := s.cmd.Process.Pid
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for sampling := true; sampling; {
		select {
		case <-done:
			sampling = false
		case <-tick.C:
		}
		res.peakRSS = max(res.peakRSS, treeRSS(pid))
	}
	res.calls, res.answered = calls.Load(), answered.Load()
	return res
}

// TestMemoryBudgetFlood: with --guest-memory-budget 512MiB and 2 workers,
// 64 connections at once to a memory bomb keep all of wcluster within
// 1.5 GiB; the bombs' growth is refused at the budget, not at 64 × 128 MiB
// per worker; `status` and the banner tell the budget. The instances'
// own limit is 1GiB, past the budget: so the budget is reached however
// few bombs run at once on a slow machine, and without it one bomb per
// worker would pass the bound.
func TestMemoryBudgetFlood(t *testing.T) {
	s, ctl := startControlled(t, "--workers", "2", "--guest-memory-budget", "512MiB", "--memory-limit", "1GiB", probeGuest(t))
	s.waitOutput(`guest memory budget 512MiB per worker`, 5*time.Second)
	waitStatus(t, ctl, "both workers ready", func(st status) bool { return len(st.Workers) == 2 && st.Workers[1].State == "ready" })
	before := treeRSS(s.cmd.Process.Pid)
	res := memoryFlood(t, s, "bomb", 64, 15*time.Second)
	bound, build := floodBound(t)
	t.Logf("64 connections to the memory bomb for 15s: %d calls, RSS of master and workers %d MiB before, %d MiB at the peak (bound %d MiB, %s)",
		res.calls, before>>20, res.peakRSS>>20, bound>>20, build)
	if res.peakRSS > bound {
		t.Errorf("wcluster's processes reached %d MiB of RSS, past %d MiB (%s)", res.peakRSS>>20, bound>>20, build)
	}
	if res.answered > 0 {
		t.Errorf("%d bomb calls answered 200: they should have run out of memory", res.answered)
	}
	if res.calls < 64 {
		t.Errorf("only %d bomb calls in 15s", res.calls)
	}
	st := waitStatus(t, ctl, "refusals in the heartbeat", func(st status) bool {
		var n uint64
		for _, w := range st.Workers {
			n += w.Handler.GuestMemoryRefusals
		}
		return n > 0
	})
	for _, w := range st.Workers {
		if b := w.Handler.GuestMemoryBudget; b != 512<<20 {
			t.Errorf("worker %d reports a budget of %v, want %d", w.ID, b, 512<<20)
		}
		if u := w.Handler.GuestMemoryInUse; u > 512<<20 {
			t.Errorf("worker %d reports %v bytes of guest memory in use, past its budget", w.ID, u)
		}
	}
	out, err := run(t, "status", "--control", ctl)
	if err != nil || !strings.Contains(out, "/512MiB") {
		t.Errorf("`wcluster status` does not show the budget (%v):\n%s", err, out)
	}
	// The worker survived it all and serves.
	if code, body := mustGet(t, s.addr, "x", "/"); code != 200 {
		t.Errorf("after the flood: %d %q", code, body)
	}
}

// TestMemoryBudgetNeighbour: a well-behaved tenant in the same worker
// group as the memory bomb keeps answering through the flood; metrics and
// `check --config` show the budgets.
func TestMemoryBudgetNeighbour(t *testing.T) {
	dir := t.TempDir()
	probe := probeGuest(t)
	port := freePort(t)
	ctl := filepath.Join(dir, "ctl.sock")
	cfg := filepath.Join(dir, "wcluster.toml")
	writeConfig(t, cfg, fmt.Sprintf(`[cluster]
workers = 2
cache_dir = %q
control = %q
admin = "127.0.0.1:0"
guest_memory_budget = "512MiB"

[[tenant]]
name = "bomb"
handler = %q
listen = ["127.0.0.1:%d"]
hosts = ["bomb"]
memory_limit = "1GiB" # past the budget: the budget is what stops it

[[tenant]]
name = "good"
handler = %q
listen = ["127.0.0.1:%d"]
config = { name = "good" }
guest_memory_budget = "64MiB"
`, env.cache, ctl, probe, port, probe, port))
	out, err := run(t, "check", "--config", cfg)
	if err != nil || !strings.Contains(out, "group default: 2 workers, guest memory budget 512MiB per worker") ||
		!strings.Contains(out, "tenant good: time limit 30s, memory limit 128MiB per instance, guest memory budget 64MiB per worker") {
		t.Fatalf("check --config (%v):\n%s", err, out)
	}
	s := startConfig(t, cfg)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if code, body := mustGet(t, addr, "good", "/"); code != 200 || body != "tenant good\n" {
		t.Fatalf("good tenant: %d %q", code, body)
	}

	// The good tenant's client, one request after another, for as long as
	// the flood lasts.
	stop := make(chan struct{})
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	goodDone := make(chan struct{})
	go func() {
		defer close(goodDone)
		client := &http.Client{Timeout: 30 * time.Second}
		for {
			select {
			case <-stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			code, body, err := hostGet(ctx, client, addr, "good", "/")
			cancel()
			if err == nil && code == 200 && body == "tenant good\n" {
				ok.Add(1)
			} else {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, fmt.Sprintf("%d %q %v", code, body, err))
			}
		}
	}()
	res := memoryFlood(t, s, "bomb", 64, 15*time.Second)
	close(stop)
	<-goodDone
	t.Logf("flood: %d bomb calls, peak RSS %d MiB; good tenant meanwhile: %d answered, %d failed", res.calls, res.peakRSS>>20, ok.Load(), failed.Load())
	if failed.Load() > 0 {
		t.Errorf("the good tenant failed %d requests during the flood (first: %v)", failed.Load(), firstErr.Load())
	}
	if ok.Load() < 10 {
		t.Errorf("the good tenant answered only %d requests during the flood", ok.Load())
	}
	if bound, build := floodBound(t); res.peakRSS > bound {
		t.Errorf("wcluster's processes reached %d MiB of RSS, past %d MiB (%s)", res.peakRSS>>20, bound>>20, build)
	}
	_, scrape := httpGet(t, "http://"+adminAddr(t, s)+"/metrics")
	if v, ok := metricSum(scrape, "wcluster_guest_memory_budget_bytes"); !ok || v != 2*512<<20 {
		t.Errorf("wcluster_guest_memory_budget_bytes sums to %v (found %v), want two workers' 512MiB", v, ok)
	}
	for _, m := range []string{"wcluster_guest_memory_in_use_bytes", "wcluster_guest_memory_waits_total",
		"wcluster_tenant_memory_budget_bytes", "wcluster_tenant_memory_in_use_bytes", "wcluster_tenant_memory_waits_total"} {
		if _, ok := metricSum(scrape, m); !ok {
			t.Errorf("no %s in /metrics", m)
		}
	}
	if v, _ := metricSum(scrape, "wcluster_guest_memory_refusals_total"); v == 0 {
		t.Errorf("wcluster_guest_memory_refusals_total is 0 after the flood")
	}
	problems, err := promlint.New(strings.NewReader(scrape)).Lint()
	if err != nil {
		t.Fatalf("promlint: %v", err)
	}
	for _, p := range problems {
		if strings.Contains(p.Metric, "_memory_") {
			t.Errorf("promlint: %s: %s", p.Metric, p.Text)
		}
	}
}

// TestMemoryDefaultBudget: with default flags the same flood stays within
// a quarter of the machine's memory; the banner says what the default is.
func TestMemoryDefaultBudget(t *testing.T) {
	s, ctl := startControlled(t, "--workers", "2", probeGuest(t))
	banner := s.waitOutput(`guest memory budget \S+ per worker \(auto: [^)]*\)`, 5*time.Second)[0]
	waitStatus(t, ctl, "both workers ready", func(st status) bool { return len(st.Workers) == 2 && st.Workers[1].State == "ready" })
	res := memoryFlood(t, s, "bomb", 64, 10*time.Second)
	total := memTotal(t)
	t.Logf("%s; 64 connections to the memory bomb for 10s: %d calls, peak RSS %d MiB of %d MiB (bound: a quarter, %d MiB)",
		banner, res.calls, res.peakRSS>>20, total>>20, total>>22)
	if res.peakRSS > total/4 {
		t.Errorf("wcluster's processes reached %d MiB of RSS, past a quarter of the machine's %d MiB", res.peakRSS>>20, total>>20)
	}
	if res.answered > 0 {
		t.Errorf("%d bomb calls answered 200", res.answered)
	}
}
