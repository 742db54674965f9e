package host

import (
	"container/list"
	"context"
	"sync"
)

// slots is a counting semaphore whose size may change while it is in use
// (size is asked whenever a slot could be given): a smaller size takes
// effect as slots are given back, a larger one at the next acquire or
// release. Those waiting get slots oldest first, one wake each: under a
// flood of handshakes a release wakes one waiter, not all of them.
type slots struct {
	size    func() int
	mu      sync.Mutex
	used    int
	waiting list.List // of chan struct{}, closed when given a slot; oldest first
}

// acquire takes a slot, waiting for one until ctx is done.
func (s *slots) acquire(ctx context.Context) error {
	s.mu.Lock()
	s.grant()
	if s.waiting.Len() == 0 && s.used < s.size() {
		s.used++
		s.mu.Unlock()
		return nil
	}
	given := make(chan struct{})
	e := s.waiting.PushBack(given)
	s.mu.Unlock()
	select {
	case <-given:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		select {
		case <-given: // given meanwhile: pass it on
			s.used--
			s.grant()
		default:
			s.waiting.Remove(e)
		}
		s.mu.Unlock()
		return ctx.Err()
	}
}

// release gives a slot back, to the oldest waiting if any.
func (s *slots) release() {
	s.mu.Lock()
	s.used--
	s.grant()
	s.mu.Unlock()
}

// grant gives free slots to those waiting, oldest first. Call it with mu
// held.
func (s *slots) grant() {
	for s.waiting.Len() > 0 && s.used < s.size() {
		s.used++
		close(s.waiting.Remove(s.waiting.Front()).(chan struct{}))
	}
}
