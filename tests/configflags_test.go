package tests

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestConfigFlagDefaults: with --config, a flag given on the command line
// is the default of what the file leaves out (a tenant's listen and limits,
// a [cluster] key), and the file wins where it says otherwise: the
// container entrypoint's --listen, --admin and --cache-dir work with it.
func TestConfigFlagDefaults(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "wcluster.toml")
	src := `[cluster]
workers = 2

[[tenant]]
name = "hello"
handler = "` + guest(t, "go-hello") + `"
timeout = "7s"
`
	if err := os.WriteFile(cfg, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	// check: the flag's memory limit for the tenant without one, the file's
	// timeout over the flag's.
	out, err := run(t, "check", "--config", cfg, "--listen", "127.0.0.1:0", "--memory-limit", "64MiB", "--timeout", "3s", "--cache-dir", env.cache)
	if err != nil {
		t.Fatalf("check: %v\n%s", err, out)
	}
	if !strings.Contains(out, "tenant hello: time limit 7s, memory limit 64MiB per instance") {
		t.Errorf("check: want the file's timeout and the flag's memory limit:\n%s", out)
	}

	// serve: the tenant without listen takes --listen; the file's workers
	// win over --workers; --admin (a [cluster] key the file leaves out)
	// serves.
	adminAddr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	cmd := exec.Command(env.bin, "serve", "--config", cfg, "--listen", "127.0.0.1:0", "--workers", "1",
		"--cache-dir", env.cache, "--admin", adminAddr)
	s, err := launch(t, cmd)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(s.output(), "serving 1 tenants (hello) from "+cfg+" on 127.0.0.1:") ||
		!strings.Contains(s.output(), "2 workers in 1 groups") {
		t.Errorf("banner: want the tenant on --listen with the file's 2 workers:\n%s", s.output())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if body, _, err := get(ctx, newClient(), s.url(), true); err != nil || body != "hello world\n" {
		t.Errorf("GET %s: %v %q", s.url(), err, body)
	}
	if _, _, err := get(ctx, newClient(), "http://"+adminAddr+"/healthz", true); err != nil {
		t.Errorf("admin endpoint from --admin: %v", err)
	}

	// A flag that is one handler's, not a default of a file, is refused.
	out, err = run(t, "serve", "--config", cfg, "--upstream", "http://127.0.0.1:1")
	if err == nil || !strings.Contains(out, "--upstream does not apply with --config") {
		t.Errorf("--upstream with --config: want a refusal, got %v:\n%s", err, out)
	}
}
