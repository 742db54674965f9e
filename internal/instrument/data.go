package instrument

import (
	"cmp"
	"slices"
	"sort"
)

// maxDataGap is the widest run of zeros CoalesceData writes to join two
// data segments: copying it costs less than one more segment does at
// instantiation (wazero evaluates each segment's offset and copies it on
// its own, some 100 ns a segment).
const maxDataGap = 1024

// pageSize is a WebAssembly page.
const pageSize = 65536

// segment is an active data segment of memory 0 at a constant offset.
type segment struct {
	off   uint32
	bytes []byte
}

// dataLayout is what CoalesceData and SplitData read of a module: where its
// data section is, its active segments in the order instantiation applies
// them, and the initial size of the memory it defines.
type dataLayout struct {
	whole, start, end int // the data section: its id byte, its contents
	segs              []segment
	minPages          uint64
}

// readData reads a module's data segments, or reports false when the module
// has none, imports its memory (then the bytes outside the segments are not
// known to be zeros), has passive segments or a data count section (bulk
// memory instructions name segments by index), or a segment whose offset is
// not a constant.
func readData(wasm []byte) (dataLayout, bool) {
	var d dataLayout
	if len(wasm) < 8 || string(wasm[:4]) != "\x00asm" {
		return d, false
	}
	r := &reader{b: wasm, off: 8}
	for r.off < len(wasm) {
		whole := r.off
		id := r.byte()
		size := int(r.u32())
		if r.err != nil || r.off+size > len(wasm) {
			return d, false
		}
		start, end := r.off, r.off+size
		sr := &reader{b: wasm[:end], off: start}
		switch id {
		case secImport:
			var imp imports
			if err := imp.read(sr); err != nil || imp.memories > 0 {
				return d, false
			}
		case secMemory:
			if sr.u32() != 1 {
				return d, false
			}
			if flags := sr.byte(); flags&^1 != 0 {
				return d, false // shared or 64-bit: left alone
			}
			d.minPages = sr.uleb(10)
			if sr.err != nil {
				return d, false
			}
		case secDataCount:
			return d, false
		case secData:
			d.whole, d.start, d.end = whole, start, end
		}
		r.off = end
	}
	if d.end == 0 {
		return d, false
	}
	dr := &reader{b: wasm[:d.end], off: d.start}
	n := dr.u32()
	d.segs = make([]segment, 0, min(n, 1<<16))
	for ; n > 0 && dr.err == nil; n-- {
		switch flag := dr.u32(); flag {
		case 0:
		case 2:
			if dr.u32() != 0 {
				return d, false
			}
		default: // passive
			return d, false
		}
		if dr.byte() != opI32Const {
			return d, false
		}
		off := uint32(dr.sleb32())
		if dr.byte() != opEnd {
			return d, false
		}
		size := int(dr.u32())
		start := dr.off
		dr.skip(size)
		if dr.err != nil {
			return d, false
		}
		d.segs = append(d.segs, segment{off, wasm[start:dr.off]})
	}
	if dr.err != nil || dr.off != d.end {
		return d, false
	}
	return d, true
}

// replaceData returns wasm with the contents of its data section replaced
// by body. The data section is the last non-custom one: what follows it
// (custom sections) is kept as is.
func replaceData(wasm []byte, d dataLayout, body []byte) []byte {
	out := make([]byte, 0, len(wasm)-(d.end-d.start)+len(body)+8)
	out = append(out, wasm[:d.whole]...)
	out = appendSection(out, secData, body)
	return append(out, wasm[d.end:]...)
}

// CoalesceData returns the module with its active data segments joined
// where they lie close together, the gaps written as zeros, or the module
// itself when that cannot be done safely or gains nothing. Go's linker
// writes tens of thousands of small segments (27,929 for a small HTTP
// command), which made applying them most of the cost of instantiating:
// for a WASI command, paid on every connection.
//
// Zeros are what a gap already holds only in a memory the module defines
// (fresh at instantiation), so a module that imports its memory is left
// alone; so is one with passive segments or a data count section (bulk
// memory instructions name segments by index), a segment whose offset is
// not a constant, and segments that overlap (the later one wins there).
func CoalesceData(wasm []byte) []byte {
	d, ok := readData(wasm)
	if !ok {
		return wasm
	}
	segs := d.segs
	// Their order matters only where they overlap, and none do.
	slices.SortStableFunc(segs, func(a, b segment) int { return cmp.Compare(a.off, b.off) })
	var joined []segment
	for _, s := range segs {
		if len(joined) > 0 {
			last := &joined[len(joined)-1]
			end := uint64(last.off) + uint64(len(last.bytes))
			if uint64(s.off) < end {
				return wasm // overlapping: the later one wins, so keep them as they are
			}
			if gap := uint64(s.off) - end; gap <= maxDataGap {
				last.bytes = append(slices.Grow(last.bytes, int(gap)+len(s.bytes)), make([]byte, gap)...)
				last.bytes = append(last.bytes, s.bytes...)
				continue
			}
		}
		joined = append(joined, segment{s.off, slices.Clip(s.bytes)})
	}
	if len(joined) == len(segs) {
		return wasm
	}
	var body []byte
	body = appendU32(body, uint32(len(joined)))
	for _, s := range joined {
		body = append(body, 0x00, opI32Const)
		body = appendSLEB(body, int64(int32(s.off)))
		body = append(body, opEnd)
		body = appendU32(body, uint32(len(s.bytes)))
		body = append(body, s.bytes...)
	}
	return replaceData(wasm, d, body)
}

// Image is the initial contents of a module's memory that its data
// segments write: chunks at ascending, disjoint offsets, zeros elsewhere.
type Image struct {
	Chunks []Chunk
	// Size is where the last chunk ends.
	Size uint64
}

// Chunk is a run of an Image's bytes at Off.
type Chunk struct {
	Off   uint64
	Bytes []byte
}

// SplitData returns the module without its data segments and the image
// they would write into its memory at instantiation, for a host that
// creates the memory with those contents itself (a copy-on-write mapping
// of one read-only copy, say, instead of a copy per instance). It returns
// the module itself and nil when it cannot tell that image for sure:
// under CoalesceData's conditions (a memory the module defines, active
// segments at constant offsets, no bulk memory), and when a segment lies
// past the memory's initial size, since instantiation must then fail as it
// would have. Overlapping segments are applied in order, the later one
// winning, as instantiation applies them.
//
// The module returned must only be instantiated in a memory that already
// holds the image: its code still expects the data there.
func SplitData(wasm []byte) ([]byte, *Image) {
	d, ok := readData(wasm)
	if !ok || len(d.segs) == 0 {
		return wasm, nil
	}
	limit := d.minPages * pageSize
	order := make([]int, len(d.segs))
	for i, s := range d.segs {
		if uint64(s.off)+uint64(len(s.bytes)) > limit {
			return wasm, nil
		}
		order[i] = i
	}
	// Chunks: the segments by offset, joined where they overlap or lie
	// within maxDataGap of each other.
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(d.segs[a].off, d.segs[b].off) })
	type extent struct{ off, end uint64 }
	var ext []extent
	for _, i := range order {
		s := d.segs[i]
		off, end := uint64(s.off), uint64(s.off)+uint64(len(s.bytes))
		if n := len(ext); n > 0 && off <= ext[n-1].end+maxDataGap {
			ext[n-1].end = max(ext[n-1].end, end)
			continue
		}
		ext = append(ext, extent{off, end})
	}
	img := &Image{Chunks: make([]Chunk, len(ext))}
	for i, e := range ext {
		img.Chunks[i] = Chunk{Off: e.off, Bytes: make([]byte, e.end-e.off)}
		img.Size = e.end
	}
	// Written in the module's order, so that the later of two overlapping
	// segments wins.
	for _, s := range d.segs {
		off := uint64(s.off)
		c := &img.Chunks[sort.Search(len(img.Chunks), func(i int) bool { return img.Chunks[i].Off > off })-1]
		copy(c.Bytes[off-c.Off:], s.bytes)
	}
	return replaceData(wasm, d, appendU32(nil, 0)), img
}

// sleb32 reads a signed LEB128 of at most 5 bytes as an int32.
func (r *reader) sleb32() int32 {
	var v int64
	var shift uint
	for i := 0; i < 5; i++ {
		c := r.byte()
		v |= int64(c&0x7f) << shift
		shift += 7
		if c&0x80 == 0 {
			if shift < 64 && c&0x40 != 0 {
				v |= -1 << shift
			}
			return int32(v)
		}
	}
	r.fail(errTruncated)
	return 0
}
