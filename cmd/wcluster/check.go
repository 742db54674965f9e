package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/wcluster/wcluster/config"
	"github.com/wcluster/wcluster/host"
)

func checkCommand() *cli.Command {
	return &cli.Command{
		Name:      "check",
		Usage:     "validate a handler as serve would (compile, instantiate, run its start functions within the limits) and say which ABI it speaks and what it imports and exports",
		ArgsUsage: "HANDLER.wasm | --config FILE",
		Flags: append([]cli.Flag{&cli.StringFlag{Name: "config", Usage: "check a config file: every problem with FILE:LINE, and every tenant's module with its limits"}},
			checkFlags()...),
		Action: func(c *cli.Context) error {
			path := c.String("config")
			if path != "" && c.NArg() > 0 {
				return fmt.Errorf("check takes a handler or --config, not both")
			}
			if path == "" && c.NArg() != 1 {
				return fmt.Errorf("check takes one handler: wcluster check HANDLER.wasm")
			}
			// As serve's: flags given are the defaults a file overrides.
			d, err := flagDefaults(c, path)
			if err != nil {
				return err
			}
			if path != "" {
				return checkConfigFile(c.Context, path, d, c.App.Writer)
			}
			return checkHandler(c, d)
		},
	}
}

// checkFlags are serve's flags that check takes: the limits a module starts
// within, where it compiles to, an http-wasm guest's configuration, and
// (with --config) the listen address of tenants without one.
func checkFlags() []cli.Flag {
	var flags []cli.Flag
	for _, f := range config.Flags() {
		if slices.Contains([]string{"listen", "memory-limit", "timeout", "cache-dir", "guest-config"}, f.Name) {
			flags = append(flags, cliFlag(f))
		}
	}
	return flags
}

func checkHandler(c *cli.Context, d config.Defaults) error {
	cfg, err := config.Single(config.HandlerFlags{Handler: c.Args().First(), GuestConfig: c.String("guest-config")}, d)
	if err != nil {
		return err
	}
	// The guest's own output while it starts is not check's to show.
	infos, err := prepare(c.Context, cfg, slog.New(slog.DiscardHandler), c.App.ErrWriter)
	if err != nil {
		return err
	}
	t, info := &cfg.Tenants[0], infos[0]
	w := c.App.Writer
	if info.Kind == host.KindHTTP {
		fmt.Fprintf(w, "%s: ok, speaks the %s", t.Name, info.Kind)
	} else {
		fmt.Fprintf(w, "%s: ok, a %s", t.Name, info.Kind)
	}
	if info.ABIVersion > 0 {
		fmt.Fprintf(w, " speaking wcluster ABI v%d", info.ABIVersion)
	}
	fmt.Fprintf(w, "; instantiated within --memory-limit %s and --timeout %v\n", c.String("memory-limit"), d.Limits.Timeout)
	fmt.Fprintf(w, "exports: %s\n", strings.Join(info.Exports, ", "))
	fmt.Fprintf(w, "imports: %s\n", strings.Join(info.Imports, ", "))
	for _, warn := range info.Warnings {
		fmt.Fprintf(w, "warning: %s\n", warn)
	}
	if info.Kind == host.KindHTTP {
		fmt.Fprintf(w, "features enabled at start: %s\n", orNone(info.Features))
	}
	return nil
}

// checkConfigFile is `wcluster check --config FILE`: it loads and checks the
// file, compiles every tenant's module, and describes what would be served.
func checkConfigFile(ctx context.Context, path string, d config.Defaults, w io.Writer) error {
	c, err := config.Load(path, d)
	if err != nil {
		return err
	}
	if _, err := prepare(ctx, c, slog.New(slog.DiscardHandler)); err != nil {
		return err
	}
	c.Describe(w)
	return nil
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}
