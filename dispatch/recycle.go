package dispatch

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/wcluster/wcluster/internal/ipc"
)

// requestLimit draws one worker's request limit: MaxRequests plus up to 10%
// jitter, so workers started together do not all recycle together.
func (m *Group) requestLimit() uint64 {
	n := m.cfg.MaxRequests
	if n <= 0 {
		return 0
	}
	return uint64(n) + uint64(rand.IntN(n/10+1))
}

// recycleCauseLocked says why p should be recycled now, or "".
func (m *Group) recycleCauseLocked(p *proc) string {
	if p.recycling || p.retired || p.state != stateReady || m.closing {
		return ""
	}
	if served := max(p.report.served(), p.selfServed); p.maxServed > 0 && served >= p.maxServed {
		return fmt.Sprintf("served %d requests (--max-requests %d)", served, m.cfg.MaxRequests)
	}
	if m.cfg.MaxMemory > 0 && p.report.RSS > m.cfg.MaxMemory {
		return fmt.Sprintf("resident memory %d MiB over the ceiling of %d MiB", p.report.RSS>>20, m.cfg.MaxMemory>>20)
	}
	return ""
}

// recycleMsg acts on a worker's MsgRecycle: near its limit, start its
// replacement; at it, swap them; drained, log the final count.
func (m *Group) recycleMsg(p *proc, served uint64, what byte) {
	m.mu.Lock()
	p.selfServed = max(p.selfServed, served)
	switch what {
	case ipc.RecycleFinal:
		retired := p.retired
		m.mu.Unlock()
		if retired && served > 0 { // (a spare replacement retired unused served none)
			m.log.Info("worker drained", "worker", p.id, "pid", p.pid, "served", served)
		}
		return
	case ipc.RecycleNear:
		if p.recycling || p.retired || p.state != stateReady || m.closing || p.maxServed == 0 {
			m.mu.Unlock()
			return
		}
		p.recycling = true
		p.recycleNow = make(chan struct{})
		now := p.recycleNow
		m.mu.Unlock()
		m.goRecycle(p, fmt.Sprintf("served %d requests (--max-requests %d)", p.maxServed, m.cfg.MaxRequests), now)
		return
	}
	// ipc.RecycleNow
	if p.recycleNow != nil {
		if !p.nowSaid {
			p.nowSaid = true
			close(p.recycleNow)
		}
		m.mu.Unlock()
		return
	}
	p.nowSaid = true
	cause := m.claimRecycleLocked(p)
	m.mu.Unlock()
	if cause != "" {
		m.goRecycle(p, cause, nil)
	}
}

// claimRecycleLocked says why p should be recycled now ("": it should not)
// and, if it should, marks it recycling, so only one replacement starts.
func (m *Group) claimRecycleLocked(p *proc) string {
	cause := m.recycleCauseLocked(p)
	if cause != "" {
		p.recycling = true
	}
	return cause
}

// goRecycle runs recycle on a goroutine of the group's.
func (m *Group) goRecycle(p *proc, cause string, now <-chan struct{}) {
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		m.recycle(p, cause, now)
	}()
}

// recycle replaces p by a new worker in its slot, then drains p, so no
// request is lost: the new one is ready before p stops taking connections.
// With now, the replacement is started ahead and the swap waits for now to
// close (p reached its limit), so p serves about the count asked. The swap
// shares Reload's lock, so a reload and a recycle never overlap; a reload
// meanwhile makes the replacement unneeded.
func (m *Group) recycle(p *proc, cause string, now <-chan struct{}) {
	m.mu.Lock()
	live := !m.closing && m.slotLocked(p.id) == p
	cfg := m.cfg.WorkerConfig
	m.mu.Unlock()
	if !live {
		return // replaced meanwhile by a reload or a restart
	}
	start := time.Now()
	if now == nil {
		m.log.Info("recycling worker", "worker", p.id, "pid", p.pid, "cause", cause)
	}
	np, err := m.start(p.id, cfg, false)
	if err != nil {
		m.log.Error("recycle: cannot start a replacement; the worker keeps serving", "worker", p.id, "err", err)
		m.endRecycle(p)
		return
	}
	retire := func(why string) {
		m.mu.Lock()
		np.retired = true
		m.mu.Unlock()
		np.ch.CloseWrite()
		if why != "" {
			m.log.Error("recycle: replacement did not start; the worker keeps serving", "worker", p.id, "why", why)
			m.endRecycle(p)
		}
	}
	if err := m.awaitStarted(context.Background(), []*proc{np}); err != nil {
		retire(err.Error())
		return
	}
	if now != nil {
		select {
		case <-now:
			m.log.Info("recycling worker", "worker", p.id, "pid", p.pid, "cause", cause)
		case <-p.exited:
			retire("")
			return
		case <-m.quit:
			retire("")
			return
		}
	}
	m.reloadMu.Lock()
	defer m.reloadMu.Unlock()
	m.mu.Lock()
	if m.closing || m.slotLocked(p.id) != p {
		m.mu.Unlock()
		retire("") // replaced meanwhile (a reload): not needed
		return
	}
	m.procs[p.id-1] = np
	p.retired = true
	m.stats.Recycled++
	m.mu.Unlock()
	m.signalCapacity()
	// p reads every connection already sent, then end of stream: it drains.
	p.ch.CloseWrite()
	m.log.Info("recycled worker", "worker", p.id, "old_pid", p.pid, "new_pid", np.pid, "took", time.Since(start).Round(time.Millisecond))
}

// endRecycle lets p be considered again after a failed recycle, not at
// once: a replacement that cannot start should not be retried every beat.
func (m *Group) endRecycle(p *proc) {
	// It serves on meanwhile: new connections too.
	m.mu.Lock()
	p.nowSaid = false
	m.mu.Unlock()
	m.signalCapacity()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		t := time.NewTimer(m.cfg.WorkerTimeout)
		defer t.Stop()
		select {
		case <-t.C:
		case <-m.quit:
		}
		m.mu.Lock()
		p.recycling = false
		m.mu.Unlock()
	}()
}
