package host

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Tenant is one handler a Router serves, and the names it answers to.
type Tenant struct {
	// Name names it in logs and Stats; unique within a Router.
	Name    string
	Handler *Handler
	// Hosts are the names it answers to on a shared listener: the HTTP Host
	// header (port stripped) or, on a TLS listener, the client's SNI.
	// Compared case-insensitively; "*.example.com" matches every name ending
	// in ".example.com". None: the tenant is the default of its listeners,
	// serving what no other tenant there claims.
	Hosts []string
	// Cert is its certificate. A listener with any tenant holding one is a
	// TLS listener, and every tenant on it must hold one.
	Cert *tls.Certificate
	// MoreCerts are certificates of its other names (an ACME tenant has
	// one per host); a handshake picks the one its SNI fits.
	MoreCerts []tls.Certificate
	// MaxConns caps the connections it holds at once in this worker; past
	// it new ones are refused (a 503 when the listener routes HTTP, else
	// closed). 0: no cap.
	MaxConns int
	// TicketKeys encrypt its TLS session tickets, the first the current
	// one (see SetTicketKeys). The master gives every worker the same, so
	// a session resumes on any of them; none: a key of this Router's own.
	TicketKeys [][32]byte
}

// Listener is one listening socket of a worker group: the tenants that
// share it. A tenant may be on several listeners.
type Listener struct {
	Tenants []*Tenant
}

// RouterOptions tune a Router; zero values take the defaults.
type RouterOptions struct {
	// RouteTimeout bounds the wait for a request head on a routed listener:
	// a new connection's first one, and the rest of one begun (default 10s).
	RouteTimeout time.Duration
	// HandshakeTimeout bounds a TLS handshake (default 10s).
	HandshakeTimeout time.Duration
	// Handshakes bounds the TLS handshakes computing at once (from the
	// client's hello to the server's answer), so that a flood of them
	// leaves processors to established connections; the rest wait,
	// within HandshakeTimeout. Default: half of GOMAXPROCS, at least 1,
	// following GOMAXPROCS when it changes (the worker's share of the
	// CPUs, when the group is scaled).
	Handshakes int
	// Logger receives misdirected requests and failed handshakes.
	Logger *slog.Logger
	// ForeignHosts are host names (as Tenant.Hosts, "*.x" too) that tenants
	// of other worker groups serve: a request naming one is answered 421,
	// never given to a default tenant here.
	ForeignHosts []string
	// ACME routes every plaintext listener (none is given straight to a
	// lone default tenant), so the host can answer the HTTP-01 challenges
	// of SetChallenges before a guest sees the request.
	ACME bool
}

// Challenges are the ACME challenges live for the master's certificates,
// answered by the host, never by a guest.
type Challenges struct {
	// HTTP: GET /.well-known/acme-challenge/TOKEN on a plaintext listener,
	// by token.
	HTTP map[string]HTTPChallenge
	// ALPN: a TLS hello offering ALPN "acme-tls/1" for a name gets that
	// name's challenge certificate, and the connection ends there.
	ALPN map[string]*tls.Certificate
}

// HTTPChallenge is one HTTP-01 answer: KeyAuth, to a request naming Host.
type HTTPChallenge struct {
	Host    string
	KeyAuth string
}

// Router serves the connections of a worker group's listeners, each
// request with the handler of the tenant it is for.
//
// A listener whose only tenant is its default, without TLS, is not routed
// at all: its connections go straight to that tenant's Handler. On any
// other plaintext listener every request is routed by its own Host (or the
// authority of an absolute-form target): the Router reads the request's
// head (at most 8 KiB, within RouteTimeout), parses it strictly, and hands
// the connection to the tenant claiming that host, else the listener's
// default. When that tenant's guest returns Keep having read the whole
// request, the next request's head is read and routed the same way, so a
// kept-alive connection moves between the tenants its requests name (each
// stay counted by that tenant: its instances, limits, stats, max_conns).
// A guest is only ever given the bytes of its own request: the host follows
// Content-Length and chunked framing and holds back what follows.
//
// Answers the Router gives itself, each a complete response with
// "Connection: close" before it closes the connection: 400 for a head
// parsed differently by different readers (see parseHead), 431 for a head
// over 8 KiB, 421 Misdirected Request for a host no tenant here serves (or
// one of another worker group's: ForeignHosts), 408 for a head unfinished
// at RouteTimeout, 503 for a tenant at its MaxConns.
//
// A TLS listener completes the handshake with the certificate of the
// tenant the SNI names (else the default's; with neither the handshake
// fails) and serves the plaintext with that tenant. If the listener is
// more than one lone default tenant, it serves HTTP/1 and every request's
// Host is checked too: one that another tenant claims (or another worker
// group) gets 421, as RFC 9110 describes for a reused connection.
type Router struct {
	lis     []routeTable
	tenants []*tenantState
	log     *slog.Logger
	opts    RouterOptions
	foreign hostSet // names of other groups' tenants
	// handshakes holds a slot per TLS handshake computing (see hsConn).
	handshakes *slots
	challenges atomic.Pointer[Challenges]

	misdirected, malformed, tlsFailures atomic.Uint64
}

// hostSet is a set of host names: exact, and "*.x" wildcards (by "x").
type hostSet struct {
	exact, wild map[string]bool
}

// routeTable is one listener's routing.
type routeTable struct {
	direct *tenantState // the single default tenant of a plaintext listener
	exact  map[string]*tenantState
	wild   map[string]*tenantState // "example.com" for "*.example.com"
	def    *tenantState
	tls    *tls.Config // nil for plaintext
	// checkHost: each request's Host is checked against the SNI's tenant
	// (a TLS listener that is not one lone default tenant).
	checkHost bool
}

type tenantState struct {
	*Tenant
	tls     *tls.Config // its own, with its own session ticket key
	open    atomic.Int64
	refused atomic.Uint64
}

// NewRouter checks the listeners' tenants fit together (unique names, one
// default and no host claimed twice per listener, a certificate for every
// tenant of a TLS listener) and builds the routing. listeners are indexed
// as ServeConn's listener argument.
func NewRouter(listeners []Listener, o RouterOptions) (*Router, error) {
	if o.RouteTimeout <= 0 {
		o.RouteTimeout = 10 * time.Second
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = 10 * time.Second
	}
	size := func() int { return o.Handshakes }
	if o.Handshakes <= 0 {
		size = func() int { return max(1, runtime.GOMAXPROCS(0)/2) }
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	r := &Router{log: o.Logger, opts: o, foreign: hostSet{exact: map[string]bool{}, wild: map[string]bool{}},
		handshakes: &slots{size: size}}
	states := map[*Tenant]*tenantState{}
	names := map[string]*Tenant{}
	var errs []error
	for i, l := range listeners {
		rt := routeTable{exact: map[string]*tenantState{}, wild: map[string]*tenantState{}}
		secure := false
		for _, t := range l.Tenants {
			if t.Cert != nil {
				secure = true
			}
		}
		if len(l.Tenants) == 0 {
			errs = append(errs, fmt.Errorf("listener %d has no tenant", i))
		}
		for _, t := range l.Tenants {
			st := states[t]
			if st == nil {
				if t.Handler == nil {
					errs = append(errs, fmt.Errorf("tenant %q has no handler", t.Name))
					continue
				}
				if other := names[t.Name]; other != nil {
					errs = append(errs, fmt.Errorf("two tenants are named %q", t.Name))
					continue
				}
				names[t.Name] = t
				st = &tenantState{Tenant: t}
				if t.Cert != nil {
					st.tls = tenantTLS(t.Cert, t.MoreCerts, t.Handler.Info().Kind == KindHTTP, t.TicketKeys)
				}
				states[t] = st
				r.tenants = append(r.tenants, st)
			}
			if secure && t.Cert == nil {
				errs = append(errs, fmt.Errorf("listener %d: tenant %q has no certificate, but the listener is TLS (another tenant on it has one)", i, t.Name))
			}
			if len(t.Hosts) == 0 {
				if rt.def != nil {
					errs = append(errs, fmt.Errorf("listener %d: tenants %q and %q both claim to be the default (no hosts)", i, rt.def.Name, t.Name))
				}
				rt.def = st
				continue
			}
			for _, h := range t.Hosts {
				name, wild := normalizeHost(h), false
				if rest, ok := strings.CutPrefix(name, "*."); ok {
					name, wild = rest, true
				}
				if name == "" || strings.ContainsAny(name, "*/ ") {
					errs = append(errs, fmt.Errorf("tenant %q: bad host name %q", t.Name, h))
					continue
				}
				m := rt.exact
				if wild {
					m = rt.wild
				}
				if other := m[name]; other != nil && other != st {
					errs = append(errs, fmt.Errorf("listener %d: tenants %q and %q both claim host %q", i, other.Name, t.Name, h))
				}
				m[name] = st
			}
		}
		if secure {
			rt.tls = &tls.Config{GetConfigForClient: r.configFor(&rt), MinVersion: tls.VersionTLS12}
			rt.checkHost = len(l.Tenants) > 1 || rt.def == nil
		} else if len(l.Tenants) == 1 && rt.def != nil && !o.ACME {
			rt.direct = rt.def
		}
		r.lis = append(r.lis, rt)
	}
	for _, h := range o.ForeignHosts {
		name, wild := normalizeHost(h), false
		if rest, ok := strings.CutPrefix(name, "*."); ok {
			name, wild = rest, true
		}
		if name == "" || strings.ContainsAny(name, "*/ ") {
			errs = append(errs, fmt.Errorf("another group's host: bad host name %q", h))
			continue
		}
		if wild {
			r.foreign.wild[name] = true
		} else {
			r.foreign.exact[name] = true
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return r, nil
}

// tlsSuites are the TLS 1.2 suites offered: forward secret and AEAD only
// (TLS 1.3's are all so, and not configurable).
var tlsSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// tenantTLS is a tenant's own server config: its certificate, TLS 1.2 and
// later with AEAD suites, ALPN http/1.1 (h2 too when the host speaks HTTP
// for the tenant), and its session ticket keys, so a session resumes only
// with the tenant that issued it.
func tenantTLS(cert *tls.Certificate, more []tls.Certificate, h2 bool, keys [][32]byte) *tls.Config {
	cfg := &tls.Config{Certificates: append([]tls.Certificate{*cert}, more...), MinVersion: tls.VersionTLS12, CipherSuites: tlsSuites,
		NextProtos: []string{"http/1.1"}}
	if h2 {
		cfg.NextProtos = []string{"h2", "http/1.1"}
	}
	if len(keys) == 0 {
		var key [32]byte
		rand.Read(key[:])
		keys = [][32]byte{key}
	}
	cfg.SetSessionTicketKeys(keys)
	return cfg
}

// SetTicketKeys replaces the session ticket keys of the named tenants (the
// first key encrypts new tickets; all decrypt). Sessions in progress are
// not disturbed.
func (r *Router) SetTicketKeys(keys map[string][][32]byte) {
	for _, t := range r.tenants {
		if k := keys[t.Name]; t.tls != nil && len(k) > 0 {
			t.tls.SetSessionTicketKeys(k)
		}
	}
}

// SetChallenges replaces the ACME challenges the host answers.
func (r *Router) SetChallenges(c Challenges) { r.challenges.Store(&c) }

// acmeALPN is the ALPN protocol of the TLS-ALPN-01 challenge (RFC 8737).
const acmeALPN = "acme-tls/1"

// challengeTLS is the config answering a TLS-ALPN-01 validation of
// hello, if it is one and the challenge is live; nil otherwise.
func (r *Router) challengeTLS(hello *tls.ClientHelloInfo) *tls.Config {
	if !slices.Contains(hello.SupportedProtos, acmeALPN) {
		return nil
	}
	c := r.challenges.Load()
	if c == nil {
		return nil
	}
	cert := c.ALPN[normalizeHost(hello.ServerName)]
	if cert == nil {
		return nil
	}
	return &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: []string{acmeALPN}, MinVersion: tls.VersionTLS12}
}

// httpChallenge is the answer to an HTTP-01 validation request whose
// head starts pending and names host, if it is one and the challenge is
// live; nil otherwise.
func (r *Router) httpChallenge(pending, host []byte) []byte {
	c := r.challenges.Load()
	if c == nil || len(c.HTTP) == 0 {
		return nil
	}
	const prefix = "GET /.well-known/acme-challenge/"
	if !bytes.HasPrefix(pending, []byte(prefix)) {
		return nil
	}
	rest := pending[len(prefix):]
	end := bytes.IndexAny(rest, " ?\r\n")
	if end < 0 {
		return nil
	}
	ch, ok := c.HTTP[string(rest[:end])]
	if !ok || normalizeHost(ch.Host) != string(host) {
		return nil
	}
	return []byte("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: " +
		strconv.Itoa(len(ch.KeyAuth)) + "\r\nConnection: close\r\n\r\n" + ch.KeyAuth)
}

// noTenant answers an SNI no tenant serves: with no certificate, crypto/tls
// sends the unrecognized_name alert.
var noTenant = &tls.Config{MinVersion: tls.VersionTLS12}

// configFor picks the tenant's config by SNI, once a slot to compute the
// handshake is free (see RouterOptions.Handshakes and hsConn).
func (r *Router) configFor(rt *routeTable) func(*tls.ClientHelloInfo) (*tls.Config, error) {
	return func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		if cfg := r.challengeTLS(hello); cfg != nil {
			return cfg, nil
		}
		t := rt.lookup(normalizeHost(hello.ServerName))
		if t == nil {
			return noTenant, nil
		}
		if hc, ok := hello.Conn.(*hsConn); ok && !hc.held {
			if err := r.handshakes.acquire(hello.Context()); err != nil {
				return nil, fmt.Errorf("waiting for a handshake slot: %w", err)
			}
			hc.held = true
		}
		return t.tls, nil
	}
}

// hsConn is a connection in its TLS handshake. The slot configFor takes
// is given back at the handshake's next read (the server has answered the
// hello and waits for the client: what costs is done) or its end, so a
// slow client holds none.
type hsConn struct {
	fileConn
	r    *Router
	held bool
}

func (c *hsConn) Read(p []byte) (int, error) {
	c.release()
	return c.fileConn.Read(p)
}

func (c *hsConn) release() {
	if c.held {
		c.held = false
		c.r.handshakes.release()
	}
}

// lookup returns the tenant for a normalized host name, or the default.
func (rt *routeTable) lookup(host string) *tenantState {
	if host != "" {
		if t := rt.exact[host]; t != nil {
			return t
		}
		for i := 0; i < len(host); i++ {
			if host[i] == '.' {
				if t := rt.wild[host[i+1:]]; t != nil {
					return t
				}
			}
		}
	}
	return rt.def
}

// route returns the tenant a request for the normalized host goes to:
// the most specific name claimed here or by another group (foreign), else
// the default. With neither, t is nil and foreign false.
func (rt *routeTable) route(host []byte, other *hostSet) (t *tenantState, foreign bool) {
	if len(host) == 0 {
		return rt.def, false
	}
	// (m[string(b)] does not copy b.)
	if t := rt.exact[string(host)]; t != nil {
		return t, false
	}
	if other.exact[string(host)] {
		return nil, true
	}
	for i := 0; i < len(host); i++ {
		if host[i] == '.' {
			if t := rt.wild[string(host[i+1:])]; t != nil {
				return t, false
			}
			if other.wild[string(host[i+1:])] {
				return nil, true
			}
		}
	}
	return rt.def, false
}

// appendNormalHost appends h to dst as normalizeHost has it, without
// allocating for a name that fits dst.
func appendNormalHost(dst, h []byte) []byte {
	h = bytes.TrimSpace(h)
	if len(h) > 0 && h[0] == '[' {
		if i := bytes.IndexByte(h, ']'); i > 0 {
			h = h[1:i]
		}
	} else if i := bytes.LastIndexByte(h, ':'); i >= 0 && bytes.IndexByte(h, ':') == i {
		h = h[:i]
	}
	h = bytes.TrimSuffix(h, []byte("."))
	for _, c := range h {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst = append(dst, c)
	}
	return dst
}

// normalizeHost lowers a host name and strips a port, IPv6 brackets and a
// trailing dot: "Example.COM.:8080" is "example.com", "[::1]:80" is "::1".
func normalizeHost(h string) string {
	h = strings.TrimSpace(h)
	if strings.HasPrefix(h, "[") {
		if i := strings.IndexByte(h, ']'); i > 0 {
			h = h[1:i]
		}
	} else if i := strings.LastIndexByte(h, ':'); i >= 0 && strings.IndexByte(h, ':') == i {
		h = h[:i]
	}
	h = strings.TrimSuffix(h, ".")
	for i := 0; i < len(h); i++ {
		if 'A' <= h[i] && h[i] <= 'Z' {
			return strings.ToLower(h)
		}
	}
	return h
}

// ServeFD serves one connection, given as its descriptor (a connected
// stream socket in non-blocking mode), that arrived on listener (an index
// into the listeners NewRouter was given), then closes it. A plaintext
// listener's single tenant whose handler can (Handler.servesFD) serves it
// without an *os.File until it must wait; the rest go to ServeConn.
func (r *Router) ServeFD(ctx context.Context, fd int, listener int) {
	if listener >= 0 && listener < len(r.lis) {
		if t := r.lis[listener].direct; t != nil && t.Handler.servesFD() {
			if !t.enter() {
				r.refuse(t, os.NewFile(uintptr(fd), "conn"), false)
				return
			}
			defer t.leave()
			t.Handler.serveFD(ctx, fd)
			return
		}
	}
	r.ServeConn(ctx, os.NewFile(uintptr(fd), "conn"), listener)
}

// ServeConn serves one connection that arrived on listener (an index into
// the listeners NewRouter was given), then closes f.
func (r *Router) ServeConn(ctx context.Context, f *os.File, listener int) {
	if listener < 0 || listener >= len(r.lis) {
		r.log.Error("connection from an unknown listener", "listener", listener, "listeners", len(r.lis))
		f.Close()
		return
	}
	rt := &r.lis[listener]
	if t := rt.direct; t != nil {
		if !t.enter() {
			r.refuse(t, f, false)
			return
		}
		defer t.leave()
		t.Handler.ServeConn(ctx, f)
		return
	}
	rc, err := f.SyscallConn()
	if err != nil {
		r.log.Warn("connection unusable", "err", err)
		f.Close()
		return
	}
	if rt.tls != nil {
		r.serveTLS(ctx, rt, f, rc)
		return
	}
	r.serveHTTP(ctx, rt, f, rc)
}

// enter counts a connection of the tenant in against its MaxConns (false:
// refuse it); leave counts it out.
func (t *tenantState) enter() bool {
	if t.MaxConns <= 0 {
		return true
	}
	if t.open.Add(1) > int64(t.MaxConns) {
		t.open.Add(-1)
		return false
	}
	return true
}

func (t *tenantState) leave() {
	if t.MaxConns > 0 {
		t.open.Add(-1)
	}
}

var refusal = []byte("HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 20\r\nConnection: close\r\n\r\ntoo many connections")

func (r *Router) refuse(t *tenantState, f *os.File, http bool) {
	t.refused.Add(1)
	r.log.Debug("connection refused: tenant at its max_conns", "tenant", t.Name, "max_conns", t.MaxConns)
	if http {
		f.SetWriteDeadline(time.Now().Add(5 * time.Second))
		f.Write(refusal)
	}
	f.Close()
}

// LastAnswers makes every tenant's answers their connections' last (see
// Handler.LastAnswers).
func (r *Router) LastAnswers() {
	for _, t := range r.tenants {
		t.Handler.LastAnswers()
	}
}

// Drain asks every tenant's open connections to finish; it does not wait.
func (r *Router) Drain() {
	for _, t := range r.tenants {
		t.Handler.Drain()
	}
}

// Close closes every tenant's Handler. Call it after every ServeConn has
// returned.
func (r *Router) Close(ctx context.Context) error {
	var errs []error
	for _, t := range r.tenants {
		errs = append(errs, t.Handler.Close(ctx))
	}
	return errors.Join(errs...)
}

// Requests is the number of guest calls of every tenant, for dispatch's
// request-count recycling.
func (r *Router) Requests() uint64 {
	var n uint64
	for _, t := range r.tenants {
		n += t.Handler.stats.calls.Load()
	}
	return n
}

// TenantStats are one tenant's counters in a worker.
type TenantStats struct {
	Stats
	// Refused counts connections turned away at MaxConns.
	Refused uint64
}

// RouterStats are a Router's counters.
type RouterStats struct {
	Tenants map[string]TenantStats
	// Misdirected counts requests no tenant served (421).
	Misdirected uint64
	// Malformed counts request heads refused: 400, 431 and 408.
	Malformed uint64
	// TLSFailures counts failed TLS handshakes (including an SNI no tenant
	// serves on a listener without a default).
	TLSFailures uint64
}

// Stats returns the counters of every tenant and of routing.
func (r *Router) Stats() RouterStats {
	s := RouterStats{Tenants: make(map[string]TenantStats, len(r.tenants)),
		Misdirected: r.misdirected.Load(), Malformed: r.malformed.Load(), TLSFailures: r.tlsFailures.Load()}
	for _, t := range r.tenants {
		s.Tenants[t.Name] = TenantStats{Stats: t.Handler.Stats(), Refused: t.refused.Load()}
	}
	return s
}

// serveHTTP serves a plaintext connection of a routed listener.
func (r *Router) serveHTTP(ctx context.Context, rt *routeTable, f *os.File, rc syscall.RawConn) {
	c := newConnOn(f, rc, nil, 0, nil)
	c.route = &routing{r: r, rt: rt}
	r.serveRouted(ctx, c)
}

// plainOnTLS answers plaintext HTTP sent to a TLS listener, as net/http does.
var plainOnTLS = []byte("HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")

// plainHTTP peeks at what the client sent first (waiting for it within the
// read deadline): true when it is not a TLS handshake record but reads as
// an HTTP method.
func plainHTTP(rc syscall.RawConn) bool {
	var b [8]byte
	n := 0
	rc.Read(func(fd uintptr) bool {
		var err error
		n, _, err = unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		return err != unix.EAGAIN
	})
	if n < 4 || b[0] == 0x16 {
		return false
	}
	for _, m := range []string{"GET ", "HEAD", "POST", "PUT ", "DELE", "OPTI", "PATC", "CONN", "TRAC", "PRI "} {
		if string(b[:4]) == m {
			return true
		}
	}
	return false
}

// serveTLS completes the handshake, choosing the tenant (and so the
// certificate) by SNI, and serves the plaintext with that tenant.
func (r *Router) serveTLS(ctx context.Context, rt *routeTable, f *os.File, rc syscall.RawConn) {
	f.SetDeadline(time.Now().Add(r.opts.HandshakeTimeout))
	if plainHTTP(rc) {
		r.tlsFailures.Add(1)
		f.Write(plainOnTLS)
		f.Close()
		return
	}
	hc := &hsConn{fileConn: fileConn{f}, r: r}
	tc := tls.Server(hc, rt.tls)
	hctx, cancel := context.WithTimeout(ctx, r.opts.HandshakeTimeout)
	restore := lowerPriority()
	err := tc.HandshakeContext(hctx)
	restore()
	cancel()
	hc.release()
	f.SetDeadline(time.Time{})
	if err != nil {
		// Debug only: a flood of failures must not flood the log; the
		// count is in the metrics.
		r.tlsFailures.Add(1)
		r.log.Debug("TLS handshake failed", "peer", fileConn{f}.RemoteAddr().String(), "err", err)
		f.Close()
		return
	}
	if tc.ConnectionState().NegotiatedProtocol == acmeALPN {
		// A CA's TLS-ALPN-01 validation: the handshake was all of it.
		tc.Close()
		return
	}
	t := rt.lookup(normalizeHost(tc.ConnectionState().ServerName))
	if t == nil { // configFor refused such a name: cannot happen
		tc.Close()
		return
	}
	if rt.checkHost {
		c := newConnOn(f, rc, &tlsState{tc: tc}, 0, nil)
		c.route = &routing{r: r, rt: rt, sni: t}
		r.serveRouted(ctx, c)
		return
	}
	if !t.enter() {
		t.refused.Add(1)
		tc.Close()
		return
	}
	defer t.leave()
	t.Handler.serveTLS(ctx, f, rc, tc)
}

// serveRouted routes c's first request, then serves c with each tenant its
// requests name in turn: a tenant's Handler serves it until the guest
// closes it or the next request names another tenant (or is refused).
func (r *Router) serveRouted(ctx context.Context, c *conn) {
	rs := c.route
	rs.before(c) // next or reply says what now
	for rs.next != nil {
		t := rs.next
		rs.next, rs.back = nil, false
		if !t.enter() {
			t.refused.Add(1)
			r.log.Debug("connection refused: tenant at its max_conns", "tenant", t.Name, "max_conns", t.MaxConns)
			rs.reply = refusal
			break
		}
		rs.cur = t
		c.h, c.id, c.stalls = t.Handler, t.Handler.nextConn.Add(1), 0
		t.Handler.serve(ctx, c)
		t.leave()
		if !rs.back {
			return // served to its end, and closed
		}
	}
	if rs.reply != nil {
		r.answer(c, rs.reply)
	}
	c.close()
}

// answer writes the Router's own answer, then lingers a moment reading
// what the client still sends: closing with unread bytes would reset the
// connection, and the client could lose the answer.
func (r *Router) answer(c *conn, resp []byte) {
	c.f.SetWriteDeadline(time.Now().Add(5 * time.Second))
	var err error
	if c.tls != nil {
		if _, err = c.tls.tc.Write(resp); err == nil {
			err = c.tls.tc.CloseWrite()
		}
	} else {
		_, err = c.f.Write(resp)
	}
	if err != nil {
		return
	}
	c.rc.Control(func(fd uintptr) { unix.Shutdown(int(fd), unix.SHUT_WR) })
	c.f.SetReadDeadline(time.Now().Add(2 * time.Second))
	var buf [4096]byte
	for total := 0; total < 64<<10; {
		n, err := c.f.Read(buf[:])
		if err != nil {
			break
		}
		total += n
	}
}

// routing is a connection's state on a routed listener: which tenant
// serves it, and the framing of the request in progress, so that a guest
// is given its own request's bytes and no more.
type routing struct {
	r   *Router
	rt  *routeTable
	sni *tenantState // TLS: the tenant the handshake chose
	cur *tenantState // the tenant serving the connection (nil before the first request)
	// Set by before when the connection leaves its tenant's Handler: back
	// tells Handler.serve to leave it open for the Router, which hands it
	// to next, or writes reply and closes it.
	next  *tenantState
	reply []byte
	back  bool

	frame   frameState
	remain  int64   // frameLength: body bytes still to come
	chunk   chunker // frameChunked
	upgrade bool    // an Upgrade request (or CONNECT): the guest may switch protocols
	connect bool    // CONNECT: a 2xx answer switches
	status  []byte  // the start of the guest's answer to an upgrade request
	held    []byte  // bytes read past the request's end: the next request's
}

// frameState is where a routed connection is in its request stream.
type frameState uint8

const (
	frameHead    frameState = iota // between requests: the next head is routed before a call
	frameLength                    // in a body of known length (remain)
	frameChunked                   // in a chunked body
	frameDone                      // the request is all read: conn_read reports its end
	frameLost                      // a chunked body the host cannot follow: closed after this call
)

// before readies a call: between requests, it reads the next request's
// head (within RouteTimeout and 8 KiB), checks it and routes it. It
// reports false when the call must not happen: the connection goes to
// another tenant (next), is answered by the Router (reply), or is done.
func (rs *routing) before(c *conn) bool {
	if rs.frame != frameHead {
		return true
	}
	var deadline time.Time
	for {
		rs.skipEmptyLines(c)
		if len(c.pending) > 0 {
			h, complete, bad := parseHead(c.pending)
			switch {
			case bad != nil:
				return rs.refuse(c, bad.status, bad.reason)
			case complete && h.size > maxHead, len(c.pending) >= maxHead && !complete:
				// (A whole head read at once is bounded too.)
				return rs.refuse(c, 431, "request head larger than 8 KiB")
			case complete:
				return rs.dispatch(c, h)
			}
		}
		if c.ended {
			return false
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(rs.r.opts.RouteTimeout)
		}
		if err := rs.readMore(c, deadline); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && len(c.pending) > 0 {
				return rs.refuse(c, 408, "request head unfinished after the route timeout")
			}
			return false // closed, or silent since its last request
		}
	}
}

// skipEmptyLines drops CRLFs before a request line (RFC 9112 §2.2).
func (rs *routing) skipEmptyLines(c *conn) {
	p := c.pending
	for len(p) >= 2 && p[0] == '\r' && p[1] == '\n' {
		p = p[2:]
	}
	if len(p) == len(c.pending) {
		return
	}
	c.pending, c.unseen = p, min(c.unseen, len(p))
	if len(p) == 0 {
		c.pending = nil
		c.giveBack()
	}
}

// readMore reads what arrives next into pending, waiting until deadline.
func (rs *routing) readMore(c *conn, deadline time.Time) error {
	if cap(c.pending)-len(c.pending) < 1024 {
		nb := make([]byte, len(c.pending), max(2*len(c.pending), 4096))
		copy(nb, c.pending)
		c.pending = nb
		c.giveBack()
	}
	buf := c.pending[len(c.pending):cap(c.pending)]
	var n int
	var err error
	switch {
	case c.inLoop: // in step, which holds f's read lock
		var slow *os.File
		if slow, err = c.slowFile(); err == nil {
			slow.SetReadDeadline(deadline)
			n, err = slow.Read(buf)
		}
	case c.tls != nil:
		c.f.SetReadDeadline(deadline)
		n, err = c.tls.tc.Read(buf)
		c.clearReadDeadline()
	default:
		c.f.SetReadDeadline(deadline)
		n, err = c.f.Read(buf)
		c.clearReadDeadline()
	}
	c.pending = c.pending[:len(c.pending)+n]
	c.unseen += n
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.EOF
	}
	return err
}

// dispatch routes a request whose head h is complete in pending.
func (rs *routing) dispatch(c *conn, h head) bool {
	var buf [64]byte
	host := appendNormalHost(buf[:0], h.host)
	if rs.sni == nil {
		if answer := rs.r.httpChallenge(c.pending, host); answer != nil {
			rs.reply, rs.back = answer, true
			return false
		}
	}
	t, foreign := rs.rt.route(host, &rs.r.foreign)
	switch {
	case foreign:
		return rs.misdirect(c, string(h.host), "another worker group serves it: retry on a new connection")
	case rs.sni != nil:
		if t != nil && t != rs.sni {
			return rs.misdirect(c, string(h.host), "this TLS connection is for "+strconv.Quote(rs.sni.Name)+": retry on a new connection")
		}
		t = rs.sni
	case t == nil:
		return rs.misdirect(c, string(h.host), "no tenant serves it here")
	}
	rs.frameRequest(c, &h)
	if t != rs.cur {
		rs.next, rs.back = t, true
		return false
	}
	return true
}

// frameRequest starts following the request whose head h is in pending,
// and holds back what follows its end.
func (rs *routing) frameRequest(c *conn, h *head) {
	rs.upgrade, rs.connect, rs.status = h.upgrade, h.connect, rs.status[:0]
	switch {
	case h.chunked:
		rs.frame, rs.chunk = frameChunked, chunker{}
	case h.length > 0:
		rs.frame, rs.remain = frameLength, h.length
	default:
		rs.frame = frameDone
	}
	rest := c.pending[h.size:]
	if k := rs.take(rest); k < len(rest) {
		rs.held = slices.Concat(rest[k:], rs.held)
		c.pending = c.pending[:h.size+k]
	}
	c.unseen = len(c.pending)
}

// take follows the request's body through b, new bytes from the peer, and
// returns how many belong to it.
func (rs *routing) take(b []byte) int {
	switch rs.frame {
	case frameLength:
		k := min(int64(len(b)), rs.remain)
		if rs.remain -= k; rs.remain == 0 {
			rs.frame = frameDone
		}
		return int(k)
	case frameChunked:
		k, done, bad := rs.chunk.scan(b)
		switch {
		case bad:
			rs.frame = frameLost
			return len(b)
		case done:
			rs.frame = frameDone
		}
		return k
	case frameDone:
		return 0
	}
	return len(b) // frameHead (routed before any call), frameLost
}

// arrived frames the last n bytes of pending, just read from the peer.
func (rs *routing) arrived(c *conn, n int) {
	if rs.frame == frameHead {
		return
	}
	start := len(c.pending) - n
	if k := rs.take(c.pending[start:]); k < n {
		rs.held = append(rs.held, c.pending[start+k:]...)
		c.pending = c.pending[:start+k]
		c.unseen -= n - k
		if len(c.pending) == 0 {
			c.pending = nil
			c.giveBack()
		}
	}
}

// cut frames p, just read from the peer by the guest, and returns how many
// of its bytes the guest gets.
func (rs *routing) cut(p []byte) int {
	k := rs.take(p)
	if k < len(p) {
		rs.held = append(rs.held, p[k:]...)
	}
	return k
}

// past is conn_read once the request is all read: it reports false (the
// guest sees the end of the stream) unless the guest switched protocols
// (101 to an Upgrade request, 2xx to CONNECT): then the connection leaves
// routing for good, and what was held back is the tunnel's.
func (rs *routing) past(c *conn) bool {
	s := rs.status
	if !rs.upgrade || len(s) < 12 || !bytes.HasPrefix(s, []byte("HTTP/1.")) ||
		!(string(s[8:12]) == " 101" || rs.connect && s[8] == ' ' && s[9] == '2') {
		return false
	}
	c.route = nil
	if len(rs.held) > 0 {
		c.pending = append(c.pending, rs.held...)
		c.unseen = len(c.pending)
		rs.held = nil
	}
	return true
}

// wrote notes the start of the guest's answer to an upgrade request.
func (rs *routing) wrote(p []byte) {
	if len(rs.status) < 12 {
		rs.status = append(rs.status, p[:min(len(p), 12-len(rs.status))]...)
	}
}

// after follows a call that returned Keep: once the guest has read the
// whole request, the connection is between requests, and the next one's
// bytes already read come next. It reports false to close the connection.
func (rs *routing) after(c *conn) bool {
	switch rs.frame {
	case frameLost:
		c.h.opts.Logger.Info("closing a connection whose chunked request body is malformed", "conn", c.id)
		return false
	case frameDone:
		if len(c.pending) > c.unseen {
			// Pushed back past the end of the request: the guest reads the
			// stream otherwise than the host.
			c.h.opts.Logger.Warn("guest pushed back bytes past the end of the request; closing the connection", "conn", c.id)
			return false
		}
		if len(c.pending) > 0 {
			return true // the rest of its request, in the next call
		}
		rs.frame = frameHead
		if len(rs.held) > 0 {
			c.pending, rs.held = rs.held, nil
			c.unseen = len(c.pending)
		}
	}
	return true
}

// misdirect answers 421: the request is for a host served elsewhere.
func (rs *routing) misdirect(c *conn, host, why string) bool {
	rs.r.misdirected.Add(1)
	if host == "" {
		host = "(none)"
	}
	rs.r.log.Info("misdirected request", "host", host, "why", why, "peer", fileConn{c.f}.RemoteAddr().String())
	rs.reply = httpAnswer(421, "Misdirected Request", "host "+strconv.Quote(host)+": "+why+"\n")
	rs.back = true
	return false
}

// refuse answers a request the Router will not route: 400, 431 or 408.
func (rs *routing) refuse(c *conn, status int, reason string) bool {
	rs.r.malformed.Add(1)
	rs.r.log.Debug("request refused", "status", status, "reason", reason, "peer", fileConn{c.f}.RemoteAddr().String())
	rs.reply = httpAnswer(status, statusText(status), reason+"\n")
	rs.back = true
	return false
}

func statusText(status int) string {
	switch status {
	case 408:
		return "Request Timeout"
	case 431:
		return "Request Header Fields Too Large"
	}
	return "Bad Request"
}

// httpAnswer is a complete response that closes the connection.
func httpAnswer(status int, text, body string) []byte {
	return []byte("HTTP/1.1 " + strconv.Itoa(status) + " " + text + "\r\nContent-Type: text/plain\r\nContent-Length: " +
		strconv.Itoa(len(body)) + "\r\nConnection: close\r\n\r\n" + body)
}
