//go:build wasip1

// Command hello is wcluster's default handler: an HTTP/1.1 server that
// answers every request 200 "hello world\n" with the header
// X-Wcluster-Worker naming the worker. It honours keep-alive and pipelining,
// and holds no instance between requests (it returns Keep).
package main

import (
	"strconv"

	"github.com/wcluster/wcluster/guests/go/wcluster"
)

const maxHeader = 32 << 10

var (
	in  = make([]byte, maxHeader)
	out = make([]byte, 0, 4096)
)

func init() { wcluster.Handle(serve) }

func main() {}

// serve reads what the peer sent, answers every complete request in it with
// one write, and pushes an incomplete tail back for the next call. It reads
// once per call: the host calls when bytes are there, and waiting in Read
// for the rest of a request would hold the instance while a slow client
// takes its time.
func serve(flags wcluster.Flags) wcluster.Action {
	out = out[:0]
	n, err := wcluster.Read(in)
	if err != nil {
		return flush(wcluster.Close)
	}
	buf := in[:n]
	for {
		req, ok, bad := parse(buf)
		if bad {
			out = append(out, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"...)
			return flush(wcluster.Close)
		}
		if !ok {
			break
		}
		keep := req.keepAlive && flags&wcluster.Draining == 0
		respond(keep)
		if !keep {
			return flush(wcluster.Close)
		}
		buf = buf[req.size:]
	}
	switch {
	case len(buf) == 0:
		return flush(wcluster.Keep)
	case len(buf) == len(in):
		out = append(out, "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"...)
		return flush(wcluster.Close)
	}
	// Answer what is complete, push the incomplete rest back: the next call,
	// when more arrives, reads it first.
	if wcluster.Unread(buf) != nil {
		return flush(wcluster.Close)
	}
	return flush(wcluster.Keep)
}

func flush(a wcluster.Action) wcluster.Action {
	if len(out) > 0 {
		if _, err := wcluster.Write(out); err != nil {
			return wcluster.Close
		}
	}
	return a
}

// The two answers, built on first use: the worker's id does not change.
var answerKeep, answerClose []byte

func respond(keep bool) {
	if answerKeep == nil {
		head := "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nX-Wcluster-Worker: " +
			strconv.Itoa(wcluster.WorkerID())
		answerKeep = []byte(head + "\r\n\r\nhello world\n")
		answerClose = []byte(head + "\r\nConnection: close\r\n\r\nhello world\n")
	}
	if keep {
		out = append(out, answerKeep...)
	} else {
		out = append(out, answerClose...)
	}
}

type request struct {
	size      int // header and body bytes
	keepAlive bool
}

// parse finds one complete request at the start of b, in one pass over its
// head. ok is false while more bytes are needed; bad reports a request this
// handler cannot serve. Lines end in CRLF.
func parse(b []byte) (req request, ok, bad bool) {
	start, body := 0, 0
	for i := 0; i < len(b); i++ {
		if b[i] != '\n' {
			continue
		}
		if i == start || b[i-1] != '\r' {
			return req, false, true // a bare LF
		}
		line := b[start : i-1]
		switch {
		case len(line) == 0: // the empty line ending the head
			if start == 0 {
				return req, false, true
			}
			req.size = i + 1 + body
			if req.size > len(b) {
				if req.size > len(in) {
					return req, false, true // body larger than the buffer: not served by hello
				}
				return req, false, false
			}
			return req, true, false
		case start == 0: // the request line: METHOD TARGET HTTP/1.x
			sp := lastSpace(line)
			if sp < 0 || len(line)-sp != 9 || string(line[sp+1:sp+8]) != "HTTP/1." {
				return req, false, true
			}
			req.keepAlive = line[sp+8] == '1'
		default:
			colon := 0
			for colon < len(line) && line[colon] != ':' {
				colon++
			}
			if colon == len(line) {
				return req, false, true
			}
			name, value := line[:colon], trim(line[colon+1:])
			switch {
			case len(name) == 14 && lowerIs(name, "content-length"):
				v, good := atoi(value)
				if !good {
					return req, false, true
				}
				body = v
			case len(name) == 17 && lowerIs(name, "transfer-encoding"):
				return req, false, true // chunked request bodies are not served
			case len(name) == 10 && lowerIs(name, "connection"):
				if len(value) == 5 && lowerIs(value, "close") {
					req.keepAlive = false
				} else if len(value) == 10 && lowerIs(value, "keep-alive") {
					req.keepAlive = true
				}
			}
		}
		start = i + 1
	}
	return req, false, false
}

func lastSpace(b []byte) int {
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == ' ' {
			return i
		}
	}
	return -1
}

func trim(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// lowerIs reports whether b, ASCII letters folded to lower case, is s (in
// lower case, of b's length).
func lowerIs(b []byte, s string) bool {
	for i := range b {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// atoi parses a non-negative decimal of at most 9 digits.
func atoi(b []byte) (int, bool) {
	if len(b) == 0 || len(b) > 9 {
		return 0, false
	}
	v := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int(c-'0')
	}
	return v, true
}
