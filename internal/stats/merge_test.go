package stats

import "testing"

// TestMerge: a partial report keeps the tenants it leaves out as last
// reported, without changing the last report; a whole one replaces it.
func TestMerge(t *testing.T) {
	last := &Worker{Version: Version, Tenants: map[string]Tenant{"a": {Counters: Counters{Calls: 1}}, "b": {Counters: Counters{Calls: 2}}}}
	w := &Worker{Version: Version, Partial: true, Counters: Counters{Calls: 13}, Tenants: map[string]Tenant{"b": {Counters: Counters{Calls: 12}}}}
	m := w.Merge(last)
	if m.Partial || m.Calls != 13 || len(m.Tenants) != 2 || m.Tenants["a"].Calls != 1 || m.Tenants["b"].Calls != 12 {
		t.Errorf("merged: %+v", m)
	}
	if last.Tenants["b"].Calls != 2 || len(w.Tenants) != 1 {
		t.Errorf("merge changed its inputs: last %+v, w %+v", last, w)
	}
	whole := &Worker{Version: Version, Tenants: map[string]Tenant{"c": {}}}
	if got := whole.Merge(last); got != whole {
		t.Errorf("a whole report merged: %+v", got)
	}
}
