package config

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// The default guest memory budget: what all workers' guests together may
// hold when --guest-memory-budget (or guest_memory_budget) is not given.
//
// Without a container limit, a fifth of physical memory: the machine runs
// more than wcluster, and each worker holds more than its guests' linear
// memory (compiled code, Go heap, connection buffers), so guests flooded to
// the budget leave wcluster, all told, well under a quarter of the machine.
// Under a cgroup memory limit (a container), half of it: the limit is
// wcluster's alone, and the other half is room for the workers' own memory
// and the master, so guest memory alone never brings the container to its
// OOM killer. The smaller of the two applies.
const (
	physicalShare = 5 // 1/physicalShare of physical memory
	cgroupShare   = 2 // 1/cgroupShare of the cgroup's memory.max
	// minWorkerBudget keeps a worker able to start a few instances
	// whatever the arithmetic says.
	minWorkerBudget = 32 << 20
)

// GuestBudget is the guest memory budget of each worker, and what it comes
// from (for the banner and check).
type GuestBudget struct {
	PerWorker uint64 // 0: none
	Why       string // "set", "none", or how the default was made
}

// ParseGuestBudget reads --guest-memory-budget: "auto", "0" (none) or a
// size per worker. workers is how many workers share the default.
func ParseGuestBudget(s string, workers int) (GuestBudget, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "auto":
		return defaultGuestBudget(workers), nil
	case "0", "off", "none":
		return GuestBudget{0, "none"}, nil
	}
	n, err := ParseSize(s)
	if err != nil {
		return GuestBudget{}, err
	}
	if n < 1<<20 {
		return GuestBudget{}, fmt.Errorf("%d bytes is too small: give at least 1MiB per worker (or 0 for none)", n)
	}
	return GuestBudget{n, "set"}, nil
}

// defaultGuestBudget shares the default among workers.
func defaultGuestBudget(workers int) GuestBudget {
	phys := physicalMemory()
	total, why := phys/physicalShare, fmt.Sprintf("1/%d of %s of memory", physicalShare, SizeText(phys))
	if cg := cgroupMemoryMax(); cg > 0 && cg/cgroupShare < total {
		total, why = cg/cgroupShare, fmt.Sprintf("1/%d of the cgroup's %s memory.max", cgroupShare, SizeText(cg))
	}
	if total == 0 {
		// Memory unknown (no /proc): a budget that still bounds a flood.
		total, why = 2<<30, "2GiB: physical memory unknown"
	}
	per := max(total/uint64(max(workers, 1)), minWorkerBudget)
	return GuestBudget{per, fmt.Sprintf("auto: %s, over %d workers", why, workers)}
}

// physicalMemory is MemTotal from /proc/meminfo (0 if unknown).
func physicalMemory() uint64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err == nil {
				return kb << 10
			}
		}
	}
	return 0
}

// cgroupMemoryMax is the memory.max of this process's cgroup (v2), or the
// v1 memory controller's limit; 0 when there is none.
func cgroupMemoryMax() uint64 {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		var file string
		switch {
		case parts[0] == "0" && parts[1] == "":
			file = filepath.Join("/sys/fs/cgroup", parts[2], "memory.max")
		case parts[1] == "memory" || strings.Contains(","+parts[1]+",", ",memory,"):
			file = filepath.Join("/sys/fs/cgroup/memory", parts[2], "memory.limit_in_bytes")
			if _, err := os.Stat(file); err != nil {
				// In a container the cgroup's own directory is mounted as the root.
				file = "/sys/fs/cgroup/memory/memory.limit_in_bytes"
			}
		default:
			continue
		}
		v, err := os.ReadFile(file)
		if err != nil {
			if parts[0] == "0" {
				v, err = os.ReadFile("/sys/fs/cgroup/memory.max")
			}
			if err != nil {
				continue
			}
		}
		s := strings.TrimSpace(string(v))
		if n, err := strconv.ParseUint(s, 10, 64); err == nil && n < 1<<60 {
			return n // "max", or v1's huge "unlimited", is no limit
		}
	}
	return 0
}

// SizeText writes a byte count the way the flags take it.
func SizeText(n uint64) string {
	switch {
	case n == 0:
		return "0"
	case n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	case n >= 1<<30:
		return fmt.Sprintf("%.1fGiB", float64(n)/(1<<30))
	case n%(1<<20) == 0 || n >= 1<<20:
		return fmt.Sprintf("%dMiB", n>>20)
	default:
		return fmt.Sprintf("%dKiB", n>>10)
	}
}

// String says what the budget is, for the banner and check.
func (b GuestBudget) String() string {
	if b.PerWorker == 0 {
		return "guest memory budget none"
	}
	s := "guest memory budget " + SizeText(b.PerWorker) + " per worker"
	if b.Why != "set" {
		s += " (" + b.Why + ")"
	}
	return s
}
