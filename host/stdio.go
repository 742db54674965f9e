package host

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"sync"
	"time"
)

// A guest's WASI stdio. A WASI command (KindCommand) serves one connection
// with one instance, so its stdin and stdout are that connection. An ABI
// handler's instance serves many connections in turn, and a language that
// buffers stdout (C's printf, Rust's print!) would flush one client's text
// into the next client's response: its stdout goes to the worker's log
// instead, and its stdin reads nothing. stderr goes to the log in both.

// stdin reads the connection of the instance's current call (commands).
type stdin struct{ inst *instance }

func (s stdin) Read(p []byte) (int, error) {
	c := s.inst.cur
	if c == nil {
		return 0, io.EOF
	}
	n := c.read(p)
	if n > 0 {
		return int(n), nil
	}
	if n == 0 {
		return 0, io.EOF
	}
	return 0, io.ErrUnexpectedEOF
}

// noInput is an ABI handler's stdin: always at end of file.
type noInput struct{}

func (noInput) Read([]byte) (int, error) { return 0, io.EOF }

// stdout writes the connection of the instance's current call (commands).
type stdout struct{ inst *instance }

func (s stdout) Write(p []byte) (int, error) {
	c := s.inst.cur
	if c == nil {
		return len(p), nil // nothing to write to: discard, as to /dev/null
	}
	if n := c.write(p); n < 0 {
		return 0, io.ErrClosedPipe
	}
	return len(p), nil
}

// outputs are an instance's output streams sent to the log: stdout (nil
// for a command, whose stdout is the connection) and stderr.
type outputs struct{ stdout, stderr *outStream }

// outStream is one guest output stream sent to the log: the bytes since its
// last newline, and how its lines are logged.
type outStream struct {
	buf    []byte
	level  slog.Level
	source string
}

// stdout of an ABI handler is logged at info: it is the program's ordinary
// output (a trace, a debugging print). stderr, where runtimes put panics
// and errors, is logged at warn, so it shows at --log-level warn.
func newOutStreams() (out, err *outStream) {
	return &outStream{level: slog.LevelInfo, source: "guest-stdout"},
		&outStream{level: slog.LevelWarn, source: "guest-stderr"}
}

// logWriter sends a guest output stream to the worker's log a line at a
// time: guests write a line in several pieces, so partial lines are held
// (up to maxLogLine) until their newline, or the end of the call.
type logWriter struct {
	inst *instance
	s    *outStream
}

const maxLogLine = 4096

func (w logWriter) Write(p []byte) (int, error) {
	s := w.s
	s.buf = append(s.buf, p...)
	for {
		i := bytes.IndexByte(s.buf, '\n')
		if i < 0 {
			if len(s.buf) >= maxLogLine {
				w.inst.logLine(s, s.buf)
				s.buf = s.buf[:0]
			}
			return len(p), nil
		}
		w.inst.logLine(s, s.buf[:i])
		s.buf = s.buf[:copy(s.buf, s.buf[i+1:])]
	}
}

// flushLog logs the partial lines left at the end of a call.
func (inst *instance) flushLog() {
	for _, s := range []*outStream{inst.output.stdout, inst.output.stderr} {
		if s != nil && len(s.buf) > 0 {
			inst.logLine(s, s.buf)
			s.buf = s.buf[:0]
		}
	}
}

func (inst *instance) logLine(s *outStream, line []byte) {
	var id int64
	if c := inst.cur; c != nil {
		id = c.id
	}
	inst.h.guestLine(s.level, s.source, line, id)
}

// Guest output is rate-limited per handler: a token bucket of
// guestLinesPerSec lines a second, with a burst of guestLineBurst (a Go
// panic's trace, about a hundred lines, passes whole). Lines past it are
// counted, not logged; the count is logged once the limit lifts.
const (
	guestLinesPerSec = 50
	guestLineBurst   = 200
)

// lineLimiter is a handler's token bucket for guest output lines.
type lineLimiter struct {
	mu      sync.Mutex
	tokens  float64
	last    time.Time
	dropped uint64 // lines dropped since the last report
}

// take refills the bucket to now and takes a token for one line if there
// is one. It returns whether the line may be logged, and the lines dropped
// before it, to report (then reset).
func (l *lineLimiter) take(now time.Time, spend bool) (ok bool, dropped uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last.IsZero() {
		l.tokens = guestLineBurst
	} else if d := now.Sub(l.last); d > 0 {
		l.tokens = min(l.tokens+d.Seconds()*guestLinesPerSec, guestLineBurst)
	}
	l.last = now
	if l.tokens < 1 {
		if spend {
			l.dropped++
		}
		return false, 0
	}
	if spend {
		l.tokens--
	}
	dropped, l.dropped = l.dropped, 0
	return true, dropped
}

// guestLine logs one line of guest output, within the handler's rate limit.
func (h *Handler) guestLine(level slog.Level, source string, line []byte, conn int64) {
	ok, dropped := h.lines.take(time.Now(), true)
	if !ok {
		h.stats.logDropped.Add(1)
		return
	}
	h.reportDropped(dropped)
	h.opts.Logger.Log(context.Background(), level, string(line), "source", source, "handler", h.opts.Name, "conn", conn)
}

// reportDropped logs how many lines of guest output the rate limit dropped.
func (h *Handler) reportDropped(n uint64) {
	if n > 0 {
		h.opts.Logger.Warn("guest output over its rate limit: lines dropped", "handler", h.opts.Name,
			"dropped", n, "limit", guestLinesPerSec, "burst", guestLineBurst)
	}
}

// flushDropped reports the lines dropped so far if the limit has lifted,
// for a guest that fell silent after its flood. maintain calls it.
func (h *Handler) flushDropped(now time.Time) {
	if _, dropped := h.lines.take(now, false); dropped > 0 {
		h.reportDropped(dropped)
	}
}
