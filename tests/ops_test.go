package tests

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// adminAddr reads the admin endpoint's address from the server's log.
func adminAddr(t *testing.T, s *server) string {
	t.Helper()
	line := s.waitOutput(`admin endpoint.* addr=\S+`, 10*time.Second)[0]
	return regexp.MustCompile(`addr=(\S+)`).FindStringSubmatch(line)[1]
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metricSum adds up every sample of a metric family in a scrape.
func metricSum(scrape, name string) (float64, bool) {
	sum, found := 0.0, false
	sc := bufio.NewScanner(strings.NewReader(scrape))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			sum += v
			found = true
		}
	}
	return sum, found
}

// TestMetricsAddUp: /metrics scraped during and after load agrees with what
// the client saw; /healthz and /readyz answer.
func TestMetricsAddUp(t *testing.T) {
	t.Parallel()
	s, _ := startControlled(t, "--workers", "2", "--admin", "127.0.0.1:0")
	base := "http://" + adminAddr(t, s)
	if code, _ := httpGet(t, base+"/healthz"); code != 200 {
		t.Fatalf("/healthz: %d", code)
	}
	if code, body := httpGet(t, base+"/readyz"); code != 200 {
		t.Fatalf("/readyz while serving: %d %s", code, body)
	}
	const n = 500
	client := newClient()
	for i := 0; i < n; i++ {
		if i == n/2 {
			// A scrape in the middle of the load parses and moves forward.
			_, mid := httpGet(t, base+"/metrics")
			if v, ok := metricSum(mid, "wcluster_master_accepted_total"); !ok || v < float64(n/2) {
				t.Fatalf("mid-load accepted = %v (found %v), want ≥ %d", v, ok, n/2)
			}
		}
		if body, _, err := get(context.Background(), client, s.url(), true); err != nil || body != "hello world\n" {
			t.Fatalf("request %d: %q %v", i, body, err)
		}
	}
	// Workers report completions with their heartbeat: wait for it.
	var scrape string
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, scrape = httpGet(t, base+"/metrics")
		done, _ := metricSum(scrape, "wcluster_connections_completed_total")
		calls, _ := metricSum(scrape, "wcluster_guest_calls_total")
		if done == n && calls == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %d requests: completed %v, guest calls %v", n, done, calls)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for name, want := range map[string]float64{
		"wcluster_master_accepted_total":       n,
		"wcluster_connections_accepted_total":  n,
		"wcluster_connections_in_flight":       0,
		"wcluster_connections_requeued_total":  0,
		"wcluster_guest_traps_total":           0,
		"wcluster_workers":                     2,
		"wcluster_worker_up":                   2,
		"wcluster_queue_depth":                 0,
		"wcluster_connections_completed_total": n,
		// One call per request for the hello handler.
		"wcluster_guest_call_duration_seconds_count": n,
	} {
		if got, ok := metricSum(scrape, name); !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", name, got, ok, want)
		}
	}
	for _, name := range []string{"wcluster_worker_resident_bytes", "wcluster_guest_instances", "wcluster_worker_heartbeat_age_seconds", "go_goroutines", "process_open_fds"} {
		if _, ok := metricSum(scrape, name); !ok {
			t.Errorf("%s missing from /metrics", name)
		}
	}
}

// TestControlCommands: status, scale, reload and stop against a running
// master over its control socket.
func TestControlCommands(t *testing.T) {
	t.Parallel()
	s, ctl := startControlled(t, "--workers", "1")
	if out, err := run(t, "scale", "--control", ctl, "3"); err != nil {
		t.Fatalf("scale 3: %v %s", err, out)
	}
	st := getStatus(t, ctl)
	ready := 0
	for _, w := range st.Workers {
		if w.State == "ready" {
			ready++
		}
	}
	if len(st.Workers) != 3 || ready != 3 {
		t.Fatalf("after scale 3: %d workers, %d ready", len(st.Workers), ready)
	}
	seen := map[string]bool{}
	client := newClient()
	for i := 0; i < 30; i++ {
		_, w, err := get(context.Background(), client, s.url(), true)
		if err != nil {
			t.Fatal(err)
		}
		seen[w] = true
	}
	if len(seen) != 3 {
		t.Fatalf("3 workers, but requests reached %v", seen)
	}
	if out, err := run(t, "scale", "--control", ctl, "1"); err != nil {
		t.Fatalf("scale 1: %v %s", err, out)
	}
	waitStatus(t, ctl, "one worker", func(st status) bool { return len(st.Workers) == 1 })
	if out, err := run(t, "reload", "--control", ctl); err != nil || !strings.Contains(out, "reloaded") {
		t.Fatalf("reload: %v %s", err, out)
	}
	if g := getStatus(t, ctl).Totals.Generation; g != 1 {
		t.Fatalf("generation %d after reload", g)
	}
	if out, err := run(t, "scale", "--control", ctl, "0"); err == nil {
		t.Fatalf("scale 0 accepted: %s", out)
	}
	if body, _, err := get(context.Background(), client, s.url(), true); err != nil || body != "hello world\n" {
		t.Fatalf("after control commands: %q %v", body, err)
	}
	if out, err := run(t, "stop", "--control", ctl); err != nil {
		t.Fatalf("stop: %v %s", err, out)
	}
	if err := s.waitExit(30 * time.Second); err != nil {
		t.Fatalf("master exit after stop: %v", err)
	}
}

// TestSignalParity: TTIN adds a worker, TTOU removes one, QUIT stops at once.
func TestSignalParity(t *testing.T) {
	t.Parallel()
	s, ctl := startControlled(t, "--workers", "2", "--log-format", "json")
	syscall.Kill(s.cmd.Process.Pid, syscall.SIGTTIN)
	waitStatus(t, ctl, "three workers after TTIN", func(st status) bool {
		return len(st.Workers) == 3 && st.Workers[2].State == "ready"
	})
	syscall.Kill(s.cmd.Process.Pid, syscall.SIGTTOU)
	waitStatus(t, ctl, "two workers after TTOU", func(st status) bool { return len(st.Workers) == 2 })
	if body, _, err := get(context.Background(), newClient(), s.url(), true); err != nil || body != "hello world\n" {
		t.Fatalf("after TTIN/TTOU: %q %v", body, err)
	}
	// An open connection does not hold up QUIT.
	c := s.dial(t)
	defer c.Close()
	c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	begin := time.Now()
	syscall.Kill(s.cmd.Process.Pid, syscall.SIGQUIT)
	s.waitExit(20 * time.Second)
	t.Logf("QUIT: master gone in %v", time.Since(begin).Round(time.Millisecond))
	// --log-format json: every log line of the master is a JSON object.
	lines := 0
	for _, line := range strings.Split(s.output(), "\n") {
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line is not JSON: %q", line)
		}
		if m["msg"] == nil || m["level"] == nil {
			t.Fatalf("log line without msg or level: %q", line)
		}
		lines++
	}
	if lines < 3 {
		t.Fatalf("only %d JSON log lines:\n%s", lines, s.output())
	}
}
