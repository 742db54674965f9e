package host

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/textproto"
	"net/url"
	"slices"
	"strings"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
)

// A guest's misuse of a host function (a bad header name, a status outside
// 100-999, a response function after next without buffer_response, a
// buffer outside its memory) traps the call with a guestError: the request
// gets a 500 and the trap is counted, like any other.
type guestError struct{ msg string }

func (e *guestError) Error() string { return e.msg }

func trap(format string, args ...any) {
	panic(&guestError{httpModule + "." + fmt.Sprintf(format, args...)})
}

// instantiateHostModule registers the http_handler host functions.
func instantiateHTTPModule(ctx context.Context, rt wazero.Runtime) error {
	fns := map[string]func(*web, context.Context, api.Module, []uint64){
		"enable_features":      (*web).enableFeatures,
		"get_config":           (*web).getConfig,
		"log_enabled":          (*web).logEnabled,
		"log":                  (*web).log,
		"get_method":           (*web).getMethod,
		"set_method":           (*web).setMethod,
		"get_uri":              (*web).getURI,
		"set_uri":              (*web).setURI,
		"get_protocol_version": (*web).getProtocolVersion,
		"get_source_addr":      (*web).getSourceAddr,
		"get_header_names":     (*web).getHeaderNames,
		"get_header_values":    (*web).getHeaderValues,
		"set_header_value":     (*web).setHeaderValue,
		"add_header_value":     (*web).addHeaderValue,
		"remove_header":        (*web).removeHeader,
		"read_body":            (*web).readBody,
		"write_body":           (*web).writeBody,
		"get_status_code":      (*web).getStatusCode,
		"set_status_code":      (*web).setStatusCode,
	}
	b := rt.NewHostModuleBuilder(httpModule)
	for name, fn := range fns {
		sig := httpSignatures[name]
		// The runtime is shared (see Modules): a call goes to the calling
		// instance's Handler.
		call := func(ctx context.Context, mod api.Module, stack []uint64) { fn(handlerOf(ctx).web, ctx, mod, stack) }
		b.NewFunctionBuilder().WithGoModuleFunction(api.GoModuleFunc(call), sig[0], sig[1]).Export(name)
	}
	if _, err := b.Instantiate(ctx); err != nil {
		return fmt.Errorf("instantiate %s host module: %w", httpModule, err)
	}
	return nil
}

// cur is the request the calling instance serves; outside one (while the
// guest starts) a request function traps.
func cur(ctx context.Context, fn string) *webReq {
	if inst := instanceOf(ctx); inst != nil && inst.web != nil && inst.web.cur != nil {
		return inst.web.cur
	}
	trap("%s: called outside a request (while the guest starts)", fn)
	return nil
}

// mem reads n bytes of guest memory at ptr.
func mem(mod api.Module, ptr, n uint32, fn string) []byte {
	if n == 0 {
		return nil
	}
	b, ok := mod.Memory().Read(ptr, n)
	if !ok {
		trap("%s: buffer [%d, +%d) is outside the guest's memory", fn, ptr, n)
	}
	return b
}

// put writes v at buf if it fits in limit, and returns its length either
// way (so limit 0 asks the length).
func put(mod api.Module, buf, limit uint32, v string, fn string) uint32 {
	n := uint32(len(v))
	if n > limit || n == 0 {
		return n
	}
	copy(mem(mod, buf, n, fn), v)
	return n
}

// putList writes vs NUL-terminated at buf if they fit in limit, and returns
// count<<32 | length either way.
func putList(mod api.Module, buf, limit uint32, vs []string, fn string) uint64 {
	if len(vs) == 0 {
		return 0
	}
	n := uint32(len(vs))
	for _, v := range vs {
		n += uint32(len(v))
	}
	if n <= limit {
		b := mem(mod, buf, n, fn)[:0]
		for _, v := range vs {
			b = append(b, v...)
			b = append(b, 0)
		}
	}
	return uint64(len(vs))<<32 | uint64(n)
}

func (w *web) enableFeatures(ctx context.Context, _ api.Module, stack []uint64) {
	f := uint32(stack[0]) & httpFeatures
	if inst := instanceOf(ctx); inst != nil && inst.web != nil && inst.web.cur != nil {
		st := inst.web.cur
		st.features |= f
		stack[0] = uint64(st.features)
		return
	}
	for {
		old := w.features.Load()
		if w.features.CompareAndSwap(old, old|f) {
			stack[0] = uint64(old | f)
			return
		}
	}
}

func (w *web) getConfig(_ context.Context, mod api.Module, stack []uint64) {
	stack[0] = uint64(put(mod, uint32(stack[0]), uint32(stack[1]), string(w.h.opts.GuestConfig), "get_config"))
}

// slogLevel maps an http-wasm log level (-1 debug, 0 info, 1 warn, 2 error,
// 3 none).
func slogLevel(l int32) (slog.Level, bool) {
	switch l {
	case -1:
		return slog.LevelDebug, true
	case 0:
		return slog.LevelInfo, true
	case 1:
		return slog.LevelWarn, true
	case 2:
		return slog.LevelError, true
	}
	return 0, false
}

func (w *web) logEnabled(ctx context.Context, _ api.Module, stack []uint64) {
	l, ok := slogLevel(int32(uint32(stack[0])))
	stack[0] = 0
	if ok && w.h.opts.Logger.Enabled(ctx, l) {
		stack[0] = 1
	}
}

func (w *web) log(ctx context.Context, mod api.Module, stack []uint64) {
	l, ok := slogLevel(int32(uint32(stack[0])))
	if !ok || !w.h.opts.Logger.Enabled(ctx, l) {
		return
	}
	msg := mem(mod, uint32(stack[1]), uint32(stack[2]), "log")
	var id int64 // (0: the guest is starting)
	if inst := instanceOf(ctx); inst != nil && inst.web != nil && inst.web.cur != nil {
		id = inst.web.cur.connID()
	}
	// Within the rate limit of guest output, as the wcluster ABI's log.
	w.h.guestLine(l, "guest", msg[:min(len(msg), maxLogLine)], id)
}

func (w *web) getMethod(ctx context.Context, mod api.Module, stack []uint64) {
	st := cur(ctx, "get_method")
	stack[0] = uint64(put(mod, uint32(stack[0]), uint32(stack[1]), st.r.Method, "get_method"))
}

func (w *web) setMethod(ctx context.Context, mod api.Module, stack []uint64) {
	st := cur(ctx, "set_method")
	st.beforeNext("set_method")
	m := string(mem(mod, uint32(stack[0]), uint32(stack[1]), "set_method"))
	if m == "" || !validToken(m) {
		trap("set_method: %q is not a method (an HTTP token)", m)
	}
	st.r.Method = m
}

func (w *web) getURI(ctx context.Context, mod api.Module, stack []uint64) {
	st := cur(ctx, "get_uri")
	u := st.r.URL
	uri := u.EscapedPath()
	if uri == "" {
		uri = "/"
	}
	if u.ForceQuery || u.RawQuery != "" {
		uri += "?" + u.RawQuery
	}
	stack[0] = uint64(put(mod, uint32(stack[0]), uint32(stack[1]), uri, "get_uri"))
}

func (w *web) setURI(ctx context.Context, mod api.Module, stack []uint64) {
	st := cur(ctx, "set_uri")
	st.beforeNext("set_uri")
	uri := string(mem(mod, uint32(stack[0]), uint32(stack[1]), "set_uri"))
	r := st.r
	if uri == "" {
		uri = "/"
	}
	u, err := url.ParseRequestURI(uri)
	if err != nil || strings.ContainsAny(uri, " \r\n\x00") {
		trap("set_uri: %q is not a request URI", uri)
	}
	r.RequestURI = uri
	r.URL.Path, r.URL.RawPath = u.Path, u.RawPath
	r.URL.RawQuery, r.URL.ForceQuery = u.RawQuery, u.ForceQuery
}

func (w *web) getProtocolVersion(ctx context.Context, mod api.Module, stack []uint64) {
	st := cur(ctx, "get_protocol_version")
	stack[0] = uint64(put(mod, uint32(stack[0]), uint32(stack[1]), st.r.Proto, "get_protocol_version"))
}

func (w *web) getSourceAddr(ctx context.Context, mod api.Module, stack []uint64) {
	st := cur(ctx, "get_source_addr")
	stack[0] = uint64(put(mod, uint32(stack[0]), uint32(stack[1]), st.r.RemoteAddr, "get_source_addr"))
}

// beforeNext traps a function that changes the request after next.
func (st *webReq) beforeNext(fn string) {
	if st.afterNext {
		trap("%s: called after next: the request went on already", fn)
	}
}

// mutableResponse traps a change of the response after next unless the
// guest enabled buffer_response (without it the response went out as next
// made it).
func (st *webReq) mutableResponse(fn string) {
	if st.afterNext && st.features&featureBufferResponse == 0 {
		trap("%s: the response went out already: enable buffer_response to change it after next", fn)
	}
}

// headers returns the header map of kind and, for the trailer kinds, the
// prefix its names carry in it.
func (st *webReq) headers(kind uint32, fn string) (http.Header, string) {
	switch kind {
	case kindRequest:
		return st.r.Header, ""
	case kindResponse:
		return st.rw.Header(), ""
	case kindRequestTrailers:
		if st.r.Trailer == nil {
			st.r.Trailer = http.Header{}
		}
		return st.r.Trailer, ""
	case kindResponseTrailers:
		return st.rw.Header(), http.TrailerPrefix
	}
	trap("%s: unknown header kind %d (0 request, 1 response, 2 request trailers, 3 response trailers)", fn, kind)
	return nil, ""
}

// mutable traps a change of a header kind at the wrong time.
func (st *webReq) mutable(kind uint32, fn string) {
	switch kind {
	case kindRequest, kindRequestTrailers:
		st.beforeNext(fn)
	case kindResponse, kindResponseTrailers:
		st.mutableResponse(fn)
		if !st.afterNext && st.started {
			trap("%s: the response went out already (its body passed %d bytes)", fn, webStreamAt)
		}
	}
}

func (w *web) getHeaderNames(ctx context.Context, mod api.Module, stack []uint64) {
	st := cur(ctx, "get_header_names")
	kind := uint32(stack[0])
	hdr, prefix := st.headers(kind, "get_header_names")
	names := make([]string, 0, len(hdr)+1)
	if kind == kindRequest && st.r.Host != "" {
		names = append(names, "host")
	}
	for k := range hdr {
		switch {
		case prefix != "":
			if n, ok := strings.CutPrefix(k, prefix); ok {
				names = append(names, strings.ToLower(n))
			}
		case kind == kindResponse && strings.HasPrefix(k, http.TrailerPrefix):
		default:
			names = append(names, strings.ToLower(k))
		}
	}
	slices.Sort(names)
	stack[0] = putList(mod, uint32(stack[1]), uint32(stack[2]), names, "get_header_names")
}

// headerName reads and checks a header name from guest memory.
func headerName(st *webReq, mod api.Module, ptr, n uint32, fn string) string {
	name := st.wi.str(mem(mod, ptr, n, fn))
	if !validToken(name) {
		trap("%s: %q is not a header name", fn, name)
	}
	return name
}

func (w *web) getHeaderValues(ctx context.Context, mod api.Module, stack []uint64) {
	st := cur(ctx, "get_header_values")
	kind := uint32(stack[0])
	hdr, prefix := st.headers(kind, "get_header_values")
	name := headerName(st, mod, uint32(stack[1]), uint32(stack[2]), "get_header_values")
	var vs []string
	if kind == kindRequest && strings.EqualFold(name, "host") {
		if st.r.Host != "" {
			vs = []string{st.r.Host}
		}
	} else {
		vs = hdr.Values(prefix + name)
	}
	stack[0] = putList(mod, uint32(stack[3]), uint32(stack[4]), vs, "get_header_values")
}

// headerValue reads and checks a header value from guest memory.
func headerValue(st *webReq, mod api.Module, ptr, n uint32, fn string) string {
	v := st.wi.str(mem(mod, ptr, n, fn))
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < ' ' && c != '\t' || c == 0x7f {
			trap("%s: the value %q holds a control character", fn, v)
		}
	}
	return v
}

func (w *web) setHeaderValue(ctx context.Context, mod api.Module, stack []uint64) {
	w.changeHeader(ctx, mod, stack, "set_header_value", false)
}

func (w *web) addHeaderValue(ctx context.Context, mod api.Module, stack []uint64) {
	w.changeHeader(ctx, mod, stack, "add_header_value", true)
}

func (w *web) changeHeader(ctx context.Context, mod api.Module, stack []uint64, fn string, add bool) {
	st := cur(ctx, fn)
	kind := uint32(stack[0])
	hdr, prefix := st.headers(kind, fn)
	st.mutable(kind, fn)
	name := headerName(st, mod, uint32(stack[1]), uint32(stack[2]), fn)
	value := headerValue(st, mod, uint32(stack[3]), uint32(stack[4]), fn)
	if kind == kindRequest && strings.EqualFold(name, "host") {
		st.r.Host = value
		return
	}
	switch {
	case add:
		hdr.Add(prefix+name, value)
	case kind == kindResponse && st.fast != nil:
		// hdr.Set without its allocations: the key made canonical once per
		// instance, the value's slice from the connection's, reused once
		// this response is out.
		st.fast.setResp(st.wi.canonical([]byte(name)), value)
	default:
		hdr.Set(prefix+name, value)
	}
}

func (w *web) removeHeader(ctx context.Context, mod api.Module, stack []uint64) {
	st := cur(ctx, "remove_header")
	kind := uint32(stack[0])
	hdr, prefix := st.headers(kind, "remove_header")
	st.mutable(kind, "remove_header")
	name := headerName(st, mod, uint32(stack[1]), uint32(stack[2]), "remove_header")
	if kind == kindRequest && strings.EqualFold(name, "host") {
		st.r.Host = ""
		return
	}
	hdr.Del(prefix + name)
}

func (w *web) readBody(ctx context.Context, mod api.Module, stack []uint64) {
	st := cur(ctx, "read_body")
	kind, buf, limit := uint32(stack[0]), uint32(stack[1]), uint32(stack[2])
	if limit == 0 {
		trap("read_body: buf_limit is 0")
	}
	b := mem(mod, buf, limit, "read_body")
	var n int
	var eof bool
	switch kind {
	case kindRequest:
		n, eof = st.readRequest(b)
	case kindResponse:
		var body []byte
		switch {
		case !st.afterNext:
			body = st.body.Bytes()
		case st.features&featureBufferResponse == 0:
			trap("read_body: the response body went out already: enable buffer_response to read it after next")
		default:
			body = st.nw.body.Bytes()
		}
		if st.readOff < len(body) {
			n = copy(b, body[st.readOff:])
			st.readOff += n
		}
		eof = st.readOff >= len(body)
	default:
		trap("read_body: unknown body kind %d (0 request, 1 response)", kind)
	}
	stack[0] = uint64(n)
	if eof {
		stack[0] |= 1 << 32
	}
}

// readRequest fills b from the request body: before next from the client
// (kept when buffer_request is on, so next sees it whole), after next from
// what was kept.
func (st *webReq) readRequest(b []byte) (int, bool) {
	if st.afterNext {
		if st.features&featureBufferRequest == 0 {
			trap("read_body: the request body went on to next: enable buffer_request to read it after next")
		}
		if st.reqReplay == nil {
			src := st.reqKept.Bytes()
			if st.reqNew != nil {
				src = st.reqNew.Bytes()
			}
			st.reqReplay = bytes.NewReader(src)
		}
		n, err := io.ReadFull(st.reqReplay, b)
		return n, err != nil
	}
	if st.reqEOF {
		return 0, true
	}
	n := 0
	var err error
	for n < len(b) && err == nil {
		var k int
		k, err = st.r.Body.Read(b[n:])
		n += k
	}
	if st.features&featureBufferRequest != 0 {
		st.reqKept.Write(b[:n])
	} else {
		st.reqGone += int64(n)
	}
	switch {
	case err == nil:
		return n, false
	case errors.Is(err, io.EOF):
		st.reqEOF = true
		return n, true
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		st.abort = errBodyTooLarge
	} else {
		st.abort = fmt.Errorf("reading the request body: %w", err)
	}
	panic(st.abort)
}

func (w *web) writeBody(ctx context.Context, mod api.Module, stack []uint64) {
	st := cur(ctx, "write_body")
	kind := uint32(stack[0])
	b := mem(mod, uint32(stack[1]), uint32(stack[2]), "write_body")
	switch kind {
	case kindRequest:
		st.beforeNext("write_body")
		if st.reqNew == nil {
			st.reqNew = &bytes.Buffer{}
		}
		if st.reqNew.Len()+len(b) > webMaxBody {
			trap("write_body: the request body passed %d bytes", webMaxBody)
		}
		st.reqNew.Write(b)
	case kindResponse:
		st.mutableResponse("write_body")
		if st.afterNext {
			nw := st.nw
			if !nw.reset {
				nw.body.Reset()
				nw.reset = true
			}
			if nw.body.Len()+len(b) > webMaxBody {
				trap("write_body: the response body passed %d bytes", webMaxBody)
			}
			nw.body.Write(b)
			return
		}
		st.writeOwn(b)
	default:
		trap("write_body: unknown body kind %d (0 request, 1 response)", kind)
	}
}

// writeOwn adds to the guest's own response body; past webStreamAt the
// response starts to go out.
func (st *webReq) writeOwn(b []byte) {
	if st.started {
		if _, err := st.rw.Write(b); err != nil {
			st.abort = fmt.Errorf("writing the response: %w", err)
			panic(st.abort)
		}
		return
	}
	st.body.Write(b)
	if st.body.Len() <= webStreamAt || st.features&featureBufferResponse != 0 {
		if st.body.Len() > webMaxBody {
			trap("write_body: the response body passed %d bytes", webMaxBody)
		}
		return
	}
	status := st.status
	if status == 0 {
		status = http.StatusOK
	}
	st.started = true
	st.rw.WriteHeader(status)
	body := st.body.Bytes()
	st.body = bytes.Buffer{}
	if _, err := st.rw.Write(body); err != nil {
		st.abort = fmt.Errorf("writing the response: %w", err)
		panic(st.abort)
	}
}

func (w *web) getStatusCode(ctx context.Context, _ api.Module, stack []uint64) {
	st := cur(ctx, "get_status_code")
	s := st.status
	if st.afterNext {
		s = st.nw.status
	}
	if s == 0 {
		s = http.StatusOK
	}
	stack[0] = uint64(s)
}

func (w *web) setStatusCode(ctx context.Context, _ api.Module, stack []uint64) {
	st := cur(ctx, "set_status_code")
	code := int32(uint32(stack[0]))
	if code < 100 || code > 999 {
		trap("set_status_code: %d is not a status code (100-999)", code)
	}
	st.mutableResponse("set_status_code")
	switch {
	case st.afterNext:
		st.nw.status = int(code)
	case st.started:
		trap("set_status_code: the response went out already (its body passed %d bytes)", webStreamAt)
	default:
		st.status = int(code)
	}
}

// validToken reports whether s is an HTTP token (a method or header name).
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte("\"(),/:;<=>?@[\\]{}", c) >= 0 {
			return false
		}
	}
	return true
}

// strTable keeps the strings (header names and values) that an instance's
// guest, or a connection's client, sends again and again, so that most
// requests make none. It is bounded: webStrs strings of webStrLen bytes.
type strTable struct {
	strs map[string]string
	keys map[string]string // name as sent: canonical name
}

const webStrs, webStrLen = 64, 96

// str is b as a string, from the table when b is in it.
func (t *strTable) str(b []byte) string {
	if s, ok := t.strs[string(b)]; ok {
		return s
	}
	s := string(b)
	if len(t.strs) < webStrs && len(s) <= webStrLen {
		if t.strs == nil {
			t.strs = make(map[string]string)
		}
		t.strs[s] = s
	}
	return s
}

// canonical is textproto.CanonicalMIMEHeaderKey(string(name)).
func (t *strTable) canonical(name []byte) string {
	if k, ok := t.keys[string(name)]; ok {
		return k
	}
	k := textproto.CanonicalMIMEHeaderKey(string(name))
	if len(t.keys) < webStrs && len(name) <= webStrLen {
		if t.keys == nil {
			t.keys = make(map[string]string)
		}
		t.keys[string(name)] = k
	}
	return k
}

// setResp is rw.Header().Set(key, value) for a canonical key: on the fast
// path without an allocation.
func (st *webReq) setResp(key, value string) {
	if st.fast != nil {
		st.fast.setResp(key, value)
		return
	}
	st.rw.Header().Set(key, value)
}
