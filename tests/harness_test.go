// Package tests holds wcluster's end-to-end tests: they build the real
// binary and real guests, start real masters and workers, and drive them
// over loopback sockets.
package tests

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
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
	"sync"
	"syscall"
	"testing"
	"time"
)

// env is what TestMain built, shared by every test.
var env struct {
	root   string // repository root
	dir    string // temp dir holding the binary and guests
	bin    string
	cache  string   // compilation cache shared by the tests' servers
	guests string   // folder of built .wasm guests
	warmed sync.Map // guest path → *sync.Once of its warm-up (see warm)
	ports  sync.Map // int → struct{}: the ports freePort gave out
}

// Tests that measure timing (respawn, hang detection, recycling, limits,
// fd baselines, RSS) run alone; the others call t.Parallel and run two at
// a time after them, which keeps the suite short on a 2-core machine.
func TestMain(m *testing.M) {
	code, err := setup()
	if err != nil {
		fmt.Fprintln(os.Stderr, "tests: setup:", err)
		os.Exit(1)
	}
	if code == 0 {
		code = m.Run()
	}
	os.RemoveAll(env.dir)
	os.Exit(code)
}

func setup() (int, error) {
	wd, err := os.Getwd()
	if err != nil {
		return 1, err
	}
	env.root = filepath.Dir(wd)
	env.dir, err = os.MkdirTemp("", "wcluster-tests-")
	if err != nil {
		return 1, err
	}
	env.bin = filepath.Join(env.dir, "wcluster")
	env.cache = filepath.Join(env.dir, "cache")
	env.guests = os.Getenv("WCLUSTER_GUESTS")
	if env.guests == "" {
		env.guests = filepath.Join(env.dir, "guests")
	}
	// The race detector watches the master and workers through every test.
	// WCLUSTER_TEST_RACE=0 builds without it, to read timings off the tests.
	// -buildvcs=true: the binary names its commit (--version, status, metrics).
	build := []string{"-race", "-buildvcs=true", "./cmd/wcluster"}
	if os.Getenv("WCLUSTER_TEST_RACE") == "0" {
		build = build[1:]
	}
	if err := goBuild(nil, env.bin, build...); err != nil {
		return 1, err
	}
	// A race build sleeps a second before it exits (atexit_sleep_ms), for
	// reports still being written; every master, worker and command the
	// tests end would pay it. A tenth of it is left. The master passes
	// GORACE on to its workers.
	if _, set := os.LookupEnv("GORACE"); !set {
		os.Setenv("GORACE", "atexit_sleep_ms=100")
	}
	// The Go guests every test needs; other languages come from `make guests`.
	wasip1 := []string{"GOOS=wasip1", "GOARCH=wasm"}
	for _, g := range []struct{ name, pkg string }{
		{"go-hello", "./guests/go/hello"}, {"go-echo", "./guests/go/echo"}, {"go-faults", "./guests/go/faults"},
		{"go-greet", "./guests/go/greet"},
	} {
		out := filepath.Join(env.guests, g.name+".wasm")
		if _, err := os.Stat(out); err == nil {
			continue
		}
		if err := goBuild(wasip1, out, "-buildmode=c-shared", g.pkg); err != nil {
			return 1, err
		}
	}
	if out := filepath.Join(env.guests, "go-cat.wasm"); !exists(out) {
		if err := goBuild(wasip1, out, "./guests/go/catcmd"); err != nil {
			return 1, err
		}
	}
	return 0, nil
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

func goBuild(extraEnv []string, out string, args ...string) error {
	cmd := exec.Command("go", append([]string{"build", "-o", out}, args...)...)
	cmd.Dir = env.root
	cmd.Env = append(os.Environ(), extraEnv...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %v: %v\n%s", args, err, b)
	}
	return nil
}

// guest returns the path of a built guest, e.g. guest("go-echo").
func guest(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(env.guests, name+".wasm")
	if !exists(p) {
		t.Fatalf("guest %s not built (run `make guests`, or set WCLUSTER_GUESTS)", p)
	}
	warm(p)
	return p
}

// warm fills the tests' compilation cache with the guest at path, once per
// path for the whole run, so that the servers tests start in parallel load
// it instead of each compiling it: under the race detector on a loaded
// machine that compilation can take longer than a start's minute, hence the
// generous bound here. What `check` refuses is left to the server to report.
func warm(path string) {
	once, _ := env.warmed.LoadOrStore(path, new(sync.Once))
	once.(*sync.Once).Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		exec.CommandContext(ctx, env.bin, "check", "--cache-dir", env.cache, path).Run()
	})
}

// server is a running wcluster master (or another process the tests
// launch and read the output of, such as systemd-socket-activate).
type server struct {
	t       testing.TB
	cmd     *exec.Cmd
	addr    string
	mu      sync.Mutex // mu guards out and changed
	out     bytes.Buffer
	changed chan struct{} // closed and replaced at every new line of output
	done    chan struct{} // closed when the process has exited
	err     error         // its exit status, once done is closed
}

var servingRE = regexp.MustCompile(`serving .* on (\S+) \(`)

// start runs `wcluster serve ARGS` on a free loopback port and waits for its
// "serving" line (at most a minute). The server is stopped at cleanup.
func start(t testing.TB, args ...string) *server {
	t.Helper()
	s, err := tryStart(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func tryStart(t testing.TB, args ...string) (*server, error) {
	if len(args) == 0 || !strings.HasSuffix(args[len(args)-1], ".wasm") {
		warm(filepath.Join(env.root, "guests", "embedded", "hello.wasm")) // what serve runs without a handler
	}
	full := append([]string{"serve", "--listen", "127.0.0.1:0", "--cache-dir", env.cache}, args...)
	return launch(t, exec.Command(env.bin, full...))
}

// launchOption changes what launch adds to a process or waits for.
type launchOption func(*launchOptions)

type launchOptions struct {
	env    []string
	noWait bool
}

// withEnv adds KEY=VALUE pairs to the process's environment.
func withEnv(kv ...string) launchOption {
	return func(o *launchOptions) { o.env = append(o.env, kv...) }
}

// noWait makes launch return once the process runs, without waiting for
// a "serving" line: for a process that serves later (socket activation)
// or one the test reads another way.
func noWait() launchOption { return func(o *launchOptions) { o.noWait = true } }

// launch starts cmd, collecting its output, and (unless noWait) waits at
// most a minute for a `wcluster serve` "serving" line, whose address
// becomes s.addr. The process is stopped at cleanup, and the test fails if
// the race detector reported anything.
func launch(t testing.TB, cmd *exec.Cmd, opts ...launchOption) (*server, error) {
	var o launchOptions
	for _, opt := range opts {
		opt(&o)
	}
	if len(o.env) > 0 {
		if cmd.Env == nil {
			cmd.Env = os.Environ()
		}
		cmd.Env = append(cmd.Env, o.env...)
	}
	s := &server{t: t, cmd: cmd, changed: make(chan struct{}), done: make(chan struct{})}
	pr, pw := io.Pipe()
	s.cmd.Stderr = pw
	s.cmd.Stdout = pw
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	read := make(chan struct{})
	go func() {
		defer close(read)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			s.mu.Lock()
			s.out.WriteString(sc.Text() + "\n")
			close(s.changed)
			s.changed = make(chan struct{})
			s.mu.Unlock()
		}
	}()
	go func() {
		s.err = s.cmd.Wait()
		pw.Close()
		<-read // every line is in out before done is closed
		close(s.done)
	}()
	t.Cleanup(func() {
		s.stop()
		if strings.Contains(s.output(), "DATA RACE") {
			t.Errorf("the race detector reported a data race in %s", filepath.Base(cmd.Path))
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", filepath.Base(cmd.Path), s.output())
		}
	})
	if o.noWait {
		return s, nil
	}
	m, err := s.tryWaitOutput(servingRE.String(), 60*time.Second)
	if err != nil {
		return nil, fmt.Errorf("server not serving: %w:\n%s", err, s.output())
	}
	s.addr = m[1]
	return s, nil
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago (for
// tests whose config or command line must name their ports).
func freePort(t testing.TB) int {
	t.Helper()
	// A port is free from its close until its user binds it: the kernel
	// may give it out again meanwhile (to the next call, in this test or
	// a parallel one), so none is given twice.
	for i := 0; i < 100; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if _, taken := env.ports.LoadOrStore(port, struct{}{}); !taken {
			return port
		}
	}
	t.Fatal("no port not given out before in 100 tries")
	return 0
}

func (s *server) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.String()
}

// stop sends SIGTERM and waits (bounded) for the exit; SIGKILL after that.
func (s *server) stop() {
	select {
	case <-s.done:
		return
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
}

// waitExit waits for the server to exit by itself and returns its status.
func (s *server) waitExit(d time.Duration) error {
	select {
	case <-s.done:
		return s.err
	case <-time.After(d):
		s.t.Fatalf("server still running after %v", d)
		return nil
	}
}

// waitOutput waits (at most d) until the output matches re and returns the
// match and its submatches; it fails the test if the process exits first.
func (s *server) waitOutput(re string, d time.Duration) []string {
	s.t.Helper()
	m, err := s.tryWaitOutput(re, d)
	if err != nil {
		s.t.Fatal(err)
	}
	return m
}

// waitOutputN waits (at most d) until n lines of the output match re and
// returns the first n such lines, whole.
func (s *server) waitOutputN(re string, n int, d time.Duration) []string {
	s.t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		changed := s.changed
		var lines []string
		for _, l := range strings.Split(s.out.String(), "\n") {
			if rx.MatchString(l) {
				lines = append(lines, l)
			}
		}
		s.mu.Unlock()
		if len(lines) >= n {
			return lines[:n]
		}
		select {
		case <-changed:
		case <-s.done:
			s.t.Fatalf("exited (%v) with %d of %d lines matching %q", s.err, len(lines), n, re)
		case <-deadline.C:
			s.t.Fatalf("%d of %d lines matching %q within %v", len(lines), n, re, d)
		}
	}
}

// tryWaitOutput is waitOutput returning the failure; it wakes at every new
// line instead of polling.
func (s *server) tryWaitOutput(re string, d time.Duration) ([]string, error) {
	rx := regexp.MustCompile(re)
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		s.mu.Lock()
		changed := s.changed
		m := rx.FindStringSubmatch(s.out.String())
		s.mu.Unlock()
		if m != nil {
			return m, nil
		}
		select {
		case <-changed:
		case <-s.done:
			if m := rx.FindStringSubmatch(s.output()); m != nil {
				return m, nil
			}
			return nil, fmt.Errorf("exited (%v) before printing %q", s.err, re)
		case <-timer.C:
			return nil, fmt.Errorf("no output matching %q within %v", re, d)
		}
	}
}

func (s *server) url() string { return "http://" + s.addr + "/" }

// dial connects to the server with a deadline on the whole exchange.
func (s *server) dial(t testing.TB) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", s.addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// get does one HTTP GET and returns body and worker id header.
func get(ctx context.Context, client *http.Client, url string, close bool) (string, string, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return "", "", err
	}
	req.Close = close
	resp, err := client.Do(req)
	if err != nil {
		return "", "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", "", err
	}
	if resp.StatusCode != 200 {
		return string(b), "", fmt.Errorf("status %d", resp.StatusCode)
	}
	return string(b), resp.Header.Get("X-Wcluster-Worker"), nil
}

func newClient() *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
}

// procStatus reads /proc/PID/status as name → value.
func procStatus(t testing.TB, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

// procKiB reads the fields of /proc/PID/status given in kB (VmRSS, RssAnon...).
func procKiB(t testing.TB, pid int) map[string]int64 {
	t.Helper()
	m := map[string]int64{}
	for k, v := range procStatus(t, pid) {
		if n, ok := strings.CutSuffix(v, " kB"); ok {
			if i, err := strconv.ParseInt(strings.TrimSpace(n), 10, 64); err == nil {
				m[k] = i
			}
		}
	}
	return m
}

// environOf reads a process's environment.
func environOf(t testing.TB, pid int) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
}

// certPool is a pool holding the PEM certificate in file cert, for a
// client of a server started with --tls-cert.
func certPool(t testing.TB, cert string) *x509.CertPool {
	t.Helper()
	b, err := os.ReadFile(cert)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatalf("no PEM certificate in %s", cert)
	}
	return pool
}

// readStatus reads `wcluster status --json` from the control socket ctl
// into v (a mirror of the part of the document the test reads).
func readStatus(t testing.TB, ctl string, v any) {
	t.Helper()
	if err := tryReadStatus(t, ctl, v); err != nil {
		t.Fatal(err)
	}
}

// tryReadStatus is readStatus returning the failure, for use off the
// test's goroutine.
func tryReadStatus(t testing.TB, ctl string, v any) error {
	out, err := run(t, "status", "--json", "--control", ctl)
	if err != nil {
		return fmt.Errorf("wcluster status: %w: %s", err, out)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		return fmt.Errorf("wcluster status: %w: %s", err, out)
	}
	return nil
}

// run runs the binary to completion (bounded) and returns combined output.
func run(t testing.TB, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, env.bin, args...)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// missing fails the test for a tool, build or limit it needs and lacks,
// naming what to do: a check that cannot run is not passed (`make test`
// installs every tool and builds every guest).
func missing(t testing.TB, format string, args ...any) {
	t.Helper()
	t.Fatalf(format, args...)
}
