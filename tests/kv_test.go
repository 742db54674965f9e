package tests

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wcluster/wcluster/internal/testfiles"
)

// kvDo sends one request to the go-kv example on a new connection (so rr
// spreads them over the workers) and returns status, body and worker.
func kvDo(t *testing.T, addr, host, method, path, body string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://"+addr+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header.Get("X-Wcluster-Worker")
}

// readEverywhere GETs path on new connections until both workers have
// answered (at most 100 requests: rr gives the next connection to the
// worker with fewer open, so both come soon), each with want.
func readEverywhere(t *testing.T, addr, path, want string) {
	t.Helper()
	workers := map[string]bool{}
	for i := 0; i < 100 && len(workers) < 2; i++ {
		code, body, w := kvDo(t, addr, "", "GET", path, "")
		if code != 200 || body != want {
			t.Fatalf("GET %s %d (worker %q): %d, %d bytes, want %d bytes", path, i, w, code, len(body), len(want))
		}
		workers[w] = true
	}
	if len(workers) != 2 {
		t.Fatalf("100 GETs of %s answered by workers %v, want both (and X-Wcluster-Worker)", path, workers)
	}
}

// TestKVSharedAndDurable: a value PUT through one worker is read through
// every worker, survives SIGKILL of a worker and a restart with the same
// --kv-dir, and DELETE gives 404 after; kv_add is atomic across workers.
func TestKVSharedAndDurable(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "kv")
	args := []string{"--workers", "2", "--kv-dir", dir, guest(t, "go-kv")}
	s, ctl := startControlled(t, args...)
	if code, _, _ := kvDo(t, s.addr, "", "PUT", "/kv/greeting", "hello"); code != 204 {
		t.Fatalf("PUT: %d", code)
	}
	readEverywhere(t, s.addr, "/kv/greeting", "hello")
	// Atomic adds from 8 clients, over both workers.
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 10 {
				if code, body, _ := kvDo(t, s.addr, "", "POST", "/kv/count?add=1", ""); code != 200 {
					t.Errorf("add: %d %q", code, body)
				}
			}
		}()
	}
	wg.Wait()
	if code, body, _ := kvDo(t, s.addr, "", "GET", "/kv/count", ""); code != 200 || body != "80" {
		t.Fatalf("after 80 adds from 8 clients: %d %q", code, body)
	}

	st := getStatus(t, ctl)
	syscall.Kill(st.Workers[0].PID, syscall.SIGKILL)
	waitStatus(t, ctl, "worker replaced", func(s status) bool {
		return len(s.Workers) == 2 && s.Workers[0].PID != st.Workers[0].PID && s.Workers[0].State == "ready"
	})
	for i := range 4 {
		if code, body, _ := kvDo(t, s.addr, "", "GET", "/kv/greeting", ""); code != 200 || body != "hello" {
			t.Fatalf("GET %d after SIGKILL of a worker: %d %q", i, code, body)
		}
	}
	s.stop()
	s2 := start(t, args...)
	if code, body, _ := kvDo(t, s2.addr, "", "GET", "/kv/greeting", ""); code != 200 || body != "hello" {
		t.Fatalf("GET after a restart: %d %q", code, body)
	}
	if code, _, _ := kvDo(t, s2.addr, "", "DELETE", "/kv/greeting", ""); code != 204 {
		t.Fatalf("DELETE: %d", code)
	}
	for range 4 {
		if code, _, _ := kvDo(t, s2.addr, "", "GET", "/kv/greeting", ""); code != 404 {
			t.Fatalf("GET after DELETE: %d, want 404", code)
		}
	}
}

// TestKVTenantsAndLimits: tenants on one port see only their own keys;
// an oversize key or value and a full quota get 413 (ErrTooLarge,
// ErrQuota); a store that cannot open gives 503 (ErrUnavailable), not a
// hang or a crash.
func TestKVTenantsAndLimits(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	port := freePort(t)
	cfg := filepath.Join(dir, "wcluster.toml")
	writeConfig(t, cfg, fmt.Sprintf(`[cluster]
workers = 2
cache_dir = %q
kv_dir = %q

[[tenant]]
name = "alpha"
handler = %q
listen = ["127.0.0.1:%d"]
hosts = ["alpha.test"]
kv_max_value = "1KiB"
kv_quota = "4KiB"

[[tenant]]
name = "beta"
handler = %q
listen = ["127.0.0.1:%d"]
hosts = ["beta.test"]
`, env.cache, filepath.Join(dir, "kv"), guest(t, "go-kv"), port, guest(t, "go-kv"), port))
	s := startConfig(t, cfg)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if code, _, _ := kvDo(t, addr, "alpha.test", "PUT", "/kv/secret", "alpha's"); code != 204 {
		t.Fatalf("alpha PUT: %d", code)
	}
	if code, body, _ := kvDo(t, addr, "beta.test", "GET", "/kv/secret", ""); code != 404 {
		t.Fatalf("beta read alpha's key: %d %q", code, body)
	}
	if code, body, _ := kvDo(t, addr, "beta.test", "GET", "/kv/?prefix=", ""); code != 200 || body != "" {
		t.Fatalf("beta lists %d %q, want none of alpha's keys", code, body)
	}
	checkKVLimits(t, addr, "alpha.test")
	// beta has no quota of its own but the default; it is unaffected.
	if code, _, _ := kvDo(t, addr, "beta.test", "PUT", "/kv/x", strings.Repeat("z", 1000)); code != 204 {
		t.Fatalf("beta PUT while alpha is full: %d", code)
	}
	s.stop()

	// A store that cannot be opened: the guest gets ErrUnavailable.
	broken := filepath.Join(dir, "broken")
	if err := os.MkdirAll(filepath.Join(broken, "kv.sqlite"), 0o700); err != nil {
		t.Fatal(err)
	}
	s2 := start(t, "--workers", "1", "--kv-dir", broken, guest(t, "go-kv"))
	if code, body, _ := kvDo(t, s2.addr, "", "PUT", "/kv/a", "b"); code != 503 {
		t.Fatalf("PUT to a store that cannot open: %d %q, want 503", code, body)
	}
	s2.waitOutput("key-value store unavailable", 10*time.Second)
	if code, _, _ := kvDo(t, s2.addr, "", "GET", "/kv/a", ""); code != 503 {
		t.Fatalf("the worker did not go on answering: %d", code)
	}
}

// checkKVLimits checks a kv example's answers at the store's limits, on a
// tenant whose kv_max_value is 1KiB and kv_quota 4KiB: an oversize value
// and an oversize key (over 1,024 bytes) get 413 (ErrTooLarge), and so
// does a write past the quota (ErrQuota) once the tenant's store is full.
func checkKVLimits(t *testing.T, addr, host string) {
	t.Helper()
	if code, body, _ := kvDo(t, addr, host, "PUT", "/kv/big", strings.Repeat("x", 2048)); code != 413 {
		t.Fatalf("a 2 KiB value with kv_max_value 1KiB: %d %q, want 413", code, body)
	}
	if code, body, _ := kvDo(t, addr, host, "PUT", "/kv/"+strings.Repeat("k", 1500), "v"); code != 413 {
		t.Fatalf("a 1,500-byte key: %d %q, want 413", code, body)
	}
	full := 0
	for i := range 6 {
		code, body, _ := kvDo(t, addr, host, "PUT", fmt.Sprintf("/kv/fill%d", i), strings.Repeat("y", 1000))
		if code == 413 {
			full++
		} else if code != 204 {
			t.Fatalf("fill %d: %d %q", i, code, body)
		}
	}
	if full == 0 {
		t.Fatal("6 KB written to a 4 KiB quota: no 413")
	}
}

// kvExamples are the kv examples of guests/<lang>/kv, one per language,
// and the Go http-wasm one (guests/go/httpkv).
var kvExamples = []string{"go-kv", "c-kv", "rust-kv", "as-kv", "zig-kv", "go-httpkv"}

// TestKVExamples: every language's kv example speaks the same HTTP
// key-value API on the same store: PUT → 204, GET → 200 with the bytes (any
// bytes, empty too) from every worker, or 404, DELETE → 204; two requests
// on one kept-alive connection; 413 for an oversize key or value and past
// the quota.
func TestKVExamples(t *testing.T) {
	t.Parallel()
	for _, name := range kvExamples {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s := start(t, "--workers", "2", "--kv-dir", filepath.Join(t.TempDir(), "kv"),
				"--kv-max-value", "1KiB", "--kv-quota", "4KiB", guest(t, name))
			binary := make([]byte, 256)
			for i := range binary {
				binary[i] = byte(i)
			}
			for _, v := range []string{"value one", string(binary), ""} {
				if code, body, _ := kvDo(t, s.addr, "", "PUT", "/kv/k1", v); code != 204 {
					t.Fatalf("PUT %d bytes: %d %q", len(v), code, body)
				}
				readEverywhere(t, s.addr, "/kv/k1", v)
			}
			if code, _, _ := kvDo(t, s.addr, "", "GET", "/kv/missing", ""); code != 404 {
				t.Fatalf("GET of a key never set: %d, want 404", code)
			}
			if code, _, _ := kvDo(t, s.addr, "", "DELETE", "/kv/k1", ""); code != 204 {
				t.Fatalf("DELETE: %d, want 204", code)
			}
			if code, _, _ := kvDo(t, s.addr, "", "GET", "/kv/k1", ""); code != 404 {
				t.Fatalf("GET after DELETE: %d, want 404", code)
			}
			// Keep-alive: two requests on one connection.
			c := s.dial(t)
			c.SetDeadline(time.Now().Add(30 * time.Second))
			fmt.Fprint(c, "PUT /kv/k2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != 204 {
				t.Fatalf("PUT on a kept-alive connection: %v %v", resp, err)
			}
			io.Copy(io.Discard, resp.Body)
			fmt.Fprint(c, "GET /kv/k2 HTTP/1.1\r\nHost: x\r\n\r\n")
			resp, err = http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("second request on the connection: %v", err)
			}
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 || string(b) != "abc" {
				t.Fatalf("GET on the same connection: %d %q", resp.StatusCode, b)
			}
			checkKVLimits(t, s.addr, "")
		})
	}
}

// TestKVRedis: with --kv-redis the store is a real Redis: a value PUT
// through one worker is read through every worker, after SIGKILL of a
// worker and after a restart of wcluster; DELETE gives 404; Redis stopped
// gives 503 (ErrUnavailable) within the store's bound, and the workers
// live on.
func TestKVRedis(t *testing.T) {
	t.Parallel()
	url, redisCmd := testfiles.Redis(t)
	args := []string{"--workers", "2", "--kv-redis", url, guest(t, "go-kv")}
	s, ctl := startControlled(t, args...)
	if code, _, _ := kvDo(t, s.addr, "", "PUT", "/kv/city", "Lyon"); code != 204 {
		t.Fatalf("PUT: %d", code)
	}
	readEverywhere(t, s.addr, "/kv/city", "Lyon")
	st := getStatus(t, ctl)
	syscall.Kill(st.Workers[1].PID, syscall.SIGKILL)
	waitStatus(t, ctl, "worker replaced", func(s status) bool {
		return len(s.Workers) == 2 && s.Workers[1].PID != st.Workers[1].PID && s.Workers[1].State == "ready"
	})
	s.stop()
	s2, ctl2 := startControlled(t, args...)
	if code, body, _ := kvDo(t, s2.addr, "", "GET", "/kv/city", ""); code != 200 || body != "Lyon" {
		t.Fatalf("GET after SIGKILL and a restart: %d %q", code, body)
	}
	if code, _, _ := kvDo(t, s2.addr, "", "DELETE", "/kv/city", ""); code != 204 {
		t.Fatalf("DELETE: %d", code)
	}
	if code, _, _ := kvDo(t, s2.addr, "", "GET", "/kv/city", ""); code != 404 {
		t.Fatalf("GET after DELETE: %d", code)
	}
	before := getStatus(t, ctl2)
	redisCmd.Process.Kill()
	redisCmd.Wait()
	begin := time.Now()
	if code, body, _ := kvDo(t, s2.addr, "", "GET", "/kv/city", ""); code != 503 {
		t.Fatalf("GET with Redis stopped: %d %q, want 503", code, body)
	}
	t.Logf("503 with Redis stopped after %v", time.Since(begin).Round(time.Millisecond))
	s2.waitOutput("key-value store unavailable", 10*time.Second)
	after := getStatus(t, ctl2)
	for i := range after.Workers {
		if after.Workers[i].PID != before.Workers[i].PID {
			t.Fatalf("a worker was replaced while Redis was down")
		}
	}
}
