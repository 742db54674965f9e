package config

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wcluster/wcluster/internal/testfiles"
)

// manyTenants is a configuration of n tenants on one listener, each its
// own host name, all serving shared.wasm but the last (other.wasm).
func manyTenants(n int) string {
	var b strings.Builder
	b.WriteString("[cluster]\nworkers = 1\ncache_dir = \"\"\n")
	for i := range n {
		handler := "shared.wasm"
		if i == n-1 {
			handler = "other.wasm"
		}
		fmt.Fprintf(&b, "\n[[tenant]]\nname = \"t%d\"\nhandler = %q\nlisten = [\"127.0.0.1:1\"]\nhosts = [\"t%d.test\"]\n", i, handler, i)
	}
	return b.String()
}

// TestManyTenantsConfig: the worker configuration holds each handler's
// bytes once, however many tenants serve it; with more than ManyTenants
// tenants instances_min defaults to 0 (and to 2 with fewer), and an
// instances_min the file sets is kept.
func TestManyTenantsConfig(t *testing.T) {
	const n = 200
	shared := wasmMagic + strings.Repeat("S", 64<<10)
	src := manyTenants(n)
	src = strings.Replace(src, "name = \"t1\"\n", "name = \"t1\"\ninstances_min = 3\n", 1)
	dir := testfiles.Dir(t, map[string]string{"shared.wasm": shared, "other.wasm": wasmMagic + "OTHER",
		"wcluster.toml": src, "few.toml": manyTenants(ManyTenants)})
	c, err := Load(filepath.Join(dir, "wcluster.toml"), Default())
	if err != nil {
		t.Fatal(err)
	}
	if c.Tenants[0].MinInstances != 0 || c.Tenants[1].MinInstances != 3 {
		t.Errorf("instances_min %d and %d (set to 3), want 0 and 3 with %d tenants", c.Tenants[0].MinInstances, c.Tenants[1].MinInstances, n)
	}
	dcs, err := c.Masters()
	if err != nil {
		t.Fatal(err)
	}
	wc := dcs[0].WorkerConfig
	if len(wc) > 2*len(shared)+n*1024 {
		t.Errorf("worker configuration of %d bytes for %d tenants sharing a %d-byte handler: it holds copies", len(wc), n, len(shared))
	}
	var g Group
	if err := json.Unmarshal(wc, &g); err != nil {
		t.Fatal(err)
	}
	if len(g.Modules) != 2 {
		t.Errorf("%d modules in the worker configuration, want 2", len(g.Modules))
	}
	for _, i := range []int{0, n / 2, n - 1} {
		want := shared
		if i == n-1 {
			want = wasmMagic + "OTHER"
		}
		if wasm, err := g.Wasm(&g.Tenants[i]); err != nil || string(wasm) != want {
			t.Errorf("tenant %d: %d bytes, %v", i, len(wasm), err)
		}
	}

	few, err := Load(filepath.Join(dir, "few.toml"), Default())
	if err != nil {
		t.Fatal(err)
	}
	if few.Tenants[0].MinInstances != 2 {
		t.Errorf("instances_min %d with %d tenants, want the default 2", few.Tenants[0].MinInstances, ManyTenants)
	}
}
