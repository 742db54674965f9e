package host

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The fast path serves the common request of a plaintext connection (an
// HTTP/1.1 request without Expect or upgrade, whose body, if any, has a
// Content-Length and fits the read buffer with its head) itself: one read and
// one write per kept-alive request, no goroutine or deadline per request,
// the response framed here. Anything else (a chunked or large body,
// HTTP/1.0, a malformed or oversize head, an upgrade) hands the connection, with the bytes read
// so far, to net/http's server for good: it keeps its full behaviour (100
// Continue, chunked bodies, 400/413/431).

// fastBuf is the read buffer of a connection on the fast path: a head that
// does not fit goes to net/http.
const fastBuf = 8 << 10

// fastConn is a plaintext connection on the fast path.
type fastConn struct {
	w      *web
	c      *conn
	f      *os.File
	buf    []byte // read, not yet parsed: buf[off:n]
	off, n int
	remote string
	ctx    context.Context
	out    []byte // the response being written

	last    time.Time // when the last answer went out
	idleAt  time.Time // the idle deadline set on f (zero: none yet)
	headDL  bool      // a read timeout (for a head) is set on f instead
	dateSec int64
	// now is when the request being served got its instance (read once:
	// the time limit, the latency and the Date header use it; zero before);
	// last is when the previous answer ended.
	now     time.Time
	dateBuf []byte

	// On a shared listener (c.route set): routed says the request at off
	// was routed already; rbuf is the Router's view of the next head.
	routed bool
	rbuf   []byte

	// Reused from request to request (each is answered before the next is
	// parsed, and nothing keeps them past the answer): the request, its
	// header map and values, its body reader, the parsed URI of the last
	// target, the response writer and its header map.
	blank    *http.Request // carries ctx
	req      http.Request
	hdr      http.Header
	vals     []string
	body     fastBody
	uri      string
	url      url.URL // parsed from uri, unchanged: req.URL is a copy
	reqURL   url.URL
	fw       fastWriter
	respHdr  http.Header
	respVals []string // respHdr's values set by the guest
	strTable          // the client's header names and values
}

// setResp is respHdr.Set(key, value) for a canonical key, the value's slice
// from respVals, reused once the response is out.
func (fc *fastConn) setResp(key, value string) {
	k := len(fc.respVals)
	fc.respVals = append(fc.respVals, value)
	fc.respHdr[key] = fc.respVals[k : k+1 : k+1]
}

// fastBody is a request body in the read buffer.
type fastBody struct{ bytes.Reader }

func (*fastBody) Close() error { return nil }

var fastBufs = sync.Pool{New: func() any { b := make([]byte, fastBuf); return &b }}

// serveFast serves c on the fast path until it closes, hands it to
// net/http, or (on a shared listener) leaves it to the Router for a request
// of another tenant. read is what was read ahead of the connection; routed
// says its first request was routed here.
func (w *web) serveFast(ctx context.Context, c *conn, read []byte, routed bool) {
	bp := fastBufs.Get().(*[]byte)
	fc := &fastConn{w: w, c: c, f: c.f, buf: *bp, remote: c.peerAddr(), routed: routed}
	if len(read) > len(fc.buf) { // pipelined requests behind a routed one
		fc.buf = make([]byte, len(read)+fastBuf)
	}
	fc.n = copy(fc.buf, read)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	fc.ctx = ctx
	fc.blank = (&http.Request{}).WithContext(ctx)
	fc.hdr, fc.respHdr = make(http.Header, 8), make(http.Header, 4)
	handoff := fc.loop()
	if handoff == nil {
		fastBufs.Put(bp)
		return
	}
	// net/http reads what was read ahead first.
	wc := &webConn{Conn: &prefixConn{Conn: fileConn{c.f}, prefix: handoff}, id: c.id, closed: make(chan struct{})}
	if !w.hand(ctx, wc) {
		return
	}
	select {
	case <-wc.closed:
	case <-ctx.Done():
	}
}

// loop serves requests; it returns the bytes to hand to net/http with the
// connection, or nil when the connection is done.
func (fc *fastConn) loop() []byte {
	h := fc.w.h
	first := true
	for {
		// Wait for the next request, holding no instance; Drain wakes us.
		if fc.off == fc.n {
			fc.off, fc.n = 0, 0
			fc.c.parked.Store(true)
			fc.waitDeadline(first)
			if fc.c.woken.Load() || (!first && h.draining.Load()) {
				fc.c.parked.Store(false)
				return nil
			}
			m, err := fc.c.fileRead(fc.buf)
			for m <= 0 && errors.Is(err, os.ErrDeadlineExceeded) && !fc.c.woken.Load() && fc.rearm() {
				m, err = fc.c.fileRead(fc.buf)
			}
			fc.c.parked.Store(false)
			if m <= 0 {
				return nil // closed, idle, woken or failed: done
			}
			fc.n = m
		}
		first = false
		if fc.c.route != nil && !fc.routed && !fc.route() {
			return nil // another tenant's, refused, or ended: the Router's
		}
		fc.routed = false
		// A whole head, parsed; else more bytes, or net/http.
		req, used, ok := fc.parse()
		for !ok && used == 0 {
			if fc.n == len(fc.buf) {
				if fc.off == 0 {
					return fc.rest() // a head larger than the buffer
				}
				copy(fc.buf, fc.buf[fc.off:fc.n])
				fc.n -= fc.off
				fc.off = 0
			}
			if h.opts.ReadTimeout > 0 {
				fc.f.SetReadDeadline(time.Now().Add(h.opts.ReadTimeout))
				fc.headDL, fc.idleAt = true, time.Time{} // the idle deadline is replaced
			}
			m, _ := fc.c.fileRead(fc.buf[fc.n:])
			if m <= 0 {
				return nil
			}
			fc.n += m
			req, used, ok = fc.parse()
		}
		if !ok {
			return fc.rest() // not for the fast path: net/http answers it
		}
		fc.off += used
		fc.now = time.Time{} // ServeHTTP sets it once it has an instance
		last := fc.last
		if !fc.serve(req) {
			return nil
		}
		if fc.last.Equal(last) { // not set by ServeHTTP: refused early
			fc.last = time.Now()
		}
	}
}

// waitDeadline sets the deadline of the wait for a request: the read
// timeout for the first, else the idle timeout after the last answer. The
// idle deadline is moved only once it has passed (rearm), not per request:
// a deadline change costs more than the check.
func (fc *fastConn) waitDeadline(first bool) {
	h := fc.w.h
	switch {
	case first:
		if h.opts.ReadTimeout > 0 {
			fc.f.SetReadDeadline(time.Now().Add(h.opts.ReadTimeout))
			fc.headDL = true
		}
	case h.opts.IdleTimeout <= 0:
		if fc.headDL {
			fc.f.SetReadDeadline(time.Time{})
			fc.headDL = false
		}
	case fc.headDL || fc.idleAt.IsZero():
		fc.idleAt = fc.last.Add(h.opts.IdleTimeout)
		fc.f.SetReadDeadline(fc.idleAt)
		fc.headDL = false
	}
}

// rearm moves the idle deadline after it passed, if the connection was
// busy since it was set; false: idle for the whole timeout.
func (fc *fastConn) rearm() bool {
	idle := fc.w.h.opts.IdleTimeout
	until := fc.last.Add(idle)
	if idle <= 0 || fc.last.IsZero() || !time.Now().Before(until) {
		return false
	}
	fc.idleAt = until
	fc.f.SetReadDeadline(until)
	return true
}

// route routes the request at off by its own Host, as the Router does
// between the requests of ABI handlers (routing.before, with its strict
// head checks, 421, 400/431/408): a request for this tenant is served on
// here; else it reports false, and the connection, with the bytes read
// ahead in c.pending and the routing state, goes back to the Router, which
// hands it to the next tenant or answers and closes it.
func (fc *fastConn) route() bool {
	c, rs := fc.c, fc.c.route
	c.giveBack()
	c.pending = append(fc.rbuf[:0], fc.buf[fc.off:fc.n]...)
	c.unseen = len(c.pending)
	fc.off, fc.n = 0, 0
	rs.frame = frameHead
	ok := rs.before(c)
	// The deadlines set here or there are dropped: the next tenant, or
	// waitDeadline, sets its own.
	c.clearReadDeadline()
	fc.idleAt, fc.headDL = time.Time{}, false
	if !ok {
		return false
	}
	fc.rbuf = c.pending[:0]
	if need := len(c.pending) + len(rs.held); need > len(fc.buf) {
		fc.buf = make([]byte, need+fastBuf)
	}
	fc.n = copy(fc.buf, c.pending)
	fc.n += copy(fc.buf[fc.n:], rs.held)
	// The fast path frames the request itself.
	c.pending, c.unseen, rs.held, rs.frame = nil, 0, nil, frameHead
	return true
}

// date is the Date header's value, formatted once a second.
func (fc *fastConn) date() []byte {
	now := fc.now
	if now.IsZero() {
		now = time.Now()
	}
	if sec := now.Unix(); sec != fc.dateSec {
		fc.dateSec = sec
		fc.dateBuf = now.UTC().AppendFormat(fc.dateBuf[:0], http.TimeFormat)
	}
	return fc.dateBuf
}

// rest is what net/http gets: the unparsed bytes (on a routed connection,
// its one request, to be answered with Connection: close).
func (fc *fastConn) rest() []byte {
	fc.f.SetReadDeadline(time.Time{})
	b := slices.Clone(fc.buf[fc.off:fc.n])
	if fc.c.route != nil {
		b = lastRequest(b)
	}
	return b
}

// lastRequest adds "Connection: close" to the request head at the start of
// b, so net/http answers that request only and closes the connection. It
// is added first, as net/http reads the first Connection field.
func lastRequest(b []byte) []byte {
	i := bytes.Index(b, []byte("\r\n"))
	if i < 0 {
		return b
	}
	return slices.Concat(b[:i+2], []byte("Connection: close\r\n"), b[i+2:])
}

// parse reads one request head from buf[off:n]. ok: a request for the fast
// path, used bytes long; !ok with used 0: the head is incomplete; !ok with
// used > 0: one for net/http.
func (fc *fastConn) parse() (req *http.Request, used int, ok bool) {
	b := fc.buf[fc.off:fc.n]
	end := bytes.Index(b, []byte("\r\n\r\n"))
	if end < 0 {
		if bytes.Contains(b, []byte("\n\n")) {
			return nil, len(b), false // lines ended by a bare LF: net/http's
		}
		return nil, 0, false
	}
	used = end + 4
	head := b[:end]
	line, rest, _ := bytes.Cut(head, []byte("\r\n"))
	method, line, ok1 := bytes.Cut(line, []byte(" "))
	target, proto, ok2 := bytes.Cut(line, []byte(" "))
	if !ok1 || !ok2 || string(proto) != "HTTP/1.1" || len(target) == 0 || target[0] != '/' || !validToken(string(method)) {
		return nil, used, false
	}
	hdr := fc.hdr
	clear(hdr)
	fc.vals = fc.vals[:0]
	var host string
	clen := -1
	closeAfter := false
	for len(rest) > 0 {
		var l []byte
		l, rest, _ = bytes.Cut(rest, []byte("\r\n"))
		k, v, found := bytes.Cut(l, []byte(":"))
		if !found || !validToken(string(k)) {
			return nil, used, false
		}
		val := fc.str(bytes.Trim(v, " \t"))
		for i := 0; i < len(val); i++ {
			if c := val[i]; c < ' ' && c != '\t' || c == 0x7f {
				return nil, used, false
			}
		}
		key := fc.canonical(k)
		switch key {
		case "Host":
			if host != "" {
				return nil, used, false
			}
			host = val
			continue
		case "Content-Length":
			// A body that fits the buffer with its head is read here;
			// anything else about a length is net/http's to judge.
			n, err := strconv.Atoi(val)
			if err != nil || n < 0 || clen >= 0 || used+n > len(fc.buf) || val[0] == '+' {
				return nil, used, false
			}
			clen = n
		case "Transfer-Encoding", "Expect", "Upgrade", "Te", "Trailer":
			return nil, used, false
		case "Connection":
			for _, t := range strings.Split(val, ",") {
				switch strings.ToLower(strings.TrimSpace(t)) {
				case "close":
					closeAfter = true
				case "upgrade":
					return nil, used, false
				}
			}
		}
		if vs, ok := hdr[key]; ok {
			hdr[key] = append(vs, val)
		} else {
			k := len(fc.vals)
			fc.vals = append(fc.vals, val)
			hdr[key] = fc.vals[k : k+1 : k+1]
		}
	}
	if host == "" {
		return nil, used, false
	}
	if string(target) != fc.uri || fc.uri == "" {
		u, err := url.ParseRequestURI(string(target))
		if err != nil {
			return nil, used, false
		}
		fc.uri, fc.url = string(target), *u
	}
	fc.reqURL = fc.url // the guest may change it (set_uri)
	var body io.ReadCloser = http.NoBody
	if clen > 0 {
		if len(b) < used+clen {
			return nil, 0, false // the body is still coming
		}
		// A view of the buffer: it is not read into again before the
		// request is answered.
		fc.body.Reset(b[used : used+clen])
		body = &fc.body
		used += clen
	}
	req = &fc.req
	*req = *fc.blank
	req.Method, req.URL, req.Proto, req.ProtoMajor, req.ProtoMinor = methodString(method), &fc.reqURL, "HTTP/1.1", 1, 1
	req.Header, req.Body, req.ContentLength, req.Host, req.RemoteAddr = hdr, body, max(int64(clen), 0), host, fc.remote
	req.RequestURI, req.Close = fc.uri, closeAfter
	return req, used, true
}

// methodString is the method's name, without an allocation for the common ones.
func methodString(m []byte) string {
	switch string(m) {
	case http.MethodGet:
		return http.MethodGet
	case http.MethodPost:
		return http.MethodPost
	case http.MethodHead:
		return http.MethodHead
	case http.MethodPut:
		return http.MethodPut
	}
	return string(m)
}

// serve answers one request and reports whether the connection goes on.
func (fc *fastConn) serve(req *http.Request) (keep bool) {
	clear(fc.respHdr)
	clear(fc.respVals)
	fc.respVals = fc.respVals[:0]
	fw := &fc.fw
	*fw = fastWriter{fc: fc, hdr: fc.respHdr, head: req.Method == http.MethodHead, sent: fw.sent[:0]}
	fw.close = req.Close || fc.w.h.draining.Load() || fc.w.h.lastAnswers.Load()
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				fc.w.h.opts.Logger.Error("http-wasm request panicked", "err", v)
			}
			keep = false
		}
	}()
	var begin time.Time
	method, uri := req.Method, req.RequestURI // as the client sent them: the guest may change both
	if fc.w.h.access != nil {
		begin = time.Now()
	}
	fc.w.serve(fw, req)
	err := fw.finish()
	status := fw.status
	if status == 0 && fw.wrote {
		status = http.StatusOK
	}
	fc.w.account(req, method, uri, status, fw.written, begin)
	return err == nil && !fw.close
}

// prefixConn reads prefix before the connection.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// fastWriter frames a response on the fast path: with Content-Length when
// known (always, for a response the guest made), else chunked.
type fastWriter struct {
	fc      *fastConn
	hdr     http.Header
	status  int
	wrote   bool // the head is in out
	chunked bool
	head    bool // a HEAD request: no body
	nobody  bool // 1xx, 204, 304 or HEAD
	close   bool
	err     error
	sent    []string // header names sent in the head
	// clen is the declared Content-Length (-1: none); written counts the
	// body bytes, which must not pass it.
	clen, written int64
}

func (fw *fastWriter) Header() http.Header { return fw.hdr }

// WriteHeader records the status; the head goes out with the first body
// bytes (so that a missing Content-Type is sniffed from them, as net/http
// does), a Flush, or at the end.
func (fw *fastWriter) WriteHeader(code int) {
	if fw.wrote || fw.status != 0 {
		return
	}
	if code < 100 || code > 999 {
		panic("invalid WriteHeader code " + strconv.Itoa(code))
	}
	if code < 200 && code != http.StatusSwitchingProtocols {
		// Informational: out at once, the real status follows.
		out := fw.fc.out[:0]
		out = appendStatus(out, code)
		out = appendHeaders(out, fw.hdr)
		out = append(out, "\r\n"...)
		fw.fc.out = out
		fw.flushOut()
		return
	}
	fw.status = code
}

// commit writes the head, p being the first body bytes.
func (fw *fastWriter) commit(p []byte) {
	if fw.status == 0 {
		fw.status = http.StatusOK
	}
	if _, ok := fw.hdr["Content-Type"]; !ok && len(p) > 0 && !fw.head && bodyAllowed(fw.status) {
		fw.fc.setResp("Content-Type", http.DetectContentType(p))
	}
	fw.writeHead()
}

func appendStatus(out []byte, code int) []byte {
	out = append(out, "HTTP/1.1 "...)
	out = strconv.AppendInt(out, int64(code), 10)
	out = append(out, ' ')
	out = append(out, http.StatusText(code)...)
	return append(out, "\r\n"...)
}

// appendHeaders writes hdr (trailer-prefixed keys left out).
func appendHeaders(out []byte, hdr http.Header) []byte {
	for k, vs := range hdr {
		out = appendHeader(out, k, vs)
	}
	return out
}

// appendHeader appends the lines of header k (none for a trailer's
// declaration).
func appendHeader(out []byte, k string, vs []string) []byte {
	if strings.HasPrefix(k, http.TrailerPrefix) {
		return out
	}
	for _, v := range vs {
		out = append(out, k...)
		out = append(out, ": "...)
		out = append(out, v...)
		out = append(out, "\r\n"...)
	}
	return out
}

func (fw *fastWriter) writeHead() {
	fw.wrote = true
	code := fw.status
	fw.nobody = fw.head || code < 200 || code == http.StatusNoContent || code == http.StatusNotModified
	// The keys are canonical (the host functions and net/http's helpers
	// set them so): the map is indexed directly, and walked once.
	hdr := fw.hdr
	if code == http.StatusNoContent || code == http.StatusNotModified || code < 200 {
		delete(hdr, "Content-Length")
		delete(hdr, "Transfer-Encoding")
	} else if firstValue(hdr, "Content-Length") == "" && !fw.head {
		fw.chunked = true
		delete(hdr, "Transfer-Encoding")
	}
	fw.clen = -1
	if v := firstValue(hdr, "Content-Length"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			// Not a length the client can frame by: close to end it.
			delete(hdr, "Content-Length")
			fw.close = true
		} else {
			fw.clen = n
		}
	}
	delete(hdr, "Connection")
	if fw.fc.w.h.draining.Load() {
		fw.close = true // draining: this is the connection's last response
	}
	out := appendStatus(fw.fc.out[:0], code)
	if _, ok := hdr["Date"]; !ok {
		out = append(out, "Date: "...)
		out = append(out, fw.fc.date()...)
		out = append(out, "\r\n"...)
	}
	for k, vs := range hdr {
		fw.sent = append(fw.sent, k)
		out = appendHeader(out, k, vs)
	}
	if fw.chunked {
		out = append(out, "Transfer-Encoding: chunked\r\n"...)
	}
	if fw.close {
		out = append(out, "Connection: close\r\n"...)
	}
	fw.fc.out = append(out, "\r\n"...)
}

// firstValue is hdr.Get(key) for a canonical key.
func firstValue(hdr http.Header, key string) string {
	if vs := hdr[key]; len(vs) > 0 {
		return vs[0]
	}
	return ""
}

func (fw *fastWriter) Write(p []byte) (int, error) {
	if !fw.wrote {
		fw.commit(p)
	}
	if fw.err != nil {
		return 0, fw.err
	}
	if fw.nobody || len(p) == 0 {
		return len(p), nil
	}
	if fw.clen >= 0 && fw.written+int64(len(p)) > fw.clen {
		fw.err = http.ErrContentLength
		return 0, fw.err
	}
	fw.written += int64(len(p))
	if fw.chunked {
		fw.fc.out = strconv.AppendInt(fw.fc.out, int64(len(p)), 16)
		fw.fc.out = append(fw.fc.out, "\r\n"...)
	}
	fw.fc.out = append(fw.fc.out, p...)
	if fw.chunked {
		fw.fc.out = append(fw.fc.out, "\r\n"...)
	}
	if len(fw.fc.out) >= 64<<10 {
		fw.flushOut()
	}
	return len(p), fw.err
}

// Flush sends what is buffered (a streamed upstream response asks for it).
func (fw *fastWriter) Flush() {
	if !fw.wrote {
		fw.commit(nil)
	}
	fw.flushOut()
}

func (fw *fastWriter) flushOut() {
	if len(fw.fc.out) == 0 || fw.err != nil {
		return
	}
	fc := fw.fc
	// One write without waiting, as conn_write does: the usual answer
	// fits the socket's buffer, and needs no deadline (two changes of it
	// per request otherwise). What is left waits, within WriteTimeout.
	out := fc.out
	c := fc.c
	c.ioBuf = out
	err := c.rc.Write(c.writeFn)
	c.ioBuf = nil
	switch n, werr := c.ioN, c.ioErr; {
	case err != nil:
		fw.err = err
	case werr == nil && n == len(out):
		out = nil
	case werr != nil && werr != unix.EAGAIN && werr != unix.EINTR:
		fw.err = werr
	case n > 0:
		out = out[n:]
	}
	if len(out) > 0 && fw.err == nil {
		h := fc.w.h
		if h.opts.WriteTimeout > 0 {
			fc.f.SetWriteDeadline(time.Now().Add(h.opts.WriteTimeout))
			defer fc.f.SetWriteDeadline(time.Time{})
		}
		if _, err := fc.f.Write(out); err != nil {
			fw.err = err
		}
	}
	fw.fc.out = fw.fc.out[:0]
	if cap(fw.fc.out) > 256<<10 {
		fw.fc.out = nil
	}
}

// finish ends the response: the head if nothing was written, the last
// chunk and trailers if chunked.
func (fw *fastWriter) finish() error {
	if !fw.wrote {
		if _, ok := fw.hdr["Content-Length"]; !ok && !fw.head && (fw.status == 0 || bodyAllowed(fw.status)) {
			fw.fc.setResp("Content-Length", "0")
		}
		fw.commit(nil)
	}
	if fw.chunked {
		out := append(fw.fc.out, "0\r\n"...)
		for k, vs := range fw.hdr {
			name, ok := strings.CutPrefix(k, http.TrailerPrefix)
			if !ok {
				continue
			}
			for _, v := range vs {
				out = append(out, name...)
				out = append(out, ": "...)
				out = append(out, v...)
				out = append(out, "\r\n"...)
			}
		}
		// Trailers declared in the head are set without the prefix after
		// it (httputil.ReverseProxy does so).
		for _, decl := range fw.hdr.Values("Trailer") {
			for _, name := range strings.Split(decl, ",") {
				name = textproto.CanonicalMIMEHeaderKey(strings.TrimSpace(name))
				for _, v := range fw.declared(name) {
					out = append(out, name...)
					out = append(out, ": "...)
					out = append(out, v...)
					out = append(out, "\r\n"...)
				}
			}
		}
		fw.fc.out = append(out, "\r\n"...)
	}
	fw.flushOut()
	if fw.err != nil {
		return fw.err
	}
	if !fw.nobody && fw.clen >= 0 && fw.written < fw.clen {
		return errShortBody // the client waits for the rest: only a close ends it
	}
	return nil
}

var errShortBody = errors.New("response body shorter than its Content-Length")

// declared returns the values of a declared trailer set after the head.
func (fw *fastWriter) declared(name string) []string {
	if slices.Contains(fw.sent, name) {
		return nil
	}
	return fw.hdr[name]
}

// webFastPath turns the fast path on (off: net/http serves every request).
const webFastPath = true
