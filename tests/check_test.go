package tests

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// runBounded runs the binary with args and fails the test unless it exits
// by itself, non-zero, within d, with one line containing want.
func runBounded(t *testing.T, d time.Duration, want string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	out, err := exec.CommandContext(ctx, env.bin, args...).CombinedOutput()
	text := strings.TrimSpace(string(out))
	if ctx.Err() != nil {
		t.Fatalf("%v: still running after %v; output:\n%s", args, d, text)
	}
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("%v: want a non-zero exit, got %v; output:\n%s", args, err, text)
	}
	if !strings.Contains(text, want) || strings.Contains(text, "\n") {
		t.Fatalf("%v: want one line containing %q, got:\n%s", args, want, text)
	}
	return text
}

// TestHandlerFileNotRegular: a FIFO (which would block the open), a device
// (/dev/zero would be read without end) or a directory as the handler is
// refused at once with one line, by check and by serve, alone or in a
// config file.
func TestHandlerFileNotRegular(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fifo := filepath.Join(dir, "handler.wasm")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, want string }{
		{fifo, "is a named pipe (FIFO), not a regular file"},
		{"/dev/zero", "is a character device, not a regular file"},
		{dir, "is a directory, not a regular file"},
	} {
		cfg := filepath.Join(t.TempDir(), "c.toml")
		writeConfig(t, cfg, fmt.Sprintf("[[tenant]]\nname = \"a\"\nhandler = %q\nlisten = [\"127.0.0.1:0\"]\n", tc.path))
		for _, args := range [][]string{
			{"check", tc.path},
			{"serve", "--listen", "127.0.0.1:0", "--cache-dir", env.cache, tc.path},
			{"check", "--config", cfg},
			{"serve", "--config", cfg},
		} {
			out := runBounded(t, 20*time.Second, tc.want, args...)
			if !strings.Contains(out, tc.path) {
				t.Fatalf("%v: the message does not name %s: %s", args, tc.path, out)
			}
		}
	}
}

// wat2wasm assembles a module from WebAssembly text into dir.
func wat2wasm(t *testing.T, dir, name, text string) string {
	t.Helper()
	src := filepath.Join(dir, name+".wat")
	out := filepath.Join(dir, name+".wasm")
	if err := os.WriteFile(src, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command("wat2wasm", src, "-o", out).CombinedOutput(); err != nil {
		t.Fatalf("wat2wasm (apt-get install wabt): %v\n%s", err, b)
	}
	return out
}

// TestCheckRefusesWhatServeRefuses: check instantiates the module with the
// limits it is given and runs its start functions under the time limit, as
// serve does: a memory minimum above --memory-limit, an _initialize or a
// start function that never ends, and a reserved export are refused by
// check, alone and in a config file, with the line serve gives.
func TestCheckRefusesWhatServeRefuses(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	const abi = `(func (export "wcluster_abi_v1")) (func (export "wcluster_handle") (param i32) (result i32) (i32.const 0))`
	big := wat2wasm(t, dir, "big", `(module (memory (export "memory") 1024) `+abi+`)`)
	initLoop := wat2wasm(t, dir, "initloop", `(module (memory (export "memory") 1)
		(func (export "_initialize") (loop $l (br $l))) `+abi+`)`)
	startLoop := wat2wasm(t, dir, "startloop", `(module (memory (export "memory") 1)
		(func $s (loop $l (br $l))) (start $s) `+abi+`)`)
	reserved := wat2wasm(t, dir, "reserved", `(module (memory (export "memory") 1)
		(func (export "wcluster.stop")) `+abi+`)`)

	cases := []struct {
		name, path, memory, timeout, want string
	}{
		{"memory minimum", big, "32MiB", "1s", "min 1024 pages (64 Mi) over limit of 512 pages (32 Mi)"},
		{"endless _initialize", initLoop, "32MiB", "300ms", "instantiate: _initialize ran past the 300ms time limit"},
		{"endless start function", startLoop, "32MiB", "300ms", "instantiate: the start function ran past the 300ms time limit"},
		{"reserved export", reserved, "32MiB", "1s", `the module exports "wcluster.stop" itself, a name wcluster reserves`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			limits := []string{"--memory-limit", tc.memory, "--timeout", tc.timeout}
			checked := runBounded(t, 30*time.Second, tc.want, append(append([]string{"check"}, limits...), tc.path)...)
			served := runBounded(t, 30*time.Second, tc.want,
				append(append([]string{"serve", "--listen", "127.0.0.1:0", "--cache-dir", env.cache}, limits...), tc.path)...)
			if checked != served {
				t.Fatalf("check and serve differ:\ncheck: %s\nserve: %s", checked, served)
			}
			cfg := filepath.Join(t.TempDir(), "c.toml")
			writeConfig(t, cfg, fmt.Sprintf("[[tenant]]\nname = \"a\"\nhandler = %q\nlisten = [\"127.0.0.1:0\"]\nmemory_limit = %q\ntimeout = %q\n",
				tc.path, tc.memory, tc.timeout))
			runBounded(t, 30*time.Second, tc.want, "check", "--config", cfg)
		})
	}
	// The same modules pass where the limits allow them.
	if out, err := run(t, "check", "--memory-limit", "128MiB", big); err != nil {
		t.Fatalf("check of the big module within its limit: %v\n%s", err, out)
	}
	if out, err := run(t, "check", "--timeout", "0", reserved); err != nil {
		t.Fatalf("check of the reserved export without a time limit: %v\n%s", err, out)
	}
}

// TestCheckWarnsOfCommandBuiltReactor: a reactor that also exports _start
// (built as a command: main never runs) is served with a warning that says
// how to build it; a version marker that is not () -> () is refused.
func TestCheckWarnsOfCommandBuiltReactor(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	build := func(name, wat string) string {
		src, wasm := filepath.Join(dir, name+".wat"), filepath.Join(dir, name+".wasm")
		if err := os.WriteFile(src, []byte(wat), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("wat2wasm", "-o", wasm, src).CombinedOutput(); err != nil {
			t.Fatalf("wat2wasm (wabt): %v\n%s", err, out)
		}
		return wasm
	}
	both := build("both", `(module (memory (export "memory") 1) (func (export "wcluster_abi_v1"))
  (func (export "wcluster_handle") (param i32) (result i32) (i32.const 0)) (func (export "_start")))`)
	out, err := run(t, "check", both)
	if err != nil || !strings.Contains(out, "warning: exports _start beside wcluster_handle") || !strings.Contains(out, "-buildmode=c-shared") {
		t.Errorf("check of a reactor built as a command: %v\n%s", err, out)
	}
	marker := build("marker", `(module (memory (export "memory") 1) (func (export "wcluster_abi_v1") (param i32))
  (func (export "wcluster_handle") (param i32) (result i32) (i32.const 0)))`)
	if out, err := run(t, "check", marker); err == nil || !strings.Contains(out, "exports wcluster_abi_v1 with signature (i32) -> (), want () -> ()") {
		t.Errorf("check of a marker with a parameter: %v\n%s", err, out)
	}
}
