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
	msgNewConn byte = 1 // master→worker: seq u64, listener u8, with one fd
	// 2 is unused (a single ack once; msgAcks answers every newconn).
	msgDone      byte = 3 // worker→master: count u32 connections finished
	msgReady     byte = 4 // worker→master: serving
	msgHeartbeat byte = 5 // worker→master: JSON workerReport
	msgFatal     byte = 6 // worker→master: the reason it cannot serve, text
	// msgAcks answers several newconns at once and carries the connections
	// finished since the last report: done u32, then seq u64 and answer
	// u8 per newconn. msgDone carries the connections finished between
	// batches.
	msgAcks byte = 7
)

// maxAcks bounds the newconns one msgAcks answers.
const maxAcks = 64

// A worker's answer to one newconn (the byte after its seq). A worker takes
// every connection whose fd arrives; the only other answer is starved.
const (
	ackAccepted byte = 1 // taken: the master closes its copy
	// ackStarved: its fd did not arrive (the worker is out of
	// descriptors); the master gives it to another worker, or holds it,
	// and sends this one nothing more until it has room again.
	ackStarved byte = 2
)

// newConnMsg is the newconn message for connection seq from listener lis.
func newConnMsg(seq uint64, lis int) [10]byte {
	var msg [10]byte
	msg[0] = msgNewConn
	binary.LittleEndian.PutUint64(msg[1:], seq)
	msg[9] = byte(lis)
	return msg
}

// appendAck appends one newconn's answer to a msgAcks message.
func appendAck(b []byte, seq uint64, answer byte) []byte {
	b = binary.LittleEndian.AppendUint64(b, seq)
	return append(b, answer)
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

// sendNow is send without waiting: a full channel (the worker is not
// reading: hung, stopped, or far behind) is EAGAIN, not a wait, so one
// worker cannot stall the master's accept loop.
func (ch *channel) sendNow(msg []byte, fd int) error {
	rc, err := ch.c.SyscallConn()
	if err != nil {
		return err
	}
	var oob []byte
	if fd >= 0 {
		oob = unix.UnixRights(fd)
	}
	var serr error
	if err := rc.Write(func(s uintptr) bool {
		serr = unix.Sendmsg(int(s), msg, oob, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		return true
	}); err != nil {
		return err
	}
	if serr != nil {
		return os.NewSyscallError("sendmsg", serr)
	}
	return nil
}

// recv reads one message into buf and returns it with the fds it carried.
// On any error every received fd is closed. A message whose fds did not
// all arrive (MSG_CTRUNC: the receiver is out of descriptors) is returned
// whole, without fds, with errTruncated: it costs that message's fds, not
// the channel.
func (ch *channel) recv(buf, oob []byte) ([]byte, []int, error) {
	n, oobn, flags, _, err := ch.c.ReadMsgUnix(buf, oob)
	return received(buf, oob, n, oobn, flags, err)
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
		err = errEOF
	case flags&unix.MSG_CTRUNC != 0:
		closeAll(fds)
		return buf[:n], nil, errTruncated
	}
	if err != nil {
		closeAll(fds)
		return nil, nil, err
	}
	return buf[:n], fds, nil
}

// errTruncated: a message arrived without (all of) its fds, which the
// kernel closed. The message itself is intact.
var errTruncated = errors.New("channel: fds of a message not received (MSG_CTRUNC: out of file descriptors?)")

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
	msg, fds, err = received(buf, oob, n, oobn, flags, rerr)
	return msg, fds, msg != nil, err
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
