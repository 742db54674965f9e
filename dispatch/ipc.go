package dispatch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// Message types on a worker's channel; the first byte of every message.
const (
	msgNewConn   byte = 1 // master→worker: seq u64, listener u8, with one fd
	msgAck       byte = 2 // worker→master: seq u64, accepted u8
	msgDone      byte = 3 // worker→master: count u32 connections finished
	msgReady     byte = 4 // worker→master: serving
	msgHeartbeat byte = 5 // worker→master: JSON workerReport
	msgFatal     byte = 6 // worker→master: the reason it cannot serve, text
	// msgAcks answers several newconns at once and carries the connections
	// finished since the last report: done u32, then seq u64 and accepted
	// u8 per newconn. (msgAck and msgDone stay understood.)
	msgAcks byte = 7
)

// maxAcks bounds the newconns one msgAcks answers.
const maxAcks = 64

// appendAck appends one newconn's answer to a msgAcks message.
func appendAck(b []byte, seq uint64, accepted bool) []byte {
	b = binary.LittleEndian.AppendUint64(b, seq)
	if accepted {
		return append(b, 1)
	}
	return append(b, 0)
}

// Inherited fd numbers in a worker.
const (
	fdChannel  = 3 // the SEQPACKET channel to the master
	fdListener = 6 // the first shared listening socket (policy shared); see spawn.go
)

// channel is one end of a SOCK_SEQPACKET socket pair: every send is one
// message, delivered whole and in order, with its fd if any.
type channel struct {
	c *net.UnixConn
}

func newChannel(f *os.File) (*channel, error) {
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
	return &channel{c: uc}, nil
}

// socketPair returns the master's and the worker's ends of a new channel.
func socketPair() (*channel, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, os.NewSyscallError("socketpair", err)
	}
	ch, err := newChannel(os.NewFile(uintptr(fds[0]), "channel"))
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, err
	}
	return ch, os.NewFile(uintptr(fds[1]), "channel"), nil
}

// send writes one message, passing fd along when fd >= 0.
func (ch *channel) send(msg []byte, fd int) error {
	var oob []byte
	if fd >= 0 {
		oob = unix.UnixRights(fd)
	}
	_, _, err := ch.c.WriteMsgUnix(msg, oob, nil)
	return err
}

// recv reads one message into buf and returns it with the fds it carried.
// On any error every received fd is closed.
func (ch *channel) recv(buf, oob []byte) ([]byte, []int, error) {
	n, oobn, flags, _, err := ch.c.ReadMsgUnix(buf, oob)
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
	if err == nil && flags&unix.MSG_CTRUNC != 0 {
		err = errors.New("channel: control message truncated")
	}
	if err == nil && n == 0 {
		err = errEOF
	}
	if err != nil {
		closeAll(fds)
		return nil, nil, err
	}
	return buf[:n], fds, nil
}

// tryRecv is recv without waiting: ok is false when no message is there.
func (ch *channel) tryRecv(buf, oob []byte) (msg []byte, fds []int, ok bool, err error) {
	rc, err := ch.c.SyscallConn()
	if err != nil {
		return nil, nil, false, err
	}
	var n, oobn, flags int
	var rerr error
	if err := rc.Read(func(fd uintptr) bool {
		n, oobn, flags, _, rerr = unix.Recvmsg(int(fd), buf, oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
		return true
	}); err != nil {
		return nil, nil, false, err
	}
	if rerr == unix.EAGAIN {
		return nil, nil, false, nil
	}
	if oobn > 0 {
		if scms, perr := unix.ParseSocketControlMessage(oob[:oobn]); perr == nil {
			for _, scm := range scms {
				if got, err := unix.ParseUnixRights(&scm); err == nil {
					fds = append(fds, got...)
				}
			}
		}
	}
	switch {
	case rerr != nil:
		err = rerr
	case flags&unix.MSG_CTRUNC != 0:
		err = errors.New("channel: control message truncated")
	case n == 0:
		err = errEOF
	}
	if err != nil {
		closeAll(fds)
		return nil, nil, false, err
	}
	return buf[:n], fds, true, nil
}

var errEOF = errors.New("channel: end of stream")

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// closeWrite half-closes the channel: the peer reads every message already
// sent, then end of stream. It is how the master tells a worker to drain.
func (ch *channel) closeWrite() error { return ch.c.CloseWrite() }

func (ch *channel) close() error { return ch.c.Close() }

func putSeq(b []byte, typ byte, seq uint64) []byte {
	b = append(b[:0], typ)
	return binary.LittleEndian.AppendUint64(b, seq)
}
