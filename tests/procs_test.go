package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestWorkerProcs: each worker runs Go code on the CPUs shared among the
// workers (--worker-procs auto: at least one thread each, two with TLS), on what
// --worker-procs gives, or on what GOMAXPROCS in the master's environment
// says; a bad value is one line at start or FILE:LINE in a config.
func TestWorkerProcs(t *testing.T) {
	t.Parallel()
	share := max(1, (runtime.GOMAXPROCS(0)+1)/2)
	auto, autoTLS := "GOMAXPROCS="+strconv.Itoa(share), "GOMAXPROCS="+strconv.Itoa(max(2, share))
	if v, ok := os.LookupEnv("GOMAXPROCS"); ok {
		auto, autoTLS = "GOMAXPROCS="+v, "GOMAXPROCS="+v // the master's own setting passes on
	}
	cert, key := writeTestCert(t, t.TempDir(), "procs", "localhost")
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"auto", nil, []string{"--workers", "2"}, auto},
		// Handshakes run on a thread of lowered priority: a second one
		// serves requests meanwhile.
		{"auto with TLS", nil, []string{"--workers", "2", "--tls-cert", cert, "--tls-key", key}, autoTLS},
		{"given", nil, []string{"--workers", "2", "--worker-procs", "3"}, "GOMAXPROCS=3"},
		{"environment", []string{"GOMAXPROCS=5"}, []string{"--workers", "2"}, "GOMAXPROCS=5"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, pids := startSandboxed(t, tc.env, append(tc.args, guest(t, "go-hello"))...)
			for _, pid := range pids {
				envs := environOf(t, pid)
				if !slices.Contains(envs, tc.want) {
					t.Errorf("worker %d: environment %q lacks %s", pid, envs, tc.want)
				}
			}
		})
	}

	if _, err := tryStart(t, "--worker-procs", "0"); err == nil || !strings.Contains(fmt.Sprint(err), `--worker-procs "0": use "auto" or a number of threads ≥ 1`) {
		t.Errorf("--worker-procs 0: want a one-line refusal, got %v", err)
	}
	cfg := filepath.Join(t.TempDir(), "procs.toml")
	writeConfig(t, cfg, "[cluster]\nworker_procs = \"many\"\n\n[[tenant]]\nname = \"a\"\nlisten = [\"127.0.0.1:0\"]\n")
	if got, err := run(t, "check", "--config", cfg); err == nil || !strings.Contains(got, cfg+`:2: [cluster]: worker_procs = "many": use "auto" or a number of threads ≥ 1`) {
		t.Errorf("check of worker_procs = \"many\": %v\n%s", err, got)
	}
}

// TestWorkerProcsFollowScale: under --worker-procs auto a scale changes
// every worker's share of the CPUs. The running workers are told theirs
// (the status shows each worker's threads from its heartbeat; the worker is
// not replaced), new ones start with it, and scaling back gives the share
// back. With GOMAXPROCS in the master's environment that setting stays.
func TestWorkerProcsFollowScale(t *testing.T) {
	t.Parallel()
	share := func(workers int) int { return max(1, (runtime.GOMAXPROCS(0)+workers-1)/workers) }
	if v, ok := os.LookupEnv("GOMAXPROCS"); ok {
		n, _ := strconv.Atoi(v)
		share = func(int) int { return n }
	}
	s, ctl := startControlled(t, "--workers", "1")
	threads := func(workers int) func(status) bool {
		return func(st status) bool {
			g := st.Groups[0]
			if len(g.Workers) != workers {
				return false
			}
			for _, w := range g.Workers {
				if w.State != "ready" || w.Procs != share(workers) {
					return false
				}
			}
			return true
		}
	}
	first := waitStatus(t, ctl, fmt.Sprintf("one worker with %d threads", share(1)), threads(1)).Groups[0].Workers[0].PID
	for _, n := range []int{2, 1} {
		if out, err := run(t, "scale", "--control", ctl, strconv.Itoa(n)); err != nil {
			t.Fatalf("scale %d: %v\n%s", n, err, out)
		}
		st := waitStatus(t, ctl, fmt.Sprintf("%d workers with %d threads each", n, share(n)), threads(n))
		if pid := st.Groups[0].Workers[0].PID; pid != first {
			t.Fatalf("scale %d: worker 1 was replaced (%d → %d): it should have been told its threads", n, first, pid)
		}
	}
	if out, err := run(t, "status", "--control", ctl); err != nil || !strings.Contains(out, "threads") {
		t.Errorf("the status table lacks the threads column: %v\n%s", err, out)
	}
	if got := s.output(); !strings.Contains(got, "worker threads") && share(1) != share(2) {
		t.Errorf("the master did not log the workers' new thread count:\n%s", got)
	}
}
