package dispatch

import (
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestTruncatedFDMessageKeepsChannel: a message whose fd cannot be received
// (here: no room for it in the control buffer, which the kernel reports
// as MSG_CTRUNC, as it does when the receiver is out of descriptors) is
// returned whole with errTruncated, and the channel goes on: the next
// message and its fd arrive.
func TestTruncatedFDMessageKeepsChannel(t *testing.T) {
	master, child, err := socketPair()
	if err != nil {
		t.Fatal(err)
	}
	defer master.close()
	worker, err := newChannel(child)
	if err != nil {
		t.Fatal(err)
	}
	defer worker.close()

	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, seq := range []uint64{1, 2} {
		msg := newConnMsg(seq, 0)
		if err := master.send(msg[:], int(f.Fd())); err != nil {
			t.Fatal(err)
		}
	}

	buf := make([]byte, 64)
	msg, fds, err := worker.recv(buf, make([]byte, unix.CmsgSpace(0)))
	if !errors.Is(err, errTruncated) || len(fds) != 0 || len(msg) != 10 || msg[0] != msgNewConn || msg[1] != 1 {
		t.Fatalf("truncated message: %v, fds %v, msg %v; want message 1 whole, no fd, errTruncated", err, fds, msg)
	}
	msg, fds, ok, err := worker.tryRecv(buf, make([]byte, unix.CmsgSpace(4)))
	if err != nil || !ok || len(fds) != 1 || len(msg) != 10 || msg[1] != 2 {
		t.Fatalf("next message: %v, ok %v, fds %v, msg %v; want message 2 with its fd", err, ok, fds, msg)
	}
	closeAll(fds)
}
