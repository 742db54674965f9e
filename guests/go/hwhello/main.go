//go:build wasip1

// Command hwhello is an http-wasm handler in Go: it answers /hello itself
// ("hello world"), refuses requests without an X-Api-Key equal to its
// configuration when it has one (401), and passes every other request on
// to the upstream with an X-Guest header added.
package main

import "github.com/wcluster/wcluster/guests/go/httpwasm"

var key string

func init() {
	key = httpwasm.Config()
	httpwasm.Handle(handle)
}

func main() {}

func handle(req httpwasm.Request, resp httpwasm.Response) (bool, uint32) {
	if key != "" && req.Header("X-Api-Key") != key {
		resp.SetStatus(401)
		resp.SetHeader("Content-Type", "text/plain")
		resp.WriteString("missing or wrong X-Api-Key\n")
		return false, 0
	}
	if req.URI() == "/hello" {
		resp.SetHeader("Content-Type", "text/plain")
		resp.WriteString("hello world")
		return false, 0
	}
	req.SetHeader("X-Guest", "go")
	return true, 0
}
