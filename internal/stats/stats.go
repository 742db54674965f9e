// Package stats is the contract of a worker's handler counters: what a
// worker's heartbeat carries, what the master keeps and shows under
// "handler" in `wcluster status --json`, and what admin turns into metrics.
// The worker fills it, dispatch passes it through unread, and status and
// admin read it: one set of Go types for all, with a version.
package stats

// Version is the version of Worker's layout. A reader of another version
// (a `wcluster status` of another binary) says so instead of guessing.
const Version = 1

// LatencyBuckets is the number of Tenant.Latency buckets:
// len(LatencyBounds())+1, the last one for the calls past the largest bound.
const LatencyBuckets = 17

// LatencyBounds are the upper bounds of the latency buckets, in seconds
// (Prometheus' convention), 100µs to 10s.
func LatencyBounds() [LatencyBuckets - 1]float64 {
	return [...]float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}
}

// Counters are one handler's counters: per tenant in Tenant, and summed
// over the tenants in Worker.
type Counters struct {
	Conns             uint64 `json:"conns"`               // connections served to the end
	Calls             uint64 `json:"calls"`               // calls into the guest
	Traps             uint64 `json:"traps"`               // calls that trapped or exited
	Timeouts          uint64 `json:"timeouts"`            // calls stopped at the time limit
	MemoryLimitHits   uint64 `json:"memory_limit_hits"`   // calls that failed for want of memory
	InstancesCreated  uint64 `json:"instances_created"`   // instances created
	InstancesLive     int64  `json:"instances_live"`      // instances alive now
	InstanceNs        uint64 `json:"instance_ns"`         // time spent creating instances
	Open              int64  `json:"open"`                // connections open now
	LogLinesDropped   uint64 `json:"log_lines_dropped"`   // guest output lines the rate limit dropped
	UpstreamErrors    uint64 `json:"upstream_errors"`     // http-wasm requests the upstream failed (502/504)
	FirstByteTimeouts uint64 `json:"first_byte_timeouts"` // closed for sending nothing in time
	FirstByteShed     uint64 `json:"first_byte_shed"`     // closed to keep first_byte_limit
	PartialTimeouts   uint64 `json:"partial_timeouts"`    // closed with an incomplete request
	AwaitingFirstByte int64  `json:"awaiting_first_byte"` // waiting for their first byte now
	LatencyNs         uint64 `json:"latency_ns"`          // total time of the calls
	MemoryWaits       uint64 `json:"memory_waits"`        // calls that waited for guest memory
	MemoryRefusals    uint64 `json:"memory_refusals"`     // memory.grow refused, waits given up
	Refused           uint64 `json:"refused"`             // connections turned away at the tenant's max_conns
	// Responses counts an http-wasm tenant's responses by status class:
	// [0] 1xx ... [4] 5xx.
	Responses [5]uint64 `json:"responses"`
}

// Add adds c's counters to s.
func (s *Counters) Add(c Counters) {
	s.Conns += c.Conns
	for i := range s.Responses {
		s.Responses[i] += c.Responses[i]
	}
	s.Calls += c.Calls
	s.Traps += c.Traps
	s.Timeouts += c.Timeouts
	s.MemoryLimitHits += c.MemoryLimitHits
	s.InstancesCreated += c.InstancesCreated
	s.InstancesLive += c.InstancesLive
	s.InstanceNs += c.InstanceNs
	s.Open += c.Open
	s.LogLinesDropped += c.LogLinesDropped
	s.UpstreamErrors += c.UpstreamErrors
	s.FirstByteTimeouts += c.FirstByteTimeouts
	s.FirstByteShed += c.FirstByteShed
	s.PartialTimeouts += c.PartialTimeouts
	s.AwaitingFirstByte += c.AwaitingFirstByte
	s.LatencyNs += c.LatencyNs
	s.MemoryWaits += c.MemoryWaits
	s.MemoryRefusals += c.MemoryRefusals
	s.Refused += c.Refused
}

// Tenant is one tenant's handler in a worker.
type Tenant struct {
	Counters
	// Latency counts calls by duration: Latency[i] those that took at most
	// LatencyBounds()[i], the last one those that took longer.
	Latency []uint64 `json:"latency"`
	// MemoryBudget is the tenant's own guest memory budget (0: none),
	// MemoryInUse the linear memory of its instances now.
	MemoryBudget uint64 `json:"memory_budget"`
	MemoryInUse  uint64 `json:"memory_in_use"`
}

// Worker is what a worker reports of its handlers at each heartbeat.
type Worker struct {
	// Version is this layout's (Version); 0: no report yet.
	Version int `json:"version"`
	// Counters are the tenants' summed, so a reader of one handler's
	// counters finds them whatever the worker serves.
	Counters
	Tenants map[string]Tenant `json:"tenants,omitempty"`
	// Partial: Tenants holds only some tenants (those whose figures
	// changed since the last report, a bounded number per report, for a
	// worker of many tenants); the others are as last reported. Merge
	// folds such a report into the last one.
	Partial bool `json:"partial,omitempty"`
	// Routing: requests no tenant served (421), request heads refused
	// (400, 431, 408), failed TLS handshakes.
	Misdirected uint64 `json:"misdirected"`
	Malformed   uint64 `json:"malformed"`
	TLSFailures uint64 `json:"tls_failures"`
	// The worker's guest memory budget (0: none), the linear memory its
	// instances hold now, the calls that waited for room and the
	// refusals (memory.grow refused, waits given up).
	GuestMemoryBudget   uint64 `json:"guest_memory_budget"`
	GuestMemoryInUse    uint64 `json:"guest_memory_in_use"`
	GuestMemoryWaits    uint64 `json:"guest_memory_waits"`
	GuestMemoryRefusals uint64 `json:"guest_memory_refusals"`
}

// Merge returns w with the tenants of last that a Partial w leaves out
// (w itself when whole). last is not modified: readers may hold it.
func (w *Worker) Merge(last *Worker) *Worker {
	if w == nil || !w.Partial || last == nil {
		return w
	}
	merged := *w
	merged.Partial = false
	merged.Tenants = make(map[string]Tenant, len(last.Tenants)+len(w.Tenants))
	for name, t := range last.Tenants {
		merged.Tenants[name] = t
	}
	for name, t := range w.Tenants {
		merged.Tenants[name] = t
	}
	return &merged
}

// Reported reports whether w holds a worker's report (a heartbeat came).
func (w *Worker) Reported() bool { return w.Version != 0 }

// AddTenant records tenant name's figures and adds them to the sums.
func (w *Worker) AddTenant(name string, t Tenant) {
	if w.Tenants == nil {
		w.Tenants = map[string]Tenant{}
	}
	w.Tenants[name] = t
	w.Counters.Add(t.Counters)
}
