package dispatch

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wcluster/wcluster/internal/ipc"
	"github.com/wcluster/wcluster/internal/sandbox"
)

// TestBootConfig: the configuration a worker reads from its memfd is what
// the master wrote, sealed; another version, of the configuration or of the
// channel's protocol, is refused with one line.
func TestBootConfig(t *testing.T) {
	want := bootConfig{Version: bootVersion, IPC: ipc.Version, Dispatch: workerParams{Sched: SchedShared, MaxConns: 7, Listen: []string{"127.0.0.1:1"}}, Config: []byte(`{"x":1}`)}
	b, _ := json.Marshal(want)
	f, err := sealedMemfd("test", b)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte("x"), 0); err == nil {
		t.Error("the sealed memfd accepted a write")
	}
	got, err := decodeBoot(f)
	if err != nil || got.Dispatch.MaxConns != 7 || string(got.Config) != `{"x":1}` {
		t.Fatalf("decodeBoot: %+v %v", got, err)
	}

	for _, other := range []map[string]any{
		{"version": bootVersion + 1, "ipc": ipc.Version, "something": "else"},
		{"version": bootVersion, "ipc": ipc.Version + 1},
	} {
		b, _ := json.Marshal(other)
		g, err := sealedMemfd("test", b)
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		_, err = decodeBoot(g)
		if err == nil || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "restart wcluster") {
			t.Fatalf("%v: want a one-line refusal, got %v", other, err)
		}
	}
}

// TestWorkerEnv: a worker's environment is its id, the Go runtime's
// settings and the names passed on; nothing else of the master's.
func TestWorkerEnv(t *testing.T) {
	t.Setenv("WCLUSTER_TEST_SECRET", "no")
	t.Setenv("WCLUSTER_TEST_PASS", "yes")
	t.Setenv("GOMAXPROCS", "1")
	t.Setenv("GORACE", "atexit_sleep_ms=100")
	env := workerEnv(3, 0, []string{"WCLUSTER_TEST_PASS", "WCLUSTER_TEST_UNSET"})
	allowed := map[string]bool{EnvWorkerID: true, "WCLUSTER_TEST_PASS": true}
	for _, n := range runtimeEnv {
		allowed[n] = true
	}
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if !allowed[name] {
			t.Errorf("worker env holds %s", kv)
		}
	}
	for _, want := range []string{"WCLUSTER_WORKER_ID=3", "GOMAXPROCS=1", "GORACE=atexit_sleep_ms=100", "WCLUSTER_TEST_PASS=yes"} {
		if !slices.Contains(env, want) {
			t.Errorf("worker env %q lacks %s", env, want)
		}
	}
	// Config.Procs, when given, is the worker's GOMAXPROCS, whatever the
	// master's environment says.
	env = workerEnv(3, 4, nil)
	if !slices.Contains(env, "GOMAXPROCS=4") || slices.Contains(env, "GOMAXPROCS=1") {
		t.Errorf("worker env %q: want GOMAXPROCS=4 alone", env)
	}
}

// TestMain makes this test binary a worker when a master started it (see
// TestSeccompKillIsNamedAndReplaced).
func TestMain(m *testing.M) {
	if IsWorker() {
		os.Exit(sandboxedTestWorker())
	}
	os.Exit(m.Run())
}

// sandboxedTestWorker serves like a real worker, under the real sandbox,
// with a handler that makes a forbidden system call on its first
// connection: what a worker compromised through its runtime would try.
func sandboxedTestWorker() int {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	w, err := NewWorker(log)
	if err != nil {
		log.Error("worker", "err", err)
		return 1
	}
	if _, err := sandbox.Apply(sandbox.Policy{}); err != nil {
		w.Fatal(err)
		return 1
	}
	if err := w.Serve(context.Background(), ptraceHandler{}, nil); err != nil {
		return 1
	}
	return 0
}

type ptraceHandler struct{}

func (ptraceHandler) ServeFD(_ context.Context, fd int, _ int) {
	syscall.Syscall(unix.SYS_PTRACE, unix.PTRACE_TRACEME, 0, 0)
	unix.Close(fd)
}
func (ptraceHandler) Drain() {}

// syncBuffer is a log destination safe for the master's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestSeccompKillIsNamedAndReplaced: a worker the seccomp filter kills is
// logged by the master with the system call's name, and replaced.
func TestSeccompKillIsNamedAndReplaced(t *testing.T) {
	var logs syncBuffer
	m, err := NewGroup(Config{
		Listen: []string{"127.0.0.1:0"}, Workers: 1, Executable: os.Args[0],
		KeepOnCrashLoop: true, Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx, func() { close(ready) }) }()
	defer func() {
		cancel()
		<-done
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("master: %v\n%s", err, logs.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("no worker ready in 60s:\n%s", logs.String())
	}
	first := m.Status().Workers[0].PID
	c, err := net.Dial("tcp", m.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	deadline := time.Now().Add(60 * time.Second)
	for {
		st := m.Status()
		replaced := len(st.Workers) == 1 && st.Workers[0].PID != first && st.Workers[0].State == "ready"
		if replaced && strings.Contains(logs.String(), "worker exited; restarting") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker not killed and replaced within 60s: %+v\n%s", st, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("master log:\n%s", logs.String())
	if !strings.Contains(logs.String(), "killed by the seccomp filter: forbidden system call ptrace") {
		t.Errorf("the master's log does not name the forbidden call:\n%s", logs.String())
	}
}
