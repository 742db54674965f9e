package host

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/experimental"
	"github.com/tetratelabs/wazero/sys"

	"github.com/wcluster/wcluster/abi"
	"github.com/wcluster/wcluster/internal/instrument"
)

// errDeadline marks a call stopped at the handler's time limit.
var errDeadline = errors.New("time limit exceeded")

// instance is one guest instance. It serves one call at a time; cur is the
// connection of that call (nil between calls).
type instance struct {
	h      *Handler
	mod    api.Module
	mem    api.Memory
	entry  api.Function
	ctx    context.Context // an instContext, boxed once rather than per call
	stack  [1]uint64
	cur    *conn
	output outputs // the guest's output streams sent to the log
	uses   int
	last   time.Time // when it was last returned to the pool
	live   bool      // counted in stats.live

	// Time limit (nil stopFlag and stop without one). began, shared with
	// the Handler's watchdog, is when the running call began (Handler.mono),
	// 0 between calls, or expired once the watchdog stopped the call.
	stopFlag api.MutableGlobal // instrument's flag: non-zero stops the guest
	began    atomic.Int64
	// stop is closed when a call overruns the time limit, to wake a guest
	// asleep in the host.
	stop chan struct{}

	// Memory: lm is the linear memory (nil until the module has one);
	// prepaid is what was reserved for its start, until lm takes it;
	// refused is set when the budget refused a memory.grow.
	lm      *linearMemory
	prepaid uint64
	refused bool
	web     *webInst // an http-wasm guest's exports and request
}

// instContext is the context of every call into an instance: host functions
// find their instance (and so the connection) in it without allocating.
type instContext struct {
	context.Context
	inst *instance
}

type instKey struct{}

func (c instContext) Value(key any) any {
	if _, ok := key.(instKey); ok {
		return c.inst
	}
	if c.Context == nil {
		return nil
	}
	return c.Context.Value(key)
}

func (c instContext) Deadline() (time.Time, bool) {
	if c.Context == nil {
		return time.Time{}, false
	}
	return c.Context.Deadline()
}

func (c instContext) Done() <-chan struct{} {
	if c.Context == nil {
		return c.inst.stop
	}
	return c.Context.Done()
}

func (c instContext) Err() error {
	if c.Context == nil {
		if c.inst.stopped() {
			return context.DeadlineExceeded
		}
		return nil
	}
	return c.Context.Err()
}

func instanceOf(ctx context.Context) *instance {
	if ic, ok := ctx.(instContext); ok {
		return ic.inst
	}
	inst, _ := ctx.Value(instKey{}).(*instance)
	return inst
}

// instantiate makes a module instance for inst, then runs its start
// functions within the time limit: the module is instantiated without them,
// so that the watchdog can stop them like any call. On error the caller
// closes inst.
func (h *Handler) instantiate(ctx context.Context, inst *instance, cfg wazero.ModuleConfig, start string) (api.Module, error) {
	// The host allocates the linear memory, to hold it to the budgets.
	inst.ctx = instContext{Context: experimental.WithMemoryAllocator(ctx, inst), inst: inst}
	mod, err := h.rt.InstantiateModule(inst.ctx, h.compiled, cfg.WithStartFunctions())
	if err != nil {
		if mod != nil {
			mod.Close(ctx)
		}
		return nil, fmt.Errorf("instantiate: %s", oneLine(err))
	}
	inst.mod = mod
	inst.mem = mod.Memory()
	if inst.lm != nil && inst.lm.imageErr != nil {
		// Its data is not in its memory: nothing of it may run.
		return mod, fmt.Errorf("instantiate: %w", inst.lm.imageErr)
	}
	if h.opts.Timeout > 0 {
		g, ok := mod.ExportedGlobal(instrument.StopExport).(api.MutableGlobal)
		if !ok {
			return mod, errors.New("instantiate: the time-limit flag is missing")
		}
		inst.stopFlag = g
		inst.stop = make(chan struct{})
		h.track(inst, true)
	}
	// The module's start section (exported by instrument), then the
	// start function the kind of module calls for.
	for _, name := range []string{instrument.StartExport, start} {
		fn := mod.ExportedFunction(name)
		if fn == nil {
			continue
		}
		inst.arm(time.Now())
		_, err = fn.Call(inst.ctx)
		if inst.disarm() {
			return mod, &startLimitError{startName(name), h.opts.Timeout}
		}
		if err != nil {
			return mod, err
		}
	}
	return mod, nil
}

// startLimitError is a start function stopped at the time limit; it is an
// errDeadline.
type startLimitError struct {
	what  string
	limit time.Duration
}

func (e *startLimitError) Error() string {
	return fmt.Sprintf("%s ran past the %v time limit", e.what, e.limit)
}

func (e *startLimitError) Is(target error) bool { return target == errDeadline }

// startName is how an error names a start function.
func startName(export string) string {
	if export == instrument.StartExport {
		return "the start function"
	}
	return export
}

// newInstance instantiates the module and runs its _initialize, within the
// time limit. prepaid bytes were charged to the budgets for its start.
func (h *Handler) newInstance(ctx context.Context, prepaid uint64) (*instance, error) {
	inst := &instance{h: h, prepaid: prepaid}
	inst.output.stdout, inst.output.stderr = newOutStreams()
	begin := time.Now()
	// stdio never reaches the connection: see stdio.go.
	cfg := h.modCfg.WithStdin(noInput{}).WithStdout(logWriter{inst, inst.output.stdout}).WithStderr(logWriter{inst, inst.output.stderr}).
		WithNanosleep(inst.nanosleep)
	mod, err := h.instantiate(ctx, inst, cfg, h.startFunc())
	if err != nil {
		inst.close(ctx)
		if errors.Is(err, errDeadline) {
			return nil, fmt.Errorf("instantiate: %w", err)
		}
		if mod != nil {
			return nil, &startError{err} // one line, the stack kept for the log
		}
		return nil, err
	}
	h.stats.instances.Add(1)
	h.stats.instanceNs.Add(uint64(time.Since(begin)))
	h.stats.live.Add(1)
	inst.live = true
	if inst.lm != nil {
		// What it has once started is what the next instance reserves.
		inst.lm.trim()
		h.startMem.Store(inst.lm.size())
	}
	inst.entry = mod.ExportedFunction(abi.ExportHandle)
	// Calls run under the instance's own context: no context per call.
	inst.ctx = instContext{inst: inst}
	return inst, nil
}

// handle runs one call of wcluster_handle for c, which began at now.
func (inst *instance) handle(c *conn, flags int32, now time.Time) (uint64, error) {
	inst.cur = c
	inst.uses++
	if t := inst.h.opts.Timeout; t > 0 {
		c.deadline = now.Add(t)
		inst.arm(now)
	}
	inst.stack[0] = uint64(uint32(flags))
	err := inst.entry.CallWithStack(inst.ctx, inst.stack[:])
	timedOut := inst.disarm()
	inst.flushLog()
	inst.cur = nil
	c.deadline = time.Time{}
	if timedOut {
		return 0, errDeadline
	}
	if err != nil {
		return 0, inst.deadlineErr(err)
	}
	return inst.stack[0], nil
}

// expired marks, in began, a call the watchdog stopped.
const expired = -1

// arm starts the time limit of a call that began at now.
func (inst *instance) arm(now time.Time) {
	if inst.stopFlag != nil {
		inst.began.Store(inst.h.mono(now))
	}
}

// disarm ends the time limit of a call and reports whether it expired.
func (inst *instance) disarm() bool {
	return inst.stopFlag != nil && inst.began.Swap(0) == expired
}

// expire stops the running call if it began limit or more before now: the
// guest traps at its next function entry or loop iteration, and a guest
// asleep in the host wakes. The instance is never reused. (Closing the
// module instead would free what a host function of the guest may be using
// right now.) The swap of began makes sure the call stopped is the one that
// overran, not a later one of the same instance.
func (inst *instance) expire(now time.Time, limit time.Duration) {
	b := inst.began.Load()
	if b <= 0 || inst.h.mono(now)-b < int64(limit) || !inst.began.CompareAndSwap(b, expired) {
		return
	}
	inst.stopFlag.Set(1)
	close(inst.stop)
}

func (inst *instance) stopped() bool {
	if inst.stop == nil {
		return false
	}
	select {
	case <-inst.stop:
		return true
	default:
		return false
	}
}

// nanosleep is the guest's sleep (WASI poll_oneoff on a clock): real time,
// but cut short when the call runs out of time, so a sleeping guest is
// stopped at its limit like a spinning one.
func (inst *instance) nanosleep(ns int64) {
	if ns <= 0 {
		return
	}
	t := time.NewTimer(time.Duration(ns))
	defer t.Stop()
	select {
	case <-t.C:
	case <-inst.stop:
	}
}

func (inst *instance) deadlineErr(err error) error {
	var exit *sys.ExitError
	if errors.As(err, &exit) && (exit.ExitCode() == sys.ExitCodeDeadlineExceeded || exit.ExitCode() == sys.ExitCodeContextCanceled) {
		return errDeadline
	}
	if inst.refused {
		return &memoryError{err: err, budget: true}
	}
	if inst.h.opts.MemoryLimit > 0 && inst.mem != nil && uint64(inst.mem.Size())+inst.h.opts.MemoryLimit/8 >= inst.h.opts.MemoryLimit {
		return &memoryError{err: err}
	}
	return err
}

func (inst *instance) close(ctx context.Context) {
	if inst.stopFlag != nil {
		inst.h.track(inst, false)
	}
	if inst.mod != nil {
		inst.mod.Close(ctx)
		if inst.live {
			inst.h.stats.live.Add(-1)
		}
	}
	// The module's close freed its memory; this covers an instantiation
	// that failed before returning a module, and a start never reached.
	if inst.lm != nil {
		inst.lm.Free()
	}
	inst.h.uncharge(inst.prepaid)
	inst.prepaid = 0
}

// memoryError is a failure of a guest whose memory reached its limit, or
// whose growth the memory budget refused.
type memoryError struct {
	err    error
	budget bool
}

func (e *memoryError) Error() string {
	if e.budget {
		return "guest memory budget reached: " + e.err.Error()
	}
	return "memory limit reached: " + e.err.Error()
}
func (e *memoryError) Unwrap() error { return e.err }

func isMemoryError(err error) bool {
	var m *memoryError
	return errors.As(err, &m)
}

func isExit0(err error) bool {
	var exit *sys.ExitError
	return errors.As(err, &exit) && exit.ExitCode() == 0
}

func oneLine(err error) string {
	s := err.Error()
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

// acquire lends an instance, waiting while Instances are in use.
func (h *Handler) acquire(ctx context.Context) (*instance, error) {
	select {
	case h.sem <- struct{}{}:
	default:
		select {
		case h.sem <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	var waited bool
	var deadline time.Time
	if h.opts.Fresh {
		n, _, err := h.reserveStart(ctx, nil, &waited, &deadline)
		if err != nil {
			<-h.sem
			return nil, err
		}
		inst, err := h.newInstance(ctx, n)
		if err != nil {
			<-h.sem
			return nil, err
		}
		return inst, nil
	}
	// Pooled: take an idle instance; otherwise create one, but one at a
	// time, taking whichever comes first, a returned instance or the turn
	// to create. A burst of first requests so grows the pool by what it
	// needs, not by one instance (milliseconds and megabytes for a Go
	// guest) per waiting connection. Creating waits for room in the
	// memory budgets, but an instance returned meanwhile is taken instead.
	for {
		h.mu.Lock()
		if n := len(h.idle); n > 0 {
			inst := h.idle[n-1]
			h.idle = h.idle[:n-1]
			h.mu.Unlock()
			return inst, nil
		}
		h.mu.Unlock()
		select {
		case h.creating <- struct{}{}:
			n, ok, err := h.reserveStart(ctx, h.returned, &waited, &deadline)
			if err != nil {
				<-h.creating
				<-h.sem
				return nil, err
			}
			if !ok {
				<-h.creating
				continue // an instance came back: take it
			}
			inst, err := h.newInstance(ctx, n)
			<-h.creating
			if err != nil {
				<-h.sem
				return nil, err
			}
			return inst, nil
		case <-h.returned:
		case <-ctx.Done():
			<-h.sem
			return nil, ctx.Err()
		}
	}
}

// release returns an instance after a call that ended at now; one that failed, is fresh-only
// or has served MaxReuse calls is closed instead.
func (h *Handler) release(inst *instance, healthy bool, now time.Time) {
	reuse := healthy && !h.opts.Fresh && (h.opts.MaxReuse <= 0 || inst.uses < h.opts.MaxReuse)
	if reuse {
		inst.last = now
		h.mu.Lock()
		h.idle = append(h.idle, inst)
		h.startMaintain()
		h.mu.Unlock()
		select {
		case h.returned <- struct{}{}:
		default:
		}
	} else {
		inst.close(context.Background())
	}
	<-h.sem
}

// startMaintain starts maintain if the pool holds instances and it does
// not run. Call it with mu held.
func (h *Handler) startMaintain() {
	if len(h.idle) > 0 && !h.maintaining {
		h.maintaining = true
		h.done.Add(1)
		go h.maintain()
	}
}

// track adds inst to (or removes it from) the instances the watchdog checks.
func (h *Handler) track(inst *instance, add bool) {
	h.limitMu.Lock()
	defer h.limitMu.Unlock()
	if add {
		h.limited[inst] = struct{}{}
		if !h.watching {
			// The first instance under the limit (its start functions
			// already run under it): watch runs until none is left.
			h.watching = true
			h.done.Add(1)
			go h.watch()
		}
	} else {
		delete(h.limited, inst)
	}
}

// watch stops calls that overrun the time limit, checking every eighth of
// it (1 s at most, 5 ms at least): a call is stopped within that much after
// its limit. One goroutine per handler rather than a timer per call keeps
// the time limit off each request's path. It runs while the handler has
// instances (track starts it; most of many tenants have none), or until
// Close.
func (h *Handler) watch() {
	defer h.done.Done()
	limit := h.opts.Timeout
	tick := time.NewTicker(min(max(limit/8, 5*time.Millisecond), time.Second))
	defer tick.Stop()
	var insts []*instance
	for {
		select {
		case <-h.stop:
			return
		case now := <-tick.C:
			h.limitMu.Lock()
			if len(h.limited) == 0 {
				h.watching = false // the next track starts another
				h.limitMu.Unlock()
				return
			}
			insts = insts[:0]
			for inst := range h.limited {
				insts = append(insts, inst)
			}
			h.limitMu.Unlock()
			for _, inst := range insts {
				inst.expire(now, limit)
			}
			clear(insts)
		}
	}
}

// maintain shrinks the pool: instances idle for longer than idleInstance,
// beyond MinInstances, are closed; and it reports guest output the rate
// limit dropped once the limit lifts. It runs while the pool holds
// instances (startMaintain starts it; most of many tenants have none), or
// until Close.
func (h *Handler) maintain() {
	defer h.done.Done()
	idleInstance := h.opts.idleInstance
	tick := time.NewTicker(idleInstance / 3)
	defer tick.Stop()
	for {
		select {
		case <-h.stop:
			return
		case now := <-tick.C:
			h.flushDropped(now)
			var old []*instance
			h.mu.Lock()
			if len(h.idle) == 0 {
				h.maintaining = false // the next instance pooled starts another
				h.mu.Unlock()
				return
			}
			// idle is a stack: the least recently used are at the bottom.
			n := 0
			for n < len(h.idle)-h.warm() && now.Sub(h.idle[n].last) > idleInstance {
				n++
			}
			old = append(old, h.idle[:n]...)
			h.idle = append(h.idle[:0], h.idle[n:]...)
			h.mu.Unlock()
			for _, inst := range old {
				inst.close(context.Background())
			}
		}
	}
}
