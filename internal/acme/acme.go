// Package acme owns the certificates wcluster's master obtains and renews
// from an ACME CA for the tenants that ask (tls = { acme = true }): their
// management by certmagic (storage, schedule, retries), an issuer speaking
// ACME through acmez whose challenge solvers hand the challenges to the
// workers (the worker answers them; it never talks to the CA), and the
// encoding of those challenges on the master→worker channel.
package acme

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"math/big"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
)

// LetsEncrypt is the default CA: Let's Encrypt's production directory.
const LetsEncrypt = certmagic.LetsEncryptProductionCA

// Challenge types a tenant may allow.
const (
	TLSALPN01 = "tls-alpn-01"
	HTTP01    = "http-01"
)

// Spec is what one tenant asks of its CA.
type Spec struct {
	Tenant     string
	Hosts      []string // the names, one certificate each
	CA         string   // directory URL
	Email      string   // the account's contact ("": none)
	Storage    string   // directory of certificates and account keys
	CARoot     []byte   // PEM roots trusted for the CA's own HTTPS (nil: the system's)
	Challenges []string // TLSALPN01, HTTP01
	RenewCheck time.Duration
	// RenewWindow: renew when this fraction of the lifetime is left
	// (0: certmagic's third).
	RenewWindow float64
}

func (s *Spec) same(o *Spec) bool {
	return s.Tenant == o.Tenant && slices.Equal(s.Hosts, o.Hosts) && s.CA == o.CA && s.Email == o.Email &&
		s.Storage == o.Storage && bytes.Equal(s.CARoot, o.CARoot) && slices.Equal(s.Challenges, o.Challenges) &&
		s.RenewCheck == o.RenewCheck && s.RenewWindow == o.RenewWindow
}

// Manager holds every ACME tenant's certificates in the master. The
// certificates are PEM bytes, given to workers as file certificates are;
// Changed signals that one was obtained or renewed, and the owner then
// hands the new bytes to the workers (a reload of the groups concerned).
type Manager struct {
	log     *slog.Logger
	give    func([]byte) (wait func(context.Context) error)
	changed chan struct{}

	mu      sync.Mutex
	base    context.Context // the first Start's: every management's
	tenants map[string]*managed
	http    map[string]HTTPAnswer
	alpn    map[string]PEMPair
	wait    func(context.Context) error // until the workers answer the last given
}

// managed is one tenant's management.
type managed struct {
	spec   Spec
	magic  *certmagic.Config
	cache  *certmagic.Cache
	issuer *issuer
	pairs  map[string]PEMPair // by host: from the CA (now or stored before)
	temp   map[string]PEMPair // by host: self-signed, served until the CA's comes
	cancel context.CancelFunc // nil until Start
}

// New returns a Manager; give is given the live challenges
// (Challenges.Encode) each time they change, must not block, and returns
// a wait until every worker answers them.
func New(log *slog.Logger, give func([]byte) (wait func(context.Context) error)) *Manager {
	return &Manager{log: log, give: give, changed: make(chan struct{}, 1),
		tenants: map[string]*managed{}, http: map[string]HTTPAnswer{}, alpn: map[string]PEMPair{}}
}

// Changed receives after a certificate was obtained or renewed.
func (m *Manager) Changed() <-chan struct{} { return m.changed }

// Set makes specs the tenants managed: a tenant new or changed starts with
// its stored certificates where they are valid (no request to the CA),
// else self-signed ones; a tenant gone stops. Nothing is asked of a CA
// before Start.
func (m *Manager) Set(specs []Spec) error {
	// Stopped after unlocking: a renewal in progress reports to onEvent,
	// which takes m.mu, and stop waits for it.
	var stopped []*managed
	defer func() {
		for _, t := range stopped {
			t.stop()
		}
	}()
	m.mu.Lock()
	defer m.mu.Unlock()
	keep := map[string]bool{}
	for i := range specs {
		s := specs[i]
		keep[s.Tenant] = true
		if t := m.tenants[s.Tenant]; t != nil && t.spec.same(&s) {
			continue
		}
		t, err := m.newManaged(s)
		if err != nil {
			return fmt.Errorf("tenant %q: acme: %w", s.Tenant, err)
		}
		if old := m.tenants[s.Tenant]; old != nil {
			stopped = append(stopped, old)
		}
		m.tenants[s.Tenant] = t
	}
	for name, t := range m.tenants {
		if !keep[name] {
			stopped = append(stopped, t)
			delete(m.tenants, name)
		}
	}
	return nil
}

// Start begins management of every tenant not yet started: certificates
// missing or due for renewal are obtained in the background (the workers
// must be serving: they answer the challenges), and renewed on
// certmagic's schedule until the first Start's ctx ends or Close.
func (m *Manager) Start(ctx context.Context) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.base == nil {
		m.base = ctx
	}
	m.startLocked()
}

// Resume starts the tenants Set added since, if Start was called (else
// the first Start will).
func (m *Manager) Resume() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.base != nil {
		m.startLocked()
	}
}

func (m *Manager) startLocked() {
	for _, t := range m.tenants {
		if t.cancel != nil {
			continue
		}
		var tctx context.Context
		tctx, t.cancel = context.WithCancel(m.base)
		if err := t.magic.ManageAsync(tctx, t.spec.Hosts); err != nil {
			m.log.Error("acme: cannot manage certificates", "tenant", t.spec.Tenant, "err", err)
		}
	}
}

// Close stops every tenant's management.
func (m *Manager) Close() {
	m.mu.Lock()
	tenants := m.tenants
	m.tenants = map[string]*managed{}
	m.mu.Unlock()
	for _, t := range tenants {
		t.stop()
	}
}

// Certs are tenant's certificates, one per host in its order: the CA's
// where obtained, else the self-signed one standing in.
func (m *Manager) Certs(tenant string) ([]PEMPair, error) {
	pairs, _, err := m.CertsCounted(tenant)
	return pairs, err
}

// CertsCounted is Certs, and how many of them are self-signed.
func (m *Manager) CertsCounted(tenant string) (pairs []PEMPair, selfSigned int, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.tenants[tenant]
	if t == nil {
		return nil, 0, fmt.Errorf("tenant %q: no ACME certificate managed", tenant)
	}
	pairs = make([]PEMPair, 0, len(t.spec.Hosts))
	for _, h := range t.spec.Hosts {
		p, ok := t.pairs[h]
		if !ok {
			p = t.temp[h]
			selfSigned++
		}
		pairs = append(pairs, p)
	}
	return pairs, selfSigned, nil
}

func (t *managed) stop() {
	if t.cancel != nil {
		t.cancel()
	}
	t.cache.Stop()
}

func (m *Manager) newManaged(s Spec) (*managed, error) {
	u, err := url.Parse(s.CA)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("ca %q is not a URL", s.CA)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if len(s.CARoot) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(s.CARoot) {
			return nil, errors.New("ca_root holds no PEM certificate")
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	t := &managed{spec: s, pairs: map[string]PEMPair{}, temp: map[string]PEMPair{}}
	storage := &certmagic.FileStorage{Path: s.Storage}
	t.issuer = &issuer{
		ca: s.CA, email: s.Email, storage: storage, key: certmagic.StorageKeys.Safe(u.Host + u.Path),
		http: &http.Client{Transport: tr, Timeout: 30 * time.Second}, solvers: m.solvers(s.Challenges),
	}
	t.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert:   func(certmagic.Certificate) (*certmagic.Config, error) { return t.magic, nil },
		RenewCheckInterval: s.RenewCheck,
		Logger:             zapToSlog(m.log.With("tenant", s.Tenant)),
	})
	t.magic = certmagic.New(t.cache, certmagic.Config{
		Storage:            storage,
		Issuers:            []certmagic.Issuer{t.issuer},
		RenewalWindowRatio: s.RenewWindow,
		DisableARI:         true, // the issuer asks for no renewal info
		OCSP:               certmagic.OCSPConfig{DisableStapling: true},
		Logger:             zapToSlog(m.log.With("tenant", s.Tenant)), // errors; the rest by onEvent
		OnEvent: func(ctx context.Context, event string, data map[string]any) error {
			m.onEvent(ctx, t, event, data)
			return nil
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, h := range s.Hosts {
		p, err := t.stored(ctx, h)
		if err == nil {
			t.pairs[h] = p
			continue
		}
		if !errors.Is(err, fs.ErrNotExist) {
			m.log.Warn("acme: stored certificate unusable; a new one will be obtained", "tenant", s.Tenant, "host", h, "err", err)
		}
		if t.temp[h], err = selfSigned(h); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// stored is host's certificate in storage, if it is there and valid now.
func (t *managed) stored(ctx context.Context, host string) (PEMPair, error) {
	return t.load(ctx, certmagic.StorageKeys.SiteCert(t.issuer.key, host), certmagic.StorageKeys.SitePrivateKey(t.issuer.key, host))
}

func (t *managed) load(ctx context.Context, certKey, keyKey string) (PEMPair, error) {
	var p PEMPair
	var err error
	if p.Cert, err = t.magic.Storage.Load(ctx, certKey); err != nil {
		return p, err
	}
	if p.Key, err = t.magic.Storage.Load(ctx, keyKey); err != nil {
		return p, err
	}
	c, err := tls.X509KeyPair(p.Cert, p.Key)
	if err != nil {
		return p, err
	}
	if time.Now().After(c.Leaf.NotAfter) {
		return p, fmt.Errorf("expired on %s", c.Leaf.NotAfter.Format(time.RFC3339))
	}
	return p, nil
}

// onEvent logs certmagic's events, and takes a certificate obtained or
// renewed from storage, where certmagic has just saved it.
func (m *Manager) onEvent(ctx context.Context, t *managed, event string, data map[string]any) {
	host, _ := data["identifier"].(string)
	renewal, _ := data["renewal"].(bool)
	log := m.log.With("tenant", t.spec.Tenant, "host", host)
	switch event {
	case "cert_obtaining":
		log.Info("acme: obtaining a certificate", "renewal", renewal, "ca", t.spec.CA)
	case "cert_failed":
		if renewal {
			log.Error("acme: renewal failed; the current certificate keeps serving, and it is retried", "err", data["error"])
		} else {
			log.Error("acme: no certificate obtained; the self-signed one keeps serving, and it is retried", "err", data["error"])
		}
	case "cert_obtained":
		certKey, _ := data["certificate_path"].(string)
		keyKey, _ := data["private_key_path"].(string)
		p, err := t.load(ctx, certKey, keyKey)
		if err != nil {
			log.Error("acme: certificate obtained but unreadable from storage; the current one keeps serving", "err", err)
			return
		}
		c, _ := tls.X509KeyPair(p.Cert, p.Key)
		log.Info("acme: certificate obtained", "renewal", renewal, "not_after", c.Leaf.NotAfter.Format(time.RFC3339))
		m.mu.Lock()
		if m.tenants[t.spec.Tenant] == t {
			t.pairs[host] = p
		}
		m.mu.Unlock()
		select {
		case m.changed <- struct{}{}:
		default: // a signal is pending: it covers this one
		}
	}
}

// selfSigned is the certificate a tenant serves until the CA's arrives:
// clients refuse it, but the listener works, and the CA's TLS-ALPN-01
// validation reaches the host.
func selfSigned(host string) (PEMPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return PEMPair{}, err
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: host, Organization: []string{"wcluster (waiting for the ACME CA)"}},
		DNSNames: []string{host}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(7 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return PEMPair{}, fmt.Errorf("self-signed certificate: %w", err)
	}
	return pairOf(&tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key})
}

// pushLocked gives the workers the live challenges; m.mu is held.
func (m *Manager) pushLocked() {
	c := Challenges{HTTP: maps.Clone(m.http), ALPN: maps.Clone(m.alpn)}
	m.wait = m.give(c.Encode())
}
