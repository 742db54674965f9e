// Command startup measures how fast wcluster starts serving and how much
// memory its processes hold:
//
//   - cold: `wcluster serve --workers N` with an empty --cache-dir, from exec
//     until the first request is answered (the master compiles the module,
//     then the workers load it from the cache it filled);
//   - warm: the same with the cache the cold start left;
//   - respawn: a worker of the warm server is killed (SIGKILL) and the time
//     until a request is answered again is taken: the start of one worker
//     with a warm cache, the master already running;
//   - RSS (VmRSS from /proc) of the master and of each worker (pids from
//     `wcluster status --json`), when first serving and again after a short
//     keep-alive load (which grows the instance pool).
//
// Samples alternate cold, warm, cold, warm... and medians are printed.
//
//	go build -o /tmp/wcluster ./cmd/wcluster
//	go run ./bench/startup -bin /tmp/wcluster -runs 5
//	go run ./bench/startup -bin /tmp/wcluster -handler out/guests/wat-hello.wasm
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	bin := flag.String("bin", "./wcluster", "wcluster binary")
	handler := flag.String("handler", "", "handler .wasm (default: the embedded hello)")
	workers := flag.Int("workers", 1, "workers")
	runs := flag.Int("runs", 5, "cold and warm samples each")
	load := flag.Duration("load", 2*time.Second, "keep-alive load before the second RSS reading (0: none)")
	conns := flag.Int("conns", 64, "connections of that load")
	flag.Parse()

	name := "embedded hello"
	if *handler != "" {
		name = *handler
	}
	fmt.Printf("# wcluster serve --workers %d, handler %s, %d samples each; times from exec to the first answered request\n", *workers, name, *runs)
	fmt.Println("# kind  run  first-answer  serving-line  respawn  master-RSS  worker-RSS(ready)  worker-RSS(after load)  instances-live")
	var cold, warm, respawn, coldLine, warmLine []time.Duration
	var masterRSS, workerRSS, workerLoadedRSS []int64
	tmp, err := os.MkdirTemp("", "wcluster-startup-")
	if err != nil {
		fatal(err)
	}
	defer os.RemoveAll(tmp)
	for i := 1; i <= *runs; i++ {
		cache := filepath.Join(tmp, fmt.Sprintf("cache-%d", i))
		for _, kind := range []string{"cold", "warm"} {
			s, err := sample(*bin, *handler, cache, filepath.Join(tmp, "control.sock"), *workers, kind == "warm", *load, *conns)
			if err != nil {
				fatal(fmt.Errorf("%s run %d: %w", kind, i, err))
			}
			fmt.Printf("%-5s %4d  %12v  %12v  %7v  %9s  %17s  %22s  %s\n", kind, i, ms(s.first), ms(s.line), ms(s.respawn),
				kib(s.masterRSS), kibs(s.workerRSS), kibs(s.workerLoadedRSS), s.instances)
			if kind == "cold" {
				cold, coldLine = append(cold, s.first), append(coldLine, s.line)
			} else {
				warm, warmLine = append(warm, s.first), append(warmLine, s.line)
				if s.respawn > 0 {
					respawn = append(respawn, s.respawn)
				}
			}
			masterRSS = append(masterRSS, s.masterRSS)
			workerRSS = append(workerRSS, s.workerRSS...)
			workerLoadedRSS = append(workerLoadedRSS, s.workerLoadedRSS...)
		}
	}
	fmt.Println()
	fmt.Printf("median exec → first answer: cold %v, warm %v (serving line: cold %v, warm %v)\n",
		ms(median(cold)), ms(median(warm)), ms(median(coldLine)), ms(median(warmLine)))
	fmt.Printf("median worker respawn (SIGKILL → answered again, warm cache): %v\n", ms(median(respawn)))
	fmt.Printf("median RSS: master %s, worker when ready %s, worker after load %s\n",
		kib(medianInt(masterRSS)), kib(medianInt(workerRSS)), kib(medianInt(workerLoadedRSS)))
}

type result struct {
	first, line, respawn       time.Duration
	masterRSS                  int64
	workerRSS, workerLoadedRSS []int64
	instances                  string
}

func sample(bin, handler, cache, control string, workers int, warm bool, load time.Duration, conns int) (result, error) {
	var r result
	os.Remove(control)
	port, err := freePort()
	if err != nil {
		return r, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	args := []string{"serve", "--listen", addr, "--workers", strconv.Itoa(workers), "--cache-dir", cache, "--control", control}
	if handler != "" {
		args = append(args, handler)
	}
	cmd := exec.Command(bin, args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return r, err
	}
	cmd.Stdout = io.Discard
	var line atomic.Int64 // ns from exec to the "serving" line
	lineSeen := make(chan struct{})
	var outMu sync.Mutex
	var out strings.Builder
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return r, err
	}
	exited := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "serving") && line.Load() == 0 {
				line.Store(int64(time.Since(t0)))
				close(lineSeen)
			}
			outMu.Lock()
			out.WriteString(sc.Text() + "\n")
			outMu.Unlock()
		}
		cmd.Wait()
		close(exited)
	}()
	defer stop(cmd, exited)
	fail := func(err error) (result, error) {
		outMu.Lock()
		defer outMu.Unlock()
		return r, fmt.Errorf("%w\nserver output:\n%s", err, out.String())
	}

	if err := waitAnswer(addr, 60*time.Second, exited); err != nil {
		return fail(err)
	}
	r.first = time.Since(t0)
	// The answer may come before this process has read the line.
	select {
	case <-lineSeen:
	case <-time.After(5 * time.Second):
	}
	r.line = time.Duration(line.Load())
	st, err := status(bin, control, workers)
	if err != nil {
		return fail(err)
	}
	r.masterRSS = rss(st.PID)
	for _, w := range st.Workers {
		r.workerRSS = append(r.workerRSS, rss(w.PID))
	}
	if load > 0 {
		n, err := keepAliveLoad(addr, conns, load)
		if err != nil {
			return fail(err)
		}
		// The handler's counters come with the worker's heartbeat (each
		// second): wait, bounded, until they include the load.
		deadline := time.Now().Add(5 * time.Second)
		for {
			st, err = status(bin, control, workers)
			if err != nil {
				return fail(err)
			}
			var calls float64
			var live []string
			for _, w := range st.Workers {
				c, _ := w.Handler["calls"].(float64)
				calls += c
				l, _ := w.Handler["instances_live"].(float64)
				live = append(live, strconv.Itoa(int(l)))
			}
			r.instances = strings.Join(live, ",")
			if calls >= float64(n) || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond) // poll interval of a bounded wait
		}
		for _, w := range st.Workers {
			r.workerLoadedRSS = append(r.workerLoadedRSS, rss(w.PID))
		}
	}
	if warm && len(st.Workers) > 0 {
		// One worker's start with a warm cache, the master running: kill it
		// and time until the server answers again. With one worker, the
		// request waits in the backlog for the replacement.
		old := st.Workers[0].PID
		t1 := time.Now()
		if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
			return fail(err)
		}
		if workers == 1 {
			if err := waitAnswer(addr, 30*time.Second, exited); err != nil {
				return fail(err)
			}
		} else {
			// Others still answer: wait for a new pid in the ready state.
			deadline := time.Now().Add(30 * time.Second)
			for {
				st, err := status(bin, control, workers)
				if err == nil && replaced(st, old) {
					break
				}
				if time.Now().After(deadline) {
					return fail(errors.New("worker not replaced within 30s"))
				}
				time.Sleep(time.Millisecond)
			}
		}
		r.respawn = time.Since(t1)
	}
	return r, nil
}

func replaced(st statusJSON, old int) bool {
	for _, w := range st.Workers {
		if w.PID == old || w.State != "ready" {
			return false
		}
	}
	return true
}

// waitAnswer sends GET requests, each on a new connection, until one is
// answered 200 or d passes.
func waitAnswer(addr string, d time.Duration, exited chan struct{}) error {
	deadline := time.Now().Add(d)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return errors.New("server exited")
		default:
		}
		if last = get(addr, time.Until(deadline)); last == nil {
			return nil
		}
		time.Sleep(time.Millisecond) // a refused connect returns at once: poll gently
	}
	return fmt.Errorf("no answer within %v: %v", d, last)
}

func get(addr string, d time.Duration) error {
	c, err := net.DialTimeout("tcp", addr, d)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(d))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"); err != nil {
		return err
	}
	b, err := io.ReadAll(c)
	if err != nil && len(b) == 0 {
		return err
	}
	if !strings.HasPrefix(string(b), "HTTP/1.1 200") {
		return fmt.Errorf("answer %q", firstLine(b))
	}
	return nil
}

// keepAliveLoad runs conns keep-alive clients for d and returns the number of
// answered requests.
func keepAliveLoad(addr string, conns int, d time.Duration) (int64, error) {
	var n atomic.Int64
	var wg sync.WaitGroup
	var firstErr atomic.Value
	end := time.Now().Add(d)
	req := []byte("GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", addr, 10*time.Second)
			if err != nil {
				firstErr.CompareAndSwap(nil, err)
				return
			}
			defer c.Close()
			c.SetDeadline(end.Add(10 * time.Second))
			br := bufio.NewReader(c)
			for time.Now().Before(end) {
				if _, err := c.Write(req); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				if err := readResponse(br); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	if e, _ := firstErr.Load().(error); e != nil {
		return n.Load(), e
	}
	return n.Load(), nil
}

// readResponse reads one response with a Content-Length body.
func readResponse(br *bufio.Reader) error {
	status, err := br.ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(status, "HTTP/1.1 200") {
		return fmt.Errorf("answer %q", strings.TrimSpace(status))
	}
	length := 0
	for {
		h, err := br.ReadString('\n')
		if err != nil {
			return err
		}
		h = strings.TrimSpace(h)
		if h == "" {
			break
		}
		if k, v, ok := strings.Cut(h, ":"); ok && strings.EqualFold(k, "Content-Length") {
			length, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	_, err = br.Discard(length)
	return err
}

type statusJSON struct {
	PID     int `json:"pid"`
	Workers []struct {
		ID      int            `json:"id"`
		PID     int            `json:"pid"`
		State   string         `json:"state"`
		Handler map[string]any `json:"handler"`
	} `json:"workers"`
}

// status runs `wcluster status --json`, retried (bounded) until it lists
// the expected number of workers.
func status(bin, control string, workers int) (statusJSON, error) {
	var st statusJSON
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := exec.Command(bin, "status", "--control", control, "--json").Output()
		if err == nil {
			st = statusJSON{}
			if err = json.Unmarshal(out, &st); err == nil && len(st.Workers) == workers && st.PID > 0 {
				return st, nil
			}
		}
		if time.Now().After(deadline) {
			return st, fmt.Errorf("wcluster status: %v (%s)", err, out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// rss returns VmRSS of pid in KiB (-1 if unreadable).
func rss(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			v, _ := strconv.ParseInt(f[1], 10, 64)
			return v
		}
	}
	return -1
}

func stop(cmd *exec.Cmd, exited chan struct{}) {
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(15 * time.Second):
		cmd.Process.Kill()
		<-exited
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func firstLine(b []byte) string {
	s := string(b)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return strings.TrimSpace(s)
}

func median(v []time.Duration) time.Duration {
	if len(v) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), v...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func medianInt(v []int64) int64 {
	if len(v) == 0 {
		return -1
	}
	s := append([]int64(nil), v...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func ms(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.1fms", float64(d)/1e6)
}

func kib(v int64) string {
	if v < 0 {
		return "?"
	}
	return fmt.Sprintf("%.1fMiB", float64(v)/1024)
}

func kibs(v []int64) string {
	if len(v) == 0 {
		return "-"
	}
	var p []string
	for _, x := range v {
		p = append(p, kib(x))
	}
	return strings.Join(p, ",")
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "startup:", err)
	os.Exit(1)
}
