package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/wcluster/wcluster/internal/buildinfo"
	"github.com/wcluster/wcluster/internal/scaffold"
)

func newCommand() *cli.Command {
	return &cli.Command{
		Name:      "new",
		Usage:     "write a new handler's project: its source, the SDK, build.sh, test.sh and a README (no argument: list the templates)",
		ArgsUsage: "[--kind KIND] [LANG DIR]",
		Flags:     []cli.Flag{&cli.StringFlag{Name: "kind", Usage: "abi, http-wasm or wasi, where the language has several (default: abi)"}},
		Action: func(c *cli.Context) error {
			w := c.App.Writer
			if c.NArg() == 0 {
				fmt.Fprintln(w, "templates (wcluster new [--kind KIND] LANG DIR):")
				for _, t := range scaffold.Templates() {
					fmt.Fprintf(w, "  %-6s --kind %-10s %s: %s\n", t.Lang, t.Kind, t.Language, t.KindText())
				}
				return nil
			}
			if c.NArg() != 2 {
				return fmt.Errorf("new takes a language and a folder: wcluster new LANG DIR (wcluster new lists the languages)")
			}
			t, err := scaffold.Find(c.Args().Get(0), c.String("kind"))
			if err != nil {
				return err
			}
			dir := c.Args().Get(1)
			if err := scaffold.Write(t, dir, buildinfo.Read().Version); err != nil {
				return err
			}
			fmt.Fprintf(w, "wrote %s: a %s %s handler. Next:\n  cd %s && ./build.sh && wcluster serve --watch --build ./build.sh handler.wasm\n",
				dir, t.Language, t.Kind, dir)
			return nil
		},
	}
}
