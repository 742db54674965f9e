package sandbox

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The tests run the sandbox in a child: a re-exec of this test binary with
// childEnv naming what it does once sandboxed (a sandbox cannot be lifted,
// so the test process itself stays free).
const childEnv = "WCLUSTER_SANDBOX_TEST_CHILD"

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		if err := child(mode); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(3)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runChild runs the child in mode with dir as its one readable directory
// and returns its stdout, stderr and exit error.
func runChild(t *testing.T, mode, dir string, env ...string) (string, string, error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), childEnv+"="+mode, "SANDBOX_DIR="+dir), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.String(), errb.String(), err
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("child %s still running after 60s", mode)
		return "", "", nil
	}
}

func child(mode string) error {
	dir := os.Getenv("SANDBOX_DIR")
	status, err := os.Open("/proc/self/status") // before: /proc is out of reach after
	if err != nil {
		return err
	}
	// Threads busy before the sandbox goes on: TSYNC must cover them.
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			for {
				select {
				case <-stop:
					return
				default:
					time.Sleep(time.Millisecond)
				}
			}
		}()
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	port := uint16(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	pol := Policy{ReadPaths: []string{dir}, BindTCP: []uint16{port}}
	var upstream, other string // SANDBOX_CONNECT: the allowed and another listener
	if c := os.Getenv("SANDBOX_CONNECT"); c != "" {
		upstream, other, _ = strings.Cut(c, ",")
		_, p, _ := net.SplitHostPort(upstream)
		n, _ := strconv.Atoi(p)
		pol.ConnectTCP = []uint16{uint16(n)}
	}
	a, err := Apply(pol)
	if err != nil {
		return err
	}
	fmt.Println("applied:", a)
	b := make([]byte, 4096)
	n, _ := status.ReadAt(b, 0)
	for _, line := range strings.Split(string(b[:n]), "\n") {
		if strings.HasPrefix(line, "NoNewPrivs") || strings.HasPrefix(line, "Seccomp:") {
			fmt.Println(strings.Join(strings.Fields(line), " "))
		}
	}
	switch mode {
	case "allowed":
		// What a worker does: goroutines, timers, memory, GC, sockets.
		var bufs [][]byte
		for i := 0; i < 200; i++ {
			bufs = append(bufs, make([]byte, 64<<10))
		}
		runtime.GC()
		_ = bufs
		if err := bindTCP(port); err != nil {
			return fmt.Errorf("listen on the allowed port: %w", err)
		}
		// Bytes through descriptors, as on the master's channel.
		var fds [2]int
		if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
			return err
		}
		unix.Write(fds[1], []byte("ping"))
		got := make([]byte, 4)
		if _, err := unix.Read(fds[0], got); err != nil || string(got) != "ping" {
			return fmt.Errorf("pipe: %q %v", got, err)
		}
		if _, err := os.ReadFile(filepath.Join(dir, "allowed.txt")); err != nil {
			return fmt.Errorf("read inside the allowed directory: %w", err)
		}
		// A TLS handshake's thread lowers its own priority (host/nice.go).
		runtime.LockOSThread()
		if err := unix.Setpriority(unix.PRIO_PROCESS, 0, 10); err != nil {
			return fmt.Errorf("setpriority of the calling thread: %w", err)
		}
		if prio, err := unix.Getpriority(unix.PRIO_PROCESS, 0); err != nil || 20-prio != 10 {
			return fmt.Errorf("the thread's nice after setpriority: %d %v", 20-prio, err)
		}
		// Closed instances' memories are reset through its own pidfd
		// (host/reserve.go).
		if err := dropOwnPages(); err != nil {
			return err
		}
		fmt.Println("ok")
	case "files":
		// Landlock: outside the allowed directory nothing opens, from any
		// thread; inside, reading works and writing does not.
		errs := make(chan error, 3)
		for i := 0; i < 3; i++ {
			go func() {
				runtime.LockOSThread()
				_, err := os.ReadFile(filepath.Join(filepath.Dir(dir), "outside.txt"))
				errs <- err
			}()
		}
		for i := 0; i < 3; i++ {
			if err := <-errs; !errors.Is(err, os.ErrPermission) {
				return fmt.Errorf("read outside: want permission denied, got %v", err)
			}
		}
		if _, err := os.ReadFile(filepath.Join(dir, "allowed.txt")); err != nil {
			return fmt.Errorf("read inside: %w", err)
		}
		if err := os.WriteFile(filepath.Join(dir, "new.txt"), []byte("x"), 0o644); !errors.Is(err, os.ErrPermission) {
			return fmt.Errorf("write inside: want permission denied, got %v", err)
		}
		if err := bindTCP(port + 1); !errors.Is(err, unix.EACCES) {
			return fmt.Errorf("bind to a port not allowed: want EACCES, got %v", err)
		}

		fmt.Println("ok")
	case "connect":
		// An upstream's port is reachable; any other is not.
		c, err := net.DialTimeout("tcp", upstream, 10*time.Second)
		if err != nil {
			return fmt.Errorf("connect to the allowed port: %w", err)
		}
		c.Close()
		if _, err := net.DialTimeout("tcp", other, 10*time.Second); !errors.Is(err, unix.EACCES) {
			return fmt.Errorf("connect to a port not allowed: want EACCES, got %v", err)
		}
		fmt.Println("ok")
	case "forbidden":
		// ptrace is no worker's business: the filter must end the process,
		// whatever thread calls it.
		done := make(chan struct{})
		go func() {
			runtime.LockOSThread()
			syscall.Syscall(unix.SYS_PTRACE, unix.PTRACE_TRACEME, 0, 0)
			close(done)
		}()
		<-done
		fmt.Println("survived ptrace")
	}
	close(stop)
	wg.Wait()
	return nil
}

// dropOwnPages drops the pages of a mapping of its own with
// process_madvise(MADV_DONTNEED) through its own pidfd, as host's spares do.
func dropOwnPages() error {
	pidfd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		return fmt.Errorf("pidfd_open of itself: %w", err)
	}
	defer unix.Close(pidfd)
	b, err := unix.Mmap(-1, 0, 1<<16, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANON)
	if err != nil {
		return err
	}
	defer unix.Munmap(b)
	b[100] = 1
	iov := []unix.Iovec{{Base: &b[0]}}
	iov[0].SetLen(len(b))
	_, _, errno := unix.Syscall6(unix.SYS_PROCESS_MADVISE, uintptr(pidfd), uintptr(unsafe.Pointer(&iov[0])), 1, unix.MADV_DONTNEED, 0, 0)
	if errno != 0 || b[100] != 0 {
		return fmt.Errorf("process_madvise(MADV_DONTNEED) of its own pages: %v, byte %d", errno, b[100])
	}
	return nil
}

// bindTCP binds and listens on a loopback port, as a reuseport worker does.
func bindTCP(port uint16) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: int(port), Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return err
	}
	return unix.Listen(fd, 8)
}

func sandboxDir(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, "allowed")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "allowed.txt"), []byte("in"), 0o644)
	os.WriteFile(filepath.Join(root, "outside.txt"), []byte("out"), 0o644)
	return dir
}

// TestApplyAllowsAWorkersWork: with the sandbox on, a process has
// no_new_privs and a seccomp filter, and still runs goroutines, GC,
// sockets and reads in its allowed directory.
func TestApplyAllowsAWorkersWork(t *testing.T) {
	t.Parallel()
	out, errOut, err := runChild(t, "allowed", sandboxDir(t))
	if err != nil {
		t.Fatalf("child: %v\nstdout:\n%s\nstderr:\n%s", err, out, errOut)
	}
	for _, want := range []string{"NoNewPrivs: 1", "Seccomp: 2", "ok"} {
		if !strings.Contains(out, want) {
			t.Errorf("child output lacks %q:\n%s", want, out)
		}
	}
}

// TestLandlockConfinesFiles: outside its read-only paths a sandboxed
// process opens nothing (on every thread), inside it cannot write, and it
// binds only the ports it was given.
func TestLandlockConfinesFiles(t *testing.T) {
	t.Parallel()
	out, errOut, err := runChild(t, "files", sandboxDir(t))
	if err != nil || !strings.Contains(out, "ok") {
		t.Fatalf("child: %v\nstdout:\n%s\nstderr:\n%s", err, out, errOut)
	}
	if !strings.Contains(out, "landlock=ABI") {
		t.Errorf("Landlock was not applied (this kernel has it): %s", out)
	}
}

// TestConnectOnlyToUpstreams: a sandboxed process given an upstream's
// port connects to it, and to no other port.
func TestConnectOnlyToUpstreams(t *testing.T) {
	t.Parallel()
	var addrs []string
	for range 2 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		addrs = append(addrs, l.Addr().String())
	}
	out, errOut, err := runChild(t, "connect", sandboxDir(t), "SANDBOX_CONNECT="+strings.Join(addrs, ","))
	if err != nil || !strings.Contains(out, "ok") {
		t.Fatalf("child: %v\nstdout:\n%s\nstderr:\n%s", err, out, errOut)
	}
}

// TestForbiddenSyscallKills: a system call outside the allowlist, from any
// thread, ends the process with SIGSYS, and its crash report names it.
func TestForbiddenSyscallKills(t *testing.T) {
	t.Parallel()
	out, errOut, err := runChild(t, "forbidden", sandboxDir(t))
	if err == nil || strings.Contains(out, "survived") {
		t.Fatalf("the child survived a forbidden system call: %v\n%s", err, out)
	}
	cause, derr := DescribeCrash([]byte(errOut))
	if derr != nil {
		t.Fatalf("crash report not recognised: %v\n%s", derr, errOut)
	}
	if !strings.Contains(cause, "ptrace") {
		t.Errorf("cause %q does not name ptrace; report:\n%s", cause, errOut)
	}
	t.Logf("cause: %s", cause)
}

func TestAllowlistKnown(t *testing.T) {
	if len(allowed()) < 50 {
		t.Fatalf("only %d known system calls on %s", len(allowed()), runtime.GOARCH)
	}
	for _, name := range []string{"ptrace", "execve", "mount", "kexec_load", "bpf", "process_vm_readv", "setuid", "chroot", "unshare"} {
		if Allowed(name) {
			t.Errorf("%s is allowed", name)
		}
	}
}
