package dispatch

import (
	"context"
	"fmt"
	"time"
)

// Reload replaces every worker without losing a connection: it starts a new
// generation with workerConfig, waits until all of it is ready, then puts
// it in the old one's slots and drains the old workers (they finish what
// they hold, bounded by ShutdownTimeout). If a new worker fails to start,
// the new generation is stopped and the old one keeps serving; the error
// says why. Reloads are serialised.
func (m *Group) Reload(ctx context.Context, workerConfig []byte) error {
	m.reloadMu.Lock()
	defer m.reloadMu.Unlock()
	start := time.Now()

	// Scale changes the number of slots only under reloadMu, held here.
	n := m.Workers()
	fresh := make([]*proc, 0, n)
	abort := func(err error) error {
		m.mu.Lock() // readWorker reads retired under mu
		for _, p := range fresh {
			p.retired = true
		}
		m.mu.Unlock()
		for _, p := range fresh {
			p.ch.CloseWrite()
		}
		for _, p := range fresh {
			select {
			case <-p.exited:
			case <-time.After(m.cfg.ShutdownTimeout):
				p.kill(killSignal)
			}
		}
		return err
	}
	for id := 1; id <= n; id++ {
		p, err := m.start(id, workerConfig, false)
		if err != nil {
			return abort(err)
		}
		fresh = append(fresh, p)
	}
	if err := m.awaitStarted(ctx, fresh); err != nil {
		return abort(fmt.Errorf("dispatch: reload: %w; the old workers keep serving", err))
	}

	m.mu.Lock()
	if m.closing {
		m.mu.Unlock()
		return abort(ErrMasterClosed)
	}
	old := make([]*proc, 0, len(m.procs))
	for i, p := range fresh {
		if m.procs[i] != nil {
			old = append(old, m.procs[i])
			m.procs[i].retired = true
		}
		m.procs[i] = p
	}
	m.cfg.WorkerConfig = workerConfig
	m.generation++
	gen := m.generation
	m.mu.Unlock()
	m.signalCapacity()

	// Old workers read every connection already sent to them, then end of
	// stream: they drain and exit; supervise ignores their exits.
	for _, p := range old {
		p.ch.CloseWrite()
	}
	m.log.Info("reload complete", "generation", gen, "workers", len(fresh), "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// awaitStarted waits until every one of procs said ready, up to
// WorkerTimeout. It fails as soon as one exits, the time is up, ctx ends or
// the master stops, saying which.
func (m *Group) awaitStarted(ctx context.Context, procs []*proc) error {
	readyBy := time.NewTimer(m.cfg.WorkerTimeout)
	defer readyBy.Stop()
	for _, p := range procs {
		select {
		case <-p.ready:
		case <-p.exited:
			m.mu.Lock()
			why := p.failure()
			m.mu.Unlock()
			return fmt.Errorf("new worker %d failed to start: %s", p.id, why)
		case <-readyBy.C:
			return fmt.Errorf("new workers not ready within %v", m.cfg.WorkerTimeout)
		case <-ctx.Done():
			return ctx.Err()
		case <-m.quit:
			return ErrMasterClosed
		}
	}
	return nil
}
