package host

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tetratelabs/wazero/experimental"
)

// Budget bounds the linear memory of a set of guest instances: all those of
// a worker (one Budget shared by every Handler of the worker, through
// Options.Budget), or one tenant's (each Handler's own, Options.MemoryBudget).
// Memory is charged when wazero asks the host's allocator for it (an
// instance's start and each memory.grow) and given back when the instance
// is closed; so the accounting costs nothing per request, only per grow.
type Budget struct {
	limit           uint64 // 0: no limit (the Budget only counts)
	used            atomic.Uint64
	waits, refusals atomic.Uint64
	waiting         atomic.Int64 // goroutines waiting for memory: give wakes them
	mu              sync.Mutex   // guards freed and handlers
	freed           chan struct{}
	handlers        map[*Handler]struct{} // whose idle instances may make room
}

// NewBudget returns a budget of limit bytes (0: unlimited, but counted).
func NewBudget(limit uint64) *Budget {
	return &Budget{limit: limit, handlers: map[*Handler]struct{}{}}
}

// BudgetStats are a budget's figures.
type BudgetStats struct {
	Limit    uint64 // bytes (0: none)
	Used     uint64 // bytes of linear memory charged now
	Waits    uint64 // calls that waited for memory to start an instance
	Refusals uint64 // memory.grow refused, and calls that gave up waiting
}

// Stats returns the budget's figures.
func (b *Budget) Stats() BudgetStats {
	if b == nil {
		return BudgetStats{}
	}
	return BudgetStats{Limit: b.limit, Used: b.used.Load(), Waits: b.waits.Load(), Refusals: b.refusals.Load()}
}

// take charges n bytes if they fit.
func (b *Budget) take(n uint64) bool {
	if b == nil {
		return true
	}
	for {
		u := b.used.Load()
		if b.limit > 0 && u+n > b.limit {
			return false
		}
		if b.used.CompareAndSwap(u, u+n) {
			return true
		}
	}
}

// force charges n bytes even past the limit (an instance's initial memory,
// which wazero cannot be refused).
func (b *Budget) force(n uint64) {
	if b != nil {
		b.used.Add(n)
	}
}

// give returns n bytes and wakes whoever waits for memory.
func (b *Budget) give(n uint64) {
	if b == nil || n == 0 {
		return
	}
	b.used.Add(-n)
	if b.waiting.Load() > 0 {
		b.mu.Lock()
		if b.freed != nil {
			close(b.freed)
			b.freed = nil
		}
		b.mu.Unlock()
	}
}

// changed is closed at the next give (get it before trying to take, so as
// not to miss one).
func (b *Budget) changed() <-chan struct{} {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.freed == nil {
		b.freed = make(chan struct{})
	}
	return b.freed
}

func (b *Budget) join(h *Handler, add bool) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if add {
		b.handlers[h] = struct{}{}
	} else {
		delete(b.handlers, h)
	}
}

func (b *Budget) members() []*Handler {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	hs := make([]*Handler, 0, len(b.handlers))
	for h := range b.handlers {
		hs = append(hs, h)
	}
	return hs
}

// errNoMemory is a call that found no room in the memory budget in time.
var errNoMemory = errors.New("no room in the guest memory budget")

// charge takes n bytes from the tenant's budget and the worker's, or from
// neither.
func (h *Handler) charge(n uint64) bool {
	if !h.budget.take(n) {
		return false
	}
	if !h.opts.Budget.take(n) {
		h.budget.give(n)
		return false
	}
	return true
}

func (h *Handler) uncharge(n uint64) {
	h.opts.Budget.give(n)
	h.budget.give(n)
}

// chargeOrReclaim charges n bytes, closing idle instances to make room if
// they do not fit.
func (h *Handler) chargeOrReclaim(n uint64) bool {
	return h.charge(n) || (h.reclaim(n) && h.charge(n))
}

// fits says whether n bytes could ever fit the budgets.
func (h *Handler) fits(n uint64) error {
	if l := h.budget.limit; l > 0 && n > l {
		return fmt.Errorf("an instance starts with %d KiB of memory, more than the tenant's guest memory budget of %d KiB", n>>10, l>>10)
	}
	if w := h.opts.Budget; w != nil && w.limit > 0 && n > w.limit {
		return fmt.Errorf("an instance starts with %d KiB of memory, more than the worker's guest memory budget of %d KiB", n>>10, w.limit>>10)
	}
	return nil
}

// reclaim closes idle pooled instances to make room for n bytes: this
// handler's own, then those of the worker's other handlers that hold more
// than an equal share of the worker's budget (a tenant within its share
// keeps its warm instances whatever another asks for). It reports whether
// it closed any.
func (h *Handler) reclaim(n uint64) bool {
	freed := h.closeIdle(n, nil)
	if w := h.opts.Budget; freed < n && w != nil && w.limit > 0 {
		hs := w.members()
		share := w.limit / uint64(max(len(hs), 1))
		for _, o := range hs {
			if freed >= n {
				break
			}
			if o != h && o.budget.used.Load() > share {
				freed += o.closeIdle(n-freed, &share)
			}
		}
	}
	return freed > 0
}

// closeIdle closes idle instances, least recently used first, until n
// bytes are freed, or (with above) while the handler holds more than that.
func (h *Handler) closeIdle(n uint64, above *uint64) uint64 {
	// The zeroed pages kept for the next instances go first: they cost
	// only page faults to make again.
	kept := h.spares.dropKept()
	freed := kept
	var victims []*instance
	h.mu.Lock()
	k := 0
	for k < len(h.idle) && freed < n {
		if above != nil && h.budget.used.Load()-(freed-kept) <= *above {
			break
		}
		freed += h.idle[k].lm.size()
		victims = append(victims, h.idle[k])
		k++
	}
	h.idle = append(h.idle[:0], h.idle[k:]...)
	h.mu.Unlock()
	for _, inst := range victims {
		inst.close(context.Background())
	}
	return freed
}

// reserveStart reserves the memory a new instance starts with (its initial
// memory, or what the last instance had once started), closing idle
// instances to make room and otherwise waiting for memory to free, until
// the memory wait ends (errNoMemory). It returns ok false as soon as alt
// is signalled (an instance came back to the pool). waited and deadline
// carry the wait over a call's attempts: it is counted, and bounded, once.
func (h *Handler) reserveStart(ctx context.Context, alt <-chan struct{}, waited *bool, deadline *time.Time) (n uint64, ok bool, err error) {
	n = h.startMem.Load()
	if err := h.fits(n); err != nil {
		return 0, false, err
	}
	for {
		if h.chargeOrReclaim(n) {
			return n, true, nil
		}
		// Subscribe to frees, then try again: a free in between is not
		// missed.
		wch, tch := h.opts.Budget.changed(), h.budget.changed()
		if h.charge(n) {
			return n, true, nil
		}
		if !*waited {
			*waited = true
			*deadline = time.Now().Add(h.opts.MemoryWait)
			h.budget.waits.Add(1)
			if h.opts.Budget != nil {
				h.opts.Budget.waits.Add(1)
			}
		}
		h.budget.waiting.Add(1)
		h.opts.Budget.addWaiting(1)
		timer := time.NewTimer(time.Until(*deadline))
		err = nil
		select {
		case <-wch:
		case <-tch:
		case <-alt:
			err = errAlt
		case <-timer.C:
			err = errNoMemory
		case <-ctx.Done():
			err = ctx.Err()
		}
		timer.Stop()
		h.budget.waiting.Add(-1)
		h.opts.Budget.addWaiting(-1)
		switch err {
		case nil:
		case errAlt:
			return 0, false, nil
		case errNoMemory:
			h.refused(n)
			return 0, false, fmt.Errorf("%w within %v (an instance needs %d KiB)", errNoMemory, h.opts.MemoryWait, n>>10)
		default:
			return 0, false, err
		}
	}
}

var errAlt = errors.New("instance returned")

func (b *Budget) addWaiting(d int64) {
	if b != nil {
		b.waiting.Add(d)
	}
}

// refused counts a refusal of n bytes for the tenant, and for the worker
// when the tenant's own budget had room for them (the worker's was short).
func (h *Handler) refused(n uint64) {
	h.budget.refusals.Add(1)
	if w := h.opts.Budget; w != nil && (h.budget.limit == 0 || h.budget.used.Load()+n <= h.budget.limit) {
		w.refusals.Add(1)
	}
}

// linearMemory is a guest instance's linear memory, charged to the
// budgets. It is a reservation of address space as large as the memory
// may ever grow (mmap, no swap reserved): growing it only lengthens the
// slice, nothing is copied, and the kernel backs pages as the guest
// touches them; closing the instance drops its pages (and unmaps it, or
// keeps it, reset, for the next instance: spares), so the memory returns
// to the system within resetIdle (the zeroed pages a kept reservation
// holds, charged meanwhile: within twice that), not at Go's next garbage
// collection. The module's memory image, if it has one, is mapped over the
// start (memImage). Where the reservation fails it falls back to a Go
// slice, the image copied in.
type linearMemory struct {
	inst    *instance
	buf     []byte
	mapped  bool
	started bool
	charged atomic.Uint64 // bytes charged to the budgets (read by reclaim)
	max     uint64
	// unwritten is the module's memory image not yet copied into buf (a
	// Go slice: a mapping gets it mapped in Allocate); imageErr says why a
	// copy failed, for instantiate to refuse the instance (wazero cannot
	// be refused the initial memory).
	unwritten *memImage
	imageErr  error
}

// Allocate implements experimental.MemoryAllocator, for inst's module.
func (inst *instance) Allocate(capacity, max uint64) experimental.LinearMemory {
	m := &linearMemory{inst: inst, max: max}
	m.charged.Store(inst.prepaid)
	inst.prepaid = 0
	inst.lm = m
	img := inst.h.image
	if max > 0 && max <= 1<<32 {
		if b := inst.h.spares.get(int(max)); b != nil {
			m.buf, m.mapped = b[:0], true
			return m
		}
		b, err := syscall.Mmap(-1, 0, int(max), syscall.PROT_READ|syscall.PROT_WRITE,
			syscall.MAP_PRIVATE|syscall.MAP_ANON|syscall.MAP_NORESERVE)
		if err == nil && img != nil {
			if err = img.mapInto(b); err != nil {
				syscall.Munmap(b)
			}
		}
		if err == nil {
			m.buf, m.mapped = b[:0], true
			return m
		}
	}
	m.buf = make([]byte, 0, capacity)
	m.unwritten = img // copied in when the memory is first sized
	return m
}

// Reallocate implements experimental.LinearMemory: nil refuses the growth
// (memory.grow returns -1, as at the instance's own limit).
func (m *linearMemory) Reallocate(size uint64) []byte {
	h := m.inst.h
	if c := m.charged.Load(); size > c {
		need := size - c
		switch {
		case !m.started:
			// The initial memory: reserved before instantiation, and wazero
			// cannot be refused it.
			h.budget.force(need)
			h.opts.Budget.force(need)
		case !h.chargeOrReclaim(need):
			m.inst.refused = true
			h.refused(need)
			return nil
		}
		m.charged.Store(size)
	}
	m.started = true
	if m.mapped {
		m.buf = m.buf[:size]
		return m.buf
	}
	if size > uint64(cap(m.buf)) {
		nb := make([]byte, size, min(max(size, 2*uint64(cap(m.buf))), max(m.max, size)))
		copy(nb, m.buf)
		m.buf = nb
	}
	m.buf = m.buf[:size]
	if img := m.unwritten; img != nil {
		m.unwritten = nil
		m.imageErr = img.copyInto(m.buf)
	}
	return m.buf
}

// Free implements experimental.LinearMemory.
func (m *linearMemory) Free() {
	// Uncharged first: the reservation's kept pages are charged anew.
	m.inst.h.uncharge(m.charged.Swap(0))
	if m.mapped && m.buf != nil {
		m.inst.h.spares.put(m.buf[:cap(m.buf)], len(m.buf), m.inst.h.image)
	}
	m.buf = nil
}

// trim gives back what was reserved for the start but not used.
func (m *linearMemory) trim() {
	if c, l := m.charged.Load(), uint64(len(m.buf)); c > l {
		m.charged.Store(l)
		m.inst.h.uncharge(c - l)
	}
}

// size is the memory charged for the instance.
func (m *linearMemory) size() uint64 {
	if m == nil {
		return 0
	}
	return m.charged.Load()
}
