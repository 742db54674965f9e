package instrument

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"

	"github.com/wcluster/wcluster/guests/embedded"
)

// TestInstrumentGuests instruments every guest built from guests/ (and the
// embedded default): each still compiles, exports what it did, and gains
// the stop flag as a mutable i32 global.
func TestInstrumentGuests(t *testing.T) {
	t.Parallel()
	mods := map[string][]byte{"embedded": embedded.Hello}
	if dir := os.Getenv("WCLUSTER_GUESTS"); dir != "" {
		paths, _ := filepath.Glob(filepath.Join(dir, "*.wasm"))
		for _, p := range paths {
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			mods[filepath.Base(p)] = b
		}
	}
	ctx := context.Background()
	// The interpreter validates a module as fully as the compiler, at a
	// fraction of the cost (the end-to-end tests compile them for real).
	rt := wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfigInterpreter())
	defer rt.Close(ctx)
	for name, wasm := range mods {
		out, err := Module(wasm)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		orig, err := rt.CompileModule(ctx, wasm)
		if err != nil {
			t.Fatalf("%s: original: %v", name, err)
		}
		cm, err := rt.CompileModule(ctx, out)
		if err != nil {
			t.Fatalf("%s: instrumented: %v", name, err)
		}
		if a, b := len(orig.ExportedFunctions()), len(cm.ExportedFunctions()); a != b {
			t.Errorf("%s: %d exported functions, %d after", name, a, b)
		}
		if _, err := Module(out); err == nil || !strings.Contains(err.Error(), StopExport) {
			t.Errorf("%s: instrumenting twice: %v, want the reserved name refused", name, err)
		}
	}
}

// A module built by hand: "spin" loops forever; "rec" recurses into two
// calls of itself per level, without a loop (2^n calls); "add" returns
// a+b; "recloop" is rec in the shape Go's compiler gives every function,
// its body inside a loop that comes first.
func handModule() []byte {
	sec := func(id byte, parts ...[]byte) []byte { return appendSection(nil, id, parts...) }
	m := []byte("\x00asm\x01\x00\x00\x00")
	m = append(m, sec(1, []byte{3,
		0x60, 0x00, 0x00,
		0x60, 0x01, 0x7f, 0x00,
		0x60, 0x02, 0x7f, 0x7f, 0x01, 0x7f})...)
	m = append(m, sec(3, []byte{4, 0, 1, 2, 1})...)
	exp := appendU32(nil, 4)
	for i, n := range []string{"spin", "rec", "add", "recloop"} {
		exp = append(appendName(exp, n), 0x00, byte(i))
	}
	m = append(m, sec(7, exp)...)
	spin := []byte{0x00, 0x03, 0x40, 0x0c, 0x00, 0x0b, 0x0b}
	rec := []byte{0x00, 0x20, 0x00, 0x04, 0x40,
		0x20, 0x00, 0x41, 0x01, 0x6b, 0x10, 0x01,
		0x20, 0x00, 0x41, 0x01, 0x6b, 0x10, 0x01,
		0x0b, 0x0b}
	add := []byte{0x00, 0x20, 0x00, 0x20, 0x01, 0x6a, 0x0b}
	recloop := []byte{0x00, 0x02, 0x40, 0x03, 0x40, 0x20, 0x00, 0x04, 0x40,
		0x20, 0x00, 0x41, 0x01, 0x6b, 0x10, 0x03,
		0x20, 0x00, 0x41, 0x01, 0x6b, 0x10, 0x03,
		0x0b, 0x0b, 0x0b, 0x0b}
	code := appendU32(nil, 4)
	for _, b := range [][]byte{spin, rec, add, recloop} {
		code = append(appendU32(code, uint32(len(b))), b...)
	}
	m = append(m, sec(10, code)...)
	// A DWARF section, which instrument drops.
	m = append(m, sec(0, appendName(nil, ".debug_info"), []byte{1, 2, 3})...)
	return m
}

// TestInstrumentStops runs guests that never finish, one in a loop, one in
// a recursion without loops, and stops each with the flag.
func TestInstrumentStops(t *testing.T) {
	t.Parallel()
	out, err := Module(handModule())
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), ".debug_info") {
		t.Error("the DWARF section was kept")
	}
	ctx := context.Background()
	rt := wazero.NewRuntime(ctx)
	defer rt.Close(ctx)
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, rt); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		fn   string
		args []uint64
	}{{"spin", nil}, {"rec", []uint64{64}}, {"recloop", []uint64{64}}} {
		mod, err := rt.InstantiateWithConfig(ctx, out, wazero.NewModuleConfig().WithName(""))
		if err != nil {
			t.Fatal(err)
		}
		if r, err := mod.ExportedFunction("add").Call(ctx, 2, 3); err != nil || r[0] != 5 {
			t.Fatalf("add(2, 3) = %v, %v", r, err)
		}
		flag, ok := mod.ExportedGlobal(StopExport).(api.MutableGlobal)
		if !ok {
			t.Fatal("no mutable stop flag exported")
		}
		done := make(chan error, 1)
		go func() {
			_, err := mod.ExportedFunction(tc.fn).Call(ctx, tc.args...)
			done <- err
		}()
		select {
		case err := <-done:
			t.Fatalf("%s returned before it was stopped: %v", tc.fn, err)
		case <-time.After(50 * time.Millisecond):
		}
		// The guest leaves compiled code now and then, so the collector
		// can stop the world while it spins (else this hangs, until go
		// test's own timeout kills the binary).
		runtime.GC()
		flag.Set(1)
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), "unreachable") {
				t.Errorf("%s stopped with %v, want an unreachable trap", tc.fn, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s still runs 10s after the flag was set", tc.fn)
		}
		mod.Close(ctx)
	}
}

// TestEntryChecks: a function is checked on entry only when it calls
// another and no loop's check runs first.
func TestEntryChecks(t *testing.T) {
	for _, tc := range []struct {
		name string
		body []byte // with no locals
		want bool
	}{
		{"leaf", []byte{0x00, 0x20, 0x00, 0x20, 0x01, 0x6a, 0x0b}, false},
		{"leaf with a loop", []byte{0x00, 0x41, 0x01, 0x03, 0x40, 0x0c, 0x00, 0x0b, 0x0b}, false},
		{"calls", []byte{0x00, 0x10, 0x00, 0x0b}, true},
		{"calls indirectly", []byte{0x00, 0x41, 0x00, 0x11, 0x00, 0x00, 0x0b}, true},
		{"tail call", []byte{0x00, 0x12, 0x00, 0x0b}, true},
		{"a loop first", []byte{0x00, 0x23, 0x00, 0x21, 0x00, 0x02, 0x40, 0x03, 0x40, 0x10, 0x00, 0x0b, 0x0b, 0x0b}, false},
		{"a call before the loop", []byte{0x00, 0x10, 0x00, 0x03, 0x40, 0x10, 0x00, 0x0b, 0x0b}, true},
		{"a branch before the loop", []byte{0x00, 0x02, 0x40, 0x41, 0x00, 0x0d, 0x00, 0x03, 0x40, 0x10, 0x00, 0x0b, 0x0b, 0x0b}, true},
		{"an if before the loop", []byte{0x00, 0x41, 0x00, 0x04, 0x40, 0x0b, 0x03, 0x40, 0x10, 0x00, 0x0b, 0x0b}, true},
	} {
		got, err := needsEntryCheck(tc.body, 1)
		if err != nil || got != tc.want {
			t.Errorf("%s: %v, %v; want %v", tc.name, got, err, tc.want)
		}
	}
}

// TestInstrumentRefuses: what instrument cannot rewrite is an error, never
// a module without the checks.
func TestInstrumentRefuses(t *testing.T) {
	t.Parallel()
	good := handModule()
	for name, b := range map[string][]byte{
		"short":     good[:6],
		"version 2": append([]byte("\x00asm\x02\x00\x00\x00"), good[8:]...),
		"truncated": good[:len(good)-20],
		"bad opcode": slices.Concat([]byte("\x00asm\x01\x00\x00\x00"), appendSection(nil, 1, []byte{1, 0x60, 0, 0}),
			appendSection(nil, 3, []byte{1, 0}), appendSection(nil, 10, []byte{1, 3, 0x00, 0xff, 0x0b})),
		"empty types": []byte("\x00asm\x01\x00\x00\x00\x01\x05\x01"),
	} {
		if _, err := Module(b); err == nil {
			t.Errorf("%s: instrumented without an error", name)
		}
	}
	if _, err := Module(nil); err == nil {
		t.Error("nil: instrumented without an error")
	}
}
