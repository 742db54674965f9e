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
