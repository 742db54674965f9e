package main

// A worker's heartbeat counters (the stats contract), filled from the host's.

import (
	"slices"

	"github.com/wcluster/wcluster/config"
	"github.com/wcluster/wcluster/host"
	"github.com/wcluster/wcluster/internal/stats"
)

// tenantReports makes a worker's heartbeat counters. With many tenants a
// report carries only the tenants whose figures changed since they were
// last sent, as many as fit reportBytes (the rest follow in the next
// reports): the whole set would outgrow a heartbeat, and most tenants are
// idle. The sums always cover every tenant.
type tenantReports struct {
	r      *host.Router
	budget *host.Budget
	sent   map[string]stats.Tenant // as last sent (many tenants only)
}

// reportBytes bounds the tenants of one partial heartbeat, counted as
// tenantBytes and its name each in JSON (at most 673 bytes of figures),
// within the 64 KiB the master reads of a message.
const reportBytes, tenantBytes = 40 << 10, 700

// next is the report of this heartbeat.
func (tr *tenantReports) next() *stats.Worker {
	s := tr.r.Stats()
	w := &stats.Worker{Version: stats.Version, Misdirected: s.Misdirected, Malformed: s.Malformed, TLSFailures: s.TLSFailures}
	many := len(s.Tenants) > config.ManyTenants
	if many {
		if tr.sent == nil {
			tr.sent = map[string]stats.Tenant{}
		}
		w.Partial, w.Tenants = true, map[string]stats.Tenant{}
	}
	size := 0
	for name, t := range s.Tenants {
		st := tenantStats(t.Stats)
		st.Refused = t.Refused
		if !many {
			w.AddTenant(name, st)
			continue
		}
		w.Counters.Add(st.Counters)
		last, ok := tr.sent[name]
		if !ok {
			last = stats.Tenant{Latency: st.Latency} // a tenant never used is not reported
		}
		if n := tenantBytes + len(name); size+n <= reportBytes && !sameTenant(last, st) {
			w.Tenants[name] = st
			tr.sent[name] = st
			size += n
		}
	}
	return withBudget(w, tr.budget)
}

// routerStats is one report of a worker serving tenants.
func routerStats(r *host.Router, budget *host.Budget) *stats.Worker {
	return (&tenantReports{r: r, budget: budget}).next()
}

func sameTenant(a, b stats.Tenant) bool {
	return a.Counters == b.Counters && a.MemoryBudget == b.MemoryBudget && a.MemoryInUse == b.MemoryInUse && slices.Equal(a.Latency, b.Latency)
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
