package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/wcluster/wcluster/dispatch"
	"github.com/wcluster/wcluster/guests/embedded"
	"github.com/wcluster/wcluster/host"
)

// handlerConfig is what every worker needs to build its host.Handler; the
// master passes it through dispatch untouched.
type handlerConfig struct {
	Path         string        `json:"path,omitempty"` // "" means the embedded default
	CacheDir     string        `json:"cache_dir"`
	MemoryLimit  uint64        `json:"memory_limit"`
	Timeout      time.Duration `json:"timeout"`
	ReadTimeout  time.Duration `json:"read_timeout"`
	WriteTimeout time.Duration `json:"write_timeout"`
	IdleTimeout  time.Duration `json:"idle_timeout"`
	Instances    int           `json:"instances"`
	MinInstances int           `json:"min_instances"`
	MaxReuse     int           `json:"max_reuse"`
	Fresh        bool          `json:"fresh"`
	LogLevel     string        `json:"log_level"`
}

func (c *handlerConfig) load() (wasm []byte, name string, err error) {
	if c.Path == "" {
		return embedded.Hello, embedded.HelloName, nil
	}
	wasm, err = os.ReadFile(c.Path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, "", fmt.Errorf("%s: no such file: pass the path of a .wasm handler (or none for the default)", c.Path)
		}
		return nil, "", fmt.Errorf("%s: %w", c.Path, err)
	}
	return wasm, filepath.Base(c.Path), nil
}

func (c *handlerConfig) options(wasm []byte, name string, workerID int, log *slog.Logger) host.Options {
	return host.Options{
		Wasm: wasm, Name: name, CacheDir: c.CacheDir, WorkerID: workerID,
		MemoryLimit: c.MemoryLimit, Timeout: c.Timeout,
		ReadTimeout: c.ReadTimeout, WriteTimeout: c.WriteTimeout, IdleTimeout: c.IdleTimeout,
		Instances: c.Instances, MinInstances: c.MinInstances, MaxReuse: c.MaxReuse, Fresh: c.Fresh,
		Logger: log,
	}
}

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:      "serve",
		Usage:     "serve a handler (the embedded hello handler when none is given)",
		ArgsUsage: "[HANDLER.wasm]",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "listen", Value: ":8000", Usage: "address to listen on, host:port"},
			&cli.IntFlag{Name: "workers", Value: defaultWorkers(), Usage: "worker processes"},
			&cli.StringFlag{Name: "sched", Value: "rr", EnvVars: []string{"WCLUSTER_SCHED"}, Usage: "distribution policy: rr, shared or reuseport"},
			&cli.IntFlag{Name: "backlog", Value: 511, Usage: "listen(2) backlog"},
			&cli.IntFlag{Name: "max-conns", Value: 10000, Usage: "connections one worker holds at most; past it new ones wait in the backlog"},
			&cli.IntFlag{Name: "queue-size", Value: 0, Usage: "connections the rr master may hold while every worker is full (0: leave them in the backlog)"},
			&cli.DurationFlag{Name: "queue-timeout", Value: 10 * time.Second, Usage: "close a held connection no worker took in this time"},
			&cli.DurationFlag{Name: "shutdown-timeout", Value: 10 * time.Second, Usage: "how long a graceful stop waits for open connections"},
			&cli.DurationFlag{Name: "worker-timeout", Value: 30 * time.Second, Usage: "kill and replace a worker silent for this long"},
			&cli.IntFlag{Name: "max-requests", Value: 0, Usage: "recycle a worker after about this many requests, +0-10% jitter (0: never)"},
			&cli.StringFlag{Name: "max-worker-memory", Value: "0", Usage: "recycle a worker whose resident memory passes this, e.g. 512MiB (0: never)"},
			&cli.StringFlag{Name: "memory-limit", Value: "128MiB", Usage: "linear memory per guest instance"},
			&cli.DurationFlag{Name: "timeout", Value: 30 * time.Second, Usage: "wall-clock limit per guest call (0: none, and guests run without termination checks)"},
			&cli.DurationFlag{Name: "read-timeout", Value: 30 * time.Second, Usage: "how long one guest read waits for the client"},
			&cli.DurationFlag{Name: "write-timeout", Value: 30 * time.Second, Usage: "how long one guest write waits for the client"},
			&cli.DurationFlag{Name: "idle-timeout", Value: 60 * time.Second, Usage: "close a kept-alive connection silent for this long"},
			&cli.IntFlag{Name: "instances", Value: 64, Usage: "guest instances alive at once per worker"},
			&cli.IntFlag{Name: "instances-min", Value: 2, Usage: "guest instances created at start and kept warm"},
			&cli.IntFlag{Name: "max-reuse", Value: 0, Usage: "retire an instance after this many calls (0: never)"},
			&cli.StringFlag{Name: "instance-mode", Value: "pooled", Usage: "pooled, or fresh: a new instance per connection"},
			&cli.StringFlag{Name: "cache-dir", Value: defaultCacheDir(), Usage: "compilation cache shared by the workers (\"\" disables it)"},
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error"},
			&cli.StringFlag{Name: "control", Usage: "unix socket for `wcluster status` (none by default)"},
		},
		Action: serveAction,
	}
}

func defaultCacheDir() string {
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "wcluster")
	}
	return filepath.Join(os.TempDir(), "wcluster-cache")
}

func serveAction(c *cli.Context) error {
	start := time.Now()
	if c.NArg() > 1 {
		return fmt.Errorf("serve takes one handler, got %d arguments", c.NArg())
	}
	sched, err := dispatch.ParseSched(c.String("sched"))
	if err != nil {
		return err
	}
	if c.Int("workers") < 1 {
		return fmt.Errorf("--workers must be at least 1 (got %d)", c.Int("workers"))
	}
	mem, err := parseSize(c.String("memory-limit"))
	if err != nil {
		return fmt.Errorf("--memory-limit: %w", err)
	}
	maxMem, err := parseSize(c.String("max-worker-memory"))
	if err != nil {
		return fmt.Errorf("--max-worker-memory: %w", err)
	}
	mode := c.String("instance-mode")
	if mode != "pooled" && mode != "fresh" {
		return fmt.Errorf("--instance-mode %q: use pooled or fresh", mode)
	}
	level, err := parseLevel(c.String("log-level"))
	if err != nil {
		return err
	}
	hc := handlerConfig{
		Path: c.Args().First(), CacheDir: c.String("cache-dir"), MemoryLimit: mem,
		Timeout: c.Duration("timeout"), ReadTimeout: c.Duration("read-timeout"),
		WriteTimeout: c.Duration("write-timeout"), IdleTimeout: c.Duration("idle-timeout"),
		Instances: c.Int("instances"), MinInstances: c.Int("instances-min"),
		MaxReuse: c.Int("max-reuse"), Fresh: mode == "fresh", LogLevel: c.String("log-level"),
	}
	log := newLogger(c.App.ErrWriter, level).With("proc", "master")

	wasm, name, err := hc.load()
	if err != nil {
		return err
	}
	// Compile once here, as the workers will: a bad module stops us before
	// any worker starts, and the workers find the cache warm.
	info, err := host.Prepare(c.Context, hc.options(wasm, name, 0, log))
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	cfgJSON, _ := json.Marshal(hc)
	m, err := dispatch.New(dispatch.Config{
		Listen: []string{c.String("listen")}, Workers: c.Int("workers"), Sched: sched,
		MaxRequests: c.Int("max-requests"), MaxMemory: maxMem,
		Backlog: c.Int("backlog"), MaxConns: c.Int("max-conns"),
		QueueSize: c.Int("queue-size"), QueueTimeout: c.Duration("queue-timeout"),
		ShutdownTimeout: c.Duration("shutdown-timeout"), WorkerTimeout: c.Duration("worker-timeout"),
		WorkerConfig: cfgJSON, Logger: log,
	})
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	defer signal.Stop(usr1)
	go func() {
		for range usr1 {
			b, _ := json.Marshal(m.Status())
			log.Info("status", "status", string(b))
		}
	}()
	defer close(usr1)
	// SIGHUP: re-read and check the handler, then replace the workers
	// without dropping a connection; a bad handler leaves the old ones.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			if err := reload(ctx, m, hc, log); err != nil {
				log.Error("reload failed; the old workers keep serving", "err", err)
			}
		}
	}()
	defer close(hup)
	if path := c.String("control"); path != "" {
		if err := m.ServeControl(ctx, path); err != nil {
			return err
		}
	}

	err = m.Run(ctx, func() {
		fmt.Fprintf(c.App.ErrWriter, "wcluster: serving %s on %s (policy %s, %d workers, %s) in %v\n",
			name, m.Addr(), sched, c.Int("workers"), describe(info), time.Since(start).Round(time.Millisecond))
	})
	if errors.Is(err, dispatch.ErrMasterClosed) {
		log.Info("stopped")
		return nil
	}
	return err
}

// reload re-reads the handler, compiles and checks it as a worker would, and
// asks the master to replace its workers with ones serving it.
func reload(ctx context.Context, m *dispatch.Master, hc handlerConfig, log *slog.Logger) error {
	log.Info("reloading", "handler", hc.Path)
	wasm, name, err := hc.load()
	if err != nil {
		return err
	}
	if _, err := host.Prepare(ctx, hc.options(wasm, name, 0, log)); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	cfg, _ := json.Marshal(hc)
	return m.Reload(ctx, cfg)
}

func describe(info host.Info) string {
	if info.Kind == host.KindABI {
		return fmt.Sprintf("wcluster ABI v%d", info.ABIVersion)
	}
	return info.Kind.String()
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return l, fmt.Errorf("--log-level %q: use debug, info, warn or error", s)
	}
	return l, nil
}

func newLogger(w interface{ Write([]byte) (int, error) }, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// runWorker is the worker process: it builds the handler from the config the
// master passed and serves what dispatch hands it.
func runWorker(stderr interface{ Write([]byte) (int, error) }) int {
	// The terminal's Ctrl-C reaches the whole process group; only the master
	// decides when workers stop (it closes their channel).
	signal.Ignore(syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1)
	bootLog := newLogger(stderr, slog.LevelInfo)
	w, err := dispatch.NewWorker(bootLog)
	if err != nil {
		bootLog.Error("worker cannot start", "err", err)
		return 1
	}
	var hc handlerConfig
	if err := json.Unmarshal(w.Config(), &hc); err != nil {
		w.Fatal(fmt.Errorf("bad handler config: %w", err))
		return 1
	}
	level, _ := parseLevel(hc.LogLevel)
	log := newLogger(stderr, level).With("proc", "worker", "worker", w.ID(), "pid", os.Getpid())
	wasm, name, err := hc.load()
	if err != nil {
		w.Fatal(err)
		return 1
	}
	ctx := context.Background()
	h, err := host.New(ctx, hc.options(wasm, name, w.ID(), log))
	if err != nil {
		w.Fatal(err)
		return 1
	}
	defer h.Close(ctx)
	stats := func() map[string]any {
		s := h.Stats()
		return map[string]any{
			"conns": s.Conns, "calls": s.Calls, "traps": s.Traps, "timeouts": s.Timeouts,
			"memory_limit_hits": s.MemLimit, "instances_created": s.Instances, "instances_live": s.Live,
		}
	}
	if err := w.Serve(ctx, single{h}, stats); err != nil {
		log.Warn("worker stopped", "err", err)
		return 1
	}
	return 0
}

// single serves every listener with one handler.
type single struct{ h *host.Handler }

func (s single) ServeConn(ctx context.Context, f *os.File, _ int) { s.h.ServeConn(ctx, f) }
func (s single) Drain()                                          { s.h.Drain() }
func (s single) Requests() uint64                                { return s.h.Stats().Calls }
