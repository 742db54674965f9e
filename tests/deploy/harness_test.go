// Package deploy checks the deployment files in deploy/ (Dockerfile,
// Kubernetes manifests, systemd units) against each other and against the
// real binary. It is a module of its own so that what it needs to render
// and decode manifests (kustomize, the Kubernetes API types) stays out of
// the product's go.mod; `make test` runs it.
//
// Its harness is the small part of tests/harness_test.go these checks
// need: build the binary, launch a process and wait on its output lines,
// socket activation and a NOTIFY_SOCKET.
package deploy

import (
	"bufio"
	"bytes"
	"context"
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
	root string // repository root
	dir  string // temp dir holding the binaries
	bin  string
}

func TestMain(m *testing.M) {
	code, err := setup()
	if err != nil {
		fmt.Fprintln(os.Stderr, "deploy: setup:", err)
		code = 1
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
	env.root = filepath.Dir(filepath.Dir(wd))
	env.dir, err = os.MkdirTemp("", "wcluster-deploy-")
	if err != nil {
		return 1, err
	}
	env.bin = filepath.Join(env.dir, "wcluster")
	// As in tests/: the race build unless WCLUSTER_TEST_RACE=0.
	build := []string{"-race", "./cmd/wcluster"}
	if os.Getenv("WCLUSTER_TEST_RACE") == "0" {
		build = build[1:]
	}
	// As in tests/: a race build's second of sleep at exit, cut to a tenth.
	if _, set := os.LookupEnv("GORACE"); !set {
		os.Setenv("GORACE", "atexit_sleep_ms=100")
	}
	return 0, goBuild(nil, env.bin, build...)
}

func goBuild(extraEnv []string, out string, args ...string) error {
	cmd := exec.Command("go", append([]string{"build", "-o", out}, args...)...)
	cmd.Dir = env.root
	cmd.Env = append(os.Environ(), extraEnv...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %v: %v\n%s", args, err, b)
	}
	return nil
}

var helloBuild struct {
	once sync.Once
	path string
	err  error
}

// helloGuest returns guests/go/hello built, from WCLUSTER_GUESTS when
// `make guests` built it there.
func helloGuest(t *testing.T) string {
	t.Helper()
	helloBuild.once.Do(func() {
		if dir := os.Getenv("WCLUSTER_GUESTS"); dir != "" {
			if p, err := filepath.Abs(filepath.Join(dir, "go-hello.wasm")); err == nil {
				if _, err := os.Stat(p); err == nil {
					helloBuild.path = p
					return
				}
			}
		}
		helloBuild.path = filepath.Join(env.dir, "go-hello.wasm")
		helloBuild.err = goBuild([]string{"GOOS=wasip1", "GOARCH=wasm"}, helloBuild.path,
			"-buildmode=c-shared", "./guests/go/hello")
	})
	if helloBuild.err != nil {
		t.Fatal(helloBuild.err)
	}
	return helloBuild.path
}

// warm compiles handler into the compilation cache dir, so that the
// master started on it loads it: compiling a Go guest under the race
// detector on a loaded machine can take longer than the wait for its
// banner, hence the generous bound here.
func warm(t *testing.T, dir, handler string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, env.bin, "check", "--cache-dir", dir, handler).CombinedOutput(); err != nil {
		t.Fatalf("wcluster check %s: %v\n%s", handler, err, out)
	}
}

// run runs the binary to completion (bounded) and returns combined output.
func run(t testing.TB, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, env.bin, args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// fetch does one GET on a new connection and returns the body of a 200.
func fetch(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return "", err
	}
	req.Close = true
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != 200 {
		err = fmt.Errorf("status %d", resp.StatusCode)
	}
	return string(b), err
}

// proc is a running process whose output the test waits on, line by line.
type proc struct {
	t       testing.TB
	cmd     *exec.Cmd
	mu      sync.Mutex // mu guards out and changed
	out     bytes.Buffer
	changed chan struct{} // closed and replaced at every new line
	done    chan struct{} // closed when the process has exited
	err     error         // its exit status, once done is closed
}

// launch starts cmd collecting its output; it is stopped at cleanup, and
// the test fails if the race detector reported anything.
func launch(t testing.TB, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{t: t, cmd: cmd, changed: make(chan struct{}), done: make(chan struct{})}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	read := make(chan struct{})
	go func() {
		defer close(read)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.out.WriteString(sc.Text() + "\n")
			close(p.changed)
			p.changed = make(chan struct{})
			p.mu.Unlock()
		}
	}()
	go func() {
		p.err = cmd.Wait()
		pw.Close()
		<-read
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				<-p.done
			}
		}
		if strings.Contains(p.output(), "DATA RACE") {
			t.Errorf("the race detector reported a data race in %s", filepath.Base(cmd.Path))
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", filepath.Base(cmd.Path), p.output())
		}
	})
	return p
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// waitOutput waits (at most d) until the output matches re and returns the
// match and its submatches; it fails the test if the process exits first.
func (p *proc) waitOutput(re string, d time.Duration) []string {
	p.t.Helper()
	m, err := p.tryWaitOutput(re, d)
	if err != nil {
		p.t.Fatal(err)
	}
	return m
}

func (p *proc) tryWaitOutput(re string, d time.Duration) ([]string, error) {
	rx := regexp.MustCompile(re)
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		p.mu.Lock()
		changed := p.changed
		m := rx.FindStringSubmatch(p.out.String())
		p.mu.Unlock()
		if m != nil {
			return m, nil
		}
		select {
		case <-changed:
		case <-p.done:
			if m := rx.FindStringSubmatch(p.output()); m != nil {
				return m, nil
			}
			return nil, fmt.Errorf("exited (%v) before printing %q", p.err, re)
		case <-timer.C:
			return nil, fmt.Errorf("no output matching %q within %v", re, d)
		}
	}
}

// socketActivated runs `systemd-socket-activate -l 127.0.0.1:PORT [extra]
// argv...` and waits until it listens; it returns the process and the
// address. The activator execs argv in place on the first connection.
func socketActivated(t *testing.T, extra []string, argv ...string) (*proc, string) {
	t.Helper()
	tool, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Fatal("systemd-socket-activate not installed (Debian package systemd; `make deps` installs it)")
	}
	for try := 0; ; try++ {
		addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
		args := append([]string{"-l", addr}, extra...)
		p := launch(t, exec.Command(tool, append(args, argv...)...))
		_, err := p.tryWaitOutput(`Listening on `+regexp.QuoteMeta(addr)+` as 3\.`, 30*time.Second)
		if err == nil {
			return p, addr
		}
		if try < 3 && strings.Contains(p.output(), "in use") {
			continue // the port was taken between freePort and bind
		}
		t.Fatalf("systemd-socket-activate: %v", err)
	}
}

// sdNotifications collects what arrives on a NOTIFY_SOCKET the test owns.
type sdNotifications struct {
	t    *testing.T
	path string
	ch   chan string
}

func sdNotifySocket(t *testing.T) *sdNotifications {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	n := &sdNotifications{t: t, path: path, ch: make(chan string, 64)}
	go func() {
		defer close(n.ch)
		buf := make([]byte, 4096)
		for {
			k, err := c.Read(buf)
			if err != nil {
				return // closed at cleanup
			}
			n.ch <- string(buf[:k])
		}
	}()
	t.Cleanup(func() { c.Close() })
	return n
}

// expect returns the next notification (within d) that has a line
// key=...; lines before it may only be STATUS= or MONOTONIC_USEC=.
func (n *sdNotifications) expect(p *proc, key string, d time.Duration) string {
	n.t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		var msg string
		select {
		case msg = <-n.ch:
		case <-timer.C:
			n.t.Fatalf("no %s= notification within %v", key, d)
		case <-p.done:
			select {
			case msg = <-n.ch:
			case <-time.After(time.Second): // a datagram sent before exit is already queued
				n.t.Fatalf("exited (%v) without a %s= notification", p.err, key)
			}
		}
		found, other := false, false
		for _, line := range strings.Split(msg, "\n") {
			switch {
			case strings.HasPrefix(line, key+"="):
				found = true
			case strings.HasPrefix(line, "STATUS="), strings.HasPrefix(line, "MONOTONIC_USEC="), line == "":
			default:
				other = true
			}
		}
		if found {
			return msg
		}
		if other {
			n.t.Fatalf("waiting for %s=, got %q", key, msg)
		}
	}
}
