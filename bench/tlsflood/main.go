// Command tlsflood makes full TLS handshakes, never resuming a session, on
// -conns connections at once for -for, and prints how many completed per
// second: the load of clients (or an attacker) that each come once.
//
//	go run ./bench/tlsflood -addr 127.0.0.1:8443 -conns 64 -for 10s
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8443", "TLS address to flood")
	name := flag.String("name", "localhost", "SNI to send")
	conns := flag.Int("conns", 64, "handshakes in progress at once")
	dur := flag.Duration("for", 10*time.Second, "how long to flood")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), *dur)
	defer cancel()
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range *conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// No ClientSessionCache: every handshake is a full one.
			cfg := &tls.Config{InsecureSkipVerify: true, ServerName: *name}
			d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: cfg}
			for ctx.Err() == nil {
				c, err := d.DialContext(ctx, "tcp", *addr)
				if err != nil {
					if ctx.Err() == nil {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, err.Error())
					}
					continue
				}
				c.Close()
				ok.Add(1)
			}
		}()
	}
	start := time.Now()
	wg.Wait()
	secs := time.Since(start).Seconds()
	fmt.Printf("handshakes %d (%.0f/s), failed %d", ok.Load(), float64(ok.Load())/secs, failed.Load())
	if e := firstErr.Load(); e != nil {
		fmt.Printf(" (first: %s)", e)
	}
	fmt.Println()
	if ok.Load() == 0 {
		os.Exit(1)
	}
}
