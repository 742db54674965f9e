package dispatch

// A worker process as the master sees it.

import (
	"os/exec"
	"syscall"
	"time"

	"github.com/wcluster/wcluster/internal/ipc"
)

type procState int

const (
	stateStarting procState = iota
	stateReady
	stateExited
)

func (s procState) String() string {
	switch s {
	case stateStarting:
		return "starting"
	case stateReady:
		return "ready"
	case stateExited:
		return "exited"
	}
	return "unknown"
}

// proc is one worker process, as the master sees it. Fields other than the
// immutable ones are guarded by Group.mu.
type proc struct {
	id, pid int
	cmd     *exec.Cmd
	ch      *ipc.Channel
	started time.Time
	exited  chan struct{} // closed when the process has exited
	ready   chan struct{} // closed when it said ready
	waitErr error         // set before exited is closed

	state   procState
	retired bool // told to drain: its exit is not a crash
	hung    bool
	fatal   string
	// capped: it could not take a connection, and fdCap is the most
	// connections it is sent until then (see limitLocked, capLocked).
	capped  bool
	capSoft bool
	fdCap   int64
	// recycling: a replacement is being started; maxServed is this
	// worker's request limit (MaxRequests plus its own jitter).
	recycling bool
	maxServed uint64
	// selfServed is the count the worker gave with its MsgRecycle;
	// recycleNow, made when its replacement is started ahead of the limit,
	// is closed when the limit comes (nowSaid: it reached it and is sent no
	// new connection; see takesLocked).
	selfServed uint64
	recycleNow chan struct{}
	nowSaid    bool
	lastBeat   time.Time
	report     workerReport

	// challengesSeen: the generation of ACME challenges it answers.
	challengesSeen uint64

	pending map[uint64]sent // fds sent, not yet acknowledged, by seq
	// pendingSince is when pending last became non-empty, lastAck when an
	// acknowledgement last came (see stalledLocked).
	pendingSince, lastAck time.Time
	inFlight              int64 // sent and not yet done
	accepted              uint64
	// handedBack counts newconns answered ipc.AckStarved.
	handedBack uint64
	requeued   uint64
}

func (p *proc) kill(sig syscall.Signal) { p.cmd.Process.Signal(sig) }

const killSignal = syscall.SIGKILL

// failure describes why a worker ended.
func (p *proc) failure() string {
	if p.fatal != "" {
		return p.fatal
	}
	if p.waitErr != nil {
		return p.waitErr.Error()
	}
	return "exited"
}

type evKind int

const (
	evReady evKind = iota
	evExit
)

type procEvent struct {
	kind evKind
	p    *proc
}
