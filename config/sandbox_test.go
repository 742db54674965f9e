package config

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wcluster/wcluster/internal/testfiles"
)

// TestGroupConfigsOwnTenantsOnly: a group's workers receive their own
// tenants' env, config and handler bytes, none of another group's; the
// sandbox reads the cache and the group's mounts only; user and
// worker_env come from the file.
func TestGroupConfigsOwnTenantsOnly(t *testing.T) {
	dir := testfiles.Dir(t, map[string]string{
		"a.wasm": wasmMagic + "AAAA", "b.wasm": wasmMagic + "BBBB", "a-data/x": "x",
		"wcluster.toml": `
[cluster]
workers = 1
cache_dir = ""
worker_env = ["HTTP_PROXY"]
user = "nobody"

[[tenant]]
name = "a"
handler = "a.wasm"
listen = ["127.0.0.1:1"]
env = { A_ENV = "a-env-secret" }
config = { k = "a-config-secret" }
mount = "a-data"

[[tenant]]
name = "b"
handler = "b.wasm"
listen = ["127.0.0.1:2"]
group = "b"
user = "root"
env = { B_ENV = "b-env-secret" }
config = { k = "b-config-secret" }
`})
	c, err := Load(filepath.Join(dir, "wcluster.toml"), Default())
	if err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		// Under a 0700 directory the mount is out of nobody's reach: said
		// at start, with the directory to fix.
		_, err := c.Masters()
		if err == nil || !strings.Contains(err.Error(), "cannot read the mount") {
			t.Fatalf("unreachable mount: want a one-line error, got %v", err)
		}
		for d := dir; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
			os.Chmod(d, 0o755)
		}
	}
	dcs, err := c.Masters()
	if err != nil {
		t.Fatal(err)
	}
	if len(dcs) != 2 {
		t.Fatalf("%d groups", len(dcs))
	}
	for _, dc := range dcs {
		own, other := "a", "b"
		if dc.Name == "b" {
			own, other = "b", "a"
		}
		s := string(dc.WorkerConfig)
		for _, secret := range []string{other + "-env-secret", other + "-config-secret"} {
			if strings.Contains(s, secret) {
				t.Errorf("group %s's worker config holds %s", dc.Name, secret)
			}
		}
		if !strings.Contains(s, own+"-config-secret") {
			t.Errorf("group %s's worker config lacks its own values", dc.Name)
		}
		var wc Group
		if err := json.Unmarshal(dc.WorkerConfig, &wc); err != nil {
			t.Fatal(err)
		}
		if len(wc.Tenants) != 1 {
			t.Fatalf("group %s: tenants %+v", dc.Name, wc.Tenants)
		}
		if wasm, err := wc.Wasm(&wc.Tenants[0]); err != nil || string(wasm) != wasmMagic+strings.Repeat(strings.ToUpper(own), 4) || len(wc.Modules) != 1 {
			t.Errorf("group %s: handler bytes not passed: %q %v (modules %d)", dc.Name, wasm, err, len(wc.Modules))
		}
		if want := 1 + map[string]int{"a": 1, "b": 0}[own]; len(wc.Sandbox.ReadPaths) != want {
			t.Errorf("group %s: sandbox read paths %v", dc.Name, wc.Sandbox.ReadPaths)
		}
		if len(dc.WorkerEnv) != 1 || dc.WorkerEnv[0] != "HTTP_PROXY" || (dc.Credential == nil) != (os.Geteuid() != 0) {
			t.Errorf("group %s: worker env %v, credential %v (a root master sets one, another none)", dc.Name, dc.WorkerEnv, dc.Credential)
		}
		if own == "b" && dc.Credential != nil && dc.Credential.Uid != 0 {
			t.Errorf("group b runs as uid %d, want root (its tenant's user)", dc.Credential.Uid)
		}
	}
}
