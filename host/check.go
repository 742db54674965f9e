package host

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"

	"github.com/wcluster/wcluster/abi"
	"github.com/wcluster/wcluster/internal/instrument"
)

// Kind says how a module is served.
type Kind int

const (
	// KindABI is a reactor exporting wcluster_handle: pooled instances.
	KindABI Kind = iota + 1
	// KindCommand is a plain WASI command exporting _start: one instance per
	// connection, stdin and stdout bound to it.
	KindCommand
	// KindHTTP is an http-wasm guest (imports http_handler): the host speaks
	// HTTP and lends it a pooled instance per request.
	KindHTTP
)

func (k Kind) String() string {
	switch k {
	case KindABI:
		return "wcluster ABI handler"
	case KindCommand:
		return "WASI command"
	case KindHTTP:
		return "http-wasm handler ABI"
	}
	return "unknown"
}

// Info describes a module as wcluster sees it.
type Info struct {
	Kind       Kind
	ABIVersion int      // 0 for a command that declares none
	Exports    []string // exported functions, sorted
	Imports    []string // "module.name", in import order
	// SpeaksFirst: the module exports abi.ExportSpeaksFirst, so it is called
	// (or, a command, started) as soon as a connection is accepted rather
	// than when the peer's first bytes arrive.
	SpeaksFirst bool
	// Features are the http-wasm features an http-wasm guest enabled while
	// starting (Prepare's instance; set by Prepare alone). Those it enables
	// per request are known only then.
	Features []string
	// Warnings are what `check` (and serve's log) say of a module that is
	// served, but probably not as its author meant.
	Warnings []string
}

// hostSignatures are the parameter and result types of every ABI function.
var hostSignatures = map[string][2][]api.ValueType{
	abi.FuncConnRead:       {{api.ValueTypeI32, api.ValueTypeI32}, {api.ValueTypeI32}},
	abi.FuncConnWrite:      {{api.ValueTypeI32, api.ValueTypeI32}, {api.ValueTypeI32}},
	abi.FuncConnCloseWrite: {{}, {api.ValueTypeI32}},
	abi.FuncConnUnread:     {{api.ValueTypeI32, api.ValueTypeI32}, {api.ValueTypeI32}},
	abi.FuncConnPeerAddr:   {{api.ValueTypeI32, api.ValueTypeI32}, {api.ValueTypeI32}},
	abi.FuncConnID:         {{}, {api.ValueTypeI64}},
	abi.FuncWorkerID:       {{}, {api.ValueTypeI32}},
	abi.FuncLog:            {{api.ValueTypeI32, api.ValueTypeI32, api.ValueTypeI32}, {api.ValueTypeI32}},
	abi.FuncConfigGet:      {{api.ValueTypeI32, api.ValueTypeI32, api.ValueTypeI32, api.ValueTypeI32}, {api.ValueTypeI32}},
	abi.FuncKVGet:          {{api.ValueTypeI32, api.ValueTypeI32, api.ValueTypeI32, api.ValueTypeI32}, {api.ValueTypeI32}},
	abi.FuncKVSet:          {{api.ValueTypeI32, api.ValueTypeI32, api.ValueTypeI32, api.ValueTypeI32}, {api.ValueTypeI32}},
	abi.FuncKVDelete:       {{api.ValueTypeI32, api.ValueTypeI32}, {api.ValueTypeI32}},
	abi.FuncKVAdd:          {{api.ValueTypeI32, api.ValueTypeI32, api.ValueTypeI64, api.ValueTypeI32}, {api.ValueTypeI32}},
	abi.FuncKVList:         {{api.ValueTypeI32, api.ValueTypeI32, api.ValueTypeI32, api.ValueTypeI32}, {api.ValueTypeI32}},
}

const wasiModule = "wasi_snapshot_preview1"

// connless are the wcluster functions that need no connection: an http-wasm
// guest may import them beside http_handler.
var connless = map[string]bool{abi.FuncConfigGet: true, abi.FuncWorkerID: true, abi.FuncKVGet: true, abi.FuncKVSet: true,
	abi.FuncKVDelete: true, abi.FuncKVAdd: true, abi.FuncKVList: true}

// inspect checks that a compiled module can be served and says how.
func inspect(m wazero.CompiledModule) (Info, error) {
	var info Info
	exports := m.ExportedFunctions()
	for name := range exports {
		info.Exports = append(info.Exports, name)
	}
	sort.Strings(info.Exports)
	_, info.SpeaksFirst = exports[abi.ExportSpeaksFirst]

	for _, def := range m.ImportedFunctions() {
		mod, name, _ := def.Import()
		info.Imports = append(info.Imports, mod+"."+name)
		switch mod {
		case wasiModule:
		case httpModule:
			if err := checkHTTPImport(def); err != nil {
				return info, err
			}
		case abi.HostModule:
			sig, ok := hostSignatures[name]
			if !ok {
				return info, fmt.Errorf("imports %s.%s, which this wcluster (ABI v%d) does not provide: rebuild it against the v%d SDK",
					mod, name, abi.Version, abi.Version)
			}
			if !sameTypes(def.ParamTypes(), sig[0]) || !sameTypes(def.ResultTypes(), sig[1]) {
				return info, fmt.Errorf("imports %s.%s with signature %s, but ABI v%d defines %s",
					mod, name, signature(def.ParamTypes(), def.ResultTypes()), abi.Version, signature(sig[0], sig[1]))
			}
		default:
			return info, fmt.Errorf("imports %s.%s: only %q, %q and %q are provided to guests", mod, name, abi.HostModule, httpModule, wasiModule)
		}
	}

	for _, name := range info.Exports {
		v, ok := strings.CutPrefix(name, abi.VersionExportPrefix)
		if !ok {
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			continue
		}
		info.ABIVersion = n
		if f := exports[name]; len(f.ParamTypes()) != 0 || len(f.ResultTypes()) != 0 {
			return info, fmt.Errorf("exports %s with signature %s, want () -> (): it only marks the ABI version (the SDKs export an empty function)",
				name, signature(f.ParamTypes(), f.ResultTypes()))
		}
	}

	_, handles := exports[abi.ExportHandle]
	if _, ok := exports[httpHandleRequest]; ok && !handles || importsFrom(info.Imports, httpModule) {
		info.Kind = KindHTTP
		// Beside http_handler, only wcluster's functions that need no
		// connection: its configuration, the worker's id and the
		// key-value store.
		for _, imp := range info.Imports {
			name, ok := strings.CutPrefix(imp, abi.HostModule+".")
			if ok && !connless[name] {
				return info, fmt.Errorf("imports %s from %q beside %q: an http-wasm guest may use only %s of wcluster's functions (the connection is the host's)",
					imp, abi.HostModule, httpModule, "config_get, worker_id and kv_*")
			}
		}
		return info, checkHTTPExports(m)
	}
	if h, ok := exports[abi.ExportHandle]; ok {
		info.Kind = KindABI
		if info.ABIVersion == 0 {
			return info, fmt.Errorf("exports %s but no %s%d marker: export an empty function %s%d (the SDKs do)",
				abi.ExportHandle, abi.VersionExportPrefix, abi.Version, abi.VersionExportPrefix, abi.Version)
		}
		if info.ABIVersion != abi.Version {
			return info, fmt.Errorf("speaks wcluster ABI v%d, but this wcluster speaks v%d: rebuild it with the v%d SDK or run a wcluster that speaks v%d",
				info.ABIVersion, abi.Version, abi.Version, info.ABIVersion)
		}
		want := []api.ValueType{api.ValueTypeI32}
		if !sameTypes(h.ParamTypes(), want) || !sameTypes(h.ResultTypes(), want) {
			return info, fmt.Errorf("exports %s with signature %s, want (i32) -> i32",
				abi.ExportHandle, signature(h.ParamTypes(), h.ResultTypes()))
		}
		if _, ok := m.ExportedMemories()[abi.ExportMemory]; !ok {
			return info, fmt.Errorf("exports no %q: the host passes buffers through it", abi.ExportMemory)
		}
		if _, ok := exports[abi.ExportStart]; ok {
			info.Warnings = append(info.Warnings, fmt.Sprintf("exports %s beside %s: it was built as a command, so its main never runs (the host calls %s, not %s); "+
				"build it as a reactor (Go: -buildmode=c-shared; C: -mexec-model=reactor; Rust: crate-type cdylib)", abi.ExportStart, abi.ExportHandle, abi.ExportInitialize, abi.ExportStart))
		}
		return info, nil
	}
	if _, ok := exports[abi.ExportStart]; ok {
		info.Kind = KindCommand
		if info.ABIVersion != 0 && info.ABIVersion != abi.Version {
			return info, fmt.Errorf("speaks wcluster ABI v%d, but this wcluster speaks v%d", info.ABIVersion, abi.Version)
		}
		return info, nil
	}
	return info, errors.New("exports neither wcluster_handle nor _start: build it with a wcluster SDK (a reactor) or as a WASI command " +
		"(Zig: -rdynamic, or the build's rdynamic = true, so that the SDK's exports are kept)")
}

// importsFrom reports whether imports ("module.name") has one from mod.
func importsFrom(imports []string, mod string) bool {
	for _, imp := range imports {
		if strings.HasPrefix(imp, mod+".") {
			return true
		}
	}
	return false
}

func sameTypes(a, b []api.ValueType) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func signature(params, results []api.ValueType) string {
	name := func(ts []api.ValueType) string {
		s := make([]string, len(ts))
		for i, t := range ts {
			s[i] = api.ValueTypeName(t)
		}
		return "(" + strings.Join(s, ", ") + ")"
	}
	return name(params) + " -> " + name(results)
}

// compile compiles a module, instrumented for a time limit when limited.
// Its data segments come back as a memory image where they can (see
// memImage): the module compiled must then be instantiated only in a
// memory holding the image.
func compile(ctx context.Context, rt wazero.Runtime, wasm []byte, limited bool) (wazero.CompiledModule, *instrument.Image, error) {
	if len(wasm) < 4 || string(wasm[:4]) != "\x00asm" {
		return nil, nil, errors.New("not a WebAssembly module (no \\0asm magic): pass a .wasm file")
	}
	code := wasm
	if limited {
		var ierr error
		if code, ierr = instrument.Module(wasm); ierr != nil {
			// wazero's own error is the clearer one for a broken module.
			if _, err := rt.CompileModule(ctx, wasm); err != nil {
				return nil, nil, fmt.Errorf("invalid WebAssembly module: %w", err)
			}
			return nil, nil, fmt.Errorf("cannot add time-limit checks to this module (%v): serve it with --timeout 0", ierr)
		}
	}
	// The data as one image to map, or at least fewer, larger segments: a
	// module instantiates faster (a command, once per connection).
	code, img := instrument.SplitData(code)
	if img == nil {
		code = instrument.CoalesceData(code)
	}
	cm, err := rt.CompileModule(ctx, code)
	if err != nil {
		if strings.Contains(err.Error(), " over limit of ") {
			// wazero checks the memory's declared size against the limit.
			return nil, nil, fmt.Errorf("its memory does not fit the memory limit (%w): raise the limit (--memory-limit, or memory_limit in a config) or build the module with less memory", err)
		}
		return nil, nil, fmt.Errorf("invalid WebAssembly module: %w", err)
	}
	return cm, img, nil
}

// newRuntime makes the runtime a Handler runs in. wazero's own termination
// checks stay off: a time limit is kept by instrument's cheaper ones.
func newRuntime(ctx context.Context, o *Options) (wazero.Runtime, error) {
	cfg := wazero.NewRuntimeConfigCompiler()
	if pages := memoryPages(o.MemoryLimit); pages > 0 {
		cfg = cfg.WithMemoryLimitPages(pages)
	}
	if o.CacheDir != "" {
		// The instrumented module is other bytes, so it has its own key.
		cache, err := wazero.NewCompilationCacheWithDir(o.CacheDir)
		if err != nil {
			return nil, fmt.Errorf("compilation cache %s: %w", o.CacheDir, err)
		}
		cfg = cfg.WithCompilationCache(cache)
	}
	return wazero.NewRuntimeWithConfig(ctx, cfg), nil
}
