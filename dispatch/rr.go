package dispatch

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// acceptLoop is the rr policy's accept side: it accepts only while some
// worker has room (or the queue does), so a saturated cluster leaves new
// connections in the kernel's backlog.
func (m *Master) acceptLoop(ctx context.Context, index int, l *listener) {
	for {
		m.drainQueue()
		for {
			m.mu.Lock()
			ok := m.canAcceptLocked()
			var wait <-chan struct{}
			if !ok {
				wait = m.capacityLocked()
			}
			m.mu.Unlock()
			if ok {
				break
			}
			select {
			case <-wait:
				m.drainQueue()
			case <-ctx.Done():
				return
			}
		}
		fd, err := l.accept()
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				m.log.Error("accept failed", "err", err)
			}
			return
		}
		m.mu.Lock()
		m.stats.Accepted++
		m.mu.Unlock()
		m.place(fd, index, time.Now())
	}
}

func (m *Master) canAcceptLocked() bool {
	if len(m.queue) > 0 {
		return len(m.queue) < m.cfg.QueueSize
	}
	return m.roomLocked() || m.cfg.QueueSize > 0
}

// roomLocked reports whether some ready worker can take a connection.
func (m *Master) roomLocked() bool {
	for _, p := range m.procs {
		if p != nil && p.state == stateReady && !p.retired && p.inFlight < int64(m.cfg.MaxConns) {
			return true
		}
	}
	return false
}

// pickLocked chooses the ready worker with the fewest connections in flight,
// taking them in round-robin order so equal loads alternate. It returns nil
// when every worker is full (or none is ready).
func (m *Master) pickLocked(skip *proc) *proc {
	var best *proc
	n := len(m.procs)
	for i := 0; i < n; i++ {
		p := m.procs[(m.cursor+i)%n]
		if p == nil || p == skip || p.state != stateReady || p.retired || p.inFlight >= int64(m.cfg.MaxConns) {
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

// place hands a connection to a worker, or queues it when none has room.
func (m *Master) place(fd, lis int, since time.Time) {
	m.placeExcept(fd, lis, since, nil)
}

func (m *Master) placeExcept(fd, lis int, since time.Time, skip *proc) {
	for {
		m.mu.Lock()
		if m.closing {
			m.mu.Unlock()
			unix.Close(fd)
			return
		}
		p := m.pickLocked(skip)
		if p == nil {
			m.queue = append(m.queue, queued{fd: fd, lis: lis, since: since})
			m.mu.Unlock()
			return
		}
		m.nextSeq++
		seq := m.nextSeq
		p.pending[seq] = sent{fd: fd, lis: lis}
		p.inFlight++
		m.mu.Unlock()

		var msg [10]byte
		msg[0] = msgNewConn
		binary.LittleEndian.PutUint64(msg[1:], seq)
		msg[9] = byte(lis)
		if err := p.ch.send(msg[:], fd); err == nil {
			return
		}
		// The worker is going away. If reap has not yet taken this fd it is
		// still ours to place elsewhere; otherwise reap placed it.
		m.mu.Lock()
		_, mine := p.pending[seq]
		if mine {
			delete(p.pending, seq)
			p.inFlight--
			p.state = stateExited // stop picking it; reap will confirm
			p.requeued++
			m.stats.Requeued++
		}
		m.mu.Unlock()
		if !mine {
			return
		}
	}
}

// ack handles a worker's answer to newconn. Accepted: the master closes its
// copy. Refused: the connection goes to another worker.
func (m *Master) ack(p *proc, seq uint64, accepted bool) {
	m.mu.Lock()
	c, ok := p.pending[seq]
	if ok {
		delete(p.pending, seq)
		if accepted {
			p.accepted++
		} else {
			p.refused++
			p.inFlight--
		}
	}
	m.mu.Unlock()
	if !ok {
		return
	}
	if accepted {
		unix.Close(c.fd)
		return
	}
	m.placeExcept(c.fd, c.lis, time.Now(), p)
}

// drainQueue places queued connections while workers have room. It runs on
// the accept loop's side whenever capacity returns.
func (m *Master) drainQueue() {
	for {
		m.mu.Lock()
		if len(m.queue) == 0 || !m.roomLocked() {
			m.mu.Unlock()
			return
		}
		q := m.queue[0]
		m.queue = m.queue[1:]
		m.mu.Unlock()
		m.place(q.fd, q.lis, q.since)
	}
}

// expireQueue closes queued connections older than QueueTimeout and places
// the others as capacity returns.
func (m *Master) expireQueue(ctx context.Context) {
	tick := m.cfg.QueueTimeout / 10
	if tick > 100*time.Millisecond {
		tick = 100 * time.Millisecond
	}
	t := time.NewTicker(tick)
	defer t.Stop()
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
				m.log.Warn("closed queued connections: no worker had room within the queue timeout",
					"count", len(expired), "queue_timeout", m.cfg.QueueTimeout)
				m.signalCapacity()
			}
		}
	}
}
