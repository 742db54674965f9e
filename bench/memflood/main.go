// Command memflood measures how much memory a flood of calls to a memory
// bomb takes wcluster to: it starts `wcluster serve --workers N [ARGS]`
// with the probe guest, sends its /alloc?mb=100000 (allocate and touch
// without end) on -conns connections at once, a new call on each as the last
// ends, for -for, and samples the resident memory of the master and all its
// descendants (from /proc) every 50ms. It prints the peak and the bomb calls
// made.
//
//	go build -o /tmp/wcluster ./cmd/wcluster
//	go run ./bench/memflood -bin /tmp/wcluster -guest out/guests/go-probe.wasm -- --guest-memory-budget 512MiB
//	go run ./bench/memflood -bin /tmp/wcluster -guest out/guests/go-probe.wasm -- --guest-memory-budget 0
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	bin := flag.String("bin", "wcluster", "the wcluster binary")
	guest := flag.String("guest", "out/guests/go-probe.wasm", "the probe guest")
	workers := flag.Int("workers", 2, "worker processes")
	conns := flag.Int("conns", 64, "connections at once")
	dur := flag.Duration("for", 15*time.Second, "how long to flood")
	flag.Parse()
	if err := run(*bin, *guest, *workers, *conns, *dur, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "memflood:", err)
		os.Exit(1)
	}
}

func run(bin, guest string, workers, conns int, dur time.Duration, extra []string) error {
	args := append([]string{"serve", "--listen", "127.0.0.1:0", "--workers", strconv.Itoa(workers)}, extra...)
	cmd := exec.Command(bin, append(args, guest)...)
	out, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
		}
	}()
	banner := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "serving ") {
				select {
				case banner <- sc.Text():
				default:
				}
			}
		}
	}()
	var line string
	select {
	case line = <-banner:
	case <-time.After(60 * time.Second):
		return fmt.Errorf("not serving after 60s")
	}
	m := regexp.MustCompile(`on (\S+) \(`).FindStringSubmatch(line)
	if m == nil {
		return fmt.Errorf("no address in %q", line)
	}
	addr := m[1]
	fmt.Println(line)
	time.Sleep(time.Second) // the workers come up after the banner
	before := treeRSS(cmd.Process.Pid)

	var calls, answered atomic.Int64
	stop := time.Now().Add(dur)
	var wg sync.WaitGroup
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				c, err := net.DialTimeout("tcp", addr, 10*time.Second)
				if err != nil {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				c.SetDeadline(time.Now().Add(60 * time.Second))
				fmt.Fprintf(c, "GET /alloc?mb=100000 HTTP/1.1\r\nHost: bomb\r\nConnection: close\r\n\r\n")
				if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode == 200 {
						answered.Add(1)
					}
				}
				c.Close()
				calls.Add(1)
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	var peak uint64
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for sampling := true; sampling; {
		select {
		case <-done:
			sampling = false
		case <-tick.C:
		}
		peak = max(peak, treeRSS(cmd.Process.Pid))
	}
	fmt.Printf("%d connections for %v: %d bomb calls (%d answered 200); RSS of master and workers %d MiB before, %d MiB at the peak\n",
		conns, dur, calls.Load(), answered.Load(), before>>20, peak>>20)
	return nil
}

// treeRSS sums the resident memory of pid and its descendants.
func treeRSS(pid int) uint64 {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 1 {
			if pp, err := strconv.Atoi(f[1]); err == nil {
				children[pp] = append(children[pp], p)
			}
		}
	}
	var sum uint64
	for queue := []int{pid}; len(queue) > 0; {
		p := queue[0]
		queue = append(queue[1:], children[p]...)
		b, err := os.ReadFile("/proc/" + strconv.Itoa(p) + "/statm")
		if err != nil {
			continue
		}
		if f := strings.Fields(string(b)); len(f) > 1 {
			pages, _ := strconv.ParseUint(f[1], 10, 64)
			sum += pages * uint64(os.Getpagesize())
		}
	}
	return sum
}
