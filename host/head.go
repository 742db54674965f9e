package host

import (
	"bytes"
	"strconv"
)

// maxHead is the largest request head the router reads (request line,
// header fields and the empty line); a longer one is answered 431.
const maxHead = 8 << 10

// head is what the router needs of a request head: where it ends, the host
// it names, and how the body that follows is framed.
type head struct {
	size    int    // bytes of the head, through its empty line
	host    []byte // the authority it names: an absolute-form target's, else Host's (empty for none); a view of the head
	length  int64  // Content-Length (0 without one)
	chunked bool   // Transfer-Encoding ends in chunked
	upgrade bool   // an Upgrade request or CONNECT: the connection may leave HTTP
	connect bool   // CONNECT
}

// badHead is a head the router refuses: the status it answers, and why.
type badHead struct {
	status int
	reason string
}

func (e *badHead) Error() string { return strconv.Itoa(e.status) + ": " + e.reason }

func bad(reason string) *badHead { return &badHead{400, reason} }

// parseHead parses the request head at the start of b, strictly: lines end
// in CRLF; a field name is a token followed at once by its colon (no
// whitespace between, RFC 9112 §5.1); no obsolete line folding; at most one
// Host, a valid authority, required in HTTP/1.1; one Content-Length of
// digits; Transfer-Encoding only ending in chunked, never with
// Content-Length. A head the host and a guest could read differently is
// the root of request smuggling: such heads get 400. complete is false (and
// err nil) while b holds no end of the head yet.
func parseHead(b []byte) (h head, complete bool, err *badHead) {
	end := bytes.Index(b, []byte("\r\n\r\n"))
	if end < 0 {
		// Reject what is already wrong (a bare LF) early; else wait.
		if i := bytes.IndexByte(b, '\n'); i >= 0 && (i == 0 || b[i-1] != '\r') {
			return h, false, bad("a line ends in a bare LF")
		}
		return h, false, nil
	}
	h.size = end + 4
	lines := b[:end+2] // each line with its CRLF
	i := bytes.IndexByte(lines, '\n')
	if i == 0 || lines[i-1] != '\r' {
		return h, true, bad("a line ends in a bare LF")
	}
	version, target, method, e := requestLine(lines[:i-1])
	if e != nil {
		return h, true, e
	}
	lines = lines[i+1:]
	hosts, lengths := 0, 0
	var hostField []byte
	var te [][]byte
	for len(lines) > 0 {
		i := bytes.IndexByte(lines, '\n')
		if lines[i-1] != '\r' {
			return h, true, bad("a line ends in a bare LF")
		}
		line := lines[:i-1]
		lines = lines[i+1:]
		if len(line) == 0 {
			return h, true, bad("an empty line inside the head")
		}
		if line[0] == ' ' || line[0] == '\t' {
			return h, true, bad("obsolete line folding (a line starting with whitespace)")
		}
		colon := 0
		for colon < len(line) && isTokenChar(line[colon]) {
			colon++
		}
		switch {
		case colon == len(line):
			return h, true, bad("a header line without a colon")
		case line[colon] == ' ' || line[colon] == '\t':
			return h, true, bad("whitespace between a field name and its colon")
		case line[colon] != ':':
			return h, true, bad("a field name with a character not allowed in a token")
		case colon == 0:
			return h, true, bad("an empty field name")
		}
		name, value := line[:colon], trimOWS(line[colon+1:])
		for _, c := range value {
			// (A bare CR or LF inside a line is a control character too.)
			if c < ' ' && c != '\t' || c == 0x7f {
				return h, true, bad("a control character in a field value")
			}
		}
		switch {
		case asciiEqualFold(name, "host"):
			hosts++
			hostField = value
		case asciiEqualFold(name, "content-length"):
			lengths++
			n, ok := parseLength(value)
			if !ok {
				return h, true, bad("Content-Length is not a number")
			}
			h.length = n
		case asciiEqualFold(name, "transfer-encoding"):
			te = append(te, value)
		case asciiEqualFold(name, "upgrade"):
			h.upgrade = true
		}
	}
	switch {
	case hosts > 1:
		return h, true, bad("more than one Host header")
	case hosts == 0 && version == 1:
		return h, true, bad("an HTTP/1.1 request without Host")
	case lengths > 1:
		return h, true, bad("more than one Content-Length")
	case hosts == 1 && !validAuthority(hostField, true):
		return h, true, bad("Host is not a valid authority (host[:port])")
	}
	if len(te) > 0 {
		if version == 0 {
			return h, true, bad("Transfer-Encoding in an HTTP/1.0 request")
		}
		if lengths > 0 {
			return h, true, bad("both Transfer-Encoding and Content-Length")
		}
		last := te[len(te)-1]
		if k := bytes.LastIndexByte(last, ','); k >= 0 {
			last = last[k+1:]
		}
		if !asciiEqualFold(trimOWS(last), "chunked") {
			return h, true, bad("Transfer-Encoding does not end in chunked: the body's length cannot be told")
		}
		h.chunked = true
	}
	h.host = hostField
	if string(method) == "CONNECT" {
		h.upgrade, h.connect = true, true
	}
	if auth, ok := absoluteAuthority(target); ok {
		if !validAuthority(auth, false) {
			return h, true, bad("the target's authority is not a valid host[:port]")
		}
		// RFC 9112 §3.2.2 has the server use the target's authority; a guest
		// reading Host must not see another name.
		if hosts == 1 && normalizeHost(string(auth)) != normalizeHost(string(h.host)) {
			return h, true, bad("Host differs from the authority of the absolute-form target")
		}
		h.host = auth
	} else if target[0] != '/' && !(len(target) == 1 && target[0] == '*') && string(method) != "CONNECT" {
		return h, true, bad("the request target is neither a path, an http(s) URI, nor *")
	}
	return h, true, nil
}

// requestLine checks "METHOD SP TARGET SP HTTP/1.x" and returns the minor
// version, the target and the method.
func requestLine(line []byte) (version int, target, method []byte, err *badHead) {
	sp := 0
	for sp < len(line) && isTokenChar(line[sp]) {
		sp++
	}
	if sp == 0 || sp == len(line) || line[sp] != ' ' {
		return 0, nil, nil, bad("a malformed request line")
	}
	method = line[:sp]
	rest := line[sp+1:]
	sp = bytes.IndexByte(rest, ' ')
	if sp <= 0 {
		return 0, nil, nil, bad("a malformed request line")
	}
	target, proto := rest[:sp], rest[sp+1:]
	for _, c := range target {
		if c <= ' ' || c == 0x7f {
			return 0, nil, nil, bad("a malformed request target")
		}
	}
	switch string(proto) {
	case "HTTP/1.1":
		return 1, target, method, nil
	case "HTTP/1.0":
		return 0, target, method, nil
	}
	return 0, nil, nil, bad("not an HTTP/1.0 or HTTP/1.1 request line")
}

// absoluteAuthority returns the authority of an http or https URI.
func absoluteAuthority(target []byte) ([]byte, bool) {
	var rest []byte
	switch {
	case len(target) > 7 && asciiEqualFold(target[:7], "http://"):
		rest = target[7:]
	case len(target) > 8 && asciiEqualFold(target[:8], "https://"):
		rest = target[8:]
	default:
		return nil, false
	}
	if j := bytes.IndexAny(rest, "/?#"); j >= 0 {
		rest = rest[:j]
	}
	return rest, true
}

// validAuthority reports whether s is host[:port] as RFC 3986 has it (no
// userinfo): a reg-name, an IPv4 address or a bracketed IPv6 address, and a
// port of at most 5 digits. empty allows "" (a Host with no value, which
// RFC 9112 §3.2 allows when the target has no authority).
func validAuthority(s []byte, empty bool) bool {
	if len(s) == 0 {
		return empty
	}
	host, port := s, []byte(nil)
	if s[0] == '[' {
		k := bytes.IndexByte(s, ']')
		if k < 2 {
			return false
		}
		for _, c := range s[1:k] {
			if !(isHex(c) || c == ':' || c == '.') {
				return false
			}
		}
		rest := s[k+1:]
		if len(rest) > 0 {
			if rest[0] != ':' {
				return false
			}
			port = rest[1:]
		}
		host = nil
	} else if k := bytes.IndexByte(s, ':'); k >= 0 {
		host, port = s[:k], s[k+1:]
		if len(host) == 0 {
			return false
		}
	}
	for i := 0; i < len(host); i++ {
		c := host[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '-', c == '.', c == '_', c == '~', c == '!', c == '$', c == '&', c == '\'',
			c == '(', c == ')', c == '*', c == '+', c == ',', c == ';', c == '=':
		case c == '%' && i+2 < len(host) && isHex(host[i+1]) && isHex(host[i+2]):
			i += 2
		default:
			return false
		}
	}
	if len(port) > 5 {
		return false
	}
	for _, c := range port {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// parseLength parses a Content-Length: digits only, at most 18.
func parseLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// isTokenChar reports whether c may appear in a token (RFC 9110 §5.6.2).
func isTokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '!', '#', '$', '%', '&', '\'', '*', '+', '-', '.', '^', '_', '`', '|', '~':
		return true
	}
	return false
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// asciiEqualFold reports whether b equals s (lower case) ignoring ASCII case.
func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range b {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// chunker follows a chunked body (RFC 9112 §7.1) as its bytes pass, to
// find where it ends: the chunks, the last chunk and the trailer section.
type chunker struct {
	state  chunkState
	size   int64 // data bytes left in the current chunk
	digits int
}

type chunkState uint8

const (
	ckSize      chunkState = iota // chunk-size hex digits
	ckExt                         // chunk extensions, up to CR
	ckSizeLF                      // the LF ending the size line
	ckData                        // chunk data
	ckDataCR                      // the CRLF after the data
	ckDataLF                      //
	ckTrailer                     // the start of a trailer line (or the final CRLF)
	ckTrailerLn                   // inside a trailer line
	ckTrailerLF                   // the LF ending a trailer line
	ckEndLF                       // the LF of the final CRLF
)

// scan follows b: used is how many of its bytes belong to the body (all
// of them unless it ended inside b: done), bad reports a malformed body.
func (k *chunker) scan(b []byte) (used int, done, bad bool) {
	i := 0
	for i < len(b) {
		c := b[i]
		switch k.state {
		case ckSize:
			switch {
			case isHex(c):
				if k.digits++; k.digits > 15 {
					return i, false, true
				}
				k.size = k.size<<4 | int64(hexVal(c))
			case k.digits == 0:
				return i, false, true
			case c == '\r':
				k.state = ckSizeLF
			case c == ';' || c == ' ' || c == '\t':
				k.state = ckExt
			default:
				return i, false, true
			}
		case ckExt:
			if c == '\r' {
				k.state = ckSizeLF
			} else if c == '\n' || c < ' ' && c != '\t' {
				return i, false, true
			}
		case ckSizeLF:
			if c != '\n' {
				return i, false, true
			}
			k.digits = 0
			if k.size == 0 {
				k.state = ckTrailer
			} else {
				k.state = ckData
			}
		case ckData:
			n := min(int64(len(b)-i), k.size)
			k.size -= n
			i += int(n)
			if k.size == 0 {
				k.state = ckDataCR
			}
			continue
		case ckDataCR:
			if c != '\r' {
				return i, false, true
			}
			k.state = ckDataLF
		case ckDataLF:
			if c != '\n' {
				return i, false, true
			}
			k.state = ckSize
		case ckTrailer:
			if c == '\r' {
				k.state = ckEndLF
			} else {
				k.state = ckTrailerLn
			}
		case ckTrailerLn:
			if c == '\r' {
				k.state = ckTrailerLF
			} else if c == '\n' {
				return i, false, true
			}
		case ckTrailerLF:
			if c != '\n' {
				return i, false, true
			}
			k.state = ckTrailer
		case ckEndLF:
			if c != '\n' {
				return i, false, true
			}
			return i + 1, true, false
		}
		i++
	}
	return i, false, false
}

func hexVal(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	}
	return c - 'a' + 10
}
