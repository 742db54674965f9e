package host

// The key-value store's host functions (abi.FuncKV*): the tenant's
// namespace and limits, the backend's errors as ABI codes.

import (
	"context"
	"encoding/binary"
	"errors"
	"math"

	"github.com/tetratelabs/wazero/api"

	"github.com/wcluster/wcluster/abi"
	"github.com/wcluster/wcluster/internal/kvstore"
)

// kvCtx is the context of a store operation: not cancelled with the call
// (a context that can be cancelled costs the SQLite driver a goroutine per
// query), and not derived from it (that costs an allocation per call, and
// the backends read no values); each backend bounds its own waits (SQLite's
// busy timeout, the Redis client's timeouts), so a store that hangs gives
// the guest ErrUnavailable within seconds, never a stuck instance.
func kvCtx(context.Context) context.Context { return context.Background() }

// kvCode is err as an ABI code, logging what the guest cannot see.
func (h *Handler) kvCode(op string, err error) int32 {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, kvstore.ErrNotFound):
		return abi.ErrNotFound
	case errors.Is(err, kvstore.ErrQuota):
		return abi.ErrQuota
	case errors.Is(err, kvstore.ErrNotInteger):
		return abi.ErrInvalid
	}
	h.opts.Logger.Warn("key-value store unavailable", "op", op, "err", err)
	return abi.ErrUnavailable
}

// kvKey resolves the key argument and checks it against the limits.
func (h *Handler) kvKey(mod api.Module, stack []uint64) ([]byte, int32) {
	if h.opts.KV == nil {
		return nil, abi.ErrUnavailable
	}
	key, code := buffer(mod, stack)
	if code != 0 {
		return nil, code
	}
	if len(key) > abi.MaxKVKey {
		return nil, abi.ErrTooLarge
	}
	return key, 0
}

// kvKeyBuf resolves the (key, key_len, buf, buf_len) arguments of
// kv_get and kv_list.
func (h *Handler) kvKeyBuf(mod api.Module, stack []uint64) (key, buf []byte, code int32) {
	if key, code = h.kvKey(mod, stack[0:2]); code != 0 {
		return nil, nil, code
	}
	buf, code = buffer(mod, stack[2:4])
	return key, buf, code
}

func (h *Handler) kvGet(ctx context.Context, mod api.Module, stack []uint64) {
	key, buf, code := h.kvKeyBuf(mod, stack)
	if code != 0 {
		ret(stack, code)
		return
	}
	ctx = kvCtx(ctx)
	kv := h.opts.KV
	v, err := kv.Backend.Get(ctx, kv.NS, key)
	if err != nil {
		ret(stack, h.kvCode("get", err))
		return
	}
	if len(v) > math.MaxInt32 {
		ret(stack, abi.ErrTooLarge)
		return
	}
	copy(buf, v)
	ret(stack, int32(len(v)))
}

func (h *Handler) kvSet(ctx context.Context, mod api.Module, stack []uint64) {
	key, code := h.kvKey(mod, stack[0:2])
	if code != 0 {
		ret(stack, code)
		return
	}
	val, code := buffer(mod, stack[2:4])
	if code != 0 {
		ret(stack, code)
		return
	}
	kv := h.opts.KV
	if kv.MaxValue > 0 && len(val) > kv.MaxValue {
		ret(stack, abi.ErrTooLarge)
		return
	}
	ctx = kvCtx(ctx)
	ret(stack, h.kvCode("set", kv.Backend.Set(ctx, kv.NS, key, val, kv.Quota)))
}

func (h *Handler) kvDelete(ctx context.Context, mod api.Module, stack []uint64) {
	key, code := h.kvKey(mod, stack[0:2])
	if code != 0 {
		ret(stack, code)
		return
	}
	ctx = kvCtx(ctx)
	kv := h.opts.KV
	ret(stack, h.kvCode("delete", kv.Backend.Delete(ctx, kv.NS, key)))
}

func (h *Handler) kvAdd(ctx context.Context, mod api.Module, stack []uint64) {
	key, code := h.kvKey(mod, stack[0:2])
	if code != 0 {
		ret(stack, code)
		return
	}
	delta := int64(stack[2])
	mem := mod.Memory()
	out := uint32(stack[3])
	if mem == nil {
		ret(stack, abi.ErrFault)
		return
	}
	if _, ok := mem.Read(out, 8); !ok {
		ret(stack, abi.ErrFault)
		return
	}
	ctx = kvCtx(ctx)
	kv := h.opts.KV
	sum, err := kv.Backend.Add(ctx, kv.NS, key, delta, kv.Quota)
	if err != nil {
		ret(stack, h.kvCode("add", err))
		return
	}
	mem.WriteUint64Le(out, uint64(sum))
	ret(stack, 0)
}

func (h *Handler) kvList(ctx context.Context, mod api.Module, stack []uint64) {
	prefix, buf, code := h.kvKeyBuf(mod, stack)
	if code != 0 {
		ret(stack, code)
		return
	}
	ctx = kvCtx(ctx)
	kv := h.opts.KV
	keys, err := kv.Backend.List(ctx, kv.NS, prefix, abi.MaxKVList)
	if err != nil {
		ret(stack, h.kvCode("list", err))
		return
	}
	var out []byte
	for _, k := range keys {
		out = binary.LittleEndian.AppendUint32(out, uint32(len(k)))
		out = append(out, k...)
	}
	copy(buf, out)
	ret(stack, int32(len(out)))
}
