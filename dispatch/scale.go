package dispatch

import (
	"context"
	"fmt"
)

// MaxWorkers bounds Scale: a typo should not fork ten thousand processes.
const MaxWorkers = 1024

// Name is the group's name ("" for the one group of a server without
// groups).
func (m *Group) Name() string { return m.cfg.Name }

// Workers is the group's current number of worker slots.
func (m *Group) Workers() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.procs)
}

// Scale changes the number of workers to n. New workers are started and
// Scale waits (up to WorkerTimeout) until they serve; surplus workers, the
// highest slots, are drained like a reload's old ones. It shares the reload
// lock, so it never overlaps a reload or a recycle.
func (m *Group) Scale(ctx context.Context, n int) error {
	if n < 1 || n > MaxWorkers {
		return fmt.Errorf("scale to %d workers: want 1 to %d", n, MaxWorkers)
	}
	m.reloadMu.Lock()
	defer m.reloadMu.Unlock()
	m.mu.Lock()
	if m.closing {
		m.mu.Unlock()
		return ErrMasterClosed
	}
	old := len(m.procs)
	if n == old {
		m.mu.Unlock()
		return nil
	}
	if m.load != nil {
		m.load.setWorkers(n)
	}
	if n < old {
		surplus := append([]*proc(nil), m.procs[n:]...)
		m.procs = m.procs[:n]
		m.cursor = 0
		for _, p := range surplus {
			if p != nil {
				p.retired = true
			}
		}
		m.mu.Unlock()
		for _, p := range surplus {
			if p != nil {
				p.ch.CloseWrite()
			}
		}
		m.log.Info("scaled down", "from", old, "to", n)
		return nil
	}
	m.procs = append(m.procs, make([]*proc, n-old)...)
	m.mu.Unlock()
	var started []*proc
	var failed error
	for id := old + 1; id <= n; id++ {
		p, err := m.start(id, m.workerConfig(), true)
		if err != nil {
			// The slot stays; supervise retries it as any spawn failure.
			m.mu.Lock()
			m.stats.SpawnFailures++
			m.mu.Unlock()
			m.restartAfter(id, restartDelay(2, maxSpawnDelay))
			if failed == nil {
				failed = fmt.Errorf("scale: %w; retrying in the background", err)
			}
			continue
		}
		started = append(started, p)
	}
	if err := m.awaitStarted(ctx, started); err != nil {
		// supervise restarts one that exited, as it would any crashed worker.
		return fmt.Errorf("scale: %w", err)
	}
	if failed != nil {
		m.signalCapacity()
		return failed
	}
	m.signalCapacity()
	m.log.Info("scaled up", "from", old, "to", n)
	return nil
}
