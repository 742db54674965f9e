package acme

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"path"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"
)

// issuer is a certmagic.Issuer speaking ACME through acmez with solvers of
// its own: the master holds the listening sockets but serves no
// connection, so certmagic's built-in solvers (which bind the challenge
// ports, or assume whoever holds them answers) do not fit; these hand
// each challenge to the workers, which answer it.
type issuer struct {
	ca, email string
	key       string // IssuerKey: the CA's directory, made safe for storage
	storage   certmagic.Storage
	http      *http.Client
	solvers   map[string]acmez.Solver
}

func (i *issuer) IssuerKey() string { return i.key }

// Issue obtains a certificate for csr: the account (its key made and
// stored on first use), an order, its challenges answered by the workers.
func (i *issuer) Issue(ctx context.Context, csr *x509.CertificateRequest) (*certmagic.IssuedCertificate, error) {
	client := &acmez.Client{Client: &acme.Client{Directory: i.ca, HTTPClient: i.http}, ChallengeSolvers: i.solvers}
	account, err := i.account(ctx, client.Client)
	if err != nil {
		return nil, err
	}
	params, err := acmez.OrderParametersFromCSR(account, csr)
	if err != nil {
		return nil, err
	}
	certs, err := client.ObtainCertificate(ctx, params)
	if err != nil {
		return nil, err
	}
	if len(certs) == 0 {
		return nil, errors.New("the CA returned no certificate")
	}
	return &certmagic.IssuedCertificate{Certificate: certs[0].ChainPEM}, nil
}

// account is the ACME account of the stored key (made on first use): a
// newAccount request with a known key returns its account (RFC 8555
// §7.3.1). Asking for it agrees to the CA's terms of service.
func (i *issuer) account(ctx context.Context, c *acme.Client) (acme.Account, error) {
	name := i.email
	if name == "" {
		name = "default"
	}
	keyPath := path.Join("acme", i.key, "accounts", certmagic.StorageKeys.Safe(name)+".key")
	var key crypto.Signer
	b, err := i.storage.Load(ctx, keyPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return acme.Account{}, err
		}
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			return acme.Account{}, err
		}
		if err := i.storage.Store(ctx, keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})); err != nil {
			return acme.Account{}, fmt.Errorf("store the account key: %w", err)
		}
		key = k
	case err != nil:
		return acme.Account{}, fmt.Errorf("account key: %w", err)
	default:
		blk, _ := pem.Decode(b)
		if blk == nil {
			return acme.Account{}, fmt.Errorf("account key %s: not PEM", keyPath)
		}
		k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
		if err != nil {
			return acme.Account{}, fmt.Errorf("account key %s: %w", keyPath, err)
		}
		signer, ok := k.(crypto.Signer)
		if !ok {
			return acme.Account{}, fmt.Errorf("account key %s: not a signing key", keyPath)
		}
		key = signer
	}
	a := acme.Account{TermsOfServiceAgreed: true, PrivateKey: key}
	if i.email != "" {
		a.Contact = []string{"mailto:" + i.email}
	}
	a, err = c.NewAccount(ctx, a)
	if err != nil {
		return a, fmt.Errorf("account at %s: %w", i.ca, err)
	}
	return a, nil
}

// solvers are the challenge solvers of the allowed types.
func (m *Manager) solvers(types []string) map[string]acmez.Solver {
	s := map[string]acmez.Solver{}
	for _, t := range types {
		s[t] = solver{m: m, typ: t}
	}
	return s
}

// solver presents a challenge by giving it to every worker (through
// onChallenges) and cleans up by taking it back.
type solver struct {
	m   *Manager
	typ string
}

func (s solver) Present(_ context.Context, chal acme.Challenge) error {
	var pair PEMPair
	if s.typ == TLSALPN01 {
		cert, err := acmez.TLSALPN01ChallengeCert(chal)
		if err != nil {
			return err
		}
		if pair, err = pairOf(cert); err != nil {
			return err
		}
	}
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	if s.typ == TLSALPN01 {
		s.m.alpn[chal.Identifier.Value] = pair
	} else {
		s.m.http[chal.Token] = HTTPAnswer{Host: chal.Identifier.Value, KeyAuth: chal.KeyAuthorization}
	}
	s.m.pushLocked()
	return nil
}

// Wait holds the CA's validation until every worker answers the
// challenge (bounded: a worker that does not confirm is logged, and the
// CA asked anyway; a failed validation is retried).
func (s solver) Wait(ctx context.Context, chal acme.Challenge) error {
	s.m.mu.Lock()
	wait := s.m.wait
	s.m.mu.Unlock()
	if wait == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := wait(ctx); err != nil {
		s.m.log.Warn("acme: not every worker confirmed the challenge; asking the CA to validate anyway", "host", chal.Identifier.Value, "err", err)
	}
	return nil
}

func (s solver) CleanUp(_ context.Context, chal acme.Challenge) error {
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	if s.typ == TLSALPN01 {
		delete(s.m.alpn, chal.Identifier.Value)
	} else {
		delete(s.m.http, chal.Token)
	}
	s.m.pushLocked()
	return nil
}
