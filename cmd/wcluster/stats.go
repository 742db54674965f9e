package main

// A worker's heartbeat counters (the stats contract), filled from the host's.

import (
	"github.com/wcluster/wcluster/host"
	"github.com/wcluster/wcluster/internal/stats"
)

// routerStats are the heartbeat counters of a worker serving tenants.
func routerStats(r *host.Router, budget *host.Budget) *stats.Worker {
	s := r.Stats()
	w := &stats.Worker{Version: stats.Version, Misdirected: s.Misdirected, Malformed: s.Malformed, TLSFailures: s.TLSFailures}
	for name, t := range s.Tenants {
		st := tenantStats(t.Stats)
		st.Refused = t.Refused
		w.AddTenant(name, st)
	}
	return withBudget(w, budget)
}

func tenantStats(s host.Stats) stats.Tenant {
	return stats.Tenant{
		Counters: stats.Counters{
			Conns: s.Conns, Calls: s.Calls, Traps: s.Traps, Timeouts: s.Timeouts,
			MemoryLimitHits: s.MemLimit, InstancesCreated: s.Instances, InstancesLive: s.Live,
			InstanceNs: s.InstanceNs, Open: s.Open, LogLinesDropped: s.LogDropped, UpstreamErrors: s.UpstreamErrors,
			FirstByteTimeouts: s.FirstByteTimeouts, FirstByteShed: s.FirstByteShed,
			PartialTimeouts: s.PartialTimeouts, AwaitingFirstByte: s.AwaitingFirst, LatencyNs: s.LatencyNs,
			MemoryWaits: s.Memory.Waits, MemoryRefusals: s.Memory.Refusals,
			Responses: s.Responses,
		},
		Latency:      s.Latency[:],
		MemoryBudget: s.Memory.Limit, MemoryInUse: s.Memory.Used,
	}
}

// withBudget adds the worker's guest memory budget: the one its tenants
// share (their own budgets, summed, would mean nothing).
func withBudget(w *stats.Worker, b *host.Budget) *stats.Worker {
	bs := b.Stats()
	w.GuestMemoryBudget, w.GuestMemoryInUse = bs.Limit, bs.Used
	w.GuestMemoryWaits, w.GuestMemoryRefusals = bs.Waits, bs.Refusals
	return w
}
