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
	"sync"
	"syscall"
	"time"

	"github.com/wcluster/wcluster/internal/buildinfo"
)

// Cluster is one master process: a Group per group of workers (each group
// with its own listeners, workers and worker config), run together and
// controlled as one. A single-handler server is a Cluster of one group.
type Cluster struct {
	groups []*Group
	log    *slog.Logger

	build buildinfo.Info

	mu       sync.Mutex
	stop     context.CancelFunc // ends Run gracefully; set while Run runs
	stopping bool               // Run is stopping: no more reload notices
	reloads  Reloads
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
	cfgs = slices.Clone(cfgs)
	if err := activate(cfgs, listenFDsStart, log); err != nil {
		return nil, fmt.Errorf("dispatch: %w", err)
	}
	c := &Cluster{log: log, build: buildinfo.Read()}
	c.reloads.LastSuccess = unixSeconds(time.Now())
	seen := map[string]bool{}
	for _, cfg := range cfgs {
		// With several groups, one group's crash loop must not stop the
		// others: it backs off instead.
		cfg.KeepOnCrashLoop = cfg.KeepOnCrashLoop || len(cfgs) > 1
		if seen[cfg.Name] {
			c.closeAll()
			closeInherited(cfgs)
			return nil, fmt.Errorf("dispatch: two worker groups named %q", cfg.Name)
		}
		seen[cfg.Name] = true
		m, err := NewGroup(cfg)
		if err != nil {
			c.closeAll()
			closeInherited(cfgs)
			if cfg.Name != "" {
				return nil, fmt.Errorf("group %s: %w", cfg.Name, err)
			}
			return nil, err
		}
		c.groups = append(c.groups, m)
	}
	return c, nil
}

func (c *Cluster) closeAll() {
	for _, m := range c.groups {
		m.closeListeners()
	}
}

// Groups are the cluster's masters, in config order.
func (c *Cluster) Groups() []*Group { return c.groups }

// Group finds a group by name ("" is the first).
func (c *Cluster) Group(name string) (*Group, error) {
	if name == "" {
		return c.groups[0], nil
	}
	for _, m := range c.groups {
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
	c.stop = cancel
	c.mu.Unlock()

	var wg sync.WaitGroup
	var readyWG sync.WaitGroup
	errs := make([]error, len(c.groups))
	readyWG.Add(len(c.groups))
	allReady := make(chan struct{})
	for i, m := range c.groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var once sync.Once
			done := func() { once.Do(readyWG.Done) }
			errs[i] = m.Run(ctx, done)
			done()
			if !errors.Is(errs[i], ErrMasterClosed) {
				cancel() // one group failed: stop the others
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
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
	wg.Wait()
	for i, err := range errs {
		if err != nil && !errors.Is(err, ErrMasterClosed) {
			if name := c.groups[i].cfg.Name; name != "" && len(c.groups) > 1 {
				return fmt.Errorf("group %s: %w", name, err)
			}
			return err
		}
	}
	return ErrMasterClosed
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
		for _, m := range c.groups {
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

// Reload replaces the workers of each group named in configs (by group
// name) with ones started with the new worker config, one group after the
// other. The first failure stops there; groups already reloaded stay so.
func (c *Cluster) Reload(ctx context.Context, configs map[string][]byte) error {
	// The service manager hears RELOADING=1, then READY=1 whether or not
	// the reload worked (either way workers serve); nothing once stopping,
	// where it would undo STOPPING=1.
	if !c.isStopping() {
		c.notify(StateReloading())
		defer func() {
			if !c.isStopping() {
				c.notify(StateReady)
			}
		}()
	}
	for _, m := range c.groups {
		cfg, ok := configs[m.cfg.Name]
		if !ok {
			continue
		}
		if err := m.Reload(ctx, cfg); err != nil {
			if m.cfg.Name != "" && len(c.groups) > 1 {
				return fmt.Errorf("group %s: %w", m.cfg.Name, err)
			}
			return err
		}
	}
	return nil
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
	for _, m := range c.groups {
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
	for i, m := range c.groups {
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
