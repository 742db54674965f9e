package main

// The master's wiring of ACME certificates (internal/acme): the manager
// made from a configuration's tenants, its certificates in the workers'
// configurations, its challenges given to every worker, and a renewal
// handed to the workers by a reload of the groups concerned.

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"

	"github.com/wcluster/wcluster/config"
	"github.com/wcluster/wcluster/dispatch"
	"github.com/wcluster/wcluster/host"
	"github.com/wcluster/wcluster/internal/acme"
)

// acmeSpecs are the ACME tenants of c, for the manager.
func acmeSpecs(c *config.Config) ([]acme.Spec, error) {
	var specs []acme.Spec
	for _, t := range c.Tenants {
		a := t.ACME
		if a == nil {
			continue
		}
		s := acme.Spec{Tenant: t.Name, Hosts: t.Hosts, CA: a.CA, Email: a.Email, Storage: a.Storage,
			Challenges: a.Challenges, RenewCheck: a.RenewCheck, RenewWindow: a.RenewWindow}
		if a.CARoot != "" {
			var err error
			if s.CARoot, err = os.ReadFile(a.CARoot); err != nil {
				return nil, fmt.Errorf("tenant %q: tls ca_root: %w", t.Name, err)
			}
		}
		specs = append(specs, s)
	}
	return specs, nil
}

// useACME makes c's ACME tenants the manager's and has c's worker
// configurations take their certificates from it.
func useACME(mgr *acme.Manager, c *config.Config) error {
	specs, err := acmeSpecs(c)
	if err != nil {
		return err
	}
	if err := mgr.Set(specs); err != nil {
		return err
	}
	c.ACMECerts = acmeCerts(mgr)
	return nil
}

// acmeCerts gives config the manager's certificates of a tenant.
func acmeCerts(mgr *acme.Manager) func(string) ([]config.KeyPairPEM, error) {
	return func(tenant string) ([]config.KeyPairPEM, error) {
		pairs, err := mgr.Certs(tenant)
		return toKeyPairs(pairs), err
	}
}

func toKeyPairs(pairs []acme.PEMPair) []config.KeyPairPEM {
	out := make([]config.KeyPairPEM, len(pairs))
	for i, p := range pairs {
		out[i] = config.KeyPairPEM{Cert: p.Cert, Key: p.Key}
	}
	return out
}

// giveChallenges gives every worker of every group the live challenges
// (an HTTP-01 validation may come on any plaintext listener), and returns
// a wait until all answer them.
func giveChallenges(cl *dispatch.Cluster, b []byte) func(context.Context) error {
	groups := cl.Groups()
	gens := make([]uint64, len(groups))
	for i, g := range groups {
		gens[i] = g.SetChallenges(b)
	}
	return func(ctx context.Context) error {
		for i, g := range groups {
			if err := g.WaitChallenges(ctx, gens[i]); err != nil {
				return err
			}
		}
		return nil
	}
}

// renewACME hands the workers the manager's current certificates: the
// groups with an ACME tenant get their last worker configuration with
// those certificates in it, through a rolling reload (no connection is
// refused). configs (the last worker configuration of each group) is
// updated; nothing else is re-read from disk.
func renewACME(ctx context.Context, cl *dispatch.Cluster, mgr *acme.Manager, configs map[string][]byte, log *slog.Logger) error {
	selfSigned := 0 // of the names in what the workers get
	certs := func(tenant string) ([]config.KeyPairPEM, error) {
		pairs, n, err := mgr.CertsCounted(tenant)
		selfSigned += n
		return toKeyPairs(pairs), err
	}
	next := map[string][]byte{}
	for name, wc := range configs {
		b, changed, err := config.WithACMECerts(wc, certs)
		if err != nil {
			return err
		}
		if changed {
			next[name] = b
		}
	}
	if len(next) == 0 {
		return nil
	}
	log.Info("acme: giving the workers their new certificates (reloading their groups)", "groups", len(next))
	if err := cl.Reload(ctx, next); err != nil {
		return err
	}
	for name, b := range next {
		configs[name] = b
		// The expiry metrics follow what the workers serve.
		if certs, err := config.Certificates(b); err == nil {
			if grp, err := cl.Group(name); err == nil {
				grp.SetCertificates(certs)
			}
		}
	}
	log.Info("acme: the workers serve the new certificates", "self_signed", selfSigned)
	return nil
}

// acmeChallenges reads, in a worker, the challenges the master gave.
func acmeChallenges(b []byte) (host.Challenges, error) {
	c, err := acme.DecodeChallenges(b)
	if err != nil {
		return host.Challenges{}, err
	}
	hc := host.Challenges{HTTP: map[string]host.HTTPChallenge{}, ALPN: map[string]*tls.Certificate{}}
	for token, a := range c.HTTP {
		hc.HTTP[token] = host.HTTPChallenge{Host: a.Host, KeyAuth: a.KeyAuth}
	}
	for name, p := range c.ALPN {
		cert, err := tls.X509KeyPair(p.Cert, p.Key)
		if err != nil {
			return host.Challenges{}, fmt.Errorf("acme challenge certificate of %s: %w", name, err)
		}
		hc.ALPN[name] = &cert
	}
	return hc, nil
}
