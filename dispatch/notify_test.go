package dispatch

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// notifyListener is a service manager's notification socket.
func notifyListener(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv(EnvNotifySocket, name)
	return c
}

func readNotify(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no notification within 10s: %v", err)
	}
	return string(buf[:n])
}

func TestNotifyUnset(t *testing.T) {
	t.Setenv(EnvNotifySocket, "")
	os.Unsetenv(EnvNotifySocket)
	if err := Notify(StateReady); err != nil {
		t.Fatalf("without %s Notify must do nothing, got %v", EnvNotifySocket, err)
	}
}

func TestNotifyPath(t *testing.T) {
	c := notifyListener(t, filepath.Join(t.TempDir(), "notify.sock"))
	for _, state := range []string{StateReady, StateStatus("serving 2 workers"), StateStopping} {
		if err := Notify(state); err != nil {
			t.Fatal(err)
		}
		if got := readNotify(t, c); got != state {
			t.Fatalf("got %q, want %q", got, state)
		}
	}
}

func TestNotifyAbstract(t *testing.T) {
	c := notifyListener(t, fmt.Sprintf("@wcluster-notify-test-%d-%d", os.Getpid(), time.Now().UnixNano()))
	if err := Notify(StateReady); err != nil {
		t.Fatal(err)
	}
	if got := readNotify(t, c); got != StateReady {
		t.Fatalf("got %q, want %q", got, StateReady)
	}
}

// TestNotifyReloading: RELOADING=1 carries the CLOCK_MONOTONIC time of the
// send, in microseconds.
func TestNotifyReloading(t *testing.T) {
	c := notifyListener(t, filepath.Join(t.TempDir(), "notify.sock"))
	before := monotonicUsec()
	if err := Notify(StateReloading()); err != nil {
		t.Fatal(err)
	}
	after := monotonicUsec()
	lines := strings.Split(readNotify(t, c), "\n")
	if len(lines) != 2 || lines[0] != "RELOADING=1" || !strings.HasPrefix(lines[1], "MONOTONIC_USEC=") {
		t.Fatalf("got %q, want RELOADING=1 and MONOTONIC_USEC=", lines)
	}
	usec, err := strconv.ParseInt(strings.TrimPrefix(lines[1], "MONOTONIC_USEC="), 10, 64)
	if err != nil || usec < before || usec > after || before <= 0 {
		t.Fatalf("MONOTONIC_USEC=%d (%v), want within [%d, %d]", usec, err, before, after)
	}
}

func TestNotifyErrors(t *testing.T) {
	t.Setenv(EnvNotifySocket, "vsock:2:1234")
	if err := Notify(StateReady); err == nil || !strings.Contains(err.Error(), "only unix socket") {
		t.Fatalf("unsupported address: got %v", err)
	}
	t.Setenv(EnvNotifySocket, filepath.Join(t.TempDir(), "absent.sock"))
	if err := Notify(StateReady); err == nil {
		t.Fatal("no socket at the path: want an error")
	}
}
