package config

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"time"

	"github.com/wcluster/wcluster/dispatch"
	"github.com/wcluster/wcluster/guests/embedded"
)

// Defaults are what a configuration does not set: Default's values, with
// the flags given on the command line applied (Set).
type Defaults struct {
	Cluster Cluster
	Limits  Limits
	// Listen is serve's --listen: the one handler's address, and the
	// address of a file's tenants that give none ("": they must).
	Listen string
}

// Default is every default of wcluster: Flags' defaults, applied by Set
// as the command line would apply them.
func Default() Defaults {
	var d Defaults
	for _, f := range Flags() {
		if f.Default != "" || f.Name == "listen" {
			if err := d.Set(f.Name, f.Default); err != nil {
				panic("config: default of --" + f.Name + ": " + err.Error()) // a wrong table: caught by any test
			}
		}
	}
	return d
}

// A Flag is one of serve's flags: its default as the command line writes
// it, and the file key it sets the default of.
type Flag struct {
	Name    string // --name
	Key     string // "[cluster] key" or "tenant key"; "" when it has no key
	Default string
	Usage   string
	Env     string // an environment variable that gives it too
	Many    bool   // repeatable
}

// Flags is the one table of serve's flags, their defaults and the keys
// they stand for (docs/config.md lists it). Default reads every default
// here; with --config, a flag given sets the default of its key.
func Flags() []Flag {
	return []Flag{
		{"listen", "tenant listen", ":8000", "address to listen on, host:port (with --config: of the tenants that give none)", "", false},
		{"tls-cert", "", "", "terminate TLS with this PEM certificate (chain); the guest sees plaintext", "", false},
		{"tls-key", "", "", "the PEM private key of --tls-cert", "", false},
		{"workers", "[cluster] workers", strconv.Itoa(runtime.NumCPU()), "worker processes", "", false},
		{"worker-procs", "[cluster] worker_procs", "auto", "threads running Go code at once in each worker (its GOMAXPROCS): auto shares the CPUs among all workers, at least 1 each (GOMAXPROCS in the environment sets it too)", "", false},
		{"sched", "[cluster] sched", "rr", "distribution policy: rr, shared or reuseport", "WCLUSTER_SCHED", false},
		{"backlog", "[cluster] backlog", "511", "listen(2) backlog", "", false},
		{"max-conns", "[cluster] max_conns", "10000", "connections one worker holds at most; past it new ones wait in the backlog", "", false},
		{"queue-size", "[cluster] queue_size", "0", "connections the rr master may hold while every worker is full (0: leave them in the backlog)", "", false},
		{"queue-timeout", "[cluster] queue_timeout", "10s", "close a held connection no worker took in this time", "", false},
		{"shutdown-timeout", "[cluster] shutdown_timeout", "10s", "how long a graceful stop waits for open connections", "", false},
		{"worker-timeout", "[cluster] worker_timeout", "30s", "kill and replace a worker silent for this long", "", false},
		{"tls-ticket-rotation", "[cluster] tls_ticket_rotation", "1h", "make a new TLS session ticket key this often; the two before it still resume sessions (0: never)", "", false},
		{"max-requests", "[cluster] max_requests", "0", "recycle a worker after about this many requests, +0-10% jitter (0: never)", "", false},
		{"max-worker-memory", "[cluster] max_worker_memory", "0", "recycle a worker whose resident memory passes this, e.g. 512MiB (0: never)", "", false},
		{"memory-limit", "tenant memory_limit", "128MiB", "linear memory per guest instance", "", false},
		{"guest-memory-budget", "[cluster] guest_memory_budget", "auto", "linear memory of all guest instances of one worker together, e.g. 1GiB; past it memory.grow fails and new calls wait (auto: 1/5 of physical memory, or 1/2 of a cgroup limit, over the workers; 0: none)", "", false},
		{"timeout", "tenant timeout", "30s", "wall-clock limit per guest call (0: none, and guests run without termination checks)", "", false},
		{"read-timeout", "tenant read_timeout", "30s", "how long one guest read waits for the client", "", false},
		{"write-timeout", "tenant write_timeout", "30s", "how long one guest write waits for the client", "", false},
		{"idle-timeout", "tenant idle_timeout", "60s", "close a kept-alive connection silent for this long", "", false},
		// A new connection's wait for its first byte, and how many wait at
		// once per worker; an incomplete message's wait for its rest; a
		// draining worker's wait for a kept-alive client's next request.
		{"first-byte-timeout", "tenant first_byte_timeout", "20s", "close a new connection that sends nothing for this long (it holds no instance meanwhile)", "", false},
		{"first-byte-limit", "tenant first_byte_limit", "8192", "new connections waiting for their first byte per worker; past it the oldest is closed (0: no bound)", "", false},
		{"partial-timeout", "tenant partial_timeout", "30s", "close a connection whose incomplete request (pushed back by the handler) stays incomplete this long", "", false},
		{"access-log", "tenant access_log", "off", "log each request (http-wasm handlers) or connection (others) to standard output: off, common (the common log format) or json", "", false},
		{"drain-grace", "tenant drain_grace", "1s", "how long a draining worker keeps an idle kept-alive connection for the client's next request", "", false},
		{"instances", "tenant instances", "64", "guest instances alive at once per worker", "", false},
		{"instances-min", "tenant instances_min", "2", "guest instances created at start and kept warm (0: made by the first request; the default above 16 tenants)", "", false},
		{"max-reuse", "tenant max_reuse", "0", "retire an instance after this many calls (0: never)", "", false},
		{"instance-mode", "tenant instance_mode", "pooled", "pooled, or fresh: a new instance per connection", "", false},
		{"cache-dir", "[cluster] cache_dir", defaultCacheDir(), "compilation cache shared by the workers (\"\" disables it)", "", false},
		{"kv-dir", "[cluster] kv_dir", defaultKVDir(), "directory of the embedded key-value store every worker shares (\"\" disables the store)", "", false},
		{"kv-redis", "[cluster] kv_redis", "", "`URL` of a Redis or Valkey (redis://HOST:PORT/DB, rediss:// for TLS) holding the key-value store instead of --kv-dir, for more than one machine", "", false},
		{"kv-max-value", "tenant kv_max_value", "1MiB", "largest value of the key-value store", "", false},
		{"kv-quota", "tenant kv_quota", "64MiB", "keys and values of a tenant's key-value store together (0: no quota)", "", false},
		{"log-level", "[cluster] log_level", "info", "debug, info, warn or error", "", false},
		{"log-format", "[cluster] log_format", "text", "text, or json (one object per line, for log collectors)", "", false},
		{"control", "[cluster] control", "", "`PATH` of a unix socket for wcluster status, reload, scale and stop (none by default)", "", false},
		{"admin", "[cluster] admin", "", "`ADDR` for /metrics (Prometheus), /healthz and /readyz, e.g. 127.0.0.1:9090 (none by default)", "", false},
		{"user", "[cluster] user", "", "run the workers as `USER[:GROUP]` with no capabilities (the master must be root)", "", false},
		{"worker-env", "[cluster] worker_env", "", "pass the master's environment variable `NAME` on to the workers (repeatable); they get none of it otherwise", "", true},
		{"defer-accept", "[cluster] defer_accept", "on", "on: on a listener whose handlers all wait for the client to speak, the kernel hands over a connection once its first bytes arrive (TCP_DEFER_ACCEPT); one that sends nothing is handed over a second later. off: at once", "", false},
		{"worker-sandbox", "[cluster] worker_sandbox", "on", "on: workers run with no_new_privs, a seccomp allowlist and Landlock; off: without (for debugging)", "", false},
		{"upstream", "", "", "`URL` an http-wasm handler passes requests on to (its next handler; without it next answers 404)", "", false},
		{"guest-config", "", "", "`VALUE` an http-wasm handler's get_config returns (@FILE: the file's bytes)", "", false},
	}
}

// defaultKVDir is under the user's state directory ($XDG_STATE_HOME, else
// ~/.local/state), as the store is data to keep, not a cache.
func defaultKVDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); filepath.IsAbs(d) {
		return filepath.Join(d, "wcluster", "kv")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "state", "wcluster", "kv")
	}
	return filepath.Join(os.TempDir(), "wcluster-kv")
}

func defaultCacheDir() string {
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "wcluster")
	}
	return filepath.Join(os.TempDir(), "wcluster-cache")
}

// Set applies serve's flag --name with value v (as the command line gives
// it) to d. A flag that is not a default of a configuration (tls-cert,
// upstream, ...) is not Set's; it returns an error for it.
func (d *Defaults) Set(name, v string) error {
	c, l := &d.Cluster, &d.Limits
	var err error
	atoi := func(lo int) int {
		n, e := strconv.Atoi(v)
		if e != nil {
			err = fmt.Errorf("--%s %q: give a whole number", name, v)
		} else if n < lo {
			err = fmt.Errorf("--%s must be at least %d (got %d)", name, lo, n)
		}
		return n
	}
	dur := func() time.Duration {
		t, e := time.ParseDuration(v)
		if e != nil || t < 0 {
			err = fmt.Errorf("--%s must not be negative (got %v; 0 means none)", name, v)
		}
		return t
	}
	size := func() uint64 {
		n, e := ParseSize(v)
		if e != nil {
			err = fmt.Errorf("--%s: %w", name, e)
		}
		return n
	}
	switch name {
	case "listen":
		d.Listen = v
	case "workers":
		c.Workers = atoi(1)
	case "worker-procs":
		if c.WorkerProcs, err = ParseWorkerProcs(v); err != nil {
			err = fmt.Errorf("--worker-procs %w", err)
		}
	case "sched":
		c.Sched, err = dispatch.ParseSched(v)
	case "backlog":
		c.Backlog = atoi(1)
	case "max-conns":
		c.MaxConns = atoi(1)
	case "queue-size":
		c.QueueSize = atoi(0)
	case "queue-timeout":
		c.QueueTimeout = dur()
	case "shutdown-timeout":
		c.ShutdownTimeout = dur()
	case "worker-timeout":
		c.WorkerTimeout = dur()
	case "tls-ticket-rotation":
		c.TicketRotation = dur()
	case "max-requests":
		c.MaxRequests = atoi(0)
	case "max-worker-memory":
		c.MaxWorkerMemory = size()
	case "guest-memory-budget":
		if _, e := ParseGuestBudget(v, 1); e != nil {
			err = fmt.Errorf("--guest-memory-budget: %w", e)
		}
		c.GuestBudget = v
	case "cache-dir":
		c.CacheDir = v
	case "log-level":
		_, err = ParseLevel(v)
		c.LogLevel = v
	case "log-format":
		if v != "text" && v != "json" {
			err = fmt.Errorf("--log-format %q: use text or json", v)
		}
		c.LogFormat = v
	case "control":
		c.Control = v
	case "admin":
		c.Admin = v
	case "user":
		if _, e := LookupUser(v); e != nil {
			err = fmt.Errorf("--%w", e)
		}
		c.User = v
	case "worker-sandbox":
		c.SandboxOff, err = ParseSandbox(v)
	case "defer-accept":
		var on bool
		on, err = parseOnOff("defer-accept", v)
		c.DeferAcceptOff = !on
	case "worker-env":
		c.WorkerEnv = append(c.WorkerEnv, v)
	case "memory-limit":
		l.MemoryLimit = size()
	case "kv-max-value":
		l.KVMaxValue = size()
	case "kv-quota":
		l.KVQuota = size()
	case "kv-redis":
		if v != "" {
			if e := CheckRedisURL(v); e != nil {
				err = fmt.Errorf("--kv-redis: %w", e)
			}
		}
		c.KVRedis = v
	case "kv-dir":
		if v != "" {
			v, err = filepath.Abs(v)
		}
		c.KVDir = v
	case "timeout":
		l.Timeout = dur()
	case "read-timeout":
		l.ReadTimeout = dur()
	case "write-timeout":
		l.WriteTimeout = dur()
	case "idle-timeout":
		l.IdleTimeout = dur()
	case "first-byte-timeout":
		l.FirstByteTimeout = dur()
	case "first-byte-limit":
		if l.FirstByteLimit = atoi(0); err != nil {
			err = fmt.Errorf("--first-byte-limit must be 0 (no bound) or more (got %s)", v)
		}
	case "partial-timeout":
		l.PartialTimeout = dur()
	case "drain-grace":
		l.DrainGrace = dur()
	case "access-log":
		if e := CheckAccessLog(v); e != nil {
			err = fmt.Errorf("--access-log %q: %w", v, e)
		}
		l.AccessLog = v
	case "instances":
		l.Instances = atoi(1)
	case "instances-min":
		l.MinInstances = atoi(0)
	case "max-reuse":
		l.MaxReuse = atoi(0)
	case "instance-mode":
		if v != "pooled" && v != "fresh" {
			err = fmt.Errorf("--instance-mode %q: use pooled or fresh", v)
		}
		l.Fresh = v == "fresh"
	case "tls-cert", "tls-key", "upstream", "guest-config":
		return fmt.Errorf("--%s does not apply with --config: set it on the tenant (tls, upstream, guest_config; see docs/config.md)", name)
	default:
		return fmt.Errorf("--%s is not a default of a configuration", name)
	}
	return err
}

// HandlerFlags are serve's flags about its one handler, which a file sets
// per tenant instead (Single takes them).
type HandlerFlags struct {
	Handler         string // "" is the embedded default handler
	TLSCert, TLSKey string
	Upstream        string
	GuestConfig     string // the value, or @FILE
}

// Single is the configuration of `serve HANDLER.wasm`: one tenant, the
// default of its one listener, in one worker group, from the flags alone.
func Single(h HandlerFlags, d Defaults) (*Config, error) {
	t := Tenant{Name: embedded.HelloName, Handler: h.Handler, Listen: []string{d.Listen}, Limits: d.Limits}
	if h.Handler != "" {
		t.Name = filepath.Base(h.Handler)
	}
	t.who = "the handler"
	var err error
	if t.Upstream, err = CheckUpstream(h.Upstream); err != nil {
		return nil, fmt.Errorf("--upstream: %w", err)
	}
	if t.GuestConfig, err = ReadGuestConfig(h.GuestConfig, ""); err != nil {
		return nil, fmt.Errorf("--guest-config: %w", err)
	}
	if (h.TLSCert == "") != (h.TLSKey == "") {
		return nil, fmt.Errorf("--tls-cert and --tls-key go together: give both, or neither")
	}
	if h.TLSCert != "" {
		if t.TLSCert, err = filepath.Abs(h.TLSCert); err == nil {
			t.TLSKey, err = filepath.Abs(h.TLSKey)
		}
		if err != nil {
			return nil, err
		}
		// Checked here so a bad pair stops the start, not every worker.
		if _, err := tls.LoadX509KeyPair(t.TLSCert, t.TLSKey); err != nil {
			return nil, fmt.Errorf("--tls-cert/--tls-key: %w: give a PEM certificate and its matching PEM key", err)
		}
	}
	c := &Config{Cluster: d.Cluster, Tenants: []Tenant{t}}
	cr := &configReader{def: d}
	cr.plan(c)
	if len(cr.errs) > 0 {
		return nil, cr.err()
	}
	return c, nil
}

// ParseLevel reads a log level: debug, info, warn or error.
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return l, fmt.Errorf("--log-level %q: use debug, info, warn or error", s)
	}
	return l, nil
}

// CheckAccessLog checks an access log format.
func CheckAccessLog(format string) error {
	switch format {
	case "off", "common", "json":
		return nil
	}
	return errors.New("use off, common or json")
}

// ParseWorkerProcs reads --worker-procs: "auto" is 0, otherwise a number
// of threads ≥ 1.
func ParseWorkerProcs(v string) (int, error) {
	if v == "auto" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("%q: use \"auto\" or a number of threads ≥ 1", v)
	}
	return n, nil
}

// WorkerProcs is each worker's GOMAXPROCS: procs when given; otherwise
// (auto) the master's CPUs (GOMAXPROCS, which follows the CPU affinity and
// a cgroup's CPU limit) shared among all workers, rounded up, at least 1,
// and at least 2 for a group that terminates TLS; unless GOMAXPROCS is set
// in the environment, which the workers then inherit (0 here).
//
// Why share: a Go process per core that each runs as many threads as there
// are cores oversubscribes the machine, and under load the kernel keeps a
// worker's threads waiting for a core for tens of milliseconds, which its
// clients see as tail latency. Why two for TLS: handshakes run on a thread
// of lowered priority (host/nice.go), which helps only while another
// thread can serve the worker's requests meanwhile.
func WorkerProcs(procs, workers int, tls bool) int {
	if procs > 0 {
		return procs
	}
	if _, ok := os.LookupEnv("GOMAXPROCS"); ok {
		return 0
	}
	workers = max(workers, 1)
	n := max(1, (runtime.GOMAXPROCS(0)+workers-1)/workers)
	if tls {
		n = max(n, 2)
	}
	return n
}
