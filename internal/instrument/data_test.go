package instrument

import (
	"bytes"
	"context"
	"testing"

	"github.com/tetratelabs/wazero"
)

// dataModule is a module with one memory of a page (imported when
// imported), exported as "mem", and the given data segments (raw, each
// after its count).
func dataModule(imported bool, segs ...[]byte) []byte {
	m := []byte("\x00asm\x01\x00\x00\x00")
	if imported {
		imp := appendU32(nil, 1)
		imp = appendName(imp, "env")
		imp = appendName(imp, "mem")
		imp = append(imp, 0x02, 0x00, 0x01) // memory, min 1
		m = appendSection(m, secImport, imp)
	} else {
		m = appendSection(m, secMemory, []byte{0x01, 0x00, 0x01})
	}
	exp := appendU32(nil, 1)
	exp = appendName(exp, "mem")
	exp = append(exp, 0x02, 0x00)
	m = appendSection(m, secExport, exp)
	body := appendU32(nil, uint32(len(segs)))
	for _, s := range segs {
		body = append(body, s...)
	}
	return appendSection(m, secData, body)
}

// active is an active segment of memory 0 at off.
func active(off int32, data string) []byte {
	b := appendSLEB([]byte{0x00, opI32Const}, int64(off))
	b = append(b, opEnd)
	return append(appendU32(b, uint32(len(data))), data...)
}

func passive(data string) []byte {
	return append(appendU32([]byte{0x01}, uint32(len(data))), data...)
}

// memoryOf instantiates wasm and returns its memory's page.
func memoryOf(t *testing.T, wasm []byte) []byte {
	t.Helper()
	ctx := context.Background()
	rt := wazero.NewRuntime(ctx)
	defer rt.Close(ctx)
	mod, err := rt.Instantiate(ctx, wasm)
	if err != nil {
		t.Fatal(err)
	}
	b, ok := mod.ExportedMemory("mem").Read(0, 65536)
	if !ok {
		t.Fatal("no memory")
	}
	return bytes.Clone(b)
}

func segmentCount(t *testing.T, wasm []byte) uint32 {
	t.Helper()
	r := &reader{b: wasm, off: 8}
	for r.off < len(wasm) {
		id := r.byte()
		size := int(r.u32())
		if id == secData {
			return (&reader{b: wasm, off: r.off}).u32()
		}
		r.off += size
	}
	return 0
}

// TestCoalesceData: segments out of order, with small and large gaps and a
// negative-looking offset, are joined where close, and the memory
// instantiated is byte for byte the original's.
func TestCoalesceData(t *testing.T) {
	in := dataModule(false,
		active(5000, "far"),
		active(10, "hello"),
		active(20, "world"),   // a 5-byte gap
		active(15, "_"),       // fills part of it, out of order
		active(3000, "later"), // a gap past maxDataGap
		active(60000, "end"),
	)
	out := CoalesceData(in)
	if got := segmentCount(t, out); got != 4 {
		t.Fatalf("%d segments after, want 4 (10–25, 3000, 5000, 60000)", got)
	}
	if !bytes.Equal(memoryOf(t, in), memoryOf(t, out)) {
		t.Fatal("the memory differs once the segments are joined")
	}
}

// TestCoalesceDataLeavesAlone: what cannot be joined safely is returned
// unchanged.
func TestCoalesceDataLeavesAlone(t *testing.T) {
	for name, wasm := range map[string][]byte{
		"overlapping": dataModule(false, active(10, "hello"), active(12, "XY")),
		"passive":     dataModule(false, active(10, "a"), active(12, "b"), passive("p")),
		"imported":    dataModule(true, active(10, "a"), active(12, "b")),
		"apart":       dataModule(false, active(10, "a"), active(5000, "b")),
	} {
		if out := CoalesceData(wasm); !bytes.Equal(out, wasm) {
			t.Errorf("%s: changed", name)
		}
	}
}

// TestSplitData: the module without its segments, instantiated in a memory
// holding the image, is byte for byte the original's memory — overlapping
// segments included (the later one wins).
func TestSplitData(t *testing.T) {
	in := dataModule(false,
		active(5000, "far"),
		active(10, "hello"),
		active(12, "XY"), // overlaps hello: wins
		active(20, "world"),
		active(3000, "later"),
		active(65533, "end"),
	)
	out, img := SplitData(in)
	if img == nil {
		t.Fatal("no image")
	}
	if got := segmentCount(t, out); got != 0 {
		t.Fatalf("%d segments left, want 0", got)
	}
	if img.Size != 65536 {
		t.Errorf("image size %d, want 65536", img.Size)
	}
	mem := make([]byte, 65536)
	for i, c := range img.Chunks {
		if i > 0 && c.Off <= img.Chunks[i-1].Off+uint64(len(img.Chunks[i-1].Bytes)) {
			t.Fatalf("chunk %d at %d overlaps the one before", i, c.Off)
		}
		copy(mem[c.Off:], c.Bytes)
	}
	if want := memoryOf(t, in); !bytes.Equal(mem, want) {
		t.Fatal("the image differs from the memory the segments write")
	}
	if blank := memoryOf(t, out); !bytes.Equal(blank, make([]byte, 65536)) {
		t.Fatal("the module split still writes its memory")
	}
}

// TestSplitDataLeavesAlone: what cannot be told for sure is returned
// unchanged, without an image.
func TestSplitDataLeavesAlone(t *testing.T) {
	for name, wasm := range map[string][]byte{
		"passive":      dataModule(false, active(10, "a"), passive("p")),
		"imported":     dataModule(true, active(10, "a")),
		"past the end": dataModule(false, active(65535, "ab")),
		"none":         dataModule(false),
		"not a module": []byte("\x00asn\x01\x00\x00\x00"),
		"truncated":    dataModule(false, active(10, "hello"))[:40],
	} {
		if out, img := SplitData(wasm); !bytes.Equal(out, wasm) || img != nil {
			t.Errorf("%s: changed", name)
		}
	}
}
