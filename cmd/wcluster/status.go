package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/wcluster/wcluster/dispatch"
	"github.com/wcluster/wcluster/internal/stats"
)

var controlFlag = &cli.StringFlag{Name: "control", Required: true, Usage: "the master's --control socket"}

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show a running master's workers and counters",
		Flags: []cli.Flag{controlFlag, &cli.BoolFlag{Name: "json", Usage: "print the raw JSON"}},
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
			var s dispatch.ClusterStatus
			if err := json.Unmarshal(b, &s); err != nil {
				return fmt.Errorf("bad reply from master: %w", err)
			}
			for _, ws := range s.Workers {
				if v := ws.Handler.Version; v != 0 && v != stats.Version {
					return fmt.Errorf("the master reports worker counters of version %d, this binary reads version %d: run the status command of the binary the master runs (or use --json)", v, stats.Version)
				}
			}
			var buf bytes.Buffer
			fmt.Fprintf(&buf, "master pid %d: wcluster %s, %d fds, %d goroutines\n", s.PID, s.Build, s.FDs, s.Goroutines)
			r := s.Reloads
			fmt.Fprintf(&buf, "configuration %s, applied %s; reloads: %d ok, %d failed\n", r.ConfigHash,
				time.Unix(0, int64(r.LastSuccess*1e9)).Format(time.RFC3339), r.OK, r.Failed)
			if r.LastError != "" {
				fmt.Fprintf(&buf, "  last reload failed: %s\n", r.LastError)
			}
			for _, g := range s.Groups {
				name := g.Group
				if name == "" {
					name = "workers"
				}
				fmt.Fprintf(&buf, "%s on %v, policy %s: accepted %d, queued %d, requeued %d, queue timeouts %d, restarts %d, recycled %d, reloads %d\n",
					name, g.Listeners, g.Sched, g.Totals.Accepted, g.Totals.Queued, g.Totals.Requeued, g.Totals.QueueTimeouts,
					g.Totals.Restarts, g.Totals.Recycled, g.Totals.Generation)
				if t := g.Totals; t.AcceptPauses+t.Starved+t.SpawnFailures > 0 {
					fmt.Fprintf(&buf, "  short of descriptors: accept pauses %d, connections handed back %d, failed worker starts %d\n",
						t.AcceptPauses, t.Starved, t.SpawnFailures)
				}
				fmt.Fprintf(&buf, "  %-4s %-8s %-9s %-10s %7s %9s %9s %9s %11s %8s %9s %8s  %s\n", "id", "pid", "state", "uptime", "threads", "accepted", "inflight", "completed", "handed back", "requeued", "requests", "rss", "guest memory (in use/budget, waits, refusals)")
				for _, ws := range g.Workers {
					fmt.Fprintf(&buf, "  %-4d %-8d %-9s %-10s %7d %9d %9d %9d %11d %8d %9d %7dM  %s\n", ws.ID, ws.PID, ws.State, ws.Uptime, ws.Procs,
						ws.Accepted, ws.InFlight, ws.Completed, ws.HandedBack, ws.Requeued, ws.Requests, ws.RSS>>20, guestMemoryText(ws.Handler))
				}
			}
			w.Write(buf.Bytes())
			return nil
		},
	}
}

// guestMemoryText is a worker's guest memory from its heartbeat: in use of
// the budget, and the waits and refusals for memory.
func guestMemoryText(h stats.Worker) string {
	if !h.Reported() {
		return "-"
	}
	budget := "none"
	if b := h.GuestMemoryBudget; b > 0 {
		budget = sizeText(b)
	}
	return fmt.Sprintf("%dM/%s, %d waits, %d refusals", h.GuestMemoryInUse>>20, budget,
		h.GuestMemoryWaits, h.GuestMemoryRefusals)
}

func reloadCommand() *cli.Command {
	return &cli.Command{
		Name:  "reload",
		Usage: "re-read the handler (or config) and replace the workers without dropping a connection",
		Flags: []cli.Flag{controlFlag},
		Action: func(c *cli.Context) error {
			if _, err := dispatch.Control(c.String("control"), "reload"); err != nil {
				return err
			}
			fmt.Fprintln(c.App.Writer, "reloaded")
			return nil
		},
	}
}

func scaleCommand() *cli.Command {
	return &cli.Command{
		Name:      "scale",
		Usage:     "change the number of workers (of one group with --group)",
		ArgsUsage: "N",
		Flags:     []cli.Flag{controlFlag, &cli.StringFlag{Name: "group", Usage: "worker group (default: the first)"}},
		Action: func(c *cli.Context) error {
			n, err := strconv.Atoi(c.Args().First())
			if c.NArg() != 1 || err != nil || n < 1 {
				return fmt.Errorf("scale takes a number of workers, at least 1: wcluster scale --control PATH N")
			}
			cmd := "scale " + strconv.Itoa(n)
			if g := c.String("group"); g != "" {
				cmd += " " + g
			}
			if _, err := dispatch.Control(c.String("control"), cmd); err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "scaled to %d workers\n", n)
			return nil
		},
	}
}

func stopCommand() *cli.Command {
	return &cli.Command{
		Name:  "stop",
		Usage: "stop the master gracefully (--now: kill the workers at once)",
		Flags: []cli.Flag{controlFlag, &cli.BoolFlag{Name: "now", Usage: "do not wait for open connections"}},
		Action: func(c *cli.Context) error {
			cmd := "stop"
			if c.Bool("now") {
				cmd += " now"
			}
			if _, err := dispatch.Control(c.String("control"), cmd); err != nil {
				return err
			}
			fmt.Fprintln(c.App.Writer, "stopping")
			return nil
		},
	}
}
