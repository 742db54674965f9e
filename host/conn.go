package host

import (
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wcluster/wcluster/abi"
)

// conn is the host's side of one connection.
type conn struct {
	f    *os.File
	rc   syscall.RawConn
	id   int64
	opts *Options

	pending  []byte      // bytes pushed back with conn_unread
	wclosed  bool        // conn_close_write was called
	deadline time.Time   // end of the current call's time limit, if any
	rdl      bool        // a read deadline is set on f
	woken    atomic.Bool // Drain asked this connection to finish
	parked   atomic.Bool // waiting in park, holding no instance
}

func newConn(f *os.File, id int64, o *Options) (*conn, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	return &conn{f: f, rc: rc, id: id, opts: o}, nil
}

func (c *conn) close() { c.f.Close() }

// earliest returns the sooner of now+d (if d > 0) and the call's deadline.
func (c *conn) earliest(d time.Duration) time.Time {
	var t time.Time
	if d > 0 {
		t = time.Now().Add(d)
	}
	if !c.deadline.IsZero() && (t.IsZero() || c.deadline.Before(t)) {
		t = c.deadline
	}
	return t
}

// read implements conn_read: n > 0, 0 at end of stream, or an ABI error.
func (c *conn) read(p []byte) int32 {
	if len(p) == 0 {
		return 0
	}
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return int32(n)
	}
	if t := c.earliest(c.opts.ReadTimeout); !t.IsZero() || c.rdl {
		c.f.SetReadDeadline(t)
		c.rdl = !t.IsZero()
	}
	n, err := c.f.Read(p)
	if n > 0 {
		return int32(n)
	}
	return ioCode(err)
}

// write implements conn_write: all of p, or an ABI error.
func (c *conn) write(p []byte) int32 {
	if c.wclosed {
		return abi.ErrShutdown
	}
	if len(p) == 0 {
		return 0
	}
	if t := c.earliest(c.opts.WriteTimeout); !t.IsZero() {
		c.f.SetWriteDeadline(t)
		defer c.f.SetWriteDeadline(time.Time{})
	}
	if _, err := c.f.Write(p); err != nil {
		return ioCode(err)
	}
	return int32(len(p))
}

func ioCode(err error) int32 {
	switch {
	case err == nil, errors.Is(err, io.EOF):
		return 0
	case errors.Is(err, os.ErrDeadlineExceeded):
		return abi.ErrTimeout
	}
	return abi.ErrClosed
}

// closeWrite implements conn_close_write.
func (c *conn) closeWrite() int32 {
	var serr error
	err := c.rc.Control(func(fd uintptr) { serr = unix.Shutdown(int(fd), unix.SHUT_WR) })
	if err != nil || serr != nil {
		return abi.ErrClosed
	}
	c.wclosed = true
	return 0
}

// unread implements conn_unread.
func (c *conn) unread(p []byte) int32 {
	if len(c.pending)+len(p) > abi.MaxUnread {
		return abi.ErrTooLarge
	}
	buf := make([]byte, 0, len(p)+len(c.pending))
	buf = append(buf, p...)
	c.pending = append(buf, c.pending...)
	return 0
}

// peerAddr returns the peer's address as text.
func (c *conn) peerAddr() string {
	var sa unix.Sockaddr
	var serr error
	if err := c.rc.Control(func(fd uintptr) { sa, serr = unix.Getpeername(int(fd)) }); err != nil || serr != nil {
		return ""
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return (&net.TCPAddr{IP: a.Addr[:], Port: a.Port}).String()
	case *unix.SockaddrInet6:
		return (&net.TCPAddr{IP: a.Addr[:], Port: a.Port}).String()
	case *unix.SockaddrUnix:
		return a.Name
	}
	return ""
}

// park waits, holding no instance, until the peer sends more bytes or
// closes, the idle timeout passes, or Drain wakes it. It reports false when
// the connection should simply be closed (idle timeout or error).
func (c *conn) park() bool {
	var t time.Time
	if c.opts.IdleTimeout > 0 {
		t = time.Now().Add(c.opts.IdleTimeout)
	}
	c.parked.Store(true)
	defer c.parked.Store(false)
	c.f.SetReadDeadline(t)
	c.rdl = !t.IsZero()
	// Checked after the deadline is set: a wake from here on moves it.
	if c.woken.Load() {
		c.f.SetReadDeadline(time.Time{})
		c.rdl = false
		return true
	}
	var peek [1]byte
	err := c.rc.Read(func(fd uintptr) bool {
		_, _, err := unix.Recvfrom(int(fd), peek[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		return err != unix.EAGAIN
	})
	if err != nil {
		// Woken by Drain (a deadline in the past) or idle for too long.
		c.f.SetReadDeadline(time.Time{})
		c.rdl = false
		return c.woken.Load()
	}
	return true
}

// wake interrupts park; Drain calls it from another goroutine. A call in
// progress is not disturbed: it sees FlagDraining on its next call, or park
// returns at once.
func (c *conn) wake() {
	c.woken.Store(true)
	if c.parked.Load() {
		c.f.SetReadDeadline(time.Unix(1, 0))
	}
}

// hasData reports whether a read would return at once with bytes.
func (c *conn) hasData() bool {
	if len(c.pending) > 0 {
		return true
	}
	var peek [1]byte
	n := 0
	c.rc.Control(func(fd uintptr) {
		n, _, _ = unix.Recvfrom(int(fd), peek[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	})
	return n > 0
}
