package host

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tetratelabs/wazero"

	"github.com/wcluster/wcluster/abi"
	"github.com/wcluster/wcluster/internal/kvstore"
	"github.com/wcluster/wcluster/internal/stats"
)

// Options configure a Handler. Zero values mean "no limit" unless said.
type Options struct {
	// Wasm is the module's bytes, not modified once given (Modules knows
	// the bytes it hashed by their address); Name names it in messages.
	Wasm []byte
	Name string
	// CacheDir holds compiled code shared by every worker ("" disables it).
	CacheDir string
	// WorkerID is what the guest's worker_id returns.
	WorkerID int
	// MemoryLimit caps each instance's linear memory, in bytes (rounded down
	// to 64 KiB pages; 0 leaves wazero's 4 GiB).
	MemoryLimit uint64
	// Timeout bounds each call into the guest (and a command's whole run);
	// an instance that overruns it is stopped and discarded. 0: no limit,
	// and guests run without the termination checks a limit needs.
	Timeout time.Duration
	// ReadTimeout and WriteTimeout bound how long one conn_read or
	// conn_write waits for the peer; the call then sees ErrTimeout.
	ReadTimeout, WriteTimeout time.Duration
	// IdleTimeout closes a connection parked with Keep that stays silent.
	IdleTimeout time.Duration
	// FirstByteTimeout closes a new connection whose peer sends nothing for
	// this long. Until its first bytes arrive a connection waits, holding no
	// instance (unless the module speaks first: Info.SpeaksFirst).
	FirstByteTimeout time.Duration
	// FirstByteLimit bounds the connections waiting for their first byte;
	// past it the one waiting longest is closed (counted in
	// Stats.FirstByteShed, logged once per burst).
	FirstByteLimit int
	// HandedOff says connections come from a master that keeps its copy of
	// each until this worker acknowledges it (dispatch's rr): the worker's
	// close is then seldom the last, and would leave the FIN to the
	// master's close, later and on the master's CPU. A connection is shut
	// down (SHUT_WR) before it is closed.
	HandedOff bool
	// PartialTimeout bounds how long an incomplete message (bytes the guest
	// pushed back with conn_unread before returning Keep) may wait for its
	// rest, counted from when the guest last wrote; the connection is then
	// closed.
	PartialTimeout time.Duration
	// DrainGrace is how long a draining handler keeps an idle connection
	// for the peer's next request, which is then served with FlagDraining
	// (0: idle connections close at once). The worker's shutdown timeout
	// bounds it.
	DrainGrace time.Duration
	// Instances caps the guest instances alive at once in this worker, and so
	// the calls running at once (default 64). Connections wait for one.
	Instances int
	// MinInstances are created at start and kept warm (default 2, as
	// config.Default; at most Instances). Negative: none, the first is made
	// by the first call, and idle instances shrink back to none.
	MinInstances int
	// MaxReuse retires an instance after this many calls (0: never).
	MaxReuse int
	// Fresh gives every connection a new instance, closed with it.
	Fresh bool
	// Env is the guest's WASI environment, "KEY=value" (nothing of the
	// host's is passed unless listed here).
	Env []string
	// Config holds the values the guest reads with config_get.
	Config map[string]string
	// KV is the tenant's key-value store (the kv_* functions); nil: they
	// return ErrUnavailable.
	KV *kvstore.Tenant
	// Mount, when set, is a host directory the guest sees read-only at
	// MountPoint, and nothing outside it (symlinks leading out of it do not
	// resolve); without it the guest has no filesystem at all.
	Mount string
	// Logger receives the guest's log lines and the host's reports.
	Logger *slog.Logger
	// Budget bounds the linear memory of all the instances of a worker:
	// one Budget shared by every Handler of the worker (nil: none).
	// MemoryBudget bounds this Handler's instances (0: none). A memory.grow
	// past either fails (the guest sees an ordinary out-of-memory); a call
	// that needs a new instance waits for room at most MemoryWait (default
	// 10s), idle instances being closed first to make it.
	Budget       *Budget
	MemoryBudget uint64
	MemoryWait   time.Duration
	// Upstream is the URL an http-wasm guest's next handler proxies to
	// ("": next answers 404).
	Upstream string
	// GuestConfig is what an http-wasm guest's get_config returns.
	GuestConfig []byte
	// AccessLog is the access log's format: "" or "off" (none), "common"
	// or "json"; lines go to AccessLogTo (default os.Stdout), one write
	// each.
	AccessLog   string
	AccessLogTo io.Writer
	// Modules shares the compiled module with the other Handlers given the
	// same Modules (nil: the Handler compiles its own).
	Modules *Modules

	// idleInstance: instances idle for longer, beyond MinInstances, are
	// closed (0: 30s; shorter in tests).
	idleInstance time.Duration
}

// MountPoint is where the guest sees Options.Mount.
const MountPoint = "/data"

func (o *Options) defaults() {
	if o.Instances <= 0 {
		o.Instances = 64
	}
	if o.MinInstances == 0 {
		o.MinInstances = 2 // negative stays: none (see warm)
	}
	if o.MinInstances > o.Instances {
		o.MinInstances = o.Instances
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.Name == "" {
		o.Name = "handler"
	}
	if o.MemoryWait <= 0 {
		o.MemoryWait = 10 * time.Second
	}
	if o.AccessLogTo == nil {
		o.AccessLogTo = os.Stdout
	}
	if o.idleInstance <= 0 {
		o.idleInstance = 30 * time.Second
	}
}

// Stats are a Handler's counters since it started.
type Stats struct {
	Conns      uint64 // connections served to the end (on a routed listener: each stay with this handler)
	Calls      uint64 // calls into the guest
	Traps      uint64 // calls that trapped or exited
	Timeouts   uint64 // calls stopped at the time limit
	MemLimit   uint64 // calls that failed for want of memory
	Instances  uint64 // instances created
	InstanceNs uint64 // total time spent creating instances
	Live       int64  // instances alive now
	Open       int64  // connections open now
	LogDropped uint64 // lines of guest output dropped by the rate limit
	// Memory is the tenant's guest memory: its budget (Limit 0: none), the
	// linear memory of its instances now, calls that waited for room and
	// refusals (memory.grow refused, waits given up).
	Memory BudgetStats
	// FirstByteTimeouts counts connections closed for sending nothing
	// within FirstByteTimeout, FirstByteShed those closed to keep
	// FirstByteLimit, PartialTimeouts those closed with an incomplete
	// message at PartialTimeout. AwaitingFirst is the connections waiting
	// for their first byte now.
	FirstByteTimeouts, FirstByteShed, PartialTimeouts uint64
	AwaitingFirst                                     int64
	// Latency counts calls by duration: Latency[i] those that took at most
	// stats.LatencyBounds()[i], the last one those that took longer. LatencyNs is
	// their total time. A call is one request for a handler that answers
	// one and returns Keep; for one that loops, a whole connection.
	Latency   [latencyBuckets]uint64
	LatencyNs uint64
	// UpstreamErrors counts requests an http-wasm guest passed on that the
	// upstream failed (answered 502 or 504).
	UpstreamErrors uint64
	// Responses counts an http-wasm handler's responses by status class:
	// Responses[0] 1xx (final ones: 101) ... Responses[4] 5xx.
	Responses [5]uint64
}

// Handler serves connections with one compiled guest module.
type Handler struct {
	opts     Options
	info     Info
	rt       wazero.Runtime // shared: see Modules
	compiled wazero.CompiledModule
	image    *memImage // the compiled module's data (nil: in the module)
	spares   spares    // closed instances' memory reservations, for the next
	modCfg   wazero.ModuleConfig
	// ownModules are the Modules made for this Handler alone (nil
	// Options.Modules), closed with it.
	ownModules *Modules

	root *os.Root // Options.Mount, opened

	access *accessLog // nil: off

	sem chan struct{} // one token per instance in use
	// creating is held while a pooled instance is created (one at a time);
	// returned is signalled when an instance goes back to the pool.
	creating, returned chan struct{}
	mu                 sync.Mutex // mu guards idle, maintaining and conns
	idle               []*instance
	maintaining        bool // maintain runs (it does while idle holds instances)
	// conns are the open connections, for Drain to wake the parked ones.
	conns    map[*conn]struct{}
	draining atomic.Bool // set once, by Drain, under mu
	// lastAnswers makes every answer its connection's last (LastAnswers).
	lastAnswers atomic.Bool
	// drainBy is when the drain's grace ends (UnixNano), set before draining.
	drainBy atomic.Int64
	// awaiting are the connections waiting for their first byte, oldest
	// first (under mu). Those that stopped waiting are dropped lazily:
	// nAwaiting counts the ones still waiting.
	awaiting  []*conn
	nAwaiting atomic.Int64
	shedLog   atomic.Int64 // when shedding was last logged (mono)

	nextConn atomic.Int64
	// bufs lends parked connections a buffer for the bytes that woke them
	// (parkBuf each), only until the guest has read them.
	bufs  sync.Pool
	stats struct {
		conns, calls, traps, timeouts, memLimit, instances, instanceNs atomic.Uint64
		logDropped                                                     atomic.Uint64
		live                                                           atomic.Int64
		firstByteTimeouts, firstByteShed, partialTimeouts              atomic.Uint64
		latency                                                        [latencyBuckets]atomic.Uint64
		latencyNs                                                      atomic.Uint64
	}

	epoch time.Time // mono's origin

	lines lineLimiter // rate limit of guest output to the log
	// limited holds every instance under the time limit, for watch.
	limitMu sync.Mutex
	limited map[*instance]struct{}
	// watching: watch runs (it does while limited holds an instance).
	watching bool

	stop chan struct{} // closed by Close: stops maintain and watch
	done sync.WaitGroup

	budget   *Budget       // this Handler's own (Options.MemoryBudget)
	startMem atomic.Uint64 // what a new instance is reserved: see reserveStart
	web      *web          // the HTTP server of an http-wasm guest (KindHTTP)
}

// New compiles the module (from the cache when warm), checks it can be
// served, and creates the first instances.
func New(ctx context.Context, opts Options) (*Handler, error) {
	opts.defaults()
	h, err := newHandler(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", opts.Name, err)
	}
	return h, nil
}

// newHandler is New; its error does not name the module.
func newHandler(ctx context.Context, opts Options) (*Handler, error) {
	opts.defaults()
	var own *Modules
	if opts.Modules == nil {
		own = NewModules()
		opts.Modules = own
	}
	m, err := opts.Modules.get(ctx, &opts)
	if err != nil {
		if own != nil {
			own.Close(ctx)
		}
		return nil, err
	}
	h := &Handler{opts: opts, rt: m.rt, compiled: m.compiled, image: m.image, info: m.info, ownModules: own, conns: map[*conn]struct{}{}, limited: map[*instance]struct{}{},
		stop: make(chan struct{}), epoch: time.Now(), budget: NewBudget(opts.MemoryBudget), access: newAccessLog(&opts)}
	h.bufs.New = func() any { b := make([]byte, parkBuf); return &b }
	h.spares.max = min(opts.Instances, maxSpares)
	h.spares.charge, h.spares.uncharge = h.charge, h.uncharge
	if err := h.init(ctx); err != nil {
		close(h.stop)
		h.done.Wait()
		for _, inst := range h.idle { // the runtime may be shared: close them here
			inst.close(ctx)
		}
		h.spares.close()
		if own != nil {
			own.Close(ctx)
		}
		if h.root != nil {
			h.root.Close()
		}
		return nil, err
	}
	h.opts.Budget.join(h, true)
	h.mu.Lock()
	h.startMaintain()
	h.mu.Unlock()
	return h, nil
}

func (h *Handler) init(ctx context.Context) error {
	for _, m := range h.compiled.ExportedMemories() {
		h.startMem.Store(uint64(m.Min()) << 16)
	}
	if h.info.Kind == KindHTTP {
		if err := h.initWeb(ctx); err != nil {
			return err
		}
	}
	h.modCfg = wazero.NewModuleConfig().
		WithName("").
		WithSysWalltime().WithSysNanotime().WithSysNanosleep().
		WithRandSource(rand.Reader).
		WithArgs(h.opts.Name)
	for _, kv := range h.opts.Env {
		k, v, _ := cutEnv(kv)
		h.modCfg = h.modCfg.WithEnv(k, v)
	}
	if h.opts.Mount != "" {
		// An os.Root, not wazero's DirFS: DirFS follows a symlink out of the
		// directory (a link to /etc would expose it), a Root does not. The
		// fs.FS adapter is read-only.
		root, err := os.OpenRoot(h.opts.Mount)
		if err != nil {
			return fmt.Errorf("mount: %w", err)
		}
		h.root = root
		h.modCfg = h.modCfg.WithFSConfig(wazero.NewFSConfig().WithFSMount(root.FS(), MountPoint))
	}
	h.sem = make(chan struct{}, h.opts.Instances)
	h.creating = make(chan struct{}, 1)
	h.returned = make(chan struct{}, 1)
	if (h.info.Kind == KindABI || h.info.Kind == KindHTTP) && !h.opts.Fresh {
		// A module that cannot even start is reported now, not per connection.
		for i := range h.warm() {
			// Warm instances only as far as the budgets allow, but the
			// first always: it tells whether the module can start.
			n := h.startMem.Load()
			if !h.charge(n) {
				if i > 0 {
					break
				}
				h.budget.force(n)
				h.opts.Budget.force(n)
			}
			inst, err := h.newInstance(ctx, n)
			if err != nil {
				return h.startErr(err)
			}
			h.idle = append(h.idle, inst)
		}
	}
	return nil
}

// warm is the number of instances kept warm (MinInstances, none when
// negative).
func (h *Handler) warm() int { return max(h.opts.MinInstances, 0) }

func cutEnv(kv string) (string, string, bool) {
	for i := 0; i < len(kv); i++ {
		if kv[i] == '=' {
			return kv[:i], kv[i+1:], true
		}
	}
	return kv, "", false
}

// Info says how the module is served.
func (h *Handler) Info() Info { return h.info }

// Prepare compiles the module exactly as a worker will, filling the
// compilation cache, and checks it can be served: it instantiates it once,
// with the limits of opts, running its start functions under the time
// limit, as a worker does. So what a worker would refuse (a memory minimum
// above the limit, a start function that never ends, a reserved export) is
// refused here, with the same message. The master calls it before starting
// workers, so they start warm and a bad module stops it early; `wcluster
// check` calls it too.
func Prepare(ctx context.Context, opts Options) (Info, error) {
	opts.Instances, opts.MinInstances, opts.Fresh = 1, 1, false
	h, err := newHandler(ctx, opts)
	if err != nil {
		return Info{}, err
	}
	defer h.Close(ctx)
	if h.info.Kind == KindCommand {
		// A command's instance is made per connection; make one now, without
		// running _start (it would serve a connection).
		n := h.startMem.Load()
		h.budget.force(n)
		h.opts.Budget.force(n)
		inst, err := h.newInstance(ctx, n)
		if err != nil {
			return h.info, err
		}
		inst.close(ctx)
	}
	if h.web != nil {
		h.info.Features = FeatureNames(h.web.features.Load())
	}
	if h.info.Kind != KindHTTP && (opts.Upstream != "" || len(opts.GuestConfig) > 0) {
		return h.info, fmt.Errorf("an upstream and a guest config are for http-wasm handlers, and this module is a %s: drop them, or serve an http-wasm guest", h.info.Kind)
	}
	return h.info, nil
}

// mono is t on the handler's monotonic clock, in nanoseconds (> 0).
func (h *Handler) mono(t time.Time) int64 { return int64(t.Sub(h.epoch)) + 1 }

// now is time.Now read from the monotonic clock alone (one clock read where
// time.Now makes two): for the times taken around every call, which are
// compared and subtracted, never shown.
func (h *Handler) now() time.Time { return h.epoch.Add(time.Since(h.epoch)) }

// Stats returns the handler's counters.
func (h *Handler) Stats() Stats {
	return Stats{
		Conns: h.stats.conns.Load(), Calls: h.stats.calls.Load(), Traps: h.stats.traps.Load(),
		Timeouts: h.stats.timeouts.Load(), MemLimit: h.stats.memLimit.Load(),
		Instances: h.stats.instances.Load(), InstanceNs: h.stats.instanceNs.Load(),
		Live: h.stats.live.Load(), Open: h.open(), LogDropped: h.stats.logDropped.Load(),
		FirstByteTimeouts: h.stats.firstByteTimeouts.Load(), FirstByteShed: h.stats.firstByteShed.Load(),
		PartialTimeouts: h.stats.partialTimeouts.Load(), AwaitingFirst: h.nAwaiting.Load(),
		Latency: h.latency(), LatencyNs: h.stats.latencyNs.Load(),
		Memory:         h.budget.Stats(),
		UpstreamErrors: h.upstreamErrors(),
		Responses:      h.responses(),
	}
}

// maxStalls is how many calls in a row may return Keep without reading the
// bytes waiting for them before the connection is closed.
const maxStalls = 3

// parkBuf is the read-ahead of a parked connection: a whole request for
// most HTTP clients; a longer one is read on by the guest as usual.
const parkBuf = 4 << 10

// latencyBuckets is len(latencyBounds())+1: the last bucket is +Inf. The
// bounds are the stats contract's, which admin reads them from.
const latencyBuckets = stats.LatencyBuckets

func latencyBounds() [latencyBuckets - 1]float64 { return stats.LatencyBounds() }

func (h *Handler) latency() (out [latencyBuckets]uint64) {
	for i := range out {
		out[i] = h.stats.latency[i].Load()
	}
	return out
}

// observe counts one call of duration d.
func (h *Handler) observe(d time.Duration) {
	h.stats.latencyNs.Add(uint64(d))
	sec := d.Seconds()
	for i, b := range latencyBounds() {
		if sec <= b {
			h.stats.latency[i].Add(1)
			return
		}
	}
	h.stats.latency[latencyBuckets-1].Add(1)
}

func (h *Handler) open() int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return int64(len(h.conns))
}

// LastAnswers makes every call from now on carry FLAG_DRAINING (an HTTP
// guest answers Connection: close; the http-wasm host does so itself) but,
// unlike Drain, keeps serving every request and every new connection, and
// wakes no one: each connection ends after its next answer.
func (h *Handler) LastAnswers() {
	h.lastAnswers.Store(true)
	if h.web != nil {
		h.web.srv.SetKeepAlivesEnabled(false)
	}
}

// Drain asks every connection to finish: later calls carry FlagDraining
// (an HTTP guest answers "Connection: close"), and a parked connection
// waits at most DrainGrace more for the peer's next request, so a client
// reusing its connection at this moment is answered rather than reset; it
// then closes. It does not wait; ServeConn calls return as they finish.
func (h *Handler) Drain() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.drainBy.Store(time.Now().Add(h.opts.DrainGrace).UnixNano())
	h.draining.Store(true)
	if h.web != nil {
		h.web.drain()
	}
	for c := range h.conns {
		c.wake()
	}
}

// drainDeadline is when a draining handler's parked connections close.
func (h *Handler) drainDeadline() time.Time { return time.Unix(0, h.drainBy.Load()) }

// shedLogEvery spaces the log entries about connections closed to keep
// FirstByteLimit: one per burst, with the count so far.
const shedLogEvery = 10 * time.Second

// await registers c as waiting for its first byte, under mu, and returns
// the connection closed to make room for it, if any.
func (h *Handler) await(c *conn) (shed *conn) {
	c.awaiting.Store(awaitWaiting)
	h.awaiting = append(h.awaiting, c)
	n := h.nAwaiting.Add(1)
	if limit := h.opts.FirstByteLimit; limit > 0 && n > int64(limit) {
		for len(h.awaiting) > 0 && shed == nil {
			old := h.awaiting[0]
			h.awaiting[0] = nil
			h.awaiting = h.awaiting[1:]
			if old.awaiting.CompareAndSwap(awaitWaiting, awaitShed) {
				h.nAwaiting.Add(-1)
				shed = old
			}
		}
	}
	if len(h.awaiting) > 64 && int64(len(h.awaiting)) > 2*h.nAwaiting.Load() {
		// Drop the connections that stopped waiting (amortised: the slice
		// at least halves).
		kept := make([]*conn, 0, len(h.awaiting)/2)
		for _, w := range h.awaiting {
			if w.awaiting.Load() == awaitWaiting {
				kept = append(kept, w)
			}
		}
		h.awaiting = kept
	}
	return shed
}

// shed closes c, waiting for its first byte, to keep FirstByteLimit.
func (h *Handler) shed(c *conn) {
	total := h.stats.firstByteShed.Add(1)
	// Its wait ends; it sees awaitShed. (A conn without f yet has not
	// waited: its wait, when it comes, makes f and then sees awaitShed.)
	if c.hasFile.Load() {
		c.f.SetReadDeadline(time.Unix(1, 0))
	}
	now := h.mono(time.Now())
	if last := h.shedLog.Load(); (last == 0 || now-last >= int64(shedLogEvery)) && h.shedLog.CompareAndSwap(last, now) {
		h.opts.Logger.Warn("too many connections waiting for their first byte: closing the oldest",
			"first_byte_limit", h.opts.FirstByteLimit, "closed_so_far", total)
	}
}

// Close releases every instance and the runtime. Call it after every
// ServeConn has returned.
func (h *Handler) Close(ctx context.Context) error {
	h.opts.Budget.join(h, false)
	if h.web != nil {
		h.web.close()
	}
	close(h.stop)
	h.done.Wait()
	h.mu.Lock()
	idle := h.idle
	h.idle = nil
	h.mu.Unlock()
	for _, inst := range idle {
		inst.close(ctx)
	}
	h.spares.close()
	if h.root != nil {
		defer h.root.Close()
	}
	if h.ownModules != nil {
		return h.ownModules.Close(ctx)
	}
	return nil
}

// ServeConn serves one connection until it is closed, then closes f. f must
// be a connected stream socket in non-blocking mode.
func (h *Handler) ServeConn(ctx context.Context, f *os.File) {
	c, err := newConn(f, h.nextConn.Add(1), h)
	if err != nil {
		h.opts.Logger.Warn("connection unusable", "err", err)
		f.Close()
		return
	}
	h.serve(ctx, c)
}

// servesFD reports whether serveFD can serve this handler's connections:
// an ABI handler's or a WASI command's that waits for the client to speak.
func (h *Handler) servesFD() bool {
	return (h.info.Kind == KindABI || h.info.Kind == KindCommand) && h.web == nil && !h.info.SpeaksFirst
}

// serveFD is ServeConn for a connection given as its descriptor (a
// connected stream socket in non-blocking mode), which it closes; see
// conn.fd. Only where servesFD.
func (h *Handler) serveFD(ctx context.Context, fd int) {
	h.serve(ctx, newConnFD(fd, h.nextConn.Add(1), h))
}

// serveTLS serves a connection whose TLS handshake tc has completed: the
// guest reads and writes plaintext through tc.
func (h *Handler) serveTLS(ctx context.Context, f *os.File, rc syscall.RawConn, tc *tls.Conn) {
	h.serve(ctx, newConnOn(f, rc, &tlsState{tc: tc}, h.nextConn.Add(1), h))
}

func (h *Handler) serve(ctx context.Context, c *conn) {
	// Until its first bytes arrive a connection waits as a kept-alive one
	// does, holding no instance, unless the module speaks first.
	first := !h.info.SpeaksFirst
	c.lastActive = time.Now() // the first-byte deadline counts from here
	began := c.lastActive
	var shed *conn
	h.mu.Lock()
	h.conns[c] = struct{}{}
	if h.draining.Load() {
		c.woken.Store(true) // Drain has passed: it will not wake c
	}
	if first {
		shed = h.await(c)
	}
	h.mu.Unlock()
	if shed != nil {
		h.shed(shed)
	}
	defer func() {
		if c.awaiting.CompareAndSwap(awaitWaiting, awaitNone) {
			// Still waiting: the first-byte deadline passed (or the drain's
			// grace did).
			h.nAwaiting.Add(-1)
			if !h.draining.Load() {
				h.stats.firstByteTimeouts.Add(1)
			}
		}
		h.mu.Lock()
		delete(h.conns, c)
		h.mu.Unlock()
		if h.access != nil && h.web == nil { // http-wasm logs each request
			h.access.conn(c.peerAddr(), c.nIn, c.nOut, began, time.Now())
		}
		if c.route == nil || !c.route.back { // else the Router takes it back
			c.close()
		}
		h.stats.conns.Add(1)
	}()

	if h.info.Kind == KindCommand {
		if first && !c.awaitFirst() {
			return
		}
		h.runCommand(ctx, c)
		return
	}
	if h.web != nil {
		h.web.serveConn(ctx, c)
		return
	}
	c.ctx, c.flags = ctx, abi.FlagNew
	if h.draining.Load() || h.lastAnswers.Load() {
		c.flags |= abi.FlagDraining
	}
	if !first {
		// A guest that speaks first is called at once, outside the wait loop.
		if !h.turn(c) {
			return
		}
	}
	if c.tls == nil {
		c.serveLoop()
		return
	}
	for {
		if !c.park() {
			return
		}
		if h.draining.Load() && !c.hasData() {
			return
		}
		if !h.turn(c) {
			return
		}
	}
}

// turn makes one call for c and reports whether to go on with the
// connection.
func (h *Handler) turn(c *conn) bool {
	// On a routed listener, a new request is routed first.
	if c.route != nil && !c.route.before(c) {
		return false
	}
	flags := c.flags
	if flags&abi.FlagNew != 0 && !c.arrived() {
		return false
	}
	c.flags = 0
	if h.draining.Load() || h.lastAnswers.Load() {
		flags |= abi.FlagDraining
	}
	c.progress = false
	if !h.call(c.ctx, c, flags) {
		return false
	}
	// A guest that keeps the connection without reading the bytes waiting
	// for it would be called again and again: after a few such calls the
	// connection is closed, as a guest error.
	if !c.progress && c.unseen > 0 {
		if c.stalls++; c.stalls >= maxStalls {
			h.stats.traps.Add(1)
			h.opts.Logger.Warn("guest keeps the connection without reading what waits; closing it", "conn", c.id)
			return false
		}
	} else {
		c.stalls = 0
	}
	if c.route != nil {
		return c.route.after(c)
	}
	return true
}

// call lends an instance to one call of wcluster_handle and reports whether
// the guest asked to keep the connection.
func (h *Handler) call(ctx context.Context, c *conn, flags int32) (keep bool) {
	inst, err := h.acquire(ctx)
	if err != nil {
		h.opts.Logger.Warn("no instance for connection", append([]any{"conn", c.id}, trapAttrs(err)...)...)
		return false
	}
	h.stats.calls.Add(1)
	begin := h.now()
	res, err := inst.handle(c, flags, begin)
	end := h.now()
	c.lastActive = end
	h.observe(end.Sub(begin))
	h.release(inst, err == nil, end)
	if err != nil {
		h.report(c, err)
		return false
	}
	switch r := int32(res); {
	case r == abi.Keep:
		return true
	case r == abi.ErrClosed || r == abi.ErrTimeout:
		// The peer went away or its time ran out: a normal end, whatever
		// the SDK made of it.
		h.opts.Logger.Debug("guest returned an error", "conn", c.id, "code", r, "name", codeName(r))
	case r < 0:
		h.opts.Logger.Warn("guest returned an error", "conn", c.id, "code", r, "name", codeName(r))
	}
	return false
}

// codeName names a code a guest returned: the ABI's, or the guest's own
// (≤ -100 by convention).
func codeName(r int32) string {
	if n := abi.ErrorName(r); n != "" {
		return n
	}
	if r <= -100 {
		return "guest-defined"
	}
	return "unknown"
}

// report logs and counts why a call failed.
func (h *Handler) report(c *conn, err error) {
	switch {
	case errors.Is(err, errDeadline):
		h.stats.timeouts.Add(1)
		h.opts.Logger.Warn("guest stopped at its time limit", "conn", c.id, "timeout", h.opts.Timeout)
	case isMemoryError(err):
		h.stats.memLimit.Add(1)
		h.opts.Logger.Warn("guest ran out of memory", append([]any{"conn", c.id, "limit", h.opts.MemoryLimit}, trapAttrs(err)...)...)
	default:
		// One entry: the error's first line, and the wasm stack (function
		// names, when the module keeps its name section) in a field.
		h.stats.traps.Add(1)
		h.opts.Logger.Warn("guest trapped", append([]any{"conn", c.id}, trapAttrs(err)...)...)
	}
}

// runCommand serves a WASI command: a fresh instance whose _start runs with
// stdin and stdout bound to the connection, within the time limit.
func (h *Handler) runCommand(ctx context.Context, c *conn) {
	select {
	case h.sem <- struct{}{}:
	case <-ctx.Done():
		return
	}
	defer func() { <-h.sem }()
	var waited bool
	var deadline time.Time
	n, _, err := h.reserveStart(ctx, nil, &waited, &deadline)
	if err != nil {
		h.opts.Logger.Warn("no instance for connection", "conn", c.id, "err", err)
		return
	}
	h.stats.calls.Add(1)
	inst := &instance{h: h, cur: c, prepaid: n}
	_, inst.output.stderr = newOutStreams()
	begin := time.Now()
	if h.opts.Timeout > 0 {
		c.deadline = begin.Add(h.opts.Timeout)
	}
	mod, err := h.instantiate(ctx, inst, h.modCfg.
		WithStdin(stdin{inst}).WithStdout(stdout{inst}).WithStderr(logWriter{inst, inst.output.stderr}), "_start")
	inst.flushLog()
	h.stats.instances.Add(1)
	h.stats.instanceNs.Add(uint64(time.Since(begin)))
	defer inst.close(ctx)
	if err != nil && !isExit0(err) {
		if mod == nil {
			h.report(c, err)
			return
		}
		h.report(c, inst.deadlineErr(err))
	}
}
