package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wcluster/wcluster/internal/testfiles"
)

// TestGuestBudgetConfig: [cluster] sets every group's budget per worker, a
// group's own overrides it, tenants of a group must agree, a tenant's own
// budget reaches its limits; "auto" shares the default over every worker.
func TestGuestBudgetConfig(t *testing.T) {
	dir := testfiles.Dir(t, map[string]string{"h.wasm": wasmMagic})
	load := func(src string) (*Config, error) {
		p := filepath.Join(dir, "c.toml")
		os.WriteFile(p, []byte(src), 0o644)
		return load(p)
	}
	c, err := load(`[cluster]
workers = 2
guest_memory_budget = "512MiB"
queue_timeout = "3s"
[[tenant]]
name = "a"
handler = "h.wasm"
listen = [":1"]
guest_memory_budget = "64MiB"
[[tenant]]
name = "b"
handler = "h.wasm"
listen = [":2"]
group = "g"
group_memory_budget = "1GiB"
`)
	if err != nil {
		t.Fatal(err)
	}
	if g := c.Groups[0]; g.MemoryBudget != 512<<20 || g.MemoryWait.Seconds() != 3 || g.Tenants[0].MemoryBudget != 64<<20 {
		t.Errorf("group default: budget %d, wait %v, tenant budget %d", g.MemoryBudget, g.MemoryWait, g.Tenants[0].MemoryBudget)
	}
	if g := c.Groups[1]; g.MemoryBudget != 1<<30 {
		t.Errorf("group g: budget %d, want its own 1GiB", g.MemoryBudget)
	}

	c, err = load("[cluster]\nworkers = 3\n[[tenant]]\nname = \"a\"\nhandler = \"h.wasm\"\nlisten = [\":1\"]\n" +
		"[[tenant]]\nname = \"b\"\nhandler = \"h.wasm\"\nlisten = [\":2\"]\ngroup = \"g\"\nworkers = 1\n")
	if err != nil {
		t.Fatal(err)
	}
	want := defaultGuestBudget(4)
	for _, g := range c.Groups {
		if g.MemoryBudget != want.PerWorker || !strings.Contains(g.BudgetText, "over 4 workers") {
			t.Errorf("group %s: default %d (%s), want %d shared over the 4 workers of both groups", g.Name, g.MemoryBudget, g.BudgetText, want.PerWorker)
		}
	}

	c, err = load("[cluster]\nguest_memory_budget = 0\n[[tenant]]\nname = \"a\"\nhandler = \"h.wasm\"\nlisten = [\":1\"]\n")
	if err != nil || c.Groups[0].MemoryBudget != 0 {
		t.Errorf("guest_memory_budget = 0: %v, budget %d; want none", err, c.Groups[0].MemoryBudget)
	}

	for _, bad := range []struct{ src, want string }{
		{"[cluster]\nguest_memory_budget = \"lots\"\n[[tenant]]\nname = \"a\"\nhandler = \"h.wasm\"\nlisten = [\":1\"]\n",
			`:2: [cluster]: guest_memory_budget: size "lots"`},
		{"[[tenant]]\nname = \"a\"\nhandler = \"h.wasm\"\nlisten = [\":1\"]\ngroup_memory_budget = \"1GiB\"\n" +
			"[[tenant]]\nname = \"b\"\nhandler = \"h.wasm\"\nlisten = [\":2\"]\ngroup_memory_budget = \"2GiB\"\n",
			`:10: tenant "b": group_memory_budget = "2GiB", but tenant "a" of the same group "default" says "1GiB"`},
		{"[[tenant]]\nname = \"a\"\nhandler = \"h.wasm\"\nlisten = [\":1\"]\nguest_memory_budget = \"4KiB\"\n",
			`:5: tenant "a": guest_memory_budget = 4096 bytes is too small`},
	} {
		if _, err := load(bad.src); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("error %v, want one containing %q", err, bad.want)
		}
	}
}

// TestDefaultGuestBudget: the default is a fifth of memory (or half a
// cgroup limit) over the workers, never below the floor.
func TestDefaultGuestBudget(t *testing.T) {
	phys := physicalMemory()
	if phys == 0 {
		t.Fatal("no MemTotal in /proc/meminfo")
	}
	total := phys / physicalShare
	if cg := cgroupMemoryMax(); cg > 0 {
		total = min(total, cg/cgroupShare)
	}
	for _, w := range []int{1, 2, 8} {
		b := defaultGuestBudget(w)
		if want := max(total/uint64(w), minWorkerBudget); b.PerWorker != want {
			t.Errorf("%d workers: %d per worker, want %d", w, b.PerWorker, want)
		}
		if !strings.HasPrefix(b.String(), "guest memory budget ") || !strings.Contains(b.String(), "(auto: ") {
			t.Errorf("%d workers: %q does not say where the default comes from", w, b)
		}
	}
	if b, err := ParseGuestBudget("512MiB", 2); err != nil || b.PerWorker != 512<<20 || b.String() != "guest memory budget 512MiB per worker" {
		t.Errorf("512MiB: %+v %v", b, err)
	}
	if b, err := ParseGuestBudget("0", 2); err != nil || b.PerWorker != 0 {
		t.Errorf("0: %+v %v", b, err)
	}
	if _, err := ParseGuestBudget("12", 2); err == nil {
		t.Error("12 bytes accepted")
	}
}
