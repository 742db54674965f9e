//go:build wasip1

// Command spin is a compute-heavy HTTP handler for benchmarks: for a request
// to /?n=N it runs N rounds of integer arithmetic (a xorshift generator)
// and answers 200 with the result, so a benchmark can choose how long a call
// computes. It is used to measure what the termination checks compiled in
// when a time limit is set (--timeout > 0) cost a guest that computes.
// Keep-alive is honoured; every call answers the requests it read.
package main

import (
	"bytes"
	"strconv"

	"github.com/wcluster/wcluster/guests/go/wcluster"
)

var (
	in  = make([]byte, 8<<10)
	out = make([]byte, 0, 256)
)

func init() { wcluster.Handle(serve) }

func main() {}

func serve(flags wcluster.Flags) wcluster.Action {
	n := 0
	for {
		m, err := wcluster.Read(in[n:])
		if err != nil {
			return wcluster.Close
		}
		n += m
		end := bytes.Index(in[:n], []byte("\r\n\r\n"))
		if end < 0 {
			if n == len(in) {
				return wcluster.Close
			}
			continue
		}
		head := in[:end]
		keep := flags&wcluster.Draining == 0 && !bytes.Contains(bytes.ToLower(head), []byte("connection: close"))
		sum := spin(rounds(head))
		out = append(out[:0], "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Wcluster-Worker: "...)
		out = strconv.AppendInt(out, int64(wcluster.WorkerID()), 10)
		out = append(out, "\r\nContent-Length: "...)
		body := strconv.AppendUint(nil, sum, 10)
		body = append(body, '\n')
		out = strconv.AppendInt(out, int64(len(body)), 10)
		if !keep {
			out = append(out, "\r\nConnection: close"...)
		}
		out = append(out, "\r\n\r\n"...)
		out = append(out, body...)
		if _, err := wcluster.Write(out); err != nil || !keep {
			return wcluster.Close
		}
		if rest := in[end+4 : n]; len(rest) > 0 {
			if wcluster.Unread(rest) != nil {
				return wcluster.Close
			}
		}
		return wcluster.Keep
	}
}

// rounds reads n from "GET /?n=N HTTP/1.1" (default 1000).
func rounds(head []byte) int {
	i := bytes.Index(head, []byte("n="))
	if i < 0 {
		return 1000
	}
	j := i + 2
	for j < len(head) && head[j] >= '0' && head[j] <= '9' {
		j++
	}
	v, err := strconv.Atoi(string(head[i+2 : j]))
	if err != nil || v < 0 {
		return 1000
	}
	return v
}

//go:noinline
func spin(n int) uint64 {
	x := uint64(88172645463325252)
	for i := 0; i < n; i++ {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
	}
	return x
}
