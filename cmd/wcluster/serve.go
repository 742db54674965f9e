package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/wcluster/wcluster/admin"
	"github.com/wcluster/wcluster/dispatch"
	"github.com/wcluster/wcluster/guests/embedded"
	"github.com/wcluster/wcluster/host"
)

// handlerConfig is what every worker needs to build its host.Handler; the
// master passes it through dispatch untouched.
type handlerConfig struct {
	Path     string `json:"path,omitempty"` // "" means the embedded default
	CacheDir string `json:"cache_dir"`
	limits
	LogLevel  string `json:"log_level"`
	LogFormat string `json:"log_format"`
	// TLSCert and TLSKey, when set, make the worker terminate TLS; the
	// master reads the files and passes their bytes (files), through the
	// worker's configuration descriptor, never the environment.
	TLSCert string `json:"tls_cert,omitempty"`
	TLSKey  string `json:"tls_key,omitempty"`
	// GuestMemoryBudget bounds the linear memory of all the worker's
	// instances (0: none); a call waits at most MemoryWait for room.
	GuestMemoryBudget uint64        `json:"guest_memory_budget"`
	MemoryWait        time.Duration `json:"memory_wait"`
	// Sandbox is what the worker applies to itself.
	Sandbox sandboxPlan `json:"sandbox"`
	// The bytes of the handler, certificate and key, read by the master
	// for its workers: they may run as a user who cannot read the files,
	// under a sandbox that cannot open them.
	files
}

func (c *handlerConfig) load() (wasm []byte, name string, err error) {
	if len(c.Wasm) > 0 {
		return c.Wasm, filepath.Base(c.Path), nil // read by the master
	}
	if c.Path == "" {
		return embedded.Hello, embedded.HelloName, nil
	}
	wasm, err = readHandler(c.Path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, "", fmt.Errorf("%s: no such file: pass the path of a .wasm handler (or none for the default)", c.Path)
		}
		return nil, "", errors.New(handlerError(c.Path, err))
	}
	return wasm, filepath.Base(c.Path), nil
}

func (c *handlerConfig) options(wasm []byte, name string, workerID int, log *slog.Logger) host.Options {
	return c.limits.options(wasm, name, c.CacheDir, workerID, log)
}

// limits are a handler's guest limits, from serve's flags or a tenant.
type limits struct {
	MemoryLimit  uint64        `json:"memory_limit"`
	Timeout      time.Duration `json:"timeout"`
	ReadTimeout  time.Duration `json:"read_timeout"`
	WriteTimeout time.Duration `json:"write_timeout"`
	IdleTimeout  time.Duration `json:"idle_timeout"`
	Instances    int           `json:"instances"`
	MinInstances int           `json:"instances_min"`
	MaxReuse     int           `json:"max_reuse"`
	Fresh        bool          `json:"fresh"`
	MemoryBudget uint64        `json:"memory_budget,omitempty"` // the tenant's guest memory budget

	// FirstByteTimeout and FirstByteLimit bound new connections waiting for
	// their first byte, PartialTimeout an incomplete message, DrainGrace a
	// draining worker's idle connections (host.Options).
	FirstByteTimeout time.Duration `json:"first_byte_timeout"`
	FirstByteLimit   int           `json:"first_byte_limit"`
	PartialTimeout   time.Duration `json:"partial_timeout"`
	DrainGrace       time.Duration `json:"drain_grace"`
	// An http-wasm guest's upstream (its next handler) and the bytes its
	// get_config returns.
	Upstream    string `json:"upstream,omitempty"`
	GuestConfig []byte `json:"guest_config,omitempty"`
}

// options are the host.Options of a handler with these limits.
func (l *limits) options(wasm []byte, name, cacheDir string, workerID int, log *slog.Logger) host.Options {
	return host.Options{
		Wasm: wasm, Name: name, CacheDir: cacheDir, WorkerID: workerID,
		MemoryLimit: l.MemoryLimit, Timeout: l.Timeout,
		ReadTimeout: l.ReadTimeout, WriteTimeout: l.WriteTimeout, IdleTimeout: l.IdleTimeout,
		FirstByteTimeout: l.FirstByteTimeout, FirstByteLimit: l.FirstByteLimit,
		PartialTimeout: l.PartialTimeout, DrainGrace: l.DrainGrace,
		Instances: l.Instances, MinInstances: l.MinInstances, MaxReuse: l.MaxReuse, Fresh: l.Fresh,
		MemoryBudget: l.MemoryBudget, Logger: log, Upstream: l.Upstream, GuestConfig: l.GuestConfig,
	}
}

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:      "serve",
		Usage:     "serve a handler (the embedded hello handler when none is given)",
		ArgsUsage: "[HANDLER.wasm]",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Usage: "serve the tenants of this TOML file (see docs/config.md) instead of one handler"},
			&cli.StringFlag{Name: "listen", Value: ":8000", Usage: "address to listen on, host:port"},
			&cli.StringFlag{Name: "tls-cert", Usage: "terminate TLS with this PEM certificate (chain); the guest sees plaintext"},
			&cli.StringFlag{Name: "tls-key", Usage: "the PEM private key of --tls-cert"},
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
			&cli.StringFlag{Name: "guest-memory-budget", Value: "auto", Usage: "linear memory of all guest instances of one worker together, e.g. 1GiB; past it memory.grow fails and new calls wait (auto: 1/5 of physical memory, or 1/2 of a cgroup limit, over the workers; 0: none)"},
			&cli.DurationFlag{Name: "timeout", Value: 30 * time.Second, Usage: "wall-clock limit per guest call (0: none, and guests run without termination checks)"},
			&cli.DurationFlag{Name: "read-timeout", Value: 30 * time.Second, Usage: "how long one guest read waits for the client"},
			&cli.DurationFlag{Name: "write-timeout", Value: 30 * time.Second, Usage: "how long one guest write waits for the client"},
			&cli.DurationFlag{Name: "idle-timeout", Value: 60 * time.Second, Usage: "close a kept-alive connection silent for this long"},
			&cli.DurationFlag{Name: "first-byte-timeout", Value: defFirstByteTimeout, Usage: "close a new connection that sends nothing for this long (it holds no instance meanwhile)"},
			&cli.IntFlag{Name: "first-byte-limit", Value: defFirstByteLimit, Usage: "new connections waiting for their first byte per worker; past it the oldest is closed (0: no bound)"},
			&cli.DurationFlag{Name: "partial-timeout", Value: defPartialTimeout, Usage: "close a connection whose incomplete request (pushed back by the handler) stays incomplete this long"},
			&cli.DurationFlag{Name: "drain-grace", Value: defDrainGrace, Usage: "how long a draining worker keeps an idle kept-alive connection for the client's next request"},
			&cli.IntFlag{Name: "instances", Value: 64, Usage: "guest instances alive at once per worker"},
			&cli.IntFlag{Name: "instances-min", Value: 2, Usage: "guest instances created at start and kept warm"},
			&cli.IntFlag{Name: "max-reuse", Value: 0, Usage: "retire an instance after this many calls (0: never)"},
			&cli.StringFlag{Name: "instance-mode", Value: "pooled", Usage: "pooled, or fresh: a new instance per connection"},
			&cli.StringFlag{Name: "cache-dir", Value: defaultCacheDir(), Usage: "compilation cache shared by the workers (\"\" disables it)"},
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error"},
			&cli.StringFlag{Name: "log-format", Value: "text", Usage: "text, or json (one object per line, for log collectors)"},
			&cli.StringFlag{Name: "control", Usage: "`PATH` of a unix socket for wcluster status, reload, scale and stop (none by default)"},
			&cli.StringFlag{Name: "admin", Usage: "`ADDR` for /metrics (Prometheus), /healthz and /readyz, e.g. 127.0.0.1:9090 (none by default)"},
			&cli.StringFlag{Name: "user", Usage: "run the workers as `USER[:GROUP]` with no capabilities (the master must be root)"},
			&cli.StringSliceFlag{Name: "worker-env", Usage: "pass the master's environment variable `NAME` on to the workers (repeatable); they get none of it otherwise"},
			&cli.StringFlag{Name: "worker-sandbox", Value: "on", Usage: "on: workers run with no_new_privs, a seccomp allowlist and Landlock; off: without (for debugging)"},
			&cli.StringFlag{Name: "upstream", Usage: "`URL` an http-wasm handler passes requests on to (its next handler; without it next answers 404)"},
			&cli.StringFlag{Name: "guest-config", Usage: "`VALUE` an http-wasm handler's get_config returns (@FILE: the file's bytes)"},
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
	if path := c.String("config"); path != "" {
		if c.NArg() > 0 {
			return fmt.Errorf("serve takes a handler or --config, not both: put the handler in the config file")
		}
		return serveConfig(c, path, start)
	}
	if c.NArg() > 1 {
		return fmt.Errorf("serve takes one handler, got %d arguments", c.NArg())
	}
	sched, err := dispatch.ParseSched(c.String("sched"))
	if err != nil {
		return err
	}
	if c.Int("first-byte-limit") < 0 {
		return fmt.Errorf("--first-byte-limit must be 0 (no bound) or more (got %d)", c.Int("first-byte-limit"))
	}
	for _, name := range []string{"first-byte-timeout", "partial-timeout", "drain-grace"} {
		if c.Duration(name) < 0 {
			return fmt.Errorf("--%s must not be negative (got %v; 0 means none)", name, c.Duration(name))
		}
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
	budget, err := parseGuestBudget(c.String("guest-memory-budget"), c.Int("workers"))
	if err != nil {
		return fmt.Errorf("--guest-memory-budget: %w", err)
	}
	mode := c.String("instance-mode")
	if mode != "pooled" && mode != "fresh" {
		return fmt.Errorf("--instance-mode %q: use pooled or fresh", mode)
	}
	level, err := parseLevel(c.String("log-level"))
	if err != nil {
		return err
	}
	format := c.String("log-format")
	if format != "text" && format != "json" {
		return fmt.Errorf("--log-format %q: use text or json", format)
	}
	hc := handlerConfig{
		Path: c.Args().First(), CacheDir: c.String("cache-dir"),
		limits: limits{
			MemoryLimit: mem,
			Timeout:     c.Duration("timeout"), ReadTimeout: c.Duration("read-timeout"),
			WriteTimeout: c.Duration("write-timeout"), IdleTimeout: c.Duration("idle-timeout"),
			FirstByteTimeout: c.Duration("first-byte-timeout"), FirstByteLimit: c.Int("first-byte-limit"),
			PartialTimeout: c.Duration("partial-timeout"), DrainGrace: c.Duration("drain-grace"),
			Instances: c.Int("instances"), MinInstances: c.Int("instances-min"),
			MaxReuse: c.Int("max-reuse"), Fresh: mode == "fresh",
		},
		LogLevel: c.String("log-level"), LogFormat: format,
		// Waiting for memory is waiting for capacity, as in the master's
		// queue: the same bound.
		GuestMemoryBudget: budget.PerWorker, MemoryWait: c.Duration("queue-timeout"),
	}
	if hc.Upstream, err = checkUpstream(c.String("upstream")); err != nil {
		return fmt.Errorf("--upstream: %w", err)
	}
	if hc.GuestConfig, err = readGuestConfig(c.String("guest-config"), ""); err != nil {
		return fmt.Errorf("--guest-config: %w", err)
	}
	if (c.String("tls-cert") == "") != (c.String("tls-key") == "") {
		return fmt.Errorf("--tls-cert and --tls-key go together: give both, or neither")
	}
	if c.String("tls-cert") != "" {
		if hc.TLSCert, err = filepath.Abs(c.String("tls-cert")); err == nil {
			hc.TLSKey, err = filepath.Abs(c.String("tls-key"))
		}
		if err != nil {
			return err
		}
		// Checked here so a bad pair stops the start, not every worker.
		if _, err := tls.LoadX509KeyPair(hc.TLSCert, hc.TLSKey); err != nil {
			return fmt.Errorf("--tls-cert/--tls-key: %w: give a PEM certificate and its matching PEM key", err)
		}
	}
	log := newLogger(c.App.ErrWriter, level, format).With("proc", "master")
	sandboxOff, err := parseSandbox(c.String("worker-sandbox"))
	if err != nil {
		return err
	}
	hc.Sandbox = sandboxPlan{Off: sandboxOff, ReadPaths: []string{hc.CacheDir}}
	hc.Sandbox.allowUpstream(hc.Upstream)
	wu, err := lookupUser(c.String("user"))
	if err == nil {
		err = wu.checkCanSwitch()
	}
	if err == nil {
		err = wu.checkReuseport(sched, []string{c.String("listen")})
	}
	if err != nil {
		return fmt.Errorf("--%w", err)
	}

	wasm, name, err := hc.load()
	if err != nil {
		return err
	}
	// Compile once here, as the workers will: a bad module stops us before
	// any worker starts, and the workers find the cache warm.
	cached := cacheEntries(hc.CacheDir)
	info, err := host.Prepare(c.Context, hc.options(wasm, name, 0, log))
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	cache := cacheState(hc.CacheDir, cached)
	if err := wu.shareCache(hc.CacheDir); err != nil {
		return err
	}
	if hc.files, err = readFiles(handlerBytes(hc.Path, wasm), hc.TLSCert, hc.TLSKey); err != nil {
		return err
	}
	cfgJSON, _ := json.Marshal(workerConfig{Handler: &hc})
	group := dispatch.Config{
		Listen: []string{c.String("listen")}, Workers: c.Int("workers"), Sched: sched,
		Backlog: c.Int("backlog"), MaxConns: c.Int("max-conns"),
		QueueSize: c.Int("queue-size"), QueueTimeout: c.Duration("queue-timeout"),
		ShutdownTimeout: c.Duration("shutdown-timeout"), WorkerTimeout: c.Duration("worker-timeout"),
		MaxRequests: c.Int("max-requests"), MaxMemory: maxMem,
		WorkerConfig: cfgJSON, Logger: log,
		WorkerEnv: c.StringSlice("worker-env"), Credential: wu.credential(),
	}
	return runMaster(c.Context, masterPlan{
		groups: []dispatch.Config{group}, log: log, out: c.App.ErrWriter,
		control: c.String("control"), admin: c.String("admin"),
		bound:  func() { warnRootWorkers(log, wu) },
		reload: func(ctx context.Context, cl *dispatch.Cluster) error { return reload(ctx, cl, hc, wu, log) },
		banner: func(cl *dispatch.Cluster) string {
			return fmt.Sprintf("serving %s on %s (policy %s, %d workers, %s, compilation cache %s, %s) in %v",
				name, cl.Groups()[0].Addr(), sched, c.Int("workers"), describe(info), cache, budget,
				time.Since(start).Round(time.Millisecond))
		},
	})
}

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

// reload re-reads the handler, compiles and checks it as a worker would, and
// asks the master to replace its workers with ones serving it.
func reload(ctx context.Context, cl *dispatch.Cluster, hc handlerConfig, wu *workerUser, log *slog.Logger) error {
	log.Info("reloading", "handler", hc.Path)
	hc.files = files{} // read afresh
	wasm, name, err := hc.load()
	if err != nil {
		return err
	}
	if _, err := host.Prepare(ctx, hc.options(wasm, name, 0, log)); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if err := wu.shareCache(hc.CacheDir); err != nil {
		return err
	}
	if hc.files, err = readFiles(handlerBytes(hc.Path, wasm), hc.TLSCert, hc.TLSKey); err != nil {
		return err
	}
	cfg, _ := json.Marshal(workerConfig{Handler: &hc})
	return cl.Reload(ctx, map[string][]byte{"": cfg})
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

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return l, fmt.Errorf("--log-level %q: use debug, info, warn or error", s)
	}
	return l, nil
}

func newLogger(w interface{ Write([]byte) (int, error) }, level slog.Level, format string) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
