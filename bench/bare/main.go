// Command bare is the ceiling of wcluster's worker structure without wasm,
// for bench/run.sh (server gobare): a goroutine per connection waiting in
// Go's poller, reads and writes made as host/rawio.go makes them, and a
// fixed "hello world" answer per request head. Run one process per core,
// each with GOMAXPROCS=1, on one port (SO_REUSEPORT), as wcluster's
// workers run by default with workers = cores.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

var (
	answer = []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nhello world\n")
	// lastAnswer answers a request that asked to close (the benchmark's
	// new-connection mode), and the connection is then closed.
	lastAnswer = []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\nhello world\n")
)

// raw is read(2) or write(2) of p on a non-blocking socket, without
// entersyscall.
func raw(trap uintptr, fd uintptr, p []byte) (int, syscall.Errno) {
	n, _, e := unix.RawSyscall(trap, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	return int(n), e
}

func serve(c *net.TCPConn) {
	defer c.Close()
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	buf := make([]byte, 4096)
	var n int
	var e syscall.Errno
	read := func(fd uintptr) bool {
		n, e = raw(unix.SYS_READ, fd, buf)
		return e != unix.EAGAIN
	}
	out := answer
	write := func(fd uintptr) bool {
		raw(unix.SYS_WRITE, fd, out) // fits the socket buffer: one write
		return true
	}
	for {
		if err := rc.Read(read); err != nil || e != 0 || n <= 0 {
			return
		}
		last := bytes.Contains(buf[:n], []byte("Connection: close"))
		for range bytes.Count(buf[:n], []byte("\r\n\r\n")) {
			if last {
				out = lastAnswer
			}
			if err := rc.Write(write); err != nil || last {
				return
			}
		}
	}
}

func main() {
	addr := flag.String("listen", "127.0.0.1:8000", "address to listen on (SO_REUSEPORT)")
	flag.Parse()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
		if err != nil {
			return err
		}
		return serr
	}}
	l, err := lc.Listen(context.Background(), "tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bare:", err)
		os.Exit(1)
	}
	fmt.Println("serving on", l.Addr())
	for {
		c, err := l.Accept()
		if err != nil {
			continue
		}
		go serve(c.(*net.TCPConn))
	}
}
