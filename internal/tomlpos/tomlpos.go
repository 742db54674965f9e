// Package tomlpos finds where keys are defined in a TOML document, for
// error messages that name FILE:LINE (the TOML decoder gives values, not
// their positions).
package tomlpos

import (
	"slices"
	"strconv"
	"strings"
)

// Lines maps every key and table header of a TOML document to the line
// defining it. Elements of arrays of tables are numbered from 0: the name of
// the second [[tenant]] is "tenant.1.name"; keys in an inline table are
// found under their table ("tenant.0.tls.cert"). The document must be valid
// TOML (the decoder checked it first); the scan only tracks strings,
// comments, brackets and headers.
func Lines(src string) map[string]int {
	sc := &tomlScanner{s: src, line: 1, lines: map[string]int{}, arrays: map[string]int{}}
	sc.run()
	return sc.lines
}

type tomlScanner struct {
	s      string
	i      int
	line   int
	lines  map[string]int
	arrays map[string]int // header path without indices -> elements so far
}

func (sc *tomlScanner) peek(k int) byte {
	if sc.i+k < len(sc.s) {
		return sc.s[sc.i+k]
	}
	return 0
}

func (sc *tomlScanner) advance() {
	if sc.s[sc.i] == '\n' {
		sc.line++
	}
	sc.i++
}

// blank skips spaces and tabs, and with newlines also line ends and comments.
func (sc *tomlScanner) blank(newlines bool) {
	for sc.i < len(sc.s) {
		switch c := sc.s[sc.i]; {
		case c == ' ' || c == '\t' || c == '\r':
			sc.advance()
		case c == '#':
			for sc.i < len(sc.s) && sc.s[sc.i] != '\n' {
				sc.i++
			}
		case c == '\n' && newlines:
			sc.advance()
		default:
			return
		}
	}
}

func (sc *tomlScanner) record(path []string, line int) {
	for k := 1; k <= len(path); k++ {
		p := strings.Join(path[:k], ".")
		if _, ok := sc.lines[p]; !ok {
			sc.lines[p] = line
		}
	}
}

func (sc *tomlScanner) run() {
	var table []string
	for {
		sc.blank(true)
		if sc.i >= len(sc.s) {
			return
		}
		line := sc.line
		if sc.s[sc.i] == '[' {
			array := sc.peek(1) == '['
			sc.i++
			if array {
				sc.i++
			}
			sc.blank(false)
			keys := sc.key()
			table = sc.resolve(keys, array)
			sc.lines[strings.Join(table, ".")] = line
			sc.record(table, line)
			sc.restOfLine()
			continue
		}
		start := sc.i
		keys := sc.key()
		sc.blank(false)
		if sc.i < len(sc.s) && sc.s[sc.i] == '=' {
			sc.i++
		}
		path := append(slices.Clone(table), keys...)
		sc.record(path, line)
		sc.blank(false)
		sc.value(path)
		if sc.i == start {
			sc.advance() // not TOML: never loop in place
		}
		sc.restOfLine()
	}
}

func (sc *tomlScanner) restOfLine() {
	for sc.i < len(sc.s) && sc.s[sc.i] != '\n' {
		sc.advance()
	}
}

// resolve turns a header's keys into an indexed path: each prefix that is
// an array of tables refers to its latest element; a [[header]] adds one.
func (sc *tomlScanner) resolve(keys []string, array bool) []string {
	var out []string
	for k := range keys {
		raw := strings.Join(keys[:k+1], ".")
		out = append(out, keys[k])
		if array && k == len(keys)-1 {
			out = append(out, strconv.Itoa(sc.arrays[raw]))
			sc.arrays[raw]++
		} else if n := sc.arrays[raw]; n > 0 {
			out = append(out, strconv.Itoa(n-1))
		}
	}
	return out
}

// key reads a dotted key: bare or quoted parts separated by dots.
func (sc *tomlScanner) key() []string {
	var parts []string
	for sc.i < len(sc.s) {
		sc.blank(false)
		if sc.i >= len(sc.s) {
			break
		}
		switch c := sc.s[sc.i]; {
		case c == '"' || c == '\'':
			parts = append(parts, sc.str())
		default:
			start := sc.i
			for sc.i < len(sc.s) && isBareKey(sc.s[sc.i]) {
				sc.i++
			}
			if sc.i == start {
				return parts
			}
			parts = append(parts, sc.s[start:sc.i])
		}
		sc.blank(false)
		if sc.i < len(sc.s) && sc.s[sc.i] == '.' {
			sc.i++
			continue
		}
		break
	}
	return parts
}

func isBareKey(c byte) bool {
	return c == '_' || c == '-' || '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
}

// str reads a string of any of TOML's four kinds and returns its text
// (escapes undone only as far as keys need: \" and \\).
func (sc *tomlScanner) str() string {
	q := sc.s[sc.i]
	multi := sc.peek(1) == q && sc.peek(2) == q
	if multi {
		sc.i += 3
	} else {
		sc.i++
	}
	var b strings.Builder
	for sc.i < len(sc.s) {
		c := sc.s[sc.i]
		switch {
		case c == '\\' && q == '"' && sc.i+1 < len(sc.s):
			sc.i++
			b.WriteByte(sc.s[sc.i])
			sc.advance()
			continue
		case c == q && !multi:
			sc.i++
			return b.String()
		case c == q && multi && sc.peek(1) == q && sc.peek(2) == q:
			sc.i += 3
			for sc.i < len(sc.s) && sc.s[sc.i] == q { // up to two quotes end the content
				sc.i++
			}
			return b.String()
		case c == '\n' && !multi:
			return b.String()
		}
		b.WriteByte(c)
		sc.advance()
	}
	return b.String()
}

// value skips one value, recording the keys of inline tables under path
// (and elements of arrays under path.N).
func (sc *tomlScanner) value(path []string) {
	if sc.i >= len(sc.s) {
		return
	}
	switch c := sc.s[sc.i]; c {
	case '"', '\'':
		sc.str()
	case '[':
		sc.i++
		for n := 0; ; n++ {
			sc.blank(true)
			if sc.i >= len(sc.s) {
				return
			}
			if sc.s[sc.i] == ']' {
				sc.i++
				return
			}
			start := sc.i
			sc.value(append(slices.Clone(path), strconv.Itoa(n)))
			sc.blank(true)
			if sc.i < len(sc.s) && sc.s[sc.i] == ',' {
				sc.i++
			} else if sc.i == start {
				sc.advance()
			}
		}
	case '{':
		sc.i++
		for {
			sc.blank(false)
			if sc.i >= len(sc.s) || sc.s[sc.i] == '\n' {
				return
			}
			if sc.s[sc.i] == '}' {
				sc.i++
				return
			}
			line := sc.line
			start := sc.i
			keys := sc.key()
			sc.blank(false)
			if sc.i < len(sc.s) && sc.s[sc.i] == '=' {
				sc.i++
			}
			sub := append(slices.Clone(path), keys...)
			sc.record(sub, line)
			sc.blank(false)
			sc.value(sub)
			sc.blank(false)
			if sc.i < len(sc.s) && sc.s[sc.i] == ',' {
				sc.i++
			} else if sc.i == start {
				sc.advance()
			}
		}
	default:
		for sc.i < len(sc.s) && !strings.ContainsRune(",]}\n#", rune(sc.s[sc.i])) {
			sc.i++
		}
	}
}
