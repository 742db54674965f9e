//go:build wasip1

// Command kv is an HTTP key-value API on wcluster's store, one request per
// call (kept-alive connections hold no instance between requests):
//
//	PUT /kv/KEY (body: the value) → 204
//	GET /kv/KEY → 200 with the value, or 404
//	DELETE /kv/KEY → 204
//	POST /kv/KEY?add=N → 200 with the new integer value
//	GET /kv/?prefix=P → 200, the keys beginning with P, one per line
//
// 413 for a key or value over the store's limits or its quota, 503 while
// the store is unavailable. Every answer names the worker
// (X-Wcluster-Worker), to show that a write is read by every worker. It
// parses HTTP/1.1 itself, as the hello example does (net/http's parser
// would cost more than the store).
package main

import (
	"bytes"
	"errors"
	"net/url"
	"strconv"
	"strings"

	"github.com/wcluster/wcluster/guests/go/wcluster"
)

const maxRequest = 2<<20 + 8<<10 // a 2 MiB value and its head

var (
	in  = make([]byte, 16<<10)
	out = make([]byte, 0, 4096)
)

func init() { wcluster.Handle(serve) }

func main() {}

// serve answers every complete request read so far and pushes an
// incomplete tail back for the next call, as hello does.
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
		if !ok && req.size > 0 {
			// The head is complete, the body is not: read the rest now
			// (bodies may be larger than what the host holds back).
			if req.size > len(in) {
				in = make([]byte, req.size)
			}
			copy(in, buf)
			m, err := wcluster.Read(in[len(buf):req.size])
			if err != nil {
				return flush(wcluster.Close)
			}
			buf = in[:len(buf)+m]
			continue
		}
		if !ok {
			break
		}
		keep := req.keepAlive && flags&wcluster.Draining == 0
		code, body := handle(req)
		respond(code, body, keep)
		if !keep {
			return flush(wcluster.Close)
		}
		buf = buf[req.size:]
	}
	if len(buf) == 0 {
		return flush(wcluster.Keep)
	}
	if len(buf) == len(in) { // a head larger than the buffer
		out = append(out, "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"...)
		return flush(wcluster.Close)
	}
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

var worker string

func respond(code int, body []byte, keep bool) {
	if worker == "" {
		worker = strconv.Itoa(wcluster.WorkerID())
	}
	out = append(out, "HTTP/1.1 "...)
	out = strconv.AppendInt(out, int64(code), 10)
	out = append(out, ' ')
	out = append(out, reason(code)...)
	out = append(out, "\r\nContent-Length: "...)
	out = strconv.AppendInt(out, int64(len(body)), 10)
	out = append(out, "\r\nX-Wcluster-Worker: "...)
	out = append(out, worker...)
	if !keep {
		out = append(out, "\r\nConnection: close"...)
	}
	out = append(out, "\r\n\r\n"...)
	out = append(out, body...)
}

func reason(code int) string {
	switch code {
	case 200:
		return "OK"
	case 204:
		return "No Content"
	case 400:
		return "Bad Request"
	case 404:
		return "Not Found"
	case 405:
		return "Method Not Allowed"
	case 409:
		return "Conflict"
	case 413:
		return "Content Too Large"
	case 503:
		return "Service Unavailable"
	}
	return "Internal Server Error"
}

type request struct {
	method, target []byte // views of the read buffer
	body           []byte
	size           int // head and body bytes
	keepAlive      bool
}

// parse finds one complete request at the start of b, in one pass over its
// head and without allocating (as hello's parse). ok is false while more
// bytes are needed; bad reports one this handler cannot serve.
func parse(b []byte) (req request, ok, bad bool) {
	start, clen := 0, 0
	for i := 0; i < len(b); i++ {
		if b[i] != '\n' {
			continue
		}
		if i == start || b[i-1] != '\r' {
			return req, false, true
		}
		line := b[start : i-1]
		switch {
		case len(line) == 0:
			if start == 0 {
				return req, false, true
			}
			req.size = i + 1 + clen
			if req.size > len(b) {
				return req, false, req.size > maxRequest
			}
			req.body = b[i+1 : req.size]
			return req, true, false
		case start == 0: // METHOD TARGET HTTP/1.x
			sp1 := bytes.IndexByte(line, ' ')
			sp2 := bytes.LastIndexByte(line, ' ')
			if sp1 <= 0 || sp2 <= sp1 || len(line)-sp2 != 9 || string(line[sp2+1:sp2+8]) != "HTTP/1." {
				return req, false, true
			}
			req.method, req.target = line[:sp1], line[sp1+1:sp2]
			req.keepAlive = line[len(line)-1] == '1'
		default:
			colon := bytes.IndexByte(line, ':')
			if colon <= 0 {
				return req, false, true
			}
			name, value := line[:colon], bytes.TrimSpace(line[colon+1:])
			switch {
			case bytes.EqualFold(name, []byte("content-length")):
				v, good := atoi(value)
				if !good {
					return req, false, true
				}
				clen = v
			case bytes.EqualFold(name, []byte("transfer-encoding")):
				return req, false, true // chunked bodies are not served here
			case bytes.EqualFold(name, []byte("connection")):
				if bytes.EqualFold(value, []byte("close")) {
					req.keepAlive = false
				} else if bytes.EqualFold(value, []byte("keep-alive")) {
					req.keepAlive = true
				}
			}
		}
		start = i + 1
	}
	return req, false, false
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

func handle(req request) (int, []byte) {
	path, query, _ := bytes.Cut(req.target, []byte("?"))
	k, ok := bytes.CutPrefix(path, []byte("/kv/"))
	if !ok {
		return 404, []byte("not found: use /kv/KEY\n")
	}
	key := string(k)
	if bytes.IndexByte(k, '%') >= 0 {
		if u, err := url.PathUnescape(key); err == nil {
			key = u
		}
	}
	var q url.Values
	if len(query) > 0 {
		q, _ = url.ParseQuery(string(query))
	}
	method := string(req.method) // short and not kept: converted on the stack
	switch {
	case key == "" && method == "GET":
		keys, err := wcluster.KVList(q.Get("prefix"))
		if err != nil {
			return status(err), []byte(err.Error() + "\n")
		}
		var b strings.Builder
		for _, k := range keys {
			b.WriteString(k + "\n")
		}
		return 200, []byte(b.String())
	case method == "GET":
		v, err := wcluster.KVGet(key)
		if err != nil {
			return status(err), nil
		}
		return 200, v
	case method == "PUT":
		if err := wcluster.KVSet(key, req.body); err != nil {
			return status(err), []byte(err.Error() + "\n")
		}
		return 204, nil
	case method == "DELETE":
		if err := wcluster.KVDelete(key); err != nil {
			return status(err), []byte(err.Error() + "\n")
		}
		return 204, nil
	case method == "POST" && q.Has("add"):
		d, err := strconv.ParseInt(q.Get("add"), 10, 64)
		if err != nil {
			return 400, []byte("add: give an integer\n")
		}
		sum, err := wcluster.KVAdd(key, d)
		if err != nil {
			return status(err), []byte(err.Error() + "\n")
		}
		return 200, []byte(strconv.FormatInt(sum, 10) + "\n")
	}
	return 405, nil
}

func status(err error) int {
	var e wcluster.Error
	if !errors.As(err, &e) {
		return 500
	}
	switch e {
	case wcluster.ErrNotFound:
		return 404
	case wcluster.ErrTooLarge, wcluster.ErrQuota:
		return 413
	case wcluster.ErrUnavailable:
		return 503
	case wcluster.ErrInvalid:
		return 409
	}
	return 500
}
