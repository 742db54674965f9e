package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wcluster/wcluster/config"
	"github.com/wcluster/wcluster/guests/embedded"
	"github.com/wcluster/wcluster/host"
	"github.com/wcluster/wcluster/internal/testfiles"
	"github.com/wcluster/wcluster/internal/tickets"
)

// TestManyTenantsWorker: a worker of 100 tenants sharing one module builds
// them without instances (but for the two that ask for one), and its
// heartbeat reports only the tenants whose figures changed, the sums
// covering all.
func TestManyTenantsWorker(t *testing.T) {
	var b strings.Builder
	fmt.Fprintf(&b, "[cluster]\ncache_dir = %q\n", filepath.Join(os.TempDir(), "wcluster-cmd-test-cache"))
	for i := range 100 {
		fmt.Fprintf(&b, "[[tenant]]\nname = \"t%d\"\nhandler = \"hello.wasm\"\nlisten = [\"127.0.0.1:0\"]\nhosts = [\"t%d.test\"]\n", i, i)
		if i == 7 || i == 42 {
			b.WriteString("instances_min = 1\n")
		}
	}
	dir := testfiles.Dir(t, map[string]string{"hello.wasm": string(embedded.Hello), "c.toml": b.String()})
	c, err := config.Load(filepath.Join(dir, "c.toml"), config.Default())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
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
	reports := &tenantReports{r: r, budget: host.NewBudget(0)}
	st := reports.next()
	_, t7 := st.Tenants["t7"]
	_, t42 := st.Tenants["t42"]
	if !st.Partial || len(st.Tenants) != 2 || !t7 || !t42 || st.InstancesCreated != 2 {
		t.Errorf("first report: partial %v, %d tenants, %d instances: want t7 and t42 only, with one instance each", st.Partial, len(st.Tenants), st.InstancesCreated)
	}
	if st := reports.next(); len(st.Tenants) != 0 || st.InstancesCreated != 2 {
		t.Errorf("second report: %d tenants, %d instances in the sums: want none changed, the sums whole", len(st.Tenants), st.InstancesCreated)
	}
}
