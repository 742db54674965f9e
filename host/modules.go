package host

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"

	"github.com/wcluster/wcluster/internal/instrument"
)

// Modules shares compiled modules among the Handlers of a process: one
// wazero runtime, holding the host modules and the compiled guest, per
// distinct module (by content), memory limit and time-limit checks. The
// instances of every Handler sharing it are anonymous modules of that
// runtime, each with its own module configuration (env, mount, stdio) and
// memory allocator (the budgets); host functions find their Handler
// through the calling instance. So 5,000 tenants serving one module
// compile and hold its code once.
//
// A runtime stays until Close, even when no Handler uses it any more: a
// check or a worker builds its Handlers one after the other, and one
// released before the next is built would be compiled again.
type Modules struct {
	mu sync.Mutex
	m  map[moduleKey]*module
	// pagemap is /proc/self/pagemap (nil where it did not open), opened by
	// NewModules: before a worker's sandbox, which puts /proc out of reach.
	// The module images read it to restore only the pages an instance
	// wrote (memImage.restore).
	pagemap *os.File
	// sums remembers the sum of module bytes passed before, by their first
	// byte's address: callers pass the same slice for every tenant serving
	// a module (Options.Wasm is not modified), so it is hashed once.
	sums map[bytesID][32]byte
}

// moduleKey is what a compiled module depends on: its bytes, the memory
// limit (a runtime setting in wazero) and whether it carries the
// time-limit checks (other bytes).
type moduleKey struct {
	sum      [32]byte
	pages    uint32
	limited  bool
	cacheDir string
}

type bytesID struct {
	p *byte
	n int
}

// module is a runtime with its compiled guest, or the error compiling it.
type module struct {
	rt       wazero.Runtime
	compiled wazero.CompiledModule
	image    *memImage // its data, when compiled without it
	info     Info
	err      error
}

// NewModules makes an empty set of shared modules; Close releases them. A
// worker makes it before its sandbox goes on (see Modules.pagemap).
func NewModules() *Modules {
	pm, err := os.Open("/proc/self/pagemap")
	if err != nil {
		pm = nil // the images' pages are dropped rather than restored
	}
	return &Modules{m: map[moduleKey]*module{}, sums: map[bytesID][32]byte{}, pagemap: pm}
}

// Len is the number of distinct compiled modules held.
func (ms *Modules) Len() int {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	return len(ms.m)
}

// get returns the module of o (compiling it, from the cache when warm, the
// first time).
func (ms *Modules) get(ctx context.Context, o *Options) (*module, error) {
	if len(o.Wasm) == 0 {
		return nil, errors.New("not a WebAssembly module (empty): pass a .wasm file")
	}
	ms.mu.Lock()
	defer ms.mu.Unlock()
	id := bytesID{&o.Wasm[0], len(o.Wasm)}
	sum, ok := ms.sums[id]
	if !ok {
		sum = sha256.Sum256(o.Wasm)
		ms.sums[id] = sum
	}
	key := moduleKey{sum: sum, pages: memoryPages(o.MemoryLimit), limited: o.Timeout > 0, cacheDir: o.CacheDir}
	if m, ok := ms.m[key]; ok {
		return m, m.err
	}
	m := &module{}
	m.err = m.build(ctx, o, ms.pagemap)
	if m.err != nil && m.rt != nil {
		m.rt.Close(ctx)
		m.rt = nil
		m.image.close()
	}
	ms.m[key] = m
	return m, m.err
}

func (m *module) build(ctx context.Context, o *Options, pagemap *os.File) error {
	rt, err := newRuntime(ctx, o)
	if err != nil {
		return err
	}
	m.rt = rt
	var img *instrument.Image
	if m.compiled, img, err = compile(ctx, rt, o.Wasm, o.Timeout > 0); err != nil {
		return err
	}
	if img != nil {
		m.image = newMemImage(img)
		m.image.pagemap = pagemap
	}
	if m.info, err = inspect(m.compiled); err != nil {
		return err
	}
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, rt); err != nil {
		return fmt.Errorf("instantiate WASI: %w", err)
	}
	if err := instantiateHostModule(ctx, rt); err != nil {
		return err
	}
	if m.info.Kind == KindHTTP {
		if err := instantiateHTTPModule(ctx, rt); err != nil {
			return err
		}
	}
	return nil
}

// Close closes every runtime. Call it after every Handler using them is
// closed.
func (ms *Modules) Close(ctx context.Context) error {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	var errs []error
	for k, m := range ms.m {
		if m.rt != nil {
			errs = append(errs, m.rt.Close(ctx))
		}
		m.image.close()
		delete(ms.m, k)
	}
	clear(ms.sums)
	if ms.pagemap != nil {
		ms.pagemap.Close()
		ms.pagemap = nil
	}
	return errors.Join(errs...)
}

// memoryPages is the runtime's memory limit for limit bytes (0: wazero's).
func memoryPages(limit uint64) uint32 {
	if limit == 0 {
		return 0
	}
	return uint32(min(max(limit/65536, 1), 65536))
}
