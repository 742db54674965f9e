package config

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"

	"github.com/wcluster/wcluster/guests/embedded"
)

// maxHandlerSize caps a handler file. Real modules are far smaller (the Go
// hello is about 2.5 MB, a large Rust or C++ program some tens of MB); the
// cap keeps a wrong path (a log, a device) from filling memory.
const maxHandlerSize = 256 << 20

// ReadHandler reads a handler file: a regular file of at most
// maxHandlerSize bytes. Every place that reads a handler (serve, check,
// reload, a config's tenants, the workers) reads it here. An error is a
// phrase to follow the path ("is a directory, ..."), except for a missing
// file: an os.ErrNotExist, for the caller's own advice.
func ReadHandler(path string) ([]byte, error) {
	// Non-blocking, so that opening a FIFO does not wait for a writer; it
	// changes nothing for a regular file.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("cannot be opened: %s", errText(err))
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("cannot be read: %s", errText(err))
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("is %s, not a regular file: give the path of a .wasm file", fileKind(st.Mode()))
	}
	tooLarge := fmt.Errorf("is larger than %d MiB, the limit for a handler file: give the path of a .wasm module", maxHandlerSize>>20)
	if st.Size() > maxHandlerSize {
		return nil, tooLarge
	}
	// Bounded even if the file grows while it is read.
	b, err := io.ReadAll(io.LimitReader(f, maxHandlerSize+1))
	if err != nil {
		return nil, fmt.Errorf("cannot be read: %s", errText(err))
	}
	if len(b) > maxHandlerSize {
		return nil, tooLarge
	}
	return b, nil
}

// HandlerError is "PATH" and what ReadHandler found wrong with it.
func HandlerError(path string, err error) string {
	if errors.Is(err, os.ErrNotExist) {
		return path + ": no such file"
	}
	return fmt.Sprintf("%s %v", path, err)
}

func fileKind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe (FIFO)"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a device"
	}
	return "a special file"
}

// HandlerFiles reads each handler file once: the tenants serving one file
// get the same bytes (one slice) and its sha256.
type HandlerFiles map[string]*handlerFile

type handlerFile struct {
	wasm []byte
	sum  string
	err  error
}

// Read is tenant t's module, as ReadWasm, read once per file.
func (hf HandlerFiles) Read(t *Tenant) ([]byte, error) {
	wasm, _, err := hf.read(t)
	return wasm, err
}

func (hf HandlerFiles) read(t *Tenant) ([]byte, string, error) {
	if len(t.Wasm) > 0 {
		sum := sha256.Sum256(t.Wasm)
		return t.Wasm, hex.EncodeToString(sum[:]), nil
	}
	f := hf[t.Handler]
	if f == nil {
		f = &handlerFile{}
		if f.wasm, f.err = t.ReadWasm(); f.err == nil {
			sum := sha256.Sum256(f.wasm)
			f.sum = hex.EncodeToString(sum[:])
		}
		hf[t.Handler] = f
	}
	return f.wasm, f.sum, f.err
}

// Wasm is tenant t's module in a worker: its bytes in the group's Modules
// (the master read them), else ReadWasm.
func (g *Group) Wasm(t *Tenant) ([]byte, error) {
	if t.Module == "" {
		return t.ReadWasm()
	}
	wasm, ok := g.Modules[t.Module]
	if !ok {
		return nil, fmt.Errorf("module %s is missing from the worker configuration", t.Module)
	}
	return wasm, nil
}

// ReadWasm is the tenant's module: the bytes the master read for a worker,
// else its handler file (the embedded default for none). A missing file is
// an os.ErrNotExist; other errors are HandlerError's phrase.
func (t *Tenant) ReadWasm() ([]byte, error) {
	if len(t.Wasm) > 0 {
		return t.Wasm, nil
	}
	if t.Handler == "" {
		return embedded.Hello, nil
	}
	return ReadHandler(t.Handler)
}
