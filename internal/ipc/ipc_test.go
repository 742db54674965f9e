package ipc_test

import (
	"errors"
	"os"
	"testing"

	"github.com/wcluster/wcluster/internal/ipc"
	"golang.org/x/sys/unix"
)

// TestTruncatedFDMessageKeepsChannel: a message whose fd cannot be received
// (here: no room for it in the control buffer, which the kernel reports
// as MSG_CTRUNC, as it does when the receiver is out of descriptors) is
// returned whole with ipc.ErrTruncated, and the channel goes on: the next
// message and its fd arrive.
func TestTruncatedFDMessageKeepsChannel(t *testing.T) {
	master, child, err := ipc.SocketPair()
	if err != nil {
		t.Fatal(err)
	}
	defer master.Close()
	worker, err := ipc.NewChannel(child)
	if err != nil {
		t.Fatal(err)
	}
	defer worker.Close()

	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, seq := range []uint64{1, 2} {
		msg := ipc.NewConnMsg(seq, 0)
		if err := master.Send(msg[:], int(f.Fd())); err != nil {
			t.Fatal(err)
		}
	}

	buf := make([]byte, 64)
	msg, fds, err := worker.Recv(buf, make([]byte, unix.CmsgSpace(0)))
	if !errors.Is(err, ipc.ErrTruncated) || len(fds) != 0 || len(msg) != 10 || msg[0] != ipc.MsgNewConn || msg[1] != 1 {
		t.Fatalf("truncated message: %v, fds %v, msg %v; want message 1 whole, no fd, ipc.ErrTruncated", err, fds, msg)
	}
	msg, fds, ok, err := worker.TryRecv(buf, make([]byte, unix.CmsgSpace(4)))
	if err != nil || !ok || len(fds) != 1 || len(msg) != 10 || msg[1] != 2 {
		t.Fatalf("next message: %v, ok %v, fds %v, msg %v; want message 2 with its fd", err, ok, fds, msg)
	}
	ipc.CloseAll(fds)
}
