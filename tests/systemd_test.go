package tests

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// This file runs wcluster as systemd would: with the listening socket passed
// by socket activation (systemd-socket-activate, from Debian's systemd
// package, does what a .socket unit does), and with NOTIFY_SOCKET set to a
// socket the test reads, as Type=notify does.

// socketActivated runs `systemd-socket-activate -l 127.0.0.1:PORT [extra]
// argv...` and waits until it listens; it returns the process and the
// address. The activator execs argv in place on the first connection, so
// LISTEN_PID is the pid of the process started here.
func socketActivated(t *testing.T, extra []string, argv ...string) (*server, string) {
	t.Helper()
	tool, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		missing(t, "systemd-socket-activate not installed (Debian package systemd; `make deps` installs it)")
	}
	for try := 0; ; try++ {
		addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
		args := append([]string{"-l", addr}, extra...)
		w, err := launch(t, exec.Command(tool, append(args, argv...)...), noWait())
		if err != nil {
			t.Fatal(err)
		}
		_, err = w.tryWaitOutput(`Listening on `+regexp.QuoteMeta(addr)+` as 3\.`, 30*time.Second)
		if err == nil {
			return w, addr
		}
		if try < 3 && strings.Contains(w.output(), "in use") {
			continue // the port was taken between freeLoopbackPort and bind
		}
		t.Fatalf("systemd-socket-activate: %v", err)
	}
}

func activatedStatusOf(t *testing.T, ctl string) status { return getStatus(t, ctl) }

// TestSystemdSocketActivation: under systemd-socket-activate the master
// serves the socket it was passed (it binds nothing: --listen names another
// port), on rr and shared; the activated socket is what it reports, and
// workers do not see the LISTEN_* variables.
func TestSystemdSocketActivation(t *testing.T) {
	t.Parallel()
	for _, sched := range []string{"rr", "shared"} {
		t.Run(sched, func(t *testing.T) {
			ctl := filepath.Join(t.TempDir(), "ctl.sock")
			w, addr := socketActivated(t, []string{"--fdname=http"}, env.bin, "serve",
				"--listen", "127.0.0.1:0", "--workers", "2", "--sched", sched,
				"--cache-dir", env.cache, "--control", ctl)
			url := "http://" + addr + "/"
			client := newClient()

			// The first connection makes the activator exec wcluster; it
			// waits in the socket's backlog until a worker serves it.
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			first := make(chan error, 1)
			go func() {
				body, _, err := get(ctx, client, url, true)
				if err == nil && body != "hello world\n" {
					err = fmt.Errorf("body %q", body)
				}
				first <- err
			}()
			banner := w.waitOutput(`serving .* on (\S+) \(`, 90*time.Second)
			if banner[1] != addr {
				t.Fatalf("master serves %s, want the activated socket %s", banner[1], addr)
			}
			if err := <-first; err != nil {
				t.Fatalf("first request through the activated socket: %v", err)
			}
			w.waitOutput(`socket activation`, 10*time.Second)

			seen := map[string]int{}
			for i := 0; i < 200; i++ {
				body, worker, err := get(context.Background(), client, url, true)
				if err != nil || body != "hello world\n" {
					t.Fatalf("request %d: %q %v", i, body, err)
				}
				seen[worker]++
			}
			t.Logf("%s: served by worker: %v", sched, seen)
			if sched == "rr" && (seen["1"] == 0 || seen["2"] == 0) {
				t.Fatalf("rr: want requests served by workers 1 and 2, got %v", seen)
			}

			st := activatedStatusOf(t, ctl)
			if st.Listen != addr {
				t.Errorf("status reports listen %q, want the activated %s", st.Listen, addr)
			}
			if len(st.Groups) != 1 || len(st.Groups[0].Listeners) != 1 {
				t.Errorf("status reports groups %+v, want one with only the activated %s", st.Groups, addr)
			}
			if st.PID != w.cmd.Process.Pid {
				t.Errorf("master pid %d, want %d (the activator execs in place)", st.PID, w.cmd.Process.Pid)
			}
			if len(st.Workers) != 2 {
				t.Fatalf("want 2 workers, got %+v", st.Workers)
			}
			for _, ws := range st.Workers {
				for _, kv := range environOf(t, ws.PID) {
					if strings.HasPrefix(kv, "LISTEN_") {
						t.Errorf("worker %d inherited %s", ws.ID, kv)
					}
				}
			}

			w.cmd.Process.Signal(syscall.SIGTERM)
			if err := w.waitExit(30 * time.Second); err != nil {
				t.Fatalf("exit after SIGTERM: %v", err)
			}
		})
	}
}

// sdNotifications collects what arrives on a NOTIFY_SOCKET the test owns.
type sdNotifications struct {
	t    *testing.T
	path string
	ch   chan string
}

func sdNotifySocket(t *testing.T) *sdNotifications {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	n := &sdNotifications{t: t, path: path, ch: make(chan string, 64)}
	go func() {
		defer close(n.ch)
		buf := make([]byte, 4096)
		for {
			k, err := c.Read(buf)
			if err != nil {
				return // closed at cleanup
			}
			n.ch <- string(buf[:k])
		}
	}()
	t.Cleanup(func() { c.Close() })
	return n
}

// next returns the next notification, within d; it fails if w exits first
// and nothing is left to read.
func (n *sdNotifications) next(w *server, d time.Duration) string {
	n.t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case msg := <-n.ch:
		return msg
	case <-timer.C:
		n.t.Fatalf("no notification within %v", d)
	case <-w.done:
		select {
		case msg := <-n.ch:
			return msg
		case <-time.After(time.Second): // a datagram sent before exit is already queued
			n.t.Fatalf("exited (%v) without a notification", w.err)
		}
	}
	return ""
}

// expect returns the next notification that has a line key=...; lines
// before it may only be STATUS=.
func (n *sdNotifications) expect(w *server, key string, d time.Duration) string {
	n.t.Helper()
	deadline := time.Now().Add(d)
	for {
		msg := n.next(w, time.Until(deadline))
		var other []string
		found := false
		for _, line := range strings.Split(msg, "\n") {
			switch {
			case strings.HasPrefix(line, key+"="):
				found = true
			case strings.HasPrefix(line, "STATUS="), strings.HasPrefix(line, "MONOTONIC_USEC="), line == "":
			default:
				other = append(other, line)
			}
		}
		if len(other) > 0 && !found {
			n.t.Fatalf("waiting for %s=, got %q", key, msg)
		}
		if found {
			return msg
		}
	}
}

// TestSystemdNotify: with NOTIFY_SOCKET set, the master says READY=1 once
// every worker is serving, RELOADING=1 (with MONOTONIC_USEC) and READY=1
// again around a SIGHUP reload, and STOPPING=1 on SIGTERM before it exits.
func TestSystemdNotify(t *testing.T) {
	t.Parallel()
	n := sdNotifySocket(t)
	ctl := filepath.Join(t.TempDir(), "ctl.sock")
	cmd := exec.Command(env.bin, "serve", "--listen", "127.0.0.1:0", "--workers", "2",
		"--cache-dir", env.cache, "--control", ctl)
	w, err := launch(t, cmd, withEnv("NOTIFY_SOCKET="+n.path), noWait())
	if err != nil {
		t.Fatal(err)
	}

	// The banner is printed once every worker is ready; READY=1 follows.
	w.waitOutput(`serving .* on `, 90*time.Second)
	msg := n.expect(w, "READY", 15*time.Second)
	if !strings.Contains(msg, "READY=1") {
		t.Fatalf("got %q, want READY=1", msg)
	}
	// At READY=1 every worker is ready, and the master serves.
	st := activatedStatusOf(t, ctl)
	if len(st.Workers) != 2 {
		t.Fatalf("at READY=1: want 2 workers, got %+v", st.Workers)
	}
	for _, ws := range st.Workers {
		if ws.State != "ready" {
			t.Fatalf("at READY=1: worker %d is %q", ws.ID, ws.State)
		}
	}
	if st.PID != cmd.Process.Pid {
		t.Fatalf("status pid %d, want %d", st.PID, cmd.Process.Pid)
	}
	w.waitOutput(`serving .* on `+regexp.QuoteMeta(st.Listen), 10*time.Second)
	body, _, err := get(context.Background(), newClient(), "http://"+st.Listen+"/", true)
	if err != nil || body != "hello world\n" {
		t.Fatalf("request after READY=1: %q %v", body, err)
	}

	// Reload: RELOADING=1 with a monotonic timestamp, then READY=1.
	w.cmd.Process.Signal(syscall.SIGHUP)
	msg = n.expect(w, "RELOADING", 30*time.Second)
	var usec int64
	for _, line := range strings.Split(msg, "\n") {
		if v, ok := strings.CutPrefix(line, "MONOTONIC_USEC="); ok {
			usec, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	if usec <= 0 {
		t.Errorf("RELOADING=1 without a MONOTONIC_USEC: %q", msg)
	}
	n.expect(w, "READY", 90*time.Second)
	body, _, err = get(context.Background(), newClient(), "http://"+st.Listen+"/", true)
	if err != nil || body != "hello world\n" {
		t.Fatalf("request after the reload's READY=1: %q %v", body, err)
	}

	// Stop: STOPPING=1, then a clean exit.
	w.cmd.Process.Signal(syscall.SIGTERM)
	n.expect(w, "STOPPING", 30*time.Second)
	if err := w.waitExit(30 * time.Second); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	select {
	case msg, ok := <-n.ch:
		if ok && strings.Contains(msg, "READY=1") {
			t.Errorf("READY=1 after STOPPING=1: %q", msg)
		}
	default:
	}
}

// TestSocketActivationWithConfig: with --config, each socket systemd passes
// serves the configured listener of its address, whatever the order of the
// sockets (group gamma's port is passed first here); a socket that no
// listener has is refused with one line naming it.
func TestSocketActivationWithConfig(t *testing.T) {
	t.Parallel()
	tool, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		missing(t, "systemd-socket-activate not installed (Debian package systemd; `make deps` installs it)")
	}
	probe := probeGuest(t)
	dir := t.TempDir()
	port, other, stray := freePort(t), freePort(t), freePort(t)
	cfg := filepath.Join(dir, "wcluster.toml")
	writeConfig(t, cfg, fmt.Sprintf(`[cluster]
workers = 1
cache_dir = %q

[[tenant]]
name = "alpha"
handler = %q
listen = ["127.0.0.1:%d"]
config = { name = "alpha" }

[[tenant]]
name = "gamma"
handler = %q
listen = ["127.0.0.1:%d"]
config = { name = "gamma" }
group = "gamma"
`, env.cache, probe, port, probe, other))
	activated := func(ports ...int) *server {
		var args []string
		for _, p := range ports {
			args = append(args, "-l", fmt.Sprintf("127.0.0.1:%d", p))
		}
		w, err := launch(t, exec.Command(tool, append(args, env.bin, "serve", "--config", cfg)...), noWait())
		if err != nil {
			t.Fatal(err)
		}
		w.waitOutput(fmt.Sprintf(`Listening on 127\.0\.0\.1:%d as %d\.`, ports[len(ports)-1], 2+len(ports)), 30*time.Second)
		return w
	}

	w := activated(other, port)
	for _, tc := range []struct {
		port int
		name string
	}{{port, "alpha"}, {other, "gamma"}, {port, "alpha"}} {
		addr := fmt.Sprintf("127.0.0.1:%d", tc.port)
		code, body := mustGet(t, addr, "x.test", "/")
		if code != 200 || !strings.Contains(body, "tenant "+tc.name) {
			t.Fatalf("port %d: %d %q, want tenant %s", tc.port, code, body, tc.name)
		}
	}
	w.waitOutput(`socket activation`, 10*time.Second)
	w.cmd.Process.Signal(syscall.SIGTERM)
	if err := w.waitExit(30 * time.Second); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}

	// A third socket, on a port the configuration does not have.
	w = activated(port, other, stray)
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 10*time.Second)
	if err == nil {
		defer c.Close() // the activator execs wcluster on this connection
	}
	if err := w.waitExit(60 * time.Second); err == nil {
		t.Fatalf("served with a socket no listener has:\n%s", w.output())
	}
	line := w.waitOutput(`wcluster: .*socket activation: the socket on 127\.0\.0\.1:(\d+) .* is no listener of the configuration`, 10*time.Second)
	if line[1] != strconv.Itoa(stray) {
		t.Fatalf("refusal names port %s, want %d", line[1], stray)
	}
}
