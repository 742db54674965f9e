package main

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/wcluster/wcluster/dispatch"
	"github.com/wcluster/wcluster/internal/top"
)

func topCommand() *cli.Command {
	return &cli.Command{
		Name:  "top",
		Usage: "a live view of a running master's workers and groups (plain frames when not on a terminal)",
		Flags: []cli.Flag{controlFlag,
			&cli.DurationFlag{Name: "interval", Value: time.Second, Usage: "refresh this often"},
			&cli.IntFlag{Name: "frames", Usage: "stop after this many frames (0: until stopped)"},
		},
		Action: func(c *cli.Context) error {
			ctl := c.String("control")
			src := func() (top.Sample, error) {
				b, err := dispatch.Control(ctl, "status")
				if err != nil {
					return top.Sample{}, err
				}
				s := top.Sample{At: time.Now()}
				if err := json.Unmarshal(b, &s.St); err != nil {
					return s, fmt.Errorf("bad reply from master: %w", err)
				}
				return s, nil
			}
			every := c.Duration("interval")
			if every <= 0 {
				return fmt.Errorf("--interval must be positive (got %v)", every)
			}
			if out, ok := c.App.Writer.(*os.File); ok && isTerminal(out) && c.Int("frames") == 0 {
				return top.Live(c.Context, os.Stdin, out, src, every)
			}
			return top.Print(c.Context, c.App.Writer, src, every, c.Int("frames"))
		},
	}
}

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
