package buildinfo

import (
	"strings"
	"testing"
)

// A test binary records its Go version and dependencies, as wcluster's does.
func TestRead(t *testing.T) {
	i := Read()
	if !strings.HasPrefix(i.Go, "go1.") {
		t.Errorf("Go = %q, want the toolchain's version", i.Go)
	}
	if i.Version == "" || i.Commit == "" || i.Wazero == "" {
		t.Errorf("empty fields in %+v", i)
	}
	if s := i.String(); !strings.Contains(s, i.Go) || !strings.Contains(s, "commit ") {
		t.Errorf("String() = %q", s)
	}
}
