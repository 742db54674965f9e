package tests

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// controlAsNobody runs the binary at bin with args as uid/gid 65534 (bounded) and
// returns its combined output.
func controlAsNobody(t *testing.T, bin string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// TestControlSocketOwnerOnly: under umask 000 the control socket is still
// created mode 0600, so another user cannot even connect; and were it
// opened up (chmod 0666), the master checks the peer's uid (SO_PEERCRED)
// and refuses another user's stop with a one-line error and a warning,
// while its own user (root here) is served.
func TestControlSocketOwnerOnly(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Fatal("this test runs a client as another uid: it must run as root")
	}
	// A directory other users can reach, holding the socket and a copy of
	// the binary they can run (the tests' own directories are 0700).
	dir, err := os.MkdirTemp("", "wcluster-control-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "wcluster")
	copyBinaryForNobody(t, env.bin, bin, 0o755)
	ctl := filepath.Join(dir, "ctl.sock")

	// (The shared cache is in the tests' own 0700 directory: files the
	// master writes there under umask 000 reach no one.)
	s, err := launch(t, exec.Command("sh", "-c", `umask 000; exec "$0" "$@"`, env.bin, "serve",
		"--listen", "127.0.0.1:0", "--cache-dir", env.cache, "--control", ctl, "--workers", "1"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Lstat(ctl)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Type() != os.ModeSocket || st.Mode().Perm() != 0o600 {
		t.Fatalf("control socket mode %v under umask 000, want a socket of mode 0600", st.Mode())
	}
	if got := getStatus(t, ctl); len(got.Workers) != 1 {
		t.Fatalf("root's status: %+v", got)
	}

	out, err := controlAsNobody(t, bin, "stop", "--control", ctl)
	t.Logf("nobody, socket 0600: %v: %s", err, out)
	if err == nil || !strings.Contains(out, "permission denied") || strings.Count(out, "\n") != 0 {
		t.Fatalf("another user's stop on a 0600 socket: %v: %q, want one line saying permission denied", err, out)
	}

	// Opened up, the socket lets nobody connect: the master refuses it.
	if err := os.Chmod(ctl, 0o666); err != nil {
		t.Fatal(err)
	}
	out, err = controlAsNobody(t, bin, "stop", "--control", ctl)
	t.Logf("nobody, socket 0666: %v: %s", err, out)
	if err == nil || !strings.Contains(out, "permission denied: uid 65534 may not control this master") || strings.Count(out, "\n") != 0 {
		t.Fatalf("another user's stop on a 0666 socket: %v: %q, want one line refusing uid 65534", err, out)
	}
	s.waitOutput(`level=WARN msg="control: refused a client of another user" .*uid=65534 .*command=stop`, 10*time.Second)
	select {
	case <-s.done:
		t.Fatalf("the master stopped on another user's command: %v", s.err)
	default:
	}
	if got := getStatus(t, ctl); len(got.Workers) != 1 || got.Workers[0].State != "ready" {
		t.Fatalf("after the refused stop: %+v", got)
	}
}

func copyBinaryForNobody(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestControlPathNotASocket: a --control path holding something else (a
// typo naming a real file) is refused at start, and the file is left as
// it was.
func TestControlPathNotASocket(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "notes.txt")
	if err := os.WriteFile(path, []byte("keep me\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, "serve", "--listen", "127.0.0.1:0", "--cache-dir", env.cache, "--control", path)
	t.Logf("%v: %s", err, out)
	if err == nil || !strings.Contains(out, "not a socket is in the way") {
		t.Fatalf("serve with --control naming a regular file: %v: %q", err, out)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "keep me\n" {
		t.Fatalf("the file at the control path was changed: %q %v", b, err)
	}
}

// TestLogReaderGoneMasterLives: the master and workers log to a pipe whose
// reader exits (`wcluster serve | head -1`, a log shipper that dies). The
// next log lines meet a broken pipe; that must cost the lines, not the
// master: a worker killed afterwards is replaced and requests are served.
func TestLogReaderGoneMasterLives(t *testing.T) {
	t.Parallel()
	ctl := filepath.Join(t.TempDir(), "ctl.sock")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(env.bin, "serve", "--listen", "127.0.0.1:0", "--cache-dir", env.cache,
		"--control", ctl, "--workers", "2")
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	// Read up to the "serving" line, then hang up, as head -1 does.
	line := make(chan string, 1)
	go func() {
		b := make([]byte, 0, 4096)
		one := make([]byte, 1)
		for {
			if _, err := r.Read(one); err != nil {
				line <- string(b)
				return
			}
			if one[0] == '\n' {
				if strings.Contains(string(b), "serving") {
					line <- string(b)
					return
				}
				b = b[:0]
				continue
			}
			b = append(b, one[0])
		}
	}()
	select {
	case l := <-line:
		if !strings.Contains(l, "serving") {
			t.Fatalf("no serving line: %q", l)
		}
		m := servingRE.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("serving line without an address: %q", l)
		}
		r.Close()
		url := "http://" + m[1] + "/"

		victim := getStatus(t, ctl).Workers[0]
		syscall.Kill(victim.PID, syscall.SIGKILL) // the master logs the exit: EPIPE
		st := waitStatus(t, ctl, "the killed worker replaced", func(st status) bool {
			return len(st.Workers) == 2 && st.Workers[0].PID != victim.PID && st.Workers[0].State == "ready"
		})
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for i := 0; i < 10; i++ {
			if body, _, err := get(ctx, newClient(), url, true); err != nil || body != "hello world\n" {
				t.Fatalf("request %d after the log reader left: %q %v", i, body, err)
			}
		}
		if st = getStatus(t, ctl); st.Totals.Restarts != 1 {
			t.Fatalf("restarts = %d, want 1: workers die writing their log", st.Totals.Restarts)
		}
		select {
		case err := <-exited:
			t.Fatalf("master exited: %v", err)
		default:
		}
	case err := <-exited:
		t.Fatalf("master exited before serving: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("no serving line within 60s")
	}
}
