// Command catcmd is a plain WASI command handler: it copies stdin (the
// connection) to stdout (the connection) and exits at end of stream. It uses
// no wcluster import, so any WASI program written this way is a handler.
package main

import (
	"io"
	"os"
)

func main() {
	if _, err := io.Copy(os.Stdout, os.Stdin); err != nil {
		os.Exit(1)
	}
}
