package config

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/wcluster/wcluster/internal/testfiles"
)

// TestACMEConfig: tls acme keys are read with their defaults, and each
// misuse is refused with one line naming its place.
func TestACMEConfig(t *testing.T) {
	dir := testfiles.Dir(t, map[string]string{"a.wasm": wasmMagic, "wcluster.toml": `
[[tenant]]
name = "a"
handler = "a.wasm"
listen = ["127.0.0.1:8443"]
hosts = ["a.example.com", "www.a.example.com"]
tls = { acme = true, email = "ops@example.com", storage = "acme", challenges = ["http-01"] }
`})
	c, err := load(filepath.Join(dir, "wcluster.toml"))
	if err != nil {
		t.Fatal(err)
	}
	a := c.Tenants[0].ACME
	if a == nil || a.CA != letsEncrypt || a.Storage != filepath.Join(dir, "acme") || a.Email != "ops@example.com" ||
		strings.Join(a.Challenges, ",") != "http-01" || a.RenewCheck <= 0 || a.RenewWindow != 1.0/3 || !c.Groups[0].Listeners[0].TLS || !c.Groups[0].ACME {
		t.Fatalf("read %+v (listener %+v)", a, c.Groups[0].Listeners[0])
	}

	for _, tc := range []struct{ name, tenant, want string }{
		{"no hosts", `listen = ["127.0.0.1:1"]
tls = { acme = true }`, `:6: tenant "a": tls acme = true needs hosts`},
		{"wildcard", `listen = ["127.0.0.1:1"]
hosts = ["*.example.com"]
tls = { acme = true }`, `:7: tenant "a": tls acme = true cannot get host "*.example.com": a wildcard needs the DNS-01 challenge`},
		{"files too", `listen = ["127.0.0.1:1"]
hosts = ["a.example.com"]
tls = { acme = true, cert = "c.pem", key = "k.pem" }`, `:7: tenant "a": tls: cert/key and acme = true exclude each other`},
		{"acme key without acme", `listen = ["127.0.0.1:1"]
hosts = ["a.example.com"]
tls = { cert = "c.pem", key = "k.pem", email = "x@y" }`, `:7: tenant "a": tls email is for a certificate from an ACME CA`},
		{"plain ca", `listen = ["127.0.0.1:1"]
hosts = ["a.example.com"]
tls = { acme = true, ca = "http://ca.example/dir" }`, `:7: tenant "a": tls ca = "http://ca.example/dir": give the https:// URL`},
		{"unknown challenge", `listen = ["127.0.0.1:1"]
hosts = ["a.example.com"]
tls = { acme = true, challenges = ["dns-01"] }`, `:7: tenant "a": tls challenges: "dns-01" is not one wcluster answers`},
		{"plaintext neighbour", `listen = ["127.0.0.1:1"]
hosts = ["a.example.com"]
tls = { acme = true }

[[tenant]]
name = "b"
handler = "a.wasm"
listen = ["127.0.0.1:1"]`, `:12: tenant "b": listen "127.0.0.1:1" is a TLS listener (tenant "a" has tls)`},
	} {
		dir := testfiles.Dir(t, map[string]string{"a.wasm": wasmMagic, "bad.toml": `
[[tenant]]
name = "a"
handler = "a.wasm"
` + tc.tenant + "\n"})
		_, err := load(filepath.Join(dir, "bad.toml"))
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Count(err.Error(), "\n") != 0 {
			t.Errorf("%s: got %v, want one line containing %q", tc.name, err, tc.want)
		}
	}
}
