// Package config owns wcluster's configuration: every default (Default),
// the command line's flags as defaults (Defaults.Set), the TOML file
// (Load) and the one-handler configuration built from flags alone (Single),
// their checks with FILE:LINE errors, and the plan both give: worker groups,
// their listeners and tenants, each tenant's limits. It also owns what the
// master reads for its workers (handler files, certificates) and checks
// about them (the workers' user, the guest memory budget). cmd/wcluster
// wires a Config to dispatch (the master) and host (the workers).
package config

import (
	"crypto/tls"
	"errors"
	"fmt"
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
	"github.com/wcluster/wcluster/internal/tomlpos"
)

// Config is a checked configuration: a file's, or one handler's from flags.
type Config struct {
	Path    string // the file ("": built from flags by Single)
	Cluster Cluster
	Tenants []Tenant // in file order
	Groups  []Group  // in order of first appearance; "default" among them
	// ACMECerts gives an ACME tenant's current certificates, one per host
	// in its order (the master's ACME manager).
	ACMECerts func(tenant string) ([]KeyPairPEM, error)
}

// Cluster is the [cluster] table (or serve's flags), defaults filled in.
type Cluster struct {
	Workers         int
	WorkerProcs     int // each worker's GOMAXPROCS (0: auto, see WorkerProcs)
	Sched           dispatch.Sched
	Backlog         int
	MaxConns        int
	QueueSize       int
	QueueTimeout    time.Duration
	ShutdownTimeout time.Duration
	WorkerTimeout   time.Duration
	TicketRotation  time.Duration // a new TLS session ticket key this often (0: never)
	MaxRequests     int
	MaxWorkerMemory uint64
	GuestBudget     string // guest_memory_budget: "auto", "0" or a size per worker
	CacheDir        string
	KVDir           string // the embedded key-value store ("": none)
	KVRedis         string // a Redis URL holding the store instead ("": the embedded one)
	LogLevel        string
	LogFormat       string // "text" or "json"
	Control         string
	Admin           string // address of /metrics, /healthz, /readyz ("": none)
	// User runs the workers of groups that do not say otherwise;
	// WorkerEnv, SandboxOff: see --worker-env, --worker-sandbox.
	User       string
	WorkerEnv  []string
	SandboxOff bool
	// DeferAcceptOff: --defer-accept=off (see Config.DeferAccept).
	DeferAcceptOff bool
}

// Group is one worker group: its own worker processes serving its own
// listeners. The master starts Workers workers listening on Addrs(); it
// passes the group (as JSON) to each, which builds its host.Router from it.
type Group struct {
	Name      string     `json:"name"` // "" for the one group of a configuration from flags
	Workers   int        `json:"workers"`
	Listeners []Listener `json:"listeners"` // in config order: ServeConn's listener index
	Tenants   []Tenant   `json:"tenants"`   // every tenant of the group, in config order
	CacheDir  string     `json:"cache_dir"`
	KVDir     string     `json:"kv_dir,omitempty"`
	KVRedis   string     `json:"kv_redis,omitempty"`
	LogLevel  string     `json:"log_level"`
	LogFormat string     `json:"log_format"`
	// MemoryBudget bounds the linear memory of all instances of one of the
	// group's workers (0: none); a call waits at most MemoryWait for room.
	MemoryBudget uint64        `json:"memory_budget"`
	MemoryWait   time.Duration `json:"memory_wait"`
	BudgetText   string        `json:"-"` // for check and the banner
	// Sandbox is what its workers apply to themselves; User, WorkerEnv:
	// who they run as and what of the master's environment they get.
	Sandbox   Sandbox  `json:"sandbox"`
	User      string   `json:"-"`
	WorkerEnv []string `json:"-"`
	// ForeignHosts are the hosts of other groups' tenants (none of this
	// group's): a request naming one here is answered 421.
	ForeignHosts []string `json:"foreign_hosts,omitempty"`
	// ACME: some tenant's certificate is from an ACME CA, so the group's
	// workers answer its challenges (on every plaintext listener).
	ACME bool `json:"acme,omitempty"`
	// Modules are the bytes of the group's handlers, once each, by
	// sha256 (hex), read by the master; a tenant names its own in Module.
	Modules map[string][]byte `json:"modules,omitempty"`
}

// Listener is one listening address and the tenants on it.
type Listener struct {
	Addr    string   `json:"addr"`
	TLS     bool     `json:"tls"`     // some tenant on it has a certificate (then all have)
	Tenants []string `json:"tenants"` // names, in config order
}

// Tenant is one [[tenant]] (or serve's handler), checked, defaults filled in.
type Tenant struct {
	Name    string   `json:"name"`
	Group   string   `json:"group"`
	Handler string   `json:"handler"` // "" is the embedded default handler
	Listen  []string `json:"listen"`
	Hosts   []string `json:"hosts,omitempty"`
	TLSCert string   `json:"tls_cert,omitempty"`
	TLSKey  string   `json:"tls_key,omitempty"`
	ACME    *ACME    `json:"acme,omitempty"` // tls = { acme = true }: from an ACME CA
	Limits
	MaxConns int               `json:"max_conns"`
	Env      []string          `json:"env,omitempty"` // KEY=value, sorted
	Config   map[string]string `json:"config,omitempty"`
	Mount    string            `json:"mount,omitempty"`
	User     string            `json:"-"` // the group's worker user, USER[:GROUP]
	Files                      // read by the master for the workers
	Module   string            `json:"module,omitempty"` // its handler in Group.Modules ("": the default)
	// HandlerLine is the line of its handler key, for messages about the
	// module (0 without a file).
	HandlerLine int `json:"-"`

	who         string // `tenant "NAME"` (or `tenant #N` without a name) in messages
	line        int
	workersSet  bool
	workers     int
	groupBudget string // group_memory_budget ("": not set)
}

// Limits are a tenant's guest limits (host.Options): from its keys, else
// from serve's flags, else from Default.
type Limits struct {
	MemoryLimit  uint64        `json:"memory_limit"`
	KVMaxValue   uint64        `json:"kv_max_value"` // bytes of one key-value store value
	KVQuota      uint64        `json:"kv_quota"`     // bytes of the tenant's store (0: none)
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
	// AccessLog is the format of the tenant's access log on the workers'
	// standard output: "off", "common" or "json".
	AccessLog string `json:"access_log"`
}

const defaultGroup = "default"

// ManyTenants is the number of tenants above which instances_min defaults
// to 0: a tenant's instances are made by its first request and closed
// again once it is idle.
const ManyTenants = 16

// Addrs are the group's listening addresses, in listener-index order.
func (g *Group) Addrs() []string {
	addrs := make([]string, len(g.Listeners))
	for i, l := range g.Listeners {
		addrs[i] = l.Addr
	}
	return addrs
}

// TerminatesTLS: some listener of the group serves TLS.
func (g *Group) TerminatesTLS() bool {
	for _, l := range g.Listeners {
		if l.TLS {
			return true
		}
	}
	return false
}

// Load reads and checks a config file; d gives what the file does not set.
// The error, if any, lists every problem found, one per line, each as
// FILE:LINE: what is wrong.
func Load(path string, d Defaults) (*Config, error) {
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
	cr := &configReader{file: path, dir: filepath.Dir(abs), lines: tomlpos.Lines(string(src)), def: d}
	c := cr.read(doc)
	if len(cr.errs) > 0 {
		return nil, cr.err()
	}
	c.Path = path
	return c, nil
}

// configReader turns the decoded document into a Config, collecting
// every problem with its line.
type configReader struct {
	file  string
	dir   string // the config file's directory: relative paths start here
	lines map[string]int
	errs  []configError
	def   Defaults // what the file does not set
	// handlers are the handler files read so far and what was wrong with
	// each (nil: a module), so that thousands of tenants naming one file
	// read it once.
	handlers map[string]error
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

// line is where path (as tomlpos.Lines names it) is defined, or its nearest
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
	at     string // tomlpos.Lines path: "cluster", "tenant.1"
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
func (s *section) budget(key, def string) string {
	v, ok := s.values[key]
	if !ok {
		return def
	}
	var spec string
	switch x := v.(type) {
	case int64:
		spec = strconv.FormatInt(x, 10)
	case string:
		spec = x
	default:
		s.errorf(key, "%s must be a size such as \"1GiB\", \"auto\" or 0 (none), not %s", key, tomlType(v))
		return def
	}
	if _, err := ParseGuestBudget(spec, 1); err != nil {
		s.errorf(key, "%s: %v", key, err)
		return def
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
		n, err := ParseSize(x)
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
	clusterKeys = []string{"workers", "worker_procs", "sched", "backlog", "max_conns", "queue_size", "queue_timeout",
		"shutdown_timeout", "worker_timeout", "max_requests", "max_worker_memory", "cache_dir", "log_level", "log_format", "control", "admin",
		"guest_memory_budget", "user", "worker_env", "worker_sandbox", "defer_accept", "tls_ticket_rotation", "kv_dir", "kv_redis"}
	tenantKeys = []string{"name", "handler", "listen", "hosts", "tls", "group", "workers", "memory_limit", "kv_max_value", "kv_quota",
		"timeout", "read_timeout", "write_timeout", "idle_timeout", "instances", "instances_min", "max_reuse",
		"instance_mode", "max_conns", "env", "config", "mount", "guest_memory_budget", "group_memory_budget",
		"first_byte_timeout", "first_byte_limit", "partial_timeout", "drain_grace", "user", "upstream", "guest_config", "access_log"}
)

func (cr *configReader) read(doc map[string]any) *Config {
	c := &Config{}
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
	if len(tenants) > ManyTenants && cr.def.Limits.MinInstances == Default().Limits.MinInstances {
		// Most of many tenants are idle at any moment: their instances are
		// made on demand (see docs/config.md).
		cr.def.Limits.MinInstances = 0
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

func (cr *configReader) readCluster(top *section) Cluster {
	cl := cr.def.Cluster
	cl.WorkerEnv = slices.Clone(cl.WorkerEnv)
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
	if v, ok := s.values["worker_procs"].(string); ok {
		if v != "auto" {
			s.errorf("worker_procs", "worker_procs = %q: use \"auto\" or a number of threads ≥ 1", v)
		}
		cl.WorkerProcs = 0
	} else {
		cl.WorkerProcs = s.int("worker_procs", cl.WorkerProcs, 1)
	}
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
	cl.TicketRotation = s.duration("tls_ticket_rotation", cl.TicketRotation)
	cl.MaxRequests = s.int("max_requests", cl.MaxRequests, 0)
	cl.MaxWorkerMemory = s.size("max_worker_memory", cl.MaxWorkerMemory)
	cl.GuestBudget = s.budget("guest_memory_budget", cl.GuestBudget)
	if s.has("cache_dir") {
		cl.CacheDir = s.path("cache_dir") // "" disables the cache
	}
	if s.has("kv_dir") {
		cl.KVDir = s.path("kv_dir") // "" disables the store
	}
	cl.LogLevel = s.str("log_level", cl.LogLevel)
	if _, err := ParseLevel(cl.LogLevel); err != nil {
		s.errorf("log_level", "log_level = %q: use \"debug\", \"info\", \"warn\" or \"error\"", cl.LogLevel)
	}
	cl.LogFormat = s.str("log_format", cl.LogFormat)
	if cl.LogFormat != "text" && cl.LogFormat != "json" {
		s.errorf("log_format", "log_format = %q: use \"text\" or \"json\"", cl.LogFormat)
	}
	if s.has("control") {
		cl.Control = s.path("control")
	}
	cl.User = s.str("user", cl.User)
	if _, err := LookupUser(cl.User); err != nil {
		s.errorf("user", "%v", err)
	}
	if s.has("worker_env") {
		cl.WorkerEnv = s.strings("worker_env")
	}
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
	if v, ok := s.values["defer_accept"]; ok {
		on, isBool := v.(bool)
		if !isBool {
			s.errorf("defer_accept", "defer_accept must be true or false, not %s", tomlType(v))
		}
		cl.DeferAcceptOff = isBool && !on
	}
	if cl.KVRedis = s.str("kv_redis", cl.KVRedis); cl.KVRedis != "" {
		if err := CheckRedisURL(cl.KVRedis); err != nil {
			s.errorf("kv_redis", "kv_redis: %v", err)
		}
	}
	if cl.Admin = s.str("admin", cl.Admin); cl.Admin != "" {
		if err := checkAddr(cl.Admin); err != nil {
			s.errorf("admin", "admin %q: %v", cl.Admin, err)
		}
	}
	return cl
}

func (cr *configReader) readTenant(i int, m map[string]any) Tenant {
	s := &section{cr: cr, at: fmt.Sprintf("tenant.%d", i), values: m}
	t := Tenant{line: cr.line(s.at)}
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

	t.HandlerLine = cr.line(s.at + ".handler")
	t.Handler = s.path("handler")
	if !s.has("handler") {
		s.errorf("", "no handler: give the path of its .wasm module with handler = \"...\" (relative to this file's directory)")
	} else if t.Handler != "" {
		checkHandlerFile(s, t.Handler)
	}

	t.Listen = s.strings("listen")
	if !s.has("listen") && cr.def.Listen != "" {
		t.Listen = []string{cr.def.Listen} // serve --listen
	}
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
			ts.unknown(append([]string{"cert", "key"}, acmeKeys...)...)
			acme, isBool := tm["acme"].(bool)
			if v, ok := tm["acme"]; ok && !isBool {
				ts.errorf("acme", "tls acme must be true or false, not %s", tomlType(v))
			}
			if acme {
				readACME(ts, &t)
			} else if extra := slices.DeleteFunc(slices.Clone(acmeKeys), func(k string) bool { return k == "acme" || !ts.has(k) }); len(extra) > 0 {
				ts.errorf(extra[0], "tls %s is for a certificate from an ACME CA: add acme = true, or drop it", extra[0])
			} else if t.TLSCert, t.TLSKey = ts.path("cert"), ts.path("key"); t.TLSCert == "" || t.TLSKey == "" {
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

	dl := cr.def.Limits
	t.KVMaxValue = s.size("kv_max_value", dl.KVMaxValue)
	t.KVQuota = s.size("kv_quota", dl.KVQuota)
	t.MemoryLimit = s.size("memory_limit", dl.MemoryLimit)
	if t.MemoryLimit < 64<<10 || t.MemoryLimit > 4<<30 {
		s.errorf("memory_limit", "memory_limit must be between 64KiB and 4GiB (one WebAssembly page to the whole 32-bit space)")
	}
	t.Timeout = s.duration("timeout", dl.Timeout)
	t.ReadTimeout = s.duration("read_timeout", dl.ReadTimeout)
	t.WriteTimeout = s.duration("write_timeout", dl.WriteTimeout)
	t.IdleTimeout = s.duration("idle_timeout", dl.IdleTimeout)
	t.FirstByteTimeout = s.duration("first_byte_timeout", dl.FirstByteTimeout)
	t.FirstByteLimit = s.int("first_byte_limit", dl.FirstByteLimit, 0)
	t.PartialTimeout = s.duration("partial_timeout", dl.PartialTimeout)
	t.DrainGrace = s.duration("drain_grace", dl.DrainGrace)
	t.AccessLog = s.str("access_log", dl.AccessLog)
	if err := CheckAccessLog(t.AccessLog); err != nil {
		s.errorf("access_log", "access_log = %q: %v", t.AccessLog, err)
	}
	t.Instances = s.int("instances", dl.Instances, 1)
	t.MinInstances = s.int("instances_min", min(dl.MinInstances, t.Instances), 0)
	if t.MinInstances > t.Instances {
		s.errorf("instances_min", "instances_min = %d is above instances = %d: lower it, or raise instances", t.MinInstances, t.Instances)
	}
	t.MaxReuse = s.int("max_reuse", dl.MaxReuse, 0)
	switch mode := s.str("instance_mode", map[bool]string{false: "pooled", true: "fresh"}[dl.Fresh]); mode {
	case "pooled":
		t.Fresh = false
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
	t.groupBudget = s.budget("group_memory_budget", "")

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
	if _, err := LookupUser(t.User); err != nil {
		s.errorf("user", "%v", err)
	}
	var err error
	if t.Upstream, err = CheckUpstream(s.str("upstream", "")); err != nil {
		s.errorf("upstream", "upstream: %v", err)
	}
	if t.GuestConfig, err = ReadGuestConfig(s.str("guest_config", ""), s.cr.dir); err != nil {
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

// errNoMagic: a handler file that is not a WebAssembly module.
var errNoMagic = errors.New("no \\0asm magic")

func checkHandlerFile(s *section, path string) {
	err, seen := s.cr.handlers[path]
	if !seen {
		var wasm []byte
		if wasm, err = ReadHandler(path); err == nil && (len(wasm) < 4 || string(wasm[:4]) != "\x00asm") {
			err = errNoMagic
		}
		if s.cr.handlers == nil {
			s.cr.handlers = map[string]error{}
		}
		s.cr.handlers[path] = err
	}
	switch {
	case errors.Is(err, os.ErrNotExist):
		s.errorf("handler", "handler %s: no such file: build it, or fix the path (relative to this file's directory)", path)
	case err == errNoMagic:
		s.errorf("handler", "handler %s is not a WebAssembly module (no \\0asm magic): give a .wasm file", path)
	case err != nil:
		s.errorf("handler", "handler %s", HandlerError(path, err))
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
func (cr *configReader) plan(c *Config) {
	type listener struct {
		addr    string
		tenants []*Tenant
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
	lineOf := func(t *Tenant, key string) int {
		for i := range c.Tenants {
			if &c.Tenants[i] == t {
				return cr.line(fmt.Sprintf("tenant.%d.%s", i, key))
			}
		}
		return 0
	}
	errAt := func(t *Tenant, key, format string, args ...any) {
		cr.errs = append(cr.errs, configError{lineOf(t, key), t.who + ": " + fmt.Sprintf(format, args...)})
	}

	listenerGroup := map[string]string{}
	for _, a := range order {
		l := byAddr[a]
		var def *Tenant
		hosts := map[string]*Tenant{}
		secure := slices.ContainsFunc(l.tenants, (*Tenant).HasTLS)
		first := l.tenants[0]
		listenerGroup[a] = first.Group
		for _, t := range l.tenants {
			if t.Group != first.Group {
				errAt(t, "group", "shares listen %q with %s, but is in group %q, not %q: tenants of one listener must be in one worker group (the group's workers accept its connections); give them the same group, or this tenant its own listen address",
					a, first.who, t.Group, first.Group)
			}
			if secure && !t.HasTLS() {
				var with string
				for _, o := range l.tenants {
					if o.HasTLS() {
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
	// Each address is checked against the first before it on its port
	// (and the first wildcard), so thousands of listeners check in linear time.
	type portSeen struct {
		first, wildcard string            // addresses
		hosts           map[string]string // host → its first address
	}
	ports := map[string]*portSeen{}
	for _, b := range order {
		hb, pb, _ := net.SplitHostPort(b)
		if pb == "0" || pb == "" {
			continue
		}
		p := ports[pb]
		if p == nil {
			p = &portSeen{first: b, hosts: map[string]string{}}
			ports[pb] = p
		}
		a := p.hosts[hb] // another spelling of the same host
		switch {
		case a != "" || p.first == b:
		case isWildcard(hb):
			a = p.first
		case p.wildcard != "":
			a = p.wildcard
		}
		if a != "" {
			errAt(byAddr[b].tenants[0], "listen", "listen %q and %q (of %s) bind the same port %s: use one address for both (tenants can share it), or different ports",
				b, a, byAddr[a].tenants[0].who, pb)
		}
		if isWildcard(hb) && p.wildcard == "" {
			p.wildcard = b
		}
		if p.hosts[hb] == "" {
			p.hosts[hb] = b
		}
	}

	// Groups, in order of first appearance.
	byGroup := map[string]*Group{}
	for i := range c.Tenants {
		t := &c.Tenants[i]
		g := byGroup[t.Group]
		if g == nil {
			c.Groups = append(c.Groups, Group{Name: t.Group, Workers: c.Cluster.Workers,
				CacheDir: c.Cluster.CacheDir, KVDir: c.Cluster.KVDir, KVRedis: c.Cluster.KVRedis, LogLevel: c.Cluster.LogLevel, LogFormat: c.Cluster.LogFormat,
				User: c.Cluster.User, WorkerEnv: c.Cluster.WorkerEnv,
				Sandbox: Sandbox{Off: c.Cluster.SandboxOff, ReadPaths: []string{c.Cluster.CacheDir}, WritePaths: []string{c.Cluster.KVDir}}})
			g = &c.Groups[len(c.Groups)-1]
			if g.KVRedis != "" { // Redis holds the store: no file of it here
				g.KVDir, g.Sandbox.WritePaths = "", nil
				g.Sandbox.AllowUpstream(g.KVRedis)
			}
			byGroup[t.Group] = g
		}
	}
	// byGroup's pointers are stale once c.Groups grew: index by name again.
	byGroup = map[string]*Group{}
	for i := range c.Groups {
		byGroup[c.Groups[i].Name] = &c.Groups[i]
	}
	workersFrom := map[string]*Tenant{}
	userFrom := map[string]*Tenant{}
	for i := range c.Tenants {
		t := &c.Tenants[i]
		g := byGroup[t.Group]
		g.Tenants = append(g.Tenants, *t)
		g.Sandbox.AllowUpstream(t.Upstream)
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
	budgetFrom := map[string]*Tenant{}
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
		b, _ := ParseGuestBudget(spec, total) // checked when read
		g.MemoryBudget, g.BudgetText, g.MemoryWait = b.PerWorker, b.String(), c.Cluster.QueueTimeout
	}
	for _, a := range order {
		l := byAddr[a]
		g := byGroup[listenerGroup[a]]
		lp := Listener{Addr: a}
		for _, t := range l.tenants {
			if t.Group == g.Name {
				lp.Tenants = append(lp.Tenants, t.Name)
				lp.TLS = lp.TLS || t.HasTLS()
			}
		}
		g.Listeners = append(g.Listeners, lp)
	}
	acme := slices.ContainsFunc(c.Tenants, func(t Tenant) bool { return t.ACME != nil })
	for i := range c.Groups {
		g := &c.Groups[i]
		g.ACME = acme
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

// LimitsText says a tenant's time and memory limits, for check.
func (t *Tenant) LimitsText() string {
	timeout := "no time limit"
	if t.Timeout > 0 {
		timeout = "time limit " + t.Timeout.String()
	}
	budget := "no guest memory budget of its own (the worker's applies)"
	if t.MemoryBudget > 0 {
		budget = "guest memory budget " + SizeText(t.MemoryBudget) + " per worker"
	}
	return fmt.Sprintf("%s, memory limit %s per instance, %s", timeout, SizeText(t.MemoryLimit), budget)
}
