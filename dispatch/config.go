package dispatch

// A group's configuration: its policies and their defaults.

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"syscall"
	"time"
)

// Sched is a connection distribution policy.
type Sched string

// The policies; see the package doc.
const (
	SchedRR        Sched = "rr"
	SchedShared    Sched = "shared"
	SchedReusePort Sched = "reuseport"
)

// ParseSched checks a policy name.
func ParseSched(s string) (Sched, error) {
	switch Sched(s) {
	case SchedRR, SchedShared, SchedReusePort:
		return Sched(s), nil
	}
	return "", fmt.Errorf("unknown scheduling policy %q: use rr, shared or reuseport", s)
}

// ErrMasterClosed is returned by Run once it stopped because its context ended.
var ErrMasterClosed = errors.New("dispatch: master closed")

// Config configures a Group. Zero values take the defaults given.
type Config struct {
	// Certificates are those the group's workers serve, for status and
	// metrics (the bytes travel in WorkerConfig); SetCertificates replaces
	// them on a reload.
	Certificates []Certificate

	// Listen are the addresses ("host:port") to serve; a worker's handler
	// learns which one a connection came from by its index here.
	Listen []string
	// DeferAccept, by index of Listen, has the kernel hand over that
	// listener's connections only once their first bytes arrived
	// (TCP_DEFER_ACCEPT): for listeners whose handlers all wait for the
	// client to speak. A worker then never reads a new connection before
	// its request is there, nor waits for it in its poller; a client that
	// sends nothing is handed over about a second later.
	DeferAccept []bool
	// inherited are sockets passed by socket activation, by the index of
	// the Listen address each serves (nil: bind that one); set by
	// NewCluster.
	inherited []*listener
	Workers   int // >= 1
	// Procs is each worker's GOMAXPROCS (0: the master's environment
	// decides, as for the other runtimeEnv settings).
	Procs int
	// ProcsFor, if set, is Procs for a cluster of total workers in all:
	// when scaling changes the total, Cluster.Scale gives every group's
	// workers what it says (Group.SetProcs); Cluster.Rebalance after a
	// reload too.
	ProcsFor func(total int) int
	Name     string // names this group of workers in logs and status
	Sched    Sched  // default rr
	Backlog  int    // listen(2) backlog, default 511
	// MaxConns is the most connections one worker holds at once (default
	// 10000); at that the master (rr) or the worker (shared) stops accepting.
	MaxConns int
	// QueueSize is how many accepted connections the rr master may hold
	// while no worker has room (default 0: stop accepting instead). Requeued
	// connections are always held. QueueTimeout (default 10s) closes a held
	// connection that found no worker in time, with a log line and a count.
	QueueSize    int
	QueueTimeout time.Duration
	// ShutdownTimeout bounds a graceful stop (default 10s).
	ShutdownTimeout time.Duration
	// WorkerTimeout kills a worker whose heartbeat stopped for that long
	// (default 30s); Heartbeat is how often workers send one (default 1s).
	WorkerTimeout time.Duration
	Heartbeat     time.Duration
	// MaxRequests recycles a worker after it served about this many requests
	// (plus up to 10% jitter, so workers do not recycle together); MaxMemory
	// recycles one whose resident memory passed this many bytes. A recycled
	// worker is replaced first and then drained, so it costs no request.
	// Both are checked at each heartbeat. 0: never.
	MaxRequests int
	MaxMemory   uint64
	// KeepOnCrashLoop: workers that keep crashing (crashLimit in
	// crashWindow) are restarted with a growing delay, up to a minute,
	// instead of stopping the master. A cluster of several groups sets it,
	// so one tenant's crash loop cannot take the others down.
	KeepOnCrashLoop bool
	// WorkerConfig is passed to every worker as is (see Worker.Config),
	// through an inherited memfd, never the environment.
	WorkerConfig []byte
	// WorkerEnv names the variables of the master's environment passed on
	// to workers; nothing else of it is (but the Go runtime's settings).
	WorkerEnv []string
	// Credential, if set, runs the workers as this user and group (and
	// that group only), so with no capabilities; the master must be root.
	Credential *syscall.Credential
	// Secrets, if set, are what Cluster.Apply gives the group's workers
	// (SetSecrets) before starting the new ones.
	Secrets []byte
	// Executable and Args start a worker (default: this binary, no args).
	Executable string
	Args       []string
	Logger     *slog.Logger
}

func (c *Config) defaults() error {
	if c.Workers < 1 {
		return fmt.Errorf("--workers must be at least 1 (got %d)", c.Workers)
	}
	if len(c.Listen) == 0 {
		return errors.New("no listen address")
	}
	if len(c.Listen) > maxListeners {
		return fmt.Errorf("%d listen addresses: at most %d", len(c.Listen), maxListeners)
	}
	if c.Sched == "" {
		c.Sched = SchedRR
	}
	if _, err := ParseSched(string(c.Sched)); err != nil {
		return err
	}
	if c.Backlog <= 0 {
		c.Backlog = 511
	}
	if c.MaxConns <= 0 {
		c.MaxConns = 10000
	}
	if c.QueueTimeout <= 0 {
		c.QueueTimeout = 10 * time.Second
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = 10 * time.Second
	}
	if c.WorkerTimeout <= 0 {
		c.WorkerTimeout = 30 * time.Second
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Executable == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find own executable: %w", err)
		}
		c.Executable = exe
	}
	return nil
}

// maxListeners bounds Config.Listen: the index travels in a newconn message
// as one byte, and shared workers inherit one fd per listener.
const maxListeners = 64

// Certificate describes a certificate a group serves.
type Certificate struct {
	Tenant string   `json:"tenant"`
	Names  []string `json:"names"`
	// NotAfter is when it expires, in Unix seconds.
	NotAfter float64 `json:"not_after_unix"`
}

// deferAccept reports whether listener j defers its connections.
func (c *Config) deferAccept(j int) bool {
	return j < len(c.DeferAccept) && c.DeferAccept[j]
}
