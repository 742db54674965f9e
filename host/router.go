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
	"strconv"
	"strings"
	"sync"
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
	// MaxConns caps the connections it holds at once in this worker; past
	// it new ones are refused (a 503 when the listener routes HTTP, else
	// closed). 0: no cap.
	MaxConns int
}

// Listener is one listening socket of a worker group: the tenants that
// share it. A tenant may be on several listeners.
type Listener struct {
	Tenants []*Tenant
}

// RouterOptions tune a Router; zero values take the defaults.
type RouterOptions struct {
	// RouteTimeout bounds the wait for the bytes that name a plaintext
	// request's host (default 10s).
	RouteTimeout time.Duration
	// HandshakeTimeout bounds a TLS handshake (default 10s).
	HandshakeTimeout time.Duration
	// Logger receives misdirected requests and failed handshakes.
	Logger *slog.Logger
}

// maxPeek is the most a Router peeks of a request to find its host.
const maxPeek = 8 << 10

// Router serves the connections of a worker group's listeners, each with
// the handler of the tenant it is for.
//
// A listener whose only tenant is its default, without TLS, is not routed
// at all: its connections go straight to that tenant's Handler. On a
// shared plaintext listener the Router peeks (MSG_PEEK: the bytes stay in
// the socket, and the guest reads them unchanged) at the request until its
// Host header (or an absolute-form target) names the host, the headers end,
// 8 KiB arrived or RouteTimeout passed, and picks the tenant claiming that
// host, else the listener's default; with neither it answers
// "421 Misdirected Request" and closes. A TLS listener completes the
// handshake with the certificate of the tenant the SNI names (else the
// default's; with neither the handshake fails) and hands that tenant the
// plaintext. A kept-alive connection stays with the tenant chosen for its
// first request: later requests on it are not routed again.
type Router struct {
	lis     []routeTable
	tenants []*tenantState
	log     *slog.Logger
	opts    RouterOptions

	misdirected, tlsFailures atomic.Uint64
	// peekBufs lends serveHTTP a buffer (maxPeek) for the request head it
	// routes by, only until it has routed.
	peekBufs sync.Pool
}

// routeTable is one listener's routing.
type routeTable struct {
	direct *tenantState // the single default tenant of a plaintext listener
	exact  map[string]*tenantState
	wild   map[string]*tenantState // "example.com" for "*.example.com"
	def    *tenantState
	tls    *tls.Config // nil for plaintext
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
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	r := &Router{log: o.Logger, opts: o}
	r.peekBufs.New = func() any { b := make([]byte, maxPeek); return &b }
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
					st.tls = tenantTLS(t.Cert)
					if t.Handler.Info().Kind == KindHTTP {
						// The host speaks HTTP for it: HTTP/2 too.
						st.tls.NextProtos = []string{"h2", "http/1.1"}
					}
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
			rt.tls = &tls.Config{GetConfigForClient: rt.configFor, MinVersion: tls.VersionTLS12}
		} else if len(l.Tenants) == 1 && rt.def != nil {
			rt.direct = rt.def
		}
		r.lis = append(r.lis, rt)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return r, nil
}

// tenantTLS is a tenant's own server config: its certificate, and its own
// session ticket key, so a session resumes only with the tenant that
// issued it.
func tenantTLS(cert *tls.Certificate) *tls.Config {
	cfg := &tls.Config{Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS12}
	var key [32]byte
	rand.Read(key[:])
	cfg.SetSessionTicketKeys([][32]byte{key})
	return cfg
}

func (rt *routeTable) configFor(hello *tls.ClientHelloInfo) (*tls.Config, error) {
	t := rt.lookup(normalizeHost(hello.ServerName))
	if t == nil {
		return nil, fmt.Errorf("no tenant serves %q here", hello.ServerName)
	}
	return t.tls, nil
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
		if t.MaxConns > 0 {
			if !t.admit() {
				r.refuse(t, f, false)
				return
			}
			defer t.open.Add(-1)
		}
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

func (t *tenantState) admit() bool {
	if t.open.Add(1) > int64(t.MaxConns) {
		t.open.Add(-1)
		return false
	}
	return true
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

// serveHTTP routes a plaintext connection by the host its first request
// names.
func (r *Router) serveHTTP(ctx context.Context, rt *routeTable, f *os.File, rc syscall.RawConn) {
	bp := r.peekBufs.Get().(*[]byte)
	buf := *bp
	n, eof, err := peekRequest(f, rc, buf, time.Now().Add(r.opts.RouteTimeout))
	host, named := requestHost(buf[:n])
	peeked := n
	r.peekBufs.Put(bp)
	if n == 0 && (eof || err != nil && !errors.Is(err, os.ErrDeadlineExceeded)) {
		f.Close() // gone before saying anything
		return
	}
	host = normalizeHost(host)
	t := rt.lookup(host)
	if t == nil {
		r.misdirect(f, rc, peeked, host, named)
		return
	}
	if t.MaxConns > 0 {
		if !t.admit() {
			r.discard(rc, peeked)
			r.refuse(t, f, true)
			return
		}
		defer t.open.Add(-1)
	}
	h := t.Handler
	h.serve(ctx, newConnOn(f, rc, nil, h.nextConn.Add(1), h))
}

// misdirect answers a request no tenant on the listener serves.
func (r *Router) misdirect(f *os.File, rc syscall.RawConn, peeked int, host string, named bool) {
	r.misdirected.Add(1)
	if !named {
		host = "(none)"
	}
	r.log.Info("misdirected request: no tenant serves its host on this listener", "host", host, "peer", fileConn{f}.RemoteAddr().String())
	body := "no tenant serves host " + strconv.Quote(host) + " here\n"
	resp := "HTTP/1.1 421 Misdirected Request\r\nContent-Type: text/plain\r\nContent-Length: " +
		strconv.Itoa(len(body)) + "\r\nConnection: close\r\n\r\n" + body
	// Read what was peeked, so that closing with it unread does not reset
	// the connection before the client reads the answer.
	r.discard(rc, peeked)
	f.SetWriteDeadline(time.Now().Add(5 * time.Second))
	f.Write([]byte(resp))
	f.Close()
}

// discard reads (without waiting) up to n bytes already in the socket.
func (r *Router) discard(rc syscall.RawConn, n int) {
	if n <= 0 {
		return
	}
	buf := make([]byte, min(n, maxPeek))
	rc.Control(func(fd uintptr) {
		for n > 0 {
			m, err := unix.Read(int(fd), buf[:min(n, len(buf))])
			if err == unix.EINTR {
				continue
			}
			if err != nil || m <= 0 {
				return
			}
			n -= m
		}
	})
}

// serveTLS completes the handshake, choosing the tenant (and so the
// certificate) by SNI, and serves the plaintext with that tenant.
func (r *Router) serveTLS(ctx context.Context, rt *routeTable, f *os.File, rc syscall.RawConn) {
	tc := tls.Server(fileConn{f}, rt.tls)
	f.SetDeadline(time.Now().Add(r.opts.HandshakeTimeout))
	err := tc.HandshakeContext(ctx)
	f.SetDeadline(time.Time{})
	if err != nil {
		r.tlsFailures.Add(1)
		r.log.Info("TLS handshake failed", "peer", fileConn{f}.RemoteAddr().String(), "err", err)
		f.Close()
		return
	}
	t := rt.lookup(normalizeHost(tc.ConnectionState().ServerName))
	if t == nil { // configFor refused such a name: cannot happen
		tc.Close()
		return
	}
	if t.MaxConns > 0 {
		if !t.admit() {
			t.refused.Add(1)
			tc.Close()
			return
		}
		defer t.open.Add(-1)
	}
	t.Handler.serveTLS(ctx, f, rc, tc)
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
	// TLSFailures counts failed TLS handshakes (including an SNI no tenant
	// serves on a listener without a default).
	TLSFailures uint64
}

// Stats returns the counters of every tenant and of routing.
func (r *Router) Stats() RouterStats {
	s := RouterStats{Tenants: make(map[string]TenantStats, len(r.tenants)),
		Misdirected: r.misdirected.Load(), TLSFailures: r.tlsFailures.Load()}
	for _, t := range r.tenants {
		s.Tenants[t.Name] = TenantStats{Stats: t.Handler.Stats(), Refused: t.refused.Load()}
	}
	return s
}

// peekRequest peeks at the start of a request with MSG_PEEK, leaving the
// bytes in the socket, until requestHost can tell the host, buf is full,
// the peer closed (eof, with nothing sent) or the deadline passed.
func peekRequest(f *os.File, rc syscall.RawConn, buf []byte, deadline time.Time) (n int, eof bool, err error) {
	f.SetReadDeadline(deadline)
	defer f.SetReadDeadline(time.Time{})
	for {
		prev, m := n, -1
		var serr error
		err := rc.Read(func(fd uintptr) bool {
			for {
				k, _, e := unix.Recvfrom(int(fd), buf, unix.MSG_PEEK|unix.MSG_DONTWAIT)
				switch {
				case e == unix.EINTR:
					continue
				case e == unix.EAGAIN:
					return false
				case e != nil:
					serr = e
				case k == prev && k > 0 && k < len(buf):
					return false // nothing new yet: wait for more
				default:
					m = k
				}
				return true
			}
		})
		if err != nil {
			return n, false, err
		}
		if serr != nil {
			return n, false, serr
		}
		if m == 0 {
			return n, true, nil
		}
		n = m
		if _, done := requestHost(buf[:n]); done || n == len(buf) {
			return n, false, nil
		}
	}
}

// requestHost returns the host an HTTP/1 request names: the authority of
// an absolute-form target ("GET http://host/ HTTP/1.1"), else its Host
// header. done is false while more bytes could still tell; with done true
// and host "", the request names none.
func requestHost(b []byte) (host string, done bool) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return "", false
	}
	line := b[:i]
	if sp := bytes.IndexByte(line, ' '); sp >= 0 {
		target := line[sp+1:]
		if j := bytes.IndexByte(target, ' '); j >= 0 {
			target = target[:j]
		}
		if k := bytes.Index(target, []byte("://")); k > 0 && k < 6 {
			auth := target[k+3:]
			if j := bytes.IndexAny(auth, "/?#"); j >= 0 {
				auth = auth[:j]
			}
			if j := bytes.LastIndexByte(auth, '@'); j >= 0 {
				auth = auth[j+1:]
			}
			return string(auth), true
		}
	}
	b = b[i+1:]
	for {
		i = bytes.IndexByte(b, '\n')
		if i < 0 {
			return "", false
		}
		line = bytes.TrimSuffix(b[:i], []byte("\r"))
		if len(line) == 0 {
			return "", true // end of the headers
		}
		if len(line) >= 5 && line[4] == ':' && bytes.EqualFold(line[:4], []byte("host")) {
			return string(bytes.TrimSpace(line[5:])), true
		}
		b = b[i+1:]
	}
}
