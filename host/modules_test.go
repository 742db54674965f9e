package host

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestSharedModule: tenants given one Modules compile their module once,
// each still answers as itself (its config, through host functions of the
// shared runtime), and with MinInstances < 0 a tenant holds no instance
// until its first request.
func TestSharedModule(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ms := NewModules()
	t.Cleanup(func() { ms.Close(ctx) })
	var tenants []*Tenant
	for i := range 3 {
		name := fmt.Sprintf("s%d", i)
		h := newProbe(t, name, Options{Modules: ms, MinInstances: -1, MemoryLimit: 64 << 20})
		if live := h.Stats().Live; live != 0 {
			t.Errorf("%s: %d instances before any request, want 0", name, live)
		}
		tenants = append(tenants, &Tenant{Name: name, Handler: h, Hosts: []string{name + ".test"}})
	}
	// Another memory limit is another runtime.
	other := newProbe(t, "other", Options{Modules: ms, MinInstances: -1, MemoryLimit: 32 << 20})
	tenants = append(tenants, &Tenant{Name: "other", Handler: other, Hosts: []string{"other.test"}})
	if n := ms.Len(); n != 2 {
		t.Errorf("%d compiled modules, want 2 (one per memory limit)", n)
	}
	r, err := NewRouter([]Listener{{Tenants: tenants}}, RouterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c, _ := serveOne(t, r, 0)
	br := bufio.NewReader(c)
	for _, name := range []string{"s2", "s0", "other", "s1", "s2"} {
		if code, body := roundTrip(t, br, c, name+".test", "/config?k=name"); code != 200 || body != name {
			t.Errorf("Host %s.test: %d %q, want 200 %q", name, code, body, name)
		}
	}
	for _, tn := range tenants {
		if s := tn.Handler.Stats(); s.Instances != 1 {
			t.Errorf("%s: %d instances made, want 1 (made by its first request)", tn.Name, s.Instances)
		}
	}
}

// TestLazyTimeLimit: a handler without instances has its watchdog asleep;
// the instance its first request makes is still held to the time limit.
func TestLazyTimeLimit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h, err := New(ctx, Options{Name: "lazy", Wasm: probeWasm(t), Timeout: 500 * time.Millisecond, MinInstances: -1,
		CacheDir: filepath.Join(os.TempDir(), "wcluster-host-test-cache")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close(ctx) })
	time.Sleep(100 * time.Millisecond) // the watchdog finds no instance and sleeps
	r, err := NewRouter([]Listener{{Tenants: []*Tenant{{Name: "lazy", Handler: h}}}}, RouterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c, done := serveOne(t, r, 0)
	fmt.Fprintf(c, "GET /loop HTTP/1.1\r\nHost: x\r\n\r\n")
	waitClosed(t, done)
	if s := h.Stats(); s.Timeouts != 1 || s.Instances != 1 {
		t.Errorf("timeouts %d, instances %d: want the first instance's call stopped at the limit", s.Timeouts, s.Instances)
	}
}

// TestLazyShrinksToNone: with MinInstances < 0 the instances a request made
// are closed once idle, back to none; the next request makes one again.
func TestLazyShrinksToNone(t *testing.T) {
	t.Parallel()
	h := newProbe(t, "shrink", Options{MinInstances: -1, idleInstance: 300 * time.Millisecond})
	r, err := NewRouter([]Listener{{Tenants: []*Tenant{{Name: "shrink", Handler: h}}}}, RouterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for round := range 2 {
		c, _ := serveOne(t, r, 0)
		if code, body := roundTrip(t, bufio.NewReader(c), c, "x", "/"); code != 200 || body != "tenant shrink\n" {
			t.Fatalf("round %d: %d %q", round, code, body)
		}
		c.Close()
		for deadline := time.Now().Add(20 * time.Second); h.Stats().Live != 0; time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: %d instances live 20s after the last request, want none", round, h.Stats().Live)
			}
		}
	}
	if s := h.Stats(); s.Instances != 2 {
		t.Errorf("%d instances made, want 2 (one per request, the first closed when idle)", s.Instances)
	}
}
