package ipc_test

import (
	"errors"
	"os"
	"testing"

	"github.com/wcluster/wcluster/internal/ipc"
	"golang.org/x/sys/unix"
)

// TestTruncatedFDMessageKeepsChannel: a message whose fds cannot all be
// received (here: room for one of three in the control buffer, which the
// kernel reports as MSG_CTRUNC, as it does when the receiver is out of
// descriptors) is returned whole, without fds, with ipc.ErrTruncated, and
// the channel goes on: the next message and its fds arrive, in order.
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

	var files []*os.File
	var fds []int
	for range 3 {
		f, err := os.CreateTemp(t.TempDir(), "fd") // distinct inodes
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		files = append(files, f)
		fds = append(fds, int(f.Fd()))
	}
	first := ipc.AppendNewConn(ipc.AppendNewConn(ipc.AppendNewConn([]byte{ipc.MsgNewConn}, 1, 0), 2, 0), 3, 1)
	second := ipc.AppendNewConn(ipc.AppendNewConn([]byte{ipc.MsgNewConn}, 4, 0), 5, 1)
	if err := master.SendNow(first, fds); err != nil {
		t.Fatal(err)
	}
	if err := master.SendNow(second, fds[1:]); err != nil {
		t.Fatal(err)
	}

	buf := make([]byte, 64)
	msg, got, err := worker.Recv(buf, make([]byte, unix.CmsgSpace(4)))
	if !errors.Is(err, ipc.ErrTruncated) || len(got) != 0 || len(msg) != 1+3*ipc.NewConnSize || msg[0] != ipc.MsgNewConn || msg[1] != 1 {
		t.Fatalf("truncated message: %v, fds %v, msg %v; want message 1 whole, no fd, ipc.ErrTruncated", err, got, msg)
	}
	msg, got, ok, err := worker.TryRecv(buf, make([]byte, unix.CmsgSpace(ipc.MaxNewConns*4)))
	if err != nil || !ok || len(got) != 2 || len(msg) != 1+2*ipc.NewConnSize || msg[1] != 4 || msg[1+ipc.NewConnSize] != 5 {
		t.Fatalf("next message: %v, ok %v, fds %v, msg %v; want message 2 with its two fds", err, ok, got, msg)
	}
	// The fds arrive in the order they were sent: the second is files[2].
	var want, have unix.Stat_t
	if err := unix.Fstat(int(files[2].Fd()), &want); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fstat(got[1], &have); err != nil || have.Ino != want.Ino || have.Dev != want.Dev {
		t.Fatalf("second fd: %v, inode %d; want the third file's (%d)", err, have.Ino, want.Ino)
	}
	ipc.CloseAll(got)
}
