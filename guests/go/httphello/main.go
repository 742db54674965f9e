//go:build wasip1

// Command httphello is an http-wasm handler (see guests/go/httpwasm): it
// answers "hello world" (or the greeting in its guest configuration) for
// every path except those under /next/, which it passes on to the host's
// next handler with the prefix stripped, tagging the response (a header set
// before next stays on the next handler's response; changing it after next
// would need the BufferResponse feature).
package main

import (
	"strings"

	"github.com/wcluster/wcluster/guests/go/httpwasm"
)

func init() {
	greeting := "hello world\n"
	if c := httpwasm.Config(); len(c) > 0 {
		greeting = string(c)
	}
	httpwasm.HandleRequest(func(req httpwasm.Request, resp httpwasm.Response) (bool, uint32) {
		if uri := req.URI(); strings.HasPrefix(uri, "/next/") {
			req.SetURI(uri[len("/next"):])
			resp.Headers().Set("X-Httphello", "passed")
			return true, 0
		}
		resp.Headers().Set("Content-Type", "text/plain; charset=utf-8")
		resp.Body().WriteString(greeting)
		return false, 0
	})
	httpwasm.HandleResponse(func(_ uint32, req httpwasm.Request, _ httpwasm.Response, isError bool) {
		if isError && httpwasm.LogEnabled(httpwasm.LevelWarn) {
			httpwasm.Log(httpwasm.LevelWarn, "next handler failed for "+req.URI())
		}
	})
}

func main() {}
