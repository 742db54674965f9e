//go:build wasip1

// Command httpkv is guests/go/kv's HTTP key-value API as an http-wasm
// handler (guests/go/httpwasm): the host parses HTTP, the handler sees one
// request at a time.
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
	"errors"
	"io"
	"net/url"
	"strconv"
	"strings"

	"github.com/wcluster/wcluster/guests/go/httpwasm"
)

func init() {
	worker := strconv.Itoa(httpwasm.WorkerID())
	httpwasm.HandleRequest(func(req httpwasm.Request, resp httpwasm.Response) (bool, uint32) {
		code, body := handle(req)
		resp.SetStatusCode(uint32(code))
		resp.Headers().Set("X-Wcluster-Worker", worker)
		if len(body) > 0 {
			resp.Body().Write(body)
		}
		return false, 0
	})
}

func main() {}

func handle(req httpwasm.Request) (int, []byte) {
	path, query, _ := strings.Cut(req.URI(), "?")
	key, ok := strings.CutPrefix(path, "/kv/")
	if !ok {
		return 404, []byte("not found: use /kv/KEY\n")
	}
	if k, err := url.PathUnescape(key); err == nil {
		key = k
	}
	q, _ := url.ParseQuery(query)
	method := req.Method()
	switch {
	case key == "" && method == "GET":
		keys, err := httpwasm.KVList(q.Get("prefix"))
		if err != nil {
			return status(err), []byte(err.Error() + "\n")
		}
		var b strings.Builder
		for _, k := range keys {
			b.WriteString(k + "\n")
		}
		return 200, []byte(b.String())
	case method == "GET":
		v, err := httpwasm.KVGet(key)
		if err != nil {
			return status(err), nil
		}
		return 200, v
	case method == "PUT":
		// The host bounds request bodies; the store bounds values.
		v, err := io.ReadAll(req.Body())
		if err != nil {
			return 400, []byte("reading the body: " + err.Error() + "\n")
		}
		if err := httpwasm.KVSet(key, v); err != nil {
			return status(err), []byte(err.Error() + "\n")
		}
		return 204, nil
	case method == "DELETE":
		if err := httpwasm.KVDelete(key); err != nil {
			return status(err), []byte(err.Error() + "\n")
		}
		return 204, nil
	case method == "POST" && q.Has("add"):
		d, err := strconv.ParseInt(q.Get("add"), 10, 64)
		if err != nil {
			return 400, []byte("add: give an integer\n")
		}
		sum, err := httpwasm.KVAdd(key, d)
		if err != nil {
			return status(err), []byte(err.Error() + "\n")
		}
		return 200, []byte(strconv.FormatInt(sum, 10) + "\n")
	}
	return 405, nil
}

func status(err error) int {
	var e httpwasm.Error
	if !errors.As(err, &e) {
		return 500
	}
	switch e {
	case httpwasm.ErrNotFound:
		return 404
	case httpwasm.ErrTooLarge, httpwasm.ErrQuota:
		return 413
	case httpwasm.ErrUnavailable:
		return 503
	case httpwasm.ErrInvalid:
		return 409
	}
	return 500
}
