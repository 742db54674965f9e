//go:build wasip1

// Command hwhello is an http-wasm handler in Go (guests/go/httpwasm): it
// answers /hello itself ("hello world"), refuses requests without an
// X-Api-Key equal to its configuration when it has one (401), and passes
// every other request on to the host's next handler (with wcluster, the
// --upstream) with an X-Guest header added.
package main

import "github.com/wcluster/wcluster/guests/go/httpwasm"

func init() {
	key := string(httpwasm.Config())
	httpwasm.HandleRequest(func(req httpwasm.Request, resp httpwasm.Response) (bool, uint32) {
		if got, _ := req.Headers().Get("X-Api-Key"); key != "" && got != key {
			resp.SetStatusCode(401)
			resp.Headers().Set("Content-Type", "text/plain")
			resp.Body().WriteString("missing or wrong X-Api-Key\n")
			return false, 0
		}
		if req.URI() == "/hello" {
			resp.Headers().Set("Content-Type", "text/plain")
			resp.Body().WriteString("hello world")
			return false, 0
		}
		req.Headers().Set("X-Guest", "go")
		return true, 0
	})
}

func main() {}
