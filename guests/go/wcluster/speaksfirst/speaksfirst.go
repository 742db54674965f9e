//go:build wasip1

// Package speaksfirst, imported for its effect, declares that the handler
// speaks first (an SMTP or database greeting): the host then calls it with
// wcluster.New as soon as a connection is accepted, rather than when the
// peer's first bytes arrive.
//
//	import _ "github.com/wcluster/wcluster/guests/go/wcluster/speaksfirst"
package speaksfirst

// The host looks for this export and never calls it (abi.ExportSpeaksFirst).
//
//go:wasmexport wcluster_speaks_first
func speaksFirst() {}
