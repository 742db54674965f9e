package main

// The master's wiring: a config.Config's modules compiled as the workers
// will, its groups started by dispatch, the control socket, the admin
// endpoint, signals and reloads.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/wcluster/wcluster/admin"
	"github.com/wcluster/wcluster/config"
	"github.com/wcluster/wcluster/dispatch"
	"github.com/wcluster/wcluster/host"
	"github.com/wcluster/wcluster/internal/tickets"
)

// serve checks cfg's workers' users, compiles its modules, binds every
// listener, serves the control socket and the admin endpoint if asked, and
// runs the workers until a stop; load re-reads the configuration on a
// reload.
func serve(parent context.Context, cfg *config.Config, load func() (*config.Config, error), out io.Writer, start time.Time) error {
	level, _ := config.ParseLevel(cfg.Cluster.LogLevel)
	log := config.NewLogger(out, level, cfg.Cluster.LogFormat).With("proc", "master")
	users, err := cfg.Users()
	if err != nil {
		return err
	}
	// Compile once here, as the workers will: a bad module stops us before
	// any worker starts, and the workers find the cache warm.
	cached := config.CacheEntries(cfg.Cluster.CacheDir)
	infos, err := prepare(parent, cfg, log)
	if err != nil {
		return err
	}
	cache := config.CacheState(cfg.Cluster.CacheDir, cached)
	groups, err := cfg.Masters()
	if err != nil {
		return err
	}
	for i := range groups {
		groups[i].Logger = log
	}
	cl, err := dispatch.NewCluster(log, groups...)
	if err != nil {
		return err
	}
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
	doReload := func(ctx context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		next, err := reload(ctx, cl, ring, current, load, log)
		if err == nil {
			current = next
		}
		return err
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
	handleSignals(ctx, &wg, cl, doReload, log)
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
		bound, wait, err := admin.Serve(ctx, cfg.Cluster.Admin, cl)
		if err != nil {
			return err
		}
		waits = append(waits, wait)
		log.Info("admin endpoint: /metrics /healthz /readyz", "addr", bound)
	}
	err = cl.Run(ctx, func() {
		fmt.Fprintf(out, "wcluster: %s in %v\n", cfg.Banner(cl.Groups()[0].Addr().String(), infos[0], cache),
			time.Since(start).Round(time.Millisecond))
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
func prepare(ctx context.Context, c *config.Config, log *slog.Logger) ([]host.Info, error) {
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
			r.info, r.err = host.Prepare(ctx, o)
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

// reload re-reads the configuration and, if it is valid, its modules
// compile and its groups and listeners are unchanged, replaces every
// group's workers with ones serving it. Otherwise the old workers keep
// serving.
func reload(ctx context.Context, cl *dispatch.Cluster, ring *tickets.Ring, current *config.Config, load func() (*config.Config, error), log *slog.Logger) (*config.Config, error) {
	if current.Path != "" {
		log.Info("reloading", "config", current.Path)
	} else {
		log.Info("reloading", "handler", current.Tenants[0].Handler)
	}
	next, err := load()
	if err == nil {
		err = current.SameShape(next)
	}
	if err == nil {
		_, err = prepare(ctx, next, slog.New(slog.DiscardHandler))
	}
	if err != nil {
		return nil, err
	}
	dcs, err := next.Masters()
	if err != nil {
		return nil, err
	}
	configs := map[string][]byte{}
	for _, dc := range dcs {
		configs[dc.Name] = dc.WorkerConfig
	}
	// The new workers start with the keys of the tenants they serve; a
	// tenant kept keeps its keys, so its sessions resume across the reload.
	giveTicketKeys(cl, ring, next)
	if err := cl.Reload(ctx, configs); err != nil {
		return nil, err
	}
	ring.Forget(tlsTenants(next))
	return next, nil
}

// giveTicketKeys gives each group's workers the session ticket keys of its
// TLS tenants (the same to every worker: a session resumes on any).
func giveTicketKeys(cl *dispatch.Cluster, ring *tickets.Ring, c *config.Config) {
	for i := range c.Groups {
		g := &c.Groups[i]
		var names []string
		for _, t := range g.Tenants {
			if t.TLSCert != "" {
				names = append(names, t.Name)
			}
		}
		if grp, err := cl.Group(g.Name); err == nil && len(names) > 0 {
			grp.SetSecrets(ring.For(names).Encode())
		}
	}
}

// tlsTenants names c's tenants that serve TLS.
func tlsTenants(c *config.Config) []string {
	var names []string
	for _, t := range c.Tenants {
		if t.TLSCert != "" {
			names = append(names, t.Name)
		}
	}
	return names
}

// handleSignals gives the master nginx's and gunicorn's signals: TERM and
// INT stop gracefully, QUIT at once; HUP reloads; TTIN and TTOU add or
// remove a worker (in the first group); USR1 logs the status.
func handleSignals(ctx context.Context, wg *sync.WaitGroup, cl *dispatch.Cluster, reload func(context.Context) error, log *slog.Logger) {
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
				if err := reload(ctx); err != nil {
					log.Error("reload failed; the old workers keep serving", "err", err)
				}
			case syscall.SIGTTIN, syscall.SIGTTOU:
				m := cl.Groups()[0]
				n := m.Workers() + 1
				if sig == syscall.SIGTTOU {
					n -= 2
				}
				if n < 1 {
					log.Warn("not scaling below one worker", "signal", sig.String())
					continue
				}
				if err := m.Scale(ctx, n); err != nil {
					log.Error("scale failed", "to", n, "err", err)
				}
			case syscall.SIGUSR1:
				b, _ := json.Marshal(cl.Status())
				log.Info("status", "status", string(b))
			}
		}
	}()
}
