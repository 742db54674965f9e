package dispatch

// A group of workers: creating it, running it, stopping it.

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Group is one group of workers: its listeners and its worker processes,
// which it starts, feeds (rr), supervises and stops. A Cluster runs one or
// more groups in one master process.
type Group struct {
	cfg Config
	log *slog.Logger
	lis []*listener
	// gomaxprocs is the workers' GOMAXPROCS (cfg.Procs until SetProcs).
	gomaxprocs atomic.Int32

	mu sync.Mutex // mu guards everything below
	// procsFor is Config.ProcsFor, of the last configuration applied.
	procsFor func(total int) int
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
	// secrets are the program's (SetSecrets), given to every worker at its
	// start and again when they change; secretsGen counts the changes.
	// started are the worker processes not yet exited, installed or not.
	secrets    []byte
	secretsGen uint64
	started    map[*proc]struct{}
	// challenges are the program's live ACME challenges
	// (SetChallenges), given to every worker at its start while any;
	// challengesGen counts the changes, and seenCh is closed (and
	// replaced) when a worker says it answers a generation.
	challenges    []byte
	challengesGen uint64
	seenCh        chan struct{}
	// load is the shared policy's table of open connections per worker,
	// loadFile what the workers map (see load.go); nil for rr, reuseport.
	load     *loadTable
	loadFile *os.File

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

// New checks cfg and binds the listener (so a port in use fails here).
func NewGroup(cfg Config) (*Group, error) {
	if err := cfg.defaults(); err != nil {
		return nil, fmt.Errorf("dispatch: %w", err)
	}
	// reuseport: the master only reserves the port (a bound socket is not in
	// the SO_REUSEPORT group, so nothing is queued on it); workers listen.
	// Sockets passed by systemd (socket activation) were matched to
	// cfg.Listen by NewCluster.
	var lis []*listener
	closeAll := func() {
		for _, l := range lis {
			l.close()
		}
	}
	for j, addr := range cfg.Listen {
		var l *listener
		if j < len(cfg.inherited) && cfg.inherited[j] != nil {
			l = cfg.inherited[j]
		} else {
			var err error
			if l, err = listenTCP(addr, cfg.Backlog, cfg.Sched == SchedReusePort, cfg.Sched != SchedReusePort); err != nil {
				closeAll()
				return nil, fmt.Errorf("dispatch: %w", err)
			}
		}
		lis = append(lis, l)
		// Set on an inherited socket too: a reload may have changed what
		// its handlers expect (reuseport workers set their own).
		if cfg.Sched != SchedReusePort {
			if err := l.setDeferAccept(cfg.deferAccept(j)); err != nil {
				closeAll()
				return nil, fmt.Errorf("dispatch: %w", err)
			}
		}
	}
	m := &Group{
		cfg: cfg, log: cfg.Logger, lis: lis,
		procs:   make([]*proc, cfg.Workers),
		capCh:   make(chan struct{}),
		events:  make(chan procEvent, cfg.Workers*2),
		restart: make(chan int),
		quit:    make(chan struct{}),
	}
	m.gomaxprocs.Store(int32(cfg.Procs))
	m.procsFor = cfg.ProcsFor
	if cfg.Name != "" {
		m.log = m.log.With("group", cfg.Name)
	}
	if cfg.Sched == SchedShared {
		var err error
		if m.load, m.loadFile, err = newLoadTable(); err != nil {
			m.closeListeners()
			return nil, fmt.Errorf("dispatch: %w", err)
		}
		m.load.setWorkers(cfg.Workers)
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
func (m *Group) Addr() *net.TCPAddr { return m.lis[0].addr }

// Addrs are the bound addresses, in Config.Listen's order.
func (m *Group) Addrs() []*net.TCPAddr {
	a := make([]*net.TCPAddr, len(m.lis))
	for i, l := range m.lis {
		a[i] = l.addr
	}
	return a
}

func (m *Group) closeListeners() {
	for _, l := range m.lis {
		l.close()
	}
}

// Run starts the workers, calls ready once all are serving, and serves until
// ctx ends; it then stops gracefully within ShutdownTimeout and returns
// ErrMasterClosed. A worker that cannot start at first, or a crash loop
// (single group), ends Run with an error naming the cause; later, a worker
// that cannot be started is retried (see supervise).
func (m *Group) Run(ctx context.Context, ready func()) error {
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
		// Closed before it is said: whoever reads the line finds the port
		// closed (shutdown's second close is a no-op).
		m.closeListeners()
		m.log.Info("shutting down: no new connections; draining workers", "timeout", m.cfg.ShutdownTimeout)
	}
	m.shutdown()
	if err != nil {
		return err
	}
	return ErrMasterClosed
}

// awaitReady waits until every worker said ready, or one failed.
func (m *Group) awaitReady(ctx context.Context) error {
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

// shutdown stops accepting, tells every worker to drain, and waits for them
// within ShutdownTimeout, killing what is left.
func (m *Group) shutdown() {
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
func (m *Group) stopAll() {
	m.mu.Lock()
	m.closing = true
	var live []*proc
	for _, p := range m.procs {
		if p != nil {
			p.retired = true // under mu: readWorker reads it there
			live = append(live, p)
		}
	}
	m.mu.Unlock()
	for _, p := range live {
		p.ch.CloseWrite()
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

// slotLocked is the worker in slot id, or nil (also past the end, after a
// scale-down).
func (m *Group) slotLocked(id int) *proc {
	if id < 1 || id > len(m.procs) {
		return nil
	}
	return m.procs[id-1]
}

// emit passes an event to Run's loop, unless Run has returned.
func (m *Group) emit(ev procEvent) {
	select {
	case m.events <- ev:
	case <-m.quit:
	}
}

// signalCapacity wakes every accept loop waiting for a worker with room.
func (m *Group) signalCapacity() {
	m.mu.Lock()
	if m.capWait {
		close(m.capCh)
		m.capCh = make(chan struct{})
		m.capWait = false
	}
	m.mu.Unlock()
}

// capacityLocked returns a channel closed at the next signalCapacity.
func (m *Group) capacityLocked() <-chan struct{} {
	m.capWait = true
	return m.capCh
}
