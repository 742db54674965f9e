package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/urfave/cli/v2"

	"github.com/wcluster/wcluster/config"
	"github.com/wcluster/wcluster/dispatch"
	"github.com/wcluster/wcluster/internal/buildinfo"
)

// run is the whole program: a worker when started by a master, the CLI
// otherwise. It returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	if dispatch.IsWorker() {
		return runWorker(stderr)
	}
	app := &cli.App{
		Name:      "wcluster",
		Usage:     "serve connections with WebAssembly handlers on a process cluster",
		Version:   buildinfo.Read().String(),
		Writer:    stdout,
		ErrWriter: stderr,
		// Errors are printed once, below, and turned into the exit code here
		// rather than by os.Exit inside the library, so deferred cleanup runs.
		ExitErrHandler: func(*cli.Context, error) {},
		Commands: []*cli.Command{serveCommand(), checkCommand(), statusCommand(),
			reloadCommand(), scaleCommand(), stopCommand(), topCommand(), newCommand()},
	}
	if err := app.Run(args); err != nil {
		fmt.Fprintf(stderr, "wcluster: %v\n", err)
		var ec cli.ExitCoder
		if errors.As(err, &ec) && ec.ExitCode() != 0 {
			return ec.ExitCode()
		}
		return 1
	}
	return 0
}

// sizeText is config.SizeText, for status.
func sizeText(n uint64) string { return config.SizeText(n) }
