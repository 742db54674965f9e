package config

// What the master does with a plan before starting workers: their users
// checked, their configurations (with the files they need) made, and the
// words for the banner, check and reloads.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/wcluster/wcluster/dispatch"
	"github.com/wcluster/wcluster/host"
)

// Options are the host.Options of tenant t (in a worker, or compiled by
// the master as its workers will).
func (t *Tenant) Options(wasm []byte, cacheDir string, workerID int, log *slog.Logger) host.Options {
	l := &t.Limits
	return host.Options{
		Wasm: wasm, Name: t.Name, CacheDir: cacheDir, WorkerID: workerID,
		MemoryLimit: l.MemoryLimit, Timeout: l.Timeout,
		ReadTimeout: l.ReadTimeout, WriteTimeout: l.WriteTimeout, IdleTimeout: l.IdleTimeout,
		FirstByteTimeout: l.FirstByteTimeout, FirstByteLimit: l.FirstByteLimit,
		PartialTimeout: l.PartialTimeout, DrainGrace: l.DrainGrace,
		Instances: l.Instances, MinInstances: minInstances(l.MinInstances), MaxReuse: l.MaxReuse, Fresh: l.Fresh,
		MemoryBudget: l.MemoryBudget, Logger: log.With("tenant", t.Name), Upstream: l.Upstream, GuestConfig: l.GuestConfig,
		Env: t.Env, Config: t.Config, Mount: t.Mount, AccessLog: l.AccessLog,
	}
}

// minInstances is host.Options.MinInstances for instances_min n: host
// reads 0 as its default, and a negative number as none.
func minInstances(n int) int {
	if n <= 0 {
		return -1
	}
	return n
}

// in names where err is: the file and group, or for flags the flag.
func (c *Config) in(group string, err error) error {
	if c.Path == "" {
		return fmt.Errorf("--%w", err)
	}
	return fmt.Errorf("%s: group %q: %w", c.Path, group, err)
}

// Users are the workers' users of every group (nil: the master's own),
// checked: the master can start them, and bind for them under reuseport.
func (c *Config) Users() ([]*User, error) {
	users := make([]*User, len(c.Groups))
	for i, g := range c.Groups {
		u, err := LookupUser(g.User)
		if err == nil {
			err = u.CheckCanSwitch()
		}
		if err == nil {
			err = u.CheckReuseport(c.Cluster.Sched, g.Addrs())
		}
		if err != nil {
			return nil, c.in(g.Name, err)
		}
		users[i] = u
	}
	return users, nil
}

// ModuleError says what is wrong with tenant t's module: err from
// ReadWasm, or (compiling) from host.Prepare.
func (c *Config) ModuleError(t *Tenant, err error, compiling bool) string {
	switch {
	case c.Path != "" && compiling:
		return fmt.Sprintf("%s:%d: tenant %q: handler %s: %v", c.Path, t.HandlerLine, t.Name, t.Handler, err)
	case c.Path != "":
		return fmt.Sprintf("%s:%d: tenant %q: handler %s", c.Path, t.HandlerLine, t.Name, HandlerError(t.Handler, err))
	case compiling:
		return fmt.Sprintf("%s: %v", t.Name, err)
	case errors.Is(err, os.ErrNotExist):
		return fmt.Sprintf("%s: no such file: pass the path of a .wasm handler (or none for the default)", t.Handler)
	}
	return HandlerError(t.Handler, err)
}

// Masters are dispatch's configurations of every group (the caller sets
// Logger), each passing its workers the group: its own tenants only, with
// the bytes of their handlers, certificates and keys, which the workers'
// user or sandbox may not let them read.
func (c *Config) Masters() ([]dispatch.Config, error) {
	var out []dispatch.Config
	cl := c.Cluster
	handlers := HandlerFiles{}
	all := 0
	for _, g := range c.Groups {
		all += g.Workers
	}
	for i := range c.Groups {
		g := c.Groups[i] // a copy: the files read stay out of c
		u, err := LookupUser(g.User)
		if err != nil {
			return nil, c.in(g.Name, err)
		}
		if err := u.ShareCache(g.CacheDir); err != nil {
			return nil, err
		}
		if err := u.ShareKVDir(g.KVDir); err != nil {
			return nil, err
		}
		g.Tenants = slices.Clone(g.Tenants)
		var certs []dispatch.Certificate
		g.Modules = map[string][]byte{}
		for j := range g.Tenants {
			t := &g.Tenants[j]
			where := t.Name
			if c.Path != "" {
				where = fmt.Sprintf("%s: tenant %q", c.Path, t.Name)
			}
			if err := u.CheckMount(t.Mount); err != nil {
				return nil, fmt.Errorf("%s: %w", where, err)
			}
			wasm, sum, err := handlers.read(t)
			if err != nil {
				return nil, fmt.Errorf("%s: handler %s", where, HandlerError(t.Handler, err))
			}
			// Each module's bytes once in the group, however many tenants
			// serve it (the embedded default: none, the worker has it).
			if HandlerBytes(t.Handler, wasm) != nil {
				t.Module, g.Modules[sum] = sum, wasm
			}
			if t.Files, err = ReadFiles(nil, t.TLSCert, t.TLSKey); err != nil {
				return nil, fmt.Errorf("%s: %w", where, err)
			}
			if t.ACME != nil {
				if err := c.acmeFiles(t); err != nil {
					return nil, fmt.Errorf("%s: %w", where, err)
				}
			}
			certs = append(certs, t.Files.certificates(t.Name)...)
		}
		tls := g.TerminatesTLS()
		procsFor := func(total int) int { return WorkerProcs(cl.WorkerProcs, total, tls) }
		wc, err := json.Marshal(&g)
		if err != nil {
			return nil, err
		}
		out = append(out, dispatch.Config{
			Name: g.Name, Listen: g.Addrs(), Workers: g.Workers, Procs: procsFor(all), ProcsFor: procsFor, Sched: cl.Sched,
			Backlog: cl.Backlog, MaxConns: cl.MaxConns, QueueSize: cl.QueueSize, QueueTimeout: cl.QueueTimeout,
			ShutdownTimeout: cl.ShutdownTimeout, WorkerTimeout: cl.WorkerTimeout,
			MaxRequests: cl.MaxRequests, MaxMemory: cl.MaxWorkerMemory,
			WorkerConfig: wc, WorkerEnv: g.WorkerEnv, Credential: u.Credential(),
			Certificates: certs,
		})
	}
	return out, nil
}

// DeferAccept sets, in each group's dispatch configuration (dcs, in the
// order of Masters), which listeners defer their connections until the
// client's first bytes (dispatch.Config.DeferAccept): those whose every
// tenant waits for the client to speak, that is, TLS listeners and those
// whose handlers (infos, by tenant in c.Tenants) do not speak first;
// none with --defer-accept=off.
func (c *Config) DeferAccept(dcs []dispatch.Config, infos []host.Info) {
	speaks := map[string]bool{}
	for i, t := range c.Tenants {
		if i < len(infos) {
			speaks[t.Name] = infos[i].SpeaksFirst
		} else {
			speaks[t.Name] = true // not known: do not defer
		}
	}
	for i := range dcs {
		g := &c.Groups[i]
		dcs[i].DeferAccept = make([]bool, len(g.Listeners))
		if c.Cluster.DeferAcceptOff {
			continue
		}
		for j, l := range g.Listeners {
			wait := true
			for _, name := range l.Tenants {
				wait = wait && (l.TLS || !speaks[name])
			}
			dcs[i].DeferAccept[j] = wait
		}
	}
}

// SameShape refuses a reload to next that changes what the master set up
// at start beside its groups: the control socket, the admin endpoint, its
// log and the ticket key rotation need a restart. Groups, listeners, users
// and everything workers build reload (dispatch.Cluster.Apply).
func (c *Config) SameShape(next *Config) error {
	a, b := &c.Cluster, &next.Cluster
	for _, k := range []struct {
		key    string
		before any
		after  any
	}{
		{"control", a.Control, b.Control}, {"admin", a.Admin, b.Admin},
		{"log_level", a.LogLevel, b.LogLevel}, {"log_format", a.LogFormat, b.LogFormat},
		{"tls_ticket_rotation", a.TicketRotation, b.TicketRotation},
	} {
		if k.before != k.after {
			return fmt.Errorf("%s: [cluster] %s changed (%v → %v): restart wcluster to apply that", next.Path, k.key, k.before, k.after)
		}
	}
	return nil
}

// Files are the files c serves from: the configuration file, the tenants'
// handlers (not the embedded one) and certificates; what serve --watch
// watches.
func (c *Config) Files() []string {
	var files []string
	if c.Path != "" {
		files = append(files, c.Path)
	}
	for _, t := range c.Tenants {
		for _, f := range []string{t.Handler, t.TLSCert, t.TLSKey} {
			if f != "" && !slices.Contains(files, f) {
				files = append(files, f)
			}
		}
	}
	return files
}

// WorkersChanged lists the groups of next whose `workers` the file changed
// since c (by group name), with the new count. A group the file did not
// change keeps its running count, which `wcluster scale` or TTIN/TTOU may
// have moved.
func (c *Config) WorkersChanged(next *Config) map[string]int {
	before := map[string]int{}
	for _, g := range c.Groups {
		before[g.Name] = g.Workers
	}
	out := map[string]int{}
	for _, g := range next.Groups {
		if n, ok := before[g.Name]; ok && n != g.Workers {
			out[g.Name] = g.Workers
		}
	}
	return out
}

// Banner says what is served, once bound on addr (the first listener's):
// for one handler also what its module is (info) and whether the
// compilation cache held it.
func (c *Config) Banner(addr string, info host.Info, cache string) string {
	if c.Path == "" {
		module := info.Kind.String()
		if info.Kind == host.KindABI {
			module = fmt.Sprintf("wcluster ABI v%d", info.ABIVersion)
		}
		if info.SpeaksFirst {
			module += ", speaks first"
		}
		g := c.Groups[0]
		return fmt.Sprintf("serving %s on %s (policy %s, %d workers, %s, compilation cache %s, %s)",
			c.Tenants[0].Name, addr, c.Cluster.Sched, g.Workers, module, cache, g.BudgetText)
	}
	var names, budgets []string
	workers := 0
	for _, t := range c.Tenants {
		if len(names) == ManyTenants {
			names = append(names, fmt.Sprintf("and %d more", len(c.Tenants)-ManyTenants))
			break
		}
		names = append(names, t.Name)
	}
	for _, g := range c.Groups {
		workers += g.Workers
		if len(c.Groups) == 1 {
			budgets = append(budgets, g.BudgetText)
		} else {
			budgets = append(budgets, "group "+g.Name+" "+g.BudgetText)
		}
	}
	return fmt.Sprintf("serving %d tenants (%s) from %s on %s (policy %s, %d workers in %d groups, %s)",
		len(c.Tenants), strings.Join(names, ", "), c.Path, addr, c.Cluster.Sched, workers, len(c.Groups), strings.Join(budgets, "; "))
}

// Describe writes what would be served, for check.
func (c *Config) Describe(w io.Writer) {
	fmt.Fprintf(w, "%s: ok, %d tenants in %d worker groups\n", c.Path, len(c.Tenants), len(c.Groups))
	for _, g := range c.Groups {
		fmt.Fprintf(w, "group %s: %d workers, %s\n", g.Name, g.Workers, g.BudgetText)
		byName := make(map[string]*Tenant, len(g.Tenants))
		for i := range g.Tenants {
			byName[g.Tenants[i].Name] = &g.Tenants[i]
		}
		for _, l := range g.Listeners {
			kind := "http"
			if l.TLS {
				kind = "tls"
			}
			var ts []string
			for _, name := range l.Tenants {
				if t := byName[name]; t != nil {
					hosts := "default"
					if len(t.Hosts) > 0 {
						hosts = strings.Join(t.Hosts, ",")
					}
					ts = append(ts, fmt.Sprintf("%s (%s)", name, hosts))
				}
			}
			fmt.Fprintf(w, "  %s %s: %s\n", kind, l.Addr, strings.Join(ts, ", "))
		}
		for _, t := range g.Tenants {
			line := t.LimitsText()
			switch {
			case t.ACME != nil:
				line += fmt.Sprintf("; certificates from ACME CA %s (%s), stored in %s", t.ACME.CA, strings.Join(t.ACME.Challenges, ", "), t.ACME.Storage)
			case t.TLSCert != "":
				line += "; certificate " + t.TLSCert
			}
			fmt.Fprintf(w, "  tenant %s: %s\n", t.Name, line)
		}
	}
}

// CacheEntries counts the files under the compilation cache dir (wazero
// writes one per module).
func CacheEntries(dir string) int {
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

// CacheState says, for the banner, whether the compilation cache already
// held the modules (hit: no entries added since it held before) or not.
func CacheState(dir string, before int) string {
	if dir == "" {
		return "off"
	}
	if CacheEntries(dir) == before && before > 0 {
		return "hit"
	}
	return "miss"
}

// NewLogger is a logger at level writing format ("text" or "json") to w.
//
// In JSON each key has one type, for indexing: a duration is written as
// KEY_seconds, a number of seconds (a text log writes it as 1.5s).
func NewLogger(w io.Writer, level slog.Level, format string) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		opts.ReplaceAttr = func(_ []string, a slog.Attr) slog.Attr {
			if a.Value.Kind() == slog.KindDuration {
				return slog.Float64(a.Key+"_seconds", a.Value.Duration().Seconds())
			}
			return a
		}
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
