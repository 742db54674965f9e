package dispatch

// The shared policy's balance: every worker of a shared group sees, at the
// moment it could accept, how many connections each of the others holds,
// and leaves a new connection to a less loaded one. The kernel wakes every
// worker waiting on the listening socket; without this, whichever is
// scheduled first takes it, and under keep-alive one worker ends up with
// most connections for their whole life.

import (
	"fmt"
	"os"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// loadSlots is the table's size: slot 0 holds the number of worker slots
// in use, slot i the open connections of worker i.
const loadSlots = 1024

// loadTable is a table of counters in memory shared by the master and the
// workers of a group (a memfd each maps).
type loadTable struct {
	mem []byte
	c   *[loadSlots]atomic.Int64
}

// newLoadTable makes the table in the master; f is what the workers get.
func newLoadTable() (*loadTable, *os.File, error) {
	fd, err := unix.MemfdCreate("wcluster-load", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, nil, os.NewSyscallError("memfd_create", err)
	}
	f := os.NewFile(uintptr(fd), "wcluster-load")
	if err := f.Truncate(loadSlots * 8); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("load table: %w", err)
	}
	t, err := mapLoadTable(f)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return t, f, nil
}

// mapLoadTable maps the table of f.
func mapLoadTable(f *os.File) (*loadTable, error) {
	mem, err := unix.Mmap(int(f.Fd()), 0, loadSlots*8, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, os.NewSyscallError("mmap load table", err)
	}
	// A mapping is page-aligned: every counter is 8-byte aligned.
	return &loadTable{mem: mem, c: (*[loadSlots]atomic.Int64)(unsafe.Pointer(&mem[0]))}, nil
}

func (t *loadTable) close() {
	if t != nil {
		unix.Munmap(t.mem)
	}
}

// setWorkers records how many worker slots the group has.
func (t *loadTable) setWorkers(n int) { t.c[0].Store(int64(min(n, loadSlots-1))) }

// add changes worker id's count.
func (t *loadTable) add(id int, d int64) {
	if id > 0 && id < loadSlots {
		t.c[id].Add(d)
	}
}

// reset zeroes worker id's count: a worker that exited closed what it held
// (the master resets its slot when reaping it), and a new one starts empty.
func (t *loadTable) reset(id int) {
	if id > 0 && id < loadSlots {
		t.c[id].Store(0)
	}
}

// crowded reports whether worker id holds clearly more connections than
// the least loaded worker of the group: more than four plus an eighth
// over. (One over made short connections, whose counts swing by a few
// every moment, wait for a yield at almost every accept: a third of their
// rate.)
func (t *loadTable) crowded(id int) bool {
	n := int(t.c[0].Load())
	if n < 2 || id < 1 || id > n {
		return false
	}
	mine := t.c[id].Load()
	least := mine
	for i := 1; i <= n; i++ {
		if v := t.c[i].Load(); i != id && v < least {
			least = v
		}
	}
	return mine > least+4+least/8
}

// yieldPatience bounds how long a crowded worker leaves a pending
// connection to the others before taking it itself (they may be busy, or
// stopped): a little latency at worst, never a connection left waiting.
const yieldPatience = 2 * time.Millisecond

// yield waits, while worker id is crowded and a connection is pending on
// the listening socket fd, for a less loaded worker to take it, up to
// yieldPatience. With nothing pending it returns at once: a worker coming
// back to accept must not sleep before connections that arrive later
// (each would wait for it: short connections lost half their rate).
func (t *loadTable) yield(id int, fd int) {
	for waited := time.Duration(0); waited < yieldPatience && t.crowded(id) && pending(fd); waited += 200 * time.Microsecond {
		time.Sleep(200 * time.Microsecond)
	}
}

// pending reports whether a connection waits on the listening socket fd.
func pending(fd int) bool {
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(p, 0)
	return err == nil && n > 0 && p[0].Revents&unix.POLLIN != 0
}
