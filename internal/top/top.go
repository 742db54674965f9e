// Package top owns `wcluster top`: frames of a running cluster's workers
// and groups — requests per second, latency quantiles, errors, instances,
// memory, restarts, queue — computed from two status snapshots, shown live
// on a terminal or printed one per interval otherwise.
package top

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/wcluster/wcluster/dispatch"
	"github.com/wcluster/wcluster/internal/stats"
)

// Sample is one status snapshot and when it was taken.
type Sample struct {
	At time.Time
	St dispatch.ClusterStatus
}

// Row is one worker over the interval between two samples.
type Row struct {
	Group     string
	ID, PID   int
	State     string
	RPS       float64 // requests per second
	P50, P99  float64 // seconds; -1 without calls in the interval
	Errors    uint64  // traps, timeouts and memory failures in the interval
	InFlight  int64
	Instances int64
	RSS       uint64
}

// GroupRow is one group's counters over the interval.
type GroupRow struct {
	Name     string
	Workers  int
	RPS      float64
	Restarts uint64 // in the interval
	Queued   int
}

// Frame is what one refresh shows.
type Frame struct {
	At     time.Time
	Rows   []Row
	Groups []GroupRow
}

// Sort orders of the rows, cycled by the `s` key.
var Sorts = []string{"id", "rps", "p99", "errors", "rss"}

// Compute makes the frame of the interval from prev to cur (prev may be
// the zero Sample: rates are then 0).
func Compute(prev, cur Sample) Frame {
	f := Frame{At: cur.At}
	dt := cur.At.Sub(prev.At).Seconds()
	before := map[int]dispatch.WorkerStatus{} // by pid: a replaced worker starts from zero
	for _, w := range prev.St.Workers {
		before[w.PID] = w
	}
	prevGroups := map[string]dispatch.Status{}
	for _, g := range prev.St.Groups {
		prevGroups[g.Group] = g
	}
	for _, g := range cur.St.Groups {
		gr := GroupRow{Name: g.Group, Workers: len(g.Workers), Queued: g.Totals.Queued}
		if p, ok := prevGroups[g.Group]; ok && g.Totals.Restarts >= p.Totals.Restarts {
			gr.Restarts = g.Totals.Restarts - p.Totals.Restarts
		}
		for _, w := range g.Workers {
			r := Row{Group: g.Group, ID: w.ID, PID: w.PID, State: w.State, InFlight: w.InFlight, RSS: w.RSS, P50: -1, P99: -1}
			p, had := before[w.PID]
			lat := make([]uint64, stats.LatencyBuckets)
			for name, t := range w.Handler.Tenants {
				r.Instances += t.InstancesLive
				old := p.Handler.Tenants[name]
				for i := range min(len(t.Latency), len(lat)) {
					var o uint64
					if had && i < len(old.Latency) {
						o = old.Latency[i]
					}
					if t.Latency[i] >= o {
						lat[i] += t.Latency[i] - o
					}
				}
			}
			if had && dt > 0 {
				if w.Requests >= p.Requests {
					r.RPS = float64(w.Requests-p.Requests) / dt
				}
				errs := func(c stats.Counters) uint64 { return c.Traps + c.Timeouts + c.MemoryLimitHits }
				if a, b := errs(w.Handler.Counters), errs(p.Handler.Counters); a >= b {
					r.Errors = a - b
				}
			}
			r.P50, r.P99 = quantile(lat, 0.5), quantile(lat, 0.99)
			gr.RPS += r.RPS
			f.Rows = append(f.Rows, r)
		}
		f.Groups = append(f.Groups, gr)
	}
	return f
}

// quantile reads q of the calls counted per bucket: the upper bound of
// the bucket it falls in (-1 without calls; +Inf past the last bound).
func quantile(counts []uint64, q float64) float64 {
	var n uint64
	for _, c := range counts {
		n += c
	}
	if n == 0 {
		return -1
	}
	bounds := stats.LatencyBounds()
	rank := uint64(q*float64(n-1)) + 1
	var seen uint64
	for i, c := range counts {
		seen += c
		if seen >= rank {
			if i < len(bounds) {
				return bounds[i]
			}
			break
		}
	}
	return -2 // past the last bound
}

// Render writes f as text: a header, the groups, then the workers of group
// (all when ""), ordered by sortBy (one of Sorts).
func Render(w io.Writer, f Frame, sortBy, group string) {
	var total float64
	for _, g := range f.Groups {
		total += g.RPS
	}
	fmt.Fprintf(w, "wcluster top  %s  %.0f req/s  sort: %s  group: %s\n", f.At.Format("15:04:05"), total, sortBy, cmp.Or(group, "all"))
	fmt.Fprintf(w, "%-12s %7s %9s %8s %6s\n", "GROUP", "WORKERS", "REQ/S", "RESTARTS", "QUEUED")
	for _, g := range f.Groups {
		fmt.Fprintf(w, "%-12s %7d %9.0f %8d %6d\n", cmp.Or(g.Name, "workers"), g.Workers, g.RPS, g.Restarts, g.Queued)
	}
	rows := slices.Clone(f.Rows)
	rows = slices.DeleteFunc(rows, func(r Row) bool { return group != "" && r.Group != group })
	slices.SortStableFunc(rows, func(a, b Row) int {
		switch sortBy {
		case "rps":
			return cmp.Compare(b.RPS, a.RPS)
		case "p99":
			return cmp.Compare(b.P99, a.P99)
		case "errors":
			return cmp.Compare(b.Errors, a.Errors)
		case "rss":
			return cmp.Compare(b.RSS, a.RSS)
		}
		return cmp.Or(strings.Compare(a.Group, b.Group), cmp.Compare(a.ID, b.ID))
	})
	fmt.Fprintf(w, "\n%-12s %4s %8s %-8s %9s %9s %9s %7s %8s %9s %8s\n",
		"GROUP", "ID", "PID", "STATE", "REQ/S", "P50", "P99", "ERRORS", "INFLIGHT", "INSTANCES", "RSS")
	for _, r := range rows {
		fmt.Fprintf(w, "%-12s %4d %8d %-8s %9.0f %9s %9s %7d %8d %9d %7dM\n",
			cmp.Or(r.Group, "workers"), r.ID, r.PID, r.State, r.RPS, latency(r.P50), latency(r.P99), r.Errors, r.InFlight, r.Instances, r.RSS>>20)
	}
}

func latency(s float64) string {
	switch {
	case s == -1:
		return "-"
	case s == -2:
		b := stats.LatencyBounds()
		return fmt.Sprintf(">%s", latency(b[len(b)-1]))
	case s < 1e-3:
		return fmt.Sprintf("≤%.0fµs", s*1e6)
	case s < 1:
		return fmt.Sprintf("≤%.0fms", s*1e3)
	}
	return fmt.Sprintf("≤%.1fs", s)
}

// GroupNames are the names of the frame's groups, for the `g` key to cycle.
func (f Frame) GroupNames() []string {
	var names []string
	for _, g := range f.Groups {
		names = append(names, g.Name)
	}
	return names
}
