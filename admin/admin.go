// Package admin owns the master's HTTP surface for operators: Prometheus
// metrics built from the cluster's own counters (the same ones `wcluster
// status` shows, read at scrape time, so the two always agree), /healthz and
// /readyz.
package admin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wcluster/wcluster/dispatch"
)

// Source is what the admin server reads: the master's cluster.
type Source interface {
	Status() dispatch.ClusterStatus
	Ready() bool
}

// Serve listens on addr and serves /metrics, /healthz and /readyz until ctx
// ends. It returns once listening (a port in use is an error here) with the
// bound address; wait blocks until the server has stopped. The server's
// own errors go to log; running out of descriptors pauses its accepts
// (dispatch.PacedListener).
func Serve(ctx context.Context, addr string, src Source, log *slog.Logger) (bound string, wait func(), err error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("--admin %s: %w", addr, err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		newCollector(src),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !src.Ready() {
			http.Error(w, "not ready: workers starting, or draining", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	log = log.With("component", "admin")
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(dispatch.PacedListener(ctx, l, log)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			// (net/http retries what it deems temporary: out of descriptors
			// included.) The rest of the master serves on.
			log.Error("admin endpoint stopped: /metrics, /healthz and /readyz are gone until a restart", "addr", l.Addr().String(), "err", err)
		}
	}()
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		select {
		case <-ctx.Done():
		case <-done:
		}
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		<-done
	}()
	return l.Addr().String(), func() { <-stopped }, nil
}
