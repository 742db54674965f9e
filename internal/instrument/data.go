package instrument

import (
	"cmp"
	"slices"
)

// maxDataGap is the widest run of zeros CoalesceData writes to join two
// data segments: copying it costs less than one more segment does at
// instantiation (wazero evaluates each segment's offset and copies it on
// its own, some 100 ns a segment).
const maxDataGap = 1024

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
	if len(wasm) < 8 || string(wasm[:4]) != "\x00asm" {
		return wasm
	}
	type span struct{ whole, start, end int } // a section: its id byte, its contents
	var data span
	r := &reader{b: wasm, off: 8}
	for r.off < len(wasm) {
		whole := r.off
		id := r.byte()
		size := int(r.u32())
		if r.err != nil || r.off+size > len(wasm) {
			return wasm
		}
		s := span{whole, r.off, r.off + size}
		switch id {
		case secImport:
			var imp imports
			if err := imp.read(&reader{b: wasm[:s.end], off: s.start}); err != nil || imp.memories > 0 {
				return wasm
			}
		case secDataCount:
			return wasm
		case secData:
			data = s
		}
		r.off = s.end
	}
	if data.end == 0 {
		return wasm
	}
	type segment struct {
		off   uint32
		bytes []byte
	}
	dr := &reader{b: wasm[:data.end], off: data.start}
	n := dr.u32()
	segs := make([]segment, 0, n)
	for ; n > 0 && dr.err == nil; n-- {
		switch flag := dr.u32(); flag {
		case 0:
		case 2:
			if dr.u32() != 0 {
				return wasm
			}
		default: // passive
			return wasm
		}
		if dr.byte() != opI32Const {
			return wasm
		}
		off := uint32(dr.sleb32())
		if dr.byte() != opEnd {
			return wasm
		}
		size := int(dr.u32())
		start := dr.off
		dr.skip(size)
		if dr.err != nil {
			return wasm
		}
		segs = append(segs, segment{off, wasm[start:dr.off]})
	}
	if dr.err != nil || dr.off != data.end {
		return wasm
	}
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
	// The data section is the last non-custom one: what follows it (custom
	// sections) is kept as is.
	out := make([]byte, 0, len(wasm)-(data.end-data.start)+len(body)+8)
	out = append(out, wasm[:data.whole]...)
	out = appendSection(out, secData, body)
	return append(out, wasm[data.end:]...)
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
