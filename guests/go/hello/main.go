//go:build wasip1

// Command hello is wcluster's default handler: an HTTP/1.1 server that
// answers every request 200 "hello world\n" with the header
// X-Wcluster-Worker naming the worker. It honours keep-alive and pipelining,
// and holds no instance between requests (it returns Keep).
package main

import (
	"bytes"
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
// one write, and pushes an incomplete tail back for the next call.
func serve(flags wcluster.Flags) wcluster.Action {
	n := 0
	out = out[:0]
	for {
		m, err := wcluster.Read(in[n:])
		if err != nil {
			return flush(wcluster.Close)
		}
		n += m
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
		if len(buf) == 0 {
			return flush(wcluster.Keep)
		}
		if len(out) > 0 {
			// Answer what is complete, keep the tail for the next call.
			if wcluster.Unread(buf) != nil {
				return flush(wcluster.Close)
			}
			return flush(wcluster.Keep)
		}
		if len(buf) == len(in) {
			out = append(out, "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"...)
			return flush(wcluster.Close)
		}
		// Only part of one request so far: wait for the rest in this call.
		copy(in, buf)
		n = len(buf)
	}
}

func flush(a wcluster.Action) wcluster.Action {
	if len(out) > 0 {
		if _, err := wcluster.Write(out); err != nil {
			return wcluster.Close
		}
	}
	return a
}

func respond(keep bool) {
	out = append(out, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nX-Wcluster-Worker: "...)
	out = strconv.AppendInt(out, int64(wcluster.WorkerID()), 10)
	if !keep {
		out = append(out, "\r\nConnection: close"...)
	}
	out = append(out, "\r\n\r\nhello world\n"...)
}

type request struct {
	size      int // header and body bytes
	keepAlive bool
}

var crlf2 = []byte("\r\n\r\n")

// parse finds one complete request at the start of b. ok is false while more
// bytes are needed; bad reports a request this handler cannot serve.
func parse(b []byte) (req request, ok, bad bool) {
	end := bytes.Index(b, crlf2)
	if end < 0 {
		return req, false, false
	}
	head := b[:end]
	line, rest, _ := bytes.Cut(head, []byte("\r\n"))
	sp := bytes.LastIndexByte(line, ' ')
	if sp < 0 || !bytes.HasPrefix(line[sp+1:], []byte("HTTP/1.")) {
		return req, false, true
	}
	req.keepAlive = string(line[sp+1:]) == "HTTP/1.1"
	body := 0
	for len(rest) > 0 {
		var h []byte
		h, rest, _ = bytes.Cut(rest, []byte("\r\n"))
		name, value, found := bytes.Cut(h, []byte(":"))
		if !found {
			return req, false, true
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			v, err := strconv.Atoi(string(value))
			if err != nil || v < 0 {
				return req, false, true
			}
			body = v
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			return req, false, true // chunked request bodies are not served
		case bytes.EqualFold(name, []byte("Connection")):
			if bytes.EqualFold(value, []byte("close")) {
				req.keepAlive = false
			} else if bytes.EqualFold(value, []byte("keep-alive")) {
				req.keepAlive = true
			}
		}
	}
	req.size = end + 4 + body
	if req.size > len(b) {
		if req.size > len(in) {
			return req, false, true // body larger than the buffer: not served by hello
		}
		return req, false, false
	}
	return req, true, false
}
