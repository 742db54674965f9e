package host

import (
	"os"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	// maxSpares bounds the reservations a Handler keeps for its next
	// instances.
	maxSpares = 32
	// resetBatch reservations are reset by one system call.
	resetBatch = 8
	// resetIdle: a reservation waits at most this long to be reset, so the
	// pages of a closed instance are not held while traffic is low.
	resetIdle = 100 * time.Millisecond
)

// spares are the memory reservations of a Handler's closed instances, reset
// and kept for its next ones. Unmapping a reservation frees its page tables
// and a new one builds them again at its first touches; where the kernel
// pays dearly for page-table changes and the flushes of other cores' TLBs
// that go with them (a VM whose hypervisor shadows page tables), that was
// most of what a fresh instance per connection cost. A kept reservation
// holds no memory of the instance that used it: before it is given out
// again its touched pages are dropped (MADV_DONTNEED), so anonymous memory
// reads as zeros and the module's image, mapped copy-on-write from its
// sealed memfd, as the image. Reservations are reset in batches: one
// process_madvise on this process for all of them where the kernel takes
// MADV_DONTNEED there (recent kernels, which then flush the TLBs once per
// call), one madvise each where it does not. What a kept reservation holds
// is address space and page tables.
type spares struct {
	mu      sync.Mutex
	free    [][]byte     // reset: ready for an instance
	dirty   []dirtySpare // closed instances' reservations, not yet reset
	max     int          // free and dirty together
	closed  bool
	timer   *time.Timer // resets dirty resetIdle after the first came; nil: never armed
	pidfd   int         // this process's pidfd, for process_madvise (-1: none)
	opened  bool        // pidfd has been opened, or found not to open
	refused bool        // process_madvise was refused: madvise alone
}

type dirtySpare struct {
	b    []byte // the whole reservation
	used int    // the bytes its instance could have touched
}

// get returns a reset reservation of size bytes, or nil.
func (s *spares) get(size int) []byte {
	s.mu.Lock()
	if b := s.take(size); b != nil {
		s.mu.Unlock()
		return b
	}
	dirty := s.dirty
	s.dirty = nil
	s.mu.Unlock()
	if len(dirty) == 0 {
		return nil
	}
	s.reset(dirty)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.take(size)
}

// take removes a free reservation of size bytes, if there is one. s.mu is
// held.
func (s *spares) take(size int) []byte {
	for i := len(s.free) - 1; i >= 0; i-- {
		if b := s.free[i]; len(b) == size {
			s.free = append(s.free[:i], s.free[i+1:]...)
			return b
		}
	}
	return nil
}

// put takes back b, a whole reservation whose first used bytes an instance
// may have touched, with img (nil: none) mapped over its start. It keeps b
// to be reset, or unmaps it: when enough are kept, or when the image is not
// mapped from a memfd (its bytes were copied in, and dropping them would
// leave zeros).
func (s *spares) put(b []byte, used int, img *memImage) {
	if (img != nil && img.fd < 0) || used > len(b) {
		unix.Munmap(b)
		return
	}
	s.mu.Lock()
	if s.closed || len(s.free)+len(s.dirty) >= s.max {
		s.mu.Unlock()
		unix.Munmap(b)
		return
	}
	s.dirty = append(s.dirty, dirtySpare{b, used})
	var batch []dirtySpare
	switch {
	case len(s.dirty) >= resetBatch:
		batch, s.dirty = s.dirty, nil
	case len(s.dirty) > 1:
		// The timer armed for the first of them resets this one too.
	case s.timer == nil:
		s.timer = time.AfterFunc(resetIdle, s.resetDirty)
	default:
		s.timer.Reset(resetIdle)
	}
	s.mu.Unlock()
	if batch != nil {
		s.reset(batch)
	}
}

// resetDirty resets the reservations waiting for it.
func (s *spares) resetDirty() {
	s.mu.Lock()
	dirty := s.dirty
	s.dirty = nil
	s.mu.Unlock()
	if len(dirty) > 0 {
		s.reset(dirty)
	}
}

// reset drops the touched pages of dirty and keeps them as free; one whose
// pages could not be dropped is unmapped.
func (s *spares) reset(dirty []dirtySpare) {
	iov := make([]unix.Iovec, 0, len(dirty))
	total := 0
	for _, d := range dirty {
		if d.used > 0 {
			n := pageAlign(d.used, len(d.b))
			v := unix.Iovec{Base: &d.b[0]}
			v.SetLen(n)
			iov = append(iov, v)
			total += n
		}
	}
	ok := make([]bool, len(dirty))
	if len(iov) > 0 && s.processMadvise(iov) == total {
		for i := range ok {
			ok[i] = true
		}
	} else {
		for i, d := range dirty {
			ok[i] = d.used == 0 || unix.Madvise(d.b[:pageAlign(d.used, len(d.b))], unix.MADV_DONTNEED) == nil
		}
	}
	var unmap [][]byte
	s.mu.Lock()
	for i, d := range dirty {
		if ok[i] && !s.closed {
			s.free = append(s.free, d.b)
		} else {
			unmap = append(unmap, d.b)
		}
	}
	s.mu.Unlock()
	for _, b := range unmap {
		unix.Munmap(b)
	}
}

// processMadvise drops the pages of iov with one process_madvise on this
// process and returns the bytes advised; -1 where the kernel or the
// worker's seccomp filter refuses it, after which it is not tried again.
// The pidfd stays open until close, so no call ever names a closed one.
func (s *spares) processMadvise(iov []unix.Iovec) int {
	s.mu.Lock()
	if !s.opened {
		s.opened = true
		if s.pidfd, _ = unix.PidfdOpen(os.Getpid(), 0); s.pidfd < 0 {
			s.pidfd = -1
		}
	}
	fd, refused := s.pidfd, s.refused
	s.mu.Unlock()
	if fd < 0 || refused {
		return -1
	}
	n, _, errno := unix.Syscall6(unix.SYS_PROCESS_MADVISE, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)), unix.MADV_DONTNEED, 0, 0)
	if errno != 0 {
		if errno == unix.ENOSYS || errno == unix.EINVAL || errno == unix.EPERM {
			s.mu.Lock()
			s.refused = true
			s.mu.Unlock()
		}
		return -1
	}
	return int(n)
}

// close unmaps every kept reservation; later ones are unmapped as they come.
func (s *spares) close() {
	s.mu.Lock()
	var unmap [][]byte
	unmap = append(unmap, s.free...)
	for _, d := range s.dirty {
		unmap = append(unmap, d.b)
	}
	s.free, s.dirty, s.closed = nil, nil, true
	if s.timer != nil {
		s.timer.Stop()
	}
	if s.opened && s.pidfd >= 0 {
		unix.Close(s.pidfd)
		s.pidfd = -1
	}
	s.mu.Unlock()
	for _, b := range unmap {
		unix.Munmap(b)
	}
}

// pageAlign rounds n up to the page size, at most limit.
func pageAlign(n, limit int) int {
	p := unix.Getpagesize()
	return min((n+p-1)/p*p, limit)
}
