package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// listener is a listening TCP socket driven by raw non-blocking accept4,
// waiting for readiness in Go's netpoller through an *os.File.
type listener struct {
	f      *os.File // keeps the fd alive; closing it stops accept
	closed atomic.Bool
	rc     syscall.RawConn
	addr   *net.TCPAddr
}

// listenTCP binds addr ("host:port", empty host = every address, dual-stack
// where IPv6 exists). With listen false the socket is only bound, which
// reserves the port without joining a SO_REUSEPORT group.
func listenTCP(addr string, backlog int, reuseport, listen bool) (*listener, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("listen address %q: %w (want host:port, e.g. :8000)", addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return nil, fmt.Errorf("listen address %q: bad port %q", addr, portStr)
	}
	var ips []net.IP
	if host == "" {
		ips = []net.IP{net.IPv6unspecified, net.IPv4zero}
	} else if ip := net.ParseIP(host); ip != nil {
		ips = []net.IP{ip}
	} else {
		resolved, err := net.LookupIP(host)
		if err != nil {
			return nil, fmt.Errorf("listen address %q: %w", addr, err)
		}
		ips = resolved
	}
	var first error
	for _, ip := range ips {
		l, err := bindTCP(ip, port, backlog, reuseport, listen, host == "")
		if err == nil {
			return l, nil
		}
		if first == nil {
			first = err
		}
		if errors.Is(err, unix.EADDRINUSE) || errors.Is(err, unix.EACCES) {
			break
		}
	}
	if errors.Is(first, unix.EADDRINUSE) {
		return nil, fmt.Errorf("listen %s: address already in use: stop the server on that port or choose another --listen", addr)
	}
	if errors.Is(first, unix.EACCES) {
		return nil, fmt.Errorf("listen %s: permission denied: ports below 1024 need privileges; choose another --listen", addr)
	}
	return nil, fmt.Errorf("listen %s: %w", addr, first)
}

func bindTCP(ip net.IP, port, backlog int, reuseport, listen, dual bool) (*listener, error) {
	family := unix.AF_INET6
	var sa unix.Sockaddr
	if ip4 := ip.To4(); ip4 != nil && !(dual && ip.Equal(net.IPv6unspecified)) {
		family = unix.AF_INET
		s := &unix.SockaddrInet4{Port: port}
		copy(s.Addr[:], ip4)
		sa = s
	} else {
		s := &unix.SockaddrInet6{Port: port}
		copy(s.Addr[:], ip.To16())
		sa = s
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	fail := func(op string, err error) (*listener, error) {
		unix.Close(fd)
		return nil, os.NewSyscallError(op, err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return fail("setsockopt", err)
	}
	if reuseport {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return fail("setsockopt", err)
		}
	}
	if family == unix.AF_INET6 && dual {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
			return fail("setsockopt", err)
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		return fail("bind", err)
	}
	if listen {
		if err := unix.Listen(fd, backlog); err != nil {
			return fail("listen", err)
		}
	}
	return newListener(os.NewFile(uintptr(fd), "listener"))
}

// newListener wraps a listening (or bound) socket file.
func newListener(f *os.File) (*listener, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	l := &listener{f: f, rc: rc}
	var sa unix.Sockaddr
	var serr error
	if err := rc.Control(func(fd uintptr) { sa, serr = unix.Getsockname(int(fd)) }); err != nil || serr != nil {
		f.Close()
		return nil, fmt.Errorf("getsockname: %v %v", err, serr)
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		l.addr = &net.TCPAddr{IP: net.IP(a.Addr[:]).To16(), Port: a.Port}
	case *unix.SockaddrInet6:
		l.addr = &net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}
	default:
		f.Close()
		return nil, fmt.Errorf("listener is not a TCP socket")
	}
	return l, nil
}

// accept waits for and accepts one connection, as acceptBatch.
func (l *listener) accept() (int, error) {
	fds, err := l.acceptBatch(make([]int, 0, 1), 1, nil)
	if err != nil {
		return -1, err
	}
	return fds[0], nil
}

// acceptBatch appends to fds the connections waiting in the backlog, at
// least one (it waits in the poller for the first) and at most most: each
// a non-blocking, close-on-exec fd. It calls before (if not nil) before
// each accept: a shared worker's chance to leave the connection to another
// (loadTable.yield). It returns an error wrapping os.ErrClosed once the
// listener is closed. Errors that belong to one connection (the peer gave
// up, a network error pending on it) are skipped; any other error, such as
// running out of descriptors (EMFILE), is returned for the caller to pause
// on (see acceptPause): the listener stays usable. An error after the
// first connection ends the batch and comes back with the next call.
func (l *listener) acceptBatch(fds []int, most int, before func(fd int)) ([]int, error) {
	for {
		var aerr error
		err := l.rc.Read(func(fd uintptr) bool {
			for len(fds) < most {
				if before != nil {
					before(int(fd))
				}
				nfd, e := accept4(int(fd))
				if e != nil {
					aerr = e
					break
				}
				fds = append(fds, nfd)
			}
			return len(fds) > 0 || aerr != unix.EAGAIN
		})
		if len(fds) > 0 {
			return fds, nil
		}
		if err != nil {
			if l.closed.Load() {
				return fds, os.ErrClosed
			}
			return fds, err
		}
		if retryAccept(aerr) {
			continue
		}
		return fds, os.NewSyscallError("accept4", aerr)
	}
}

// retryAccept reports whether an accept that failed with err should just
// be made again. accept(2): Linux passes a new connection's pending network
// error on from accept; retry as for EAGAIN. EPERM: a firewall rule refused
// that connection.
func retryAccept(err error) bool {
	switch err {
	case unix.ECONNABORTED, unix.EINTR, unix.EPROTO, unix.ENETDOWN, unix.ENOPROTOOPT, unix.EHOSTDOWN,
		unix.ENONET, unix.EHOSTUNREACH, unix.EOPNOTSUPP, unix.ENETUNREACH, unix.EPERM, unix.ETIMEDOUT:
		return true
	}
	return false
}

// acceptPause paces an accept loop through errors that last (out of
// descriptors or memory, or anything unexpected), as nginx does for EMFILE:
// stop accepting on that listener for a moment, longer while the error
// persists, so the loop neither spins nor gives up. An episode is logged
// when it starts and when it ends (acceptQuiet without a failure), with how
// many accepts failed, however long it lasts: at the edge of the limit,
// where each freed descriptor lets one accept through, it is one episode.
// Its owner is one accept loop.
type acceptPause struct {
	log         *slog.Logger
	addr        string
	onPause     func() // called once per episode (a counter), may be nil
	failures    int
	first, last time.Time
	delay       time.Duration
	progress    bool // an accept worked since the last failure
}

const (
	acceptPauseMin = 100 * time.Millisecond
	acceptPauseMax = time.Second
	acceptQuiet    = 5 * time.Second
)

// failed records err and waits before the next accept; false when ctx ended.
func (a *acceptPause) failed(ctx context.Context, err error) bool {
	now := time.Now()
	if a.failures > 0 && now.Sub(a.last) >= acceptQuiet {
		a.end(now)
	}
	switch {
	case a.failures == 0:
		a.first = now
		a.delay = acceptPauseMin
		msg := "accept failed; pausing accepts on this listener until it works again"
		if resourceErr(err) {
			msg = "accept: out of file descriptors or memory; pausing accepts on this listener " +
				"(connections wait in the backlog) until some are freed; raise the limit (ulimit -n, LimitNOFILE=) if this recurs"
		}
		a.log.Error(msg, "listener", a.addr, "err", err)
		if a.onPause != nil {
			a.onPause()
		}
	case a.progress:
		a.delay = acceptPauseMin
	default:
		a.delay = min(a.delay*2, acceptPauseMax)
	}
	a.failures++
	a.last = now
	a.progress = false
	t := time.NewTimer(a.delay)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// ok notes an accept that worked; it ends an episode gone quiet.
func (a *acceptPause) ok() {
	if a.failures == 0 {
		return
	}
	a.progress = true
	if now := time.Now(); now.Sub(a.last) >= acceptQuiet {
		a.end(now)
	}
}

func (a *acceptPause) end(now time.Time) {
	a.log.Warn("accepting again", "listener", a.addr, "failed_accepts", a.failures,
		"episode", a.last.Sub(a.first).Round(time.Millisecond))
	a.failures = 0
}

// resourceErr reports whether err is a shortage of descriptors, buffers or
// memory: the process's or the system's, not the connection's.
func resourceErr(err error) bool {
	return errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) || errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.ENOMEM)
}

// dup is another listener on the same socket (a descriptor of its own, so
// either may be closed first).
func (l *listener) dup() (*listener, error) {
	var fd int
	var derr error
	if err := l.rc.Control(func(f uintptr) { fd, derr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0) }); err != nil || derr != nil {
		return nil, fmt.Errorf("duplicate the socket on %s: %v %v", l.addr, err, derr)
	}
	return newListener(os.NewFile(uintptr(fd), l.f.Name()))
}

// deferAcceptSecs is how long the kernel holds a connection that has sent
// nothing on a listener with DeferAccept: then it is handed over all the
// same (Linux accepts it on the client's answer to the handshake's
// retransmission), and the first-byte timeout takes it from there.
const deferAcceptSecs = 1

// setDeferAccept makes the kernel hand over l's new connections only once
// their first bytes arrived (TCP_DEFER_ACCEPT), or at once (on false).
func (l *listener) setDeferAccept(on bool) error {
	secs := 0
	if on {
		secs = deferAcceptSecs
	}
	var serr error
	if err := l.rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, secs)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("listener %s: set TCP_DEFER_ACCEPT: %w", l.addr, serr)
	}
	return nil
}

func (l *listener) close() error {
	l.closed.Store(true)
	return l.f.Close()
}

// accept4 accepts one connection, non-blocking and close-on-exec, asking
// for no peer address: unix.Accept4 decodes one, which for TCP costs a
// getsockopt(SO_PROTOCOL) system call per connection that nobody here reads.
// On a non-blocking listener accept4 never waits, so it is made without
// telling the Go scheduler a system call is under way: the accept loop's P
// is not handed to another thread when the kernel stretches the call.
func accept4(fd int) (int, error) {
	for {
		r, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(fd), 0, 0, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
		switch e {
		case 0:
			return int(r), nil
		case unix.EINTR:
			continue
		}
		return -1, e
	}
}

// closeNow closes a connection the master handed off, once the worker has
// its copy: without telling the Go scheduler a system call is under way, as
// accept4. When the worker has already closed its copy, this close is the
// last and does the TCP teardown, which can outlast the scheduler's 20 µs
// check; through the ordinary path the runtime then wakes another thread
// to take the P, and the master's monitor thread ran every 20 µs to do so
// (9% of the master's CPU under a stream of new connections). close never
// waits on a socket without SO_LINGER, which the master never sets.
func closeNow(fd int) {
	unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
}

// PacedListener wraps l, a listener of the master's that it does not
// dispatch (the admin endpoint's), so that running out of descriptors or
// memory pauses its accepts and is logged once per episode, as on the
// listeners it dispatches, instead of a line per failed accept. Its Accept
// is for one goroutine (net/http's Serve).
func PacedListener(ctx context.Context, l net.Listener, log *slog.Logger) net.Listener {
	return &pacedListener{Listener: l, ctx: ctx, pause: acceptPause{log: log, addr: l.Addr().String()}}
}

type pacedListener struct {
	net.Listener
	ctx   context.Context
	pause acceptPause
}

func (p *pacedListener) Accept() (net.Conn, error) {
	for {
		c, err := p.Listener.Accept()
		switch {
		case err == nil:
			p.pause.ok()
			return c, nil
		case !resourceErr(err) || !p.pause.failed(p.ctx, err):
			return nil, err
		}
	}
}
