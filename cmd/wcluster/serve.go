package main

import (
	"fmt"
	"slices"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/wcluster/wcluster/config"
)

// serveCommand's flags are config.Flags: each given on the command line
// sets its default (Defaults.Set), which a --config file overrides where it
// says otherwise.
func serveCommand() *cli.Command {
	flags := []cli.Flag{
		&cli.StringFlag{Name: "config", Usage: "serve the tenants of this TOML file (see docs/config.md) instead of one handler; the flags below set what it leaves out"},
		&cli.BoolFlag{Name: "watch", Usage: "reload when the handler (or the config file, its handlers and certificates) changes; a broken one is reported and the old one keeps serving"},
		&cli.StringFlag{Name: "build", Usage: "with --watch: run this shell `COMMAND` in --sources when a source changes, then reload"},
		&cli.StringFlag{Name: "sources", Value: ".", Usage: "the `DIR` of the sources --build builds"},
	}
	for _, f := range config.Flags() {
		flags = append(flags, cliFlag(f))
	}
	return &cli.Command{
		Name:      "serve",
		Usage:     "serve a handler (the embedded hello handler when none is given)",
		ArgsUsage: "[HANDLER.wasm]",
		Flags:     flags,
		Action:    serveAction,
	}
}

func cliFlag(f config.Flag) cli.Flag {
	if f.Many {
		return &cli.StringSliceFlag{Name: f.Name, Usage: f.Usage}
	}
	var env []string
	if f.Env != "" {
		env = []string{f.Env}
	}
	return &cli.StringFlag{Name: f.Name, Value: f.Default, Usage: f.Usage, EnvVars: env}
}

// serveAction turns the flags into a configuration, one handler's or a
// file's, and serves it.
func serveAction(c *cli.Context) error {
	start := time.Now()
	path := c.String("config")
	if path != "" && c.NArg() > 0 {
		return fmt.Errorf("serve takes a handler or --config, not both: put the handler in the config file")
	}
	if c.NArg() > 1 {
		return fmt.Errorf("serve takes one handler, got %d arguments", c.NArg())
	}
	d, err := flagDefaults(c, path)
	if err != nil {
		return err
	}
	h := config.HandlerFlags{Handler: c.Args().First(), TLSCert: c.String("tls-cert"), TLSKey: c.String("tls-key"),
		Upstream: c.String("upstream"), GuestConfig: c.String("guest-config")}
	// load is also the reload: SIGHUP re-reads the file, or the handler.
	load := func() (*config.Config, error) {
		if path != "" {
			return config.Load(path, d)
		}
		return config.Single(h, d)
	}
	w := watching{on: c.Bool("watch"), build: c.String("build"), sources: c.String("sources")}
	if w.build != "" && !w.on {
		return fmt.Errorf("--build runs with --watch: add --watch")
	}
	if w.on && path == "" && h.Handler == "" && w.build == "" {
		return fmt.Errorf("--watch: nothing to watch: the embedded handler has no file; give a handler or --config")
	}
	cfg, err := load()
	if err != nil {
		return err
	}
	return serve(c.Context, cfg, load, w, c.App.ErrWriter, start)
}

// flagDefaults are config.Default with every flag given on the command line
// (or its environment variable) applied. With a file, --listen is only the
// address of tenants without one, and the one handler's flags do not apply.
func flagDefaults(c *cli.Context, path string) (config.Defaults, error) {
	d := config.Default()
	if path != "" {
		d.Listen = ""
	}
	for _, f := range c.Command.Flags {
		name := f.Names()[0]
		values := []string{c.String(name)}
		if name == "worker-env" {
			values = c.StringSlice(name)
		}
		if !c.IsSet(name) || slices.Contains([]string{"config", "watch", "build", "sources"}, name) || path == "" && slices.Contains([]string{"tls-cert", "tls-key", "upstream", "guest-config"}, name) {
			continue
		}
		for _, v := range values {
			if err := d.Set(name, v); err != nil {
				return d, err
			}
		}
	}
	return d, nil
}
