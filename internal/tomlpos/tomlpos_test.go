package tomlpos

import "testing"

func TestKeyLines(t *testing.T) {
	src := `# a comment
[cluster]
workers = 2   # trailing comment

[[tenant]]
name = "a"
listen = [
  "127.0.0.1:1",   # [not a header]
  "127.0.0.1:2",
]
tls = { cert = "c.pem", key = "k.pem" }
note = """
[[tenant]]
name = "fake"
"""

[tenant.env]
HOME = "x"

[[tenant]]
"name" = 'b'
env.X = "1"
config = {
  a = "1",
}
`
	got := Lines(src)
	for path, line := range map[string]int{
		"cluster": 2, "cluster.workers": 3,
		"tenant.0": 5, "tenant.0.name": 6, "tenant.0.listen": 7, "tenant.0.tls": 11, "tenant.0.tls.cert": 11,
		"tenant.0.tls.key": 11, "tenant.0.note": 12, "tenant.0.env": 17, "tenant.0.env.HOME": 18,
		"tenant.1": 20, "tenant.1.name": 21, "tenant.1.env.X": 22, "tenant.1.config": 23,
	} {
		if got[path] != line {
			t.Errorf("%s: line %d, want %d", path, got[path], line)
		}
	}
	if _, ok := got["tenant.2"]; ok {
		t.Errorf("a [[tenant]] inside a string was counted: %v", got)
	}
}
