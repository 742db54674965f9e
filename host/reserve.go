package host

import (
	"os"
	"sync"
	"sync/atomic"
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
	// resetIdle: a reservation waits at most this long to be reset, and a
	// kept one holds its zeroed pages at most twice this long unused, so
	// the memory of closed instances is not held while traffic is low.
	resetIdle = 100 * time.Millisecond
	// maxResident bounds the memory past the image that a reservation
	// keeps zeroed rather than dropped: finding and clearing its pages
	// costs the closing instance time in proportion.
	maxResident = 16 << 20
	// maxKept bounds the zeroed pages a Handler's reservations hold
	// together, whatever room the budgets have.
	maxKept = 32 << 20
)

// spares are the memory reservations of a Handler's closed instances, reset
// and kept for its next ones. Unmapping a reservation frees its page tables
// and a new one builds them again at its first touches; where the kernel
// pays dearly for page-table changes and the flushes of other cores' TLBs
// that go with them (a VM whose hypervisor shadows page tables), that was
// most of what a fresh instance per connection cost. A kept reservation
// holds no memory of the instance that used it. The module's image, mapped
// copy-on-write from its sealed memfd over the start, is restored by
// copying it back: all of it where it is small, else over the pages the
// instance wrote (memImage.restore). Where that cannot be done, its
// touched pages are dropped (MADV_DONTNEED), in batches: one
// process_madvise on this process for all of them where the kernel takes
// MADV_DONTNEED there (recent kernels, which then flush the TLBs once per
// call), one madvise each where it does not. The anonymous memory past the
// image is zeroed in place, page by page where the instance touched it
// (mincore), and kept: on such a VM a page fault costs a hundred times
// what zeroing a page does, and the next instance touches the same pages.
// Those zeroed pages (at most maxKept) are charged to the budgets while
// kept, and given back to the system when the reservation waits unused for
// resetIdle, and at once when the budgets need room (dropKept).
type spares struct {
	mu      sync.Mutex
	free    []spare // reset: ready for an instance
	dirty   []spare // closed instances' reservations, their image not yet reset
	max     int     // free and dirty together
	closed  bool
	timer   *time.Timer // resets dirty and drops idle pages; nil: never armed
	armed   bool
	pidfd   int  // this process's pidfd, for process_madvise (-1: none)
	opened  bool // pidfd has been opened, or found not to open
	refused bool // process_madvise was refused: madvise alone
	// charge and uncharge take and give back the budgets' bytes for the
	// pages kept zeroed (nil: nothing is charged).
	charge   func(uint64) bool
	uncharge func(uint64)
	kept     atomic.Int64 // bytes of zeroed pages held (at most maxKept)
}

type spare struct {
	b        []byte    // the whole reservation
	drop     int       // its first bytes, whose pages are dropped before it is given out
	resident int       // bytes of zeroed pages kept past drop, charged to the budgets
	end      int       // where those pages end
	since    time.Time // when it became free
}

// get returns a reset reservation of size bytes, or nil.
func (s *spares) get(size int) []byte {
	s.mu.Lock()
	sp, ok := s.take(size)
	if !ok && len(s.dirty) > 0 {
		dirty := s.dirty
		s.dirty = nil
		s.mu.Unlock()
		s.reset(dirty)
		s.mu.Lock()
		sp, ok = s.take(size)
	}
	s.mu.Unlock()
	if !ok {
		return nil
	}
	// The next instance charges the memory it uses itself.
	s.give(sp.resident)
	return sp.b
}

// take removes the most recently freed reservation of size bytes, if there
// is one. s.mu is held.
func (s *spares) take(size int) (spare, bool) {
	for i := len(s.free) - 1; i >= 0; i-- {
		if sp := s.free[i]; len(sp.b) == size {
			s.free = append(s.free[:i], s.free[i+1:]...)
			return sp, true
		}
	}
	return spare{}, false
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
	full := s.closed || len(s.free)+len(s.dirty) >= s.max
	s.mu.Unlock()
	if full {
		unix.Munmap(b)
		return
	}
	base := 0
	if img != nil {
		base = min(img.size, len(b))
	}
	end := pageAlign(used, len(b))
	sp := spare{b: b, drop: max(base, end)}
	n := -1
	if end <= base {
		n = 0
	} else if end-base <= maxResident {
		n = clearResident(b[base:end])
	}
	restored := false
	if n >= 0 && base > 0 {
		if w := img.restore(b[:base]); w >= 0 {
			n += w
			restored = true
		}
	}
	if n >= 0 && s.hold(n) {
		sp.drop, sp.resident, sp.end = base, n, max(base, end)
		if restored {
			sp.drop = 0
		}
	}
	var batch []spare
	s.mu.Lock()
	if s.closed || len(s.free)+len(s.dirty) >= s.max {
		s.mu.Unlock()
		s.give(sp.resident)
		unix.Munmap(b)
		return
	}
	if sp.drop == 0 {
		sp.since = time.Now()
		s.free = append(s.free, sp)
	} else {
		s.dirty = append(s.dirty, sp)
		if len(s.dirty) >= resetBatch {
			batch, s.dirty = s.dirty, nil
		}
	}
	s.arm()
	s.mu.Unlock()
	if batch != nil {
		s.reset(batch)
	}
}

// arm starts the idle timer if it is not running. s.mu is held.
func (s *spares) arm() {
	if s.armed {
		return
	}
	s.armed = true
	if s.timer == nil {
		s.timer = time.AfterFunc(resetIdle, s.idle)
	} else {
		s.timer.Reset(resetIdle)
	}
}

// idle resets the reservations waiting for it and drops the zeroed pages
// of those unused for resetIdle; it comes again while any are kept.
func (s *spares) idle() {
	s.mu.Lock()
	batch := s.dirty
	s.dirty = nil
	unused, _ := s.unkeep(resetIdle)
	batch = append(batch, unused...)
	s.mu.Unlock()
	if len(batch) > 0 {
		s.reset(batch)
	}
	s.mu.Lock()
	s.armed = false
	if !s.closed && (len(s.dirty) > 0 || s.keeps()) {
		s.arm()
	}
	s.mu.Unlock()
}

// keeps says whether a free reservation holds zeroed pages. s.mu is held.
func (s *spares) keeps() bool {
	for _, sp := range s.free {
		if sp.resident > 0 {
			return true
		}
	}
	return false
}

// unkeep removes the free reservations that hold zeroed pages and have
// been free for idle or longer, releases them and returns them for reset
// to drop their pages, with the bytes given back. s.mu is held.
func (s *spares) unkeep(idle time.Duration) (out []spare, n uint64) {
	now := time.Now()
	k := 0
	for _, sp := range s.free {
		if sp.resident > 0 && now.Sub(sp.since) >= idle {
			n += uint64(sp.resident)
			out = append(out, s.release(sp))
			continue
		}
		s.free[k] = sp
		k++
	}
	s.free = s.free[:k]
	return out, n
}

// release uncharges sp's zeroed pages and has reset drop them. s.mu is
// held.
func (s *spares) release(sp spare) spare {
	s.give(sp.resident)
	sp.drop, sp.resident, sp.end = max(sp.drop, sp.end), 0, 0
	return sp
}

// dropKept gives the zeroed pages of every kept reservation back to the
// system and their bytes back to the budgets, which need room; it returns
// the bytes given back.
func (s *spares) dropKept() uint64 {
	s.mu.Lock()
	var n uint64
	batch := s.dirty
	s.dirty = nil
	for i, sp := range batch {
		n += uint64(sp.resident)
		batch[i] = s.release(sp)
	}
	free, m := s.unkeep(0)
	s.mu.Unlock()
	if batch = append(batch, free...); len(batch) > 0 {
		s.reset(batch)
	}
	return n + m
}

// reset drops the pages to drop of the reservations in batch and keeps
// them as free; one whose pages could not be dropped is unmapped.
func (s *spares) reset(batch []spare) {
	iov := make([]unix.Iovec, 0, len(batch))
	total := 0
	for _, sp := range batch {
		if sp.drop > 0 {
			v := unix.Iovec{Base: &sp.b[0]}
			v.SetLen(sp.drop)
			iov = append(iov, v)
			total += sp.drop
		}
	}
	ok := make([]bool, len(batch))
	if len(iov) > 0 && s.processMadvise(iov) == total {
		for i := range ok {
			ok[i] = true
		}
	} else {
		for i, sp := range batch {
			ok[i] = sp.drop == 0 || unix.Madvise(sp.b[:sp.drop], unix.MADV_DONTNEED) == nil
		}
	}
	var unmap []spare
	now := time.Now()
	s.mu.Lock()
	for i, sp := range batch {
		if ok[i] && !s.closed {
			sp.drop, sp.since = 0, now
			s.free = append(s.free, sp)
		} else {
			unmap = append(unmap, sp)
		}
	}
	s.mu.Unlock()
	for _, sp := range unmap {
		s.give(sp.resident)
		unix.Munmap(sp.b)
	}
}

// hold counts n bytes of zeroed pages as kept, if they fit maxKept and
// the budgets.
func (s *spares) hold(n int) bool {
	if n == 0 {
		return true
	}
	if s.kept.Add(int64(n)) > maxKept {
		s.kept.Add(-int64(n))
		return false
	}
	if s.charge != nil && !s.charge(uint64(n)) {
		s.kept.Add(-int64(n))
		return false
	}
	return true
}

// give releases n bytes of zeroed pages held.
func (s *spares) give(n int) {
	if n <= 0 {
		return
	}
	s.kept.Add(-int64(n))
	if s.uncharge != nil {
		s.uncharge(uint64(n))
	}
}

// clearResident zeroes the pages of b that are in memory (mincore) and
// returns their bytes; -1 where mincore fails, b untouched.
func clearResident(b []byte) int {
	p := unix.Getpagesize()
	vec := make([]byte, (len(b)+p-1)/p)
	// Raw, as rawRead: mincore does not wait, and through the scheduler's
	// path a call per closed instance keeps the runtime's monitor polling.
	if _, _, e := unix.RawSyscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		return -1
	}
	n := 0
	for i, v := range vec {
		if v&1 != 0 {
			page := b[i*p : min((i+1)*p, len(b))]
			clear(page)
			n += len(page)
		}
	}
	return n
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
	kept := append(s.free, s.dirty...)
	s.free, s.dirty, s.closed = nil, nil, true
	if s.timer != nil {
		s.timer.Stop()
	}
	if s.opened && s.pidfd >= 0 {
		unix.Close(s.pidfd)
		s.pidfd = -1
	}
	s.mu.Unlock()
	for _, sp := range kept {
		s.give(sp.resident)
		unix.Munmap(sp.b)
	}
}

// pageAlign rounds n up to the page size, at most limit.
func pageAlign(n, limit int) int {
	p := unix.Getpagesize()
	return min((n+p-1)/p*p, limit)
}
