package host

import (
	"errors"
	"strings"
)

// maxStack bounds the wasm stack a trap's log entry carries (wazero keeps
// 30 frames; a frame with inlined source lines takes several lines).
const maxStack = 4096

// splitTrap splits wazero's error for a trap into its first line, the
// message, and the wasm stack it lists after "wasm stack trace:", one frame
// (or source line) per line, at most maxStack bytes; the host's Go stack
// that wazero appends to a host panic is left out. The stack is "" for an
// error without one.
func splitTrap(err error) (msg, stack string) {
	msg, rest, _ := strings.Cut(err.Error(), "\n")
	var se *startError
	if errors.As(err, &se) {
		_, rest, _ = strings.Cut(se.err.Error(), "\n")
	}
	_, frames, ok := strings.Cut(rest, "wasm stack trace:")
	if !ok {
		return msg, ""
	}
	var b strings.Builder
	for line := range strings.SplitSeq(frames, "\n") {
		// A frame is "module.function(params) results"; guests' module
		// name is empty.
		line = strings.TrimPrefix(strings.TrimSpace(line), ".")
		if line == "" {
			if b.Len() > 0 {
				break // the end of the frames (a Go stack of wazero's may follow)
			}
			continue
		}
		if b.Len()+len(line)+1 > maxStack {
			b.WriteString("\n...")
			break
		}
		if b.Len() > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(line)
	}
	return msg, b.String()
}

// trapAttrs are the log attributes of a failed call's error: "err", its
// first line, and "stack", its wasm stack if it has one.
func trapAttrs(err error) []any {
	msg, stack := splitTrap(err)
	if stack == "" {
		return []any{"err", msg}
	}
	return []any{"err", msg, "stack", stack}
}

// startError is a start function's trap: its message is one line (it may
// end up as the CLI's error), its stack is kept for the log.
type startError struct{ err error }

func (e *startError) Error() string { return "instantiate: " + oneLine(e.err) }
func (e *startError) Unwrap() error { return e.err }
