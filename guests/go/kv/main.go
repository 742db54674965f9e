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
// (X-Wcluster-Worker), to show that a write is read by every worker.
package main

import (
	"bufio"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/wcluster/wcluster/guests/go/wcluster"
)

func init() { wcluster.Handle(serve) }

func main() {}

func serve(flags wcluster.Flags) wcluster.Action {
	br := bufio.NewReader(wcluster.Conn)
	req, err := http.ReadRequest(br)
	if err != nil {
		return wcluster.Close
	}
	body, err := io.ReadAll(io.LimitReader(req.Body, 64<<20))
	if err != nil {
		return wcluster.Close
	}
	code, out := handle(req, body)
	keep := !req.Close && flags&wcluster.Draining == 0
	var b strings.Builder
	b.WriteString("HTTP/1.1 " + strconv.Itoa(code) + " " + http.StatusText(code) + "\r\n")
	b.WriteString("Content-Length: " + strconv.Itoa(len(out)) + "\r\n")
	b.WriteString("X-Wcluster-Worker: " + strconv.Itoa(wcluster.WorkerID()) + "\r\n")
	if !keep {
		b.WriteString("Connection: close\r\n")
	}
	b.WriteString("\r\n")
	b.Write(out)
	if _, err := wcluster.Write([]byte(b.String())); err != nil || !keep {
		return wcluster.Close
	}
	// Bytes read ahead (a pipelined request) wait for the next call.
	if n := br.Buffered(); n > 0 {
		rest, _ := br.Peek(n)
		if wcluster.Unread(rest) != nil {
			return wcluster.Close
		}
	}
	return wcluster.Keep
}

func handle(req *http.Request, body []byte) (int, []byte) {
	key, ok := strings.CutPrefix(req.URL.Path, "/kv/")
	if !ok {
		return http.StatusNotFound, []byte("not found: use /kv/KEY\n")
	}
	switch {
	case key == "" && req.Method == http.MethodGet:
		keys, err := wcluster.KVList(req.URL.Query().Get("prefix"))
		if err != nil {
			return status(err), []byte(err.Error() + "\n")
		}
		var b strings.Builder
		for _, k := range keys {
			b.WriteString(k + "\n")
		}
		return http.StatusOK, []byte(b.String())
	case req.Method == http.MethodGet:
		v, err := wcluster.KVGet(key)
		if err != nil {
			return status(err), nil
		}
		return http.StatusOK, v
	case req.Method == http.MethodPut:
		if err := wcluster.KVSet(key, body); err != nil {
			return status(err), []byte(err.Error() + "\n")
		}
		return http.StatusNoContent, nil
	case req.Method == http.MethodDelete:
		if err := wcluster.KVDelete(key); err != nil {
			return status(err), []byte(err.Error() + "\n")
		}
		return http.StatusNoContent, nil
	case req.Method == http.MethodPost && req.URL.Query().Has("add"):
		d, err := strconv.ParseInt(req.URL.Query().Get("add"), 10, 64)
		if err != nil {
			return http.StatusBadRequest, []byte("add: give an integer\n")
		}
		sum, err := wcluster.KVAdd(key, d)
		if err != nil {
			return status(err), []byte(err.Error() + "\n")
		}
		return http.StatusOK, []byte(strconv.FormatInt(sum, 10) + "\n")
	}
	return http.StatusMethodNotAllowed, nil
}

func status(err error) int {
	var e wcluster.Error
	if !errors.As(err, &e) {
		return http.StatusInternalServerError
	}
	switch e {
	case wcluster.ErrNotFound:
		return http.StatusNotFound
	case wcluster.ErrTooLarge, wcluster.ErrQuota:
		return http.StatusRequestEntityTooLarge
	case wcluster.ErrUnavailable:
		return http.StatusServiceUnavailable
	case wcluster.ErrInvalid:
		return http.StatusConflict
	}
	return http.StatusInternalServerError
}
