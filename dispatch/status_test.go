package dispatch

import (
	"encoding/json"
	"log/slog"
	"os"
	"strings"
	"testing"
)

// TestStatusListsNeverNull: a group with no worker up reports "workers": []
// (scripts index it), and is not ready.
func TestStatusListsNeverNull(t *testing.T) {
	m, err := NewGroup(Config{Listen: []string{"127.0.0.1:0"}, Workers: 1, Executable: os.Args[0], Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer m.closeListeners()
	m.procs = []*proc{nil} // the slot of a worker that is down
	c := &Cluster{groups: []*Group{m}}
	for _, v := range []any{m.Status(), c.Status()} {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), `"workers":[]`) || strings.Contains(string(b), "null") {
			t.Errorf("status with no worker up: %s", b)
		}
	}
	if m.Ready() {
		t.Error("a group with no worker up says it is ready")
	}
}
