package admin

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wcluster/wcluster/dispatch"
	"github.com/wcluster/wcluster/internal/stats"
)

// collector turns one status snapshot into metrics at each scrape. Worker
// series carry group and worker labels; a replaced worker's counters start
// again from zero, which Prometheus' rate() reads as a counter reset.
type collector struct {
	src  Source
	desc map[string]*prometheus.Desc
}

var (
	workerLabels = []string{"group", "worker"}
	tenantLabels = []string{"group", "worker", "tenant"}
)

// guestCounters are the handler counters each worker reports per tenant,
// with the metric name and help they get here.
var guestCounters = []struct {
	name, help string
	value      func(*stats.Counters) uint64
}{
	{"wcluster_guest_calls_total", "Calls into the guest (one per request for HTTP guests).", func(c *stats.Counters) uint64 { return c.Calls }},
	{"wcluster_guest_connections_total", "Connections the guest served to the end.", func(c *stats.Counters) uint64 { return c.Conns }},
	{"wcluster_guest_traps_total", "Guest calls that trapped or exited.", func(c *stats.Counters) uint64 { return c.Traps }},
	{"wcluster_guest_timeouts_total", "Guest calls stopped at the time limit.", func(c *stats.Counters) uint64 { return c.Timeouts }},
	{"wcluster_guest_memory_limit_hits_total", "Guest calls that failed for want of memory.", func(c *stats.Counters) uint64 { return c.MemoryLimitHits }},
	{"wcluster_guest_instantiations_total", "Guest instances created.", func(c *stats.Counters) uint64 { return c.InstancesCreated }},
	{"wcluster_guest_log_lines_dropped_total", "Lines of guest stdout/stderr the per-handler rate limit kept out of the log.", func(c *stats.Counters) uint64 { return c.LogLinesDropped }},
	{"wcluster_first_byte_timeouts_total", "New connections closed for sending nothing within first_byte_timeout.", func(c *stats.Counters) uint64 { return c.FirstByteTimeouts }},
	{"wcluster_first_byte_shed_total", "Connections waiting for their first byte closed to keep first_byte_limit.", func(c *stats.Counters) uint64 { return c.FirstByteShed }},
	{"wcluster_partial_timeouts_total", "Connections closed with an incomplete request at partial_timeout.", func(c *stats.Counters) uint64 { return c.PartialTimeouts }},
	{"wcluster_upstream_errors_total", "Requests an http-wasm guest passed on that its upstream failed (502/504).", func(c *stats.Counters) uint64 { return c.UpstreamErrors }},
}

func newCollector(src Source) *collector {
	c := &collector{src: src, desc: map[string]*prometheus.Desc{}}
	add := func(name, help string, labels ...string) {
		c.desc[name] = prometheus.NewDesc(name, help, labels, nil)
	}
	add("wcluster_connections_accepted_total", "Connections handed to (rr) or accepted by (shared, reuseport) the worker.", workerLabels...)
	add("wcluster_connections_in_flight", "Connections the worker holds now.", workerLabels...)
	add("wcluster_connections_completed_total", "Connections the worker finished.", workerLabels...)
	add("wcluster_connections_handed_back_total", "Connections the worker could not take for lack of file descriptors (rr); the master placed them elsewhere.", workerLabels...)
	add("wcluster_connections_requeued_total", "Connections requeued from this worker slot because it died before acknowledging them.", workerLabels...)
	add("wcluster_worker_heartbeat_age_seconds", "Time since the worker's last heartbeat.", workerLabels...)
	add("wcluster_worker_resident_bytes", "The worker process's resident memory.", workerLabels...)
	add("wcluster_worker_threads", "The worker's GOMAXPROCS: threads running its Go code (its share of the CPUs under worker_procs auto).", workerLabels...)
	add("wcluster_worker_up", "1 for a worker that is ready, 0 while starting.", workerLabels...)
	add("wcluster_guest_instances", "Guest instances alive in the worker (the pool).", tenantLabels...)
	add("wcluster_guest_instantiation_seconds_total", "Time spent creating guest instances.", tenantLabels...)
	add("wcluster_tenant_connections_open", "Connections the tenant's handler holds now.", tenantLabels...)
	add("wcluster_tenant_refused_total", "Connections refused because the tenant was at its max_conns.", tenantLabels...)
	for _, g := range guestCounters {
		add(g.name, g.help, tenantLabels...)
	}
	add("wcluster_http_responses_total", "Responses of an http-wasm tenant, by status class (1xx ... 5xx).", append(tenantLabels, "class")...)
	add("wcluster_guest_call_duration_seconds", "Time of each call into the guest: one request for a handler that answers one per call.", tenantLabels...)
	add("wcluster_guest_memory_budget_bytes", "The worker's guest memory budget: linear memory all its guest instances may hold together (0: none).", workerLabels...)
	add("wcluster_guest_memory_in_use_bytes", "Linear memory the worker's guest instances hold now.", workerLabels...)
	add("wcluster_guest_memory_waits_total", "Calls that waited for room in the worker's guest memory budget.", workerLabels...)
	add("wcluster_guest_memory_refusals_total", "memory.grow refused, and calls that gave up waiting, for want of room in the worker's guest memory budget.", workerLabels...)
	add("wcluster_tenant_memory_budget_bytes", "The tenant's guest memory budget in the worker (0: none of its own).", tenantLabels...)
	add("wcluster_tenant_memory_in_use_bytes", "Linear memory the tenant's guest instances hold now in the worker.", tenantLabels...)
	add("wcluster_tenant_memory_waits_total", "The tenant's calls that waited for room in a guest memory budget.", tenantLabels...)
	add("wcluster_tenant_memory_refusals_total", "The tenant's memory.grow refused, and calls that gave up waiting, for want of room in a guest memory budget.", tenantLabels...)
	add("wcluster_misdirected_total", "Connections no tenant answered (unknown Host or SNI).", workerLabels...)
	add("wcluster_tls_failures_total", "TLS handshakes that failed.", workerLabels...)
	add("wcluster_master_accepted_total", "Connections the master accepted (rr).", "group")
	add("wcluster_queue_depth", "Accepted connections waiting in the master for a worker with room.", "group")
	add("wcluster_queue_timeouts_total", "Queued connections closed because no worker had room in time.", "group")
	add("wcluster_worker_restarts_total", "Workers replaced, by cause: crash (exited), hung (heartbeat stopped) or recycle (limits).", "group", "cause")
	add("wcluster_reload_generation", "Completed reloads.", "group")
	add("wcluster_workers", "Worker slots in the group.", "group")
	add("wcluster_accept_pauses_total", "Times accepting failed for want of file descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) and the listener paused.", "group")
	add("wcluster_starved_connections_total", "Connections a worker could not take for want of file descriptors: each went to another worker or back to the queue.", "group")
	add("wcluster_worker_spawn_failures_total", "Worker processes that could not be started (out of descriptors, fork or exec failed); each is retried.", "group")
	add("wcluster_master_requeued_total", "Connections the group requeued because the worker holding them died before acknowledging them (all worker slots, replaced workers included).", "group")
	add("wcluster_certificate_expiry_timestamp_seconds", "When a tenant's TLS certificate expires (Unix seconds): alert well before it.", "group", "tenant")
	add("wcluster_build_info", "The running build: always 1.", "version", "commit", "go", "wazero")
	add("wcluster_reloads_total", "Reloads by outcome (ok, failed), whatever asked for them.", "outcome")
	add("wcluster_reload_last_success_timestamp_seconds", "When the running configuration was applied (the last reload that worked, or the start).")
	add("wcluster_config_info", "The configuration the workers serve, by hash (status shows the same hash): always 1.", "hash")
	return c
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.desc {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	st := c.src.Status()
	emit := func(name string, t prometheus.ValueType, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(c.desc[name], t, v, labels...)
	}
	b := st.Build
	emit("wcluster_build_info", prometheus.GaugeValue, 1, b.Version, b.Commit, b.Go, b.Wazero)
	emit("wcluster_reloads_total", prometheus.CounterValue, float64(st.Reloads.OK), "ok")
	emit("wcluster_reloads_total", prometheus.CounterValue, float64(st.Reloads.Failed), "failed")
	emit("wcluster_reload_last_success_timestamp_seconds", prometheus.GaugeValue, st.Reloads.LastSuccess)
	emit("wcluster_config_info", prometheus.GaugeValue, 1, st.Reloads.ConfigHash)
	for _, g := range st.Groups {
		group := g.Group
		emit("wcluster_master_accepted_total", prometheus.CounterValue, float64(g.Totals.Accepted), group)
		emit("wcluster_queue_depth", prometheus.GaugeValue, float64(g.Totals.Queued), group)
		emit("wcluster_queue_timeouts_total", prometheus.CounterValue, float64(g.Totals.QueueTimeouts), group)
		emit("wcluster_master_requeued_total", prometheus.CounterValue, float64(g.Totals.Requeued), group)
		emit("wcluster_accept_pauses_total", prometheus.CounterValue, float64(g.Totals.AcceptPauses), group)
		emit("wcluster_starved_connections_total", prometheus.CounterValue, float64(g.Totals.Starved), group)
		emit("wcluster_worker_spawn_failures_total", prometheus.CounterValue, float64(g.Totals.SpawnFailures), group)
		for _, cert := range g.Certificates {
			emit("wcluster_certificate_expiry_timestamp_seconds", prometheus.GaugeValue, cert.NotAfter, group, cert.Tenant)
		}
		// Restarts counts every unplanned replacement; hung ones are among them.
		emit("wcluster_worker_restarts_total", prometheus.CounterValue, float64(g.Totals.Restarts-min(g.Totals.HungKilled, g.Totals.Restarts)), group, "crash")
		emit("wcluster_worker_restarts_total", prometheus.CounterValue, float64(g.Totals.HungKilled), group, "hung")
		emit("wcluster_worker_restarts_total", prometheus.CounterValue, float64(g.Totals.Recycled), group, "recycle")
		emit("wcluster_reload_generation", prometheus.GaugeValue, float64(g.Totals.Generation), group)
		emit("wcluster_workers", prometheus.GaugeValue, float64(len(g.Workers)), group)
		for _, w := range g.Workers {
			c.collectWorker(ch, emit, group, w)
		}
	}
}

func (c *collector) collectWorker(ch chan<- prometheus.Metric, emit func(string, prometheus.ValueType, float64, ...string), group string, w dispatch.WorkerStatus) {
	id := strconv.Itoa(w.ID)
	counter, gauge := prometheus.CounterValue, prometheus.GaugeValue
	emit("wcluster_connections_accepted_total", counter, float64(w.Accepted), group, id)
	emit("wcluster_connections_in_flight", gauge, float64(w.InFlight), group, id)
	emit("wcluster_connections_completed_total", counter, float64(w.Completed), group, id)
	emit("wcluster_connections_handed_back_total", counter, float64(w.HandedBack), group, id)
	emit("wcluster_connections_requeued_total", counter, float64(w.Requeued), group, id)
	emit("wcluster_worker_heartbeat_age_seconds", gauge, w.Age.Seconds(), group, id)
	emit("wcluster_worker_resident_bytes", gauge, float64(w.RSS), group, id)
	if w.Procs > 0 {
		emit("wcluster_worker_threads", gauge, float64(w.Procs), group, id)
	}
	up := 0.0
	if w.State == "ready" {
		up = 1
	}
	emit("wcluster_worker_up", gauge, up, group, id)
	h := &w.Handler
	emit("wcluster_misdirected_total", counter, float64(h.Misdirected), group, id)
	emit("wcluster_tls_failures_total", counter, float64(h.TLSFailures), group, id)
	emit("wcluster_guest_memory_budget_bytes", gauge, float64(h.GuestMemoryBudget), group, id)
	emit("wcluster_guest_memory_in_use_bytes", gauge, float64(h.GuestMemoryInUse), group, id)
	emit("wcluster_guest_memory_waits_total", counter, float64(h.GuestMemoryWaits), group, id)
	emit("wcluster_guest_memory_refusals_total", counter, float64(h.GuestMemoryRefusals), group, id)
	for name, t := range h.Tenants {
		emit("wcluster_guest_instances", gauge, float64(t.InstancesLive), group, id, name)
		emit("wcluster_guest_instantiation_seconds_total", counter, float64(t.InstanceNs)/1e9, group, id, name)
		emit("wcluster_tenant_connections_open", gauge, float64(t.Open), group, id, name)
		emit("wcluster_tenant_refused_total", counter, float64(t.Refused), group, id, name)
		emit("wcluster_tenant_memory_budget_bytes", gauge, float64(t.MemoryBudget), group, id, name)
		emit("wcluster_tenant_memory_in_use_bytes", gauge, float64(t.MemoryInUse), group, id, name)
		emit("wcluster_tenant_memory_waits_total", counter, float64(t.MemoryWaits), group, id, name)
		emit("wcluster_tenant_memory_refusals_total", counter, float64(t.MemoryRefusals), group, id, name)
		for _, g := range guestCounters {
			emit(g.name, counter, float64(g.value(&t.Counters)), group, id, name)
		}
		if t.Responses != [5]uint64{} { // an http-wasm tenant that answered
			for i, n := range t.Responses {
				emit("wcluster_http_responses_total", counter, float64(n), group, id, name, strconv.Itoa(i+1)+"xx")
			}
		}
		if h, ok := histogram(t); ok {
			ch <- prometheus.MustNewConstHistogram(c.desc["wcluster_guest_call_duration_seconds"],
				h.count, h.sum, h.buckets, group, id, name)
		}
	}
}

type hist struct {
	count   uint64
	sum     float64
	buckets map[float64]uint64
}

// histogram reads a tenant's call-duration buckets (counts per bucket, the
// last one past the largest bound) into Prometheus' cumulative form.
func histogram(t stats.Tenant) (hist, bool) {
	bounds := stats.LatencyBounds()
	if len(t.Latency) != len(bounds)+1 {
		return hist{}, false
	}
	h := hist{buckets: make(map[float64]uint64, len(bounds))}
	for i, n := range t.Latency {
		h.count += n
		if i < len(bounds) {
			h.buckets[bounds[i]] = h.count
		}
	}
	h.sum = float64(t.LatencyNs) / 1e9
	return h, true
}
