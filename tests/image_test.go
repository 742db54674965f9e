package tests

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestMemoryImageIsolation: a module's data is mapped into each instance
// copy-on-write from one sealed copy per worker (host's memImage). A WASI
// command (a fresh instance per connection) answers what its data holds,
// and a byte of memory past it, then overwrites them: every connection, one
// after another and many at once, must still see the data as the module
// wrote it and zeros past it — no instance sees another's writes, though
// the worker reuses closed instances' memory reservations. The sandboxed
// worker holds the image as a memfd, so the mapping, not the copying
// fallback, is what is tested.
func TestMemoryImageIsolation(t *testing.T) {
	t.Parallel()
	// The second text's offset sets the image's size: past 64 KiB a kept
	// reservation gets the image copied back over the pages pagemap shows
	// written, within it over the whole image.
	for _, tc := range []struct {
		name string
		off  int
	}{{"restored", 70000}, {"copied", 40000}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			testImageIsolation(t, tc.off)
		})
	}
}

func testImageIsolation(t *testing.T, off int) {
	wasm := wat2wasm(t, t.TempDir(), "seen", fmt.Sprintf(`(module
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 3)
  ;; three iovecs: the text at 200 (8 bytes), the one at off (5 bytes),
  ;; a byte past the data (at 150000, anonymous memory); one for what the client
  ;; sent (at 300, 16 bytes)
  (data (i32.const 0) "\c8\00\00\00\08\00\00\00%s\05\00\00\00\f0\49\02\00\01\00\00\00")
  (data (i32.const 32) "\2c\01\00\00\10\00\00\00")
  (data (i32.const 200) "seen: A ")
  (data (i32.const %d) "and Z")
  (func (export "_start")
    (drop (call $read (i32.const 0) (i32.const 32) (i32.const 1) (i32.const 64)))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 3) (i32.const 64)))
    (i32.store8 (i32.const 206) (i32.const 66))      ;; A -> B
    (i32.store8 (i32.const %d) (i32.const 89))    ;; Z -> Y
    (i32.store8 (i32.const 150000) (i32.const 88)))) ;; 0 -> X
`, watLE32(off), off, off+4))
	const seen = "seen: A and Z\x00"
	s, ctl := startControlled(t, "--workers", "1", wasm)
	ask := func() (string, error) {
		c := s.dial(t)
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		c.Write([]byte("?\n")) // a command starts once the client speaks
		b, err := io.ReadAll(c)
		return string(b), err
	}
	for i := range 3 {
		if got, err := ask(); got != seen {
			t.Fatalf("connection %d got %q (%v), want the module's data as written", i, got, err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan string, 16)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if got, err := ask(); got != seen {
				errs <- strconv.Quote(got) + " " + errString(err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Errorf("a concurrent connection got %s", e)
	}

	pid := getStatus(t, ctl).Workers[0].PID
	fds, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		t.Fatalf("the worker's descriptors: %v", err)
	}
	var held bool
	for _, fd := range fds {
		if target, _ := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "fd", fd.Name())); strings.HasPrefix(target, "/memfd:wcluster-memory-image") {
			held = true
		}
	}
	if !held {
		t.Error("the sandboxed worker holds no memfd image: instances copy the data instead of mapping it")
	}
}

// watLE32 is v as a WAT string's four little-endian bytes.
func watLE32(v int) string {
	return fmt.Sprintf("\\%02x\\%02x\\%02x\\%02x", v&0xff, v>>8&0xff, v>>16&0xff, v>>24&0xff)
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
