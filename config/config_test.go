package config

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/wcluster/wcluster/internal/testfiles"
)

const wasmMagic = "\x00asm\x01\x00\x00\x00"

func load(path string) (*Config, error) { return Load(path, Default()) }

func TestLoadConfig(t *testing.T) {
	dir := testfiles.Dir(t, map[string]string{
		"a.wasm": wasmMagic, "wasm/b.wasm": wasmMagic, "c.wasm": wasmMagic,
		"data/readme": "hi",
		"wcluster.toml": `[cluster]
workers = 3
sched = "shared"
shutdown_timeout = "5s"
cache_dir = "cache"
log_level = "debug"

[[tenant]]
name = "a"
handler = "a.wasm"
listen = ["127.0.0.1:8080"]
hosts = ["A.example.com", "*.a.example.com"]
memory_limit = "64MiB"
timeout = "2s"
env = { TENANT = "a", MODE = "test" }
config = { name = "a" }
mount = "data"

[[tenant]]
name = "b"
handler = "wasm/b.wasm"
listen = ["127.0.0.1:8080"]
instance_mode = "fresh"
max_conns = 7

[[tenant]]
name = "c"
handler = "c.wasm"
listen = ["127.0.0.1:8443", "127.0.0.2:8443"]
hosts = ["c.example.com"]
tls = { cert = "certs/c-cert.pem", key = "certs/c-key.pem" }
group = "isolated"
workers = 1
`})
	os.Mkdir(filepath.Join(dir, "certs"), 0o755)
	testfiles.Cert(t, filepath.Join(dir, "certs"), "c-", "c.example.com")
	c, err := load(filepath.Join(dir, "wcluster.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Cluster.Workers != 3 || c.Cluster.Sched != "shared" || c.Cluster.ShutdownTimeout != 5*time.Second ||
		c.Cluster.CacheDir != filepath.Join(dir, "cache") || c.Cluster.LogLevel != "debug" || c.Cluster.Backlog != 511 {
		t.Errorf("cluster: %+v", c.Cluster)
	}
	if len(c.Groups) != 2 {
		t.Fatalf("groups: %+v", c.Groups)
	}
	def, iso := c.Groups[0], c.Groups[1]
	if def.Name != "default" || def.Workers != 3 || !reflect.DeepEqual(def.Addrs(), []string{"127.0.0.1:8080"}) ||
		!reflect.DeepEqual(def.Listeners[0].Tenants, []string{"a", "b"}) || def.Listeners[0].TLS {
		t.Errorf("default group: %+v", def)
	}
	if iso.Name != "isolated" || iso.Workers != 1 || !reflect.DeepEqual(iso.Addrs(), []string{"127.0.0.1:8443", "127.0.0.2:8443"}) ||
		!iso.Listeners[0].TLS || !iso.Listeners[1].TLS || len(iso.Tenants) != 1 {
		t.Errorf("isolated group: %+v", iso)
	}
	a, b := def.Tenants[0], def.Tenants[1]
	if a.Handler != filepath.Join(dir, "a.wasm") || !reflect.DeepEqual(a.Hosts, []string{"a.example.com", "*.a.example.com"}) ||
		a.MemoryLimit != 64<<20 || a.Timeout != 2*time.Second || a.ReadTimeout != 30*time.Second ||
		!reflect.DeepEqual(a.Env, []string{"MODE=test", "TENANT=a"}) || a.Config["name"] != "a" ||
		a.Mount != filepath.Join(dir, "data") || a.Instances != 64 || a.MinInstances != 2 || a.Fresh {
		t.Errorf("tenant a: %+v", a)
	}
	if b.Handler != filepath.Join(dir, "wasm/b.wasm") || !b.Fresh || b.MaxConns != 7 || b.Hosts != nil {
		t.Errorf("tenant b: %+v", b)
	}
	cp := iso.Tenants[0]
	if cp.TLSCert != filepath.Join(dir, "certs/c-cert.pem") || cp.TLSKey != filepath.Join(dir, "certs/c-key.pem") {
		t.Errorf("tenant c: %+v", cp)
	}
	// Each group knows the other groups' hosts, to answer them 421.
	if !reflect.DeepEqual(def.ForeignHosts, []string{"c.example.com"}) || !reflect.DeepEqual(iso.ForeignHosts, []string{"a.example.com", "*.a.example.com"}) {
		t.Errorf("foreign hosts: default %q, isolated %q", def.ForeignHosts, iso.ForeignHosts)
	}
	// The plan reaches workers as JSON.
	js, err := json.Marshal(iso)
	if err != nil {
		t.Fatal(err)
	}
	var back Group
	if err := json.Unmarshal(js, &back); err != nil || !reflect.DeepEqual(back.Listeners, iso.Listeners) || back.Tenants[0].TLSKey != cp.TLSKey {
		t.Errorf("JSON round trip: %v\n%+v", err, back)
	}
	if iso.Name != "isolated" || iso.Workers != 1 || len(iso.Addrs()) != 2 || c.Cluster.Sched != "shared" || c.Cluster.ShutdownTimeout != 5*time.Second {
		t.Errorf("group %+v, cluster %+v", iso, c.Cluster)
	}
}

// TestLoadConfigErrors: every problem is reported, each with its line.
func TestLoadConfigErrors(t *testing.T) {
	dir := testfiles.Dir(t, map[string]string{
		"ok.wasm": wasmMagic, "notwasm.wasm": "hello", "file": "x",
		"bad.toml": `[cluster]
workerz = 2
sched = "fastest"
queue_timeout = 10

[[tenant]]
name = "a"
handler = "missing.wasm"
listen = ["127.0.0.1:9000"]
memory_limit = "64 parsecs"
timeout = "soon"
instance_mode = "shared"
mount = "file"
env = { "BAD KEY" = "x", OK = 1 }

[[tenant]]
name = "a"
handler = "ok.wasm"
listen = ["127.0.0.1:9000"]

[[tenant]]
name = "b"
handler = "notwasm.wasm"
listen = ["127.0.0.1:9000", "nonsense"]
hosts = ["b.test"]
tls = { cert = "nocert.pem", key = "nokey.pem" }
group = "other"

[[tenant]]
handler = "ok.wasm"
listen = ["127.0.0.1:9001"]
hosts = ["c.test"]

[[tenant]]
name = "d"
handler = "ok.wasm"
listen = ["127.0.0.1:9001"]
hosts = ["C.test"]
instances = 2
instances_min = 5
mount = "nodir"
`})
	path := filepath.Join(dir, "bad.toml")
	_, err := load(path)
	if err == nil {
		t.Fatal("want errors")
	}
	msg := err.Error()
	t.Logf("errors:\n%s", msg)
	want := []string{
		`bad.toml:2: [cluster]: unknown key "workerz": did you mean "workers"?`,
		`bad.toml:3: [cluster]: sched = "fastest": use "rr", "shared" or "reuseport"`,
		`bad.toml:4: [cluster]: queue_timeout must be a duration string such as "30s"`,
		`bad.toml:8: tenant "a": handler ` + filepath.Join(dir, "missing.wasm") + `: no such file`,
		`bad.toml:10: tenant "a": memory_limit: size "64 parsecs": unknown unit`,
		`bad.toml:11: tenant "a": timeout = "soon" is not a duration`,
		`bad.toml:12: tenant "a": instance_mode = "shared": use "pooled" or "fresh"`,
		`bad.toml:13: tenant "a": mount ` + filepath.Join(dir, "file") + ` is not a directory`,
		`bad.toml:14: tenant "a": env key "BAD KEY" is not a variable name`,
		`bad.toml:14: tenant "a": env.OK must be a string, not an integer`,
		`bad.toml:17: tenant "a": the name is already used by the tenant at line 7`,
		`bad.toml:19: tenant "a": listen "127.0.0.1:9000": tenant "a" is already the default there`,
		`bad.toml:23: tenant "b": handler ` + filepath.Join(dir, "notwasm.wasm") + ` is not a WebAssembly module`,
		`bad.toml:24: tenant "b": listen "nonsense": not host:port`,
		`bad.toml:26: tenant "b": tls cert ` + filepath.Join(dir, "nocert.pem") + `: no such file or directory`,
		`bad.toml:26: tenant "b": tls key ` + filepath.Join(dir, "nokey.pem") + `: no such file or directory`,
		`bad.toml:27: tenant "b": shares listen "127.0.0.1:9000" with tenant "a", but is in group "other", not "default"`,
		`bad.toml:19: tenant "a": listen "127.0.0.1:9000" is a TLS listener (tenant "b" has tls), but this tenant has no certificate`,
		`bad.toml:29: tenant #4: no name`,
		`bad.toml:38: tenant "d": host "c.test" on listen "127.0.0.1:9001" is already claimed by tenant #4`,
		`bad.toml:40: tenant "d": instances_min = 5 is above instances = 2`,
		`bad.toml:41: tenant "d": mount ` + filepath.Join(dir, "nodir") + `: no such file or directory`,
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("errors lack %q", w)
		}
	}
	lines := strings.Split(msg, "\n")
	if len(lines) < len(want) {
		t.Errorf("%d errors, want at least %d", len(lines), len(want))
	}
	for _, l := range lines {
		if !strings.HasPrefix(l, path+":") {
			t.Errorf("error without file:line: %q", l)
		}
	}
}

func TestLoadConfigMore(t *testing.T) {
	dir := testfiles.Dir(t, map[string]string{"h.wasm": wasmMagic})
	testfiles.Cert(t, dir, "", "x.test")
	for _, c := range []struct{ name, src, want string }{
		{"syntax", "[cluster]\nworkers = \n", `:2: `},
		{"no tenants", "[cluster]\nworkers = 1\n", `no [[tenant]]`},
		{"cluster values", "[cluster]\nlog_format = \"xml\"\nadmin = \"nowhere\"\nmax_worker_memory = \"lots\"\n[[tenant]]\nname=\"a\"\nhandler=\"h.wasm\"\nlisten=[\":1\"]\n",
			`:2: [cluster]: log_format = "xml": use "text" or "json"`},
		{"unknown table", "[clusterr]\n[[tenant]]\nname=\"a\"\nhandler=\"h.wasm\"\nlisten=[\":1\"]\n", `:1: unknown table or key "clusterr": did you mean "cluster"?`},
		{"wrong cert", "[[tenant]]\nname = \"a\"\nhandler = \"h.wasm\"\nlisten = [\"127.0.0.1:1\"]\nhosts = [\"y.test\"]\ntls = { cert = \"cert.pem\", key = \"key.pem\" }\n",
			`:6: tenant "a": tls cert ` + filepath.Join(dir, "cert.pem") + ` does not cover host "y.test" (it names x.test)`},
		{"tls half", "[[tenant]]\nname = \"a\"\nhandler = \"h.wasm\"\nlisten = [\"127.0.0.1:1\"]\ntls = { cert = \"cert.pem\" }\n", `:5: tenant "a": tls needs both cert and key`},
		{"port overlap", "[[tenant]]\nname = \"a\"\nhandler = \"h.wasm\"\nlisten = [\":80\"]\n[[tenant]]\nname = \"b\"\nhandler = \"h.wasm\"\nlisten = [\"127.0.0.1:80\"]\nhosts=[\"b\"]\n",
			`:8: tenant "b": listen "127.0.0.1:80" and ":80" (of tenant "a") bind the same port 80`},
		{"port overlap wildcard after", "[[tenant]]\nname = \"a\"\nhandler = \"h.wasm\"\nlisten = [\"127.0.0.1:80\"]\n[[tenant]]\nname = \"b\"\nhandler = \"h.wasm\"\nlisten = [\"127.0.0.2:80\"]\n[[tenant]]\nname = \"c\"\nhandler = \"h.wasm\"\nlisten = [\"0.0.0.0:80\"]\n",
			`:12: tenant "c": listen "0.0.0.0:80" and "127.0.0.1:80" (of tenant "a") bind the same port 80`},
		{"group workers", "[[tenant]]\nname = \"a\"\nhandler = \"h.wasm\"\nlisten = [\":1\"]\ngroup = \"g\"\nworkers = 2\n[[tenant]]\nname = \"b\"\nhandler = \"h.wasm\"\nlisten = [\":2\"]\ngroup = \"g\"\nworkers = 3\n",
			`:12: tenant "b": workers = 3, but tenant "a" of the same group "g" says 2`},
		{"types", "[[tenant]]\nname = \"a\"\nhandler = \"h.wasm\"\nlisten = \"127.0.0.1:1\"\nhosts = [1]\nworkers = \"two\"\n",
			`:6: tenant "a": workers must be an integer, not a string`},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "-")+".toml")
			os.WriteFile(p, []byte(c.src), 0o644)
			_, err := load(p)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one containing %q", err, c.want)
			}
		})
	}
}

// TestConfigHTTPWasmKeys: a tenant's upstream and guest_config (a value, or
// @FILE relative to the config file) reach its handler options; bad ones
// are reported at their line.
func TestConfigHTTPWasmKeys(t *testing.T) {
	dir := testfiles.Dir(t, map[string]string{
		"a.wasm": wasmMagic, "secret.txt": "open sesame",
		"wcluster.toml": `[[tenant]]
name = "a"
handler = "a.wasm"
listen = ["127.0.0.1:8080"]
hosts = ["a.test"]
upstream = "http://127.0.0.1:9000"
guest_config = "@secret.txt"

[[tenant]]
name = "b"
handler = "a.wasm"
listen = ["127.0.0.1:8080"]
guest_config = "plain"
`})
	c, err := load(filepath.Join(dir, "wcluster.toml"))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Tenant{}
	for _, g := range c.Groups {
		for _, tp := range g.Tenants {
			got[tp.Name] = tp
		}
	}
	if a := got["a"]; a.Upstream != "http://127.0.0.1:9000" || string(a.GuestConfig) != "open sesame" {
		t.Errorf("tenant a: upstream %q guest_config %q", a.Upstream, a.GuestConfig)
	}
	if b := got["b"]; b.Upstream != "" || string(b.GuestConfig) != "plain" {
		t.Errorf("tenant b: upstream %q guest_config %q", b.Upstream, b.GuestConfig)
	}

	bad := testfiles.Dir(t, map[string]string{"a.wasm": wasmMagic, "bad.toml": `[[tenant]]
name = "a"
handler = "a.wasm"
listen = ["127.0.0.1:8080"]
upstream = "127.0.0.1:9000"
guest_config = "@missing"
`})
	_, err = load(filepath.Join(bad, "bad.toml"))
	if err == nil {
		t.Fatal("want errors")
	}
	for _, want := range []string{`bad.toml:5: tenant "a": upstream: "127.0.0.1:9000" is not an http:// or https:// URL`,
		`bad.toml:6: tenant "a": guest_config: ` + filepath.Join(bad, "missing") + `: no such file`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("errors lack %q:\n%v", want, err)
		}
	}
}
