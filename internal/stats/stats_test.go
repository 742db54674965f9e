package stats

import (
	"encoding/json"
	"testing"
)

// TestWorkerJSON: a worker's report keeps the field names `wcluster status
// --json` has always shown (the sums flat beside "tenants"), and AddTenant
// sums what it records.
func TestWorkerJSON(t *testing.T) {
	w := Worker{Version: Version, GuestMemoryBudget: 512 << 20}
	w.AddTenant("a", Tenant{Counters: Counters{Calls: 2, Open: 1, Refused: 1}, Latency: make([]uint64, LatencyBuckets)})
	w.AddTenant("b", Tenant{Counters: Counters{Calls: 3, Open: 2}})
	if w.Calls != 5 || w.Open != 3 || w.Refused != 1 {
		t.Fatalf("sums: %+v", w.Counters)
	}
	b, err := json.Marshal(w)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"version", "calls", "open", "refused", "instances_live", "log_lines_dropped", "tenants",
		"misdirected", "tls_failures", "guest_memory_budget", "guest_memory_in_use", "guest_memory_waits", "guest_memory_refusals"} {
		if _, ok := m[k]; !ok {
			t.Errorf("no %q in %s", k, b)
		}
	}
	a := m["tenants"].(map[string]any)["a"].(map[string]any)
	if lat, _ := a["latency"].([]any); len(lat) != LatencyBuckets || a["calls"] != 2.0 || a["memory_budget"] == nil {
		t.Errorf("tenant a: %v", a)
	}
	var back Worker
	if err := json.Unmarshal(b, &back); err != nil || back.Calls != 5 || back.Tenants["b"].Calls != 3 || !back.Reported() {
		t.Errorf("round trip: %+v %v", back, err)
	}
}
