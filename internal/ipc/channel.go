package ipc

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Channel is one end of a SOCK_SEQPACKET socket pair: every send is one
// message, delivered whole and in order, with its fd if any.
type Channel struct {
	c  *net.UnixConn
	rc syscall.RawConn // c's, for SendNow, Recv and TryRecv
}

// NewChannel makes a Channel of f (one end of a SOCK_SEQPACKET pair),
// which it takes over.
func NewChannel(f *os.File) (*Channel, error) {
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("channel: %w", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, errors.New("channel: not a unix socket")
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		uc.Close()
		return nil, fmt.Errorf("channel: %w", err)
	}
	return &Channel{c: uc, rc: rc}, nil
}

// SocketPair returns the master's and the worker's ends of a new channel.
func SocketPair() (*Channel, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, os.NewSyscallError("socketpair", err)
	}
	ch, err := NewChannel(os.NewFile(uintptr(fds[0]), "channel"))
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, err
	}
	return ch, os.NewFile(uintptr(fds[1]), "channel"), nil
}

// Send writes one message, passing fd along when fd >= 0; a full channel
// is waited out in the poller. The call itself is made as sendmsgNow
// makes it: a worker sends one per batch of new connections.
func (ch *Channel) Send(msg []byte, fd int) error {
	var oob []byte
	if fd >= 0 {
		oob = unix.UnixRights(fd)
	}
	return ch.send(msg, oob, true)
}

// SendNow is Send without waiting, passing fds (none when empty): a full
// channel (the worker is not reading: hung, stopped, or far behind) is
// EAGAIN, not a wait, so one worker cannot stall the master's accept loop.
func (ch *Channel) SendNow(msg []byte, fds []int) error {
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	return ch.send(msg, oob, false)
}

// send makes sendmsgNow on the channel, waiting in the poller while it is
// full if wait.
func (ch *Channel) send(msg, oob []byte, wait bool) error {
	var serr error
	if err := ch.rc.Write(func(s uintptr) bool {
		serr = sendmsgNow(int(s), msg, oob)
		return !wait || serr != unix.EAGAIN
	}); err != nil {
		return err
	}
	if serr != nil {
		return os.NewSyscallError("sendmsg", serr)
	}
	return nil
}

// sendmsgNow is sendmsg(2) with MSG_DONTWAIT, made without telling the Go
// scheduler a system call is under way: it never waits, and the master's
// accept loop makes one per connection, so the runtime need not hand its P
// to another thread when the kernel stretches the call (see
// host/rawio.go). The message and oob stay referenced by the caller for
// the call.
func sendmsgNow(s int, msg, oob []byte) error {
	_, _, _, err := msgNow(unix.SYS_SENDMSG, s, msg, oob, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
	return err
}

// msgNow makes sendmsg(2) or recvmsg(2) (trap) on s with one buffer and
// its control bytes as sendmsgNow does; flags must hold MSG_DONTWAIT. It
// returns the count and, for recvmsg, the control bytes' length and the
// message's flags as the kernel set them.
func msgNow(trap uintptr, s int, p, oob []byte, flags int) (n, oobn, mflags int, err error) {
	var iov unix.Iovec
	if len(p) > 0 {
		iov.Base = &p[0]
		iov.SetLen(len(p))
	}
	var h unix.Msghdr
	h.Iov, h.Iovlen = &iov, 1
	if len(oob) > 0 {
		h.Control = &oob[0]
		h.SetControllen(len(oob))
	}
	for {
		r, _, e := unix.RawSyscall(trap, uintptr(s), uintptr(unsafe.Pointer(&h)), uintptr(flags))
		switch e {
		case 0:
			return int(r), int(h.Controllen), int(h.Flags), nil
		case unix.EINTR:
			continue
		}
		return 0, 0, 0, e
	}
}

// Recv reads one message into buf and returns it with the fds it carried.
// On any error every received fd is closed. A message whose fds did not
// all arrive (MSG_CTRUNC: the receiver is out of descriptors) is returned
// whole, without fds, with ErrTruncated: it costs that message's fds, not
// the channel.
func (ch *Channel) Recv(buf, oob []byte) ([]byte, []int, error) {
	n, oobn, flags, err := ch.recv(buf, oob, true)
	return received(buf, oob, n, oobn, flags, err)
}

// recv makes recvmsgNow on the channel, waiting in the poller while it is
// empty if wait.
func (ch *Channel) recv(buf, oob []byte, wait bool) (n, oobn, flags int, err error) {
	if cerr := ch.rc.Read(func(fd uintptr) bool {
		n, oobn, flags, err = recvmsgNow(int(fd), buf, oob)
		return !wait || err != unix.EAGAIN
	}); cerr != nil {
		return 0, 0, 0, cerr
	}
	return n, oobn, flags, err
}

// recvmsgNow is recvmsg(2) with MSG_DONTWAIT (and close-on-exec for the
// fds it receives), made as sendmsgNow. Each side makes one per batch of
// new connections.
func recvmsgNow(s int, buf, oob []byte) (n, oobn, flags int, err error) {
	return msgNow(unix.SYS_RECVMSG, s, buf, oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
}

// received turns what recvmsg returned into a message and its fds.
func received(buf, oob []byte, n, oobn, flags int, err error) ([]byte, []int, error) {
	var fds []int
	if oobn > 0 {
		scms, perr := unix.ParseSocketControlMessage(oob[:oobn])
		if perr == nil {
			for _, scm := range scms {
				got, rerr := unix.ParseUnixRights(&scm)
				if rerr == nil {
					fds = append(fds, got...)
				}
			}
		}
	}
	switch {
	case err != nil:
	case n == 0:
		err = ErrEOF
	case flags&unix.MSG_CTRUNC != 0:
		CloseAll(fds)
		return buf[:n], nil, ErrTruncated
	}
	if err != nil {
		CloseAll(fds)
		return nil, nil, err
	}
	return buf[:n], fds, nil
}

// ErrTruncated: a message arrived without (all of) its fds, which the
// kernel closed. The message itself is intact.
var ErrTruncated = errors.New("channel: fds of a message not received (MSG_CTRUNC: out of file descriptors?)")

// TryRecv is Recv without waiting: ok is false when no message is there.
func (ch *Channel) TryRecv(buf, oob []byte) (msg []byte, fds []int, ok bool, err error) {
	n, oobn, flags, rerr := ch.recv(buf, oob, false)
	if rerr == unix.EAGAIN {
		return nil, nil, false, nil
	}
	msg, fds, err = received(buf, oob, n, oobn, flags, rerr)
	return msg, fds, msg != nil, err
}

// ErrEOF: the peer closed its side (or exited).
var ErrEOF = errors.New("channel: end of stream")

// CloseAll closes received fds.
func CloseAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// CloseWrite half-closes the channel: the peer reads every message already
// sent, then end of stream. It is how the master tells a worker to drain.
func (ch *Channel) CloseWrite() error { return ch.c.CloseWrite() }

// Close closes the channel.
func (ch *Channel) Close() error { return ch.c.Close() }
