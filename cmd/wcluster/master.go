package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/wcluster/wcluster/admin"
	"github.com/wcluster/wcluster/dispatch"
)

// masterPlan is what runMaster needs, whether from flags or a config file.
type masterPlan struct {
	groups         []dispatch.Config
	log            *slog.Logger
	out            io.Writer
	control, admin string
	reload         func(context.Context, *dispatch.Cluster) error
	banner         func(*dispatch.Cluster) string
	// bound, if set, runs once the listeners are bound: warnings said
	// there never precede a refusal to start, which stays one line.
	bound func()
}

// runMaster binds every listener, serves the control socket and the admin
// endpoint if asked, and runs the workers until a stop.
func runMaster(parent context.Context, p masterPlan) error {
	cl, err := dispatch.NewCluster(p.log, p.groups...)
	if err != nil {
		return err
	}
	if p.bound != nil {
		p.bound()
	}
	doReload := func(ctx context.Context) error { return p.reload(ctx, cl) }

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
	handleSignals(ctx, &wg, cl, doReload, p.log)
	if p.control != "" {
		wait, err := cl.ServeControl(ctx, p.control, doReload)
		if err != nil {
			return err
		}
		waits = append(waits, wait)
	}
	if p.admin != "" {
		bound, wait, err := admin.Serve(ctx, p.admin, cl)
		if err != nil {
			return err
		}
		waits = append(waits, wait)
		p.log.Info("admin endpoint: /metrics /healthz /readyz", "addr", bound)
	}
	err = cl.Run(ctx, func() { fmt.Fprintf(p.out, "wcluster: %s\n", p.banner(cl)) })
	if errors.Is(err, dispatch.ErrMasterClosed) {
		p.log.Info("stopped")
		return nil
	}
	return err
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
