package main

// The master's wiring: a config.Config's modules compiled as the workers
// will, its groups started by dispatch, the control socket, the admin
// endpoint, signals and reloads.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/wcluster/wcluster/admin"
	"github.com/wcluster/wcluster/config"
	"github.com/wcluster/wcluster/dispatch"
	"github.com/wcluster/wcluster/host"
	"github.com/wcluster/wcluster/internal/acme"
	"github.com/wcluster/wcluster/internal/tickets"
	"github.com/wcluster/wcluster/internal/watch"
)

// watching is serve --watch's: whether to, and the build to run first.
type watching struct {
	on             bool
	build, sources string
}

// serve checks cfg's workers' users, compiles its modules, binds every
// listener, serves the control socket and the admin endpoint if asked, and
// runs the workers until a stop; load re-reads the configuration on a
// reload.
func serve(parent context.Context, cfg *config.Config, load func() (*config.Config, error), w watching, out io.Writer, start time.Time) error {
	level, _ := config.ParseLevel(cfg.Cluster.LogLevel)
	log := config.NewLogger(out, level, cfg.Cluster.LogFormat).With("proc", "master")
	users, err := cfg.Users()
	if err != nil {
		return err
	}
	// Compile once here, as the workers will: a bad module stops us before
	// any worker starts, and the workers find the cache warm.
	cached := config.CacheEntries(cfg.Cluster.CacheDir)
	infos, err := prepare(parent, cfg, log, out)
	if err != nil {
		return err
	}
	cache := config.CacheState(cfg.Cluster.CacheDir, cached)
	// ACME tenants start with their stored certificates (or self-signed
	// ones until the CA's arrive); the CA is asked once workers serve, as
	// they answer its challenges.
	var cl *dispatch.Cluster
	mgr := acme.New(log, func(b []byte) func(context.Context) error { return giveChallenges(cl, b) })
	defer mgr.Close()
	if err := useACME(mgr, cfg); err != nil {
		return err
	}
	groups, err := cfg.Masters()
	if err != nil {
		return err
	}
	cfg.DeferAccept(groups, infos)
	workerConfigs := map[string][]byte{} // each group's latest, for renewals
	for i := range groups {
		groups[i].Logger = log
		workerConfigs[groups[i].Name] = groups[i].WorkerConfig
	}
	cl, err = dispatch.NewCluster(log, groups...)
	if err != nil {
		return err
	}
	cl.RecordConfig(configHash(groups))
	ring := tickets.NewRing()
	giveTicketKeys(cl, ring, cfg)
	// Said once bound: warnings never precede a refusal to start, which
	// stays one line.
	for i, g := range cfg.Groups {
		l := log
		if g.Name != "" {
			l = log.With("group", g.Name)
		}
		config.WarnRootWorkers(l, users[i])
		config.WarnKVDir(l, users[i], g.KVDir)
	}
	var mu sync.Mutex // serialises reloads
	current := cfg
	// Every reload's outcome is logged and counted here, whatever asked for
	// it (SIGHUP, the control socket).
	doReload := func(ctx context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		began := time.Now()
		next, dcs, err := reload(ctx, cl, ring, mgr, current, load, log)
		hash := configHash(dcs)
		cl.RecordReload(err, hash)
		if err != nil {
			log.Error("reload failed; the old workers keep serving", "err", err)
			return err
		}
		current = next
		workerConfigs = map[string][]byte{}
		for _, dc := range dcs {
			workerConfigs[dc.Name] = dc.WorkerConfig
		}
		log.Info("reloaded", "config_hash", hash, "took", time.Since(began))
		return nil
	}

	// Everything started here stops when ctx ends, right after Run returns.
	ctx, cancel := context.WithCancel(parent)
	var wg sync.WaitGroup
	var waits []func()
	defer func() {
		cancel()
		for _, wait := range waits {
			wait()
		}
		wg.Wait()
	}()
	handleSignals(ctx, &wg, cl, doReload, log, cfg.Cluster.LogFormat)
	wg.Add(1)
	go func() { // certificates obtained or renewed go to the workers
		defer wg.Done()
		var retry <-chan time.Time
		for {
			select {
			case <-ctx.Done():
				return
			case <-mgr.Changed():
			case <-retry:
			}
			mu.Lock()
			err := renewACME(ctx, cl, mgr, workerConfigs, log)
			mu.Unlock()
			retry = nil
			if err != nil {
				log.Error("acme: the new certificates could not be given to the workers; the old ones keep serving, retrying in 30s", "err", err)
				retry = time.After(30 * time.Second)
			}
		}
	}()
	if w.on {
		files := func() []string {
			mu.Lock()
			defer mu.Unlock()
			return current.Files()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := watch.Run(ctx, watch.Options{Files: files, Build: w.build, Sources: w.sources, Reload: doReload, Log: log})
			if err != nil {
				log.Error("not watching", "err", err)
			}
		}()
	}
	if every := cfg.Cluster.TicketRotation; every > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(every)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				ring.Rotate()
				mu.Lock()
				giveTicketKeys(cl, ring, current)
				mu.Unlock()
			}
		}()
	}
	if cfg.Cluster.Control != "" {
		wait, err := cl.ServeControl(ctx, cfg.Cluster.Control, doReload)
		if err != nil {
			return err
		}
		waits = append(waits, wait)
	}
	if cfg.Cluster.Admin != "" {
		bound, wait, err := admin.Serve(ctx, cfg.Cluster.Admin, cl, log)
		if err != nil {
			return err
		}
		waits = append(waits, wait)
		log.Info("admin endpoint: /metrics /healthz /readyz", "addr", bound)
	}
	err = cl.Run(ctx, func() {
		defer mgr.Start(ctx) // the CA's challenges need serving workers
		addr := cl.Groups()[0].Addr().String()
		banner, took := cfg.Banner(addr, infos[0], cache), time.Since(start)
		if cfg.Cluster.LogFormat != "json" {
			fmt.Fprintf(out, "wcluster: %s in %v\n", banner, took.Round(time.Millisecond))
			return
		}
		// A structured event where logs are JSON (the sentence stays in
		// "banner" for people).
		workers := 0
		for _, g := range cfg.Groups {
			workers += g.Workers
		}
		log.Info("serving", "banner", banner, "listen", addr, "tenants", len(cfg.Tenants), "groups", len(cfg.Groups),
			"workers", workers, "policy", string(cfg.Cluster.Sched), "version", cl.Status().Build.Version, "took", took)
	})
	if errors.Is(err, dispatch.ErrMasterClosed) {
		log.Info("stopped")
		return nil
	}
	return err
}

// prepare compiles every tenant's module as the workers will (filling the
// compilation cache) and checks it can be served; the error names each
// tenant whose module cannot, one per line. The master calls it before
// starting workers, and on reload before replacing them. Each distinct
// module is compiled once, and started once per set of what its start
// functions see or are limited by (startKey): tenants differing in their
// hosts, certificates or config values only share one check.
func prepare(ctx context.Context, c *config.Config, log *slog.Logger, progress ...io.Writer) ([]host.Info, error) {
	var errs []string
	var infos []host.Info
	modules := host.NewModules()
	defer modules.Close(ctx)
	handlers := config.HandlerFiles{}
	type checked struct {
		info host.Info
		err  error
	}
	done := map[startKey]checked{}
	for i := range c.Tenants {
		t := &c.Tenants[i]
		wasm, err := handlers.Read(t)
		if err != nil {
			errs = append(errs, c.ModuleError(t, err, false))
			continue
		}
		k := keyOf(t)
		r, ok := done[k]
		if !ok {
			o := t.Options(wasm, c.Cluster.CacheDir, 0, log)
			o.Modules = modules
			shown := func(error) {}
			if len(progress) > 0 {
				shown = compileProgress(progress[0], log, handlerName(t), len(wasm), c.Cluster.CacheDir)
			}
			r.info, r.err = host.Prepare(ctx, o)
			shown(r.err)
			done[k] = r
			for _, w := range r.info.Warnings {
				log.Warn(w, "tenant", t.Name)
			}
		}
		if r.err != nil {
			errs = append(errs, c.ModuleError(t, r.err, true))
		}
		infos = append(infos, r.info)
	}
	if len(errs) > 0 {
		return nil, errors.New(strings.Join(errs, "\n"))
	}
	return infos, nil
}

// handlerName names t's handler in progress lines.
func handlerName(t *config.Tenant) string {
	if t.Handler == "" {
		return "the embedded handler"
	}
	return filepath.Base(t.Handler)
}

// startKey is what a module's start depends on: the module (by file),
// the limits it starts within and what it sees (env, mount, an http-wasm
// guest's configuration and upstream).
type startKey struct {
	handler                   string
	memoryLimit, memoryBudget uint64
	timeout                   time.Duration
	env, mount                string
	upstream, guestConfig     string
}

func keyOf(t *config.Tenant) startKey {
	return startKey{handler: t.Handler, memoryLimit: t.MemoryLimit, memoryBudget: t.MemoryBudget, timeout: t.Timeout,
		env: strings.Join(t.Env, "\x00"), mount: t.Mount, upstream: t.Upstream, guestConfig: string(t.GuestConfig)}
}

// reload re-reads the configuration and, if it is valid and its modules
// compile, makes the cluster serve it (dispatch.Cluster.Apply). Otherwise
// the old workers keep serving. It returns the new configuration and its
// groups' dispatch configurations.
func reload(ctx context.Context, cl *dispatch.Cluster, ring *tickets.Ring, mgr *acme.Manager, current *config.Config, load func() (*config.Config, error), log *slog.Logger) (*config.Config, []dispatch.Config, error) {
	if current.Path != "" {
		log.Info("reloading", "config", current.Path)
	} else {
		log.Info("reloading", "handler", current.Tenants[0].Handler)
	}
	next, err := load()
	if err == nil {
		err = current.SameShape(next)
	}
	var infos []host.Info
	if err == nil {
		infos, err = prepare(ctx, next, slog.New(slog.DiscardHandler))
	}
	if err != nil {
		return nil, nil, err
	}
	// An ACME tenant kept as it was keeps its certificates; a new one
	// starts as at start, and is obtained once its workers serve.
	if err := useACME(mgr, next); err != nil {
		return nil, nil, err
	}
	undo := func() {
		if err := useACME(mgr, current); err != nil {
			log.Warn("acme: could not go back to the certificates before the reload", "err", err)
		}
	}
	dcs, err := next.Masters()
	if err != nil {
		undo()
		return nil, nil, err
	}
	next.DeferAccept(dcs, infos)
	// The new workers start with the keys of the tenants they serve; a
	// tenant kept keeps its keys, so its sessions resume across the reload.
	for i := range dcs {
		dcs[i].Logger = log
		dcs[i].Secrets = ticketKeys(ring, &next.Groups[i])
	}
	if err := cl.Apply(ctx, dcs); err != nil {
		undo()
		return nil, nil, err
	}
	ring.Forget(tlsTenants(next))
	mgr.Resume()
	cl.Rebalance() // the new configuration counted the file's workers, not the running ones
	// The file's worker counts compare with the file before, not with the
	// running count: a count the file did not change stays as scaled.
	for name, n := range current.WorkersChanged(next) {
		grp, err := cl.Group(name)
		if err == nil {
			err = cl.Scale(ctx, grp, n)
		}
		if err != nil {
			// The configuration is applied; only the count is not.
			log.Error("reloaded, but scaling to the file's worker count failed", "group", name, "workers", n, "err", err)
			continue
		}
		log.Info("scaled to the file's worker count", "group", name, "workers", n)
	}
	return next, dcs, nil
}

// configHash identifies what the workers of groups are given: every
// group's worker configuration (tenants, limits, handlers, certificates),
// hashed in group order; the first 16 hex digits of a SHA-256.
func configHash(groups []dispatch.Config) string {
	h := sha256.New()
	for _, g := range groups {
		fmt.Fprintf(h, "%s\x00%d\x00", g.Name, len(g.WorkerConfig))
		h.Write(g.WorkerConfig)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// giveTicketKeys gives each group's workers the session ticket keys of its
// TLS tenants (the same to every worker: a session resumes on any).
func giveTicketKeys(cl *dispatch.Cluster, ring *tickets.Ring, c *config.Config) {
	for i := range c.Groups {
		if keys := ticketKeys(ring, &c.Groups[i]); keys != nil {
			if grp, err := cl.Group(c.Groups[i].Name); err == nil {
				grp.SetSecrets(keys)
			}
		}
	}
}

// ticketKeys are the encoded ticket keys of g's TLS tenants (nil: none).
func ticketKeys(ring *tickets.Ring, g *config.Group) []byte {
	var names []string
	for _, t := range g.Tenants {
		if t.HasTLS() {
			names = append(names, t.Name)
		}
	}
	if len(names) == 0 {
		return nil
	}
	return ring.For(names).Encode()
}

// tlsTenants names c's tenants that serve TLS.
func tlsTenants(c *config.Config) []string {
	var names []string
	for _, t := range c.Tenants {
		if t.HasTLS() {
			names = append(names, t.Name)
		}
	}
	return names
}

// handleSignals gives the master nginx's and gunicorn's signals: TERM and
// INT stop gracefully, QUIT at once; HUP reloads; TTIN and TTOU add or
// remove a worker in every group; USR1 logs the status.
func handleSignals(ctx context.Context, wg *sync.WaitGroup, cl *dispatch.Cluster, reload func(context.Context) error, log *slog.Logger, format string) {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGQUIT, syscall.SIGHUP,
		syscall.SIGTTIN, syscall.SIGTTOU, syscall.SIGUSR1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer signal.Stop(sigs)
		for {
			var sig os.Signal
			select {
			case <-ctx.Done():
				return
			case sig = <-sigs:
			}
			switch sig {
			case syscall.SIGINT, syscall.SIGTERM:
				log.Info("stopping gracefully", "signal", sig.String())
				cl.Stop(false)
			case syscall.SIGQUIT:
				log.Warn("stopping now: workers are killed", "signal", sig.String())
				cl.Stop(true)
			case syscall.SIGHUP:
				reload(ctx) // logged by reload itself
			case syscall.SIGTTIN, syscall.SIGTTOU:
				// Every group grows or shrinks by one (`wcluster scale
				// --group` picks one).
				for _, m := range cl.Groups() {
					l := log
					if name := m.Name(); name != "" {
						l = log.With("group", name)
					}
					n := m.Workers() + 1
					if sig == syscall.SIGTTOU {
						n -= 2
					}
					if n < 1 {
						l.Warn("not scaling below one worker", "signal", sig.String())
						continue
					}
					if err := cl.Scale(ctx, m, n); err != nil {
						l.Error("scale failed", "to", n, "err", err)
					}
				}
			case syscall.SIGUSR1:
				logStatus(log, format, cl.Status())
			}
		}
	}()
}

// logStatus logs st: as a JSON object within the record where logs are
// JSON, as one JSON string otherwise.
func logStatus(log *slog.Logger, format string, st dispatch.ClusterStatus) {
	if format == "json" {
		log.Info("status", "cluster", st)
		return
	}
	b, _ := json.Marshal(st)
	log.Info("status", "cluster", string(b))
}
