package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestReadHandler: a regular file is read; a missing one is os.ErrNotExist;
// a FIFO, a device, a directory and a file above the cap are refused without
// being read (the FIFO without waiting for a writer).
func TestReadHandler(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ok := filepath.Join(dir, "ok.wasm")
	os.WriteFile(ok, []byte("\x00asm\x01\x00\x00\x00"), 0o644)
	if b, err := ReadHandler(ok); err != nil || len(b) != 8 {
		t.Fatalf("regular file: %d bytes, %v", len(b), err)
	}
	if _, err := ReadHandler(filepath.Join(dir, "none.wasm")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	fifo := filepath.Join(dir, "fifo.wasm")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big.wasm")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(maxHandlerSize + 1) // sparse: nothing is written
	f.Close()
	for path, want := range map[string]string{
		fifo:        "is a named pipe (FIFO), not a regular file",
		"/dev/zero": "is a character device, not a regular file",
		dir:         "is a directory, not a regular file",
		big:         "is larger than 256 MiB",
	} {
		if _, err := ReadHandler(path); err == nil || !strings.Contains(HandlerError(path, err), path+" "+want) {
			t.Errorf("%s: %v, want %q", path, err, want)
		}
	}
}
