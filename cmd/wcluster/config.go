package main

// The --config file: a TOML document of a [cluster] table and [[tenant]]
// entries (see docs/config.md). loadConfig parses and checks it, reporting
// every problem at once as FILE:LINE: tenant "NAME": what is wrong and what
// to do; groups() then gives, per worker group, what the master needs to
// start it (groupPlan) and what each of its workers needs to build its
// host.Router (groupPlan.newRouter).

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/wcluster/wcluster/dispatch"
	"github.com/wcluster/wcluster/host"
)

// fileConfig is a checked config file.
type fileConfig struct {
	Path    string
	Cluster clusterConfig
	Tenants []tenantPlan // in file order
	Groups  []groupPlan  // in order of first appearance; "default" among them
}

// clusterConfig is the [cluster] table, defaults filled in.
type clusterConfig struct {
	Workers         int
	Sched           dispatch.Sched
	Backlog         int
	MaxConns        int
	QueueSize       int
	QueueTimeout    time.Duration
	ShutdownTimeout time.Duration
	WorkerTimeout   time.Duration
	MaxRequests     int
	MaxWorkerMemory uint64
	GuestBudget     string // guest_memory_budget: "auto", "0" or a size per worker
	CacheDir        string
	LogLevel        string
	LogFormat       string // "text" or "json"
	Control         string
	Admin           string // address of /metrics, /healthz, /readyz ("": none)
	// User runs the workers of groups that do not say otherwise;
	// WorkerEnv, SandboxOff: see --worker-env, --worker-sandbox.
	User       string
	WorkerEnv  []string
	SandboxOff bool
}

// groupPlan is one worker group: its own worker processes serving its own
// listeners. The master starts Workers workers listening on Addrs(); it
// passes the plan (as JSON) to each, which builds its Router with newRouter.
type groupPlan struct {
	Name      string         `json:"name"`
	Workers   int            `json:"workers"`
	Listeners []listenerPlan `json:"listeners"` // in config order: ServeConn's listener index
	Tenants   []tenantPlan   `json:"tenants"`   // every tenant of the group, in config order
	CacheDir  string         `json:"cache_dir"`
	LogLevel  string         `json:"log_level"`
	LogFormat string         `json:"log_format"`
	// MemoryBudget bounds the linear memory of all instances of one of the
	// group's workers (0: none); a call waits at most MemoryWait for room.
	MemoryBudget uint64        `json:"memory_budget"`
	MemoryWait   time.Duration `json:"memory_wait"`
	budgetWhy    string        // for check and the banner
	// Sandbox is what its workers apply to themselves; User, WorkerEnv:
	// who they run as and what of the master's environment they get.
	Sandbox   sandboxPlan `json:"sandbox"`
	User      string      `json:"-"`
	WorkerEnv []string    `json:"-"`
	// ForeignHosts are the hosts of other groups' tenants (none of this
	// group's): a request naming one here is answered 421.
	ForeignHosts []string `json:"foreign_hosts,omitempty"`
}

// listenerPlan is one listening address and the tenants on it.
type listenerPlan struct {
	Addr    string   `json:"addr"`
	TLS     bool     `json:"tls"`     // some tenant on it has a certificate (then all have)
	Tenants []string `json:"tenants"` // names, in config order
}

// tenantPlan is one [[tenant]], checked, paths absolute, defaults filled in.
type tenantPlan struct {
	Name    string   `json:"name"`
	Group   string   `json:"group"`
	Handler string   `json:"handler"`
	Listen  []string `json:"listen"`
	Hosts   []string `json:"hosts,omitempty"`
	TLSCert string   `json:"tls_cert,omitempty"`
	TLSKey  string   `json:"tls_key,omitempty"`
	limits
	MaxConns int               `json:"max_conns"`
	Env      []string          `json:"env,omitempty"` // KEY=value, sorted
	Config   map[string]string `json:"config,omitempty"`
	Mount    string            `json:"mount,omitempty"`
	User     string            `json:"-"` // the group's worker user, USER[:GROUP]
	files                      // read by the master for the workers

	who               string // `tenant "NAME"` (or `tenant #N` without a name) in messages
	line, handlerLine int    // where it is in the file, for prepare's messages
	workersSet        bool
	workers           int
	groupBudget       string // group_memory_budget ("": not set)
}

// Defaults of a tenant's keys: the same as serve's flags.
const (
	defMemoryLimit  = 128 << 20
	defTimeout      = 30 * time.Second
	defReadTimeout  = 30 * time.Second
	defWriteTimeout = 30 * time.Second
	defIdleTimeout  = 60 * time.Second
	defInstances    = 64
	defMinInstances = 2
	defaultGroup    = "default"
)

// A new connection's wait for its first byte, and the bound on how many wait
// at once per worker; an incomplete message's wait for its rest; a draining
// worker's wait for a kept-alive client's next request.
const (
	defFirstByteTimeout = 20 * time.Second
	defFirstByteLimit   = 8192
	defPartialTimeout   = 30 * time.Second
	defDrainGrace       = time.Second
)

// Addrs are the group's listening addresses, in listener-index order.
func (g *groupPlan) Addrs() []string {
	addrs := make([]string, len(g.Listeners))
	for i, l := range g.Listeners {
		addrs[i] = l.Addr
	}
	return addrs
}

// groups returns the plan of every worker group.
func (c *fileConfig) groups() []groupPlan { return c.Groups }

// dispatchConfig is the master's configuration of group g; the caller sets
// WorkerConfig (g as JSON, or a wrapper holding it) and Logger.
func (c *fileConfig) dispatchConfig(g *groupPlan) dispatch.Config {
	cl := c.Cluster
	return dispatch.Config{
		Name: g.Name, Listen: g.Addrs(), Workers: g.Workers, Sched: cl.Sched,
		Backlog: cl.Backlog, MaxConns: cl.MaxConns, QueueSize: cl.QueueSize, QueueTimeout: cl.QueueTimeout,
		ShutdownTimeout: cl.ShutdownTimeout, WorkerTimeout: cl.WorkerTimeout,
		MaxRequests: cl.MaxRequests, MaxMemory: cl.MaxWorkerMemory,
	}
}

// options are the host.Options of tenant t in a worker.
func (t *tenantPlan) options(wasm []byte, cacheDir string, workerID int, log *slog.Logger) host.Options {
	o := t.limits.options(wasm, t.Name, cacheDir, workerID, log.With("tenant", t.Name))
	o.Env, o.Config, o.Mount = t.Env, t.Config, t.Mount
	return o
}

// prepare compiles every tenant's module as the workers will (filling the
// compilation cache) and checks it can be served; the error names each
// tenant whose module cannot, one per line. The master calls it before
// starting workers, and on reload before replacing them.
func (c *fileConfig) prepare(ctx context.Context, log *slog.Logger) error {
	var errs []string
	for i := range c.Tenants {
		t := &c.Tenants[i]
		wasm, err := readHandler(t.Handler)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s:%d: tenant %q: handler %s", c.Path, t.handlerLine, t.Name, handlerError(t.Handler, err)))
			continue
		}
		if _, err = host.Prepare(ctx, t.options(wasm, c.Cluster.CacheDir, 0, log)); err != nil {
			errs = append(errs, fmt.Sprintf("%s:%d: tenant %q: handler %s: %v", c.Path, t.handlerLine, t.Name, t.Handler, err))
		}
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "\n"))
	}
	return nil
}

// newRouter builds, in a worker, the Handler of each of the group's tenants
// and the Router over its listeners, from the handler, certificate and key
// bytes the master read (through the worker's configuration descriptor,
// never the environment).
func (g *groupPlan) newRouter(ctx context.Context, workerID int, budget *host.Budget, log *slog.Logger) (*host.Router, error) {
	tenants := map[string]*host.Tenant{}
	closeAll := func() {
		for _, t := range tenants {
			t.Handler.Close(ctx)
		}
	}
	for i := range g.Tenants {
		tp := &g.Tenants[i]
		wasm := tp.Wasm // read by the master
		if len(wasm) == 0 {
			var err error
			if wasm, err = readHandler(tp.Handler); err != nil {
				closeAll()
				return nil, fmt.Errorf("tenant %q: handler %s", tp.Name, handlerError(tp.Handler, err))
			}
		}
		t := &host.Tenant{Name: tp.Name, Hosts: tp.Hosts, MaxConns: tp.MaxConns}
		if tp.TLSCert != "" {
			cert, err := tp.keyPair(tp.TLSCert, tp.TLSKey)
			if err != nil {
				closeAll()
				return nil, fmt.Errorf("tenant %q: tls: %w", tp.Name, err)
			}
			t.Cert = &cert
		}
		o := tp.options(wasm, g.CacheDir, workerID, log)
		o.Budget, o.MemoryWait = budget, g.MemoryWait
		h, err := host.New(ctx, o)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("tenant %q: %w", tp.Name, err)
		}
		t.Handler = h
		tenants[tp.Name] = t
	}
	ls := make([]host.Listener, len(g.Listeners))
	for i, l := range g.Listeners {
		for _, name := range l.Tenants {
			ls[i].Tenants = append(ls[i].Tenants, tenants[name])
		}
	}
	r, err := host.NewRouter(ls, host.RouterOptions{Logger: log, ForeignHosts: g.ForeignHosts})
	if err != nil {
		closeAll()
		return nil, err
	}
	return r, nil
}

// checkConfigFile is `wcluster check --config FILE`: it loads and checks the
// file, compiles every tenant's module, and describes what would be served.
func checkConfigFile(ctx context.Context, path string, w io.Writer) error {
	c, err := loadConfig(path)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if err := c.prepare(ctx, log); err != nil {
		return err
	}
	fmt.Fprintf(w, "%s: ok, %d tenants in %d worker groups\n", path, len(c.Tenants), len(c.Groups))
	for _, g := range c.Groups {
		fmt.Fprintf(w, "group %s: %d workers, %s\n", g.Name, g.Workers, g.budgetWhy)
		for _, l := range g.Listeners {
			kind := "http"
			if l.TLS {
				kind = "tls"
			}
			var ts []string
			for _, name := range l.Tenants {
				for _, t := range g.Tenants {
					if t.Name == name {
						hosts := "default"
						if len(t.Hosts) > 0 {
							hosts = strings.Join(t.Hosts, ",")
						}
						ts = append(ts, fmt.Sprintf("%s (%s)", name, hosts))
					}
				}
			}
			fmt.Fprintf(w, "  %s %s: %s\n", kind, l.Addr, strings.Join(ts, ", "))
		}
		for _, t := range g.Tenants {
			fmt.Fprintf(w, "  tenant %s: %s\n", t.Name, t.limitsText())
		}
	}
	return nil
}

// limitsText says a tenant's time and memory limits, for check.
func (t *tenantPlan) limitsText() string {
	timeout := "no time limit"
	if t.Timeout > 0 {
		timeout = "time limit " + t.Timeout.String()
	}
	budget := "no guest memory budget of its own (the worker's applies)"
	if t.MemoryBudget > 0 {
		budget = "guest memory budget " + sizeText(t.MemoryBudget) + " per worker"
	}
	return fmt.Sprintf("%s, memory limit %s per instance, %s", timeout, sizeText(t.MemoryLimit), budget)
}

// loadConfig reads and checks a config file. The error, if any, lists every
// problem found, one per line, each as FILE:LINE: what is wrong.
func loadConfig(path string) (*fileConfig, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%s: no such file: pass the path of a TOML config file (see docs/config.md)", path)
		}
		return nil, err
	}
	var doc map[string]any
	if _, err := toml.Decode(string(src), &doc); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("%s:%d: %s (not valid TOML)", path, pe.Position.Line, pe.Message)
		}
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	cr := &configReader{file: path, dir: filepath.Dir(abs), lines: keyLines(string(src))}
	c := cr.read(doc)
	if len(cr.errs) > 0 {
		return nil, cr.err()
	}
	c.Path = path
	return c, nil
}

// configReader turns the decoded document into a fileConfig, collecting
// every problem with its line.
type configReader struct {
	file  string
	dir   string // the config file's directory: relative paths start here
	lines map[string]int
	errs  []configError
}

type configError struct {
	line int
	msg  string
}

func (cr *configReader) err() error {
	sort.SliceStable(cr.errs, func(i, j int) bool { return cr.errs[i].line < cr.errs[j].line })
	var b strings.Builder
	for i, e := range cr.errs {
		if i > 0 {
			b.WriteByte('\n')
		}
		if e.line > 0 {
			fmt.Fprintf(&b, "%s:%d: %s", cr.file, e.line, e.msg)
		} else {
			fmt.Fprintf(&b, "%s: %s", cr.file, e.msg)
		}
	}
	return errors.New(b.String())
}

// line is where path (as keyLines names it) is defined, or its nearest
// ancestor.
func (cr *configReader) line(path string) int {
	for path != "" {
		if l, ok := cr.lines[path]; ok {
			return l
		}
		i := strings.LastIndexByte(path, '.')
		if i < 0 {
			break
		}
		path = path[:i]
	}
	return 0
}

// section is a table being read: where its keys are, and whose they are in
// messages.
type section struct {
	cr     *configReader
	at     string // keyLines path: "cluster", "tenant.1"
	who    string // `[cluster]`, `tenant "shop"`
	values map[string]any
}

func (s *section) errorf(key, format string, args ...any) {
	at := s.at
	if key != "" {
		at += "." + key
	}
	s.cr.errs = append(s.cr.errs, configError{s.cr.line(at), s.who + ": " + fmt.Sprintf(format, args...)})
}

// unknown reports every key of the table not in known, suggesting the
// nearest known one.
func (s *section) unknown(known ...string) {
	keys := slices.Sorted(maps.Keys(s.values))
	for _, k := range keys {
		if slices.Contains(known, k) {
			continue
		}
		hint := "remove it"
		if near := nearest(k, known); near != "" {
			hint = fmt.Sprintf("did you mean %q?", near)
		}
		s.errorf(k, "unknown key %q: %s (known keys: %s)", k, hint, strings.Join(known, ", "))
	}
}

func nearest(k string, known []string) string {
	best, bestD := "", 3
	for _, c := range known {
		if d := editDistance(strings.ToLower(k), c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

func tomlType(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case []any:
		return "an array"
	case map[string]any:
		return "a table"
	case []map[string]any:
		return "an array of tables"
	}
	return fmt.Sprintf("a %T", v)
}

func (s *section) has(key string) bool { _, ok := s.values[key]; return ok }

func (s *section) str(key, def string) string {
	v, ok := s.values[key]
	if !ok {
		return def
	}
	str, ok := v.(string)
	if !ok {
		s.errorf(key, "%s must be a string, not %s: quote it", key, tomlType(v))
		return def
	}
	return str
}

// int reads an integer of at least lo.
func (s *section) int(key string, def, lo int) int {
	v, ok := s.values[key]
	if !ok {
		return def
	}
	n, ok := v.(int64)
	if !ok {
		s.errorf(key, "%s must be an integer, not %s", key, tomlType(v))
		return def
	}
	if n < int64(lo) || n > 1<<31 {
		s.errorf(key, "%s = %d is out of range: give at least %d", key, n, lo)
		return def
	}
	return int(n)
}

func (s *section) duration(key string, def time.Duration) time.Duration {
	v, ok := s.values[key]
	if !ok {
		return def
	}
	str, ok := v.(string)
	if !ok {
		s.errorf(key, "%s must be a duration string such as \"30s\" or \"1m30s\", not %s", key, tomlType(v))
		return def
	}
	d, err := time.ParseDuration(str)
	if err != nil || d < 0 {
		s.errorf(key, "%s = %q is not a duration: write it as \"30s\", \"500ms\" or \"1m30s\" (\"0s\" for none)", key, str)
		return def
	}
	return d
}

// budget reads a guest memory budget per worker: "auto", 0 or a size.
func (s *section) budget(key string) string {
	v, ok := s.values[key]
	if !ok {
		return ""
	}
	var spec string
	switch x := v.(type) {
	case int64:
		spec = strconv.FormatInt(x, 10)
	case string:
		spec = x
	default:
		s.errorf(key, "%s must be a size such as \"1GiB\", \"auto\" or 0 (none), not %s", key, tomlType(v))
		return ""
	}
	if _, err := parseGuestBudget(spec, 1); err != nil {
		s.errorf(key, "%s: %v", key, err)
		return ""
	}
	return spec
}

func (s *section) size(key string, def uint64) uint64 {
	v, ok := s.values[key]
	if !ok {
		return def
	}
	switch x := v.(type) {
	case int64:
		if x < 0 {
			s.errorf(key, "%s = %d: a size cannot be negative", key, x)
			return def
		}
		return uint64(x)
	case string:
		n, err := parseSize(x)
		if err != nil {
			s.errorf(key, "%s: %v", key, err)
			return def
		}
		return n
	}
	s.errorf(key, "%s must be a size such as \"64MiB\", not %s", key, tomlType(v))
	return def
}

// strings reads an array of strings; a single string is taken as one.
func (s *section) strings(key string) []string {
	v, ok := s.values[key]
	if !ok {
		return nil
	}
	if str, ok := v.(string); ok {
		return []string{str}
	}
	arr, ok := v.([]any)
	if !ok {
		s.errorf(key, "%s must be an array of strings such as [\"a\", \"b\"], not %s", key, tomlType(v))
		return nil
	}
	out := make([]string, 0, len(arr))
	for i, e := range arr {
		str, ok := e.(string)
		if !ok {
			s.errorf(key, "%s[%d] must be a string, not %s", key, i, tomlType(e))
			continue
		}
		out = append(out, str)
	}
	return out
}

// table reads a sub-table whose values are all strings.
func (s *section) stringTable(key string) map[string]string {
	v, ok := s.values[key]
	if !ok {
		return nil
	}
	m, ok := v.(map[string]any)
	if !ok {
		s.errorf(key, "%s must be a table of strings, e.g. %s = { KEY = \"value\" }, not %s", key, key, tomlType(v))
		return nil
	}
	out := make(map[string]string, len(m))
	for k, e := range m {
		str, ok := e.(string)
		if !ok {
			s.errorf(key+"."+k, "%s.%s must be a string, not %s: quote it", key, k, tomlType(e))
			continue
		}
		out[k] = str
	}
	return out
}

// path reads a file path, relative to the config file's directory.
func (s *section) path(key string) string {
	p := s.str(key, "")
	if p == "" {
		return ""
	}
	if strings.HasPrefix(p, "~/") {
		if home, err := os.UserHomeDir(); err == nil {
			p = filepath.Join(home, p[2:])
		}
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(s.cr.dir, p)
	}
	return filepath.Clean(p)
}

var (
	nameRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
	envKeyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	hostRE   = regexp.MustCompile(`^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$`)
)

var (
	clusterKeys = []string{"workers", "sched", "backlog", "max_conns", "queue_size", "queue_timeout",
		"shutdown_timeout", "worker_timeout", "max_requests", "max_worker_memory", "cache_dir", "log_level", "log_format", "control", "admin",
		"guest_memory_budget", "user", "worker_env", "worker_sandbox"}
	tenantKeys = []string{"name", "handler", "listen", "hosts", "tls", "group", "workers", "memory_limit",
		"timeout", "read_timeout", "write_timeout", "idle_timeout", "instances", "instances_min", "max_reuse",
		"instance_mode", "max_conns", "env", "config", "mount", "guest_memory_budget", "group_memory_budget",
		"first_byte_timeout", "first_byte_limit", "partial_timeout", "drain_grace", "user", "upstream", "guest_config"}
)

func (cr *configReader) read(doc map[string]any) *fileConfig {
	c := &fileConfig{}
	top := &section{cr: cr, at: "", who: "top level", values: doc}
	for _, k := range slices.Sorted(maps.Keys(doc)) {
		if k != "cluster" && k != "tenant" {
			hint := "the file holds a [cluster] table and [[tenant]] entries"
			if near := nearest(k, []string{"cluster", "tenant"}); near != "" {
				hint = fmt.Sprintf("did you mean %q? (%s)", near, hint)
			}
			cr.errs = append(cr.errs, configError{cr.line(k), fmt.Sprintf("unknown table or key %q: %s", k, hint)})
		}
	}
	c.Cluster = cr.readCluster(top)

	var tenants []map[string]any
	switch v := doc["tenant"].(type) {
	case nil:
	case []map[string]any:
		tenants = v
	default:
		cr.errs = append(cr.errs, configError{cr.line("tenant"), fmt.Sprintf("tenant must be an array of tables ([[tenant]] entries), not %s", tomlType(v))})
	}
	if len(tenants) == 0 && doc["tenant"] == nil {
		cr.errs = append(cr.errs, configError{0, "no [[tenant]]: add at least one, with a name, a handler and a listen address"})
	}
	names := map[string]int{}
	for i, tv := range tenants {
		t := cr.readTenant(i, tv)
		if t.Name != "" {
			if prev, dup := names[t.Name]; dup {
				cr.errs = append(cr.errs, configError{cr.line(fmt.Sprintf("tenant.%d.name", i)),
					fmt.Sprintf("tenant %q: the name is already used by the tenant at line %d: give each tenant its own name", t.Name, prev)})
			} else {
				names[t.Name] = cr.line(fmt.Sprintf("tenant.%d.name", i))
			}
		}
		c.Tenants = append(c.Tenants, t)
	}
	cr.plan(c)
	return c
}

func (cr *configReader) readCluster(top *section) clusterConfig {
	cl := clusterConfig{
		Workers: defaultWorkers(), Sched: dispatch.SchedRR, Backlog: 511, MaxConns: 10000,
		QueueTimeout: 10 * time.Second, ShutdownTimeout: 10 * time.Second, WorkerTimeout: 30 * time.Second,
		CacheDir: defaultCacheDir(), LogLevel: "info", LogFormat: "text",
	}
	v, ok := top.values["cluster"]
	if !ok {
		return cl
	}
	m, ok := v.(map[string]any)
	if !ok {
		top.errorf("cluster", "cluster must be a table ([cluster]), not %s", tomlType(v))
		return cl
	}
	s := &section{cr: cr, at: "cluster", who: "[cluster]", values: m}
	s.unknown(clusterKeys...)
	cl.Workers = s.int("workers", cl.Workers, 1)
	if sched := s.str("sched", string(cl.Sched)); sched != "" {
		p, err := dispatch.ParseSched(sched)
		if err != nil {
			s.errorf("sched", "sched = %q: use \"rr\", \"shared\" or \"reuseport\"", sched)
		} else {
			cl.Sched = p
		}
	}
	cl.Backlog = s.int("backlog", cl.Backlog, 1)
	cl.MaxConns = s.int("max_conns", cl.MaxConns, 1)
	cl.QueueSize = s.int("queue_size", cl.QueueSize, 0)
	cl.QueueTimeout = s.duration("queue_timeout", cl.QueueTimeout)
	cl.ShutdownTimeout = s.duration("shutdown_timeout", cl.ShutdownTimeout)
	cl.WorkerTimeout = s.duration("worker_timeout", cl.WorkerTimeout)
	cl.MaxRequests = s.int("max_requests", 0, 0)
	cl.MaxWorkerMemory = s.size("max_worker_memory", 0)
	cl.GuestBudget = s.budget("guest_memory_budget")
	if s.has("cache_dir") {
		cl.CacheDir = s.path("cache_dir") // "" disables the cache
	}
	cl.LogLevel = s.str("log_level", cl.LogLevel)
	if _, err := parseLevel(cl.LogLevel); err != nil {
		s.errorf("log_level", "log_level = %q: use \"debug\", \"info\", \"warn\" or \"error\"", cl.LogLevel)
	}
	cl.LogFormat = s.str("log_format", cl.LogFormat)
	if cl.LogFormat != "text" && cl.LogFormat != "json" {
		s.errorf("log_format", "log_format = %q: use \"text\" or \"json\"", cl.LogFormat)
	}
	cl.Control = s.path("control")
	cl.User = s.str("user", "")
	if _, err := lookupUser(cl.User); err != nil {
		s.errorf("user", "%v", err)
	}
	cl.WorkerEnv = s.strings("worker_env")
	for _, name := range cl.WorkerEnv {
		if !envKeyRE.MatchString(name) {
			s.errorf("worker_env", "worker_env %q is not a variable name: list names, e.g. [\"HTTP_PROXY\"]", name)
		}
	}
	if v, ok := s.values["worker_sandbox"]; ok {
		on, isBool := v.(bool)
		if !isBool {
			s.errorf("worker_sandbox", "worker_sandbox must be true or false, not %s", tomlType(v))
		}
		cl.SandboxOff = isBool && !on
	}
	if cl.Admin = s.str("admin", ""); cl.Admin != "" {
		if err := checkAddr(cl.Admin); err != nil {
			s.errorf("admin", "admin %q: %v", cl.Admin, err)
		}
	}
	return cl
}

func (cr *configReader) readTenant(i int, m map[string]any) tenantPlan {
	s := &section{cr: cr, at: fmt.Sprintf("tenant.%d", i), values: m}
	t := tenantPlan{line: cr.line(s.at)}
	t.Name = s.str("name", "")
	switch {
	case !s.has("name"):
		s.who = fmt.Sprintf("tenant #%d", i+1)
		s.errorf("", "no name: give it one with name = \"...\" (letters, digits, '.', '_', '-')")
	case !nameRE.MatchString(t.Name):
		s.who = fmt.Sprintf("tenant %q", t.Name)
		s.errorf("name", "bad name: use letters, digits, '.', '_' and '-', starting with a letter or digit")
	default:
		s.who = fmt.Sprintf("tenant %q", t.Name)
	}
	t.who = s.who
	s.unknown(tenantKeys...)

	t.handlerLine = cr.line(s.at + ".handler")
	t.Handler = s.path("handler")
	if !s.has("handler") {
		s.errorf("", "no handler: give the path of its .wasm module with handler = \"...\" (relative to this file's directory)")
	} else if t.Handler != "" {
		checkHandlerFile(s, t.Handler)
	}

	t.Listen = s.strings("listen")
	if len(t.Listen) == 0 && !s.has("listen") {
		s.errorf("", "no listen address: add listen = [\"host:port\"]")
	} else if len(t.Listen) == 0 {
		s.errorf("listen", "listen is empty: give at least one \"host:port\"")
	}
	seen := map[string]bool{}
	for _, a := range t.Listen {
		if err := checkAddr(a); err != nil {
			s.errorf("listen", "listen %q: %v", a, err)
		}
		if seen[a] {
			s.errorf("listen", "listen %q is given twice: list each address once", a)
		}
		seen[a] = true
	}
	t.Hosts = s.strings("hosts")
	for j, h := range t.Hosts {
		n := strings.ToLower(strings.TrimSuffix(h, "."))
		if !hostRE.MatchString(n) && net.ParseIP(n) == nil {
			s.errorf("hosts", "host %q is not a host name: give names like \"example.com\" or \"*.example.com\", without port or scheme", h)
		}
		t.Hosts[j] = n
	}

	if v, ok := m["tls"]; ok {
		tm, ok := v.(map[string]any)
		if !ok {
			s.errorf("tls", "tls must be a table: tls = { cert = \"cert.pem\", key = \"key.pem\" }, not %s", tomlType(v))
		} else {
			ts := &section{cr: cr, at: s.at + ".tls", who: s.who, values: tm}
			ts.unknown("cert", "key")
			t.TLSCert, t.TLSKey = ts.path("cert"), ts.path("key")
			if t.TLSCert == "" || t.TLSKey == "" {
				ts.errorf("", "tls needs both cert and key: tls = { cert = \"cert.pem\", key = \"key.pem\" } (PEM files)")
			} else {
				checkCert(ts, t.TLSCert, t.TLSKey, t.Hosts)
			}
		}
	}

	t.Group = s.str("group", defaultGroup)
	if t.Group == "" || !nameRE.MatchString(t.Group) {
		s.errorf("group", "bad group name %q: use letters, digits, '.', '_' and '-'", t.Group)
		t.Group = defaultGroup
	}
	t.workersSet = s.has("workers")
	t.workers = s.int("workers", 0, 1)

	t.MemoryLimit = s.size("memory_limit", defMemoryLimit)
	if t.MemoryLimit < 64<<10 || t.MemoryLimit > 4<<30 {
		s.errorf("memory_limit", "memory_limit must be between 64KiB and 4GiB (one WebAssembly page to the whole 32-bit space)")
	}
	t.Timeout = s.duration("timeout", defTimeout)
	t.ReadTimeout = s.duration("read_timeout", defReadTimeout)
	t.WriteTimeout = s.duration("write_timeout", defWriteTimeout)
	t.IdleTimeout = s.duration("idle_timeout", defIdleTimeout)
	t.FirstByteTimeout = s.duration("first_byte_timeout", defFirstByteTimeout)
	t.FirstByteLimit = s.int("first_byte_limit", defFirstByteLimit, 0)
	t.PartialTimeout = s.duration("partial_timeout", defPartialTimeout)
	t.DrainGrace = s.duration("drain_grace", defDrainGrace)
	t.Instances = s.int("instances", defInstances, 1)
	t.MinInstances = s.int("instances_min", min(defMinInstances, t.Instances), 0)
	if t.MinInstances > t.Instances {
		s.errorf("instances_min", "instances_min = %d is above instances = %d: lower it, or raise instances", t.MinInstances, t.Instances)
	}
	t.MaxReuse = s.int("max_reuse", 0, 0)
	switch mode := s.str("instance_mode", "pooled"); mode {
	case "pooled":
	case "fresh":
		t.Fresh = true
	default:
		s.errorf("instance_mode", "instance_mode = %q: use \"pooled\" or \"fresh\"", mode)
	}
	t.MaxConns = s.int("max_conns", 0, 0)
	t.MemoryBudget = s.size("guest_memory_budget", 0)
	if t.MemoryBudget > 0 && t.MemoryBudget < 1<<20 {
		s.errorf("guest_memory_budget", "guest_memory_budget = %d bytes is too small: give at least \"1MiB\" (or leave it out for none)", t.MemoryBudget)
	}
	t.groupBudget = s.budget("group_memory_budget")

	env := s.stringTable("env")
	for _, k := range slices.Sorted(maps.Keys(env)) {
		if !envKeyRE.MatchString(k) {
			s.errorf("env."+k, "env key %q is not a variable name: use letters, digits and '_', not starting with a digit", k)
			continue
		}
		t.Env = append(t.Env, k+"="+env[k])
	}
	t.Config = s.stringTable("config")
	t.User = s.str("user", "")
	if _, err := lookupUser(t.User); err != nil {
		s.errorf("user", "%v", err)
	}
	var err error
	if t.Upstream, err = checkUpstream(s.str("upstream", "")); err != nil {
		s.errorf("upstream", "upstream: %v", err)
	}
	if t.GuestConfig, err = readGuestConfig(s.str("guest_config", ""), s.cr.dir); err != nil {
		s.errorf("guest_config", "guest_config: %v", err)
	}

	if s.has("mount") {
		t.Mount = s.path("mount")
		if t.Mount != "" {
			st, err := os.Stat(t.Mount)
			switch {
			case err != nil:
				s.errorf("mount", "mount %s: %v: give an existing directory (the guest sees it read-only at %s)", t.Mount, errText(err), host.MountPoint)
			case !st.IsDir():
				s.errorf("mount", "mount %s is not a directory: mount the directory holding it (the guest sees it at %s)", t.Mount, host.MountPoint)
			}
		}
	}
	return t
}

func errText(err error) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

func checkHandlerFile(s *section, path string) {
	wasm, err := readHandler(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		s.errorf("handler", "handler %s: no such file: build it, or fix the path (relative to this file's directory)", path)
	case err != nil:
		s.errorf("handler", "handler %s", handlerError(path, err))
	case len(wasm) < 4 || string(wasm[:4]) != "\x00asm":
		s.errorf("handler", "handler %s is not a WebAssembly module (no \\0asm magic): give a .wasm file", path)
	}
}

func checkAddr(a string) error {
	h, p, err := net.SplitHostPort(a)
	if err != nil {
		return fmt.Errorf("not host:port (%v): write e.g. \"0.0.0.0:8080\" or \":8080\"", err)
	}
	if n, err := strconv.Atoi(p); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("port %q is not a number from 0 to 65535", p)
	}
	if h != "" && net.ParseIP(h) == nil && h != "localhost" {
		return fmt.Errorf("listen on an IP address (or \"\" for all), not the name %q", h)
	}
	return nil
}

func checkCert(s *section, certFile, keyFile string, hosts []string) {
	ok := true
	for _, f := range []struct{ key, path string }{{"cert", certFile}, {"key", keyFile}} {
		if _, err := os.ReadFile(f.path); err != nil {
			s.errorf(f.key, "tls %s %s: %s: make it readable by wcluster", f.key, f.path, errText(err))
			ok = false
		}
	}
	if !ok {
		return
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		s.errorf("", "tls: cannot use %s with %s: %v: give a PEM certificate (chain) and its PEM private key", certFile, keyFile, err)
		return
	}
	for _, h := range hosts {
		name := h
		if strings.HasPrefix(h, "*.") {
			name = "x" + h[1:] // a name the wildcard stands for
		}
		if err := cert.Leaf.VerifyHostname(name); err != nil {
			s.errorf("cert", "tls cert %s does not cover host %q (it names %s): clients would reject it; use a certificate for that name",
				certFile, h, certNames(cert))
		}
	}
}

func certNames(c tls.Certificate) string {
	names := c.Leaf.DNSNames
	for _, ip := range c.Leaf.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 {
		return "no name"
	}
	return strings.Join(names, ", ")
}

// plan groups the tenants by listener and by worker group, and checks the
// rules across tenants: one default and one claimant per host per
// listener, one group per listener, a certificate for every tenant of a
// TLS listener, one worker count per group, no two listeners binding the
// same port.
func (cr *configReader) plan(c *fileConfig) {
	type listener struct {
		addr    string
		tenants []*tenantPlan
		line    int // of the first tenant's listen
	}
	var order []string
	byAddr := map[string]*listener{}
	for i := range c.Tenants {
		t := &c.Tenants[i]
		for _, a := range t.Listen {
			l := byAddr[a]
			if l == nil {
				l = &listener{addr: a, line: cr.line(fmt.Sprintf("tenant.%d.listen", i))}
				byAddr[a] = l
				order = append(order, a)
			}
			l.tenants = append(l.tenants, t)
		}
	}
	lineOf := func(t *tenantPlan, key string) int {
		for i := range c.Tenants {
			if &c.Tenants[i] == t {
				return cr.line(fmt.Sprintf("tenant.%d.%s", i, key))
			}
		}
		return 0
	}
	errAt := func(t *tenantPlan, key, format string, args ...any) {
		cr.errs = append(cr.errs, configError{lineOf(t, key), t.who + ": " + fmt.Sprintf(format, args...)})
	}

	listenerGroup := map[string]string{}
	for _, a := range order {
		l := byAddr[a]
		var def *tenantPlan
		hosts := map[string]*tenantPlan{}
		secure := slices.ContainsFunc(l.tenants, func(t *tenantPlan) bool { return t.TLSCert != "" })
		first := l.tenants[0]
		listenerGroup[a] = first.Group
		for _, t := range l.tenants {
			if t.Group != first.Group {
				errAt(t, "group", "shares listen %q with %s, but is in group %q, not %q: tenants of one listener must be in one worker group (the group's workers accept its connections); give them the same group, or this tenant its own listen address",
					a, first.who, t.Group, first.Group)
			}
			if secure && t.TLSCert == "" {
				var with string
				for _, o := range l.tenants {
					if o.TLSCert != "" {
						with = o.who
						break
					}
				}
				errAt(t, "listen", "listen %q is a TLS listener (%s has tls), but this tenant has no certificate: add tls = { cert = \"...\", key = \"...\" }, or listen elsewhere", a, with)
			}
			if len(t.Hosts) == 0 {
				if def != nil {
					errAt(t, "listen", "listen %q: %s is already the default there (no hosts): give one of them hosts = [\"...\"]", a, def.who)
				} else {
					def = t
				}
			}
			for _, h := range t.Hosts {
				if o := hosts[h]; o != nil && o != t {
					errAt(t, "hosts", "host %q on listen %q is already claimed by %s: a host name picks one tenant per listener", h, a, o.who)
				}
				hosts[h] = t
			}
		}
	}
	// Two different addresses binding one port: a wildcard and anything.
	for i, a := range order {
		ha, pa, _ := net.SplitHostPort(a)
		for _, b := range order[i+1:] {
			hb, pb, _ := net.SplitHostPort(b)
			if pa != pb || pa == "0" || pa == "" {
				continue
			}
			if isWildcard(ha) || isWildcard(hb) || ha == hb {
				l := byAddr[b]
				errAt(l.tenants[0], "listen", "listen %q and %q (of %s) bind the same port %s: use one address for both (tenants can share it), or different ports",
					b, a, byAddr[a].tenants[0].who, pa)
			}
		}
	}

	// Groups, in order of first appearance.
	byGroup := map[string]*groupPlan{}
	for i := range c.Tenants {
		t := &c.Tenants[i]
		g := byGroup[t.Group]
		if g == nil {
			c.Groups = append(c.Groups, groupPlan{Name: t.Group, Workers: c.Cluster.Workers,
				CacheDir: c.Cluster.CacheDir, LogLevel: c.Cluster.LogLevel, LogFormat: c.Cluster.LogFormat,
				User: c.Cluster.User, WorkerEnv: c.Cluster.WorkerEnv,
				Sandbox: sandboxPlan{Off: c.Cluster.SandboxOff, ReadPaths: []string{c.Cluster.CacheDir}}})
			g = &c.Groups[len(c.Groups)-1]
			byGroup[t.Group] = g
		}
	}
	// byGroup's pointers are stale once c.Groups grew: index by name again.
	byGroup = map[string]*groupPlan{}
	for i := range c.Groups {
		byGroup[c.Groups[i].Name] = &c.Groups[i]
	}
	workersFrom := map[string]*tenantPlan{}
	userFrom := map[string]*tenantPlan{}
	for i := range c.Tenants {
		t := &c.Tenants[i]
		g := byGroup[t.Group]
		g.Tenants = append(g.Tenants, *t)
		g.Sandbox.allowUpstream(t.Upstream)
		if t.Mount != "" {
			g.Sandbox.ReadPaths = append(g.Sandbox.ReadPaths, t.Mount)
		}
		if t.User != "" {
			if o := userFrom[t.Group]; o != nil && o.User != t.User {
				errAt(t, "user", "user = %q, but %s of the same group %q says %q: a group's workers run as one user; set it on one tenant, or make them agree",
					t.User, o.who, t.Group, o.User)
			} else if o == nil {
				userFrom[t.Group] = t
				g.User = t.User
			}
		}
		if t.workersSet && t.workers > 0 {
			if o := workersFrom[t.Group]; o != nil && o.workers != t.workers {
				errAt(t, "workers", "workers = %d, but %s of the same group %q says %d: a group has one worker count; set it on one tenant, or make them agree",
					t.workers, o.who, t.Group, o.workers)
			} else if o == nil {
				workersFrom[t.Group] = t
				g.Workers = t.workers
			}
		}
	}
	// Guest memory budgets: a group's own (group_memory_budget, on any of
	// its tenants, all agreeing), else [cluster]'s; the default is shared
	// by every worker of every group.
	total := 0
	for i := range c.Groups {
		total += c.Groups[i].Workers
	}
	budgetFrom := map[string]*tenantPlan{}
	for i := range c.Tenants {
		t := &c.Tenants[i]
		if t.groupBudget == "" {
			continue
		}
		if o := budgetFrom[t.Group]; o != nil && o.groupBudget != t.groupBudget {
			errAt(t, "group_memory_budget", "group_memory_budget = %q, but %s of the same group %q says %q: a group has one budget per worker; set it on one tenant, or make them agree",
				t.groupBudget, o.who, t.Group, o.groupBudget)
		} else if o == nil {
			budgetFrom[t.Group] = t
		}
	}
	for i := range c.Groups {
		g := &c.Groups[i]
		spec := c.Cluster.GuestBudget
		if t := budgetFrom[g.Name]; t != nil {
			spec = t.groupBudget
		}
		b, _ := parseGuestBudget(spec, total) // checked when read
		g.MemoryBudget, g.budgetWhy, g.MemoryWait = b.PerWorker, b.String(), c.Cluster.QueueTimeout
	}
	for _, a := range order {
		l := byAddr[a]
		g := byGroup[listenerGroup[a]]
		lp := listenerPlan{Addr: a}
		for _, t := range l.tenants {
			if t.Group == g.Name {
				lp.Tenants = append(lp.Tenants, t.Name)
				lp.TLS = lp.TLS || t.TLSCert != ""
			}
		}
		g.Listeners = append(g.Listeners, lp)
	}
	for i := range c.Groups {
		g := &c.Groups[i]
		own := map[string]bool{}
		for _, t := range g.Tenants {
			for _, h := range t.Hosts {
				own[strings.ToLower(h)] = true
			}
		}
		for _, t := range c.Tenants {
			for _, h := range t.Hosts {
				if t.Group != g.Name && !own[strings.ToLower(h)] {
					own[strings.ToLower(h)] = true
					g.ForeignHosts = append(g.ForeignHosts, h)
				}
			}
		}
	}
}

func isWildcard(h string) bool { return h == "" || h == "0.0.0.0" || h == "::" }

// keyLines maps every key and table header of a TOML document to the line
// defining it. Elements of arrays of tables are numbered from 0: the name of
// the second [[tenant]] is "tenant.1.name"; keys in an inline table are
// found under their table ("tenant.0.tls.cert"). The document must be valid
// TOML (the decoder checked it first); the scan only tracks strings,
// comments, brackets and headers.
func keyLines(src string) map[string]int {
	sc := &tomlScanner{s: src, line: 1, lines: map[string]int{}, arrays: map[string]int{}}
	sc.run()
	return sc.lines
}

type tomlScanner struct {
	s      string
	i      int
	line   int
	lines  map[string]int
	arrays map[string]int // header path without indices -> elements so far
}

func (sc *tomlScanner) peek(k int) byte {
	if sc.i+k < len(sc.s) {
		return sc.s[sc.i+k]
	}
	return 0
}

func (sc *tomlScanner) advance() {
	if sc.s[sc.i] == '\n' {
		sc.line++
	}
	sc.i++
}

// blank skips spaces and tabs, and with newlines also line ends and comments.
func (sc *tomlScanner) blank(newlines bool) {
	for sc.i < len(sc.s) {
		switch c := sc.s[sc.i]; {
		case c == ' ' || c == '\t' || c == '\r':
			sc.advance()
		case c == '#':
			for sc.i < len(sc.s) && sc.s[sc.i] != '\n' {
				sc.i++
			}
		case c == '\n' && newlines:
			sc.advance()
		default:
			return
		}
	}
}

func (sc *tomlScanner) record(path []string, line int) {
	for k := 1; k <= len(path); k++ {
		p := strings.Join(path[:k], ".")
		if _, ok := sc.lines[p]; !ok {
			sc.lines[p] = line
		}
	}
}

func (sc *tomlScanner) run() {
	var table []string
	for {
		sc.blank(true)
		if sc.i >= len(sc.s) {
			return
		}
		line := sc.line
		if sc.s[sc.i] == '[' {
			array := sc.peek(1) == '['
			sc.i++
			if array {
				sc.i++
			}
			sc.blank(false)
			keys := sc.key()
			table = sc.resolve(keys, array)
			sc.lines[strings.Join(table, ".")] = line
			sc.record(table, line)
			sc.restOfLine()
			continue
		}
		start := sc.i
		keys := sc.key()
		sc.blank(false)
		if sc.i < len(sc.s) && sc.s[sc.i] == '=' {
			sc.i++
		}
		path := append(slices.Clone(table), keys...)
		sc.record(path, line)
		sc.blank(false)
		sc.value(path)
		if sc.i == start {
			sc.advance() // not TOML: never loop in place
		}
		sc.restOfLine()
	}
}

func (sc *tomlScanner) restOfLine() {
	for sc.i < len(sc.s) && sc.s[sc.i] != '\n' {
		sc.advance()
	}
}

// resolve turns a header's keys into an indexed path: each prefix that is
// an array of tables refers to its latest element; a [[header]] adds one.
func (sc *tomlScanner) resolve(keys []string, array bool) []string {
	var out []string
	for k := range keys {
		raw := strings.Join(keys[:k+1], ".")
		out = append(out, keys[k])
		if array && k == len(keys)-1 {
			out = append(out, strconv.Itoa(sc.arrays[raw]))
			sc.arrays[raw]++
		} else if n := sc.arrays[raw]; n > 0 {
			out = append(out, strconv.Itoa(n-1))
		}
	}
	return out
}

// key reads a dotted key: bare or quoted parts separated by dots.
func (sc *tomlScanner) key() []string {
	var parts []string
	for sc.i < len(sc.s) {
		sc.blank(false)
		if sc.i >= len(sc.s) {
			break
		}
		switch c := sc.s[sc.i]; {
		case c == '"' || c == '\'':
			parts = append(parts, sc.str())
		default:
			start := sc.i
			for sc.i < len(sc.s) && isBareKey(sc.s[sc.i]) {
				sc.i++
			}
			if sc.i == start {
				return parts
			}
			parts = append(parts, sc.s[start:sc.i])
		}
		sc.blank(false)
		if sc.i < len(sc.s) && sc.s[sc.i] == '.' {
			sc.i++
			continue
		}
		break
	}
	return parts
}

func isBareKey(c byte) bool {
	return c == '_' || c == '-' || '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
}

// str reads a string of any of TOML's four kinds and returns its text
// (escapes undone only as far as keys need: \" and \\).
func (sc *tomlScanner) str() string {
	q := sc.s[sc.i]
	multi := sc.peek(1) == q && sc.peek(2) == q
	if multi {
		sc.i += 3
	} else {
		sc.i++
	}
	var b strings.Builder
	for sc.i < len(sc.s) {
		c := sc.s[sc.i]
		switch {
		case c == '\\' && q == '"' && sc.i+1 < len(sc.s):
			sc.i++
			b.WriteByte(sc.s[sc.i])
			sc.advance()
			continue
		case c == q && !multi:
			sc.i++
			return b.String()
		case c == q && multi && sc.peek(1) == q && sc.peek(2) == q:
			sc.i += 3
			for sc.i < len(sc.s) && sc.s[sc.i] == q { // up to two quotes end the content
				sc.i++
			}
			return b.String()
		case c == '\n' && !multi:
			return b.String()
		}
		b.WriteByte(c)
		sc.advance()
	}
	return b.String()
}

// value skips one value, recording the keys of inline tables under path
// (and elements of arrays under path.N).
func (sc *tomlScanner) value(path []string) {
	if sc.i >= len(sc.s) {
		return
	}
	switch c := sc.s[sc.i]; c {
	case '"', '\'':
		sc.str()
	case '[':
		sc.i++
		for n := 0; ; n++ {
			sc.blank(true)
			if sc.i >= len(sc.s) {
				return
			}
			if sc.s[sc.i] == ']' {
				sc.i++
				return
			}
			start := sc.i
			sc.value(append(slices.Clone(path), strconv.Itoa(n)))
			sc.blank(true)
			if sc.i < len(sc.s) && sc.s[sc.i] == ',' {
				sc.i++
			} else if sc.i == start {
				sc.advance()
			}
		}
	case '{':
		sc.i++
		for {
			sc.blank(false)
			if sc.i >= len(sc.s) || sc.s[sc.i] == '\n' {
				return
			}
			if sc.s[sc.i] == '}' {
				sc.i++
				return
			}
			line := sc.line
			start := sc.i
			keys := sc.key()
			sc.blank(false)
			if sc.i < len(sc.s) && sc.s[sc.i] == '=' {
				sc.i++
			}
			sub := append(slices.Clone(path), keys...)
			sc.record(sub, line)
			sc.blank(false)
			sc.value(sub)
			sc.blank(false)
			if sc.i < len(sc.s) && sc.s[sc.i] == ',' {
				sc.i++
			} else if sc.i == start {
				sc.advance()
			}
		}
	default:
		for sc.i < len(sc.s) && !strings.ContainsRune(",]}\n#", rune(sc.s[sc.i])) {
			sc.i++
		}
	}
}
