package acme

import (
	"context"
	"crypto/tls"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestChallengesWire(t *testing.T) {
	p, err := selfSigned("a.test")
	if err != nil {
		t.Fatal(err)
	}
	in := Challenges{HTTP: map[string]HTTPAnswer{"tok": {Host: "a.test", KeyAuth: "tok.x"}}, ALPN: map[string]PEMPair{"a.test": p}}
	out, err := DecodeChallenges(in.Encode())
	if err != nil || out.HTTP["tok"] != in.HTTP["tok"] || string(out.ALPN["a.test"].Cert) != string(p.Cert) {
		t.Fatalf("round trip: %+v, %v", out, err)
	}
	if _, err := DecodeChallenges([]byte(`{"version":99}`)); err == nil || !strings.Contains(err.Error(), "different binaries") {
		t.Errorf("another version: %v", err)
	}
}

// TestManagerStartsSelfSigned: with nothing stored, a tenant's names get
// self-signed certificates at once, without asking the CA (none runs).
func TestManagerStartsSelfSigned(t *testing.T) {
	m := New(slog.New(slog.DiscardHandler), func([]byte) func(context.Context) error { return nil })
	defer m.Close()
	err := m.Set([]Spec{{Tenant: "a", Hosts: []string{"a.test", "www.a.test"}, CA: "https://127.0.0.1:1/dir",
		Storage: t.TempDir(), Challenges: []string{TLSALPN01}, RenewCheck: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	pairs, err := m.Certs("a")
	if err != nil || len(pairs) != 2 {
		t.Fatalf("certs: %d, %v", len(pairs), err)
	}
	for i, name := range []string{"a.test", "www.a.test"} {
		c, err := tls.X509KeyPair(pairs[i].Cert, pairs[i].Key)
		if err != nil || c.Leaf.VerifyHostname(name) != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := m.Certs("b"); err == nil {
		t.Error("a tenant not managed has certificates")
	}
}
