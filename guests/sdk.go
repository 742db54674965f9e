// Package guests carries the guest SDKs' sources, so that `wcluster new`
// can write them into a new handler's project (the examples and builds of
// each language live in their folders; see README.md).
package guests

import "embed"

// SDKs are the SDK files, at their paths under guests/.
//
//go:embed go/wcluster/*.go go/wcluster/store/*.go go/wcluster/speaksfirst/*.go go/httpwasm/*.go
//go:embed c/sdk/wcluster.h c/sdk/http_handler.h
//go:embed rust/sdk/Cargo.toml rust/sdk/src/lib.rs
//go:embed assemblyscript/sdk/wcluster.ts
//go:embed zig/sdk/wcluster.zig
var SDKs embed.FS
