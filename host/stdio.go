package host

import (
	"bytes"
	"context"
	"io"
	"log/slog"
)

// stdin, stdout and logWriter bind an instance's WASI stdio to the
// connection of its current call, so a plain WASI program is a handler.
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

type stdout struct{ inst *instance }

func (s stdout) Write(p []byte) (int, error) {
	c := s.inst.cur
	if c == nil && s.inst.h.web != nil {
		return logWriter(s).Write(p) // an http-wasm guest has no stream: its stdout is logged
	}
	if c == nil {
		return len(p), nil // nothing to write to: discard, as to /dev/null
	}
	if n := c.write(p); n < 0 {
		return 0, io.ErrClosedPipe
	}
	return len(p), nil
}

// logWriter sends a guest's stderr to the worker's log a line at a time:
// guests write a line in several pieces, so partial lines are held (up to
// maxLogLine) until their newline.
type logWriter struct{ inst *instance }

const maxLogLine = 4096

func (w logWriter) Write(p []byte) (int, error) {
	inst := w.inst
	inst.errbuf = append(inst.errbuf, p...)
	for {
		i := bytes.IndexByte(inst.errbuf, '\n')
		if i < 0 {
			if len(inst.errbuf) >= maxLogLine {
				inst.logLine(inst.errbuf)
				inst.errbuf = inst.errbuf[:0]
			}
			return len(p), nil
		}
		inst.logLine(inst.errbuf[:i])
		inst.errbuf = inst.errbuf[:copy(inst.errbuf, inst.errbuf[i+1:])]
	}
}

// flushLog logs a partial line left at the end of a call.
func (inst *instance) flushLog() {
	if len(inst.errbuf) > 0 {
		inst.logLine(inst.errbuf)
		inst.errbuf = inst.errbuf[:0]
	}
}

func (inst *instance) logLine(line []byte) {
	var id int64
	if c := inst.cur; c != nil {
		id = c.id
	}
	inst.h.opts.Logger.Log(context.Background(), slog.LevelInfo, string(line), "source", "guest-stderr", "conn", id)
}
