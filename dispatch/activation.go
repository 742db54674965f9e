package dispatch

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// systemd socket activation (sd_listen_fds(3)): a service manager that
// started this process with listening sockets says so with
//
//	LISTEN_PID=<this pid>  LISTEN_FDS=<n>  LISTEN_FDNAMES=<name>:<name>...
//
// and the sockets are fds 3 .. 3+n-1, in the order of the socket unit's
// ListenStream= lines. The master then serves those sockets instead of
// binding --listen; workers get them exactly as they would get bound ones.

// activate gives the groups of cfgs the sockets systemd passed, if any
// (first is listenFDsStart but in tests). A server without groups (one
// group, unnamed: `wcluster serve HANDLER`) serves the passed sockets
// instead of its --listen, in their order. With a configuration, each
// passed socket serves the configured listener with its address (its port,
// and its IP or both unspecified), whatever the order of ListenStream=;
// a socket no listener has is refused (a silent mismatch would serve one
// group's tenants on another's port), and listeners no socket has are
// bound as usual.
func activate(cfgs []Config, first int, log *slog.Logger) error {
	sched := cfgs[0].Sched
	lis, err := socketActivation(first, sched, log)
	if err != nil || lis == nil {
		return err
	}
	if len(cfgs) == 1 && cfgs[0].Name == "" {
		if len(lis) > maxListeners {
			closeAll(lis)
			return fmt.Errorf("socket activation passed %d sockets: at most %d", len(lis), maxListeners)
		}
		cfgs[0].Listen = make([]string, len(lis))
		for i, l := range lis {
			cfgs[0].Listen[i] = l.addr.String()
		}
		cfgs[0].inherited = lis
		return nil
	}
	for i := range cfgs {
		cfgs[i].inherited = make([]*listener, len(cfgs[i].Listen))
	}
	var configured []string
	for _, c := range cfgs {
		configured = append(configured, c.Listen...)
	}
	for n, l := range lis {
		placed := false
		for i := range cfgs {
			for j, a := range cfgs[i].Listen {
				if cfgs[i].inherited[j] == nil && sameListenAddr(a, l.addr) {
					cfgs[i].inherited[j], placed = l, true
					break
				}
			}
			if placed {
				break
			}
		}
		if !placed {
			closeAll(lis)
			for i := range cfgs {
				cfgs[i].inherited = nil
			}
			return fmt.Errorf("socket activation: the socket on %s (fd %d, %q) is no listener of the configuration (%s): make the socket unit's ListenStream= and the tenants' listen name the same addresses",
				l.addr, first+n, l.f.Name(), strings.Join(configured, ", "))
		}
	}
	return nil
}

// sameListenAddr reports whether a configured listen address ("host:port",
// ":port") names the bound address a.
func sameListenAddr(configured string, a net.Addr) bool {
	bound, ok := a.(*net.TCPAddr)
	if !ok {
		return false
	}
	c, err := net.ResolveTCPAddr("tcp", configured)
	if err != nil || c.Port != bound.Port {
		return false
	}
	if c.IP == nil || c.IP.IsUnspecified() {
		return bound.IP.IsUnspecified()
	}
	return c.IP.Equal(bound.IP)
}

func closeAll(lis []*listener) {
	for _, l := range lis {
		l.close()
	}
}

// closeInherited closes the passed sockets of groups not started.
func closeInherited(cfgs []Config) {
	for _, c := range cfgs {
		for _, l := range c.inherited {
			if l != nil {
				l.close()
			}
		}
	}
}

// Environment variables of the socket activation protocol.
const (
	envListenPID     = "LISTEN_PID"
	envListenFDs     = "LISTEN_FDS"
	envListenFDNames = "LISTEN_FDNAMES"
)

// listenFDsStart is the first inherited fd (SD_LISTEN_FDS_START).
const listenFDsStart = 3

// socketActivation returns the listening sockets systemd passed to this
// process, or nil (and no error) when it was not socket-activated. It
// consumes the LISTEN_* variables (they are unset, whether or not they were
// meant for this process), so workers never see them. The sockets must be
// TCP stream sockets in the listening state; they are made non-blocking and
// close-on-exec. reuseport cannot use them: its workers bind their own
// sockets, and a listening socket held by the master would join their
// SO_REUSEPORT group and queue connections nobody accepts.
// first is where the sockets start: listenFDsStart, but for tests, which
// pass sockets without touching fd 3.
func socketActivation(first int, sched Sched, log *slog.Logger) ([]*listener, error) {
	n, names, err := listenEnv(os.Getpid())
	if err != nil || n == 0 {
		return nil, err
	}
	if sched == SchedReusePort {
		return nil, fmt.Errorf("socket activation: systemd passed %d listening socket(s), but --sched reuseport binds a socket in each worker: use --sched rr or shared with a socket unit, or run without the socket unit", n)
	}
	fds := make([]int, n)
	for i := range fds {
		fds[i] = first + i
	}
	lis, err := inheritedListeners(fds, names)
	if err != nil {
		return nil, err
	}
	if log != nil {
		addrs := make([]string, len(lis))
		for i, l := range lis {
			addrs[i] = l.addr.String()
		}
		log.Info("serving the sockets systemd passed (socket activation) instead of binding them",
			"addrs", strings.Join(addrs, ","), "fds", n, "names", strings.Join(names, ":"))
	}
	return lis, nil
}

// listenEnv reads and unsets the LISTEN_* variables. It returns how many
// sockets were passed to the process pid (0 when none, or when they were
// meant for another process) and their names (nil when LISTEN_FDNAMES is
// unset).
func listenEnv(pid int) (n int, names []string, err error) {
	pidStr, pidSet := os.LookupEnv(envListenPID)
	fdsStr := os.Getenv(envListenFDs)
	namesStr, namesSet := os.LookupEnv(envListenFDNames)
	os.Unsetenv(envListenPID)
	os.Unsetenv(envListenFDs)
	os.Unsetenv(envListenFDNames)
	if !pidSet {
		return 0, nil, nil
	}
	p, err := strconv.Atoi(strings.TrimSpace(pidStr))
	if err != nil || p <= 0 {
		return 0, nil, fmt.Errorf("socket activation: bad %s=%q", envListenPID, pidStr)
	}
	if p != pid {
		return 0, nil, nil // for a parent that did not consume them
	}
	n, err = strconv.Atoi(strings.TrimSpace(fdsStr))
	if err != nil || n < 0 {
		return 0, nil, fmt.Errorf("socket activation: bad %s=%q", envListenFDs, fdsStr)
	}
	if n == 0 {
		return 0, nil, nil
	}
	if namesSet {
		names = strings.Split(namesStr, ":")
		if len(names) != n {
			return 0, nil, fmt.Errorf("socket activation: %s=%d but %s names %d sockets (%q)", envListenFDs, n, envListenFDNames, len(names), namesStr)
		}
	}
	return n, names, nil
}

// inheritedListeners checks each fd is an open TCP stream socket in the
// listening state, makes it non-blocking and close-on-exec, and wraps it.
// names, if not nil, name the fds in errors. On error the listeners already
// wrapped are closed; fds that failed the checks are left alone, as they
// may not be sockets systemd passed (LISTEN_FDS could overstate them).
func inheritedListeners(fds []int, names []string) ([]*listener, error) {
	var lis []*listener
	for i, fd := range fds {
		l, err := inheritedListener(fd, names, i)
		if err != nil {
			for _, l := range lis {
				l.close()
			}
			what := fmt.Sprintf("fd %d", fd)
			if names != nil && names[i] != "" {
				what += fmt.Sprintf(" (%q)", names[i])
			}
			return nil, fmt.Errorf("socket activation: %s: %w", what, err)
		}
		lis = append(lis, l)
	}
	return lis, nil
}

func inheritedListener(fd int, names []string, i int) (*listener, error) {
	if err := checkListening(fd); err != nil {
		return nil, err
	}
	// Before os.NewFile: a non-blocking fd is put in Go's netpoller.
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, os.NewSyscallError("fcntl", err)
	}
	unix.CloseOnExec(fd)
	name := "listener"
	if names != nil && names[i] != "" {
		name = names[i]
	}
	return newListener(os.NewFile(uintptr(fd), name))
}

// checkListening tells why fd cannot be served, or nil.
func checkListening(fd int) error {
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
		if errors.Is(err, unix.EBADF) {
			return errors.New("not open: the socket unit passed fewer sockets than LISTEN_FDS says")
		}
		return os.NewSyscallError("fcntl", err)
	}
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		if errors.Is(err, unix.ENOTSOCK) {
			return errors.New("not a socket")
		}
		return os.NewSyscallError("getsockopt SO_TYPE", err)
	}
	if typ != unix.SOCK_STREAM {
		return fmt.Errorf("not a stream socket (SO_TYPE %d): use ListenStream= in the socket unit", typ)
	}
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return os.NewSyscallError("getsockopt SO_DOMAIN", err)
	}
	if domain != unix.AF_INET && domain != unix.AF_INET6 {
		return fmt.Errorf("not a TCP socket (address family %d): use a host:port or port ListenStream=", domain)
	}
	acc, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	if err != nil {
		return os.NewSyscallError("getsockopt SO_ACCEPTCONN", err)
	}
	if acc == 0 {
		return errors.New("not a listening socket (Accept=yes passes connections; wcluster needs Accept=no)")
	}
	return nil
}
