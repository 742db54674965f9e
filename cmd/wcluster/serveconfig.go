package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/wcluster/wcluster/dispatch"
)

// serveConfig is `serve --config FILE`: every tenant of the file, in its
// worker groups. --control and --admin given on the command line win over
// the file's.
func serveConfig(c *cli.Context, path string, start time.Time) error {
	// The file governs everything else: a flag it would silently override
	// is an error, not a surprise.
	for _, f := range c.Command.Flags {
		name := f.Names()[0]
		if name == "sched" && os.Getenv("WCLUSTER_SCHED") != "" && !slices.Contains(os.Args, "--sched") {
			continue // from the environment, not the command line: the file wins
		}
		if c.IsSet(name) && name != "config" && name != "control" && name != "admin" {
			return fmt.Errorf("--%s does not apply with --config: set it in %s ([cluster] or the tenant; see docs/config.md)", name, path)
		}
	}
	fc, err := loadConfig(path)
	if err != nil {
		return err
	}
	level, _ := parseLevel(fc.Cluster.LogLevel)
	log := newLogger(c.App.ErrWriter, level, fc.Cluster.LogFormat).With("proc", "master")
	if err := fc.prepare(c.Context, log); err != nil {
		return err
	}
	users := make([]*workerUser, len(fc.Groups))
	for i, g := range fc.Groups {
		wu, err := lookupUser(g.User)
		if err == nil {
			err = wu.checkCanSwitch()
		}
		if err == nil {
			err = wu.checkReuseport(fc.Cluster.Sched, g.Addrs())
		}
		if err != nil {
			return fmt.Errorf("%s: group %q: %w", path, g.Name, err)
		}
		users[i] = wu
	}
	groups, err := groupConfigs(fc)
	if err != nil {
		return err
	}

	for i := range groups {
		groups[i].Logger = log
	}
	control, adminAddr := fc.Cluster.Control, fc.Cluster.Admin
	if c.IsSet("control") {
		control = c.String("control")
	}
	if c.IsSet("admin") {
		adminAddr = c.String("admin")
	}
	var mu sync.Mutex // serialises reloads of the file
	current := fc
	return runMaster(c.Context, masterPlan{
		groups: groups, log: log, out: c.App.ErrWriter, control: control, admin: adminAddr,
		bound: func() {
			for i, g := range fc.Groups {
				warnRootWorkers(log.With("group", g.Name), users[i])
			}
		},
		reload: func(ctx context.Context, cl *dispatch.Cluster) error {
			mu.Lock()
			defer mu.Unlock()
			next, err := reloadConfig(ctx, cl, current, path, log)
			if err != nil {
				return err
			}
			current = next
			return nil
		},
		banner: func(cl *dispatch.Cluster) string {
			var names []string
			workers := 0
			for _, t := range fc.Tenants {
				names = append(names, t.Name)
			}
			for _, g := range fc.Groups {
				workers += g.Workers
			}
			var budgets []string
			for _, g := range fc.Groups {
				if len(fc.Groups) == 1 {
					budgets = append(budgets, g.budgetWhy)
				} else {
					budgets = append(budgets, "group "+g.Name+" "+g.budgetWhy)
				}
			}
			return fmt.Sprintf("serving %d tenants (%s) from %s on %s (policy %s, %d workers in %d groups, %s) in %v",
				len(fc.Tenants), strings.Join(names, ", "), path, cl.Groups()[0].Addr(), fc.Cluster.Sched,
				workers, len(fc.Groups), strings.Join(budgets, "; "), time.Since(start).Round(time.Millisecond))
		},
	})
}

// groupConfigs are the masters' configs of every group, each carrying its
// plan to the workers: its own tenants only, with the bytes of their
// handlers, certificates and keys.
func groupConfigs(fc *fileConfig) ([]dispatch.Config, error) {
	var out []dispatch.Config
	for i := range fc.Groups {
		g := fc.Groups[i] // a copy: the files read stay out of fc
		wu, err := lookupUser(g.User)
		if err != nil {
			return nil, fmt.Errorf("%s: group %q: %w", fc.Path, g.Name, err)
		}
		if err := wu.shareCache(g.CacheDir); err != nil {
			return nil, err
		}
		g.Tenants = slices.Clone(g.Tenants)
		for j := range g.Tenants {
			t := &g.Tenants[j]
			if err := wu.checkMount(t.Mount); err != nil {
				return nil, fmt.Errorf("%s: tenant %q: %w", fc.Path, t.Name, err)
			}
			wasm, err := readHandler(t.Handler)
			if err != nil {
				return nil, fmt.Errorf("%s: tenant %q: handler %s", fc.Path, t.Name, handlerError(t.Handler, err))
			}
			if t.files, err = readFiles(wasm, t.TLSCert, t.TLSKey); err != nil {
				return nil, fmt.Errorf("%s: tenant %q: %w", fc.Path, t.Name, err)
			}
		}
		dc := fc.dispatchConfig(&g)
		dc.WorkerConfig, _ = json.Marshal(workerConfig{Group: &g})
		dc.WorkerEnv, dc.Credential = g.WorkerEnv, wu.credential()
		out = append(out, dc)
	}
	return out, nil
}

// reloadConfig re-reads the file and, if it is valid, its modules compile
// and its groups and listeners are unchanged, replaces every group's
// workers with ones serving it. Otherwise the old workers keep serving.
func reloadConfig(ctx context.Context, cl *dispatch.Cluster, current *fileConfig, path string, log interface {
	Info(string, ...any)
}) (*fileConfig, error) {
	log.Info("reloading", "config", path)
	next, err := loadConfig(path)
	if err != nil {
		return nil, err
	}
	if err := sameShape(current, next); err != nil {
		return nil, err
	}
	if err := next.prepare(ctx, slog.New(slog.DiscardHandler)); err != nil {
		return nil, err
	}
	dcs, err := groupConfigs(next)
	if err != nil {
		return nil, err
	}
	configs := map[string][]byte{}
	for _, dc := range dcs {
		configs[dc.Name] = dc.WorkerConfig
	}
	if err := cl.Reload(ctx, configs); err != nil {
		return nil, err
	}
	return next, nil
}

// sameShape refuses a reload that changes what the master binds or forks:
// groups, their listeners, their worker counts. Those need a restart (or
// `wcluster scale` for the counts); everything a worker builds (handlers,
// hosts, limits, env, config, mounts, certificates) reloads.
func sameShape(a, b *fileConfig) error {
	if len(a.Groups) != len(b.Groups) {
		return fmt.Errorf("%s: the worker groups changed (%d → %d): restart wcluster to apply that", b.Path, len(a.Groups), len(b.Groups))
	}
	for i := range a.Groups {
		ga, gb := &a.Groups[i], &b.Groups[i]
		if ga.Name != gb.Name || !slices.Equal(ga.Addrs(), gb.Addrs()) {
			return fmt.Errorf("%s: group %q's listeners changed (%v → %v): restart wcluster to apply that", b.Path, ga.Name, ga.Addrs(), gb.Addrs())
		}
		if ga.User != gb.User || !slices.Equal(ga.WorkerEnv, gb.WorkerEnv) {
			return fmt.Errorf("%s: group %q's worker user or worker_env changed: restart wcluster to apply that", b.Path, ga.Name)
		}
		if ga.Workers != gb.Workers {
			return fmt.Errorf("%s: group %q's workers changed (%d → %d): use `wcluster scale --group %s` or restart", b.Path, ga.Name, ga.Workers, gb.Workers, ga.Name)
		}
	}
	return nil
}
