package dispatch

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Sched is a connection distribution policy.
type Sched string

// The policies; see the package doc.
const (
	SchedRR        Sched = "rr"
	SchedShared    Sched = "shared"
	SchedReusePort Sched = "reuseport"
)

// ParseSched checks a policy name.
func ParseSched(s string) (Sched, error) {
	switch Sched(s) {
	case SchedRR, SchedShared, SchedReusePort:
		return Sched(s), nil
	}
	return "", fmt.Errorf("unknown scheduling policy %q: use rr, shared or reuseport", s)
}

// ErrMasterClosed is returned by Run once it stopped because its context ended.
var ErrMasterClosed = errors.New("dispatch: master closed")

// Config configures a Master. Zero values take the defaults given.
type Config struct {
	// Listen are the addresses ("host:port") to serve; a worker's handler
	// learns which one a connection came from by its index here.
	Listen  []string
	Workers int    // >= 1
	Name    string // names this group of workers in logs and status
	Sched   Sched  // default rr
	Backlog int    // listen(2) backlog, default 511
	// MaxConns is the most connections one worker holds at once (default
	// 10000); at that the master (rr) or the worker (shared) stops accepting.
	MaxConns int
	// QueueSize is how many accepted connections the rr master may hold
	// while no worker has room (default 0: stop accepting instead). Requeued
	// connections are always held. QueueTimeout (default 10s) closes a held
	// connection that found no worker in time, with a log line and a count.
	QueueSize    int
	QueueTimeout time.Duration
	// ShutdownTimeout bounds a graceful stop (default 10s).
	ShutdownTimeout time.Duration
	// WorkerTimeout kills a worker whose heartbeat stopped for that long
	// (default 30s); Heartbeat is how often workers send one (default 1s).
	WorkerTimeout time.Duration
	Heartbeat     time.Duration
	// MaxRequests recycles a worker after it served about this many requests
	// (plus up to 10% jitter, so workers do not recycle together); MaxMemory
	// recycles one whose resident memory passed this many bytes. A recycled
	// worker is replaced first and then drained, so it costs no request.
	// Both are checked at each heartbeat. 0: never.
	MaxRequests int
	MaxMemory   uint64
	// KeepOnCrashLoop: workers that keep crashing (crashLimit in
	// crashWindow) are restarted with a growing delay, up to a minute,
	// instead of stopping the master. A cluster of several groups sets it,
	// so one tenant's crash loop cannot take the others down.
	KeepOnCrashLoop bool
	// WorkerConfig is passed to every worker as is (see Worker.Config),
	// through an inherited memfd, never the environment.
	WorkerConfig []byte
	// WorkerEnv names the variables of the master's environment passed on
	// to workers; nothing else of it is (but the Go runtime's settings).
	WorkerEnv []string
	// Credential, if set, runs the workers as this user and group (and
	// that group only), so with no capabilities; the master must be root.
	Credential *syscall.Credential
	// Executable and Args start a worker (default: this binary, no args).
	Executable string
	Args       []string
	Logger     *slog.Logger
}

func (c *Config) defaults() error {
	if c.Workers < 1 {
		return fmt.Errorf("--workers must be at least 1 (got %d)", c.Workers)
	}
	if len(c.Listen) == 0 {
		return errors.New("no listen address")
	}
	if len(c.Listen) > maxListeners {
		return fmt.Errorf("%d listen addresses: at most %d", len(c.Listen), maxListeners)
	}
	if c.Sched == "" {
		c.Sched = SchedRR
	}
	if _, err := ParseSched(string(c.Sched)); err != nil {
		return err
	}
	if c.Backlog <= 0 {
		c.Backlog = 511
	}
	if c.MaxConns <= 0 {
		c.MaxConns = 10000
	}
	if c.QueueTimeout <= 0 {
		c.QueueTimeout = 10 * time.Second
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = 10 * time.Second
	}
	if c.WorkerTimeout <= 0 {
		c.WorkerTimeout = 30 * time.Second
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Executable == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find own executable: %w", err)
		}
		c.Executable = exe
	}
	return nil
}

// Master owns the listener and the workers.
type Master struct {
	cfg Config
	log *slog.Logger
	lis []*listener

	mu sync.Mutex // mu guards everything below
	// procs are the live worker processes, by slot (id-1); nil while a slot
	// is empty (between a crash and its restart).
	procs   []*proc
	cursor  int // round-robin position
	nextSeq uint64
	queue   []queued // accepted, not yet placed (rr)
	stats   Totals
	crashes []time.Time // recent unexpected exits, for the crash-loop breaker
	closing bool
	// generation counts completed reloads.
	generation int

	reloadMu sync.Mutex // serialises Reload, recycling and Scale

	// immediate makes a stop kill workers at once instead of draining.
	immediate atomic.Bool

	// capCh is closed (and replaced) when a worker may take more and
	// capWait says someone waits for that (rr accept loops).
	capCh   chan struct{}
	capWait bool
	events  chan procEvent
	restart chan int       // slots to (re)start, for supervise
	quit    chan struct{}  // closed when Run returns: unblocks emit
	wg      sync.WaitGroup // every goroutine the master starts
}

// Totals are the master's own counters.
type Totals struct {
	Accepted      uint64 `json:"accepted"`
	QueueTimeouts uint64 `json:"queue_timeouts"`
	Requeued      uint64 `json:"requeued"`
	Restarts      uint64 `json:"restarts"`
	Recycled      uint64 `json:"recycled"`
	HungKilled    uint64 `json:"hung_killed"`
	// SpawnFailures counts worker processes that could not be started
	// (fork or exec failed, out of descriptors); each is retried.
	SpawnFailures uint64 `json:"spawn_failures"`
	// AcceptPauses counts episodes of accept failing (out of descriptors)
	// during which the master stopped accepting for a while.
	AcceptPauses uint64 `json:"accept_pauses"`
	// Starved counts connections a worker could not take for lack of
	// descriptors (a truncated fd message, or a failed send): each went
	// to another worker or back to the queue.
	Starved    uint64 `json:"starved"`
	Queued     int    `json:"queued"`
	Generation int    `json:"generation"`
}

type queued struct {
	fd    int
	lis   int // index of the listener it came from
	since time.Time
}

// sent is a connection handed to a worker and not yet acknowledged.
type sent struct {
	fd    int
	lis   int
	since time.Time // accepted at (QueueTimeout counts from there)
}

// maxListeners bounds Config.Listen: the index travels in a newconn message
// as one byte, and shared workers inherit one fd per listener.
const maxListeners = 64

// New checks cfg and binds the listener (so a port in use fails here).
func New(cfg Config) (*Master, error) {
	if err := cfg.defaults(); err != nil {
		return nil, fmt.Errorf("dispatch: %w", err)
	}
	// reuseport: the master only reserves the port (a bound socket is not in
	// the SO_REUSEPORT group, so nothing is queued on it); workers listen.
	// Sockets passed by systemd (socket activation) replace cfg.Listen.
	// They are consumed by the first group created.
	lis, err := socketActivation(listenFDsStart, cfg.Sched, cfg.Logger)
	if err != nil {
		return nil, fmt.Errorf("dispatch: %w", err)
	}
	if len(lis) > maxListeners {
		for _, l := range lis {
			l.close()
		}
		return nil, fmt.Errorf("dispatch: socket activation passed %d sockets: at most %d", len(lis), maxListeners)
	}
	if lis == nil {
		for _, addr := range cfg.Listen {
			l, err := listenTCP(addr, cfg.Backlog, cfg.Sched == SchedReusePort, cfg.Sched != SchedReusePort)
			if err != nil {
				for _, l := range lis {
					l.close()
				}
				return nil, fmt.Errorf("dispatch: %w", err)
			}
			lis = append(lis, l)
		}
	}
	m := &Master{
		cfg: cfg, log: cfg.Logger, lis: lis,
		procs:   make([]*proc, cfg.Workers),
		capCh:   make(chan struct{}),
		events:  make(chan procEvent, cfg.Workers*2),
		restart: make(chan int),
		quit:    make(chan struct{}),
	}
	if cfg.Name != "" {
		m.log = m.log.With("group", cfg.Name)
	}
	if cfg.Sched == SchedReusePort {
		if b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_migrate_req"); err != nil || strings.TrimSpace(string(b)) != "1" {
			m.log.Warn("reuseport: a worker that stops (crash, reload, recycle) resets the connections still queued on its socket; " +
				"set sysctl net.ipv4.tcp_migrate_req=1 (Linux 5.14+) to have them moved to the other workers, or use --sched rr")
		}
	}
	return m, nil
}

// Addr is the first bound address (with the real port when :0 was asked).
func (m *Master) Addr() *net.TCPAddr { return m.lis[0].addr }

// Addrs are the bound addresses, in Config.Listen's order.
func (m *Master) Addrs() []*net.TCPAddr {
	a := make([]*net.TCPAddr, len(m.lis))
	for i, l := range m.lis {
		a[i] = l.addr
	}
	return a
}

func (m *Master) closeListeners() {
	for _, l := range m.lis {
		l.close()
	}
}

// Run starts the workers, calls ready once all are serving, and serves until
// ctx ends; it then stops gracefully within ShutdownTimeout and returns
// ErrMasterClosed. A worker that cannot start at first, or a crash loop
// (single group), ends Run with an error naming the cause; later, a worker
// that cannot be started is retried (see supervise).
func (m *Master) Run(ctx context.Context, ready func()) error {
	defer m.closeListeners()
	defer m.wg.Wait()
	defer close(m.quit)
	for id := 1; id <= m.cfg.Workers; id++ {
		if err := m.spawn(id); err != nil {
			m.stopAll()
			return err
		}
	}
	if err := m.awaitReady(ctx); err != nil {
		m.stopAll()
		return err
	}
	if ready != nil {
		ready()
	}

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	if m.cfg.Sched == SchedRR {
		for i, l := range m.lis {
			m.wg.Add(1)
			go func() { defer m.wg.Done(); m.acceptLoop(runCtx, i, l) }()
		}
		m.wg.Add(1)
		go func() { defer m.wg.Done(); m.expireQueue(runCtx) }()
	}
	m.wg.Add(1)
	go func() { defer m.wg.Done(); m.watchHeartbeats(runCtx) }()

	err := m.supervise(runCtx)
	stop()
	if err == nil {
		m.log.Info("shutting down: no new connections; draining workers", "timeout", m.cfg.ShutdownTimeout.String())
	}
	m.shutdown()
	if err != nil {
		return err
	}
	return ErrMasterClosed
}

// awaitReady waits until every worker said ready, or one failed.
func (m *Master) awaitReady(ctx context.Context) error {
	pending := m.cfg.Workers
	for pending > 0 {
		select {
		case <-ctx.Done():
			return ErrMasterClosed
		case ev := <-m.events:
			switch ev.kind {
			case evReady:
				pending--
			case evExit:
				m.reap(ev.p)
				return fmt.Errorf("worker %d failed to start: %s", ev.p.id, ev.p.failure())
			}
		}
	}
	return nil
}

// supervise replaces workers that exit, until ctx ends or (a single group)
// they crash in a loop.
//
// Two kinds of failure are told apart. A crash is a started worker that
// exits unasked: crashLimit of them in crashWindow stop a single-group
// master, since a handler that kills every worker cannot be served. A
// spawn failure is a worker that could not be started at all (fork or exec
// failed, or the master is out of descriptors under a connection flood):
// that says nothing about the handler and passes when the shortage does,
// so it never stops the master and is not counted as a crash. The slot is
// retried with the same growing delay (capped at maxSpawnDelay, so a slot
// is refilled soon after a flood ends) while the group serves with the
// workers it has. Each episode is logged when it starts, at most once a
// minute while it lasts, and when the worker finally starts.
func (m *Master) supervise(ctx context.Context) error {
	failing := map[int]*spawnEpisode{} // slots whose start keeps failing
	for {
		select {
		case <-ctx.Done():
			return nil
		case id := <-m.restart:
			m.mu.Lock()
			gone := id > len(m.procs) || m.procs[id-1] != nil
			m.mu.Unlock()
			if gone {
				delete(failing, id)
				continue // scaled down, or the slot was filled meanwhile
			}
			err := m.spawn(id)
			ep := failing[id]
			if err == nil {
				if ep != nil {
					m.log.Info("worker started after failed attempts", "worker", id, "failed_attempts", ep.failures,
						"took", time.Since(ep.first).Round(time.Millisecond).String())
					delete(failing, id)
				}
				continue
			}
			now := time.Now()
			if ep == nil {
				ep = &spawnEpisode{first: now}
				failing[id] = ep
			}
			ep.failures++
			m.mu.Lock()
			m.stats.SpawnFailures++
			m.mu.Unlock()
			delay := restartDelay(ep.failures+1, maxSpawnDelay)
			switch {
			case ep.failures == 1:
				ep.logged = now
				m.log.Error("cannot start a worker; retrying with backoff while the others serve", "worker", id, "err", err, "in", delay)
			case now.Sub(ep.logged) >= time.Minute:
				ep.logged = now
				m.log.Error("still cannot start a worker; retrying", "worker", id, "err", err, "failed_attempts", ep.failures)
			default:
				m.log.Debug("cannot start a worker; retrying", "worker", id, "err", err, "in", delay)
			}
			m.restartAfter(id, delay)
		case ev := <-m.events:
			if ev.kind != evExit {
				continue
			}
			p := ev.p
			m.mu.Lock()
			current := m.slotLocked(p.id) == p
			m.mu.Unlock()
			m.reap(p)
			if p.retired || !current {
				continue // drained on purpose, or a reload's worker that failed
			}
			now := time.Now()
			m.mu.Lock()
			m.stats.Restarts++
			recent := m.crashes[:0]
			for _, t := range m.crashes {
				if now.Sub(t) < crashWindow {
					recent = append(recent, t)
				}
			}
			m.crashes = append(recent, now)
			n := len(m.crashes)
			m.mu.Unlock()
			if n >= crashLimit && !m.cfg.KeepOnCrashLoop {
				return fmt.Errorf("dispatch: workers crashed %d times in %v (last: worker %d, %s): stopping; see the worker log above",
					n, crashWindow, p.id, p.failure())
			}
			delay := restartDelay(n, maxRestartDelay)
			if n >= crashLimit {
				m.log.Error("workers are crashing in a loop; restarting them more slowly", "crashes", n, "window", crashWindow.String())
			}
			m.log.Warn("worker exited; restarting", "worker", p.id, "pid", p.pid, "cause", p.failure(), "in", delay)
			m.restartAfter(p.id, delay)
		}
	}
}

// spawnEpisode is a run of failed starts of one slot.
type spawnEpisode struct {
	first, logged time.Time
	failures      int
}

// restartDelay is the wait before the next start after n failures in a row
// (crashes in the window, or failed spawns): exponential with jitter, up to
// ceiling. The first restart is immediate, so a single kill costs little.
func restartDelay(n int, ceiling time.Duration) time.Duration {
	if n <= 1 {
		return 0
	}
	delay := min(time.Duration(50<<min(n-1, 10))*time.Millisecond, ceiling)
	return delay + time.Duration(rand.Int64N(int64(delay)/2))
}

// restartAfter hands slot id to supervise after delay (unless Run returned
// meanwhile). supervise skips it if the slot was filled or removed.
func (m *Master) restartAfter(id int, delay time.Duration) {
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-m.quit:
			return
		}
		select {
		case m.restart <- id:
		case <-m.quit:
		}
	}()
}

const (
	crashWindow     = 30 * time.Second
	crashLimit      = 5
	maxRestartDelay = time.Minute
	// maxSpawnDelay caps the wait between attempts to start a worker that
	// could not be started: the cause (a flood, a fork failure) is outside
	// the handler and may pass at any moment.
	maxSpawnDelay = 5 * time.Second
)

// reap forgets an exited worker and requeues every connection it had not
// acknowledged: those it never took.
func (m *Master) reap(p *proc) {
	m.mu.Lock()
	if m.slotLocked(p.id) == p {
		m.procs[p.id-1] = nil
	}
	p.state = stateExited
	var orphans []sent
	for seq, c := range p.pending {
		orphans = append(orphans, c)
		delete(p.pending, seq)
	}
	p.inFlight = 0
	p.requeued += uint64(len(orphans))
	m.stats.Requeued += uint64(len(orphans))
	m.mu.Unlock()
	p.ch.close()
	for _, c := range orphans {
		m.place(c.fd, c.lis, c.since)
	}
	if len(orphans) > 0 {
		m.log.Info("requeued connections the worker never acknowledged", "worker", p.id, "count", len(orphans))
	}
	m.signalCapacity()
}

// shutdown stops accepting, tells every worker to drain, and waits for them
// within ShutdownTimeout, killing what is left.
func (m *Master) shutdown() {
	m.closeListeners()
	m.mu.Lock()
	m.closing = true
	q := m.queue
	m.queue = nil
	m.mu.Unlock()
	for _, c := range q {
		unix.Close(c.fd)
	}
	if len(q) > 0 {
		m.log.Warn("closed queued connections at shutdown", "count", len(q))
	}
	m.stopAll()
}

// stopAll drains every worker and waits for them to exit, killing those
// still alive after ShutdownTimeout (plus a second of grace).
func (m *Master) stopAll() {
	m.mu.Lock()
	m.closing = true
	var live []*proc
	for _, p := range m.procs {
		if p != nil {
			live = append(live, p)
		}
	}
	m.mu.Unlock()
	for _, p := range live {
		p.retired = true
		p.ch.closeWrite()
	}
	grace := m.cfg.ShutdownTimeout + time.Second
	if m.immediate.Load() {
		grace = 0
	}
	deadline := time.NewTimer(grace)
	defer deadline.Stop()
	for _, p := range live {
		select {
		case <-p.exited:
		case <-deadline.C:
			for _, q := range live {
				q.kill(syscall.SIGKILL)
			}
			<-p.exited
		}
	}
	// Drain exit events so reap runs for each (it closes channels).
	for _, p := range live {
		m.reap(p)
	}
}

// Status is a snapshot of the master and its workers.
type Status struct {
	Group     string   `json:"group,omitempty"`
	Listen    string   `json:"listen"` // the first of Listeners
	Listeners []string `json:"listeners"`
	Sched     Sched    `json:"sched"`
	PID       int      `json:"pid"`
	// Goroutines and FDs are the master process's own, to spot leaks.
	Goroutines int            `json:"goroutines"`
	FDs        int            `json:"fds"`
	Totals     Totals         `json:"totals"`
	Workers    []WorkerStatus `json:"workers"`
}

// WorkerStatus is one worker's counters. For rr, Accepted, InFlight,
// Refused and Requeued are the master's own counts; Completed and the
// handler's counters come from the worker's last heartbeat.
type WorkerStatus struct {
	Group     string `json:"group,omitempty"`
	ID        int    `json:"id"`
	PID       int    `json:"pid"`
	State     string `json:"state"`
	Uptime    string `json:"uptime"`
	Accepted  uint64 `json:"accepted"`
	InFlight  int64  `json:"in_flight"`
	Completed uint64 `json:"completed"`
	Refused   uint64 `json:"refused"`
	Requeued  uint64 `json:"requeued"`
	Unacked   int    `json:"unacked"`
	Requests  uint64 `json:"requests"`
	RSS       uint64 `json:"rss_bytes"`
	BeatAge   string `json:"heartbeat_age"`
	// Age is BeatAge as a duration, for in-process readers (metrics).
	Age     time.Duration  `json:"-"`
	Handler map[string]any `json:"handler,omitempty"`
}

// Ready reports whether every worker slot holds a ready worker and the
// group is not stopping: what a readiness probe asks.
func (m *Master) Ready() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closing {
		return false
	}
	for _, p := range m.procs {
		if p == nil || p.state != stateReady {
			return false
		}
	}
	return true
}

// Status reports the current counters.
func (m *Master) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := Status{Group: m.cfg.Name, Listen: m.lis[0].addr.String(), Sched: m.cfg.Sched, PID: os.Getpid(), Totals: m.stats,
		Goroutines: runtime.NumGoroutine(), FDs: openFDs()}
	for _, l := range m.lis {
		s.Listeners = append(s.Listeners, l.addr.String())
	}
	s.Totals.Queued = len(m.queue)
	s.Totals.Generation = m.generation
	now := time.Now()
	for _, p := range m.procs {
		if p == nil {
			continue
		}
		ws := WorkerStatus{
			Group: m.cfg.Name, ID: p.id, PID: p.pid, State: p.state.String(),
			Uptime:   now.Sub(p.started).Round(time.Millisecond).String(),
			Accepted: p.accepted, InFlight: p.inFlight, Refused: p.refused, Requeued: p.requeued,
			Unacked:   len(p.pending),
			Completed: p.report.Completed, Handler: p.report.Handler,
			Requests: p.report.served(), RSS: p.report.RSS,
			BeatAge: now.Sub(p.lastBeat).Round(time.Millisecond).String(),
			Age:     now.Sub(p.lastBeat),
		}
		if m.cfg.Sched != SchedRR {
			ws.Accepted, ws.InFlight = p.report.Accepted, p.report.InFlight
		}
		s.Workers = append(s.Workers, ws)
	}
	return s
}

// slotLocked is the worker in slot id, or nil (also past the end, after a
// scale-down).
func (m *Master) slotLocked(id int) *proc {
	if id < 1 || id > len(m.procs) {
		return nil
	}
	return m.procs[id-1]
}

// spawn starts worker id in its slot.
func (m *Master) spawn(id int) error {
	_, err := m.start(id, m.workerConfig(), true)
	return err
}

func (m *Master) workerConfig() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cfg.WorkerConfig
}

// start starts a worker process for slot id with the given handler config.
// With install it takes the slot at once; a reload installs it later.
func (m *Master) start(id int, workerConfig []byte, install bool) (*proc, error) {
	ch, child, err := socketPair()
	if err != nil {
		return nil, fmt.Errorf("dispatch: worker %d: %w", id, err)
	}
	defer child.Close()
	cmd, boot, crash, err := m.workerCommand(id, workerConfig, child)
	if err != nil {
		ch.close()
		return nil, fmt.Errorf("dispatch: worker %d: %w", id, err)
	}
	defer boot.Close()
	if err := cmd.Start(); err != nil {
		ch.close()
		crash.Close()
		return nil, fmt.Errorf("dispatch: start worker %d: %w", id, err)
	}
	now := time.Now()
	p := &proc{
		id: id, pid: cmd.Process.Pid, cmd: cmd, ch: ch, state: stateStarting,
		started: now, lastBeat: now, pending: map[uint64]sent{}, exited: make(chan struct{}),
		ready: make(chan struct{}), maxServed: m.requestLimit(),
	}
	if install {
		m.mu.Lock()
		if m.slotLocked(id) == nil && id <= len(m.procs) {
			m.procs[id-1] = p
		} else {
			// Scaled down (or filled) since the caller looked: not needed.
			p.retired = true
			ch.closeWrite()
		}
		m.mu.Unlock()
	}
	m.wg.Add(2)
	go func() { defer m.wg.Done(); m.readWorker(p) }()
	go func() {
		defer m.wg.Done()
		p.waitErr = cmd.Wait()
		if cause := crashCause(crash); cause != "" {
			m.mu.Lock()
			p.fatal = cause
			m.mu.Unlock()
		}
		crash.Close()
		close(p.exited)
		m.emit(procEvent{evExit, p})
	}()
	return p, nil
}

// finished counts n connections of p as ended: room for more.
func (m *Master) finished(p *proc, n int64) {
	m.mu.Lock()
	p.inFlight -= n
	if p.inFlight < 0 {
		p.inFlight = 0
	}
	m.uncapLocked(p)
	m.mu.Unlock()
	m.signalCapacity()
}

// readWorker handles one worker's messages until its channel closes.
func (m *Master) readWorker(p *proc) {
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(4*4))
	for {
		msg, fds, err := p.ch.recv(buf, oob)
		closeAll(fds) // workers send no fds
		if err != nil && !errors.Is(err, errTruncated) {
			return
		}
		// errTruncated: fds the master does not want were lost; the
		// message is whole.
		switch msg[0] {
		case msgReady:
			m.mu.Lock()
			first := p.state == stateStarting
			if first {
				p.state = stateReady
			}
			m.mu.Unlock()
			if first {
				close(p.ready)
			}
			m.emit(procEvent{evReady, p})
			m.signalCapacity()
		case msgAck:
			if len(msg) < 10 {
				continue
			}
			m.ack(p, binary.LittleEndian.Uint64(msg[1:9]), msg[9])
		case msgAcks:
			if len(msg) < 5 {
				continue
			}
			// Connections finished first: they may be what gives a
			// starved worker room again.
			if n := binary.LittleEndian.Uint32(msg[1:5]); n > 0 {
				m.finished(p, int64(n))
			}
			for rec := msg[5:]; len(rec) >= 9; rec = rec[9:] {
				m.ack(p, binary.LittleEndian.Uint64(rec), rec[8])
			}
		case msgDone:
			if len(msg) < 5 {
				continue
			}
			m.finished(p, int64(binary.LittleEndian.Uint32(msg[1:5])))
		case msgHeartbeat:
			var r workerReport
			if json.Unmarshal(msg[1:], &r) != nil {
				continue
			}
			m.mu.Lock()
			p.lastBeat = time.Now()
			p.report = r
			// A worker that ran out of descriptors is offered one more
			// connection at each beat, in case what held them was not
			// connections (see ack: each one it takes raises its cap).
			// A soft cap (a full channel) ends: it beats, so it reads.
			lifted := p.capped
			switch {
			case p.capped && p.capSoft:
				p.capped = false
			case p.capped && p.inFlight >= p.fdCap:
				p.fdCap = p.inFlight + 1
			default:
				lifted = false
			}
			cause := m.recycleCauseLocked(p)
			if cause != "" {
				p.recycling = true
			}
			m.mu.Unlock()
			if cause != "" {
				m.wg.Add(1)
				go func() { defer m.wg.Done(); m.recycle(p, cause) }()
			}
			if lifted {
				m.signalCapacity()
			}
		case msgFatal:
			m.mu.Lock()
			p.fatal = string(msg[1:])
			m.mu.Unlock()
		}
	}
}

// watchHeartbeats kills workers whose heartbeat stopped: SIGTERM, then
// SIGKILL a second later (a hung process may not act on SIGTERM, and a
// stopped one cannot); supervise replaces them.
func (m *Master) watchHeartbeats(ctx context.Context) {
	t := time.NewTicker(m.cfg.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			m.mu.Lock()
			var hung []*proc
			for _, p := range m.procs {
				if p != nil && p.state != stateExited && !p.hung && now.Sub(p.lastBeat) > m.cfg.WorkerTimeout {
					p.hung = true
					hung = append(hung, p)
				}
			}
			m.mu.Unlock()
			for _, p := range hung {
				m.log.Error("worker stopped answering; killing it", "worker", p.id, "pid", p.pid, "silent_for", m.cfg.WorkerTimeout)
				m.mu.Lock()
				m.stats.HungKilled++
				m.mu.Unlock()
				p.kill(syscall.SIGTERM)
				m.wg.Add(1)
				go func() {
					defer m.wg.Done()
					select {
					case <-p.exited:
					case <-time.After(time.Second):
						p.kill(syscall.SIGKILL)
					}
				}()
			}
		}
	}
}

// emit passes an event to Run's loop, unless Run has returned.
func (m *Master) emit(ev procEvent) {
	select {
	case m.events <- ev:
	case <-m.quit:
	}
}

// signalCapacity wakes every accept loop waiting for a worker with room.
func (m *Master) signalCapacity() {
	m.mu.Lock()
	if m.capWait {
		close(m.capCh)
		m.capCh = make(chan struct{})
		m.capWait = false
	}
	m.mu.Unlock()
}

// capacityLocked returns a channel closed at the next signalCapacity.
func (m *Master) capacityLocked() <-chan struct{} {
	m.capWait = true
	return m.capCh
}

type procState int

const (
	stateStarting procState = iota
	stateReady
	stateExited
)

func (s procState) String() string {
	switch s {
	case stateStarting:
		return "starting"
	case stateReady:
		return "ready"
	case stateExited:
		return "exited"
	}
	return "unknown"
}

// proc is one worker process, as the master sees it. Fields other than the
// immutable ones are guarded by Master.mu.
type proc struct {
	id, pid int
	cmd     *exec.Cmd
	ch      *channel
	started time.Time
	exited  chan struct{} // closed when the process has exited
	ready   chan struct{} // closed when it said ready
	waitErr error         // set before exited is closed

	state   procState
	retired bool // told to drain: its exit is not a crash
	hung    bool
	fatal   string
	// capped: it could not take a connection, and fdCap is the most
	// connections it is sent until then (see limitLocked, capLocked).
	capped  bool
	capSoft bool
	fdCap   int64
	// recycling: a replacement is being started; maxServed is this
	// worker's request limit (MaxRequests plus its own jitter).
	recycling bool
	maxServed uint64
	lastBeat  time.Time
	report    workerReport

	pending  map[uint64]sent // fds sent, not yet acknowledged, by seq
	inFlight int64           // sent and not yet done
	accepted uint64
	refused  uint64
	requeued uint64
}

func (p *proc) kill(sig syscall.Signal) { p.cmd.Process.Signal(sig) }

const killSignal = syscall.SIGKILL

// failure describes why a worker ended.
func (p *proc) failure() string {
	if p.fatal != "" {
		return p.fatal
	}
	if p.waitErr != nil {
		return p.waitErr.Error()
	}
	return "exited"
}

type evKind int

const (
	evReady evKind = iota
	evExit
)

type procEvent struct {
	kind evKind
	p    *proc
}

// openFDs counts this process's open descriptors (-1 where /proc is absent).
func openFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents) - 1 // the directory's own descriptor
}
