// Package embedded holds the default handler that `wcluster serve` runs when
// given no module: guests/go/hello, built by `make embedded` with
//
//	GOOS=wasip1 GOARCH=wasm go build -trimpath -buildvcs=false -ldflags='-s -w' -buildmode=c-shared
//
// A test (tests/embedded_test.go) rebuilds it and checks it is byte-for-byte
// the file committed here.
package embedded

import _ "embed"

// Hello is the default handler's WebAssembly module.
//
//go:embed hello.wasm
var Hello []byte

// HelloName names it in messages.
const HelloName = "embedded hello handler"
