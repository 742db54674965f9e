package dispatch

// The program's ACME challenges, given to every worker of a group, and
// the workers' confirmations.

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	"github.com/wcluster/wcluster/internal/ipc"
)

// SetChallenges gives the program's live ACME challenges to every worker
// of the group, now and at each start, until the next call (empty: none
// live), and returns their generation (see WaitChallenges). On the
// channel, they come before any connection dispatched after the call.
func (m *Group) SetChallenges(b []byte) uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.challenges = slices.Clone(b)
	m.challengesGen++
	for p := range m.started {
		m.sendChallengesLocked(p)
	}
	return m.challengesGen
}

// WaitChallenges waits until every worker process of the group that takes
// new connections answers the challenges of generation gen (or a later
// one), or ctx ends: a worker that accepts connections itself (policies
// shared, reuseport) could otherwise take the CA's before it read them.
func (m *Group) WaitChallenges(ctx context.Context, gen uint64) error {
	tick := time.NewTicker(50 * time.Millisecond) // exits do not signal seenCh
	defer tick.Stop()
	for {
		m.mu.Lock()
		if m.seenCh == nil {
			m.seenCh = make(chan struct{})
		}
		seen, behind := m.seenCh, 0
		for p := range m.started {
			// One draining (its channel closed for writing) or hung
			// takes no new connections: not waited for.
			if p.challengesSeen < gen && !p.retired && !p.hung {
				behind++
			}
		}
		m.mu.Unlock()
		if behind == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d workers have not read the ACME challenges: %w", behind, ctx.Err())
		case <-seen:
		case <-tick.C:
		}
	}
}

// challengesSeen records that p answers the challenges of generation gen.
func (m *Group) challengesSeen(p *proc, gen uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p.challengesSeen = max(p.challengesSeen, gen)
	if m.seenCh != nil {
		close(m.seenCh)
		m.seenCh = nil
	}
}

// sendChallengesLocked sends p the current challenges without blocking.
func (m *Group) sendChallengesLocked(p *proc) {
	msg := binary.LittleEndian.AppendUint64([]byte{ipc.MsgChallenges}, m.challengesGen)
	if err := p.ch.SendNow(append(msg, m.challenges...), nil); err != nil {
		m.log.Warn("could not give a worker the ACME challenges", "worker", p.id, "pid", p.pid, "err", err)
	}
}
