package main

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/wcluster/wcluster/dispatch"
)

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show a running master's workers and counters",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "control", Required: true, Usage: "the master's --control socket"},
			&cli.BoolFlag{Name: "json", Usage: "print the raw JSON"},
		},
		Action: func(c *cli.Context) error {
			b, err := dispatch.Control(c.String("control"), "status")
			if err != nil {
				return err
			}
			w := c.App.Writer
			if c.Bool("json") {
				fmt.Fprintln(w, string(b))
				return nil
			}
			var s dispatch.Status
			if err := json.Unmarshal(b, &s); err != nil {
				return fmt.Errorf("bad reply from master: %w", err)
			}
			fmt.Fprintf(w, "master pid %d, %s, policy %s, accepted %d, requeued %d, queue timeouts %d, restarts %d\n",
				s.PID, s.Listen, s.Sched, s.Totals.Accepted, s.Totals.Requeued, s.Totals.QueueTimeouts, s.Totals.Restarts)
			var buf bytes.Buffer
			fmt.Fprintf(&buf, "%-4s %-8s %-9s %-10s %9s %9s %9s %8s %8s\n", "id", "pid", "state", "uptime", "accepted", "inflight", "completed", "refused", "requeued")
			for _, ws := range s.Workers {
				fmt.Fprintf(&buf, "%-4d %-8d %-9s %-10s %9d %9d %9d %8d %8d\n", ws.ID, ws.PID, ws.State, ws.Uptime, ws.Accepted, ws.InFlight, ws.Completed, ws.Refused, ws.Requeued)
			}
			w.Write(buf.Bytes())
			return nil
		},
	}
}
