// Package embedded holds the default handler that `wcluster serve` runs when
// given no module: guests/c/examples/hello.c, built by `make embedded` with
// guests/c/build.sh (clang, wasi-libc). C rather than Go: a call into it costs
// half what the same handler built by Go costs (Go's runtime runs on every
// call), and the default handler is what a request of `wcluster serve`
// without a module pays for.
//
// A test (TestEmbeddedIsRebuilt in tests/serve_test.go) checks it is
// byte-for-byte what guests/c/build.sh builds from the source.
package embedded

import _ "embed"

// Hello is the default handler's WebAssembly module.
//
//go:embed hello.wasm
var Hello []byte

// HelloName names it in messages.
const HelloName = "embedded hello handler"
