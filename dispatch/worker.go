package dispatch

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wcluster/wcluster/internal/ipc"
	"github.com/wcluster/wcluster/internal/stats"
	"golang.org/x/sys/unix"
)

// EnvWorkerID makes a process a worker (1..N); its configuration comes
// through an inherited descriptor (see spawn.go).
const EnvWorkerID = "WCLUSTER_WORKER_ID"

// Handler serves connections in a worker. The program wires it to the host.
type Handler interface {
	// ServeFD serves the socket fd (connected, non-blocking) until it is
	// done, and closes it. listener is the index in Config.Listen of the
	// address it arrived on. A descriptor, not an *os.File: making one puts
	// the socket in Go's poller, which a connection served without waiting
	// need not pay for.
	ServeFD(ctx context.Context, fd int, listener int)
	// Drain asks open connections to finish; it does not wait.
	Drain()
}

// LastAnswerer is implemented by a Handler that can make every answer from
// now on its connection's last (HTTP's Connection: close) while still
// serving every request and every new connection: what a worker does at
// its request limit, before the master's end of stream.
type LastAnswerer interface {
	LastAnswers()
}

// RequestCounter is implemented by a Handler that counts requests (guest
// calls) itself; Config.MaxRequests then counts those rather than
// connections.
type RequestCounter interface {
	Requests() uint64
}

// workerParams is what the master tells a worker about dispatch.
type workerParams struct {
	Sched           Sched
	MaxConns        int
	ShutdownTimeout time.Duration
	Heartbeat       time.Duration
	// Listen are the master's listeners: reuseport workers bind their own
	// on each, shared workers inherit them as fds 4, 5, ... in this order.
	Listen  []string
	Backlog int
	// DeferAccept: Config.DeferAccept, for the listeners reuseport
	// workers bind.
	DeferAccept []bool
	// MaxServed is this worker's request limit (Config.MaxRequests plus
	// its jitter; 0: none): it asks for its replacement once it served
	// that many, rather than at the next heartbeat.
	MaxServed uint64
}

// workerReport is a worker's heartbeat: its own view of its load and the
// handler's counters.
type workerReport struct {
	InFlight  int64         `json:"in_flight"`
	Accepted  uint64        `json:"accepted"`
	Completed uint64        `json:"completed"`
	Requests  uint64        `json:"requests,omitempty"` // from a RequestCounter
	RSS       uint64        `json:"rss"`                // resident bytes
	Procs     int           `json:"procs"`              // GOMAXPROCS
	Handler   *stats.Worker `json:"handler,omitempty"`
}

// served is what MaxRequests counts: requests when the handler counts them,
// connections otherwise.
func (r *workerReport) served() uint64 {
	if r.Requests > 0 {
		return r.Requests
	}
	return r.Completed
}

// IsWorker reports whether this process was started by a master as a worker.
func IsWorker() bool { return os.Getenv(EnvWorkerID) != "" }

// Worker is the dispatch side of a worker process.
type Worker struct {
	id     int
	params workerParams
	config []byte
	// load: the group's open connections per worker (shared; load.go).
	load *loadTable
	// secrets and onSecrets: see Secrets, OnSecrets.
	secrets      []byte
	onSecrets    func([]byte)
	onChallenges func([]byte)
	ch           *ipc.Channel
	log          *slog.Logger

	inFlight  atomic.Int64
	accepted  atomic.Uint64
	completed atomic.Uint64
	sendMu    sync.Mutex // one message at a time on the channel
	conns     sync.WaitGroup
	freed     chan struct{} // signalled when a connection ends (shared accept)
	// next hands a connection to a server goroutine waiting idle (idle
	// of them): unbuffered, so a send succeeds only when one waits.
	next chan conn
	idle atomic.Int32

	// done counts connections finished (rr) not yet reported to the
	// master; doneSignal wakes flushDone when it leaves zero.
	done       atomic.Uint32
	doneSignal chan struct{}

	statm *os.File // /proc/self/statm, opened before any sandbox
}

// NewWorker reads the worker's identity, its configuration and its channel
// from what the master passed. As NewCluster does for the master, it keeps
// a broken stdout or stderr from killing the worker.
func NewWorker(log *slog.Logger) (*Worker, error) {
	ignoreSIGPIPE()
	reportCrashes()
	id, err := strconv.Atoi(os.Getenv(EnvWorkerID))
	if err != nil || id < 1 {
		return nil, fmt.Errorf("dispatch: bad %s=%q", EnvWorkerID, os.Getenv(EnvWorkerID))
	}
	w := &Worker{id: id, log: log, freed: make(chan struct{}, 1), doneSignal: make(chan struct{}, 1), next: make(chan conn)}
	ch, err := ipc.NewChannel(os.NewFile(fdChannel, "channel"))
	if err != nil {
		return nil, fmt.Errorf("dispatch: worker %d: %w", id, err)
	}
	w.ch = ch
	bc, err := readBoot()
	if err != nil {
		err = fmt.Errorf("dispatch: worker %d: %w", id, err)
		w.Fatal(err)
		ch.Close()
		return nil, err
	}
	w.params, w.config, w.secrets = bc.Dispatch, bc.Config, bc.Secrets
	// Held open so the heartbeat can read it once files are out of reach.
	w.statm, _ = os.Open("/proc/self/statm")
	return w, nil
}

// BindPorts are the TCP ports this worker binds itself (policy reuseport),
// for a sandbox that allows only those.
func (w *Worker) BindPorts() []uint16 {
	if w.params.Sched != SchedReusePort {
		return nil
	}
	var ports []uint16
	for _, a := range w.params.Listen {
		if ap, err := netip.ParseAddrPort(a); err == nil {
			ports = append(ports, ap.Port())
		}
	}
	return ports
}

// HandedOff reports whether connections reach this worker from the master
// (policy rr), which keeps its copy of each until the worker acknowledges
// it: closing the worker's descriptor then seldom ends the connection.
func (w *Worker) HandedOff() bool { return w.params.Sched == SchedRR }

// ID is the worker's id, 1..N.
func (w *Worker) ID() int { return w.id }

// Config is the handler configuration the master passed through.
func (w *Worker) Config() []byte { return w.config }

// Secrets are the program's secrets the master gave at the start (see
// Group.SetSecrets); OnSecrets hears later ones.
func (w *Worker) Secrets() []byte { return w.secrets }

// OnSecrets has f called with each later set of secrets, on the goroutine
// that reads the master's messages (so briefly). Call it before Serve.
func (w *Worker) OnSecrets(f func([]byte)) { w.onSecrets = f }

// OnChallenges has f called with each set of ACME challenges the master
// gives (see Group.SetChallenges), on the goroutine that reads the
// master's messages, before any connection the master sends after them.
// Call it before Serve.
func (w *Worker) OnChallenges(f func([]byte)) { w.onChallenges = f }

// Fatal tells the master why this worker cannot serve; the master shows it.
func (w *Worker) Fatal(err error) {
	w.send(append([]byte{ipc.MsgFatal}, err.Error()...), -1)
}

// send sends one message to the master. A shortage of buffers or memory
// is waited out (up to sendPatience): a lost ack would leave the master
// holding that connection for ever, and a lost heartbeat gets the worker
// killed. Other errors mean the master is gone.
func (w *Worker) send(msg []byte, fd int) error {
	w.sendMu.Lock()
	defer w.sendMu.Unlock()
	wait := 5 * time.Millisecond
	deadline := time.Now().Add(sendPatience)
	for {
		err := w.ch.Send(msg, fd)
		if err == nil || !resourceErr(err) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(wait)
		wait = min(wait*2, 200*time.Millisecond)
	}
}

// sendPatience bounds how long send waits out ENOBUFS or ENOMEM.
const sendPatience = 5 * time.Second

// Serve takes connections as the policy says and hands each to h on its own
// goroutine, until the master shuts the channel (or dies). It then stops
// taking connections, drains h, waits for open connections up to the
// shutdown timeout, and returns. handlerStats, if not nil, adds the handler's
// counters to each heartbeat.
func (w *Worker) Serve(ctx context.Context, h Handler, handlerStats func() *stats.Worker) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var lis []*listener
	closeLis := func() {
		for _, l := range lis {
			l.close()
		}
	}
	if w.params.Sched == SchedShared {
		f := os.NewFile(uintptr(fdListener+len(w.params.Listen)), "wcluster-load")
		t, err := mapLoadTable(f)
		f.Close() // the mapping stays
		if err != nil {
			return fmt.Errorf("dispatch: worker %d: %w", w.id, err)
		}
		w.load = t
		defer t.close()
	}
	for i, addr := range w.params.Listen {
		var l *listener
		var err error
		switch w.params.Sched {
		case SchedShared:
			l, err = newListener(os.NewFile(uintptr(fdListener+i), "listener"))
		case SchedReusePort:
			if l, err = listenTCP(addr, w.params.Backlog, true, true); err == nil {
				if err = l.setDeferAccept(i < len(w.params.DeferAccept) && w.params.DeferAccept[i]); err != nil {
					l.close()
				}
			}
		default:
			continue
		}
		if err != nil {
			closeLis()
			return fmt.Errorf("dispatch: worker %d: listener %s: %w", w.id, addr, err)
		}
		lis = append(lis, l)
	}

	var bg sync.WaitGroup
	for i, l := range lis {
		bg.Add(1)
		go func() {
			defer bg.Done()
			w.acceptLoop(ctx, i, l, h)
		}()
	}
	bg.Add(1)
	go func() {
		defer bg.Done()
		w.heartbeat(ctx, h, handlerStats)
	}()
	if w.params.MaxServed > 0 {
		bg.Add(1)
		go func() {
			defer bg.Done()
			w.watchServed(ctx, h)
		}()
	}
	if w.params.Sched == SchedRR {
		bg.Add(1)
		go func() {
			defer bg.Done()
			w.flushDone(ctx)
		}()
	}

	if err := w.send([]byte{ipc.MsgReady}, -1); err != nil {
		cancel()
		bg.Wait()
		return fmt.Errorf("dispatch: worker %d: tell master ready: %w", w.id, err)
	}

	// Read the channel until the master shuts it: every connection sent
	// before that is read (and served) first.
	w.readLoop(ctx, h)

	// Drain: no new connections; let the open ones finish.
	closeLis()
	h.Drain()
	done := make(chan struct{})
	go func() { w.conns.Wait(); close(done) }()
	timer := time.NewTimer(w.params.ShutdownTimeout)
	defer timer.Stop()
	var err error
	select {
	case <-done:
	case <-timer.C:
		err = fmt.Errorf("dispatch: worker %d: %d connections still open after %v", w.id, w.inFlight.Load(), w.params.ShutdownTimeout)
	}
	cancel()
	bg.Wait()
	// The final count, for the master's log of a recycled worker.
	w.sendServed(h, ipc.RecycleFinal)
	w.ch.Close()
	return err
}

// served is what MaxServed counts: requests when the handler counts them,
// connections otherwise (as workerReport.served).
func (w *Worker) served(h Handler) uint64 {
	if rc, ok := h.(RequestCounter); ok {
		if n := rc.Requests(); n > 0 {
			return n
		}
	}
	return w.completed.Load()
}

func (w *Worker) sendServed(h Handler, what byte) {
	msg := binary.LittleEndian.AppendUint64([]byte{ipc.MsgRecycle}, w.served(h))
	w.send(append(msg, what), -1)
}

// watchServed tells the master when this worker has served half of its
// MaxServed (it starts the replacement) and then all of it (it sends new
// connections elsewhere and swaps the two once the replacement is ready).
// At the limit every answer becomes its connection's last (LastAnswerer),
// so kept-alive clients move on now rather than when the master's end of
// stream arrives. Checked every 2 ms, reading counters only: a busy worker
// overshoots by about 2 ms of requests and one per open connection.
func (w *Worker) watchServed(ctx context.Context, h Handler) {
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	near := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n := w.served(h)
		if !near && n >= w.params.MaxServed/2 {
			near = true
			w.sendServed(h, ipc.RecycleNear)
		}
		if n >= w.params.MaxServed {
			w.sendServed(h, ipc.RecycleNow)
			if la, ok := h.(LastAnswerer); ok {
				la.LastAnswers()
			}
			return
		}
	}
}

// readLoop takes the master's newconns until it shuts the channel. It
// answers them in batches: after one arrives, it takes those already
// waiting too (until ipc.MaxAcks answers) and acknowledges them all in one message,
// with the count of connections finished since the last report: under a
// stream of new connections, one message each way per batch rather than
// two per connection.
func (w *Worker) readLoop(ctx context.Context, h Handler) {
	buf := make([]byte, 256<<10) // a newconn is at most 145 bytes; secrets are larger
	oob := make([]byte, unix.CmsgSpace(ipc.MaxNewConns*4))
	acks := make([]byte, 0, 5+(ipc.MaxAcks+ipc.MaxNewConns)*9)
	var starved starvation
	for {
		// A message comes with err nil, or ipc.ErrTruncated (its fds are lost);
		// any other error ends the channel.
		msg, fds, err := w.ch.Recv(buf, oob)
		acks = append(acks[:0], ipc.MsgAcks, 0, 0, 0, 0)
		for msg != nil {
			acks = w.take(ctx, h, msg, fds, errors.Is(err, ipc.ErrTruncated), acks, &starved)
			err = nil
			if len(acks) >= 5+ipc.MaxAcks*9 {
				break
			}
			msg, fds, _, err = w.ch.TryRecv(buf, oob)
		}
		if len(acks) > 5 {
			binary.LittleEndian.PutUint32(acks[1:5], w.done.Swap(0))
			if err := w.send(acks, -1); err != nil {
				// The master is gone; it will not count these, but they
				// are served.
				w.log.Debug("ack failed", "err", err)
			}
		}
		if err != nil {
			if !errors.Is(err, ipc.ErrEOF) {
				w.log.Debug("channel closed", "err", err)
			}
			return
		}
	}
}

// take starts serving one newconn and appends its answer to acks. One
// whose fd did not arrive (truncated: this worker is out of descriptors)
// is answered ipc.AckStarved: the master kept its copy and places it elsewhere.
func (w *Worker) take(ctx context.Context, h Handler, msg []byte, fds []int, truncated bool, acks []byte, starved *starvation) []byte {
	if len(msg) > 0 && msg[0] == ipc.MsgSecrets {
		ipc.CloseAll(fds)
		if w.onSecrets != nil {
			w.onSecrets(msg[1:])
		}
		return acks
	}
	if len(msg) == 5 && msg[0] == ipc.MsgProcs {
		ipc.CloseAll(fds)
		if n := int(binary.LittleEndian.Uint32(msg[1:])); n >= 1 {
			runtime.GOMAXPROCS(n)
		}
		return acks
	}
	if len(msg) >= 9 && msg[0] == ipc.MsgChallenges {
		ipc.CloseAll(fds)
		if w.onChallenges != nil {
			w.onChallenges(msg[9:])
		}
		seen := append([]byte{ipc.MsgChallengesSeen}, msg[1:9]...)
		if err := w.send(seen, -1); err != nil {
			w.log.Debug("could not confirm the ACME challenges", "err", err)
		}
		return acks
	}
	if len(msg) < 1+ipc.NewConnSize || msg[0] != ipc.MsgNewConn || (len(msg)-1)%ipc.NewConnSize != 0 {
		ipc.CloseAll(fds)
		w.log.Warn("unexpected message from master", "type", msg[0], "fds", len(fds))
		return acks
	}
	recs := msg[1:]
	n := len(recs) / ipc.NewConnSize
	if truncated || len(fds) != n {
		// Truncated: the fds did not arrive (this worker is out of
		// descriptors) and the master kept its copies. A count that
		// differs is not a wcluster master's message (the kernel delivers
		// every fd or truncates): hand them back rather than guess.
		ipc.CloseAll(fds)
		if truncated {
			starved.handBack(w.log)
		} else {
			w.log.Warn("newconn from master without one fd per connection; handed back", "conns", n, "fds", len(fds))
		}
		for ; len(recs) > 0; recs = recs[ipc.NewConnSize:] {
			acks = ipc.AppendAck(acks, binary.LittleEndian.Uint64(recs), ipc.AckStarved)
		}
		return acks
	}
	starved.ok(w.log)
	for i := 0; len(recs) > 0; i, recs = i+1, recs[ipc.NewConnSize:] {
		w.start(ctx, h, fds[i], int(recs[8]))
		acks = ipc.AppendAck(acks, binary.LittleEndian.Uint64(recs), ipc.AckAccepted)
	}
	return acks
}

// starvation is an episode of newconns whose fds could not be received:
// logged when it begins and when it ends (acceptQuiet without a connection handed back,
// as for acceptPause), with the count, however many connections it costs.
// Its owner is readLoop.
type starvation struct {
	handedBack  int
	first, last time.Time
}

func (s *starvation) handBack(log *slog.Logger) {
	now := time.Now()
	if s.handedBack > 0 && now.Sub(s.last) >= acceptQuiet {
		s.end(log)
	}
	if s.handedBack == 0 {
		s.first = now
		var lim unix.Rlimit
		unix.Getrlimit(unix.RLIMIT_NOFILE, &lim)
		log.Error("out of file descriptors: handing the connections the master sends back to it until some close; "+
			"raise the limit (ulimit -n, LimitNOFILE=) or lower --max-conns", "open_files_limit", lim.Cur)
	}
	s.handedBack++
	s.last = now
}

// ok notes a connection taken; it ends an episode gone quiet.
func (s *starvation) ok(log *slog.Logger) {
	if s.handedBack > 0 && time.Since(s.last) >= acceptQuiet {
		s.end(log)
	}
}

func (s *starvation) end(log *slog.Logger) {
	log.Warn("taking connections again after running out of file descriptors", "handed_back", s.handedBack,
		"episode", s.last.Sub(s.first).Round(time.Millisecond))
	s.handedBack = 0
}

// maxIdleServers bounds the goroutines that, having served a connection,
// wait for the next one (server).
const maxIdleServers = 64

// conn is a connection for a server goroutine: its socket and listener.
type conn struct {
	fd       int
	listener int
}

// start counts and serves one connection: on a server goroutine waiting
// idle, or on a new one.
func (w *Worker) start(ctx context.Context, h Handler, fd int, listener int) {
	w.inFlight.Add(1)
	if w.load != nil {
		w.load.add(w.id, 1)
	}
	w.accepted.Add(1)
	w.conns.Add(1)
	c := conn{fd, listener}
	select {
	case w.next <- c:
	default:
		go w.server(ctx, h, c)
	}
}

// server serves c, then the connections start gives it while it waits
// idle, until ctx ends or maxIdleServers others wait already. A goroutine
// reused keeps its stack, grown once: a goroutine per connection grew,
// copied and freed it each time, a tenth of a worker's CPU with a
// connection per request (perf, 2026-12-01).
func (w *Worker) server(ctx context.Context, h Handler, c conn) {
	growStack()
	for {
		w.serve(ctx, h, c)
		if w.idle.Add(1) > maxIdleServers {
			w.idle.Add(-1)
			return
		}
		select {
		case c = <-w.next:
			w.idle.Add(-1)
		case <-ctx.Done():
			w.idle.Add(-1)
			return
		}
	}
}

// serve serves one connection and counts it finished.
func (w *Worker) serve(ctx context.Context, h Handler, c conn) {
	defer w.conns.Done()
	h.ServeFD(ctx, c.fd, c.listener)
	w.inFlight.Add(-1)
	if w.load != nil {
		w.load.add(w.id, -1)
	}
	w.completed.Add(1)
	if w.params.Sched == SchedRR && w.done.Add(1) == 1 {
		select {
		case w.doneSignal <- struct{}{}:
		default:
		}
	}
	select {
	case w.freed <- struct{}{}:
	default:
	}
}

// doneDelay is how long a finished connection's report waits for an ack
// batch to carry it. Under a stream of short connections nearly every
// report then rides on an ack, which saves a message each way per
// connection (the reports were 7% of a worker's CPU with a new connection
// per request); the master's count of a worker's load is at most this late.
const doneDelay = time.Millisecond

// flushDone reports finished connections (rr) to the master, so its count
// of each worker's load stays current. Connections that finish while a
// report is on its way, or that an ack batch carries, make no message of
// their own. It runs until ctx ends.
func (w *Worker) flushDone(ctx context.Context) {
	t := time.NewTimer(doneDelay)
	t.Stop()
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.doneSignal:
		}
		t.Reset(doneDelay)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if n := w.done.Swap(0); n > 0 {
			var msg [5]byte
			msg[0] = ipc.MsgDone
			binary.LittleEndian.PutUint32(msg[1:], n)
			w.send(msg[:], -1)
		}
	}
}

// acceptLoop accepts on a listening socket (shared or reuseport). Like
// nginx's accept_disabled, a worker above 7/8 of MaxConns stops accepting
// until a connection ends, leaving new ones to less loaded workers; under
// shared, a crowded worker also leaves each one to the others for a moment
// (loadTable.yield).
func (w *Worker) acceptLoop(ctx context.Context, index int, l *listener, h Handler) {
	limit := int64(w.params.MaxConns) * 7 / 8
	if limit < 1 {
		limit = 1
	}
	pause := acceptPause{log: w.log, addr: l.addr.String()}
	var yield func(fd int)
	if w.load != nil { // shared: leave a connection to a less loaded worker
		yield = func(fd int) { w.load.yield(w.id, fd) }
	}
	fds := make([]int, 0, 1) // one at a time: the limit and the yield count each
	for {
		for w.inFlight.Load() >= limit {
			select {
			case <-w.freed:
			case <-ctx.Done():
				return
			}
		}
		var err error
		fds, err = l.acceptBatch(fds[:0], 1, yield)
		if err != nil {
			if errors.Is(err, os.ErrClosed) || ctx.Err() != nil || !pause.failed(ctx, err) {
				return
			}
			continue
		}
		pause.ok()
		w.start(ctx, h, fds[0], index)
	}
}

func (w *Worker) heartbeat(ctx context.Context, h Handler, handlerStats func() *stats.Worker) {
	rc, _ := h.(RequestCounter)
	every := w.params.Heartbeat
	if every <= 0 {
		every = time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r := workerReport{InFlight: w.inFlight.Load(), Accepted: w.accepted.Load(), Completed: w.completed.Load(), RSS: residentBytes(w.statm),
			Procs: runtime.GOMAXPROCS(0)}
		if rc != nil {
			r.Requests = rc.Requests()
		}
		if handlerStats != nil {
			r.Handler = handlerStats()
		}
		b, _ := json.Marshal(r)
		if err := w.send(append([]byte{ipc.MsgHeartbeat}, b...), -1); err != nil {
			return
		}
	}
}

// residentBytes is this process's resident set size, from /proc/self/statm
// (0 where that cannot be read).
func residentBytes(statm *os.File) uint64 {
	if statm == nil {
		return 0
	}
	b := make([]byte, 128)
	n, err := statm.ReadAt(b, 0)
	if n == 0 && err != nil {
		return 0
	}
	var size, rss uint64
	if _, err := fmt.Sscan(string(b[:n]), &size, &rss); err != nil {
		return 0
	}
	return rss * uint64(os.Getpagesize())
}

// stackFrame is what growStack takes of a server goroutine's stack: about
// what a handler's call into a guest needs (wazero's CallWithStack).
const stackFrame = 16 << 10

// growStack grows the calling goroutine's stack to what a guest call needs
// while it is nearly empty. Grown later, inside the call, the runtime
// copies and adjusts a dozen frames at each doubling: 16% of a worker's
// time on new connections went there (perf, 2026-11-30), 6% with this
// and 16 KiB (32 KiB gained no more).
//
//go:noinline
func growStack() byte {
	var frame [stackFrame]byte
	return frame[stackSink(&frame)]
}

// stackSink keeps the frame from being optimised away.
//
//go:noinline
func stackSink(b *[stackFrame]byte) int { return int(b[0]) & 1 }
