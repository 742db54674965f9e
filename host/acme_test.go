package host

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"testing"
)

// TestRouterACMEChallenges: the host answers live ACME challenges itself
// (HTTP-01 on a plaintext listener, even a lone default tenant's, before
// routing; TLS-ALPN-01 in the handshake, closing after it); anything else,
// an unknown token or another host's, goes to the tenant.
func TestRouterACMEChallenges(t *testing.T) {
	site := selfSigned(t, "site.test")
	alpn := selfSigned(t, "site.test")
	s := &Tenant{Name: "s", Handler: newProbe(t, "s", Options{}), Hosts: []string{"site.test"}, Cert: &site}
	d := &Tenant{Name: "d", Handler: newProbe(t, "d", Options{})}
	r, err := NewRouter([]Listener{{Tenants: []*Tenant{s}}, {Tenants: []*Tenant{d}}}, RouterOptions{ACME: true})
	if err != nil {
		t.Fatal(err)
	}
	if r.lis[1].direct != nil {
		t.Fatal("with ACME, a lone default plaintext tenant must be routed")
	}
	r.SetChallenges(Challenges{
		HTTP: map[string]HTTPChallenge{"tok123": {Host: "site.test", KeyAuth: "tok123.thumb"}},
		ALPN: map[string]*tls.Certificate{"site.test": &alpn},
	})

	// (The probe guest answers 404 "no such probe" to a path it lacks.)
	const guest404 = "no such probe\n"
	for _, tc := range []struct {
		host, path string
		code       int
		want       string
	}{
		{"Site.Test:80", "/.well-known/acme-challenge/tok123", 200, "tok123.thumb"},
		{"other.test", "/.well-known/acme-challenge/tok123", 404, guest404},
		{"site.test", "/.well-known/acme-challenge/unknown", 404, guest404},
		{"site.test", "/", 200, "tenant d\n"},
	} {
		c, _ := serveOne(t, r, 1)
		if code, body := roundTrip(t, bufio.NewReader(c), c, tc.host, tc.path); code != tc.code || body != tc.want {
			t.Errorf("GET %s (Host %s): %d %q, want %d %q", tc.path, tc.host, code, body, tc.code, tc.want)
		}
	}

	roots := x509.NewCertPool()
	roots.AddCert(site.Leaf)
	roots.AddCert(alpn.Leaf)
	hello := func(protos ...string) (*tls.Conn, chan struct{}) {
		c, done := serveOne(t, r, 0)
		tc := tls.Client(c, &tls.Config{ServerName: "site.test", RootCAs: roots, NextProtos: protos})
		if err := tc.Handshake(); err != nil {
			t.Fatalf("handshake offering %v: %v", protos, err)
		}
		return tc, done
	}
	tc, done := hello("acme-tls/1")
	if st := tc.ConnectionState(); st.NegotiatedProtocol != "acme-tls/1" || !st.PeerCertificates[0].Equal(alpn.Leaf) {
		t.Errorf("acme-tls/1: protocol %q, the challenge certificate: %v", st.NegotiatedProtocol, st.PeerCertificates[0].Equal(alpn.Leaf))
	}
	waitClosed(t, done) // the handshake was all of it
	tc, _ = hello("http/1.1")
	if !tc.ConnectionState().PeerCertificates[0].Equal(site.Leaf) {
		t.Error("an ordinary hello got the challenge certificate")
	}
	if code, body := roundTrip(t, bufio.NewReader(tc), tc, "site.test", "/"); code != 200 || body != "tenant s\n" {
		t.Errorf("ordinary request: %d %q", code, body)
	}

	// Challenges gone: acme-tls/1 is refused, the token goes to the tenant.
	r.SetChallenges(Challenges{})
	c, _ := serveOne(t, r, 0)
	if err := tls.Client(c, &tls.Config{ServerName: "site.test", RootCAs: roots, NextProtos: []string{"acme-tls/1"}}).Handshake(); err == nil {
		t.Error("acme-tls/1 with no live challenge: the handshake succeeded")
	}
	c, _ = serveOne(t, r, 1)
	if code, body := roundTrip(t, bufio.NewReader(c), c, "site.test", "/.well-known/acme-challenge/tok123"); code != 404 || body != guest404 {
		t.Errorf("a token no longer live: %d %q, want the tenant's", code, body)
	}
}
