package dispatch

import (
	"context"
	"errors"
	"os"
	"time"

	"github.com/wcluster/wcluster/internal/ipc"
	"golang.org/x/sys/unix"
)

// acceptLoop is the rr policy's accept side: it accepts only while some
// worker has room (or the queue does), so a saturated cluster leaves new
// connections in the kernel's backlog. It takes what the backlog holds at
// once, as many as there is room for (up to ipc.MaxNewConns), so that the
// connections one worker gets travel in one message.
func (m *Group) acceptLoop(ctx context.Context, index int, l *listener) {
	pause := acceptPause{log: m.log, addr: l.addr.String(), onPause: func() {
		m.mu.Lock()
		m.stats.AcceptPauses++
		m.mu.Unlock()
	}}
	fds := make([]int, 0, ipc.MaxNewConns)
	conns := make([]queued, 0, ipc.MaxNewConns)
	for {
		m.drainQueue()
		var room int
		for {
			m.mu.Lock()
			room = m.acceptRoomLocked(ipc.MaxNewConns)
			var wait <-chan struct{}
			if room == 0 {
				wait = m.capacityLocked()
			}
			m.mu.Unlock()
			if room > 0 {
				break
			}
			select {
			case <-wait:
				m.drainQueue()
			case <-ctx.Done():
				return
			}
		}
		var err error
		fds, err = l.acceptBatch(fds[:0], room, nil)
		if err != nil {
			if errors.Is(err, os.ErrClosed) || ctx.Err() != nil || !pause.failed(ctx, err) {
				return
			}
			continue
		}
		pause.ok()
		now := time.Now()
		conns = conns[:0]
		for _, fd := range fds {
			conns = append(conns, queued{fd: fd, lis: index, since: now})
		}
		m.mu.Lock()
		m.stats.Accepted += uint64(len(conns))
		m.mu.Unlock()
		m.place(conns, nil)
	}
}

// acceptRoomLocked is how many connections, up to most, may be accepted
// now: what the ready workers can take and the queue can hold, or, while
// connections wait in the queue, what room it has left (they go first).
func (m *Group) acceptRoomLocked(most int) int {
	room := 0
	if len(m.queue) > 0 {
		room = m.cfg.QueueSize - len(m.queue)
	} else {
		now := time.Now()
		for _, p := range m.procs {
			if p != nil && m.takesLocked(p, now) {
				room += int(min(m.limitLocked(p)-p.inFlight, int64(maxUnacked-len(p.pending))))
			}
			if room >= most {
				return most
			}
		}
		room += m.cfg.QueueSize
	}
	return max(0, min(room, most))
}

// roomLocked reports whether some ready worker can take a connection.
func (m *Group) roomLocked() bool {
	now := time.Now()
	for _, p := range m.procs {
		if p != nil && m.takesLocked(p, now) {
			return true
		}
	}
	return false
}

// limitLocked is the most connections p may hold: MaxConns, or fewer once
// it could not take one (capLocked). Then its cap is what it held at that
// moment: as its connections end it gets new ones, no faster, and each one
// it takes at the cap raises the cap by one, so it finds its limit again
// without a connection bouncing off it more than once a heartbeat; the cap
// comes off when half of those connections have ended (uncapLocked).
func (m *Group) limitLocked(p *proc) int64 {
	if p.capped {
		return min(p.fdCap, int64(m.cfg.MaxConns))
	}
	return int64(m.cfg.MaxConns)
}

// capLocked records that p could not take a connection while holding the
// others it has in flight: for lack of descriptors (the worker's own limit,
// learnt), or for a moment (a full channel, a shortage of kernel buffers:
// soft, lifted at its next heartbeat, which a hung worker never sends).
func (m *Group) capLocked(p *proc, soft bool) {
	if !p.capped || !soft {
		p.capSoft = soft
	}
	p.capped = true
	p.fdCap = p.inFlight
	m.stats.Starved++
}

// uncapLocked lifts p's cap once half of what it held has ended: its
// limit is far off again (if not, the next shortage caps it anew).
func (m *Group) uncapLocked(p *proc) {
	if p.capped && p.inFlight <= p.fdCap/2 {
		p.capped = false
	}
}

// maxUnacked is the most connections a worker may hold unacknowledged:
// one that is not reading its channel (stopped, say) takes no more than
// this before stalledLocked says so. A worker that reads acknowledges a
// batch within microseconds.
const maxUnacked = 256

// takesLocked reports whether p may be sent a new connection: ready, not
// draining, below its limit, not holding maxUnacked connections
// unacknowledged, not stalled, and not at its request limit
// (nowSaid: like gunicorn's max_requests, it takes nothing new while its
// replacement starts; if every worker is there at once, new connections
// wait in the backlog for the first replacement, typically 100–300 ms).
func (m *Group) takesLocked(p *proc, now time.Time) bool {
	return p.state == stateReady && !p.retired && !p.nowSaid && p.inFlight < m.limitLocked(p) &&
		len(p.pending) < maxUnacked && !m.stalledLocked(p, now)
}

// stalledLocked reports whether p has had connections waiting for its
// acknowledgement, with none coming, for longer than stallAfter: stopped,
// or too starved to read its channel. It is sent nothing more until it
// acknowledges again; what it holds unacknowledged stays its own (a stopped
// process may resume and take them: two workers must never serve one
// connection) until the watchdog kills it at WorkerTimeout and they move.
func (m *Group) stalledLocked(p *proc, now time.Time) bool {
	if len(p.pending) == 0 {
		return false
	}
	since := p.pendingSince
	if p.lastAck.After(since) {
		since = p.lastAck
	}
	return now.Sub(since) > m.stallAfter()
}

// stallAfter is a tenth of WorkerTimeout, and at least two heartbeats.
func (m *Group) stallAfter() time.Duration {
	return max(m.cfg.WorkerTimeout/10, 2*m.cfg.Heartbeat)
}

// pickLocked chooses the ready worker with the fewest connections in flight,
// taking them in round-robin order so equal loads alternate. It returns nil
// when every worker is full (or none is ready).
func (m *Group) pickLocked(skip *proc) *proc {
	var best *proc
	now := time.Now()
	n := len(m.procs)
	for i := 0; i < n; i++ {
		p := m.procs[(m.cursor+i)%n]
		if p == nil || p == skip || !m.takesLocked(p, now) {
			continue
		}
		if best == nil || p.inFlight < best.inFlight {
			best = p
		}
	}
	if best != nil {
		m.cursor = best.id % n
	}
	return best
}

// place hands connections to workers, never to skip, or queues those no
// worker has room for. The connections picked for one worker go to it in
// one newconn message (up to ipc.MaxNewConns each).
func (m *Group) place(conns []queued, skip *proc) {
	type batch struct {
		p    *proc
		msg  []byte
		fds  []int
		seqs []uint64
	}
	var batches []*batch
	m.mu.Lock()
	if m.closing {
		m.mu.Unlock()
		for _, c := range conns {
			unix.Close(c.fd)
		}
		return
	}
	for _, c := range conns {
		p := m.pickLocked(skip)
		if p == nil {
			m.queue = append(m.queue, c)
			continue
		}
		m.nextSeq++
		seq := m.nextSeq
		if len(p.pending) == 0 {
			p.pendingSince = time.Now()
		}
		p.pending[seq] = sent(c)
		p.inFlight++
		var b *batch
		for _, o := range batches {
			if o.p == p && len(o.fds) < ipc.MaxNewConns {
				b = o
			}
		}
		if b == nil {
			b = &batch{p: p, msg: []byte{ipc.MsgNewConn}}
			batches = append(batches, b)
		}
		b.msg = ipc.AppendNewConn(b.msg, seq, c.lis)
		b.fds = append(b.fds, c.fd)
		b.seqs = append(b.seqs, seq)
	}
	m.mu.Unlock()
	for _, b := range batches {
		if err := b.p.ch.SendNow(b.msg, b.fds); err != nil {
			m.sendFailed(b.p, b.seqs, err)
		}
	}
}

// sendFailed takes back the connections of a newconn that could not be sent
// to p and places them elsewhere: those reap has not taken already (it
// places them itself).
func (m *Group) sendFailed(p *proc, seqs []uint64, err error) {
	var mine []queued
	m.mu.Lock()
	for _, seq := range seqs {
		if c, ok := p.pending[seq]; ok {
			delete(p.pending, seq)
			p.inFlight--
			p.requeued++
			m.stats.Requeued++
			mine = append(mine, queued(c))
		}
	}
	if len(mine) > 0 {
		if resourceErr(err) || errors.Is(err, unix.ETOOMANYREFS) || errors.Is(err, unix.EAGAIN) {
			// Out of buffers, memory or room for fds in flight, or the
			// worker is not reading: the channel is fine, the moment
			// is not. Send this worker no more until it has room (see
			// limitLocked); a hung one is killed by the watchdog.
			m.capLocked(p, true)
		} else {
			p.state = stateExited // the worker is going away: stop picking it; reap will confirm
		}
	}
	m.mu.Unlock()
	if len(mine) > 0 {
		m.place(mine, p)
	}
}

// ack handles a worker's answer to newconn. Accepted: the master closes its
// copy. Starved (the worker could not receive the fd): the connection goes
// to another worker, and this one gets nothing more until it has room again.
func (m *Group) ack(p *proc, seq uint64, answer byte) {
	m.mu.Lock()
	c, ok := p.pending[seq]
	if ok {
		p.lastAck = time.Now()
		delete(p.pending, seq)
		switch answer {
		case ipc.AckAccepted:
			p.accepted++
			if p.capped && p.inFlight >= p.fdCap {
				if p.fdCap++; p.fdCap >= int64(m.cfg.MaxConns) {
					p.capped = false
				}
			}
		default: // ipc.AckStarved
			p.handedBack++
			p.inFlight--
			m.capLocked(p, false)
		}
	}
	m.mu.Unlock()
	if !ok {
		return
	}
	if answer == ipc.AckAccepted {
		closeNow(c.fd)
		return
	}
	m.place([]queued{queued(c)}, p)
}

// drainQueue places queued connections while workers have room. It runs on
// the accept loop's side whenever capacity returns.
func (m *Group) drainQueue() {
	for {
		m.mu.Lock()
		if len(m.queue) == 0 || !m.roomLocked() {
			m.mu.Unlock()
			return
		}
		q := []queued{m.queue[0]}
		m.queue = m.queue[1:]
		m.mu.Unlock()
		m.place(q, nil)
	}
}

// queueLogEvery spaces the log lines of queue timeouts.
const queueLogEvery = 10 * time.Second

// expireQueue closes queued connections older than QueueTimeout and places
// the others as capacity returns.
func (m *Group) expireQueue(ctx context.Context) {
	tick := m.cfg.QueueTimeout / 10
	if tick > 100*time.Millisecond {
		tick = 100 * time.Millisecond
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	// Closures are logged at most once per queueLogEvery, with the count
	// since the last line: a long flood makes a few lines, not one a tick.
	var unlogged int
	var logged time.Time
	report := func(now time.Time) {
		if unlogged > 0 {
			m.log.Warn("closed queued connections: no worker had room within the queue timeout",
				"count", unlogged, "queue_timeout", m.cfg.QueueTimeout)
			unlogged, logged = 0, now
		}
	}
	defer func() { report(time.Now()) }()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			m.drainQueue()
			m.mu.Lock()
			var expired []int
			kept := m.queue[:0]
			for _, q := range m.queue {
				if now.Sub(q.since) > m.cfg.QueueTimeout {
					expired = append(expired, q.fd)
				} else {
					kept = append(kept, q)
				}
			}
			m.queue = kept
			m.stats.QueueTimeouts += uint64(len(expired))
			m.mu.Unlock()
			for _, fd := range expired {
				unix.Close(fd)
			}
			if len(expired) > 0 {
				unlogged += len(expired)
				m.signalCapacity()
			}
			if now.Sub(logged) >= queueLogEvery {
				report(now)
			}
		}
	}
}
