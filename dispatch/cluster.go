package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wcluster/wcluster/internal/buildinfo"
)

// Cluster is one master process: a Group per group of workers (each group
// with its own listeners, workers and worker config), run together and
// controlled as one. A single-handler server is a Cluster of one group.
// Apply changes the groups while it runs (a reload).
type Cluster struct {
	log   *slog.Logger
	build buildinfo.Info

	mu       sync.Mutex
	groups   []*Group           // in configuration order
	stop     context.CancelFunc // ends Run gracefully; set while Run runs
	stopping bool               // Run is stopping: no more reload notices
	reloads  Reloads
	// While Run runs: the context groups run under, each group's own
	// cancel (a removed group drains alone), the runners, and the first
	// error of a group whose failure stops the cluster.
	runCtx  context.Context
	cancels map[*Group]context.CancelFunc
	runners sync.WaitGroup
	failed  error
}

// Reloads is what the master's reloads came to, whatever asked for them
// (SIGHUP, the control socket), and what configuration serves now.
type Reloads struct {
	OK     uint64 `json:"ok"`
	Failed uint64 `json:"failed"`
	// LastSuccess is when the running configuration was last applied (a
	// reload, or the start), in Unix seconds.
	LastSuccess float64 `json:"last_success_unix"`
	// LastError is the last failed reload's error, until a reload works.
	LastError string `json:"last_error,omitempty"`
	// ConfigHash identifies what the workers serve: the configuration with
	// its handlers and certificates, hashed (see RecordConfig).
	ConfigHash string `json:"config_hash"`
}

// NewCluster checks every group's config and binds every listener; on any
// error nothing stays bound. From then on a broken stdout or stderr (its
// reader gone) no longer kills the process (ignoreSIGPIPE).
func NewCluster(log *slog.Logger, cfgs ...Config) (*Cluster, error) {
	if len(cfgs) == 0 {
		return nil, errors.New("dispatch: no worker group")
	}
	ignoreSIGPIPE()
	allowNiceBack()
	cfgs = slices.Clone(cfgs)
	if err := activate(cfgs, listenFDsStart, log); err != nil {
		return nil, fmt.Errorf("dispatch: %w", err)
	}
	c := &Cluster{log: log, build: buildinfo.Read(), cancels: map[*Group]context.CancelFunc{}}
	c.reloads.LastSuccess = unixSeconds(time.Now())
	if err := uniqueNames(cfgs); err != nil {
		closeInherited(cfgs)
		return nil, err
	}
	for _, cfg := range cfgs {
		// With several groups, one group's crash loop must not stop the
		// others: it backs off instead.
		cfg.KeepOnCrashLoop = cfg.KeepOnCrashLoop || len(cfgs) > 1
		m, err := NewGroup(cfg)
		if err != nil {
			c.closeAll()
			closeInherited(cfgs)
			return nil, groupError(cfg.Name, len(cfgs), err)
		}
		c.groups = append(c.groups, m)
	}
	return c, nil
}

func uniqueNames(cfgs []Config) error {
	seen := map[string]bool{}
	for _, cfg := range cfgs {
		if seen[cfg.Name] {
			return fmt.Errorf("dispatch: two worker groups named %q", cfg.Name)
		}
		seen[cfg.Name] = true
	}
	return nil
}

// groupError names the group of err where there are several.
func groupError(name string, groups int, err error) error {
	if name != "" && groups > 1 {
		return fmt.Errorf("group %s: %w", name, err)
	}
	return err
}

func (c *Cluster) closeAll() {
	for _, m := range c.Groups() {
		m.closeListeners()
	}
}

// Groups are the cluster's groups, in configuration order.
func (c *Cluster) Groups() []*Group {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.groups)
}

// Scale changes group m's number of workers to n (Group.Scale), having
// first given every group's workers their threads for the cluster's new
// total (Config.ProcsFor), so that the new workers start with theirs.
func (c *Cluster) Scale(ctx context.Context, m *Group, n int) error {
	if n >= 1 && n <= MaxWorkers {
		c.rebalance(m, n)
	}
	return m.Scale(ctx, n)
}

// Rebalance gives every group's workers their threads for the cluster's
// current total of workers (after a reload, whose configuration counted
// the file's).
func (c *Cluster) Rebalance() { c.rebalance(nil, 0) }

// rebalance is Rebalance with group m counted at n workers.
func (c *Cluster) rebalance(m *Group, n int) {
	groups := c.Groups()
	total := 0
	for _, g := range groups {
		if g == m {
			total += n
		} else {
			total += g.Workers()
		}
	}
	for _, g := range groups {
		g.mu.Lock()
		f := g.procsFor
		g.mu.Unlock()
		if f != nil {
			g.SetProcs(f(total))
		}
	}
}

// Group finds a group by name ("" is the first).
func (c *Cluster) Group(name string) (*Group, error) {
	groups := c.Groups()
	if name == "" {
		return groups[0], nil
	}
	for _, m := range groups {
		if m.cfg.Name == name {
			return m, nil
		}
	}
	return nil, fmt.Errorf("no worker group %q", name)
}

// Run runs every group until ctx ends or Stop is called, then stops them
// all gracefully. ready is called once every group's workers are serving.
// If one group fails (a worker cannot start; a crash loop, with one group
// only), every group stops and Run returns that error.
func (c *Cluster) Run(ctx context.Context, ready func()) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c.mu.Lock()
	c.stop, c.runCtx = cancel, ctx
	groups := slices.Clone(c.groups)
	c.mu.Unlock()

	var readyWG sync.WaitGroup
	readyWG.Add(len(groups))
	for _, m := range groups {
		c.runGroup(m, len(groups), true, readyWG.Done)
	}
	allReady := make(chan struct{})
	c.runners.Add(1)
	go func() {
		defer c.runners.Done()
		readyWG.Wait()
		close(allReady)
	}()
	select {
	case <-allReady:
		if ctx.Err() == nil {
			if ready != nil {
				ready()
			}
			c.notify(StateReady)
		}
	case <-ctx.Done():
	}
	<-ctx.Done()
	c.mu.Lock()
	c.stopping = true
	c.mu.Unlock()
	c.notify(StateStopping)
	c.runners.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failed != nil {
		return c.failed
	}
	return ErrMasterClosed
}

// runGroup runs m under a context of its own within Run's, until that ends
// (Stop, or Apply removing m). With fatal, m failing stops the cluster
// (the groups Run started with); otherwise the failure is m's own (a group
// Apply added reports its start failure to Apply). ready is called once
// m's workers serve, or m has ended.
func (c *Cluster) runGroup(m *Group, groups int, fatal bool, ready func()) <-chan error {
	c.mu.Lock()
	ctx, cancel := context.WithCancel(c.runCtx)
	c.cancels[m] = cancel
	stopAll := c.stop
	c.mu.Unlock()
	done := make(chan error, 1)
	c.runners.Add(1)
	go func() {
		defer c.runners.Done()
		defer cancel()
		var once sync.Once
		r := func() { once.Do(ready) }
		err := m.Run(ctx, r)
		c.mu.Lock()
		delete(c.cancels, m)
		if fatal && !errors.Is(err, ErrMasterClosed) && c.failed == nil {
			c.failed = groupError(m.cfg.Name, groups, err)
		}
		c.mu.Unlock()
		if fatal && !errors.Is(err, ErrMasterClosed) {
			stopAll() // one group failed: stop the others
		}
		done <- err // before r: who waits for r then finds why it ended
		r()
	}()
	return done
}

func (c *Cluster) isStopping() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopping
}

// Stop ends Run gracefully (as its context ending would); with now, workers
// are killed at once instead of draining.
func (c *Cluster) Stop(now bool) {
	if now {
		for _, m := range c.Groups() {
			m.immediate.Store(true)
		}
	}
	c.mu.Lock()
	stop := c.stop
	c.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// Apply makes the running cluster serve cfgs, in their order (a reload):
//   - a group whose listeners, policy, user, environment and limits are
//     unchanged gets new workers started with its new WorkerConfig, ready
//     before the old ones drain (Group.Reload), keeping its running count;
//   - a new group is started, and a changed one replaced by a new one: a
//     listening address kept keeps its socket (the new group serves a
//     duplicate of it, so no connection is refused meanwhile);
//   - groups no longer in cfgs, and replaced ones, stop accepting and drain.
//
// New and replacing groups start first: if one cannot, they are stopped and
// nothing changed. A failed Group.Reload stops there, as Group.Reload says;
// groups already reloaded stay so.
func (c *Cluster) Apply(ctx context.Context, cfgs []Config) error {
	if err := uniqueNames(cfgs); err != nil {
		return err
	}
	c.mu.Lock()
	if c.runCtx == nil || c.stopping {
		c.mu.Unlock()
		return ErrMasterClosed
	}
	old := slices.Clone(c.groups)
	c.mu.Unlock()
	// The service manager hears RELOADING=1, then READY=1 whether or not
	// the reload worked (either way workers serve); nothing once stopping,
	// where it would undo STOPPING=1.
	c.notify(StateReloading())
	defer func() {
		if !c.isStopping() {
			c.notify(StateReady)
		}
	}()

	byName := map[string]*Group{}
	for _, m := range old {
		byName[m.cfg.Name] = m
	}
	next := make([]*Group, len(cfgs))
	keep := map[*Group]bool{}
	var started []*Group
	abort := func(err error) error {
		for _, m := range started {
			c.stopGroup(m)
		}
		return err
	}
	for i, cfg := range cfgs {
		if m := byName[cfg.Name]; m != nil && m.sameShape(cfg) {
			next[i], keep[m] = m, true
			m.mu.Lock()
			m.procsFor = cfg.ProcsFor // (Rebalance applies it)
			m.mu.Unlock()
			continue
		}
		m, err := c.startGroup(ctx, cfg, old, len(cfgs))
		if err != nil {
			return abort(groupError(cfg.Name, len(cfgs), err))
		}
		next[i] = m
		started = append(started, m)
	}
	for i, cfg := range cfgs {
		if m := next[i]; keep[m] {
			if cfg.Secrets != nil {
				m.SetSecrets(cfg.Secrets) // the new workers start with them
			}
			if err := m.Reload(ctx, cfg.WorkerConfig); err != nil {
				return abort(groupError(cfg.Name, len(cfgs), err))
			}
			m.SetCertificates(cfg.Certificates)
		}
	}
	c.mu.Lock()
	c.groups = next
	c.mu.Unlock()
	for _, m := range old {
		if !keep[m] {
			m.log.Info("group no longer configured as it runs: draining it", "workers", m.Workers())
			c.stopGroup(m)
		}
	}
	return nil
}

// Reload gives the workers of each group named in configs (by group name)
// a new worker configuration, nothing else changing: new workers start
// with it and the old ones drain once they serve (Group.Reload), one group
// after the other. The first failure stops there; groups already reloaded
// stay so. (A renewed certificate takes this way; a new configuration
// takes Apply.)
func (c *Cluster) Reload(ctx context.Context, configs map[string][]byte) error {
	if !c.isStopping() {
		c.notify(StateReloading())
		defer func() {
			if !c.isStopping() {
				c.notify(StateReady)
			}
		}()
	}
	groups := c.Groups()
	for _, m := range groups {
		cfg, ok := configs[m.cfg.Name]
		if !ok {
			continue
		}
		if err := m.Reload(ctx, cfg); err != nil {
			return groupError(m.cfg.Name, len(groups), err)
		}
	}
	return nil
}

// sameShape reports whether cfg can be served by m's master side as it is:
// the same listeners, policy, workers' user and environment, and limits.
func (m *Group) sameShape(cfg Config) bool {
	a := m.cfg
	sameCred := (a.Credential == nil) == (cfg.Credential == nil) &&
		(a.Credential == nil || (a.Credential.Uid == cfg.Credential.Uid && a.Credential.Gid == cfg.Credential.Gid))
	return slices.Equal(a.Listen, cfg.Listen) && slices.Equal(a.DeferAccept, cfg.DeferAccept) && a.Sched == cfg.Sched && sameCred &&
		slices.Equal(a.WorkerEnv, cfg.WorkerEnv) && a.Backlog == cfg.Backlog && a.MaxConns == cfg.MaxConns &&
		a.QueueSize == cfg.QueueSize && a.QueueTimeout == cfg.QueueTimeout && a.ShutdownTimeout == cfg.ShutdownTimeout &&
		a.WorkerTimeout == cfg.WorkerTimeout && a.MaxRequests == cfg.MaxRequests && a.MaxMemory == cfg.MaxMemory
}

// startGroup starts a group for cfg while the cluster runs, serving
// duplicates of the sockets of old groups on the addresses it keeps, and
// waits until its workers serve.
func (c *Cluster) startGroup(ctx context.Context, cfg Config, old []*Group, groups int) (*Group, error) {
	cfg.KeepOnCrashLoop = true // a later crash loop backs off: it must not stop the others
	if cfg.Logger == nil {
		cfg.Logger = c.log
	}
	cfg.inherited = make([]*listener, len(cfg.Listen))
	for j, addr := range cfg.Listen {
		for _, m := range old {
			for _, l := range m.lis {
				if cfg.inherited[j] == nil && sameListenAddr(addr, l.addr) {
					d, err := l.dup()
					if err != nil {
						closeInherited([]Config{cfg})
						return nil, err
					}
					cfg.inherited[j] = d
				}
			}
		}
	}
	m, err := NewGroup(cfg)
	if err != nil {
		closeInherited([]Config{cfg})
		return nil, err
	}
	if cfg.Secrets != nil {
		m.SetSecrets(cfg.Secrets)
	}
	ready := make(chan struct{})
	done := c.runGroup(m, groups, false, func() { close(ready) })
	select {
	case <-ready:
	case <-ctx.Done():
		c.stopGroup(m)
		return nil, ctx.Err()
	}
	select {
	case err := <-done: // ready was called because it ended
		return nil, err
	default:
	}
	m.log.Info("group started", "listeners", strings.Join(cfg.Listen, ","), "workers", cfg.Workers)
	return m, nil
}

// stopGroup ends m's Run: it stops accepting and drains its workers.
func (c *Cluster) stopGroup(m *Group) {
	c.mu.Lock()
	cancel := c.cancels[m]
	c.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// RecordConfig notes the hash of the configuration now served (at start).
func (c *Cluster) RecordConfig(hash string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reloads.ConfigHash = hash
}

// RecordReload notes a reload's outcome: err nil for one that applied the
// configuration hashed as hash.
func (c *Cluster) RecordReload(err error, hash string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.reloads.Failed++
		c.reloads.LastError = err.Error()
		return
	}
	c.reloads.OK++
	c.reloads.LastError = ""
	c.reloads.LastSuccess = unixSeconds(time.Now())
	c.reloads.ConfigHash = hash
}

func unixSeconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

// Ready reports whether every group is ready (see Group.Ready) and Run has
// not begun to stop.
func (c *Cluster) Ready() bool {
	c.mu.Lock()
	running := c.stop != nil
	c.mu.Unlock()
	if !running {
		return false
	}
	for _, m := range c.Groups() {
		if !m.Ready() {
			return false
		}
	}
	return true
}

// ClusterStatus is every group's status, with the workers of all groups in
// one list and the totals summed.
type ClusterStatus struct {
	PID        int            `json:"pid"`
	Goroutines int            `json:"goroutines"`
	FDs        int            `json:"fds"`
	Listen     string         `json:"listen"` // the first group's first listener
	Sched      Sched          `json:"sched"`  // the first group's policy
	Totals     Totals         `json:"totals"`
	Workers    []WorkerStatus `json:"workers"`
	Groups     []Status       `json:"groups"`
	Build      buildinfo.Info `json:"build"`
	Reloads    Reloads        `json:"reloads"`
}

// Status reports every group's counters.
func (c *Cluster) Status() ClusterStatus {
	c.mu.Lock()
	reloads := c.reloads
	c.mu.Unlock()
	s := ClusterStatus{PID: os.Getpid(), Goroutines: runtime.NumGoroutine(), FDs: openFDs(), Workers: []WorkerStatus{}, Groups: []Status{},
		Build: c.build, Reloads: reloads}
	for i, m := range c.Groups() {
		g := m.Status()
		if i == 0 {
			s.Listen, s.Sched = g.Listen, g.Sched
		}
		s.Totals.add(g.Totals)
		s.Workers = append(s.Workers, g.Workers...)
		s.Groups = append(s.Groups, g)
	}
	return s
}

func (t *Totals) add(o Totals) {
	t.Accepted += o.Accepted
	t.QueueTimeouts += o.QueueTimeouts
	t.Requeued += o.Requeued
	t.Restarts += o.Restarts
	t.Recycled += o.Recycled
	t.HungKilled += o.HungKilled
	t.SpawnFailures += o.SpawnFailures
	t.AcceptPauses += o.AcceptPauses
	t.Starved += o.Starved
	t.Queued += o.Queued
	t.Generation += o.Generation
}

// ignoreSIGPIPE keeps the process alive when whoever reads its stdout or
// stderr goes away (a log pipe's reader exits): Go kills a program whose
// write to fd 1 or 2 meets a broken pipe, unless SIGPIPE is handled.
// Writes then fail with EPIPE; the lines are lost, the service is not.
func ignoreSIGPIPE() { signal.Ignore(syscall.SIGPIPE) }

// allowNiceBack lets workers that run as another user (--user, no
// capabilities) give a thread back the priority they lowered for a TLS
// handshake: RLIMIT_NICE 20 allows nice 0 again, nothing below. Workers
// inherit it. Only root may raise the limit; otherwise it stays as it is.
func allowNiceBack() {
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NICE, &lim) == nil && lim.Cur < 20 && os.Geteuid() == 0 {
		unix.Setrlimit(unix.RLIMIT_NICE, &unix.Rlimit{Cur: 20, Max: max(lim.Max, 20)})
	}
}
