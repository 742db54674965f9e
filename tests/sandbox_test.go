package tests

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
)

// startSandboxed runs `wcluster serve` with a control socket, extra
// environment and args, and returns it with its worker pids.
func startSandboxed(t *testing.T, extraEnv []string, args ...string) (*server, []int) {
	t.Helper()
	ctl := filepath.Join(t.TempDir(), "ctl.sock")
	full := []string{"serve", "--listen", "127.0.0.1:0", "--control", ctl}
	if !strings.Contains(strings.Join(args, " "), "--cache-dir") {
		full = append(full, "--cache-dir", env.cache)
	}
	full = append(full, args...)
	s, err := launch(t, exec.Command(env.bin, full...), withEnv(extraEnv...))
	if err != nil {
		t.Fatal(err)
	}
	st := activatedStatusOf(t, ctl)
	var pids []int
	for _, w := range st.Workers {
		pids = append(pids, w.PID)
	}
	if len(pids) == 0 {
		t.Fatalf("no workers in status: %+v", st)
	}
	return s, pids
}

func mustHello(t *testing.T, s *server) {
	t.Helper()
	client := newClient()
	for i := 0; i < 20; i++ {
		body, _, err := get(context.Background(), client, s.url(), i%2 == 0)
		if err != nil || body != "hello world\n" {
			t.Fatalf("request %d: %q %v", i, body, err)
		}
	}
}

// TestWorkerSandbox: under every policy, workers run with no_new_privs and
// a seccomp filter (Landlock has no /proc trace: internal/sandbox's tests
// check it), serve as before, and see nothing of the master's environment
// but what --worker-env names.
func TestWorkerSandbox(t *testing.T) {
	t.Parallel()
	for _, sched := range []string{"rr", "shared", "reuseport"} {
		t.Run(sched, func(t *testing.T) {
			s, pids := startSandboxed(t, []string{"WCLUSTER_TEST_MARKER=host-secret", "WCLUSTER_TEST_PASSED=given"},
				"--workers", "2", "--sched", sched, "--worker-env", "WCLUSTER_TEST_PASSED", guest(t, "go-hello"))
			mustHello(t, s)
			for _, pid := range pids {
				st := procStatus(t, pid)
				if st["NoNewPrivs"] != "1" || st["Seccomp"] != "2" {
					t.Errorf("worker %d: NoNewPrivs %q Seccomp %q, want 1 and 2", pid, st["NoNewPrivs"], st["Seccomp"])
				}
				envs := environOf(t, pid)
				joined := strings.Join(envs, "\n")
				if strings.Contains(joined, "host-secret") || strings.Contains(joined, "PATH=") {
					t.Errorf("worker %d inherited the master's environment:\n%s", pid, joined)
				}
				if !strings.Contains(joined, "WCLUSTER_TEST_PASSED=given") {
					t.Errorf("worker %d lacks the variable passed with --worker-env:\n%s", pid, joined)
				}
			}
		})
	}
}

// TestWorkerSandboxOff: --worker-sandbox=off is the debugging escape.
func TestWorkerSandboxOff(t *testing.T) {
	t.Parallel()
	s, pids := startSandboxed(t, nil, "--workers", "1", "--worker-sandbox=off", guest(t, "go-hello"))
	mustHello(t, s)
	if st := procStatus(t, pids[0]); st["NoNewPrivs"] != "0" || st["Seccomp"] != "0" {
		t.Errorf("sandbox off: NoNewPrivs %q Seccomp %q, want 0 and 0", st["NoNewPrivs"], st["Seccomp"])
	}
	if out, err := tryStart(t, "--worker-sandbox", "maybe"); err == nil || !strings.Contains(fmt.Sprint(err), "--worker-sandbox \"maybe\": use on or off") {
		t.Errorf("--worker-sandbox maybe: want a one-line error, got %v %v", out, err)
	}
}

// TestWorkerConfigNotInEnviron: tenants' env and config values reach the
// guests (through the configuration descriptor) but never a worker's
// process environment.
func TestWorkerConfigNotInEnviron(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	port := freePort(t)
	ctl := filepath.Join(dir, "ctl.sock")
	cfg := filepath.Join(dir, "wcluster.toml")
	writeConfig(t, cfg, fmt.Sprintf(`[cluster]
workers = 1
cache_dir = %q
control = %q

[[tenant]]
name = "a"
handler = %q
listen = ["127.0.0.1:%d"]
env = { A_SECRET = "env-value-a" }
config = { secret = "config-value-a" }
`, env.cache, ctl, probeGuest(t), port))
	startConfig(t, cfg, "WCLUSTER_TEST_MARKER=host-secret")
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if code, body := mustGet(t, addr, "a.test", "/config?k=secret"); code != 200 || !strings.Contains(body, "config-value-a") {
		t.Fatalf("the guest's config: %d %q", code, body)
	}
	if code, body := mustGet(t, addr, "a.test", "/env"); code != 200 || !strings.Contains(body, "env-value-a") {
		t.Fatalf("the guest's env: %d %q", code, body)
	}
	st := activatedStatusOf(t, ctl)
	for _, w := range st.Workers {
		b := strings.Join(environOf(t, w.PID), "\n")
		for _, secret := range []string{"env-value-a", "config-value-a", "host-secret"} {
			if strings.Contains(b, secret) {
				t.Errorf("worker %d's environment holds %q: %q", w.PID, secret, b)
			}
		}
		if st := procStatus(t, w.PID); st["Seccomp"] != "2" {
			t.Errorf("config-file worker %d: Seccomp %q", w.PID, st["Seccomp"])
		}
	}
}

// TestWorkerUser: --user runs workers as that user and group with no
// capabilities while the master keeps root; they still read the
// compilation cache and serve. A user that does not exist, or a cache they
// cannot reach, stops the start with one line.
func TestWorkerUser(t *testing.T) {
	t.Parallel()
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatalf("no user nobody on this system: %v", err)
	}
	if os.Geteuid() != 0 {
		_, err := tryStart(t, "--user", "nobody")
		if err == nil || !strings.Contains(err.Error(), "not root") {
			t.Fatalf("--user as non-root: want the one-line refusal, got %v", err)
		}
		return
	}
	// The binary and the tests' (warm) cache in a directory the workers
	// can pass; the master shares the cache with nobody's group.
	os.Chmod(env.dir, 0o755)
	s, pids := startSandboxed(t, nil, "--workers", "2", "--user", "nobody", guest(t, "go-hello"))
	mustHello(t, s)
	for _, pid := range pids {
		st := procStatus(t, pid)
		uid := strings.Fields(st["Uid"])
		gid := strings.Fields(st["Gid"])
		if len(uid) != 4 || uid[0] != nobody.Uid || uid[1] != nobody.Uid || uid[2] != nobody.Uid || gid[0] != nobody.Gid {
			t.Errorf("worker %d: Uid %q Gid %q, want %s and %s", pid, st["Uid"], st["Gid"], nobody.Uid, nobody.Gid)
		}
		if st["Groups"] != nobody.Gid {
			t.Errorf("worker %d: supplementary groups %q, want only %s", pid, st["Groups"], nobody.Gid)
		}
		if st["CapEff"] != "0000000000000000" || st["CapPrm"] != "0000000000000000" {
			t.Errorf("worker %d: CapEff %s CapPrm %s, want none", pid, st["CapEff"], st["CapPrm"])
		}
		if st["NoNewPrivs"] != "1" || st["Seccomp"] != "2" {
			t.Errorf("worker %d: NoNewPrivs %q Seccomp %q", pid, st["NoNewPrivs"], st["Seccomp"])
		}
	}
	if st := procStatus(t, s.cmd.Process.Pid); strings.Fields(st["Uid"])[0] != "0" {
		t.Errorf("master: Uid %q, want root kept", st["Uid"])
	}

	_, err = tryStart(t, "--user", "no-such-user-here")
	if err == nil || !strings.Contains(err.Error(), `user "no-such-user-here": no such user`) {
		t.Errorf("unknown user: want a one-line error, got %v", err)
	}
	if out, err := run(t, "serve", "--listen", "127.0.0.1:80", "--sched", "reuseport", "--user", "nobody", "--cache-dir", env.cache); err == nil || !strings.Contains(out, "cannot bind port 80 as uid") {
		t.Errorf("--user with reuseport on port 80: want a one-line refusal, got %v: %s", err, out)
	}
	hidden := filepath.Join(t.TempDir(), "hidden") // under a 0700 directory
	_, err = tryStart(t, "--user", "nobody", "--cache-dir", filepath.Join(hidden, "cache"))
	if err == nil || !strings.Contains(err.Error(), "cannot reach the compilation cache") {
		t.Errorf("unreachable cache: want a one-line error, got %v", err)
	}
}
