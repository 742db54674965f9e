// Command fairness measures how each distribution policy spreads new
// connections over workers: it drives a server with N requests, each on a
// new connection, from C concurrent clients on loopback, counts the
// X-Wcluster-Worker of each answer, and prints max/min per policy with p50
// and p99 latency. It runs wcluster's rr, shared and reuseport, and Node's
// cluster with SCHED_RR and SCHED_NONE when node is installed.
//
//	go build -o wcluster ./cmd/wcluster && go run ./bench/fairness -bin ./wcluster
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	bin := flag.String("bin", "./wcluster", "wcluster binary")
	n := flag.Int("n", 20000, "requests, each on a new connection")
	c := flag.Int("c", 16, "concurrent clients")
	workers := flag.Int("workers", 2, "workers")
	max := flag.Duration("max", 2*time.Minute, "stop each run after this long")
	flag.Parse()

	type target struct {
		name string
		cmd  func(port int) *exec.Cmd
	}
	wc := func(sched string) func(int) *exec.Cmd {
		return func(port int) *exec.Cmd {
			return exec.Command(*bin, "serve", "--listen", fmt.Sprintf("127.0.0.1:%d", port),
				"--workers", fmt.Sprint(*workers), "--sched", sched)
		}
	}
	targets := []target{{"wcluster rr", wc("rr")}, {"wcluster shared", wc("shared")}, {"wcluster reuseport", wc("reuseport")}}
	if _, err := exec.LookPath("node"); err == nil {
		js, _ := filepath.Abs("bench/node-cluster.js")
		for _, pol := range []string{"rr", "none"} {
			targets = append(targets, target{"node cluster " + pol, func(port int) *exec.Cmd {
				cmd := exec.Command("node", js)
				cmd.Env = append(os.Environ(), fmt.Sprintf("PORT=%d", port), fmt.Sprintf("WORKERS=%d", *workers), "NODE_CLUSTER_SCHED_POLICY="+pol)
				return cmd
			}})
		}
	}
	fmt.Printf("%d requests on new connections, %d clients, %d workers, loopback\n\n", *n, *c, *workers)
	fmt.Printf("| server | per worker | max/min | p50 | p99 | failed |\n|---|---|---|---|---|---|\n")
	for i, t := range targets {
		port := 18900 + i
		r, err := measure(t.cmd(port), port, *n, *c, *max)
		if err != nil {
			fmt.Printf("| %s | error: %v | | | | |\n", t.name, err)
			continue
		}
		fmt.Printf("| %s | %s | %.3f | %v | %v | %d |\n", t.name, r.counts, r.ratio, r.p50, r.p99, r.failed)
	}
}

type result struct {
	counts   string
	ratio    float64
	p50, p99 time.Duration
	failed   int
}

var serving = regexp.MustCompile(`serving`)

func measure(cmd *exec.Cmd, port, n, c int, max time.Duration) (result, error) {
	var r result
	stderr, _ := cmd.StderrPipe()
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		return r, err
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
		}
	}()
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}
		for sc.Scan() {
			if serving.MatchString(sc.Text()) {
				once.Do(func() { close(ready) })
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(60 * time.Second):
		return r, fmt.Errorf("not serving after 60s")
	}

	ctx, cancel := context.WithTimeout(context.Background(), max)
	defer cancel()
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	var mu sync.Mutex
	counts := map[string]int{}
	var lat []time.Duration
	jobs := make(chan struct{}, n)
	for i := 0; i < n; i++ {
		jobs <- struct{}{}
	}
	close(jobs)
	var wg sync.WaitGroup
	for i := 0; i < c; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
				DisableKeepAlives: true, DialContext: (&net.Dialer{}).DialContext}}
			for range jobs {
				if ctx.Err() != nil {
					return
				}
				t0 := time.Now()
				resp, err := client.Get(url)
				var w string
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					w = resp.Header.Get("X-Wcluster-Worker")
				}
				d := time.Since(t0)
				mu.Lock()
				if err != nil || w == "" {
					r.failed++
				} else {
					counts[w]++
					lat = append(lat, d)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	var ids []string
	for id := range counts {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	lo, hi := -1, 0
	var parts []string
	for _, id := range ids {
		v := counts[id]
		parts = append(parts, fmt.Sprintf("%s:%d", id, v))
		if lo < 0 || v < lo {
			lo = v
		}
		if v > hi {
			hi = v
		}
	}
	r.counts = strings.Join(parts, " ")
	if lo > 0 {
		r.ratio = float64(hi) / float64(lo)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	if len(lat) > 0 {
		r.p50 = lat[len(lat)/2].Round(time.Microsecond)
		r.p99 = lat[len(lat)*99/100].Round(time.Microsecond)
	}
	return r, nil
}
