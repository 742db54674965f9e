package main

// A worker's heartbeat counters, as the master, status and admin read them.

import "github.com/wcluster/wcluster/host"

// routerStats are a worker's heartbeat counters: per tenant, and routing.
func routerStats(r *host.Router, budget *host.Budget) map[string]any {
	s := r.Stats()
	tenants := map[string]any{}
	for name, t := range s.Tenants {
		st := handlerStats(t.Stats)
		st["refused"] = t.Refused
		tenants[name] = st
	}
	return withBudget(withTotals(map[string]any{"tenants": tenants, "misdirected": s.Misdirected, "malformed": s.Malformed, "tls_failures": s.TLSFailures}), budget)
}

// withTotals adds to a heartbeat's stats, beside "tenants", every counter
// summed over the tenants, so readers of one handler's counters (status,
// tests) find them whatever the worker serves.
func withTotals(st map[string]any) map[string]any {
	ts, _ := st["tenants"].(map[string]any)
	for _, v := range ts {
		m, _ := v.(map[string]any)
		for k, x := range m {
			var n uint64
			switch v := x.(type) {
			case uint64:
				n = v
			case int64:
				n = uint64(max(v, 0))
			default:
				continue // the latency buckets stay per tenant
			}
			prev, _ := st[k].(uint64)
			st[k] = prev + n
		}
	}
	return st
}

func handlerStats(s host.Stats) map[string]any {
	return map[string]any{
		"conns": s.Conns, "calls": s.Calls, "traps": s.Traps, "timeouts": s.Timeouts,
		"memory_limit_hits": s.MemLimit, "instances_created": s.Instances, "instances_live": s.Live,
		"instance_ns": s.InstanceNs, "open": s.Open, "log_lines_dropped": s.LogDropped, "upstream_errors": s.UpstreamErrors,
		"first_byte_timeouts": s.FirstByteTimeouts, "first_byte_shed": s.FirstByteShed,
		"partial_timeouts": s.PartialTimeouts, "awaiting_first_byte": s.AwaitingFirst,
		"latency": s.Latency[:], "latency_ns": s.LatencyNs,
		"memory_budget": s.Memory.Limit, "memory_in_use": s.Memory.Used,
		"memory_waits": s.Memory.Waits, "memory_refusals": s.Memory.Refusals,
	}
}

// withBudget adds the worker's guest memory budget to a heartbeat's stats
// (in place of the tenants' budgets summed, which mean nothing).
func withBudget(st map[string]any, b *host.Budget) map[string]any {
	delete(st, "memory_budget")
	delete(st, "memory_in_use")
	bs := b.Stats()
	st["guest_memory_budget"], st["guest_memory_in_use"] = bs.Limit, bs.Used
	st["guest_memory_waits"], st["guest_memory_refusals"] = bs.Waits, bs.Refusals
	return st
}
