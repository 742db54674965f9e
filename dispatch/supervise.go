package dispatch

// Supervision: replacing workers that exit or hang, with backoff, and
// requeueing what they never took.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"syscall"
	"time"
)

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
func (m *Group) supervise(ctx context.Context) error {
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
						"took", time.Since(ep.first).Round(time.Millisecond))
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
				m.log.Error("workers are crashing in a loop; restarting them more slowly", "crashes", n, "window", crashWindow)
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
func (m *Group) restartAfter(id int, delay time.Duration) {
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
func (m *Group) reap(p *proc) {
	m.mu.Lock()
	if m.slotLocked(p.id) == p {
		m.procs[p.id-1] = nil
		if m.load != nil && !p.retired {
			// It died holding connections it will never count down; a
			// drained one counted them down itself, beside its successor.
			m.load.reset(p.id)
		}
	}
	p.state = stateExited
	var orphans []queued
	for seq, c := range p.pending {
		orphans = append(orphans, queued(c))
		delete(p.pending, seq)
	}
	p.inFlight = 0
	p.requeued += uint64(len(orphans))
	m.stats.Requeued += uint64(len(orphans))
	m.mu.Unlock()
	p.ch.Close()
	m.place(orphans, nil)
	if len(orphans) > 0 {
		m.log.Info("requeued connections the worker never acknowledged", "worker", p.id, "count", len(orphans))
	}
	m.signalCapacity()
}

// watchHeartbeats kills workers whose heartbeat stopped: SIGTERM, then
// SIGKILL a second later (a hung process may not act on SIGTERM, and a
// stopped one cannot); supervise replaces them.
func (m *Group) watchHeartbeats(ctx context.Context) {
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
