// Command wcluster serves network connections with WebAssembly handlers on a
// cluster of worker processes. This package is the CLI: flags, config and
// wiring of dispatch (the master and its workers) to host (the guests).
package main

import (
	"os"
)

func main() { os.Exit(run(os.Args, os.Stdout, os.Stderr)) }
