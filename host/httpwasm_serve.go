package host

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetratelabs/wazero/api"
)

// Bounds of what an http-wasm handler accepts from a client.
const (
	// webMaxHeaderBytes bounds a request head (431 past it).
	webMaxHeaderBytes = 64 << 10
	// webMaxBody bounds a request body, and a response the host buffers
	// for the guest (413 for a request past it).
	webMaxBody = 64 << 20
	// webStreamAt is how much of its own response body a guest may write
	// before the host starts sending it (headers then go out as they are).
	webStreamAt = 1 << 20
)

// web serves an http-wasm guest: net/http's server speaks HTTP/1.1 on the
// connections ServeConn hands it (keep-alive, pipelining, chunked bodies,
// trailers, Expect: 100-continue), and every request borrows a pooled
// instance for the guest's handle_request and handle_response; an idle
// connection holds none.
type web struct {
	h         *Handler
	srv       *http.Server
	lis       *webListener
	proxy     *httputil.ReverseProxy // nil: next answers 404
	upstream  string
	features  atomic.Uint32 // enabled outside any request (while starting)
	served    sync.WaitGroup
	startOnce sync.Once
	tlsConns  sync.Map // net.Conn (a *tls.Conn) -> *tlsEnd
	drainOnce sync.Once
	closed    atomic.Bool
	mu        sync.Mutex // guards late and lateLis
	// late serves the connections handed over after drain.
	late    *http.Server
	lateLis *webListener
	// shutCtx bounds the graceful shutdown drain starts; close cancels it.
	shutCtx    context.Context
	cancelShut context.CancelFunc

	upstreamErrors atomic.Uint64
	responses      [5]atomic.Uint64 // by status class
}

// initWeb readies a Handler whose guest speaks http-wasm: the host module,
// the upstream, and the HTTP server.
func (h *Handler) initWeb(ctx context.Context) error {
	w := &web{h: h, lis: newWebListener()}
	w.shutCtx, w.cancelShut = context.WithCancel(context.Background())
	if h.opts.Upstream != "" {
		u, err := url.Parse(h.opts.Upstream)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("upstream %q: want an http:// or https:// URL with a host, e.g. http://127.0.0.1:8080", h.opts.Upstream)
		}
		w.upstream = u.Redacted()
		w.proxy = w.newProxy(u)
	}
	w.srv = w.newServer()
	h.web = w
	return nil
}

// newServer is the HTTP server of the handler's connections.
func (w *web) newServer() *http.Server {
	h := w.h
	return &http.Server{
		Handler:           w,
		ReadHeaderTimeout: h.opts.ReadTimeout,
		IdleTimeout:       h.opts.IdleTimeout,
		MaxHeaderBytes:    webMaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(h.opts.Logger.Handler(), slog.LevelDebug),
		ConnState:         w.connState,
		ConnContext:       w.connContext,
	}
}

// connIDKey is the key of a connection's id (conn.id) in the contexts of
// its requests on the net/http path: what the guest logs names it.
type connIDKey struct{}

func (w *web) connContext(ctx context.Context, nc net.Conn) context.Context {
	var id int64
	if wc, ok := nc.(*webConn); ok {
		id = wc.id
	} else if v, ok := w.tlsConns.Load(nc); ok {
		id = v.(*tlsEnd).id
	}
	return context.WithValue(ctx, connIDKey{}, id)
}

// connID is the id of the connection of the request being served, 0
// outside one (the guest starting).
func (st *webReq) connID() int64 {
	if st.fast != nil {
		return st.fast.c.id
	}
	id, _ := st.r.Context().Value(connIDKey{}).(int64)
	return id
}

// start runs the server, from the first connection until close.
func (w *web) start() {
	w.startOnce.Do(func() {
		w.served.Add(1)
		go func() {
			defer w.served.Done()
			w.srv.Serve(w.lis)
		}()
	})
}

// newProxy is next for an upstream: pooled keep-alive connections, bodies
// streamed both ways, X-Forwarded-For/-Proto/-Host set, hop-by-hop headers
// dropped (httputil does), and the guest's changes to the request applied
// (they are made on the request itself).
func (w *web) newProxy(u *url.URL) *httputil.ReverseProxy {
	tr := &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			host := pr.In.Host
			pr.SetURL(u)
			pr.Out.Host = host // the client's (or the guest's) Host goes on
			if xff, ok := pr.In.Header["X-Forwarded-For"]; ok {
				pr.Out.Header["X-Forwarded-For"] = xff // SetXForwarded appends to it
			}
			pr.SetXForwarded()
			// The client's 100-continue is answered here, when the body is
			// first read; forwarded, the upstream's own 100 would reach the
			// client as a second interim response.
			pr.Out.Header.Del("Expect")
		},
		Transport:    tr,
		ErrorLog:     slog.NewLogLogger(w.h.opts.Logger.Handler(), slog.LevelDebug),
		ErrorHandler: w.upstreamError,
	}
}

// upstreamError answers a request the upstream failed: 504 when it timed
// out, 413 when the client's body passed the limit, else 502.
func (w *web) upstreamError(rw http.ResponseWriter, r *http.Request, err error) {
	if nw, ok := rw.(*nextWriter); ok {
		nw.failed = true
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		http.Error(rw, "request body too large", http.StatusRequestEntityTooLarge)
		return
	}
	if r.Context().Err() != nil {
		// The client went away: nobody reads the answer.
		rw.WriteHeader(http.StatusBadGateway)
		return
	}
	code := http.StatusBadGateway
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout() {
		code = http.StatusGatewayTimeout
	}
	w.upstreamErrors.Add(1)
	w.h.opts.Logger.Warn("upstream failed", "upstream", w.upstream, "method", r.Method, "uri", r.URL.RequestURI(), "status", code, "err", err)
	http.Error(rw, http.StatusText(code), code)
}

// serveConn hands a connection to the HTTP server and returns once the
// server is done with it (or ctx ends); the caller closes it.
func (w *web) serveConn(ctx context.Context, c *conn) {
	w.start()
	if c.route != nil {
		w.serveRouted(ctx, c)
		return
	}
	if c.tls != nil {
		w.serveTLS(ctx, c)
		return
	}
	if webFastPath {
		w.serveFast(ctx, c, nil, false)
		return
	}
	wc := &webConn{Conn: fileConn{c.f}, id: c.id, closed: make(chan struct{})}
	if !w.hand(ctx, wc) {
		return
	}
	select {
	case <-wc.closed:
	case <-ctx.Done():
	}
}

// serveRouted serves a connection of a listener shared by several tenants:
// the Router has read the head of the request it routed here (in pending,
// what follows it in route.held). In plaintext the fast path serves it and
// routes each next request by its own Host, as the Router does for ABI
// handlers: the connection stays open from tenant to tenant. A request the
// fast path leaves to net/http (a chunked or large body, Expect, an
// upgrade), and any request over TLS, is answered with "Connection: close"
// and ends the connection: net/http reads ahead where the Router could not
// route what it reads.
func (w *web) serveRouted(ctx context.Context, c *conn) {
	rs := c.route
	read := slices.Concat(c.pending, rs.held)
	first := len(c.pending)
	c.pending, c.unseen, rs.held, rs.frame = nil, 0, nil, frameHead
	c.giveBack()
	if c.tls == nil && webFastPath {
		if c.rdl { // set by the tenant before
			c.clearReadDeadline()
		}
		w.serveFast(ctx, c, read, true)
		return
	}
	read = read[:first]
	var nc net.Conn = fileConn{c.f}
	if c.tls != nil {
		nc = c.tls.tc
	}
	wc := &webConn{Conn: &prefixConn{Conn: nc, prefix: lastRequest(read)}, id: c.id, closed: make(chan struct{})}
	if !w.hand(ctx, wc) {
		return
	}
	select {
	case <-wc.closed:
	case <-ctx.Done():
	}
}

// serveTLS hands the server the *tls.Conn itself, as net/http needs to see
// it to speak HTTP/2 (ALPN h2) and fill Request.TLS; the server's
// ConnState says when it is done with it. A connection a handler hijacked
// (a protocol upgrade through the upstream) is that handler's to close.
func (w *web) serveTLS(ctx context.Context, c *conn) {
	end := &tlsEnd{done: make(chan struct{}), id: c.id}
	tc := c.tls.tc
	w.tlsConns.Store(net.Conn(tc), end)
	defer w.tlsConns.Delete(net.Conn(tc))
	if !w.hand(ctx, tc) {
		return
	}
	select {
	case <-end.done:
		if end.hijacked.Load() {
			c.tls, c.f = nil, nil // c.close leaves it alone
		}
	case <-ctx.Done():
	}
}

// tlsEnd is how ConnState tells serveTLS the server is done with a
// connection.
type tlsEnd struct {
	id       int64 // the connection's
	done     chan struct{}
	once     sync.Once
	hijacked atomic.Bool
}

// connState ends serveTLS for a TLS connection the server closed or a
// handler hijacked.
func (w *web) connState(nc net.Conn, state http.ConnState) {
	if state != http.StateClosed && state != http.StateHijacked {
		return
	}
	if v, ok := w.tlsConns.Load(nc); ok {
		end := v.(*tlsEnd)
		if state == http.StateHijacked {
			end.hijacked.Store(true)
		}
		end.once.Do(func() { close(end.done) })
	}
}

// drain shuts the server down gracefully: idle connections close, every
// response from now on closes its connection, HTTP/2 connections get a
// GOAWAY. A connection handed over after it is still served, by a second
// server without keep-alive (the first one's listener is closed then).
func (w *web) drain() {
	w.drainOnce.Do(func() {
		late, lateLis := w.newServer(), newWebListener()
		late.SetKeepAlivesEnabled(false)
		w.mu.Lock()
		w.late, w.lateLis = late, lateLis
		w.mu.Unlock()
		w.served.Add(2)
		go func() {
			defer w.served.Done()
			late.Serve(lateLis)
		}()
		go func() {
			defer w.served.Done()
			w.srv.Shutdown(w.shutCtx)
		}()
	})
}

// listener is where a connection handed over now goes.
func (w *web) listener() *webListener {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.lateLis != nil {
		return w.lateLis
	}
	return w.lis
}

// hand gives the server nc; false if it is closed (or ctx ended).
func (w *web) hand(ctx context.Context, nc net.Conn) bool {
	for {
		lis := w.listener()
		select {
		case lis.conns <- nc:
			return true
		case <-lis.done:
			if lis == w.lis && !w.closed.Load() {
				continue // drain closed it: the late server takes nc
			}
			return false
		case <-ctx.Done():
			return false
		}
	}
}

// close stops the servers; every connection is closed.
func (w *web) close() {
	w.closed.Store(true)
	w.startOnce.Do(func() {}) // no start after this
	w.drainOnce.Do(func() {})
	w.cancelShut()
	w.lis.Close()
	w.srv.Close()
	w.mu.Lock()
	late, lateLis := w.late, w.lateLis
	w.mu.Unlock()
	if late != nil {
		lateLis.Close()
		late.Close()
	}
	w.served.Wait()
}

// webConn is a connection lent to the HTTP server: its Close tells
// ServeConn the server is done with it (ServeConn closes it).
type webConn struct {
	net.Conn
	id     int64 // the connection's (conn.id)
	once   sync.Once
	closed chan struct{}
}

func (c *webConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

// webListener feeds the HTTP server the connections ServeConn hands it.
type webListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *webListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func newWebListener() *webListener {
	return &webListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *webListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *webListener) Addr() net.Addr { return &net.TCPAddr{} }

// webInst is an instance's http-wasm state: its exports, and the request it
// is serving (nil between requests, and while it starts).
type webInst struct {
	req, resp api.Function
	stack     [2]uint64
	cur       *webReq
	st        webReq // cur's storage
	strTable
}

// webReq is one request's state while the guest handles it.
type webReq struct {
	w         *web
	rw        http.ResponseWriter
	r         *http.Request
	features  uint32
	afterNext bool
	wi        *webInst
	fast      *fastConn // the connection, on the fast path

	// The guest's own response (before next): status 0 is 200; started
	// once it outgrew webStreamAt and is being sent.
	status  int
	body    bytes.Buffer
	started bool
	readOff int // read_body(response)'s offset

	// The request body: what the guest read of it (kept when buffering),
	// what it wrote instead, how many bytes it consumed without buffering.
	reqKept   bytes.Buffer
	reqNew    *bytes.Buffer
	reqGone   int64
	reqEOF    bool
	reqReplay *bytes.Reader // read_body(request) after next

	nw *nextWriter // next's response, after next

	// abort is why the host, not the guest, stopped a call: the client's
	// body was too large or could not be read.
	abort error
}

// errBodyTooLarge is a request body past webMaxBody.
var errBodyTooLarge = errors.New("request body too large")

// ServeHTTP serves a request net/http's server read (a connection the
// fast path handed over, HTTP/2): counted and logged as the fast path's.
func (w *web) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	cw := &countWriter{ResponseWriter: rw}
	var begin time.Time
	method, uri := r.Method, r.RequestURI // as the client sent them: the guest may change both
	if w.h.access != nil {
		begin = time.Now()
	}
	defer func() { w.account(r, method, uri, cw.status, cw.bytes, begin) }()
	w.serve(cw, r)
}

// account counts a response by its status class and logs it with the
// request's method and target as received (status 0: none was sent);
// begin is zero when the access log is off.
func (w *web) account(r *http.Request, method, uri string, status int, bytes int64, begin time.Time) {
	if status == 0 && bytes > 0 {
		status = http.StatusOK
	}
	if c := statusClass(status); c >= 0 {
		w.responses[c].Add(1)
	}
	if w.h.access != nil {
		w.h.access.request(r, method, uri, status, bytes, begin, time.Now())
	}
}

// countWriter notes the status and body bytes of a response net/http
// writes.
type countWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (cw *countWriter) WriteHeader(code int) {
	if cw.status == 0 || (cw.status < 200 && code >= 200) {
		cw.status = code
	}
	cw.ResponseWriter.WriteHeader(code)
}

func (cw *countWriter) Write(p []byte) (int, error) {
	if cw.status == 0 || cw.status < 200 {
		cw.status = http.StatusOK
	}
	n, err := cw.ResponseWriter.Write(p)
	cw.bytes += int64(n)
	return n, err
}

// Flush and Unwrap keep http.ResponseController working through it.
func (cw *countWriter) Flush() {
	if cw.status == 0 {
		cw.status = http.StatusOK
	}
	http.NewResponseController(cw.ResponseWriter).Flush()
}

func (cw *countWriter) Unwrap() http.ResponseWriter { return cw.ResponseWriter }

func (h *Handler) responses() (out [5]uint64) {
	if h.web == nil {
		return out
	}
	for i := range out {
		out[i] = h.web.responses[i].Load()
	}
	return out
}

// serve serves one request with a pooled instance of the guest.
func (w *web) serve(rw http.ResponseWriter, r *http.Request) {
	h := w.h
	if r.ContentLength > webMaxBody {
		http.Error(rw, "request body too large", http.StatusRequestEntityTooLarge)
		return
	}
	if r.Body != http.NoBody {
		r.Body = http.MaxBytesReader(rw, r.Body, webMaxBody)
	}
	inst, err := h.acquire(r.Context())
	if err != nil {
		h.opts.Logger.Warn("no instance for request", "err", err)
		http.Error(rw, "no guest instance available", http.StatusServiceUnavailable)
		return
	}
	h.stats.calls.Add(1)
	st := w.newReq(inst, rw, r)
	// st belongs to the instance: once it is released another request
	// may take it, so what is needed after comes out of st first.
	fast := st.fast
	begin := time.Now()
	if fast != nil {
		fast.now = begin
	}
	healthy := false
	defer func() {
		// Deferred, so that the instance goes back even if the code
		// below panics (net/http recovers it; the worker goes on).
		end := time.Now()
		h.observe(end.Sub(begin))
		if fast != nil {
			fast.last = end
		}
		h.release(inst, healthy, end)
	}()
	abort, err := w.handle(inst, st, begin)
	healthy = err == nil
	if abort {
		// The response had started: cutting the connection is the only way
		// left to tell the client it is incomplete.
		panic(http.ErrAbortHandler)
	}
}

// newReq readies the request state kept with inst (reused, as an
// instance serves one request at a time).
func (w *web) newReq(inst *instance, rw http.ResponseWriter, r *http.Request) *webReq {
	if inst.web == nil {
		inst.web = &webInst{req: inst.mod.ExportedFunction(httpHandleRequest), resp: inst.mod.ExportedFunction(httpHandleResponse)}
	}
	st := &inst.web.st
	body, kept := st.body, st.reqKept
	body.Reset()
	kept.Reset()
	if body.Cap() > 64<<10 {
		body = bytes.Buffer{}
	}
	if kept.Cap() > 64<<10 {
		kept = bytes.Buffer{}
	}
	*st = webReq{w: w, rw: rw, r: r, wi: inst.web, features: w.features.Load(), body: body, reqKept: kept}
	if fw, ok := rw.(*fastWriter); ok {
		st.fast = fw.fc
	}
	return st
}

// handle runs the guest on st and answers; err is the guest's failure (the
// instance is then discarded), abort asks to cut the connection.
func (w *web) handle(inst *instance, st *webReq, begin time.Time) (abort bool, err error) {
	if inst.web == nil {
		inst.web = &webInst{req: inst.mod.ExportedFunction(httpHandleRequest), resp: inst.mod.ExportedFunction(httpHandleResponse)}
	}
	wi := inst.web
	wi.cur = st
	defer func() { wi.cur = nil }()

	wi.stack[0] = 0
	if err := inst.callWeb(wi.req, wi.stack[:], begin); err != nil {
		return w.fail(st, err), err
	}
	ctxNext := wi.stack[0]
	if ctxNext&1 == 0 {
		return st.finish(), nil
	}
	st.afterNext = true
	failed := st.next()
	wi.stack[0], wi.stack[1] = ctxNext>>32, 0
	if failed {
		wi.stack[1] = 1
	}
	if err := inst.callWeb(wi.resp, wi.stack[:], time.Now()); err != nil {
		return w.fail(st, err), err
	}
	return st.finish(), nil
}

// callWeb calls fn on the instance within the time limit, counted from now.
func (inst *instance) callWeb(fn api.Function, stack []uint64, now time.Time) error {
	if inst.h.opts.Timeout > 0 {
		inst.arm(now)
	}
	err := fn.CallWithStack(inst.ctx, stack)
	timedOut := inst.disarm()
	inst.flushLog()
	if timedOut {
		return errDeadline
	}
	if err != nil {
		return inst.deadlineErr(err)
	}
	return nil
}

// fail answers a request whose guest call failed: 500 if nothing was sent
// yet (413 if the client's body was too large); else it asks to cut the
// connection, unless next's streamed response already went out whole.
func (w *web) fail(st *webReq, err error) (abort bool) {
	h := w.h
	r := st.r
	switch {
	case st.abort != nil:
		h.opts.Logger.Debug("request stopped", "method", r.Method, "uri", r.URL.RequestURI(), "err", st.abort)
	case errors.Is(err, errDeadline):
		h.stats.timeouts.Add(1)
		h.opts.Logger.Warn("guest stopped at its time limit", "method", r.Method, "uri", r.URL.RequestURI(), "timeout", h.opts.Timeout)
	case isMemoryError(err):
		h.stats.memLimit.Add(1)
		h.opts.Logger.Warn("guest ran out of memory", "method", r.Method, "uri", r.URL.RequestURI(), "limit", h.opts.MemoryLimit, "err", oneLine(err))
	default:
		h.stats.traps.Add(1)
		h.opts.Logger.Warn("guest trapped", "method", r.Method, "uri", r.URL.RequestURI(), "err", oneLine(err))
	}
	if st.afterNext && !st.nw.buffer && st.nw.status != 0 {
		// next's response went out as it came; the guest only looked.
		return false
	}
	if st.started {
		return true
	}
	hdr := st.rw.Header()
	for k := range hdr {
		delete(hdr, k)
	}
	if errors.Is(st.abort, errBodyTooLarge) {
		http.Error(st.rw, "request body too large", http.StatusRequestEntityTooLarge)
		return false
	}
	if st.abort != nil {
		return true // the client's body failed: it is gone
	}
	http.Error(st.rw, "handler failed", http.StatusInternalServerError)
	return false
}

// next runs the next handler (the upstream, or a 404) and reports whether
// it failed.
func (st *webReq) next() (failed bool) {
	r := st.r
	switch {
	case st.reqNew != nil:
		r.Body = io.NopCloser(st.reqNew)
		r.ContentLength = int64(st.reqNew.Len())
		r.TransferEncoding = nil
		r.Header.Del("Content-Length")
	case st.reqKept.Len() > 0:
		kept := bytes.NewReader(st.reqKept.Bytes())
		if st.reqEOF {
			r.Body = io.NopCloser(kept)
		} else {
			r.Body = struct {
				io.Reader
				io.Closer
			}{io.MultiReader(kept, r.Body), r.Body}
		}
	case st.reqGone > 0 && r.ContentLength > 0:
		r.ContentLength -= st.reqGone
	}
	nw := &nextWriter{rw: st.rw, buffer: st.features&featureBufferResponse != 0}
	st.nw = nw
	if st.status != 0 || st.body.Len() > 0 {
		// What the guest wrote before next comes first, as if it had gone
		// out (or into the buffer) at once; a later write does not replace it.
		nw.reset = true
		if nw.buffer {
			nw.status, nw.body = st.status, st.body
		} else if !st.started {
			if st.status != 0 {
				nw.WriteHeader(st.status)
			}
			if st.body.Len() > 0 {
				nw.Write(st.body.Bytes())
			}
		}
		st.body = bytes.Buffer{}
	}
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				st.w.h.opts.Logger.Error("next handler panicked", "err", v)
			}
			failed = true
			st.nw.failed = true
		}
	}()
	if st.w.proxy == nil {
		http.Error(st.nw, "404 page not found: the handler passed the request on, and there is no upstream", http.StatusNotFound)
		return false
	}
	st.w.proxy.ServeHTTP(st.nw, r)
	return st.nw.failed
}

// finish sends the response the guest made (or changed), unless it went
// out already; it reports whether to cut the connection.
func (st *webReq) finish() bool {
	rw := st.rw
	hdr := rw.Header()
	if st.afterNext {
		nw := st.nw
		if !nw.buffer {
			return false
		}
		status := nw.status
		if status == 0 {
			status = http.StatusOK
		}
		hdr.Del("Content-Length")
		if bodyAllowed(status) && !hasTrailers(hdr) {
			st.setResp("Content-Length", strconv.Itoa(nw.body.Len()))
		}
		rw.WriteHeader(status)
		rw.Write(nw.body.Bytes())
		return false
	}
	if st.started {
		return false
	}
	status := st.status
	if status == 0 {
		status = http.StatusOK
	}
	if _, ok := hdr["Content-Length"]; !ok && bodyAllowed(status) && !hasTrailers(hdr) {
		st.setResp("Content-Length", strconv.Itoa(st.body.Len()))
	}
	rw.WriteHeader(status)
	rw.Write(st.body.Bytes())
	return false
}

func bodyAllowed(status int) bool {
	return status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
}

func hasTrailers(hdr http.Header) bool {
	if _, ok := hdr["Trailer"]; ok {
		return true
	}
	for k := range hdr {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			return true
		}
	}
	return false
}

// nextWriter is what next writes its response to: passed on as it comes,
// or, with buffer_response, kept for the guest to read and change.
type nextWriter struct {
	rw     http.ResponseWriter
	buffer bool
	status int
	body   bytes.Buffer
	failed bool // the upstream failed
	reset  bool // the guest's first write_body after next replaced body
}

func (nw *nextWriter) Header() http.Header { return nw.rw.Header() }

func (nw *nextWriter) WriteHeader(code int) {
	if code < 200 {
		if !nw.buffer && code != http.StatusSwitchingProtocols {
			nw.rw.WriteHeader(code) // informational: passed on
		}
		if code != http.StatusSwitchingProtocols {
			return
		}
	}
	if nw.status != 0 {
		return
	}
	nw.status = code
	if !nw.buffer {
		nw.rw.WriteHeader(code)
	}
}

func (nw *nextWriter) Write(p []byte) (int, error) {
	if nw.status == 0 {
		nw.WriteHeader(http.StatusOK)
	}
	if !nw.buffer {
		return nw.rw.Write(p)
	}
	if nw.body.Len()+len(p) > webMaxBody {
		return 0, errors.New("response too large to buffer for the handler")
	}
	return nw.body.Write(p)
}

func (nw *nextWriter) Flush() {
	if !nw.buffer {
		http.NewResponseController(nw.rw).Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection (a protocol
// upgrade through the upstream hijacks it).
func (nw *nextWriter) Unwrap() http.ResponseWriter { return nw.rw }

func (h *Handler) upstreamErrors() uint64 {
	if h.web == nil {
		return 0
	}
	return h.web.upstreamErrors.Load()
}
