package main

// The master's wiring: a config.Config's modules compiled as the workers
// will, its groups turned into dispatch's, the banner, reloads.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/wcluster/wcluster/config"
	"github.com/wcluster/wcluster/dispatch"
	"github.com/wcluster/wcluster/host"
)

// serve checks cfg's workers' users, compiles its modules, and runs the
// master; load re-reads the configuration on a reload.
func serve(ctx context.Context, cfg *config.Config, load func() (*config.Config, error), out io.Writer, start time.Time) error {
	level, _ := config.ParseLevel(cfg.Cluster.LogLevel)
	log := newLogger(out, level, cfg.Cluster.LogFormat).With("proc", "master")
	users := make([]*config.User, len(cfg.Groups))
	for i, g := range cfg.Groups {
		wu, err := config.LookupUser(g.User)
		if err == nil {
			err = wu.CheckCanSwitch()
		}
		if err == nil {
			err = wu.CheckReuseport(cfg.Cluster.Sched, g.Addrs())
		}
		if err != nil {
			return errorIn(cfg, g.Name, err)
		}
		users[i] = wu
	}
	// Compile once here, as the workers will: a bad module stops us before
	// any worker starts, and the workers find the cache warm.
	cached := cacheEntries(cfg.Cluster.CacheDir)
	infos, err := prepare(ctx, cfg, log)
	if err != nil {
		return err
	}
	cache := cacheState(cfg.Cluster.CacheDir, cached)
	groups, err := groupConfigs(cfg)
	if err != nil {
		return err
	}
	for i := range groups {
		groups[i].Logger = log
	}
	var mu sync.Mutex // serialises reloads
	current := cfg
	return runMaster(ctx, masterPlan{
		groups: groups, log: log, out: out, control: cfg.Cluster.Control, admin: cfg.Cluster.Admin,
		bound: func() {
			for i, g := range cfg.Groups {
				l := log
				if g.Name != "" {
					l = log.With("group", g.Name)
				}
				config.WarnRootWorkers(l, users[i])
			}
		},
		reload: func(ctx context.Context, cl *dispatch.Cluster) error {
			mu.Lock()
			defer mu.Unlock()
			next, err := reload(ctx, cl, current, load, log)
			if err == nil {
				current = next
			}
			return err
		},
		banner: func(cl *dispatch.Cluster) string { return banner(cfg, cl, infos[0], cache, start) },
	})
}

// errorIn names where err is: the file and group, or for one handler the flag.
func errorIn(cfg *config.Config, group string, err error) error {
	if cfg.Path == "" {
		return fmt.Errorf("--%w", err)
	}
	return fmt.Errorf("%s: group %q: %w", cfg.Path, group, err)
}

func banner(cfg *config.Config, cl *dispatch.Cluster, info host.Info, cache string, start time.Time) string {
	since := time.Since(start).Round(time.Millisecond)
	if cfg.Path == "" {
		g := cfg.Groups[0]
		return fmt.Sprintf("serving %s on %s (policy %s, %d workers, %s, compilation cache %s, %s) in %v",
			cfg.Tenants[0].Name, cl.Groups()[0].Addr(), cfg.Cluster.Sched, g.Workers, describe(info), cache, g.BudgetText, since)
	}
	var names, budgets []string
	workers := 0
	for _, t := range cfg.Tenants {
		names = append(names, t.Name)
	}
	for _, g := range cfg.Groups {
		workers += g.Workers
		if len(cfg.Groups) == 1 {
			budgets = append(budgets, g.BudgetText)
		} else {
			budgets = append(budgets, "group "+g.Name+" "+g.BudgetText)
		}
	}
	return fmt.Sprintf("serving %d tenants (%s) from %s on %s (policy %s, %d workers in %d groups, %s) in %v",
		len(cfg.Tenants), strings.Join(names, ", "), cfg.Path, cl.Groups()[0].Addr(), cfg.Cluster.Sched,
		workers, len(cfg.Groups), strings.Join(budgets, "; "), since)
}

// options are the host.Options of tenant t in a worker.
func options(t *config.Tenant, wasm []byte, cacheDir string, workerID int, log *slog.Logger) host.Options {
	l := &t.Limits
	return host.Options{
		Wasm: wasm, Name: t.Name, CacheDir: cacheDir, WorkerID: workerID,
		MemoryLimit: l.MemoryLimit, Timeout: l.Timeout,
		ReadTimeout: l.ReadTimeout, WriteTimeout: l.WriteTimeout, IdleTimeout: l.IdleTimeout,
		FirstByteTimeout: l.FirstByteTimeout, FirstByteLimit: l.FirstByteLimit,
		PartialTimeout: l.PartialTimeout, DrainGrace: l.DrainGrace,
		Instances: l.Instances, MinInstances: l.MinInstances, MaxReuse: l.MaxReuse, Fresh: l.Fresh,
		MemoryBudget: l.MemoryBudget, Logger: log.With("tenant", t.Name), Upstream: l.Upstream, GuestConfig: l.GuestConfig,
		Env: t.Env, Config: t.Config, Mount: t.Mount,
	}
}

// prepare compiles every tenant's module as the workers will (filling the
// compilation cache) and checks it can be served; the error names each
// tenant whose module cannot, one per line. The master calls it before
// starting workers, and on reload before replacing them.
func prepare(ctx context.Context, c *config.Config, log *slog.Logger) ([]host.Info, error) {
	var errs []string
	var infos []host.Info
	for i := range c.Tenants {
		t := &c.Tenants[i]
		wasm, err := t.ReadWasm()
		if err != nil {
			switch {
			case c.Path != "" && errors.Is(err, os.ErrNotExist):
				errs = append(errs, fmt.Sprintf("%s:%d: tenant %q: handler %s", c.Path, t.HandlerLine, t.Name, config.HandlerError(t.Handler, err)))
			case c.Path != "":
				errs = append(errs, fmt.Sprintf("%s:%d: tenant %q: handler %s", c.Path, t.HandlerLine, t.Name, config.HandlerError(t.Handler, err)))
			case errors.Is(err, os.ErrNotExist):
				errs = append(errs, fmt.Sprintf("%s: no such file: pass the path of a .wasm handler (or none for the default)", t.Handler))
			default:
				errs = append(errs, config.HandlerError(t.Handler, err))
			}
			continue
		}
		info, err := host.Prepare(ctx, options(t, wasm, c.Cluster.CacheDir, 0, log))
		switch {
		case err != nil && c.Path == "":
			errs = append(errs, fmt.Sprintf("%s: %v", t.Name, err))
		case err != nil:
			errs = append(errs, fmt.Sprintf("%s:%d: tenant %q: handler %s: %v", c.Path, t.HandlerLine, t.Name, t.Handler, err))
		}
		infos = append(infos, info)
	}
	if len(errs) > 0 {
		return nil, errors.New(strings.Join(errs, "\n"))
	}
	return infos, nil
}

// groupConfigs are the masters' configs of every group, each carrying its
// plan to the workers: its own tenants only, with the bytes of their
// handlers, certificates and keys.
func groupConfigs(fc *config.Config) ([]dispatch.Config, error) {
	var out []dispatch.Config
	cl := fc.Cluster
	for i := range fc.Groups {
		g := fc.Groups[i] // a copy: the files read stay out of fc
		wu, err := config.LookupUser(g.User)
		if err != nil {
			return nil, errorIn(fc, g.Name, err)
		}
		if err := wu.ShareCache(g.CacheDir); err != nil {
			return nil, err
		}
		g.Tenants = slices.Clone(g.Tenants)
		for j := range g.Tenants {
			t := &g.Tenants[j]
			where := fmt.Sprintf("%s: tenant %q", fc.Path, t.Name)
			if fc.Path == "" {
				where = t.Name
			}
			if err := wu.CheckMount(t.Mount); err != nil {
				return nil, fmt.Errorf("%s: %w", where, err)
			}
			wasm, err := t.ReadWasm()
			if err != nil {
				return nil, fmt.Errorf("%s: handler %s", where, config.HandlerError(t.Handler, err))
			}
			if t.Files, err = config.ReadFiles(config.HandlerBytes(t.Handler, wasm), t.TLSCert, t.TLSKey); err != nil {
				return nil, fmt.Errorf("%s: %w", where, err)
			}
		}
		wc, _ := json.Marshal(&g)
		out = append(out, dispatch.Config{
			Name: g.Name, Listen: g.Addrs(), Workers: g.Workers, Sched: cl.Sched,
			Backlog: cl.Backlog, MaxConns: cl.MaxConns, QueueSize: cl.QueueSize, QueueTimeout: cl.QueueTimeout,
			ShutdownTimeout: cl.ShutdownTimeout, WorkerTimeout: cl.WorkerTimeout,
			MaxRequests: cl.MaxRequests, MaxMemory: cl.MaxWorkerMemory,
			WorkerConfig: wc, WorkerEnv: g.WorkerEnv, Credential: wu.Credential(),
		})
	}
	return out, nil
}

// reload re-reads the configuration and, if it is valid, its modules
// compile and its groups and listeners are unchanged, replaces every
// group's workers with ones serving it. Otherwise the old workers keep
// serving.
func reload(ctx context.Context, cl *dispatch.Cluster, current *config.Config, load func() (*config.Config, error), log *slog.Logger) (*config.Config, error) {
	if current.Path != "" {
		log.Info("reloading", "config", current.Path)
	} else {
		log.Info("reloading", "handler", current.Tenants[0].Handler)
	}
	next, err := load()
	if err != nil {
		return nil, err
	}
	if err := sameShape(current, next); err != nil {
		return nil, err
	}
	if _, err := prepare(ctx, next, slog.New(slog.DiscardHandler)); err != nil {
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
func sameShape(a, b *config.Config) error {
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

// cacheState says, for the banner, whether the compilation cache already
// held the module (hit) or compiling it added entries (miss).
func cacheState(dir string, before int) string {
	if dir == "" {
		return "off"
	}
	if cacheEntries(dir) == before && before > 0 {
		return "hit"
	}
	return "miss"
}

// cacheEntries counts the files under dir (wazero writes one per module).
func cacheEntries(dir string) int {
	n := 0
	if dir != "" {
		filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				n++
			}
			return nil
		})
	}
	return n
}

func describe(info host.Info) string {
	d := info.Kind.String()
	if info.Kind == host.KindABI {
		d = fmt.Sprintf("wcluster ABI v%d", info.ABIVersion)
	}
	if info.SpeaksFirst {
		d += ", speaks first"
	}
	return d
}

func newLogger(w io.Writer, level slog.Level, format string) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
