package dispatch

// A group's status: its counters and its workers'.

import (
	"os"
	"runtime"
	"time"

	"github.com/wcluster/wcluster/internal/stats"
)

// Totals are the master's own counters.
type Totals struct {
	Accepted      uint64 `json:"accepted"`
	QueueTimeouts uint64 `json:"queue_timeouts"`
	Requeued      uint64 `json:"requeued"`
	Restarts      uint64 `json:"restarts"`
	Recycled      uint64 `json:"recycled"`
	HungKilled    uint64 `json:"hung_killed"`
	// SpawnFailures counts worker processes that could not be started
	// (fork or exec failed, out of descriptors); each is retried.
	SpawnFailures uint64 `json:"spawn_failures"`
	// AcceptPauses counts episodes of accept failing (out of descriptors)
	// during which the master stopped accepting for a while.
	AcceptPauses uint64 `json:"accept_pauses"`
	// Starved counts connections a worker could not take for lack of
	// descriptors (a truncated fd message, or a failed send): each went
	// to another worker or back to the queue.
	Starved    uint64 `json:"starved"`
	Queued     int    `json:"queued"`
	Generation int    `json:"generation"`
}

// Status is a snapshot of the master and its workers.
type Status struct {
	Group     string   `json:"group,omitempty"`
	Listen    string   `json:"listen"` // the first of Listeners
	Listeners []string `json:"listeners"`
	Sched     Sched    `json:"sched"`
	PID       int      `json:"pid"`
	// Goroutines and FDs are the master process's own, to spot leaks.
	Goroutines int            `json:"goroutines"`
	FDs        int            `json:"fds"`
	Totals     Totals         `json:"totals"`
	Workers    []WorkerStatus `json:"workers"`
	// Certificates are the group's TLS certificates, with their expiry.
	Certificates []Certificate `json:"certificates"`
}

// WorkerStatus is one worker's counters. For rr, Accepted, InFlight,
// HandedBack and Requeued are the master's own counts; Completed and the
// handler's counters come from the worker's last heartbeat.
type WorkerStatus struct {
	Group     string `json:"group,omitempty"`
	ID        int    `json:"id"`
	PID       int    `json:"pid"`
	State     string `json:"state"`
	Uptime    string `json:"uptime"`
	Accepted  uint64 `json:"accepted"`
	InFlight  int64  `json:"in_flight"`
	Completed uint64 `json:"completed"`
	// HandedBack counts connections the worker could not take for lack
	// of descriptors (rr); the master placed them elsewhere.
	HandedBack uint64 `json:"handed_back"`
	Requeued   uint64 `json:"requeued"`
	Unacked    int    `json:"unacked"`
	Requests   uint64 `json:"requests"`
	RSS        uint64 `json:"rss_bytes"`
	// Procs is the worker's GOMAXPROCS: the threads that run its Go code
	// (from its last heartbeat; 0 before the first).
	Procs   int    `json:"procs"`
	BeatAge string `json:"heartbeat_age"`
	// Age is BeatAge as a duration, for in-process readers (metrics).
	Age time.Duration `json:"-"`
	// Handler is the handler's counters from the last heartbeat (Version
	// 0: none yet).
	Handler stats.Worker `json:"handler"`
}

// Ready reports whether the group serves every one of its listeners: at
// least one worker (every worker serves all of the group's listeners) is
// ready, neither stalled (acknowledgements overdue) nor hung (being
// killed), and the group is not stopping. What a readiness probe asks: one
// worker being replaced, recycled or stalled leaves the group ready while
// another serves.
func (m *Group) Ready() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closing {
		return false
	}
	now := time.Now()
	for _, p := range m.procs {
		if p != nil && p.state == stateReady && !p.hung && !m.stalledLocked(p, now) {
			return true
		}
	}
	return false
}

// SetCertificates records the certificates the group serves after a
// reload.
func (m *Group) SetCertificates(certs []Certificate) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cfg.Certificates = certs
}

// Status reports the current counters.
func (m *Group) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	// Lists are never null in JSON: a group whose workers are all down
	// has "workers": [].
	s := Status{Group: m.cfg.Name, Listen: m.lis[0].addr.String(), Sched: m.cfg.Sched, PID: os.Getpid(), Totals: m.stats,
		Goroutines: runtime.NumGoroutine(), FDs: openFDs(), Workers: []WorkerStatus{}, Listeners: []string{},
		Certificates: append([]Certificate{}, m.cfg.Certificates...)}
	for _, l := range m.lis {
		s.Listeners = append(s.Listeners, l.addr.String())
	}
	s.Totals.Queued = len(m.queue)
	s.Totals.Generation = m.generation
	now := time.Now()
	for _, p := range m.procs {
		if p == nil {
			continue
		}
		state := p.state.String()
		switch {
		case p.hung:
			state = "hung" // silent past WorkerTimeout: being killed
		case p.state == stateReady && m.stalledLocked(p, now):
			state = "stalled" // acknowledgements overdue: sent nothing new
		}
		ws := WorkerStatus{
			Group: m.cfg.Name, ID: p.id, PID: p.pid, State: state,
			Uptime:   now.Sub(p.started).Round(time.Millisecond).String(),
			Accepted: p.accepted, InFlight: p.inFlight, HandedBack: p.handedBack, Requeued: p.requeued,
			Unacked:   len(p.pending),
			Completed: p.report.Completed,
			Requests:  p.report.served(), RSS: p.report.RSS, Procs: p.report.Procs,
			BeatAge: now.Sub(p.lastBeat).Round(time.Millisecond).String(),
			Age:     now.Sub(p.lastBeat),
		}
		if h := p.report.Handler; h != nil {
			ws.Handler = *h
		}
		if m.cfg.Sched != SchedRR {
			ws.Accepted, ws.InFlight = p.report.Accepted, p.report.InFlight
		}
		s.Workers = append(s.Workers, ws)
	}
	return s
}

// openFDs counts this process's open descriptors (-1 where /proc is absent).
func openFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents) - 1 // the directory's own descriptor
}
