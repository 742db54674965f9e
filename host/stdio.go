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
	if c == nil {
		return len(p), nil // nothing to write to: discard, as to /dev/null
	}
	if n := c.write(p); n < 0 {
		return 0, io.ErrClosedPipe
	}
	return len(p), nil
}

// logWriter sends a guest's stderr to the worker's log, a line at a time.
type logWriter struct{ inst *instance }

func (w logWriter) Write(p []byte) (int, error) {
	var id int64
	if c := w.inst.cur; c != nil {
		id = c.id
	}
	for _, line := range bytes.Split(bytes.TrimRight(p, "\n"), []byte("\n")) {
		w.inst.h.opts.Logger.Log(context.Background(), slog.LevelInfo, string(line), "source", "guest-stderr", "conn", id)
	}
	return len(p), nil
}
