package host

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wcluster/wcluster/abi"
)

// conn is the host's side of one connection.
//
// A plaintext connection is read and written straight on f. When the host
// terminates TLS, tls.tc (built on f) carries every read and write, and
// parking reads through it too: decrypted bytes may sit buffered inside it,
// where a wait on the raw socket would not see them. (The TLS state hangs
// off a pointer: a plaintext conn need not carry it.)
type conn struct {
	// nIn and nOut count the bytes the handler read and wrote (the
	// access log's).
	nIn, nOut int64

	f   *os.File
	rc  syscall.RawConn
	tls *tlsState // nil for plaintext
	// fd is the socket while f is nil. A connection from Handler.serveFD
	// starts without f: one whose request is there when it is accepted and
	// whose answer fits the socket's buffer is served and closed without
	// ever entering Go's poller (no fcntl, no epoll_ctl to add and remove
	// it, a close outside the scheduler). file makes f when the connection
	// must wait; hasFile then says so to other goroutines (shed).
	fd      int
	hasFile atomic.Bool
	id      int64
	h       *Handler
	// route is set on a routed listener (router.go): each request is
	// routed by its own Host, and a call is given its own request only.
	route *routing

	pending  []byte      // bytes read ahead by park, or pushed back with conn_unread
	lent     *[]byte     // the pooled buffer pending views, if any
	unseen   int         // the last unseen bytes of pending: read ahead, not yet read by the guest
	progress bool        // the guest read something during the current call
	deadline time.Time   // end of the current call's time limit, if any
	woken    atomic.Bool // Drain asked this connection to finish
	parked   atomic.Bool // waiting in park, holding no instance
	wclosed  bool        // conn_close_write was called
	rdl      bool        // a read deadline is set on f
	// idleAt is the read deadline park set on f (zero once another
	// replaced it); lastActive is when the last call ended. park moves the
	// deadline only when it has passed, not per request: a connection is
	// idle once lastActive is IdleTimeout old.
	idleAt, lastActive time.Time

	// awaiting is awaitNone, awaitWaiting (for a first byte: in
	// Handler.awaiting) or awaitShed. partialSince is when the incomplete
	// message the guest pushed back began to wait (zero if none):
	// PartialTimeout counts from it; wrote says the guest wrote since the
	// connection last waited.
	awaiting     atomic.Int32
	partialSince time.Time
	wrote        bool

	// The wait loop of a plaintext connection (serveLoop). The functions
	// given to the RawConn are bound once per connection (a closure made
	// per call would be an allocation per request).
	ctx             context.Context
	flags           int32 // for the next call
	stalls          int   // calls in a row that left read-ahead bytes unread
	writeFn, stepFn func(fd uintptr) bool
	ioBuf           []byte // writeFd's argument
	ioN             int    // and results
	ioErr           error
	readFn          func(fd uintptr) bool // fileRead's, with its own argument and results
	rBuf            []byte
	rN              int
	rErr            error
	inLoop          bool     // in step, inside rc.Read: f's read lock is held
	stepFd          int      // the descriptor step was given, while inLoop
	needRead        bool     // step reads before the next call
	drained         bool     // the last read left nothing in the socket
	ended           bool     // a read found the end of the stream (or an error)
	endCode         int32    // what conn_read then returns: 0 or ErrClosed
	exit            loopExit // why step ended rc.Read
	slow            *os.File // a dup of f, for conn_read to wait on in step
}

// A connection's wait for its first byte (conn.awaiting).
const (
	awaitNone    int32 = iota // not waiting: called, or speaks first
	awaitWaiting              // in Handler.awaiting
	awaitShed                 // closed to keep FirstByteLimit
)

// loopExit is why step ended the wait loop's rc.Read.
type loopExit int

const (
	exitClose loopExit = iota // the connection is done
	exitWoken                 // Drain woke it
)

// tlsState is a TLS connection's: the session, and what park reads into
// (lent to pending).
type tlsState struct {
	tc  *tls.Conn
	buf []byte
}

func newConn(f *os.File, id int64, h *Handler) (*conn, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	return newConnOn(f, rc, nil, id, h), nil
}

func newConnOn(f *os.File, rc syscall.RawConn, tls *tlsState, id int64, h *Handler) *conn {
	c := &conn{f: f, rc: rc, tls: tls, id: id, h: h, fd: -1}
	c.hasFile.Store(f != nil)
	c.writeFn, c.stepFn, c.readFn = c.writeFd, c.step, c.readFd
	return c
}

// newConnFD is a plaintext connection given as its descriptor, without f
// until it must wait (file).
func newConnFD(fd int, id int64, h *Handler) *conn {
	c := &conn{id: id, h: h, fd: fd}
	c.writeFn, c.stepFn, c.readFn = c.writeFd, c.step, c.readFd
	return c
}

// file makes f from fd, putting the socket in Go's poller, if it is not made
// yet: before anything that may wait or that needs a deadline.
func (c *conn) file() {
	if c.f != nil {
		return
	}
	c.f = os.NewFile(uintptr(c.fd), "conn") // non-blocking (accept4): polled
	c.rc, _ = c.f.SyscallConn()             // fails only for a nil f
	c.fd = -1
	c.hasFile.Store(true)
}

// control runs fn on the socket: through rc once there is f.
func (c *conn) control(fn func(fd uintptr)) error {
	if c.f == nil {
		fn(uintptr(c.fd))
		return nil
	}
	return c.rc.Control(fn)
}

// readFd reads rBuf once, without waiting (false: it would block).
func (c *conn) readFd(fd uintptr) bool {
	for {
		c.rN, c.rErr = rawRead(int(fd), c.rBuf)
		if c.rErr != unix.EINTR {
			return c.rErr != unix.EAGAIN
		}
	}
}

// fileRead is f.Read of a plaintext connection — waiting in the poller,
// under f's read deadline — with the read itself made as rawRead makes it.
func (c *conn) fileRead(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rBuf = p
	err := c.rc.Read(c.readFn)
	c.rBuf = nil
	if err != nil {
		return 0, err
	}
	return c.readResult()
}

// readResult is what readFd read, as Read returns it.
func (c *conn) readResult() (int, error) {
	switch {
	case c.rErr != nil:
		return 0, c.rErr
	case c.rN == 0:
		return 0, io.EOF
	}
	return c.rN, nil
}

// writeFd writes ioBuf once, without waiting.
func (c *conn) writeFd(fd uintptr) bool {
	c.ioN, c.ioErr = rawWrite(int(fd), c.ioBuf)
	return true
}

// giveBack returns the buffer park lent to pending once nothing views it.
func (c *conn) giveBack() {
	if c.lent != nil {
		c.h.bufs.Put(c.lent)
		c.lent = nil
	}
}

func (c *conn) close() {
	c.pending = nil
	c.giveBack()
	if c.slow != nil {
		c.slow.Close()
	}
	// Under rr the master keeps its copy until the ack (Options.HandedOff):
	// the FIN is sent here, not left to the last close. (A routed conn
	// refused at once has no h.)
	handedOff := c.h != nil && c.h.opts.HandedOff
	if c.tls != nil {
		if handedOff {
			c.tls.tc.CloseWrite() // close_notify first
			c.control(func(fd uintptr) { rawShutdown(int(fd)) })
		}
		// Sends close_notify (within tls's own 5s write deadline) unless
		// sent, then closes f.
		c.tls.tc.Close()
		return
	}
	if c.f == nil && c.fd < 0 {
		return // another owner has the socket (a hijacked http-wasm conn)
	}
	if handedOff {
		c.control(func(fd uintptr) { rawShutdown(int(fd)) })
	}
	if c.f == nil {
		rawClose(c.fd)
		c.fd = -1
		return
	}
	c.f.Close()
}

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
		c.unseen = min(c.unseen, len(c.pending))
		c.progress = true
		c.nIn += int64(n)
		if len(c.pending) == 0 {
			c.pending = nil
			c.giveBack()
		}
		return int32(n)
	}
	if c.ended {
		return c.endCode
	}
	if c.route != nil && c.route.frame == frameDone {
		if !c.route.past(c) {
			return 0 // the end of this call's request
		}
		return c.read(p)
	}
	var n int
	var err error
	switch {
	case c.inLoop:
		n, err = c.readInLoop(p)
	case c.tls != nil:
		c.setReadDeadline()
		n, err = c.tls.tc.Read(p)
	default:
		if c.f == nil {
			// A WASI command's stdin without f: what has arrived is read
			// without the poller; only a read that must wait makes f.
			c.rBuf = p
			ready := c.readFd(uintptr(c.fd))
			c.rBuf = nil
			if ready {
				n, err = c.readResult()
				break
			}
		}
		c.setReadDeadline()
		n, err = c.fileRead(p)
	}
	if n > 0 {
		c.drained = n < len(p)
		if c.route != nil {
			n = c.route.cut(p[:n])
		}
		c.progress = true
		c.nIn += int64(n)
		return int32(n)
	}
	return ioCode(err)
}

// setReadDeadline bounds a read of the guest's on f by the read timeout and
// the call's deadline.
func (c *conn) setReadDeadline() {
	c.file()
	if t := c.earliest(c.h.opts.ReadTimeout); !t.IsZero() || c.rdl {
		c.f.SetReadDeadline(t)
		c.rdl = !t.IsZero()
		c.idleAt = time.Time{}
	}
}

// readInLoop is conn_read's wait in step, where f's read lock is held: it
// reads through a dup of f, with a poll descriptor of its own. It is made
// on the first such read only: a request that arrives whole never needs it.
func (c *conn) readInLoop(p []byte) (int, error) {
	slow, err := c.slowFile()
	if err != nil {
		return 0, err
	}
	slow.SetReadDeadline(c.earliest(c.h.opts.ReadTimeout))
	return slow.Read(p)
}

// slowFile returns the dup of f that reads in step wait on.
func (c *conn) slowFile() (*os.File, error) {
	c.file()
	if c.slow == nil {
		var fd int
		var derr error
		if err := c.rc.Control(func(f uintptr) { fd, derr = unix.Dup(int(f)) }); err != nil || derr != nil {
			return nil, net.ErrClosed // reported as ERR_CLOSED
		}
		unix.CloseOnExec(fd)
		c.slow = os.NewFile(uintptr(fd), "conn") // non-blocking, as f: polled
	}
	return c.slow, nil
}

// write implements conn_write: all of p, or an ABI error.
func (c *conn) write(p []byte) int32 {
	if c.wclosed {
		return abi.ErrShutdown
	}
	if len(p) == 0 {
		return 0
	}
	c.wrote = true
	if c.route != nil && c.route.upgrade {
		c.route.wrote(p)
	}
	all := int32(len(p))
	if c.tls == nil {
		// An answer that fits the socket's buffer, as most do, takes one
		// non-blocking write and no deadline: only one that would block
		// sets it and waits.
		c.ioBuf = p
		var err error
		switch {
		case c.f == nil:
			c.writeFd(uintptr(c.fd))
		case c.inLoop:
			// In step the descriptor is held open (rc.Read's reference,
			// or f made in this step, closed only by this goroutine) and
			// this goroutine is its only writer: rc.Write's locks and
			// checks would guard against nothing.
			c.writeFd(uintptr(c.stepFd))
		default:
			err = c.rc.Write(c.writeFn)
		}
		c.ioBuf = nil
		if err != nil {
			return ioCode(err)
		}
		n, werr := c.ioN, c.ioErr
		switch {
		case werr == nil && n == len(p):
			c.nOut += int64(all)
			return all
		case werr != nil && werr != unix.EAGAIN && werr != unix.EINTR:
			return abi.ErrClosed
		case n > 0:
			p = p[n:]
		}
	}
	c.file() // the rest waits
	if t := c.earliest(c.h.opts.WriteTimeout); !t.IsZero() {
		c.f.SetWriteDeadline(t)
		defer c.f.SetWriteDeadline(time.Time{})
	}
	var err error
	if c.tls != nil {
		_, err = c.tls.tc.Write(p)
	} else {
		_, err = c.f.Write(p)
	}
	if err != nil {
		return ioCode(err)
	}
	c.nOut += int64(all)
	return all
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
	if c.tls != nil && !c.wclosed {
		// close_notify first: the peer then knows the stream ended whole.
		if err := c.tls.tc.CloseWrite(); err != nil {
			return abi.ErrClosed
		}
	}
	var serr error
	err := c.control(func(fd uintptr) { serr = unix.Shutdown(int(fd), unix.SHUT_WR) })
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
	c.giveBack() // pending no longer views it
	return 0
}

// peerAddr returns the peer's address as text.
func (c *conn) peerAddr() string {
	var sa unix.Sockaddr
	var serr error
	if err := c.control(func(fd uintptr) { sa, serr = unix.Getpeername(int(fd)) }); err != nil || serr != nil {
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

// serveLoop serves a plaintext connection after its first call, all in
// one rc.Read: step runs each call inside it, and returns false to wait for
// readability. Going back to the wait without leaving rc.Read keeps the
// poller's readiness news from before the wait, so after a read that left
// the socket empty, step waits without first reading to find nothing (a
// new rc.Read forgets that news, so it must read first): one read and one
// write per kept-alive request. rc.Read ends with an error at a deadline:
// the idle timeout, or Drain's wake.
//
// A connection without f (newConnFD) is stepped once outside rc.Read: its
// first request, there already under deferred accept, is read, answered
// and, with Connection: close, closed without the poller. A step that must
// wait, or that Drain woke, has made f (wait); rc.Read's step then reads
// once more before it waits. (Not reading would save a read per connection,
// and lose a request: epoll's EPOLL_CTL_ADD reports bytes that arrived after
// the read that found the socket empty, but if the poller takes that news
// before rc.Read begins, rc.Read's reset of the descriptor's readiness
// forgets it, and with edge-triggered epoll no more comes.)
func (c *conn) serveLoop() {
	c.needRead = c.unseen == 0 // (a routed request read ahead comes first)
	for {
		var err error
		if c.f == nil {
			if !c.step(uintptr(c.fd)) {
				c.inLoop = false
				continue // wait made f: the wait is rc.Read's
			}
		} else {
			err = c.rc.Read(c.stepFn)
		}
		c.inLoop = false
		if err == nil && c.exit == exitClose {
			return
		}
		if err != nil && !c.woken.Load() {
			// Idle for good, unless it was busy since the deadline was set;
			// or the socket failed.
			if !errors.Is(err, os.ErrDeadlineExceeded) || !c.rearm() {
				c.clearReadDeadline()
				return
			}
			c.needRead = true // the news from before is gone: read first
			continue
		}
		// Woken by Drain: served once more only if the peer sent more.
		c.clearReadDeadline()
		if !c.hasData() {
			return
		}
		c.needRead = true
	}
}

// step is serveLoop's function for rc.Read: read what arrived, call the
// guest, and again, until the socket is empty (false: wait) or the
// connection is done or woken (true, with exit saying which).
func (c *conn) step(fd uintptr) bool {
	c.parked.Store(false)
	c.inLoop, c.stepFd = true, int(fd)
	for {
		if c.needRead {
			bp := c.h.bufs.Get().(*[]byte)
			n, err := rawRead(int(fd), *bp)
			if err == unix.EAGAIN || err == unix.EINTR {
				c.h.bufs.Put(bp)
				if err == unix.EINTR {
					continue
				}
				return c.wait()
			}
			c.needRead = false
			switch {
			case n > 0:
				if len(c.pending) == 0 {
					c.pending, c.lent = (*bp)[:n], bp
				} else {
					c.pending = append(c.pending, (*bp)[:n]...)
					c.h.bufs.Put(bp)
				}
				c.unseen += n
				c.drained = n < len(*bp)
				if c.route != nil {
					c.route.arrived(c, n)
				}
			default:
				// End of stream or an error: the guest is called and finds
				// out on its next read.
				c.h.bufs.Put(bp)
				c.ended = true
				if err != nil {
					c.endCode = abi.ErrClosed
				}
			}
		}
		if !c.h.turn(c) || c.ended {
			// (A guest that keeps a connection whose stream has ended
			// would be called again for nothing.)
			c.exit = exitClose
			return true
		}
		if c.unseen > 0 {
			continue // the guest left read-ahead bytes: call it again
		}
		c.needRead = true
		if c.drained {
			return c.wait()
		}
	}
}

// wait readies step's return to the wait for readability, holding no
// instance: it sets the idle deadline (only when the one set before has
// passed, not per request), and reports true (exit: woken) if Drain asked
// the connection to finish.
func (c *conn) wait() bool {
	c.file() // (before parked: wake uses f once it sees parked)
	c.parked.Store(true)
	c.inLoop = false
	switch {
	case c.flags&abi.FlagNew != 0:
		// Waiting for the first byte: one deadline, from the accept. (idleAt
		// stays zero: the first request sets the idle deadline.)
		if t := c.h.opts.FirstByteTimeout; t > 0 && !c.rdl {
			c.f.SetReadDeadline(c.lastActive.Add(t))
			c.rdl = true
		}
		// Checked after the deadline is set: a shed from here on moves it.
		if c.awaiting.Load() == awaitShed {
			c.parked.Store(false)
			c.exit = exitClose
			return true
		}
	case len(c.pending) > 0 && c.h.opts.PartialTimeout > 0:
		// An incomplete message waits (rare: a fragmented or trickled
		// request, a pipelined tail): its own, sooner, deadline.
		c.idleAt = c.partialLimit()
		c.f.SetReadDeadline(c.idleAt)
		c.rdl = true
	default:
		c.partialSince = time.Time{}
		if idle := c.h.opts.IdleTimeout; idle > 0 && (c.idleAt.IsZero() || !c.idleAt.After(c.lastActive)) {
			c.idleAt = c.lastActive.Add(idle)
			c.f.SetReadDeadline(c.idleAt)
			c.rdl = true
		}
	}
	c.wrote = false
	// Checked after the deadline is set: a wake from here on moves it.
	if c.woken.Load() {
		if by, ok := c.drainGrace(); ok {
			c.f.SetReadDeadline(by)
			c.idleAt, c.rdl = by, true
			return false
		}
		c.parked.Store(false)
		c.exit = exitWoken
		return true
	}
	return false
}

// partialLimit is when the incomplete message waiting in pending must be
// complete, or the idle deadline if that comes first. The message counts
// from the end of the call that last wrote: a guest that answered a
// request and pushed back the start of the next has made progress.
func (c *conn) partialLimit() time.Time {
	if c.partialSince.IsZero() || c.wrote {
		c.partialSince = c.lastActive
	}
	t := c.partialSince.Add(c.h.opts.PartialTimeout)
	if idle := c.h.opts.IdleTimeout; idle > 0 && c.lastActive.Add(idle).Before(t) {
		t = c.lastActive.Add(idle)
	}
	return t
}

// drainGrace returns when a woken connection's wait for the peer's next
// request ends, and false if that time has passed.
func (c *conn) drainGrace() (time.Time, bool) {
	by := c.h.drainDeadline()
	return by, time.Now().Before(by)
}

// rearm sets the wait's deadline again after it passed, if the connection
// was active since; it reports false if the connection has been idle for
// the whole IdleTimeout, its incomplete message for PartialTimeout, or it
// never sent a first byte.
func (c *conn) rearm() bool {
	if c.flags&abi.FlagNew != 0 {
		return false // the first-byte deadline (or a shed) is final
	}
	now := time.Now()
	var until time.Time
	if idle := c.h.opts.IdleTimeout; idle > 0 {
		until = c.lastActive.Add(idle)
	}
	if !c.partialSince.IsZero() && c.h.opts.PartialTimeout > 0 {
		p := c.partialSince.Add(c.h.opts.PartialTimeout)
		if !now.Before(p) {
			c.h.stats.partialTimeouts.Add(1)
			return false
		}
		if until.IsZero() || p.Before(until) {
			until = p
		}
	}
	if until.IsZero() || !now.Before(until) {
		return false
	}
	c.idleAt = until
	c.f.SetReadDeadline(until)
	return true
}

// arrived ends the wait for the first byte, just before the connection's
// first call. It reports false if the connection was shed meanwhile, or if
// the peer closed having sent nothing (no call is made for it).
func (c *conn) arrived() bool {
	if c.awaiting.Load() == awaitNone {
		return true // the module speaks first
	}
	if !c.awaiting.CompareAndSwap(awaitWaiting, awaitNone) {
		return false
	}
	c.h.nAwaiting.Add(-1)
	return !c.ended || len(c.pending) > 0
}

// awaitFirst waits, holding no instance, until a WASI command's connection
// has bytes to read (or its peer closed); false if it should be closed:
// shed, silent past FirstByteTimeout, or drained.
func (c *conn) awaitFirst() bool {
	if c.tls != nil {
		c.flags = abi.FlagNew // park's deadline is the first byte's
		ok := c.park()
		c.flags = 0
		if !ok || len(c.pending) == 0 && c.woken.Load() {
			return false
		}
		return c.arrived()
	}
	if c.f == nil {
		// From serveFD: a request there already (deferred accept) is served
		// without the poller; only a wait makes f.
		if c.awaiting.Load() == awaitShed {
			return false
		}
		if rawPeek(c.fd) {
			return c.arrived() // bytes, the end of the stream, or an error the read will meet
		}
		c.file()
	}
	var t time.Time
	if d := c.h.opts.FirstByteTimeout; d > 0 {
		t = c.lastActive.Add(d)
	}
	c.parked.Store(true)
	c.f.SetReadDeadline(t)
	if c.awaiting.Load() == awaitShed {
		c.parked.Store(false)
		c.clearReadDeadline()
		return false
	}
	if c.woken.Load() {
		by, ok := c.drainGrace()
		if !ok {
			c.parked.Store(false)
			c.clearReadDeadline()
			return false
		}
		c.f.SetReadDeadline(by)
	}
	var peek [1]byte
	var perr error
	err := c.rc.Read(func(fd uintptr) bool {
		_, _, perr = unix.Recvfrom(int(fd), peek[:], unix.MSG_PEEK)
		return perr != unix.EAGAIN
	})
	c.parked.Store(false)
	c.clearReadDeadline()
	if err != nil {
		return false
	}
	return c.arrived()
}

// park waits, holding no instance, until the peer of a TLS connection sends
// more bytes or closes, the idle timeout passes, or Drain wakes it. It
// reports false when the connection should simply be closed (idle timeout
// or error).
func (c *conn) park() bool {
	if c.unseen > 0 {
		// Bytes read ahead that the guest has not seen are waiting (it read
		// only part of them): call it again at once.
		return true
	}
	c.parked.Store(true)
	defer c.parked.Store(false)
	var t time.Time
	switch {
	case c.flags&abi.FlagNew != 0:
		if d := c.h.opts.FirstByteTimeout; d > 0 {
			t = c.lastActive.Add(d)
		}
	case len(c.pending) > 0 && c.h.opts.PartialTimeout > 0:
		t = c.partialLimit()
	default:
		c.partialSince = time.Time{}
		if idle := c.h.opts.IdleTimeout; idle > 0 {
			t = c.lastActive.Add(idle)
		}
	}
	c.wrote = false
	c.f.SetReadDeadline(t)
	c.rdl = !t.IsZero()
	// Checked after the deadline is set: a shed or a wake from here on
	// moves it.
	if c.awaiting.Load() == awaitShed {
		c.clearReadDeadline()
		return false
	}
	if c.woken.Load() {
		by, ok := c.drainGrace()
		if !ok {
			c.clearReadDeadline()
			return true
		}
		if t.IsZero() || by.Before(t) {
			c.f.SetReadDeadline(by)
			c.rdl = true
		}
	}
	return c.parkTLS()
}

func (c *conn) clearReadDeadline() {
	c.f.SetReadDeadline(time.Time{})
	c.rdl = false
	c.idleAt = time.Time{}
}

// tlsParkBuf is what a parked TLS connection reads at once: one TLS record's
// worth of plaintext, so the guest's first read after the wait gets the whole
// of a typical request.
const tlsParkBuf = 16 << 10

// parkTLS waits by reading through tc, which returns at once with plaintext
// tc already holds, and appends what it read to pending for the guest's next
// conn_read. The read deadline park set bounds it; Drain's wake moves it.
func (c *conn) parkTLS() bool {
	t := c.tls
	if len(c.pending) > 0 {
		// pending may be a view of buf, which the read below overwrites.
		c.pending = slices.Clone(c.pending)
	}
	if t.buf == nil {
		t.buf = make([]byte, tlsParkBuf)
	}
	n, err := t.tc.Read(t.buf)
	c.clearReadDeadline()
	if n > 0 {
		if len(c.pending) == 0 {
			c.pending = t.buf[:n]
		} else {
			c.pending = append(c.pending, t.buf[:n]...)
		}
		c.unseen += n
		if c.route != nil {
			c.route.arrived(c, n)
		}
		return true
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		// The drain's grace passed, or the wait's own deadline, or the
		// connection was shed.
		if !c.woken.Load() && !c.partialSince.IsZero() && c.h.opts.PartialTimeout > 0 &&
			!time.Now().Before(c.partialSince.Add(c.h.opts.PartialTimeout)) {
			c.h.stats.partialTimeouts.Add(1)
		}
		return c.woken.Load()
	}
	// End of stream or an error: the guest is called and finds out, as for
	// a plaintext connection (tc repeats the error on the next read).
	return true
}

// wake ends a parked connection's wait at the end of the drain's grace;
// Drain calls it from another goroutine. A call in progress is not
// disturbed: it sees FlagDraining on its next call, and the wait after it
// ends with the grace too.
func (c *conn) wake() {
	c.woken.Store(true)
	if c.parked.Load() {
		c.f.SetReadDeadline(c.h.drainDeadline())
	}
}

// hasData reports whether a read would return at once with bytes.
func (c *conn) hasData() bool {
	if len(c.pending) > 0 {
		return true
	}
	if c.tls != nil {
		// park read what had arrived into pending: nothing else is known
		// without a read that could wait.
		return false
	}
	var peek [1]byte
	n := 0
	c.control(func(fd uintptr) {
		n, _, _ = unix.Recvfrom(int(fd), peek[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	})
	return n > 0
}

// fileConn lets crypto/tls run on a connection's *os.File without a dup: a
// net.Conn whose deadline errors are net.Errors, so tls treats a timed-out
// read (a park woken by Drain, say) as temporary rather than fatal.
type fileConn struct{ f *os.File }

func (c fileConn) Read(p []byte) (int, error) {
	n, err := c.f.Read(p)
	return n, netError(err)
}

func (c fileConn) Write(p []byte) (int, error) {
	n, err := c.f.Write(p)
	return n, netError(err)
}

func netError(err error) error {
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		return os.ErrDeadlineExceeded // a net.Error whose Timeout is true
	}
	return err
}

func (c fileConn) Close() error                       { return c.f.Close() }
func (c fileConn) SetDeadline(t time.Time) error      { return c.f.SetDeadline(t) }
func (c fileConn) SetReadDeadline(t time.Time) error  { return c.f.SetReadDeadline(t) }
func (c fileConn) SetWriteDeadline(t time.Time) error { return c.f.SetWriteDeadline(t) }
func (c fileConn) LocalAddr() net.Addr                { return sockAddr(c.f, unix.Getsockname) }
func (c fileConn) RemoteAddr() net.Addr               { return sockAddr(c.f, unix.Getpeername) }

func sockAddr(f *os.File, get func(int) (unix.Sockaddr, error)) net.Addr {
	rc, err := f.SyscallConn()
	if err != nil {
		return &net.TCPAddr{}
	}
	var sa unix.Sockaddr
	rc.Control(func(fd uintptr) { sa, _ = get(int(fd)) })
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: a.Addr[:], Port: a.Port}
	case *unix.SockaddrInet6:
		return &net.TCPAddr{IP: a.Addr[:], Port: a.Port}
	case *unix.SockaddrUnix:
		return &net.UnixAddr{Name: a.Name, Net: "unix"}
	}
	return &net.TCPAddr{}
}
