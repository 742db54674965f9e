package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/wcluster/wcluster/config"
	"github.com/wcluster/wcluster/dispatch"
	"github.com/wcluster/wcluster/host"
	"github.com/wcluster/wcluster/internal/kvstore"
	"github.com/wcluster/wcluster/internal/tickets"
)

// runWorker is the worker process: it builds its group's tenants from the
// config.Group the master passed (through dispatch, opaque to it) and
// serves what dispatch hands it.
func runWorker(stderr io.Writer) int {
	// The terminal's signals reach the whole process group; only the master
	// decides when workers stop (it closes their channel).
	signal.Ignore(syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGQUIT, syscall.SIGTTIN, syscall.SIGTTOU)
	bootLog := config.NewLogger(stderr, slog.LevelInfo, "text")
	w, err := dispatch.NewWorker(bootLog)
	if err != nil {
		bootLog.Error("worker cannot start", "err", err)
		return 1
	}
	var g config.Group
	if err := json.Unmarshal(w.Config(), &g); err != nil || len(g.Tenants) == 0 {
		w.Fatal(fmt.Errorf("bad worker config from the master: %v", err))
		return 1
	}
	level, _ := config.ParseLevel(g.LogLevel)
	log := config.NewLogger(stderr, level, g.LogFormat).With("proc", "worker", "worker", w.ID(), "pid", os.Getpid())
	// The tenants serving one module share its compiled code; the
	// worker's runtimes live as long as it does. Made before the sandbox:
	// it opens what the sandbox puts out of reach (host.NewModules).
	modules := host.NewModules()
	// The sandbox goes on before the handlers are built: a guest's start
	// functions already run under it.
	if err := g.Sandbox.Apply(w.BindPorts(), log); err != nil {
		w.Fatal(err)
		return 1
	}
	if g.Name != "" {
		log = log.With("group", g.Name)
	}
	ctx := context.Background()
	// One budget for the worker, shared by every tenant's Handler.
	budget := host.NewBudget(g.MemoryBudget)
	keys, err := tickets.Decode(w.Secrets())
	if err != nil {
		w.Fatal(err)
		return 1
	}
	r, err := newRouter(ctx, &g, w.ID(), w.HandedOff(), modules, budget, keys, log)
	if err != nil {
		w.Fatal(err)
		return 1
	}
	defer r.Close(ctx)
	w.OnSecrets(func(b []byte) {
		keys, err := tickets.Decode(b)
		if err != nil {
			log.Warn("new TLS ticket keys unusable; the ones before stay", "err", err)
			return
		}
		r.SetTicketKeys(keys.Tenants)
	})
	w.OnChallenges(func(b []byte) {
		c, err := acmeChallenges(b)
		if err != nil {
			log.Warn("ACME challenges unusable; the CA's validation will fail and be retried", "err", err)
			return
		}
		r.SetChallenges(c)
	})
	reports := &tenantReports{r: r, budget: budget}
	if err := w.Serve(ctx, r, reports.next); err != nil {
		log.Warn("worker stopped", "err", err)
		return 1
	}
	return 0
}

// newRouter builds, in a worker, the Handler of each of the group's tenants
// and the Router over its listeners, from the handler, certificate and key
// bytes the master read (through the worker's configuration descriptor,
// never the environment). A listener with one plaintext default tenant is
// served by it directly, unrouted.
func newRouter(ctx context.Context, g *config.Group, workerID int, handedOff bool, modules *host.Modules, budget *host.Budget, keys tickets.Keys, log *slog.Logger) (*host.Router, error) {
	tenants := map[string]*host.Tenant{}
	var err error
	// One store for the worker, opened on first use, each tenant in its
	// own namespace.
	var kv kvstore.Backend
	if g.KVRedis != "" {
		u := g.KVRedis
		kv = kvstore.NewLazy(func() (kvstore.Backend, error) {
			r, err := kvstore.OpenRedis(u)
			if err != nil {
				return nil, err
			}
			return r, nil
		})
	} else if g.KVDir != "" {
		dir := g.KVDir
		kv = kvstore.NewLazy(func() (kvstore.Backend, error) {
			s, err := kvstore.OpenSQLite(dir)
			if err != nil {
				return nil, err // not a nil *SQLite in an interface
			}
			return s, nil
		})
	}
	defer func() { // on an error, close what was built
		if err == nil {
			return
		}
		for _, t := range tenants {
			if t.Handler != nil {
				t.Handler.Close(ctx)
			}
		}
		modules.Close(ctx)
	}()
	for i := range g.Tenants {
		tp := &g.Tenants[i]
		var wasm []byte
		if wasm, err = g.Wasm(tp); err != nil {
			return nil, fmt.Errorf("tenant %q: handler %s", tp.Name, config.HandlerError(tp.Handler, err))
		}
		t := &host.Tenant{Name: tp.Name, Hosts: tp.Hosts, MaxConns: tp.MaxConns, TicketKeys: keys.Tenants[tp.Name]}
		if tp.HasTLS() {
			var cert tls.Certificate
			if cert, err = tp.KeyPair(); err != nil {
				return nil, fmt.Errorf("tenant %q: tls: %w", tp.Name, err)
			}
			t.Cert = &cert
			if t.MoreCerts, err = tp.ExtraKeyPairs(); err != nil {
				return nil, fmt.Errorf("tenant %q: tls: %w", tp.Name, err)
			}
		}
		o := tp.Options(wasm, g.CacheDir, workerID, log)
		o.Budget, o.MemoryWait, o.Modules, o.HandedOff = budget, g.MemoryWait, modules, handedOff
		if kv != nil {
			o.KV = &kvstore.Tenant{Backend: kv, NS: tp.Name, Limits: kvstore.Limits{MaxValue: int(tp.KVMaxValue), Quota: int64(tp.KVQuota)}}
		}
		tenants[tp.Name] = t
		if t.Handler, err = host.New(ctx, o); err != nil {
			return nil, fmt.Errorf("tenant %q: %w", tp.Name, err)
		}
	}
	ls := make([]host.Listener, len(g.Listeners))
	for i, l := range g.Listeners {
		for _, name := range l.Tenants {
			ls[i].Tenants = append(ls[i].Tenants, tenants[name])
		}
	}
	var r *host.Router
	r, err = host.NewRouter(ls, host.RouterOptions{Logger: log, ForeignHosts: g.ForeignHosts, ACME: g.ACME})
	return r, err
}
