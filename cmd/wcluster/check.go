package main

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/wcluster/wcluster/host"
)

func checkCommand() *cli.Command {
	return &cli.Command{
		Name:      "check",
		Usage:     "validate a handler as serve would (compile, instantiate, run its start functions within the limits) and say which ABI it speaks and what it imports and exports",
		ArgsUsage: "HANDLER.wasm | --config FILE",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Usage: "check a config file: every problem with FILE:LINE, and every tenant's module with its limits"},
			&cli.StringFlag{Name: "memory-limit", Value: "128MiB", Usage: "linear memory per guest instance, as serve's"},
			&cli.DurationFlag{Name: "timeout", Value: 30 * time.Second, Usage: "wall-clock limit per guest call (and start function), as serve's"},
			&cli.StringFlag{Name: "guest-config", Usage: "`VALUE` an http-wasm handler's get_config returns while it starts (@FILE: the file's bytes)"},
			&cli.StringFlag{Name: "cache-dir", Value: defaultCacheDir(), Usage: "compilation cache, as serve's (\"\" disables it)"},
		},
		Action: func(c *cli.Context) error {
			if path := c.String("config"); path != "" {
				if c.NArg() > 0 {
					return fmt.Errorf("check takes a handler or --config, not both")
				}
				for _, name := range []string{"memory-limit", "timeout", "cache-dir"} {
					if c.IsSet(name) {
						return fmt.Errorf("--%s does not apply with --config: the limits are %s's ([cluster] or the tenant; see docs/config.md)", name, path)
					}
				}
				return checkConfigFile(c.Context, path, c.App.Writer)
			}
			if c.NArg() != 1 {
				return fmt.Errorf("check takes one handler: wcluster check HANDLER.wasm")
			}
			mem, err := parseSize(c.String("memory-limit"))
			if err != nil {
				return fmt.Errorf("--memory-limit: %w", err)
			}
			guestConfig, err := readGuestConfig(c.String("guest-config"), "")
			if err != nil {
				return fmt.Errorf("--guest-config: %w", err)
			}
			hc := handlerConfig{Path: c.Args().First(), CacheDir: c.String("cache-dir"),
				limits: limits{MemoryLimit: mem, Timeout: c.Duration("timeout"), GuestConfig: guestConfig}}
			wasm, name, err := hc.load()
			if err != nil {
				return err
			}
			// The guest's own output while it starts is not check's to show.
			log := slog.New(slog.NewTextHandler(io.Discard, nil))
			info, err := host.Prepare(c.Context, hc.options(wasm, name, 0, log))
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
			fmt.Fprintf(w, "; instantiated within --memory-limit %s and --timeout %v\n", c.String("memory-limit"), c.Duration("timeout"))
			fmt.Fprintf(w, "exports: %s\n", strings.Join(info.Exports, ", "))
			fmt.Fprintf(w, "imports: %s\n", strings.Join(info.Imports, ", "))
			if info.Kind == host.KindHTTP {
				features, err := host.HTTPFeatures(c.Context, wasm, guestConfig)
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
