package dispatch

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
)

// TestBootConfig: the configuration a worker reads from its memfd is what
// the master wrote, sealed; another version is refused with one line.
func TestBootConfig(t *testing.T) {
	want := bootConfig{Version: bootVersion, Dispatch: workerParams{Sched: SchedShared, MaxConns: 7, Listen: []string{"127.0.0.1:1"}}, Config: []byte(`{"x":1}`)}
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

	other, _ := json.Marshal(map[string]any{"version": bootVersion + 1, "something": "else"})
	g, err := sealedMemfd("test", other)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	_, err = decodeBoot(g)
	if err == nil || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "restart wcluster") {
		t.Fatalf("another version: want a one-line refusal, got %v", err)
	}
}

// TestWorkerEnv: a worker's environment is its id, the Go runtime's
// settings and the names passed on; nothing else of the master's.
func TestWorkerEnv(t *testing.T) {
	t.Setenv("WCLUSTER_TEST_SECRET", "no")
	t.Setenv("WCLUSTER_TEST_PASS", "yes")
	t.Setenv("GOMAXPROCS", "1")
	env := workerEnv(3, []string{"WCLUSTER_TEST_PASS", "WCLUSTER_TEST_UNSET"})
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
	for _, want := range []string{"WCLUSTER_WORKER_ID=3", "GOMAXPROCS=1", "WCLUSTER_TEST_PASS=yes"} {
		if !slices.Contains(env, want) {
			t.Errorf("worker env %q lacks %s", env, want)
		}
	}
}
