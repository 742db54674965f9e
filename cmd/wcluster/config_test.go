package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wcluster/wcluster/internal/testfiles"
	"github.com/wcluster/wcluster/internal/tickets"

	"github.com/wcluster/wcluster/config"
	"github.com/wcluster/wcluster/guests/embedded"
	"github.com/wcluster/wcluster/host"
)

const wasmMagic = "\x00asm\x01\x00\x00\x00"

// TestConfigRouter: a plan builds a worker's Router: the modules compile,
// the certificates load, the listeners hold their tenants.
func TestConfigRouter(t *testing.T) {
	dir := testfiles.Dir(t, map[string]string{"hello.wasm": string(embedded.Hello), "bad.wasm": wasmMagic})
	testfiles.Cert(t, dir, "", "s.test")
	cache := filepath.Join(os.TempDir(), "wcluster-cmd-test-cache")
	src := `[cluster]
cache_dir = "` + cache + `"
[[tenant]]
name = "plain"
handler = "hello.wasm"
listen = ["127.0.0.1:0"]
[[tenant]]
name = "secure"
handler = "hello.wasm"
listen = ["127.0.0.2:0"]
hosts = ["s.test"]
tls = { cert = "cert.pem", key = "key.pem" }
instances_min = 1
`
	os.WriteFile(filepath.Join(dir, "c.toml"), []byte(src), 0o644)
	c, err := config.Load(filepath.Join(dir, "c.toml"), config.Default())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if _, err := prepare(ctx, c, log); err != nil {
		t.Fatal(err)
	}
	// What a worker gets: the plan with the bytes the master read.
	dcs, err := c.Masters()
	if err != nil {
		t.Fatal(err)
	}
	var plan config.Group
	if err := json.Unmarshal(dcs[0].WorkerConfig, &plan); err != nil {
		t.Fatal(err)
	}
	r, err := newRouter(ctx, &plan, 1, false, host.NewModules(), host.NewBudget(0), tickets.Keys{}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(ctx)
	st := routerStats(r, host.NewBudget(0))
	if len(st.Tenants) != 2 {
		t.Errorf("stats: %+v", st)
	}
	// Totals over the tenants sit beside them: each created its warm instances.
	if st.InstancesCreated < 2 {
		t.Errorf("instances_created total %v, want the sum over 2 tenants: %+v", st.InstancesCreated, st)
	}

	// A module that cannot be served is reported at its handler line.
	bad := strings.Replace(src, `handler = "hello.wasm"
listen = ["127.0.0.2:0"]`, `handler = "bad.wasm"
listen = ["127.0.0.2:0"]`, 1)
	os.WriteFile(filepath.Join(dir, "bad.toml"), []byte(bad), 0o644)
	c, err = config.Load(filepath.Join(dir, "bad.toml"), config.Default())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := prepare(ctx, c, log); err == nil || !strings.Contains(err.Error(), `bad.toml:9: tenant "secure": handler `) {
		t.Errorf("prepare: %v", err)
	}
}
