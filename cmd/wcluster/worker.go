package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/wcluster/wcluster/dispatch"
	"github.com/wcluster/wcluster/host"
	"github.com/wcluster/wcluster/internal/stats"
)

// workerConfig is what the master passes each worker through dispatch
// (opaque to it): one handler (serve HANDLER.wasm) or a group of tenants
// (serve --config FILE).
type workerConfig struct {
	Handler *handlerConfig `json:"handler,omitempty"`
	Group   *groupPlan     `json:"group,omitempty"`
}

// sandbox is the worker's sandbox plan and its log settings.
func (wc *workerConfig) sandbox() (sandboxPlan, string, string) {
	if wc.Handler != nil {
		return wc.Handler.Sandbox, wc.Handler.LogLevel, wc.Handler.LogFormat
	}
	return wc.Group.Sandbox, wc.Group.LogLevel, wc.Group.LogFormat
}

// runWorker is the worker process: it builds the handler(s) from the config
// the master passed and serves what dispatch hands it.
func runWorker(stderr io.Writer) int {
	// The terminal's signals reach the whole process group; only the master
	// decides when workers stop (it closes their channel).
	signal.Ignore(syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGQUIT, syscall.SIGTTIN, syscall.SIGTTOU)
	bootLog := newLogger(stderr, slog.LevelInfo, "text")
	w, err := dispatch.NewWorker(bootLog)
	if err != nil {
		bootLog.Error("worker cannot start", "err", err)
		return 1
	}
	var wc workerConfig
	if err := json.Unmarshal(w.Config(), &wc); err != nil || (wc.Handler == nil) == (wc.Group == nil) {
		w.Fatal(fmt.Errorf("bad worker config from the master: %v", err))
		return 1
	}
	// The sandbox goes on before the handlers are built: a guest's start
	// functions already run under it.
	plan, level, format := wc.sandbox()
	if err := applySandbox(plan, w, workerLog(stderr, level, format, w.ID())); err != nil {
		w.Fatal(err)
		return 1
	}
	ctx := context.Background()
	var h handler
	var log *slog.Logger
	if wc.Handler != nil {
		h, log, err = singleHandler(ctx, wc.Handler, w.ID(), stderr)
	} else {
		h, log, err = groupHandler(ctx, wc.Group, w.ID(), stderr)
	}
	if err != nil {
		w.Fatal(err)
		return 1
	}
	defer h.Close(ctx)
	if err := w.Serve(ctx, h, h.stats); err != nil {
		log.Warn("worker stopped", "err", err)
		return 1
	}
	return 0
}

// handler is what a worker serves: dispatch's Handler, plus counters for
// the heartbeat and a Close.
type handler interface {
	dispatch.Handler
	dispatch.RequestCounter
	stats() *stats.Worker
	Close(context.Context) error
}

func workerLog(stderr io.Writer, level, format string, id int) *slog.Logger {
	l, _ := parseLevel(level)
	return newLogger(stderr, l, format).With("proc", "worker", "worker", id, "pid", os.Getpid())
}

func singleHandler(ctx context.Context, hc *handlerConfig, id int, stderr io.Writer) (handler, *slog.Logger, error) {
	log := workerLog(stderr, hc.LogLevel, hc.LogFormat, id)
	wasm, name, err := hc.load()
	if err != nil {
		return nil, log, err
	}
	budget := host.NewBudget(hc.GuestMemoryBudget)
	o := hc.options(wasm, name, id, log)
	o.Budget, o.MemoryWait = budget, hc.MemoryWait
	h, err := host.New(ctx, o)
	if err != nil {
		return nil, log, err
	}
	if hc.TLSCert == "" {
		return single{h, name, budget}, log, nil
	}
	// TLS: the router terminates it in front of the one handler.
	cert, err := hc.keyPair(hc.TLSCert, hc.TLSKey)
	if err != nil {
		h.Close(ctx)
		return nil, log, fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	t := &host.Tenant{Name: name, Handler: h, Cert: &cert}
	r, err := host.NewRouter([]host.Listener{{Tenants: []*host.Tenant{t}}}, host.RouterOptions{Logger: log})
	if err != nil {
		h.Close(ctx)
		return nil, log, err
	}
	return tenants{r, budget}, log, nil
}

func groupHandler(ctx context.Context, g *groupPlan, id int, stderr io.Writer) (handler, *slog.Logger, error) {
	log := workerLog(stderr, g.LogLevel, g.LogFormat, id).With("group", g.Name)
	// One budget for the worker, shared by every tenant's Handler.
	budget := host.NewBudget(g.MemoryBudget)
	r, err := g.newRouter(ctx, id, budget, log)
	if err != nil {
		return nil, log, err
	}
	return tenants{r, budget}, log, nil
}

// single serves every listener with one handler.
type single struct {
	h      *host.Handler
	name   string
	budget *host.Budget
}

func (s single) ServeConn(ctx context.Context, f *os.File, _ int) { s.h.ServeConn(ctx, f) }
func (s single) Drain()                                           { s.h.Drain() }
func (s single) Requests() uint64                                 { return s.h.Stats().Calls }
func (s single) Close(ctx context.Context) error                  { return s.h.Close(ctx) }
func (s single) stats() *stats.Worker                             { return singleStats(s.name, s.h, s.budget) }

// tenants serves a group's tenants through the host's router.
type tenants struct {
	r      *host.Router
	budget *host.Budget
}

func (t tenants) ServeConn(ctx context.Context, f *os.File, l int) { t.r.ServeConn(ctx, f, l) }
func (t tenants) Drain()                                           { t.r.Drain() }
func (t tenants) Requests() uint64                                 { return t.r.Requests() }
func (t tenants) Close(ctx context.Context) error                  { return t.r.Close(ctx) }
func (t tenants) stats() *stats.Worker                             { return routerStats(t.r, t.budget) }
