package host

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawRead and rawWrite are read(2) and write(2) on a non-blocking socket
// without telling the Go scheduler a system call is under way (no
// entersyscall): such a call never waits, so the goroutine's P need not be
// handed to another thread. Through the ordinary path a call that the
// kernel stretches past the scheduler's 20 µs check — a loopback write
// delivering to the reader inline, or a thread preempted by the kernel
// mid-call — makes the runtime wake another thread to take the P, and a
// worker under load cycles its work over many threads that then queue for
// the cores. Only for descriptors in non-blocking mode.
func rawRead(fd int, p []byte) (int, error) { return rawIO(unix.SYS_READ, fd, p) }

func rawWrite(fd int, p []byte) (int, error) { return rawIO(unix.SYS_WRITE, fd, p) }

func rawIO(trap uintptr, fd int, p []byte) (int, error) {
	var ptr unsafe.Pointer
	if len(p) > 0 {
		ptr = unsafe.Pointer(&p[0])
	}
	n, _, e := unix.RawSyscall(trap, uintptr(fd), uintptr(ptr), uintptr(len(p)))
	if e != 0 {
		return -1, e
	}
	return int(n), nil
}

// rawShutdown sends a socket's FIN (shutdown SHUT_WR), outside the
// scheduler as rawRead: it does not wait.
func rawShutdown(fd int) {
	unix.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), unix.SHUT_WR, 0)
}

// rawClose closes a socket that is not in Go's poller (a conn that never
// made its f), outside the scheduler as rawRead is: closing a socket
// without SO_LINGER does not wait. Through the scheduler's path each close
// kept the runtime's monitor thread polling (9% of a worker's CPU with a
// connection per request).
func rawClose(fd int) {
	unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
}

// rawPeek reports whether a read of a non-blocking socket would return at
// once (bytes, the end of the stream or an error) without taking anything
// from it: recv with MSG_PEEK|MSG_DONTWAIT, outside the scheduler as
// rawRead is.
func rawPeek(fd int) bool {
	var b [1]byte
	for {
		_, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), 1,
			unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
		if e != unix.EINTR {
			return e != unix.EAGAIN
		}
	}
}
