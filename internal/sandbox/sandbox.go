// Package sandbox owns the process sandbox of a worker: no_new_privs, a
// seccomp allowlist of system calls and a Landlock ruleset limiting the
// files it may read and the ports it may bind. A worker applies it to
// itself (every thread) once, before it runs any guest code; nothing lifts
// it afterwards.
package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
	"github.com/landlock-lsm/go-landlock/landlock"
	llsys "github.com/landlock-lsm/go-landlock/landlock/syscall"
	"golang.org/x/sys/unix"
)

// Policy is what a sandboxed process may still do besides computing and
// serving the sockets it holds.
type Policy struct {
	// ReadPaths are files and directories it may read (directories:
	// everything under them); nothing else can be opened.
	ReadPaths []string
	// WritePaths are directories it may read, create files in, write,
	// truncate and remove files from (the key-value store's).
	WritePaths []string
	// BindTCP are the TCP ports it may bind (reuseport workers listen on
	// their own sockets).
	BindTCP []uint16
	// ConnectTCP are the TCP ports it may connect to (the upstreams of its
	// http-wasm tenants); with none it may connect nowhere.
	ConnectTCP []uint16
	// Resolve lets it look up host names: read the resolver's files and
	// ask a DNS server (port 53), for upstreams named by host name.
	Resolve bool
}

// resolverFiles are what Go's resolver reads.
var resolverFiles = []string{"/etc/hosts", "/etc/resolv.conf", "/etc/nsswitch.conf", "/etc/host.conf", "/etc/gai.conf"}

// withResolver adds what looking names up needs.
func (p Policy) withResolver() Policy {
	if !p.Resolve {
		return p
	}
	for _, f := range resolverFiles {
		if _, err := os.Stat(f); err == nil {
			p.ReadPaths = append(slices.Clone(p.ReadPaths), f)
		}
	}
	p.ConnectTCP = append(slices.Clone(p.ConnectTCP), 53) // DNS over TCP, after a truncated answer
	return p
}

// Applied says what Apply put in place, for a debug log line.
type Applied struct {
	NoNewPrivs bool
	Seccomp    int    // allowed system calls
	Landlock   string // the ABI used and what it restricts, or why none
}

func (a Applied) String() string {
	return fmt.Sprintf("no_new_privs=%v seccomp=%d syscalls landlock=%s", a.NoNewPrivs, a.Seccomp, a.Landlock)
}

// Apply sandboxes the calling process, all its threads: Landlock (where
// the kernel has it; skipped, and said so, where it does not), then
// no_new_privs and the seccomp filter. A system call outside the allowlist
// raises SIGSYS: the Go runtime prints it with its registers, which
// DescribeCrash turns into the call's name, and the process exits.
func Apply(p Policy) (Applied, error) {
	var a Applied
	// The local time zone is read lazily from /etc/localtime (or TZ):
	// load it now, while files can still be opened.
	time.Now().Zone()
	p = p.withResolver()

	ll, err := restrictLandlock(p)
	if err != nil {
		return a, fmt.Errorf("sandbox: landlock: %w", err)
	}
	a.Landlock = ll

	names := allowed()
	if len(p.ConnectTCP) > 0 {
		// Landlock limits the ports; without it (an older kernel) any.
		names = append(names, "connect")
	}
	f := seccomp.Filter{
		NoNewPrivs: true,
		Flag:       seccomp.FilterFlagTSync,
		Policy: seccomp.Policy{
			DefaultAction: seccomp.ActionTrap,
			Syscalls: []seccomp.SyscallGroup{{
				Action:             seccomp.ActionAllow,
				Names:              names,
				NamesWithCondtions: conditional(),
			}, {
				Action: seccomp.ActionErrno | seccomp.Action(unix.ENOSYS),
				Names:  []string{"clone3"},
			}},
		},
	}
	if err := seccomp.LoadFilter(f); err != nil {
		return a, fmt.Errorf("sandbox: seccomp: %w", err)
	}
	a.NoNewPrivs = true
	a.Seccomp = len(names) + 1 // clone3, answered ENOSYS
	seen := map[string]bool{}
	for _, c := range conditional() {
		if !seen[c.Name] {
			seen[c.Name] = true
			a.Seccomp++
		}
	}
	return a, nil
}

// restrictLandlock applies the ruleset with the newest ABI the kernel
// has (best effort: older kernels get what they support, none at all
// without Landlock).
func restrictLandlock(p Policy) (string, error) {
	abi, err := llsys.LandlockGetABIVersion()
	if err != nil || abi < 1 {
		return "unavailable (the kernel has no Landlock, or it is not enabled)", nil
	}
	var rules []landlock.Rule
	var paths []string
	for _, path := range p.ReadPaths {
		if path == "" {
			continue
		}
		abs, err := filepath.Abs(path)
		if err != nil {
			return "", err
		}
		st, err := os.Stat(abs)
		if err != nil {
			return "", fmt.Errorf("%s: %w", abs, err)
		}
		access := landlock.AccessFSSet(llsys.AccessFSReadFile)
		if st.IsDir() {
			access |= llsys.AccessFSReadDir
		}
		rules = append(rules, landlock.PathAccess(access, abs))
		paths = append(paths, abs)
	}
	for _, path := range p.WritePaths {
		abs, err := filepath.Abs(path)
		if err != nil {
			return "", err
		}
		if unix.Access(abs, unix.W_OK|unix.X_OK) != nil {
			// Out of this worker's reach (the master warned): what would
			// use it fails at use, with its own error; the rest serves.
			continue
		}
		rules = append(rules, landlock.RWDirs(abs))
		paths = append(paths, abs+" (read-write)")
	}
	for _, port := range p.BindTCP {
		rules = append(rules, landlock.BindTCP(port))
	}
	for _, port := range p.ConnectTCP {
		rules = append(rules, landlock.ConnectTCP(port))
	}
	if err := landlock.V7.BestEffort().Restrict(rules...); err != nil {
		return "", err
	}
	what := "files"
	if abi >= 4 {
		what += ", tcp bind/connect"
	}
	if abi >= 6 {
		what += ", signals and abstract sockets"
	}
	return fmt.Sprintf("ABI %d (%s; read-only: %s; bind: %v; connect: %v)", abi, what, strings.Join(paths, " "), p.BindTCP, p.ConnectTCP), nil
}

// allowlist holds the system calls a worker makes: the Go runtime
// (threads, memory, signals, timers), the race detector's runtime in race
// builds, the netpoller and sockets (accept, reuseport listeners, fd
// passing on the master's channel), files under its read-only paths (the
// compilation cache, WASI mounts) and wazero, which maps its compiled code
// executable (mmap/mprotect with PROT_EXEC). It was taken from strace -f -c
// of workers in every dispatch mode (rr, shared, reuseport), with TLS,
// mounts, WASI commands, reloads, recycling and the race build; names a
// given architecture lacks are left out there.
var allowlist = []string{
	// memory
	"brk", "mmap", "munmap", "mprotect", "madvise", "mremap", "mincore", "membarrier",
	// a module's memory image (host's memImage)
	"memfd_create",
	// threads, scheduling, time
	"exit", "exit_group", "futex", "futex_waitv", "set_robust_list", "get_robust_list",
	"rseq", "set_tid_address", "sched_yield", "sched_getaffinity", "getpriority",
	"nanosleep", "clock_nanosleep", "clock_gettime", "clock_getres", "gettimeofday", "time",
	"timer_create", "timer_settime", "timer_delete", "setitimer", "getitimer",
	// signals
	"rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigsuspend", "sigaltstack",
	"restart_syscall",
	// identity and limits (read only)
	"getpid", "getppid", "gettid", "getuid", "geteuid", "getgid", "getegid", "getgroups",
	"getrlimit", "getrusage", "uname", "sysinfo", "getrandom", "getcwd", "arch_prctl",
	// descriptors and files
	"read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "lseek",
	"close", "close_range", "dup", "dup2", "dup3", "fcntl", "fstat", "newfstatat", "statx", "fstatfs", "statfs",
	"openat", "open", "readlinkat", "readlink", "getdents64", "faccessat", "faccessat2", "access",
	"fsync", "fdatasync", "ftruncate", "sendfile", "copy_file_range", "splice",
	// The key-value store (SQLite, in the one directory Landlock lets the
	// worker write): its files' metadata, its journal's removal, and, for a
	// root worker, keeping its files' owner the directory's.
	"stat", "lstat", "unlink", "unlinkat", "fchown", "fchmod",
	"pipe2", "eventfd2", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2",
	"poll", "ppoll", "select", "pselect6",
	// sockets
	"bind", "listen", "accept", "accept4", "shutdown", "getsockname", "getpeername",
	"setsockopt", "getsockopt", "sendmsg", "recvmsg", "sendto", "recvfrom", "sendmmsg", "recvmmsg",
}

// conditional are calls allowed with some arguments only.
func conditional() []seccomp.NameWithConditions {
	eq := func(arg uint32, v uint64) seccomp.ArgumentConditions {
		return seccomp.ArgumentConditions{{Argument: arg, Operation: seccomp.Equal, Value: v}}
	}
	and := func(cs ...seccomp.ArgumentConditions) seccomp.ArgumentConditions {
		var out seccomp.ArgumentConditions
		for _, c := range cs {
			out = append(out, c...)
		}
		return out
	}
	self := uint64(os.Getpid())
	return []seccomp.NameWithConditions{
		// Threads, not processes: clone only with CLONE_THREAD. (clone3
		// passes its flags in memory the filter cannot read: it answers
		// ENOSYS, and the C library falls back to clone.)
		{Name: "clone", Conditions: seccomp.ArgumentConditions{{Argument: 0, Operation: seccomp.BitsSet, Value: unix.CLONE_THREAD}}},
		// Signals to its own threads only (the runtime's preemption).
		{Name: "tgkill", Conditions: eq(0, self)},
		// The calling thread's own priority (who 0): TLS handshakes run
		// below serving.
		{Name: "setpriority", Conditions: and(eq(0, unix.PRIO_PROCESS), eq(1, 0))},
		// Its own pidfd, and through it the dropping of its own pages
		// (host's spares: one call and one TLB flush for many instances'
		// memories), nothing else of another process.
		{Name: "pidfd_open", Conditions: and(eq(0, self), eq(1, 0))},
		{Name: "process_madvise", Conditions: and(eq(3, unix.MADV_DONTNEED), eq(4, 0))},
		// Its own limits, read only.
		{Name: "prlimit64", Conditions: and(eq(0, 0), eq(2, 0))},
		// TCP sockets (reuseport listeners) and nothing else: not MPTCP,
		// whose ports Landlock does not govern, not raw or netlink ones.
		{Name: "socket", Conditions: and(eq(0, unix.AF_INET), eq(2, 0))},
		{Name: "socket", Conditions: and(eq(0, unix.AF_INET6), eq(2, 0))},
		{Name: "socket", Conditions: and(eq(0, unix.AF_INET), eq(2, unix.IPPROTO_TCP))},
		{Name: "socket", Conditions: and(eq(0, unix.AF_INET6), eq(2, unix.IPPROTO_TCP))},
		// The Go runtime names its anonymous mappings; nothing else of prctl.
		{Name: "prctl", Conditions: eq(0, unix.PR_SET_VMA)},
		{Name: "prctl", Conditions: eq(0, unix.PR_SET_NAME)},
		{Name: "prctl", Conditions: eq(0, unix.PR_GET_NAME)},
		// Terminal probes (isatty) and non-blocking mode; not TIOCSTI and the rest.
		{Name: "ioctl", Conditions: eq(1, unix.TCGETS)},
		{Name: "ioctl", Conditions: eq(1, unix.TIOCGWINSZ)},
	}
}

// allowed is allowlist less the names this architecture does not have.
func allowed() []string {
	info, err := arch.GetInfo("")
	if err != nil {
		return nil
	}
	var out []string
	for _, n := range allowlist {
		if _, ok := info.SyscallNames[n]; ok && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}

// Allowed reports whether the filter lets the named system call through
// (unconditionally, or with some arguments).
func Allowed(name string) bool {
	if slices.Contains(allowed(), name) {
		return true
	}
	return slices.ContainsFunc(conditional(), func(c seccomp.NameWithConditions) bool { return c.Name == name })
}

// SyscallName names system call nr of this architecture ("" if unknown).
func SyscallName(nr int) string {
	info, err := arch.GetInfo("")
	if err != nil {
		return ""
	}
	return info.SyscallNumbers[nr]
}

// ErrNoSIGSYS is DescribeCrash's answer for a crash that was not the filter's.
var ErrNoSIGSYS = errors.New("not a seccomp SIGSYS")

// DescribeCrash reads the Go runtime's crash report of a sandboxed process
// and, if the seccomp filter caused it, names the system call: when the
// filter traps a call the kernel puts its number back in the register
// that carried it (rax on amd64, x8 on arm64), and the runtime's report
// of the SIGSYS prints the registers.
func DescribeCrash(report []byte) (string, error) {
	s := string(report)
	i := strings.Index(s, "SIGSYS: bad system call")
	if i < 0 {
		return "", ErrNoSIGSYS
	}
	reg := map[string]string{"amd64": "rax", "arm64": "r8", "riscv64": "a7", "386": "eax"}[runtime.GOARCH]
	for _, line := range strings.Split(s[i:], "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == reg {
			nr, err := strconv.ParseUint(strings.TrimPrefix(f[1], "0x"), 16, 32)
			if err != nil {
				break
			}
			name := SyscallName(int(nr))
			if name == "" {
				name = "unknown"
			}
			return fmt.Sprintf("killed by the seccomp filter: forbidden system call %s (%d)", name, nr), nil
		}
	}
	return "killed by the seccomp filter (SIGSYS): forbidden system call, number not in the crash report", nil
}
