package config

// A tenant's certificate from an ACME CA: tls = { acme = true, ... }.

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/wcluster/wcluster/dispatch"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// ACME is what a tenant asks of its ACME CA; its hosts are the names.
type ACME struct {
	CA         string        `json:"ca"`
	Email      string        `json:"email,omitempty"`
	Storage    string        `json:"storage"`
	CARoot     string        `json:"ca_root,omitempty"` // PEM file of roots trusted for the CA's HTTPS
	Challenges []string      `json:"challenges"`
	RenewCheck time.Duration `json:"renew_check"`
	// RenewWindow: renew when this fraction of the lifetime is left.
	RenewWindow float64 `json:"renew_window"`
}

// KeyPairPEM is a certificate chain and its key, PEM.
type KeyPairPEM struct {
	Cert []byte `json:"cert"`
	Key  []byte `json:"key"`
}

const letsEncrypt = "https://acme-v02.api.letsencrypt.org/directory"

var acmeChallenges = []string{"tls-alpn-01", "http-01"}

// HasTLS reports whether the tenant serves TLS: with certificate files or
// from an ACME CA.
func (t *Tenant) HasTLS() bool { return t.TLSCert != "" || t.ACME != nil }

// defaultACMEDir is under the user's state directory, beside the
// key-value store: certificates and account keys are data to keep.
func defaultACMEDir() string {
	return filepath.Join(filepath.Dir(defaultKVDir()), "acme")
}

// readACME reads tls = { acme = true, ... } of tenant t.
func readACME(ts *section, t *Tenant) {
	if ts.has("cert") || ts.has("key") {
		ts.errorf("acme", "tls: cert/key and acme = true exclude each other: give files, or let the CA issue the certificate")
	}
	if len(t.Hosts) == 0 {
		ts.errorf("acme", "tls acme = true needs hosts = [\"...\"]: they are the names the certificate is asked for")
	}
	for _, h := range t.Hosts {
		switch {
		case strings.HasPrefix(h, "*."):
			ts.errorf("acme", "tls acme = true cannot get host %q: a wildcard needs the DNS-01 challenge, which wcluster does not answer; list the names, or use cert and key files", h)
		case net.ParseIP(h) != nil:
			ts.errorf("acme", "tls acme = true cannot get host %q: an IP address; list DNS names, or use cert and key files", h)
		}
	}
	a := &ACME{CA: ts.str("ca", letsEncrypt), Email: ts.str("email", ""), Storage: defaultACMEDir(),
		Challenges: acmeChallenges, RenewCheck: 10 * time.Minute, RenewWindow: 1.0 / 3}
	if u, err := url.Parse(a.CA); err != nil || u.Scheme != "https" || u.Host == "" {
		ts.errorf("ca", "tls ca = %q: give the https:// URL of the CA's ACME directory", a.CA)
	}
	if a.Email != "" && !strings.Contains(a.Email, "@") {
		ts.errorf("email", "tls email = %q is not an email address", a.Email)
	}
	if ts.has("storage") {
		if a.Storage = ts.path("storage"); a.Storage == "" {
			ts.errorf("storage", "tls storage is empty: give a directory to keep certificates and account keys in")
		}
	}
	if ts.has("ca_root") {
		a.CARoot = ts.path("ca_root")
		b, err := os.ReadFile(a.CARoot)
		if err != nil {
			ts.errorf("ca_root", "tls ca_root %s: %s: give a readable PEM file of the CA's root", a.CARoot, errText(err))
		} else if !x509.NewCertPool().AppendCertsFromPEM(b) {
			ts.errorf("ca_root", "tls ca_root %s holds no PEM certificate: give the root of the CA's HTTPS certificate", a.CARoot)
		}
	}
	if ts.has("challenges") {
		a.Challenges = ts.strings("challenges")
		if len(a.Challenges) == 0 {
			ts.errorf("challenges", "tls challenges is empty: allow \"tls-alpn-01\", \"http-01\" or both")
		}
		for _, c := range a.Challenges {
			if !slices.Contains(acmeChallenges, c) {
				ts.errorf("challenges", "tls challenges: %q is not one wcluster answers: use \"tls-alpn-01\" and/or \"http-01\"", c)
			}
		}
	}
	if a.RenewCheck = ts.duration("renew_check", a.RenewCheck); a.RenewCheck <= 0 {
		ts.errorf("renew_check", "tls renew_check must be above 0 (how often the certificates are checked for renewal)")
	}
	if v, ok := ts.values["renew_window"]; ok {
		f, isFloat := v.(float64)
		if !isFloat || f <= 0 || f >= 1 {
			ts.errorf("renew_window", "tls renew_window must be a number between 0 and 1 (the fraction of a certificate's lifetime left when it is renewed), not %v", v)
		} else {
			a.RenewWindow = f
		}
	}
	t.ACME = a
}

// acmeKeys are the tls keys of an ACME tenant.
var acmeKeys = []string{"acme", "ca", "email", "storage", "ca_root", "challenges", "renew_check", "renew_window"}

// acmeFiles puts ACME tenant t's current certificates, checked, in its
// Files.
func (c *Config) acmeFiles(t *Tenant) error {
	if c.ACMECerts == nil {
		return errors.New("tls acme: no certificate manager")
	}
	pairs, err := c.ACMECerts(t.Name)
	if err != nil {
		return err
	}
	if len(pairs) == 0 {
		return errors.New("tls acme: no certificate")
	}
	for _, p := range pairs {
		if _, err := tls.X509KeyPair(p.Cert, p.Key); err != nil {
			return fmt.Errorf("tls acme: %w", err)
		}
	}
	t.CertPEM, t.KeyPEM, t.ExtraCerts = pairs[0].Cert, pairs[0].Key, pairs[1:]
	return nil
}

// WithACMECerts is workerConfig (a group's, as Masters made it) with its
// ACME tenants' certificates from certs; changed says whether any differ.
// Nothing else is read again: a renewal changes the certificates only.
func WithACMECerts(workerConfig []byte, certs func(tenant string) ([]KeyPairPEM, error)) (b []byte, changed bool, err error) {
	var g Group
	if err := json.Unmarshal(workerConfig, &g); err != nil {
		return nil, false, err
	}
	c := &Config{ACMECerts: certs}
	for i := range g.Tenants {
		t := &g.Tenants[i]
		if t.ACME == nil {
			continue
		}
		before := t.Files
		if err := c.acmeFiles(t); err != nil {
			return nil, false, fmt.Errorf("tenant %q: %w", t.Name, err)
		}
		if !bytes.Equal(before.CertPEM, t.CertPEM) || !slices.EqualFunc(before.ExtraCerts, t.ExtraCerts, func(a, b KeyPairPEM) bool { return bytes.Equal(a.Cert, b.Cert) }) {
			changed = true
		}
	}
	if !changed {
		return workerConfig, false, nil
	}
	b, err = json.Marshal(&g)
	return b, true, err
}

// Certificates are the certificates a group's worker configuration
// carries, for status and metrics (after a renewal changed them).
func Certificates(workerConfig []byte) ([]dispatch.Certificate, error) {
	var g Group
	if err := json.Unmarshal(workerConfig, &g); err != nil {
		return nil, err
	}
	var out []dispatch.Certificate
	for _, t := range g.Tenants {
		out = append(out, t.Files.certificates(t.Name)...)
	}
	return out, nil
}
