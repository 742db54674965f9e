// Package instrument rewrites a WebAssembly module so that a host can stop
// it at a time limit: checks on every function entry and loop iteration,
// a stop flag exported as StopExport, and its start function exported as
// StartExport for the host to run as a call under the limit.
package instrument

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// StopExport names the global through which the host stops a guest that
// overruns its time limit. Module adds it to the module; no code of
// the guest's own can name it.
const StopExport = "wcluster.stop"

// StartExport names the module's start function (its start section), which
// Module exports instead, so that the host runs it as a call under the
// time limit rather than inside instantiation, where nothing can stop it.
const StartExport = "wcluster.start"

// yieldEvery is how many checks pass between two exits to Go.
const yieldEvery = 10000

// Module returns a copy of a module in which every function that calls
// another, on entry (unless a loop's check comes first: needsEntryCheck),
// and every loop, at each iteration, counts down an added global; every
// yieldEvery counts an added function exits to Go and back (memory.grow 0,
// which wazero runs in Go), then traps with unreachable if the added stop
// flag (exported as StopExport) is non-zero.
//
// Why not wazero's own WithCloseOnContextDone: it leaves the compiled code
// for Go at every loop iteration, and starts a goroutine per call, which
// made a Go-built guest's call 5× as slow. Why exit to Go at all: Go cannot
// preempt a goroutine inside compiled wasm, so a guest that never left it
// would hold up every stop-the-world of the garbage collector, and with it
// the whole worker, the time-limit watchdog included. A loop or a
// recursion, so every guest that does not finish, passes the checks; a
// guest blocked in a host function is bounded by that function (conn_read,
// conn_write and sleep end at the call's deadline).
//
// All that is added is appended (a type, a function, globals, exports), so
// no index of the module's own changes. A start section becomes an export
// (StartExport), for the host to run under the limit. The DWARF sections, whose code
// offsets the checks shift, are dropped: a trap's trace then names
// functions without source lines.
func Module(wasm []byte) ([]byte, error) {
	if len(wasm) < 8 || string(wasm[:4]) != "\x00asm" {
		return nil, errors.New("not a WebAssembly module")
	}
	if string(wasm[4:8]) != "\x01\x00\x00\x00" {
		return nil, fmt.Errorf("binary format version %x: only version 1 is supported", wasm[4:8])
	}
	type section struct {
		id         byte
		start, end int // the contents, without id and size
		whole      int // where the section's id byte is
	}
	var secs []section
	r := &reader{b: wasm, off: 8}
	for r.off < len(wasm) {
		whole := r.off
		id := r.byte()
		size := r.u32()
		if r.err != nil || r.off+int(size) > len(wasm) {
			return nil, fmt.Errorf("section at offset %d: truncated", whole)
		}
		secs = append(secs, section{id: id, start: r.off, end: r.off + int(size), whole: whole})
		r.off += int(size)
	}

	var imp imports
	count := map[byte]uint32{} // entries in each vector section
	var start uint32
	var hasStart bool
	for _, s := range secs {
		sr := &reader{b: wasm[:s.end], off: s.start}
		switch s.id {
		case secImport:
			if err := imp.read(sr); err != nil {
				return nil, fmt.Errorf("import section: %w", err)
			}
		case secType, secFunction, secMemory, secGlobal:
			count[s.id] = sr.u32()
		case secExport:
			if err := checkExportFree(sr, StopExport, StartExport); err != nil {
				return nil, err
			}
		case secStart:
			start, hasStart = sr.u32(), true
		}
		if sr.err != nil {
			return nil, fmt.Errorf("section %d: %w", s.id, sr.err)
		}
	}
	stop := imp.globals + count[secGlobal]
	countdown := stop + 1
	yield := imp.funcs + count[secFunction]
	yieldType := count[secType]

	// The check at each site: if --countdown <= 0 { yield() }.
	check := appendU32([]byte{opGlobalGet}, countdown)
	check = append(check, opI32Const, 1, opI32Sub, opGlobalSet)
	check = appendU32(check, countdown)
	check = appendU32(append(check, opGlobalGet), countdown)
	check = append(check, opI32Const, 0, opI32LeS, opIf, blockEmpty, opCall)
	check = appendU32(check, yield)
	check = append(check, opEnd)

	// yield: memory.grow 0 (an exit to Go); trap if stopped; refill.
	body := []byte{0x00, opI32Const, 0x00, opMemoryGrow, 0x00, opDrop, opGlobalGet}
	body = appendU32(body, stop)
	body = append(body, opIf, blockEmpty, opUnreachable, opEnd, opI32Const)
	body = appendSLEB(body, yieldEvery)
	body = appendU32(append(body, opGlobalSet), countdown)
	body = append(body, opEnd)

	add := map[byte][][]byte{
		secType:     {{0x60, 0x00, 0x00}},
		secFunction: {appendU32(nil, yieldType)},
		secGlobal: {
			{valI32, 0x01, opI32Const, 0x00, opEnd},
			append(appendSLEB([]byte{valI32, 0x01, opI32Const}, yieldEvery), opEnd),
		},
		secExport: {appendU32(append(appendName(nil, StopExport), exportGlobal), stop)},
		secCode:   {append(appendU32(nil, uint32(len(body))), body...)},
	}
	if hasStart {
		add[secExport] = append(add[secExport], appendU32(append(appendName(nil, StartExport), exportFunc), start))
	}
	if imp.memories == 0 && count[secMemory] == 0 {
		add[secMemory] = [][]byte{{0x00, 0x00}} // one memory of 0 pages, for memory.grow
	}

	out := make([]byte, 0, len(wasm)+len(wasm)/8+256)
	out = append(out, wasm[:8]...)
	// flush writes the added sections the module lacks that must come
	// before a section of order before.
	flush := func(before int) {
		for _, id := range []byte{secType, secFunction, secMemory, secGlobal, secExport, secCode} {
			if entries, ok := add[id]; ok && sectionOrder(id) < before {
				out = appendVecSection(out, id, nil, 0, entries)
				delete(add, id)
			}
		}
	}
	for _, s := range secs {
		contents := wasm[s.start:s.end]
		if s.id == secStart {
			continue // exported as StartExport instead
		}
		if s.id == secCustom {
			if name := (&reader{b: contents}).name(); !strings.HasPrefix(name, ".debug_") {
				out = append(out, wasm[s.whole:s.end]...)
			}
			continue
		}
		flush(sectionOrder(s.id))
		entries, ok := add[s.id]
		if !ok {
			out = append(out, wasm[s.whole:s.end]...)
			continue
		}
		delete(add, s.id)
		if s.id == secCode {
			var err error
			if contents, err = instrumentCode(contents, check); err != nil {
				return nil, fmt.Errorf("code section: %w", err)
			}
		}
		sr := &reader{b: contents}
		n := sr.u32()
		out = appendVecSection(out, s.id, contents[sr.off:], n, entries)
	}
	flush(1 << 30)
	return out, nil
}

// appendVecSection appends a section whose contents are a vector: n
// entries, encoded in have, then the entries of more.
func appendVecSection(out []byte, id byte, have []byte, n uint32, more [][]byte) []byte {
	parts := [][]byte{appendU32(nil, n+uint32(len(more))), have}
	return appendSection(out, id, append(parts, more...)...)
}

// Section ids (those instrument looks at or orders by).
const (
	secCustom    = 0
	secType      = 1
	secImport    = 2
	secFunction  = 3
	secMemory    = 5
	secGlobal    = 6
	secExport    = 7
	secStart     = 8
	secCode      = 10
	secData      = 11
	secDataCount = 12
	secTag       = 13
)

// sectionOrder is where a section id must come among the others.
func sectionOrder(id byte) int {
	switch id {
	case secTag:
		return 55 // between memory and global
	case secDataCount:
		return 95 // between element and code
	}
	return int(id) * 10
}

const (
	opUnreachable = 0x00
	opIf          = 0x04
	opEnd         = 0x0b
	opCall        = 0x10
	opDrop        = 0x1a
	opGlobalGet   = 0x23
	opGlobalSet   = 0x24
	opMemoryGrow  = 0x40
	opI32Const    = 0x41
	opI32LeS      = 0x4c
	opI32Sub      = 0x6b
	blockEmpty    = 0x40
	valI32        = 0x7f
	exportFunc    = 0x00
	exportGlobal  = 0x03
)

// imports counts a module's imports by kind.
type imports struct{ funcs, memories, globals uint32 }

func (imp *imports) read(r *reader) error {
	for n := r.u32(); n > 0 && r.err == nil; n-- {
		r.name()
		r.name()
		switch kind := r.byte(); kind {
		case 0x00: // function: type index
			r.u32()
			imp.funcs++
		case 0x01: // table: reference type, limits
			r.valType()
			r.limits()
		case 0x02: // memory
			r.limits()
			imp.memories++
		case 0x03: // global: value type, mutability
			r.valType()
			r.byte()
			imp.globals++
		case 0x04: // tag: attribute, type index
			r.byte()
			r.u32()
		default:
			return fmt.Errorf("import kind %#x unknown", kind)
		}
	}
	return r.err
}

func checkExportFree(r *reader, names ...string) error {
	for n := r.u32(); n > 0 && r.err == nil; n-- {
		if name := r.name(); slices.Contains(names, name) {
			return fmt.Errorf("the module exports %q itself, a name wcluster reserves", name)
		}
		r.byte()
		r.u32()
	}
	return r.err
}

// instrumentCode rewrites the code section's function bodies, inserting
// check in each.
func instrumentCode(sec []byte, check []byte) ([]byte, error) {
	r := &reader{b: sec}
	n := r.u32()
	out := appendU32(make([]byte, 0, len(sec)+len(sec)/8), n)
	var body []byte
	for i := uint32(0); i < n; i++ {
		size := r.u32()
		if r.err != nil || r.off+int(size) > len(sec) {
			return nil, fmt.Errorf("function body %d: truncated", i)
		}
		var err error
		body, err = instrumentBody(body[:0], sec[r.off:r.off+int(size)], check)
		if err != nil {
			return nil, fmt.Errorf("function body %d: %w", i, err)
		}
		out = appendU32(out, uint32(len(body)))
		out = append(out, body...)
		r.off += int(size)
	}
	if r.err != nil {
		return nil, r.err
	}
	if r.off != len(sec) {
		return nil, fmt.Errorf("%d bytes after the last function body", len(sec)-r.off)
	}
	return out, nil
}

// instrumentBody appends to out the function body b with check inserted
// after its locals (where needsEntryCheck says) and after the block type
// of every loop.
func instrumentBody(out, b, check []byte) ([]byte, error) {
	r := &reader{b: b}
	for n := r.u32(); n > 0 && r.err == nil; n-- {
		r.u32()
		r.valType()
	}
	if r.err != nil {
		return nil, r.err
	}
	entry, err := needsEntryCheck(b, r.off)
	if err != nil {
		return nil, err
	}
	out = append(out, b[:r.off]...)
	if entry {
		out = append(out, check...)
	}
	last := r.off
	for r.off < len(b) && r.err == nil {
		at := r.off
		op := r.byte()
		if op == 0x03 { // loop
			r.blockType()
			out = append(out, b[last:r.off]...)
			out = append(out, check...)
			last = r.off
			continue
		}
		if err := r.skipImmediates(op); err != nil {
			return nil, fmt.Errorf("instruction %#x at offset %d: %w", op, at, err)
		}
	}
	if r.err != nil {
		return nil, r.err
	}
	return append(out, b[last:]...), nil
}

// needsEntryCheck reports whether the function body b, whose code starts
// at off, needs the check on entry. Not when it calls no function: it cannot
// recurse, so without its loops (each checked) it runs for at most its
// length. Nor when a loop comes first, reached on every entry through
// instructions that neither branch nor call: the loop's check then runs on
// entry anyway. Go's compiler starts every function so (a loop whose
// br_table resumes it where it left off), which halves the checks a Go
// guest passes.
func needsEntryCheck(b []byte, off int) (bool, error) {
	r := &reader{b: b, off: off}
	first := true // still in the straight-line code before a first loop
	for r.off < len(b) && r.err == nil {
		at := r.off
		op := r.byte()
		switch op {
		case opCall, 0x11, 0x12, 0x13, 0x14, 0x15: // call, call_indirect, return_call(_indirect), call_ref, return_call_ref
			return true, nil
		case 0x03: // loop
			if first {
				return false, nil
			}
			r.blockType()
			continue
		case 0x01, 0x02, 0x20, 0x21, 0x22, 0x23, 0x24, opI32Const, 0x42: // nop, block, local.*, global.get/set, i32/i64.const
		default:
			first = false
		}
		if err := r.skipImmediates(op); err != nil {
			return false, fmt.Errorf("instruction %#x at offset %d: %w", op, at, err)
		}
	}
	return false, r.err
}

// skipImmediates moves past the immediates of the instruction op.
func (r *reader) skipImmediates(op byte) error {
	switch {
	case op == 0x02, op == 0x04, op == 0x06: // block, if, try
		r.blockType()
	case op == 0x07, op == 0x08, op == 0x09, op == 0x0c, op == 0x0d, // catch, throw, rethrow, br, br_if
		op == 0x10, op == 0x12, // call, return_call
		op == 0x18,               // delegate
		op >= 0x20 && op <= 0x26, // local.*, global.*, table.get/set
		op == 0x3f, op == 0x40,   // memory.size/grow
		op == 0xd2: // ref.func
		r.u32()
	case op == 0x0e: // br_table
		for n := r.u32(); n > 0 && r.err == nil; n-- {
			r.u32()
		}
		r.u32()
	case op == 0x11, op == 0x13: // call_indirect, return_call_indirect
		r.u32()
		r.u32()
	case op == 0x1c: // select t*
		for n := r.u32(); n > 0 && r.err == nil; n-- {
			r.valType()
		}
	case op == 0x1f: // try_table
		r.blockType()
		for n := r.u32(); n > 0 && r.err == nil; n-- {
			switch kind := r.byte(); kind {
			case 0x00, 0x01: // catch, catch_ref: tag, label
				r.u32()
				r.u32()
			case 0x02, 0x03: // catch_all, catch_all_ref: label
				r.u32()
			default:
				return fmt.Errorf("catch kind %#x unknown", kind)
			}
		}
	case op >= 0x28 && op <= 0x3e: // loads and stores
		r.memArg()
	case op == 0x41: // i32.const
		r.sleb()
	case op == 0x42: // i64.const
		r.sleb()
	case op == 0x43:
		r.skip(4)
	case op == 0x44:
		r.skip(8)
	case op == 0xd0: // ref.null
		r.valType()
	case op == 0xfc:
		return r.skipFC(r.u32())
	case op == 0xfd:
		return r.skipSIMD(r.u32())
	case op == 0xfe:
		return r.skipAtomic(r.u32())
	case op <= 0x01, op == 0x05, op == 0x0a, op == 0x0b, op == 0x0f, op == 0x19,
		op == 0x1a, op == 0x1b, op >= 0x45 && op <= 0xc4, op == 0xd1:
		// no immediates
	default:
		return errors.New("opcode unknown")
	}
	return r.err
}

func (r *reader) skipFC(sub uint32) error {
	switch {
	case sub <= 7: // saturating truncations
	case sub == 8: // memory.init data memory
		r.u32()
		r.u32()
	case sub == 9, sub == 11, sub == 13, sub == 15, sub == 16, sub == 17:
		r.u32() // data.drop, memory.fill, elem.drop, table.grow/size/fill
	case sub == 10, sub == 12, sub == 14: // memory.copy, table.init, table.copy
		r.u32()
		r.u32()
	default:
		return fmt.Errorf("0xfc %d unknown", sub)
	}
	return r.err
}

func (r *reader) skipSIMD(sub uint32) error {
	switch {
	case sub <= 11, sub == 92, sub == 93: // loads, store, load_zero
		r.memArg()
	case sub == 12, sub == 13: // v128.const, i8x16.shuffle
		r.skip(16)
	case sub >= 21 && sub <= 34: // extract_lane, replace_lane
		r.skip(1)
	case sub >= 84 && sub <= 91: // load_lane, store_lane
		r.memArg()
		r.skip(1)
	case sub <= 0x113:
		// no immediates (relaxed SIMD included)
	default:
		return fmt.Errorf("0xfd %d unknown", sub)
	}
	return r.err
}

func (r *reader) skipAtomic(sub uint32) error {
	switch {
	case sub == 3: // atomic.fence
		r.skip(1)
	case sub <= 2, sub >= 0x10 && sub <= 0x4e:
		r.memArg()
	default:
		return fmt.Errorf("0xfe %d unknown", sub)
	}
	return r.err
}

// reader decodes the WebAssembly binary format; the first error sticks.
type reader struct {
	b   []byte
	off int
	err error
}

var errTruncated = errors.New("truncated")

func (r *reader) fail(err error) {
	if r.err == nil {
		r.err = err
	}
	r.off = len(r.b)
}

func (r *reader) byte() byte {
	if r.off >= len(r.b) {
		r.fail(errTruncated)
		return 0
	}
	c := r.b[r.off]
	r.off++
	return c
}

func (r *reader) skip(n int) {
	if r.off+n > len(r.b) {
		r.fail(errTruncated)
		return
	}
	r.off += n
}

// uleb reads an unsigned LEB128 of at most maxBytes bytes.
func (r *reader) uleb(maxBytes int) uint64 {
	var v uint64
	for i := 0; i < maxBytes; i++ {
		c := r.byte()
		v |= uint64(c&0x7f) << (7 * i)
		if c&0x80 == 0 {
			return v
		}
	}
	r.fail(errors.New("integer too long"))
	return 0
}

func (r *reader) u32() uint32 { return uint32(r.uleb(5)) }

// sleb moves past a signed LEB128 (up to 64 bits).
func (r *reader) sleb() { r.uleb(10) }

func (r *reader) name() string {
	n := r.u32()
	if r.err != nil || r.off+int(n) > len(r.b) {
		r.fail(errTruncated)
		return ""
	}
	s := string(r.b[r.off : r.off+int(n)])
	r.off += int(n)
	return s
}

// blockType moves past a block type: empty (0x40), a value type, or a type
// index (a signed LEB128, so each of the others is one byte of it).
func (r *reader) blockType() { r.uleb(5) }

// valType moves past a value type. The typed references of the GC
// proposal (0x63, 0x64 with a heap type) are not supported.
func (r *reader) valType() {
	switch c := r.byte(); c {
	case 0x7f, 0x7e, 0x7d, 0x7c, 0x7b, 0x70, 0x6f, 0x69:
	default:
		if r.err == nil {
			r.fail(fmt.Errorf("value type %#x unsupported", c))
		}
	}
}

func (r *reader) limits() {
	flags := r.byte()
	r.uleb(10)
	if flags&1 != 0 {
		r.uleb(10)
	}
}

// memArg moves past alignment (with the multi-memory flag, a memory index)
// and offset.
func (r *reader) memArg() {
	align := r.u32()
	if align&0x40 != 0 {
		r.u32()
	}
	r.uleb(10)
}

func appendU32(b []byte, v uint32) []byte {
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if v == 0 {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

func appendSLEB(b []byte, v int64) []byte {
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if (v == 0 && c&0x40 == 0) || (v == -1 && c&0x40 != 0) {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

func appendName(b []byte, s string) []byte {
	return append(appendU32(b, uint32(len(s))), s...)
}

func appendSection(out []byte, id byte, parts ...[]byte) []byte {
	size := 0
	for _, p := range parts {
		size += len(p)
	}
	out = appendU32(append(out, id), uint32(size))
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}
