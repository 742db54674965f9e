// Command fairness measures how each distribution policy spreads new
// connections over workers: it drives a server with N requests, each on a
// new connection, from C concurrent clients on loopback, counts the
// X-Wcluster-Worker of each answer, and prints max/min per policy with p50
// and p99 latency. It runs wcluster's rr, shared and reuseport, and Node's
// cluster with SCHED_RR and SCHED_NONE when node is installed.
//
// With -cost GUEST (out/guests/go-spin.wasm) every request asks for work
// of varying size (/?n=ROUNDS: 90% light, 10% heavy, 300x as long, drawn
// from a fixed seed so every server sees the same sequence), served by that
// guest in wcluster and by the same loop in the Node baseline.
//
//	go build -o wcluster ./cmd/wcluster && go run ./bench/fairness -bin ./wcluster
//	go run ./bench/fairness -bin ./wcluster -keepalive -c 64 -n 200000
//	make guests && go run ./bench/fairness -bin ./wcluster -cost out/guests/go-spin.wasm
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
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
	n := flag.Int("n", 20000, "requests, each on a new connection (see -keepalive)")
	keepalive := flag.Bool("keepalive", false, "each client keeps one connection for all its requests (as wrk does)")
	c := flag.Int("c", 16, "concurrent clients")
	workers := flag.Int("workers", 2, "workers")
	max := flag.Duration("max", 2*time.Minute, "stop each run after this long")
	cost := flag.String("cost", "", "variable-cost guest (go-spin.wasm): requests ask for light or heavy work")
	flag.Parse()
	var paths []string // the request path of each request, in order
	if *cost != "" {
		rng := rand.New(rand.NewPCG(1, 2))
		for i := 0; i < *n; i++ {
			rounds := 1000
			if rng.IntN(10) == 0 {
				rounds = 300000
			}
			paths = append(paths, fmt.Sprintf("/?n=%d", rounds))
		}
	}

	type target struct {
		name string
		cmd  func(port int) *exec.Cmd
	}
	wc := func(sched string) func(int) *exec.Cmd {
		return func(port int) *exec.Cmd {
			args := []string{"serve", "--listen", fmt.Sprintf("127.0.0.1:%d", port),
				"--workers", fmt.Sprint(*workers), "--sched", sched}
			if *cost != "" {
				args = append(args, *cost)
			}
			return exec.Command(*bin, args...)
		}
	}
	targets := []target{{"wcluster rr", wc("rr")}, {"wcluster shared", wc("shared")}, {"wcluster reuseport", wc("reuseport")}}
	if _, err := exec.LookPath("node"); err == nil {
		js, _ := filepath.Abs("bench/node-cluster.js")
		for _, pol := range []string{"rr", "none"} {
			targets = append(targets, target{"node cluster " + pol, func(port int) *exec.Cmd {
				cmd := exec.Command("node", js)
				cmd.Env = append(os.Environ(), fmt.Sprintf("PORT=%d", port), fmt.Sprintf("WORKERS=%d", *workers), "NODE_CLUSTER_SCHED_POLICY="+pol)
				if *cost != "" {
					cmd.Env = append(cmd.Env, "COST=1")
				}
				return cmd
			}})
		}
	}
	load := "constant cost (hello)"
	if *cost != "" {
		load = "variable cost (90% n=1000, 10% n=300000 rounds)"
	}
	mode := "on new connections"
	if *keepalive {
		mode = "on kept-alive connections (one per client, opened at once)"
	}
	fmt.Printf("%d requests %s, %d clients, %d workers, loopback, %s\n\n", *n, mode, *c, *workers, load)
	fmt.Printf("| server | per worker | max/min | p50 | p99 | failed |\n|---|---|---|---|---|---|\n")
	for i, t := range targets {
		port := 18900 + i
		r, err := measure(t.cmd(port), port, *n, *c, *max, paths, *keepalive)
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

func measure(cmd *exec.Cmd, port, n, c int, max time.Duration, paths []string, keepalive bool) (result, error) {
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
	jobs := make(chan string, n)
	for i := 0; i < n; i++ {
		path := "/"
		if paths != nil {
			path = paths[i]
		}
		jobs <- path
	}
	close(jobs)
	var wg sync.WaitGroup
	for i := 0; i < c; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
				DisableKeepAlives: !keepalive, MaxConnsPerHost: 1, DialContext: (&net.Dialer{}).DialContext}}
			for path := range jobs {
				if ctx.Err() != nil {
					return
				}
				t0 := time.Now()
				resp, err := client.Get(url + path[1:])
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
