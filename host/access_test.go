package host

import (
	"encoding/json"
	"testing"
)

// TestAppendJSONString: what a client chooses (a user agent, a host) is
// written as valid JSON whatever its bytes, so that a log line indexes.
func TestAppendJSONString(t *testing.T) {
	for in, want := range map[string]string{
		"plain":        "plain",
		`q"b\s`:        `q"b\s`,
		"\x00\x1f\x7f": "\x00\x1f\x7f",
		"bad\xffutf8":  "bad\uFFFDutf8",
		"ünïcode":      "ünïcode",
	} {
		var got string
		b := appendJSONString(nil, in)
		if err := json.Unmarshal(b, &got); err != nil || got != want {
			t.Errorf("%q: wrote %s, read back %q (%v), want %q", in, b, got, err, want)
		}
	}
}
