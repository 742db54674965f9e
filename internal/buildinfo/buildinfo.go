// Package buildinfo says which build of wcluster is running: its version,
// the commit it was built from, and the Go and wazero it was built with,
// all read from what the Go toolchain records in the binary.
package buildinfo

import (
	"fmt"
	"runtime/debug"
)

// Info describes one build.
type Info struct {
	Version string `json:"version"` // the module's version, "devel" for a build from a checkout
	Commit  string `json:"commit"`  // the VCS revision, "-dirty" appended for uncommitted changes; "unknown" when not recorded
	Go      string `json:"go"`
	Wazero  string `json:"wazero"`
}

// Read returns the running binary's build information.
func Read() Info {
	i := Info{Version: "devel", Commit: "unknown", Go: "unknown", Wazero: "unknown"}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return i
	}
	i.Go = bi.GoVersion
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		i.Version = v
	}
	var rev string
	var dirty bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev != "" {
		i.Commit = rev[:min(len(rev), 12)]
		if dirty {
			i.Commit += "-dirty"
		}
	}
	for _, d := range bi.Deps {
		if d.Path == "github.com/tetratelabs/wazero" {
			i.Wazero = d.Version
			if d.Replace != nil {
				i.Wazero = d.Replace.Version
			}
		}
	}
	return i
}

// String is the one line `wcluster --version` prints after the name.
func (i Info) String() string {
	return fmt.Sprintf("%s (commit %s, %s, wazero %s)", i.Version, i.Commit, i.Go, i.Wazero)
}
