package host

import (
	"context"
	"fmt"
	"log/slog"
	"math"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"

	"github.com/wcluster/wcluster/abi"
)

// instantiateHostModule registers the ABI's host functions, in spec order,
// as GoModuleFuncs (no reflection on the call path).
func instantiateHostModule(ctx context.Context, rt wazero.Runtime) error {
	i32, i64 := api.ValueTypeI32, api.ValueTypeI64
	b := rt.NewHostModuleBuilder(abi.HostModule)
	fns := []struct {
		name    string
		fn      func(*Handler, context.Context, api.Module, []uint64)
		params  []api.ValueType
		names   []string
		results []api.ValueType
	}{
		{abi.FuncConnRead, (*Handler).connRead, []api.ValueType{i32, i32}, []string{"buf", "buf_len"}, []api.ValueType{i32}},
		{abi.FuncConnWrite, (*Handler).connWrite, []api.ValueType{i32, i32}, []string{"buf", "buf_len"}, []api.ValueType{i32}},
		{abi.FuncConnCloseWrite, (*Handler).connCloseWrite, nil, nil, []api.ValueType{i32}},
		{abi.FuncConnUnread, (*Handler).connUnread, []api.ValueType{i32, i32}, []string{"buf", "buf_len"}, []api.ValueType{i32}},
		{abi.FuncConnPeerAddr, (*Handler).connPeerAddr, []api.ValueType{i32, i32}, []string{"buf", "buf_len"}, []api.ValueType{i32}},
		{abi.FuncConnID, (*Handler).connID, nil, nil, []api.ValueType{i64}},
		{abi.FuncWorkerID, (*Handler).workerID, nil, nil, []api.ValueType{i32}},
		{abi.FuncLog, (*Handler).log, []api.ValueType{i32, i32, i32}, []string{"level", "buf", "buf_len"}, []api.ValueType{i32}},
		{abi.FuncConfigGet, (*Handler).configGet, []api.ValueType{i32, i32, i32, i32}, []string{"key", "key_len", "buf", "buf_len"}, []api.ValueType{i32}},
		{abi.FuncKVGet, (*Handler).kvGet, []api.ValueType{i32, i32, i32, i32}, []string{"key", "key_len", "buf", "buf_len"}, []api.ValueType{i32}},
		{abi.FuncKVSet, (*Handler).kvSet, []api.ValueType{i32, i32, i32, i32}, []string{"key", "key_len", "value", "value_len"}, []api.ValueType{i32}},
		{abi.FuncKVDelete, (*Handler).kvDelete, []api.ValueType{i32, i32}, []string{"key", "key_len"}, []api.ValueType{i32}},
		{abi.FuncKVAdd, (*Handler).kvAdd, []api.ValueType{i32, i32, i64, i32}, []string{"key", "key_len", "delta", "out"}, []api.ValueType{i32}},
		{abi.FuncKVList, (*Handler).kvList, []api.ValueType{i32, i32, i32, i32}, []string{"prefix", "prefix_len", "buf", "buf_len"}, []api.ValueType{i32}},
	}
	for _, f := range fns {
		// The runtime is shared by the Handlers serving its module: a call
		// goes to the calling instance's.
		fn := f.fn
		call := func(ctx context.Context, mod api.Module, stack []uint64) { fn(handlerOf(ctx), ctx, mod, stack) }
		b.NewFunctionBuilder().WithGoModuleFunction(api.GoModuleFunc(call), f.params, f.results).
			WithParameterNames(f.names...).Export(f.name)
	}
	if _, err := b.Instantiate(ctx); err != nil {
		return fmt.Errorf("instantiate host module: %w", err)
	}
	return nil
}

// buffer resolves (ptr, len) in the stack to a view of guest memory, or an
// ABI error code.
func buffer(mod api.Module, stack []uint64) ([]byte, int32) {
	ptr, n := uint32(stack[0]), int32(uint32(stack[1]))
	if n < 0 {
		return nil, abi.ErrInvalid
	}
	mem := mod.Memory()
	if mem == nil {
		return nil, abi.ErrFault
	}
	b, ok := mem.Read(ptr, uint32(n))
	if !ok {
		return nil, abi.ErrFault
	}
	return b, 0
}

// handlerOf is the Handler of the instance calling a host function.
func handlerOf(ctx context.Context) *Handler {
	if inst := instanceOf(ctx); inst != nil {
		return inst.h
	}
	panic("wcluster: a host function called outside an instance")
}

func current(ctx context.Context) *conn {
	if inst := instanceOf(ctx); inst != nil {
		return inst.cur
	}
	return nil
}

func ret(stack []uint64, v int32) { stack[0] = uint64(uint32(v)) }

func (h *Handler) connRead(ctx context.Context, mod api.Module, stack []uint64) {
	c := current(ctx)
	b, code := buffer(mod, stack)
	switch {
	case code != 0:
		ret(stack, code)
	case c == nil:
		ret(stack, abi.ErrNoConn)
	default:
		ret(stack, c.read(b))
	}
}

func (h *Handler) connWrite(ctx context.Context, mod api.Module, stack []uint64) {
	c := current(ctx)
	b, code := buffer(mod, stack)
	switch {
	case code != 0:
		ret(stack, code)
	case c == nil:
		ret(stack, abi.ErrNoConn)
	default:
		ret(stack, c.write(b))
	}
}

func (h *Handler) connCloseWrite(ctx context.Context, _ api.Module, stack []uint64) {
	c := current(ctx)
	if c == nil {
		ret(stack, abi.ErrNoConn)
		return
	}
	ret(stack, c.closeWrite())
}

func (h *Handler) connUnread(ctx context.Context, mod api.Module, stack []uint64) {
	c := current(ctx)
	b, code := buffer(mod, stack)
	switch {
	case code != 0:
		ret(stack, code)
	case c == nil:
		ret(stack, abi.ErrNoConn)
	default:
		ret(stack, c.unread(b))
	}
}

func (h *Handler) connPeerAddr(ctx context.Context, mod api.Module, stack []uint64) {
	c := current(ctx)
	b, code := buffer(mod, stack)
	switch {
	case code != 0:
		ret(stack, code)
	case c == nil:
		ret(stack, abi.ErrNoConn)
	default:
		addr := c.peerAddr()
		if len(addr) <= len(b) {
			copy(b, addr)
		}
		ret(stack, int32(len(addr)))
	}
}

func (h *Handler) connID(ctx context.Context, _ api.Module, stack []uint64) {
	var id int64
	if c := current(ctx); c != nil {
		id = c.id
	}
	stack[0] = uint64(id)
}

func (h *Handler) workerID(_ context.Context, _ api.Module, stack []uint64) {
	ret(stack, int32(h.opts.WorkerID))
}

func (h *Handler) log(ctx context.Context, mod api.Module, stack []uint64) {
	level := int32(uint32(stack[0]))
	b, code := buffer(mod, stack[1:])
	if code != 0 {
		ret(stack, code)
		return
	}
	var l slog.Level
	switch level {
	case abi.LogDebug:
		l = slog.LevelDebug
	case abi.LogInfo:
		l = slog.LevelInfo
	case abi.LogWarn:
		l = slog.LevelWarn
	case abi.LogError:
		l = slog.LevelError
	default:
		ret(stack, abi.ErrInvalid)
		return
	}
	if !h.opts.Logger.Enabled(ctx, l) {
		ret(stack, 0) // below the log level: it spends none of the rate limit
		return
	}
	var id int64
	if c := current(ctx); c != nil {
		id = c.id
	}
	// One entry of at most maxLogLine bytes, within the rate limit guest
	// output has: a guest calling log in a loop must not flood the log.
	h.guestLine(l, "guest", b[:min(len(b), maxLogLine)], id)
	ret(stack, 0)
}

func (h *Handler) configGet(_ context.Context, mod api.Module, stack []uint64) {
	key, code := buffer(mod, stack[0:2])
	if code != 0 {
		ret(stack, code)
		return
	}
	buf, code := buffer(mod, stack[2:4])
	if code != 0 {
		ret(stack, code)
		return
	}
	v, ok := h.opts.Config[string(key)]
	if !ok {
		ret(stack, abi.ErrNotFound)
		return
	}
	if len(v) > math.MaxInt32 {
		ret(stack, abi.ErrInvalid)
		return
	}
	copy(buf, v)
	ret(stack, int32(len(v)))
}
