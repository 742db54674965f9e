package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/wcluster/wcluster/host"
)

func checkCommand() *cli.Command {
	return &cli.Command{
		Name:      "check",
		Usage:     "validate a handler and say which ABI it speaks and what it imports and exports",
		ArgsUsage: "HANDLER.wasm | --config FILE",
		Flags: []cli.Flag{&cli.StringFlag{Name: "config", Usage: "check a config file: every problem with FILE:LINE, and every tenant's module"},
			&cli.StringFlag{Name: "guest-config", Usage: "`VALUE` an http-wasm handler's get_config returns while it starts (@FILE: the file's bytes)"}},
		Action: func(c *cli.Context) error {
			if path := c.String("config"); path != "" {
				if c.NArg() > 0 {
					return fmt.Errorf("check takes a handler or --config, not both")
				}
				return checkConfigFile(c.Context, path, c.App.Writer)
			}
			if c.NArg() != 1 {
				return fmt.Errorf("check takes one handler: wcluster check HANDLER.wasm")
			}
			hc := handlerConfig{Path: c.Args().First()}
			wasm, name, err := hc.load()
			if err != nil {
				return err
			}
			info, err := host.Inspect(c.Context, wasm)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			w := c.App.Writer
			if info.Kind == host.KindHTTP {
				fmt.Fprintf(w, "%s: ok, speaks the %s", name, info.Kind)
			} else {
				fmt.Fprintf(w, "%s: ok, a %s", name, info.Kind)
			}
			if info.ABIVersion > 0 {
				fmt.Fprintf(w, " speaking wcluster ABI v%d", info.ABIVersion)
			}
			fmt.Fprintln(w)
			fmt.Fprintf(w, "exports: %s\n", strings.Join(info.Exports, ", "))
			fmt.Fprintf(w, "imports: %s\n", strings.Join(info.Imports, ", "))
			if info.Kind == host.KindHTTP {
				cfg, err := readGuestConfig(c.String("guest-config"), "")
				if err != nil {
					return fmt.Errorf("--guest-config: %w", err)
				}
				features, err := host.HTTPFeatures(c.Context, wasm, cfg)
				if err != nil {
					return fmt.Errorf("%s: %w", name, err)
				}
				fmt.Fprintf(w, "features enabled at start: %s\n", orNone(features))
			}
			return nil
		},
	}
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}
