package dispatch

import (
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// activationEnv sets the LISTEN_* variables for one test (restored after).
func activationEnv(t *testing.T, pid, fds, names string) {
	t.Helper()
	for k, v := range map[string]string{envListenPID: pid, envListenFDs: fds, envListenFDNames: names} {
		t.Setenv(k, v)
		if v == "" {
			os.Unsetenv(k)
		}
	}
}

func assertListenEnvUnset(t *testing.T) {
	t.Helper()
	for _, k := range []string{envListenPID, envListenFDs, envListenFDNames} {
		if v, ok := os.LookupEnv(k); ok {
			t.Errorf("%s=%q still set: workers would inherit it", k, v)
		}
	}
}

func fdOpen(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return err == nil
}

// placeFDs moves fds (as systemd would pass them: blocking, inheritable) to
// consecutive free numbers and returns the first, to pass socketActivation as if
// they were fds 3, 4, ... of a socket-activated process.
func placeFDs(t *testing.T, fds ...int) int {
	t.Helper()
	start := 200
	for ; start < 1000; start++ {
		free := true
		for i := range fds {
			if fdOpen(start + i) {
				free = false
				break
			}
		}
		if free {
			break
		}
	}
	for i, fd := range fds {
		if err := unix.Dup3(fd, start+i, 0); err != nil {
			t.Fatal(err)
		}
		unix.Close(fd)
		if err := unix.SetNonblock(start+i, false); err != nil {
			t.Fatal(err)
		}
	}
	return start
}

// tcpSocket returns a TCP socket bound to 127.0.0.1 on a free port,
// listening when listen is set.
func tcpSocket(t *testing.T, typ int, listen bool) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, typ, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if listen {
		if err := unix.Listen(fd, 16); err != nil {
			t.Fatal(err)
		}
	}
	return fd
}

func sockPort(t *testing.T, fd int) int {
	t.Helper()
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return sa.(*unix.SockaddrInet4).Port
}

func TestSocketActivationAbsent(t *testing.T) {
	activationEnv(t, "", "", "")
	lis, err := socketActivation(listenFDsStart, SchedRR, nil)
	if lis != nil || err != nil {
		t.Fatalf("not activated: got %v, %v", lis, err)
	}
	// LISTEN_FDS=0 is activation with nothing to serve: bind as usual.
	activationEnv(t, strconv.Itoa(os.Getpid()), "0", "")
	lis, err = socketActivation(listenFDsStart, SchedRR, nil)
	if lis != nil || err != nil {
		t.Fatalf("LISTEN_FDS=0: got %v, %v", lis, err)
	}
	assertListenEnvUnset(t)
}

// TestSocketActivationOtherPID: variables meant for another process (a
// parent that did not consume them) are ignored, and still unset.
func TestSocketActivationOtherPID(t *testing.T) {
	activationEnv(t, strconv.Itoa(os.Getpid()+1), "1", "http")
	lis, err := socketActivation(listenFDsStart, SchedRR, nil)
	if lis != nil || err != nil {
		t.Fatalf("LISTEN_PID of another process: got %v, %v", lis, err)
	}
	assertListenEnvUnset(t)
}

// TestSocketActivation: two inherited listening sockets come back in fd
// order, non-blocking and close-on-exec, and accept connections.
func TestSocketActivation(t *testing.T) {
	a, b := tcpSocket(t, unix.SOCK_STREAM, true), tcpSocket(t, unix.SOCK_STREAM, true)
	portA, portB := sockPort(t, a), sockPort(t, b)
	start := placeFDs(t, a, b)
	activationEnv(t, strconv.Itoa(os.Getpid()), "2", "http:alt")

	lis, err := socketActivation(start, SchedShared, nil)
	if err != nil {
		unix.Close(start)
		unix.Close(start + 1)
		t.Fatal(err)
	}
	for _, l := range lis {
		t.Cleanup(func() { l.close() })
	}
	assertListenEnvUnset(t)
	if len(lis) != 2 {
		t.Fatalf("want 2 listeners, got %d", len(lis))
	}
	for i, want := range []int{portA, portB} {
		l := lis[i]
		if l.addr.Port != want || !l.addr.IP.Equal(net.IPv4(127, 0, 0, 1)) {
			t.Errorf("listener %d: addr %v, want 127.0.0.1:%d", i, l.addr, want)
		}
		fd := start + i
		got := -1
		l.rc.Control(func(f uintptr) { got = int(f) }) // not l.f.Fd(): it would make the fd blocking
		if got != fd {
			t.Errorf("listener %d wraps fd %d, want %d", i, got, fd)
		}
		if fl, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); fl&unix.O_NONBLOCK == 0 {
			t.Errorf("fd %d is blocking", fd)
		}
		flags, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if flags&unix.FD_CLOEXEC == 0 {
			t.Errorf("fd %d is not close-on-exec: a worker would inherit it at a number it does not expect", fd)
		}
	}
	for i, l := range lis {
		c, err := net.DialTimeout("tcp", l.addr.String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		got := make(chan error, 1)
		go func() {
			fd, err := l.accept()
			if err == nil {
				unix.Close(fd)
			}
			got <- err
		}()
		select {
		case err := <-got:
			if err != nil {
				t.Fatalf("listener %d: accept: %v", i, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("listener %d: no connection accepted in 10s", i)
		}
	}
	// Accepting is driven by the netpoller (the fd is non-blocking): close
	// must end a pending accept.
	pending := make(chan error, 1)
	go func() { _, err := lis[0].accept(); pending <- err }()
	lis[0].close()
	select {
	case err := <-pending:
		if !errors.Is(err, os.ErrClosed) {
			t.Fatalf("accept after close: %v, want os.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("close did not end a pending accept in 10s: is the fd non-blocking?")
	}
}

func TestSocketActivationEnvErrors(t *testing.T) {
	pid := strconv.Itoa(os.Getpid())
	for _, tc := range []struct{ pid, fds, names, want string }{
		{"x", "1", "", "bad LISTEN_PID"},
		{pid, "", "", "bad LISTEN_FDS"},
		{pid, "one", "", "bad LISTEN_FDS"},
		{pid, "-1", "", "bad LISTEN_FDS"},
		{pid, "2", "http", "names 1 sockets"},
	} {
		activationEnv(t, tc.pid, tc.fds, tc.names)
		lis, err := socketActivation(listenFDsStart, SchedRR, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("LISTEN_PID=%q LISTEN_FDS=%q LISTEN_FDNAMES=%q: got %v, %v; want an error with %q",
				tc.pid, tc.fds, tc.names, lis, err, tc.want)
		}
		assertListenEnvUnset(t)
	}
}

// TestSocketActivationBadSockets: what is not a listening TCP stream socket
// is refused with a reason.
func TestSocketActivationBadSockets(t *testing.T) {
	unixListening := func(t *testing.T) int {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Bind(fd, &unix.SockaddrUnix{Name: t.TempDir() + "/s"}); err != nil {
			t.Fatal(err)
		}
		if err := unix.Listen(fd, 1); err != nil {
			t.Fatal(err)
		}
		return fd
	}
	pipe := func(t *testing.T) int {
		var p [2]int
		if err := unix.Pipe(p[:]); err != nil {
			t.Fatal(err)
		}
		unix.Close(p[1])
		return p[0]
	}
	for _, tc := range []struct {
		name string
		fd   func(t *testing.T) int
		want string
	}{
		{"udp", func(t *testing.T) int { return tcpSocket(t, unix.SOCK_DGRAM, false) }, "not a stream socket"},
		{"not-listening", func(t *testing.T) int { return tcpSocket(t, unix.SOCK_STREAM, false) }, "not a listening socket"},
		{"unix", unixListening, "not a TCP socket"},
		{"pipe", pipe, "not a socket"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := placeFDs(t, tc.fd(t))
			defer unix.Close(start) // refused fds are left open
			activationEnv(t, strconv.Itoa(os.Getpid()), "1", "web")
			lis, err := socketActivation(start, SchedRR, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), `"web"`) {
				t.Fatalf("got %v, %v; want an error naming \"web\" with %q", lis, err, tc.want)
			}
		})
	}
	t.Run("closed", func(t *testing.T) {
		start := placeFDs(t, tcpSocket(t, unix.SOCK_STREAM, true))
		unix.Close(start)
		activationEnv(t, strconv.Itoa(os.Getpid()), "1", "")
		lis, err := socketActivation(start, SchedRR, nil)
		if err == nil || !strings.Contains(err.Error(), "not open") {
			t.Fatalf("got %v, %v; want a 'not open' error", lis, err)
		}
	})
	t.Run("second-bad", func(t *testing.T) {
		// The first, good, listener is closed again when the second fails.
		start := placeFDs(t, tcpSocket(t, unix.SOCK_STREAM, true), tcpSocket(t, unix.SOCK_DGRAM, false))
		defer unix.Close(start + 1)
		activationEnv(t, strconv.Itoa(os.Getpid()), "2", "")
		lis, err := socketActivation(start, SchedRR, nil)
		if err == nil || !strings.Contains(err.Error(), "fd "+strconv.Itoa(start+1)) {
			t.Fatalf("got %v, %v; want an error about fd %d", lis, err, start+1)
		}
		if fdOpen(start) {
			unix.Close(start)
			t.Fatalf("fd %d, already wrapped, was left open", start)
		}
	})
}

// TestSocketActivationReusePort: reuseport cannot serve inherited sockets.
func TestSocketActivationReusePort(t *testing.T) {
	start := placeFDs(t, tcpSocket(t, unix.SOCK_STREAM, true))
	defer unix.Close(start)
	activationEnv(t, strconv.Itoa(os.Getpid()), "1", "")
	lis, err := socketActivation(start, SchedReusePort, nil)
	if err == nil || !strings.Contains(err.Error(), "reuseport") {
		t.Fatalf("got %v, %v; want an error about reuseport", lis, err)
	}
	assertListenEnvUnset(t)
}
