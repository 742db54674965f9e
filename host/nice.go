package host

import (
	"runtime"

	"golang.org/x/sys/unix"
)

// handshakeNice is how much lower than serving a TLS handshake runs: under
// a flood of new TLS connections the kernel gives the CPU to established
// connections (of every tenant) first, 9 to 1 at equal demand.
const handshakeNice = 10

// lowerPriority runs the calling goroutine on an OS thread of its own at
// handshakeNice below the thread's priority, and returns how to undo it.
// A thread that cannot be given its priority back (no CAP_SYS_NICE, and
// RLIMIT_NICE too low) stays locked to the goroutine, and the runtime ends
// it with the goroutine: a lowered thread never runs other work.
func lowerPriority() (restore func()) {
	runtime.LockOSThread()
	// getpriority(2) returns 20 - nice; who 0 is the calling thread.
	prio, err := unix.Getpriority(unix.PRIO_PROCESS, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return func() {}
	}
	nice := 20 - prio
	if err := unix.Setpriority(unix.PRIO_PROCESS, 0, min(nice+handshakeNice, 19)); err != nil {
		runtime.UnlockOSThread()
		return func() {}
	}
	return func() {
		if unix.Setpriority(unix.PRIO_PROCESS, 0, nice) == nil {
			runtime.UnlockOSThread()
		}
	}
}
