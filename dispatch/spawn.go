package dispatch

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime/debug"
	"slices"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wcluster/wcluster/internal/ipc"
	"github.com/wcluster/wcluster/internal/sandbox"
)

// What a worker starts with. Its environment holds EnvWorkerID and the
// variables the operator passes on (Config.WorkerEnv, and the Go runtime's
// own settings), nothing else of the master's. The rest comes through
// inherited descriptors:
//
//	3  the channel to the master (SOCK_SEQPACKET)
//	4  the boot configuration: a sealed memfd holding a bootConfig (JSON)
//	5  a memfd where the Go runtime writes a crash report, read by the
//	   master once the worker has exited
//	6… the shared listening sockets (policy shared), in Config.Listen order,
//	   then the load table (a memfd; see load.go)
const (
	fdChannel  = 3 // the SEQPACKET channel to the master
	fdBoot     = 4
	fdCrash    = 5
	fdListener = 6 // the first shared listening socket (policy shared)
)

// bootVersion is the version of bootConfig. A worker refuses another one:
// that happens when the binary was replaced on disk while an older master
// runs, and the two no longer agree on the contract.
const bootVersion = 1

// bootConfig is everything a worker is configured with.
type bootConfig struct {
	Version int `json:"version"`
	// IPC is the channel's protocol version (ipc.Version) of the master.
	IPC      int          `json:"ipc"`
	Dispatch workerParams `json:"dispatch"`
	// Config is the program's handler configuration (Config.WorkerConfig):
	// only this group's, and opaque to dispatch.
	Config []byte `json:"config"`
	// Secrets are the program's secrets at the worker's start (see
	// Group.SetSecrets); later ones come as ipc.MsgSecrets.
	Secrets []byte `json:"secrets,omitempty"`
}

// runtimeEnv are the Go runtime's own settings, passed on to workers when
// the master has them: they tune the process, hold no secret, and
// operators set them for the whole container (see docs/operations.md).
// TZ too, so workers log in the master's time zone; GORACE, read by
// race-detector builds only, so that tests tune the workers as the master.
var runtimeEnv = []string{"GOMAXPROCS", "GOMEMLIMIT", "GOGC", "GODEBUG", "GOTRACEBACK", "GORACE", "TZ"}

// workerEnv is a worker's whole environment; procs > 0 sets its
// GOMAXPROCS (Config.Procs).
func workerEnv(id, procs int, pass []string) []string {
	env := []string{EnvWorkerID + "=" + strconv.Itoa(id)}
	seen := map[string]bool{EnvWorkerID: true}
	if procs > 0 {
		env = append(env, "GOMAXPROCS="+strconv.Itoa(procs))
		seen["GOMAXPROCS"] = true
	}
	for _, names := range [][]string{runtimeEnv, pass} {
		for _, name := range names {
			if seen[name] {
				continue
			}
			seen[name] = true
			if v, ok := os.LookupEnv(name); ok {
				env = append(env, name+"="+v)
			}
		}
	}
	return env
}

// sealedMemfd returns a memfd holding b that nobody can change any more.
func sealedMemfd(name string, b []byte) (*os.File, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, os.NewSyscallError("memfd_create", err)
	}
	f := os.NewFile(uintptr(fd), name)
	if _, err := f.Write(b); err != nil {
		f.Close()
		return nil, fmt.Errorf("write %s: %w", name, err)
	}
	seals := unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, seals); err != nil {
		f.Close()
		return nil, os.NewSyscallError("fcntl(F_ADD_SEALS)", err)
	}
	return f, nil
}

// workerCommand builds the command of worker id. The caller closes boot
// once the worker started, and crash once it exited (see crashCause).
func (m *Group) workerCommand(id int, workerConfig, secrets []byte, procs int, maxServed uint64, channel *os.File) (cmd *exec.Cmd, boot, crash *os.File, err error) {
	addrs := make([]string, len(m.lis))
	for i, l := range m.lis {
		addrs[i] = l.addr.String()
	}
	b, err := json.Marshal(bootConfig{
		Version: bootVersion, IPC: ipc.Version,
		Dispatch: workerParams{
			Sched: m.cfg.Sched, MaxConns: m.cfg.MaxConns, ShutdownTimeout: m.cfg.ShutdownTimeout,
			Heartbeat: m.cfg.Heartbeat, Listen: addrs, Backlog: m.cfg.Backlog, DeferAccept: m.cfg.DeferAccept, MaxServed: maxServed,
		},
		Config: workerConfig, Secrets: secrets,
	})
	if err != nil {
		return nil, nil, nil, err
	}
	boot, err = sealedMemfd("wcluster-worker-config", b)
	if err != nil {
		return nil, nil, nil, err
	}
	cfd, err := unix.MemfdCreate("wcluster-worker-crash", unix.MFD_CLOEXEC)
	if err != nil {
		boot.Close()
		return nil, nil, nil, os.NewSyscallError("memfd_create", err)
	}
	crash = os.NewFile(uintptr(cfd), "wcluster-worker-crash")

	cmd = exec.Command(m.cfg.Executable, m.cfg.Args...)
	cmd.Env = workerEnv(id, procs, m.cfg.WorkerEnv)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{channel, boot, crash} // fds 3, 4, 5
	if m.cfg.Sched == SchedShared {
		for _, l := range m.lis {
			cmd.ExtraFiles = append(cmd.ExtraFiles, l.f) // fds 6, 7, ...
		}
		cmd.ExtraFiles = append(cmd.ExtraFiles, m.loadFile) // the fd after them
	}
	if c := m.cfg.Credential; c != nil {
		// setgroups to the one group, then setgid and setuid before exec:
		// the worker starts with that identity and, not being root, with
		// no capabilities.
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: c.Uid, Gid: c.Gid, Groups: []uint32{c.Gid}}}
	}
	return cmd, boot, crash, nil
}

// crashCause reads a worker's crash report after it exited: the seccomp
// filter's kill, named, or "" when the worker did not die of that.
func crashCause(crash *os.File) string {
	if crash == nil {
		return ""
	}
	b, _ := io.ReadAll(io.NewSectionReader(crash, 0, 256<<10))
	cause, err := sandbox.DescribeCrash(b)
	if err != nil {
		return ""
	}
	return cause
}

// readBoot reads the boot configuration a worker inherited.
func readBoot() (bootConfig, error) {
	var bc bootConfig
	f := os.NewFile(fdBoot, "wcluster-worker-config")
	if f == nil {
		return bc, fmt.Errorf("no boot configuration on fd %d: start workers through the master", fdBoot)
	}
	defer f.Close()
	return decodeBoot(f)
}

// decodeBoot reads a bootConfig from f (from its start), refusing another
// version than this binary's.
func decodeBoot(f *os.File) (bootConfig, error) {
	var bc bootConfig
	st, err := f.Stat()
	if err != nil {
		return bc, fmt.Errorf("boot configuration on fd %d: %w", fdBoot, err)
	}
	b, err := io.ReadAll(io.NewSectionReader(f, 0, st.Size()))
	if err != nil {
		return bc, fmt.Errorf("read boot configuration: %w", err)
	}
	var v struct {
		Version int `json:"version"`
		IPC     int `json:"ipc"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return bc, fmt.Errorf("boot configuration: %w", err)
	}
	if v.Version != bootVersion {
		return bc, fmt.Errorf("the master speaks worker configuration version %d, this binary version %d: the binary was replaced while the master runs; restart wcluster", v.Version, bootVersion)
	}
	if v.IPC != ipc.Version {
		return bc, fmt.Errorf("the master speaks channel protocol version %d, this binary version %d: a worker from another binary (replaced while the master runs); restart wcluster", v.IPC, ipc.Version)
	}
	if err := json.Unmarshal(b, &bc); err != nil {
		return bc, fmt.Errorf("boot configuration: %w", err)
	}
	return bc, nil
}

// reportCrashes has the runtime write a crash report (a panic, a fatal
// error, a signal such as the seccomp filter's SIGSYS) to fd 5 as well as
// to stderr, for the master to read once this worker has exited.
func reportCrashes() {
	f := os.NewFile(fdCrash, "wcluster-worker-crash")
	if f == nil {
		return
	}
	debug.SetCrashOutput(f, debug.CrashOptions{})
	f.Close() // SetCrashOutput keeps its own duplicate
}

// spawn starts worker id in its slot.
func (m *Group) spawn(id int) error {
	_, err := m.start(id, m.workerConfig(), true)
	return err
}

func (m *Group) workerConfig() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cfg.WorkerConfig
}

// start starts a worker process for slot id with the given handler config.
// With install it takes the slot at once; a reload installs it later.
func (m *Group) start(id int, workerConfig []byte, install bool) (*proc, error) {
	ch, child, err := ipc.SocketPair()
	if err != nil {
		return nil, fmt.Errorf("dispatch: worker %d: %w", id, err)
	}
	defer child.Close()
	m.mu.Lock()
	secrets, gen := m.secrets, m.secretsGen
	m.mu.Unlock()
	procs := int(m.gomaxprocs.Load())
	maxServed := m.requestLimit()
	cmd, boot, crash, err := m.workerCommand(id, workerConfig, secrets, procs, maxServed, child)
	if err != nil {
		ch.Close()
		return nil, fmt.Errorf("dispatch: worker %d: %w", id, err)
	}
	defer boot.Close()
	if err := cmd.Start(); err != nil {
		ch.Close()
		crash.Close()
		return nil, fmt.Errorf("dispatch: start worker %d: %w", id, err)
	}
	now := time.Now()
	p := &proc{
		id: id, pid: cmd.Process.Pid, cmd: cmd, ch: ch, state: stateStarting,
		started: now, lastBeat: now, pending: map[uint64]sent{}, exited: make(chan struct{}),
		ready: make(chan struct{}), maxServed: maxServed,
	}
	m.mu.Lock()
	if m.started == nil {
		m.started = map[*proc]struct{}{}
	}
	m.started[p] = struct{}{}
	if gen != m.secretsGen { // changed while it started: it missed that
		m.sendSecretsLocked(p)
	}
	if now := int(m.gomaxprocs.Load()); now != procs && now > 0 { // the same for SetProcs
		m.sendProcsLocked(p, now)
	}
	if len(m.challenges) > 0 {
		m.sendChallengesLocked(p)
	}
	m.mu.Unlock()
	if install {
		m.mu.Lock()
		if m.slotLocked(id) == nil && id <= len(m.procs) {
			m.procs[id-1] = p
		} else {
			// Scaled down (or filled) since the caller looked: not needed.
			p.retired = true
			ch.CloseWrite()
		}
		m.mu.Unlock()
	}
	m.wg.Add(2)
	go func() { defer m.wg.Done(); m.readWorker(p) }()
	go func() {
		defer m.wg.Done()
		p.waitErr = cmd.Wait()
		if cause := crashCause(crash); cause != "" {
			m.mu.Lock()
			p.fatal = cause
			m.mu.Unlock()
		}
		crash.Close()
		m.mu.Lock()
		delete(m.started, p)
		m.mu.Unlock()
		close(p.exited)
		m.emit(procEvent{evExit, p})
	}()
	return p, nil
}

// SetSecrets gives the program's secrets to every worker of the group, now
// and at each start, until the next call. The secrets go through the
// channel and the boot memfd only: never the environment, never a file.
func (m *Group) SetSecrets(b []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.secrets = slices.Clone(b)
	m.secretsGen++
	for p := range m.started {
		m.sendSecretsLocked(p)
	}
}

// SetProcs sets the GOMAXPROCS of the group's workers: those started from
// now on get it in their environment, the running ones in a MsgProcs (sent
// without blocking; a worker whose channel is full keeps its count). For
// a share of the CPUs that changed with the number of workers (Scale). n
// 0 (the master's own GOMAXPROCS passes on) changes nothing.
func (m *Group) SetProcs(n int) {
	if n < 1 || int(m.gomaxprocs.Swap(int32(n))) == n {
		return
	}
	m.log.Info("worker threads", "procs", n)
	m.mu.Lock()
	defer m.mu.Unlock()
	for p := range m.started {
		m.sendProcsLocked(p, n)
	}
}

// sendProcsLocked tells p to run with n threads, without blocking.
func (m *Group) sendProcsLocked(p *proc, n int) {
	msg := binary.LittleEndian.AppendUint32([]byte{ipc.MsgProcs}, uint32(n))
	if err := p.ch.SendNow(msg, nil); err != nil {
		m.log.Warn("could not give a worker its new thread count", "worker", p.id, "pid", p.pid, "procs", n, "err", err)
	}
}

// sendSecretsLocked sends the current secrets to p without blocking: a
// worker whose channel is full does not read it, and is replaced by the
// heartbeat's watchdog (it keeps decrypting with the older keys meanwhile).
func (m *Group) sendSecretsLocked(p *proc) {
	if err := p.ch.SendNow(append([]byte{ipc.MsgSecrets}, m.secrets...), nil); err != nil {
		m.log.Warn("could not give a worker the new secrets", "worker", p.id, "pid", p.pid, "err", err)
	}
}
