// Command uring is the ceiling of an io_uring design, for bench/run.sh
// (server gouring): what bench/bare answers, served by one thread per
// process from one io_uring, so that a batch of receives, sends, accepts and
// closes costs one io_uring_enter instead of a system call each. It weighs
// the part of a request's cost that is the system call itself (about 1 µs
// on a paravirtualised guest) against the rest. Run one process per core
// (GOMAXPROCS=1) on one port (SO_REUSEPORT), as bench/bare. Linux ≥ 6.1
// (deferred task work, multishot receives into provided buffers); a process that cannot set up a ring (io_uring disabled, or blocked by a
// seccomp profile, as container runtimes' default profiles do) says so and
// exits 1.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

var (
	answer     = []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nhello world\n")
	lastAnswer = []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\nhello world\n")
)

// The kernel's ABI (include/uapi/linux/io_uring.h).
const (
	sysSetup    = 425
	sysEnter    = 426
	sysRegister = 427

	registerPbufRing  = 22
	sqeIOLink         = 1 << 2
	sqeBufferSelect   = 1 << 5
	sqeCQESkipSuccess = 1 << 6
	recvMultishot     = 1 << 1
	cqeFMore          = 1 << 1

	opAccept   = 13
	opClose    = 19
	opSend     = 26
	opRecv     = 27
	opShutdown = 34

	enterGetEvents    = 1
	setupSingleIssuer = 1 << 12
	setupDeferTaskrun = 1 << 13
	featSingleMmap    = 1
	offSQRing         = 0
	offSQEs           = 0x10000000
)

type sqringOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type cqringOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

type params struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
	resv                                                                   [3]uint32
	sqOff                                                                  sqringOffsets
	cqOff                                                                  cqringOffsets
}

type sqe struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	off         uint64
	addr        uint64
	len         uint32
	opFlags     uint32
	userData    uint64
	bufIndex    uint16
	personality uint16
	spliceFdIn  int32
	addr3       uint64
	_           uint64
}

type cqe struct {
	userData uint64
	res      int32
	flags    uint32
}

// ring is an io_uring's two queues, mapped.
type ring struct {
	fd                     int
	sqHead, sqTail, sqMask *uint32
	sqArray                []uint32
	sqes                   []sqe
	cqHead, cqTail, cqMask *uint32
	cqes                   []cqe
	queued                 uint32 // SQEs written since the last enter
	sqEntries              uint32
}

func newRing(entries uint32) (*ring, error) {
	// One thread submits, and the completions' work runs when it waits
	// for them (not as task work that interrupts it).
	p := params{flags: setupSingleIssuer | setupDeferTaskrun}
	fd, _, e := unix.Syscall(sysSetup, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if e != 0 {
		return nil, fmt.Errorf("io_uring_setup: %w", e)
	}
	if p.features&featSingleMmap == 0 {
		return nil, errors.New("io_uring without IORING_FEAT_SINGLE_MMAP (Linux < 5.4)")
	}
	size := max(p.sqOff.array+p.sqEntries*4, p.cqOff.cqes+p.cqEntries*uint32(unsafe.Sizeof(cqe{})))
	rb, err := unix.Mmap(int(fd), offSQRing, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("map the rings: %w", err)
	}
	sb, err := unix.Mmap(int(fd), offSQEs, int(p.sqEntries)*int(unsafe.Sizeof(sqe{})), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("map the submission entries: %w", err)
	}
	at := func(off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&rb[off])) }
	r := &ring{
		fd: int(fd), sqEntries: p.sqEntries,
		sqHead: at(p.sqOff.head), sqTail: at(p.sqOff.tail), sqMask: at(p.sqOff.ringMask),
		sqArray: unsafe.Slice(at(p.sqOff.array), p.sqEntries),
		sqes:    unsafe.Slice((*sqe)(unsafe.Pointer(&sb[0])), p.sqEntries),
		cqHead:  at(p.cqOff.head), cqTail: at(p.cqOff.tail), cqMask: at(p.cqOff.ringMask),
		cqes: unsafe.Slice((*cqe)(unsafe.Pointer(&rb[p.cqOff.cqes])), p.cqEntries),
	}
	for i := range r.sqArray {
		r.sqArray[i] = uint32(i)
	}
	return r, nil
}

// get returns the next free SQE, submitting what is queued first if the
// queue is full.
func (r *ring) get() *sqe {
	for {
		tail := *r.sqTail
		if tail-atomic.LoadUint32(r.sqHead) < r.sqEntries {
			s := &r.sqes[tail&*r.sqMask]
			*s = sqe{}
			atomic.StoreUint32(r.sqTail, tail+1)
			r.queued++
			return s
		}
		r.enter(0)
	}
}

// enter submits what is queued and waits for at least wait completions.
func (r *ring) enter(wait uint32) {
	for {
		flags := uintptr(0)
		if wait > 0 {
			flags = enterGetEvents
		}
		// A call that may wait goes through the scheduler, so the runtime
		// can take the P (the collector needs it).
		call := unix.RawSyscall6
		if wait > 0 {
			call = unix.Syscall6
		}
		n, _, e := call(sysEnter, uintptr(r.fd), uintptr(r.queued), uintptr(wait), flags, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e == 0 {
			r.queued -= uint32(n)
		}
		return
	}
}

// Provided buffers: the kernel picks one for each receive, so a receive
// armed once (multishot) keeps delivering without being submitted again.
const (
	bufGroup = 0
	nBufs    = 1024 // a power of two
	bufSize  = 4096
)

// bufRing is the provided-buffer ring shared with the kernel. The kernel
// writes into mem, a Go slice: the collector does not move it, and the
// server holds it for good.
type bufRing struct {
	entries []ioBuf // entries[0]'s last field is the ring's tail
	mem     []byte
	tail    uint16
}

type ioBuf struct {
	addr uint64
	len  uint32
	bid  uint16
	resv uint16
}

func (r *ring) provide() (*bufRing, error) {
	rb, err := unix.Mmap(-1, 0, nBufs*int(unsafe.Sizeof(ioBuf{})), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("map the buffer ring: %w", err)
	}
	b := &bufRing{entries: unsafe.Slice((*ioBuf)(unsafe.Pointer(&rb[0])), nBufs), mem: make([]byte, nBufs*bufSize)}
	reg := struct {
		ringAddr    uint64
		ringEntries uint32
		bgid, flags uint16
		resv        [3]uint64
	}{ringAddr: uint64(uintptr(unsafe.Pointer(&rb[0]))), ringEntries: nBufs, bgid: bufGroup}
	if _, _, e := unix.Syscall6(sysRegister, uintptr(r.fd), registerPbufRing, uintptr(unsafe.Pointer(&reg)), 1, 0, 0); e != 0 {
		return nil, fmt.Errorf("io_uring_register(PBUF_RING): %w", e)
	}
	for i := range nBufs {
		b.put(uint16(i))
	}
	return b, nil
}

// put gives buffer bid back to the kernel.
func (b *bufRing) put(bid uint16) {
	e := &b.entries[b.tail&(nBufs-1)]
	e.addr, e.len, e.bid = uint64(uintptr(unsafe.Pointer(&b.mem[int(bid)*bufSize]))), bufSize, bid
	b.tail++
	// The tail is the u16 at byte 14 of the ring. Go has no 16-bit atomic
	// store; on amd64 (the benchmark's) a plain one is atomic and stores are
	// seen in order, so the kernel sees the entry before the tail.
	*(*uint16)(unsafe.Pointer(uintptr(unsafe.Pointer(&b.entries[0])) + 14)) = b.tail
}

func (b *bufRing) get(bid uint16, n int32) []byte {
	return b.mem[int(bid)*bufSize : int(bid)*bufSize+int(n)]
}

// A connection's state; its index in conns is the user data of its SQEs,
// with the operation in the top byte.
type conn struct {
	fd      int32
	closing bool // answered with Connection: close: its receive's end closes it
	closed  bool // its close is queued
}

const acceptTag = 1<<63 - 1

func tag(op uint8, i int) uint64 { return uint64(op)<<56 | uint64(i) }

type server struct {
	r     *ring
	bufs  *bufRing
	lfd   int
	conns []conn
	free  []int
}

func (s *server) accept() {
	q := s.r.get()
	q.opcode, q.fd, q.opFlags, q.userData = opAccept, int32(s.lfd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, acceptTag
}

func (s *server) recv(i int) {
	q := s.r.get()
	q.opcode, q.fd, q.flags, q.ioprio, q.bufIndex, q.userData = opRecv, s.conns[i].fd, sqeBufferSelect, recvMultishot, bufGroup, tag(opRecv, i)
}

// send queues p (a static answer: it outlives the send), linked to what
// follows when link; with skip, a send that completes whole posts no
// completion.
func (s *server) send(i int, p []byte, link, skip bool) {
	q := s.r.get()
	q.opcode, q.fd, q.addr, q.len = opSend, s.conns[i].fd, uint64(uintptr(unsafe.Pointer(&p[0]))), uint32(len(p))
	q.opFlags, q.userData = unix.MSG_NOSIGNAL|unix.MSG_WAITALL, tag(opSend, i)
	if link {
		q.flags |= sqeIOLink
	}
	if skip {
		q.flags |= sqeCQESkipSuccess
	}
}

// shutdown ends both ways of the socket, and so its armed receive.
func (s *server) shutdown(i int) {
	q := s.r.get()
	q.opcode, q.fd, q.len, q.userData = opShutdown, s.conns[i].fd, unix.SHUT_RDWR, tag(opShutdown, i)
}

func (s *server) close(i int) {
	q := s.r.get()
	q.opcode, q.fd, q.userData = opClose, s.conns[i].fd, tag(opClose, i)
}

func (s *server) complete(c cqe) {
	if c.userData == acceptTag {
		s.accept()
		if c.res < 0 {
			return
		}
		var i int
		if n := len(s.free); n > 0 {
			i, s.free = s.free[n-1], s.free[:n-1]
		} else {
			i = len(s.conns)
			s.conns = append(s.conns, conn{})
		}
		s.conns[i] = conn{fd: c.res}
		s.recv(i)
		return
	}
	i := int(c.userData & (1<<56 - 1))
	switch uint8(c.userData >> 56) {
	case opRecv:
		more := c.flags&cqeFMore != 0
		cn := &s.conns[i]
		if c.res <= 0 || cn.closing {
			switch {
			case more:
			case c.res == -int32(unix.ENOBUFS) && !cn.closing:
				s.recv(i) // out of buffers for a moment: armed again
			case !cn.closed:
				cn.closed = true
				s.close(i)
			}
			if c.res > 0 {
				s.bufs.put(uint16(c.flags >> 16))
			}
			return
		}
		bid := uint16(c.flags >> 16)
		got := s.bufs.get(bid, c.res)
		closing := bytes.Contains(got, []byte("Connection: close"))
		n := bytes.Count(got, []byte("\r\n\r\n"))
		s.bufs.put(bid)
		if closing {
			// The answer, then the shutdown that ends the armed receive
			// (whose last completion closes: while armed it holds the
			// socket, which a close alone would not release), or the close
			// if it has ended. The send is linked to what follows and posts
			// its completion: after a linked request that skips its own, a
			// failure would skip the completions that follow it too.
			s.conns[i].closing = true
			s.send(i, lastAnswer, true, false)
			if more {
				s.shutdown(i)
			} else {
				s.conns[i].closed = true
				s.close(i)
			}
			return
		}
		for k := range n {
			s.send(i, answer, k < n-1, true)
		}
		if !more {
			s.recv(i)
		}
	case opSend, opShutdown:
		// Nothing to do: the receive's end closes the connection.
	case opClose:
		s.free = append(s.free, i)
	}
}

func (s *server) run() {
	s.accept()
	for {
		s.r.enter(1)
		head := *s.r.cqHead
		for head != atomic.LoadUint32(s.r.cqTail) {
			s.complete(s.r.cqes[head&*s.r.cqMask])
			head++
			atomic.StoreUint32(s.r.cqHead, head) // the slot is free once read
		}
	}
}

func listen(addr string) (int, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().Is4() {
		return -1, fmt.Errorf("-listen %q: want an IPv4 address and port", addr)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		return -1, err
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}); err != nil {
		return -1, fmt.Errorf("bind %s: %w", addr, err)
	}
	return fd, unix.Listen(fd, 511)
}

func main() {
	addr := flag.String("listen", "127.0.0.1:8000", "address to listen on (SO_REUSEPORT)")
	flag.Parse()
	runtime.LockOSThread() // the ring is entered from one thread
	lfd, err := listen(*addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "uring:", err)
		os.Exit(1)
	}
	r, err := newRing(1024)
	if err != nil {
		fmt.Fprintln(os.Stderr, "uring:", err)
		os.Exit(1)
	}
	bufs, err := r.provide()
	if err != nil {
		fmt.Fprintln(os.Stderr, "uring:", err)
		os.Exit(1)
	}
	fmt.Println("serving on", *addr)
	(&server{r: r, bufs: bufs, lfd: lfd}).run()
}
