package host

// The access log: one line per request of an http-wasm handler (the host
// speaks its HTTP), one per connection of the other kinds, on the worker's
// standard output (Options.AccessLog, AccessLogTo).

import (
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// accessLog writes lines in one format ("common" or "json"); nil is off.
type accessLog struct {
	tenant string
	worker int
	json   bool
	mu     sync.Mutex // one write per line, whole
	w      io.Writer
	buf    []byte
}

func newAccessLog(o *Options) *accessLog {
	if o.AccessLog == "" || o.AccessLog == "off" {
		return nil
	}
	return &accessLog{tenant: o.Name, worker: o.WorkerID, json: o.AccessLog == "json", w: o.AccessLogTo}
}

// maxLoggedURI and maxLoggedText bound the target and the other texts a
// client chooses (host, user agent), so that a line stays under PIPE_BUF
// (4 KiB) and several workers' lines never interleave in a pipe.
const (
	maxLoggedURI  = 2048
	maxLoggedText = 512
)

func clip(s string, n int) string { return s[:min(len(s), n)] }

// request logs one HTTP request, with the method and target the client
// sent: its status (0: nothing was sent), the body bytes sent and the time
// since begin.
func (a *accessLog) request(r *http.Request, method, uri string, status int, bytes int64, begin, end time.Time) {
	if len(uri) > maxLoggedURI {
		uri = uri[:maxLoggedURI]
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	b := a.buf[:0]
	if a.json {
		b = a.jsonHead(b, r.RemoteAddr, end)
		b = append(b, `,"host":`...)
		b = appendJSONString(b, clip(r.Host, maxLoggedText))
		b = append(b, `,"method":`...)
		b = appendJSONString(b, clip(method, maxLoggedText))
		b = append(b, `,"uri":`...)
		b = appendJSONString(b, uri)
		b = append(b, `,"proto":`...)
		b = appendJSONString(b, r.Proto)
		b = append(b, `,"status":`...)
		b = strconv.AppendInt(b, int64(status), 10)
		b = append(b, `,"bytes":`...)
		b = strconv.AppendInt(b, bytes, 10)
		b = append(b, `,"duration_seconds":`...)
		b = strconv.AppendFloat(b, end.Sub(begin).Seconds(), 'f', -1, 64)
		b = append(b, `,"user_agent":`...)
		b = appendJSONString(b, clip(r.UserAgent(), maxLoggedText))
		b = append(b, "}\n"...)
	} else {
		// The common log format: host ident authuser [date] "request"
		// status bytes ("-" for none).
		b = append(b, clfHost(r.RemoteAddr)...)
		b = append(b, " - - ["...)
		b = end.AppendFormat(b, "02/Jan/2006:15:04:05 -0700")
		b = append(b, `] "`...)
		b = appendCLFText(b, clip(method, maxLoggedText))
		b = append(b, ' ')
		b = appendCLFText(b, uri)
		b = append(b, ' ')
		b = appendCLFText(b, r.Proto)
		b = append(b, `" `...)
		if status == 0 {
			b = append(b, '-')
		} else {
			b = strconv.AppendInt(b, int64(status), 10)
		}
		b = append(b, ' ')
		if bytes == 0 {
			b = append(b, '-')
		} else {
			b = strconv.AppendInt(b, bytes, 10)
		}
		b = append(b, '\n')
	}
	a.buf = b
	a.w.Write(b)
}

// conn logs one connection of a handler whose protocol the host does not
// see: its peer, the bytes read and written and how long it was served.
func (a *accessLog) conn(remote string, in, out int64, begin, end time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	b := a.buf[:0]
	if a.json {
		b = a.jsonHead(b, remote, end)
		b = append(b, `,"bytes_in":`...)
		b = strconv.AppendInt(b, in, 10)
		b = append(b, `,"bytes":`...)
		b = strconv.AppendInt(b, out, 10)
		b = append(b, `,"duration_seconds":`...)
		b = strconv.AppendFloat(b, end.Sub(begin).Seconds(), 'f', -1, 64)
		b = append(b, "}\n"...)
	} else {
		// The common log format's fields, the request being "-" (no HTTP
		// seen), then the bytes read and the seconds taken.
		b = append(b, clfHost(remote)...)
		b = append(b, " - - ["...)
		b = end.AppendFormat(b, "02/Jan/2006:15:04:05 -0700")
		b = append(b, `] "-" - `...)
		b = strconv.AppendInt(b, out, 10)
		b = append(b, ' ')
		b = strconv.AppendInt(b, in, 10)
		b = append(b, ' ')
		b = strconv.AppendFloat(b, end.Sub(begin).Seconds(), 'f', 6, 64)
		b = append(b, '\n')
	}
	a.buf = b
	a.w.Write(b)
}

// jsonHead begins a JSON line: time, tenant, worker and peer.
func (a *accessLog) jsonHead(b []byte, remote string, end time.Time) []byte {
	b = append(b, `{"time":"`...)
	b = end.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","tenant":`...)
	b = appendJSONString(b, a.tenant)
	b = append(b, `,"worker":`...)
	b = strconv.AppendInt(b, int64(a.worker), 10)
	b = append(b, `,"remote":`...)
	return appendJSONString(b, remote)
}

// clfHost is the address without its port.
func clfHost(addr string) string {
	for i := len(addr) - 1; i >= 0; i-- {
		if addr[i] == ':' {
			h := addr[:i]
			if len(h) > 1 && h[0] == '[' && h[len(h)-1] == ']' {
				h = h[1 : len(h)-1]
			}
			return h
		}
	}
	if addr == "" {
		return "-"
	}
	return addr
}

// appendJSONString appends s as a JSON string: quotes, backslashes and
// control bytes escaped, invalid UTF-8 as U+FFFD.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	for _, r := range s { // an invalid byte comes as utf8.RuneError
		switch {
		case r == '"' || r == '\\':
			b = append(b, '\\', byte(r))
		case r < 0x20 || r == 0x7f:
			b = append(b, `\u00`...)
			b = append(b, "0123456789abcdef"[r>>4], "0123456789abcdef"[r&15])
		default:
			b = utf8.AppendRune(b, r)
		}
	}
	return append(b, '"')
}

// appendCLFText appends s with quotes, backslashes and control bytes
// escaped, so that a request line cannot forge a log line.
func appendCLFText(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20 || c == 0x7f:
			b = append(b, `\x`...)
			b = append(b, "0123456789abcdef"[c>>4], "0123456789abcdef"[c&15])
		default:
			b = append(b, c)
		}
	}
	return b
}

// statusClass is the index of status's class in Stats.Responses (1xx is
// 0), or -1 outside 100–599.
func statusClass(status int) int {
	if status < 100 || status > 599 {
		return -1
	}
	return status/100 - 1
}
