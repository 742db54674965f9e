package host

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/sys"

	"github.com/wcluster/wcluster/abi"
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
	ctx    instContext
	stack  [1]uint64
	cur    *conn
	errbuf []byte // stderr bytes since the last newline
	uses   int
	last   time.Time // when it was last returned to the pool

	// mu guards the time-limit state shared with timer's callback.
	mu       sync.Mutex
	timer    *time.Timer
	running  bool
	timedOut bool
	// stop is closed when a call overruns the time limit: the calls' context
	// reports done, so wazero stops the guest at its next check (from the
	// calling goroutine, so nothing the guest still uses is closed under it),
	// and a guest asleep in the host wakes up. nil without a limit.
	stop chan struct{}
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

// newInstance instantiates the module and runs its _initialize, within the
// time limit.
func (h *Handler) newInstance(ctx context.Context) (*instance, error) {
	inst := &instance{h: h}
	if h.opts.Timeout > 0 {
		inst.stop = make(chan struct{})
	}
	parent := ctx
	if h.opts.Timeout > 0 {
		var cancel context.CancelFunc
		parent, cancel = context.WithTimeout(ctx, h.opts.Timeout)
		defer cancel()
	}
	inst.ctx = instContext{Context: parent, inst: inst}
	start := time.Now()
	mod, err := h.rt.InstantiateModule(inst.ctx, h.compiled, h.modCfg.
		WithStdin(stdin{inst}).WithStdout(stdout{inst}).WithStderr(logWriter{inst}).
		WithNanosleep(inst.nanosleep).
		WithStartFunctions(abi.ExportInitialize))
	if err != nil {
		if mod != nil {
			mod.Close(ctx)
		}
		if errors.Is(parent.Err(), context.DeadlineExceeded) {
			return nil, fmt.Errorf("instantiate: _initialize ran past the %v time limit", h.opts.Timeout)
		}
		return nil, fmt.Errorf("instantiate: %s", oneLine(err))
	}
	h.stats.instances.Add(1)
	h.stats.instanceNs.Add(uint64(time.Since(start)))
	h.stats.live.Add(1)
	inst.mod = mod
	inst.mem = mod.Memory()
	inst.entry = mod.ExportedFunction(abi.ExportHandle)
	// Calls run under the instance's own context, done only when the
	// timer closes stop: one timer per instance, no context per call.
	inst.ctx = instContext{inst: inst}
	if h.opts.Timeout > 0 {
		inst.timer = time.AfterFunc(time.Hour, inst.expire)
		inst.timer.Stop()
	}
	return inst, nil
}

// handle runs one call of wcluster_handle for c.
func (inst *instance) handle(c *conn, flags int32) (uint64, error) {
	inst.cur = c
	inst.uses++
	inst.arm()
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

// arm starts the time limit of a call.
func (inst *instance) arm() {
	t := inst.h.opts.Timeout
	if t <= 0 {
		return
	}
	if inst.cur != nil {
		inst.cur.deadline = time.Now().Add(t)
	}
	if inst.timer == nil {
		return
	}
	inst.mu.Lock()
	inst.running = true
	inst.timer.Reset(t)
	inst.mu.Unlock()
}

// disarm ends the time limit of a call and reports whether it expired.
func (inst *instance) disarm() bool {
	if inst.timer == nil {
		return false
	}
	inst.mu.Lock()
	defer inst.mu.Unlock()
	inst.running = false
	inst.timer.Stop()
	return inst.timedOut
}

// expire stops a call that overran the time limit: it closes stop, and the
// guest exits at its next check (wazero watches the call's context); the
// instance is never reused. It does not close the module itself: that
// would free what a host function of the guest may be using right now.
func (inst *instance) expire() {
	inst.mu.Lock()
	defer inst.mu.Unlock()
	if !inst.running || inst.timedOut {
		return
	}
	inst.timedOut = true
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
	if inst.h.opts.MemoryLimit > 0 && inst.mem != nil && uint64(inst.mem.Size())+inst.h.opts.MemoryLimit/8 >= inst.h.opts.MemoryLimit {
		return &memoryError{err}
	}
	return err
}

func (inst *instance) close(ctx context.Context) {
	if inst.mod != nil {
		inst.mod.Close(ctx)
		inst.h.stats.live.Add(-1)
	}
}

// memoryError is a failure of a guest whose memory reached its limit.
type memoryError struct{ err error }

func (e *memoryError) Error() string { return "memory limit reached: " + e.err.Error() }
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
	if h.opts.Fresh {
		inst, err := h.newInstance(ctx)
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
	// guest) per waiting connection.
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
			inst, err := h.newInstance(ctx)
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

// release returns an instance after a call; one that failed, is fresh-only
// or has served MaxReuse calls is closed instead.
func (h *Handler) release(inst *instance, healthy bool) {
	reuse := healthy && !h.opts.Fresh && (h.opts.MaxReuse <= 0 || inst.uses < h.opts.MaxReuse)
	if reuse {
		inst.last = time.Now()
		h.mu.Lock()
		h.idle = append(h.idle, inst)
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

// maintain shrinks the pool: instances idle for longer than idleInstance,
// beyond MinInstances, are closed. It runs until Close.
func (h *Handler) maintain() {
	defer h.done.Done()
	const idleInstance = 30 * time.Second
	tick := time.NewTicker(idleInstance / 3)
	defer tick.Stop()
	for {
		select {
		case <-h.stop:
			return
		case now := <-tick.C:
			var old []*instance
			h.mu.Lock()
			// idle is a stack: the least recently used are at the bottom.
			n := 0
			for n < len(h.idle)-h.opts.MinInstances && now.Sub(h.idle[n].last) > idleInstance {
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
