package host

import (
	"context"
	"sync"
)

// slots is a counting semaphore whose size may change while it is in use
// (size is asked at each acquire): a smaller size takes effect as slots
// are given back, a larger one at the next acquire or release.
type slots struct {
	size  func() int
	mu    sync.Mutex
	used  int
	freed chan struct{} // closed at the next release, for those waiting (nil: none)
}

// acquire takes a slot, waiting for one until ctx is done.
func (s *slots) acquire(ctx context.Context) error {
	for {
		s.mu.Lock()
		if s.used < s.size() {
			s.used++
			s.mu.Unlock()
			return nil
		}
		if s.freed == nil {
			s.freed = make(chan struct{})
		}
		freed := s.freed
		s.mu.Unlock()
		select {
		case <-freed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// release gives a slot back and wakes those waiting, to try again.
func (s *slots) release() {
	s.mu.Lock()
	s.used--
	if s.freed != nil {
		close(s.freed)
		s.freed = nil
	}
	s.mu.Unlock()
}
