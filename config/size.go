package config

import (
	"fmt"
	"strconv"
	"strings"
)

// ParseSize reads a byte size: a number with an optional unit (B, KB, KiB,
// MB, MiB, GB, GiB; case-insensitive).
func ParseSize(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	i := len(t)
	for i > 0 && (t[i-1] < '0' || t[i-1] > '9') {
		i--
	}
	num, unit := t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: want a number with an optional unit, e.g. 64MiB", s)
	}
	mult := map[string]uint64{
		"": 1, "b": 1,
		"k": 1000, "kb": 1000, "kib": 1 << 10,
		"m": 1000 * 1000, "mb": 1000 * 1000, "mib": 1 << 20,
		"g": 1000 * 1000 * 1000, "gb": 1000 * 1000 * 1000, "gib": 1 << 30,
	}[unit]
	if mult == 0 {
		return 0, fmt.Errorf("size %q: unknown unit %q (use B, KiB, MiB, GiB, KB, MB or GB)", s, unit)
	}
	return n * mult, nil
}
