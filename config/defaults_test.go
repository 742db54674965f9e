package config

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wcluster/wcluster/internal/testfiles"

	"github.com/wcluster/wcluster/guests/embedded"
)

// TestFlagsTable: every flag's default parses (Default applies them all),
// every flag with a key names a key the file knows, and the defaults are
// the documented ones.
func TestFlagsTable(t *testing.T) {
	d := Default()
	for _, f := range Flags() {
		if f.Key == "" {
			continue
		}
		table, key, _ := strings.Cut(f.Key, " ")
		known := map[string][]string{"[cluster]": clusterKeys, "tenant": tenantKeys}[table]
		if !slices.Contains(known, key) {
			t.Errorf("--%s: key %q is not a %s key", f.Name, f.Key, table)
		}
		if want := strings.ReplaceAll(f.Name, "-", "_"); key != want && f.Name != "listen" {
			t.Errorf("--%s: key %q, want %q (docs/config.md maps flags to keys of the same name)", f.Name, key, want)
		}
	}
	l := d.Limits
	if l.MemoryLimit != 128<<20 || l.Timeout != 30*time.Second || l.Instances != 64 || l.MinInstances != 2 ||
		l.FirstByteLimit != 8192 || l.DrainGrace != time.Second || l.Fresh || d.Listen != ":8000" {
		t.Errorf("limits: %+v, listen %q", l, d.Listen)
	}
	if c := d.Cluster; c.Workers < 1 || c.Sched != "rr" || c.Backlog != 511 || c.GuestBudget != "auto" || c.LogFormat != "text" || c.SandboxOff {
		t.Errorf("cluster: %+v", c)
	}
}

// TestFlagsAreDefaults: a flag set is the default of a file's keys; the
// file's own keys win; a one-handler flag is not a default.
func TestFlagsAreDefaults(t *testing.T) {
	dir := testfiles.Dir(t, map[string]string{"h.wasm": wasmMagic, "c.toml": `[cluster]
workers = 3
[[tenant]]
name = "a"
handler = "h.wasm"
timeout = "7s"
[[tenant]]
name = "b"
handler = "h.wasm"
listen = ["127.0.0.1:9001"]
`})
	d := Default()
	d.Listen = ""
	for name, v := range map[string]string{"listen": "127.0.0.1:9000", "workers": "1", "timeout": "3s",
		"memory-limit": "64MiB", "instance-mode": "fresh", "sched": "shared", "admin": "127.0.0.1:9090", "worker-env": "HTTP_PROXY"} {
		if err := d.Set(name, v); err != nil {
			t.Fatal(err)
		}
	}
	c, err := Load(filepath.Join(dir, "c.toml"), d)
	if err != nil {
		t.Fatal(err)
	}
	a, b := c.Tenants[0], c.Tenants[1]
	if !slices.Equal(a.Listen, []string{"127.0.0.1:9000"}) || !slices.Equal(b.Listen, []string{"127.0.0.1:9001"}) {
		t.Errorf("listen: a %v (want --listen's), b %v (want its own)", a.Listen, b.Listen)
	}
	if a.Timeout != 7*time.Second || b.Timeout != 3*time.Second || a.MemoryLimit != 64<<20 || !b.Fresh {
		t.Errorf("limits: a %+v, b %+v", a.Limits, b.Limits)
	}
	if c.Cluster.Admin != "127.0.0.1:9090" || !slices.Equal(c.Groups[0].WorkerEnv, []string{"HTTP_PROXY"}) {
		t.Errorf("cluster: admin %q, worker env %v: want the flags'", c.Cluster.Admin, c.Groups[0].WorkerEnv)
	}
	if c.Cluster.Workers != 3 || c.Groups[0].Workers != 3 || c.Cluster.Sched != "shared" {
		t.Errorf("cluster: workers %d (want the file's 3), sched %q (want the flag's)", c.Cluster.Workers, c.Cluster.Sched)
	}
	if err := d.Set("upstream", "http://x"); err == nil || !strings.Contains(err.Error(), "does not apply with --config") {
		t.Errorf("--upstream as a default: %v", err)
	}
	for name, want := range map[string]string{"workers": "--workers must be at least 1 (got 0)",
		"first-byte-limit": "--first-byte-limit must be 0 (no bound) or more", "instance-mode": "use pooled or fresh"} {
		v := map[string]string{"workers": "0", "first-byte-limit": "-1", "instance-mode": "shared"}[name]
		if err := d.Set(name, v); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("--%s %s: %v, want %q", name, v, err, want)
		}
	}
}

// TestSingle: serve HANDLER.wasm is one group (unnamed) of one listener
// whose one plaintext default tenant the worker serves unrouted; the
// embedded handler when none is given.
func TestSingle(t *testing.T) {
	dir := testfiles.Dir(t, map[string]string{"h.wasm": wasmMagic})
	d := Default()
	d.Set("workers", "3")
	d.Set("listen", "127.0.0.1:0")
	c, err := Single(HandlerFlags{Handler: filepath.Join(dir, "h.wasm"), Upstream: "http://example.com:81"}, d)
	if err != nil {
		t.Fatal(err)
	}
	if c.Path != "" || len(c.Groups) != 1 {
		t.Fatalf("%+v", c)
	}
	g := c.Groups[0]
	if g.Name != "" || g.Workers != 3 || len(g.Listeners) != 1 || g.Listeners[0].TLS ||
		!slices.Equal(g.Listeners[0].Tenants, []string{"h.wasm"}) || len(g.Tenants[0].Hosts) != 0 {
		t.Errorf("group: %+v", g)
	}
	if !slices.Equal(g.Sandbox.ConnectTCP, []uint16{81}) || !g.Sandbox.Resolve || g.Sandbox.ReadPaths[0] != d.Cluster.CacheDir {
		t.Errorf("sandbox: %+v", g.Sandbox)
	}
	if !strings.Contains(g.BudgetText, "over 3 workers") {
		t.Errorf("budget: %q", g.BudgetText)
	}
	c, err = Single(HandlerFlags{}, d)
	if err != nil {
		t.Fatal(err)
	}
	if w, err := c.Tenants[0].ReadWasm(); err != nil || len(w) == 0 || c.Tenants[0].Name != embedded.HelloName {
		t.Errorf("embedded: %q, %d bytes, %v", c.Tenants[0].Name, len(w), err)
	}
	if _, err := Single(HandlerFlags{TLSCert: filepath.Join(dir, "h.wasm")}, d); err == nil || err.Error() != "--tls-cert and --tls-key go together: give both, or neither" {
		t.Errorf("tls cert alone: %v", err)
	}
}
