// Command idleflood measures how a normal HTTP client fares while many
// connections sit idle (connected, sending nothing) and others trickle a
// request head one byte at a time: the attack of issue 13, item 1.
//
// It opens -idle idle and -trickle trickling connections to -addr (redialling
// any the server closes, as an attacker would, unless -redial=false), waits
// -settle, then makes -requests sequential requests as a normal client, one
// every -interval, each on a new connection ("close") and then on one
// kept-alive connection ("keepalive"), and prints the latency percentiles of each, and what became
// of the flood's connections.
//
//	go run ./bench/idleflood -addr 127.0.0.1:8000
//
// The process raises its RLIMIT_NOFILE to the hard limit; the server needs
// enough too (`ulimit -n 20000` before starting it).
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type flood struct {
	addr   string
	redial bool
	gap    time.Duration

	idleOpen, trickleOpen     atomic.Int64 // open now
	idleClosed, trickleClosed atomic.Int64 // closed by the server
	dialErrors                atomic.Int64
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8000", "server address")
	idle := flag.Int("idle", 10000, "connections that send nothing")
	trickle := flag.Int("trickle", 1000, "connections that send one byte every -gap")
	gap := flag.Duration("gap", 2*time.Second, "a trickling connection's pause between bytes")
	redial := flag.Bool("redial", true, "open a new connection for each one the server closes")
	settle := flag.Duration("settle", 3*time.Second, "wait after the flood is open, before measuring")
	requests := flag.Int("requests", 2000, "requests of the normal client, per mode")
	timeout := flag.Duration("timeout", 10*time.Second, "a normal request's deadline")
	interval := flag.Duration("interval", 10*time.Millisecond, "the normal client's pause between requests (spreads them over the flood's deadlines and redials)")
	flag.Parse()

	if err := raiseNoFile(); err != nil {
		fmt.Fprintln(os.Stderr, "idleflood:", err)
	}
	f := &flood{addr: *addr, redial: *redial, gap: *gap}
	if err := awaitServer(*addr, 30*time.Second); err != nil {
		fmt.Fprintln(os.Stderr, "idleflood:", err)
		os.Exit(1)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	begin := time.Now()
	// Dial in parallel, 64 at a time: 10,000 connections in a few seconds.
	sem := make(chan struct{}, 64)
	for i := range *idle + *trickle {
		sem <- struct{}{}
		c, err := net.DialTimeout("tcp", f.addr, 10*time.Second)
		<-sem
		if err != nil {
			f.dialErrors.Add(1)
			continue
		}
		wg.Add(1)
		if i < *idle {
			go func() { defer wg.Done(); f.holdIdle(ctx, c) }()
		} else {
			go func() { defer wg.Done(); f.trickle(ctx, c) }()
		}
	}
	fmt.Printf("flood: %d idle and %d trickling connections opened in %v (%d dial errors)\n",
		f.idleOpen.Load(), f.trickleOpen.Load(), time.Since(begin).Round(time.Millisecond), f.dialErrors.Load())
	time.Sleep(*settle)
	fmt.Printf("after %v: %d idle and %d trickling open; closed by the server so far: %d idle, %d trickling\n",
		*settle, f.idleOpen.Load(), f.trickleOpen.Load(), f.idleClosed.Load(), f.trickleClosed.Load())

	for _, mode := range []string{"close", "keepalive"} {
		lat, failed := measure(*addr, mode, *requests, *timeout, *interval)
		report(mode, lat, failed)
	}
	fmt.Printf("at the end: %d idle and %d trickling open; closed by the server: %d idle, %d trickling; dial errors %d\n",
		f.idleOpen.Load(), f.trickleOpen.Load(), f.idleClosed.Load(), f.trickleClosed.Load(), f.dialErrors.Load())
	cancel()
	wg.Wait()
}

// awaitServer waits until addr answers a request.
func awaitServer(addr string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		_, failed := measure(addr, "close", 1, time.Second, 0)
		if failed == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s does not answer after %v", addr, d)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// raiseNoFile sets the soft RLIMIT_NOFILE to the hard limit.
func raiseNoFile() error {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return err
	}
	l.Cur = l.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return fmt.Errorf("raise RLIMIT_NOFILE to %d: %w", l.Max, err)
	}
	return nil
}

// redialed returns a new connection for one the server closed, or nil when
// the flood stops or does not redial.
func (f *flood) redialed(ctx context.Context) net.Conn {
	for f.redial && ctx.Err() == nil {
		c, err := net.DialTimeout("tcp", f.addr, 10*time.Second)
		if err == nil {
			return c
		}
		f.dialErrors.Add(1)
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}

// holdIdle keeps c open sending nothing (and a new one for each the
// server closes) until the flood ends.
func (f *flood) holdIdle(ctx context.Context, c net.Conn) {
	for c != nil {
		f.idleOpen.Add(1)
		waitClosed(ctx, c)
		f.idleOpen.Add(-1)
		c.Close()
		if ctx.Err() != nil {
			return
		}
		f.idleClosed.Add(1)
		c = f.redialed(ctx)
	}
}

// waitClosed returns when the server closes c, or when ctx ends.
func waitClosed(ctx context.Context, c net.Conn) {
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	var b [1]byte
	c.Read(b[:])
}

// trickleHead is a request head that never ends: one byte every gap.
var trickleHead = []byte("GET / HTTP/1.1\r\nHost: flood.example\r\nX-Trickle: " + string(bytes.Repeat([]byte("t"), 4000)))

// trickle sends c a request head one byte every gap, from a random offset
// in the first gap so that the flood's bytes are spread out.
func (f *flood) trickle(ctx context.Context, c net.Conn) {
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	t := time.NewTimer(rand.N(f.gap))
	defer t.Stop()
	for c != nil {
		f.trickleOpen.Add(1)
		for i := 0; ; i = (i + 1) % len(trickleHead) {
			select {
			case <-ctx.Done():
				f.trickleOpen.Add(-1)
				return
			case <-t.C:
			}
			t.Reset(f.gap)
			if _, err := c.Write(trickleHead[i : i+1]); err != nil {
				break
			}
		}
		f.trickleOpen.Add(-1)
		f.trickleClosed.Add(1)
		c.Close()
		c = f.redialed(ctx)
	}
}

var request = []byte("GET / HTTP/1.1\r\nHost: client.example\r\n\r\n")
var requestClose = []byte("GET / HTTP/1.1\r\nHost: client.example\r\nConnection: close\r\n\r\n")

// measure makes n sequential requests, each on a new connection (close) or
// all on one (keepalive), and returns their latencies and the failures.
func measure(addr, mode string, n int, timeout, interval time.Duration) ([]time.Duration, int) {
	lat := make([]time.Duration, 0, n)
	failed := 0
	var c net.Conn
	buf := make([]byte, 4096)
	for i := range n {
		if i > 0 && interval > 0 {
			time.Sleep(interval)
		}
		begin := time.Now()
		err := func() error {
			if c == nil {
				var err error
				if c, err = net.DialTimeout("tcp", addr, timeout); err != nil {
					return err
				}
			}
			c.SetDeadline(begin.Add(timeout))
			req := request
			if mode == "close" {
				req = requestClose
			}
			if _, err := c.Write(req); err != nil {
				return err
			}
			if mode == "close" {
				all, err := io.ReadAll(c)
				c.Close()
				c = nil
				if err == nil && !bytes.HasPrefix(all, []byte("HTTP/1.1 200")) {
					err = fmt.Errorf("answer %q", all)
				}
				return err
			}
			// One answer: the hello handler's and nginx's fit one read.
			m, err := c.Read(buf)
			if err == nil && !bytes.HasPrefix(buf[:m], []byte("HTTP/1.1 200")) {
				err = fmt.Errorf("answer %q", buf[:m])
			}
			if err == nil && bytes.Contains(bytes.ToLower(buf[:m]), []byte("connection: close")) {
				// The server ends the connection (nginx after
				// keepalive_requests): the next request opens another.
				c.Close()
				c = nil
			}
			return err
		}()
		if err != nil {
			failed++
			if failed <= 3 {
				fmt.Fprintf(os.Stderr, "%s request failed: %v\n", mode, err)
			}
			if c != nil {
				c.Close()
				c = nil
			}
			continue
		}
		lat = append(lat, time.Since(begin))
	}
	if c != nil {
		c.Close()
	}
	return lat, failed
}

func report(mode string, lat []time.Duration, failed int) {
	if len(lat) == 0 {
		fmt.Printf("%-9s no request answered (%d failed)\n", mode, failed)
		return
	}
	slices.Sort(lat)
	q := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	fmt.Printf("%-9s %d answered, %d failed: p50 %v  p90 %v  p99 %v  max %v\n", mode, len(lat), failed,
		q(0.50).Round(time.Microsecond), q(0.90).Round(time.Microsecond), q(0.99).Round(time.Microsecond),
		lat[len(lat)-1].Round(time.Microsecond))
}
