package acme

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
)

// ChallengesVersion is the layout of Challenges on the wire.
const ChallengesVersion = 1

// ALPNProto is the ALPN protocol a CA's TLS-ALPN-01 validation offers
// (RFC 8737).
const ALPNProto = "acme-tls/1"

// Challenges are the ACME challenges live at one moment, as the master
// gives them to every worker: the whole set each time, replacing the last.
type Challenges struct {
	Version int `json:"version"`
	// HTTP answers HTTP-01: by token, the host it is for and the key
	// authorization to answer with.
	HTTP map[string]HTTPAnswer `json:"http,omitempty"`
	// ALPN answers TLS-ALPN-01: by host name, the challenge certificate
	// (PEM) to present to a hello offering ALPNProto.
	ALPN map[string]PEMPair `json:"alpn,omitempty"`
}

// HTTPAnswer is one HTTP-01 challenge: GET
// /.well-known/acme-challenge/TOKEN with Host Host is answered KeyAuth.
type HTTPAnswer struct {
	Host    string `json:"host"`
	KeyAuth string `json:"key_auth"`
}

// PEMPair is a certificate chain and its private key, PEM.
type PEMPair struct {
	Cert []byte `json:"cert"`
	Key  []byte `json:"key"`
}

// Encode is the form Challenges travel in to a worker.
func (c Challenges) Encode() []byte {
	c.Version = ChallengesVersion
	b, _ := json.Marshal(c) // strings and bytes: cannot fail
	return b
}

// DecodeChallenges reads what Encode wrote.
func DecodeChallenges(b []byte) (Challenges, error) {
	var c Challenges
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("acme challenges: %w", err)
	}
	if c.Version != ChallengesVersion {
		return c, fmt.Errorf("acme challenges of version %d, this binary reads %d: the master and its workers are different binaries", c.Version, ChallengesVersion)
	}
	return c, nil
}

// pairOf encodes a tls.Certificate as PEM.
func pairOf(c *tls.Certificate) (PEMPair, error) {
	var p PEMPair
	for _, der := range c.Certificate {
		p.Cert = append(p.Cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	der, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		return p, fmt.Errorf("encode key: %w", err)
	}
	p.Key = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	return p, nil
}
