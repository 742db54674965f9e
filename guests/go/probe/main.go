//go:build wasip1

// Command probe is an HTTP handler that reports what its sandbox lets it do,
// for wcluster's isolation tests. Every answer is text/plain:
//
//	GET /               "tenant NAME": config value "name", else env TENANT
//	GET /env            its environment, one KEY=value a line
//	GET /config?k=KEY   config_get(KEY): 200 and the value, or 404
//	GET /file?path=P    reads file P: 200 and its bytes, or 403 and the error
//	GET /net            tries every way WASI preview 1 has to get a socket
//	                    (socket(2) through Go's syscall, and sock_accept on
//	                    descriptors 0..63, in case the host pre-opened a
//	                    listener): 403 listing the failures (the expected
//	                    case), 200 if any succeeded
//	GET /alloc?mb=N     allocates and touches N MiB, then answers 200
//	GET /loop           spins forever (only the time limit stops it)
//	GET /crash          panics (the instance traps)
//
// It honours keep-alive (returning Keep between requests), pipelining and
// FlagDraining, and answers requests without a body only.
package main

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/wcluster/wcluster/guests/go/wcluster"
)

const maxHeader = 16 << 10

var (
	in   = make([]byte, maxHeader)
	sink [][]byte
)

func init() { wcluster.Handle(serve) }

func main() {}

// serve answers every complete request the peer sent, then pushes back an
// incomplete tail (the host calls again when more bytes arrive).
func serve(flags wcluster.Flags) wcluster.Action {
	n := 0
	for {
		m, err := wcluster.Read(in[n:])
		if err != nil {
			return wcluster.Close
		}
		n += m
		buf := in[:n]
		answered := false
		for {
			end := bytes.Index(buf, []byte("\r\n\r\n"))
			if end < 0 {
				break
			}
			keep := answer(string(buf[:end])) && flags&wcluster.Draining == 0
			if !keep {
				return wcluster.Close
			}
			buf = buf[end+4:]
			answered = true
		}
		if len(buf) == 0 {
			return wcluster.Keep
		}
		if answered {
			if wcluster.Unread(buf) != nil {
				return wcluster.Close
			}
			return wcluster.Keep
		}
		if len(buf) == len(in) {
			reply(431, "request header too large\n", false)
			return wcluster.Close
		}
		n = copy(in, buf)
	}
}

// answer serves one request and reports whether the connection stays open.
func answer(head string) bool {
	line, headers, _ := strings.Cut(head, "\r\n")
	parts := strings.Split(line, " ")
	if len(parts) != 3 || !strings.HasPrefix(parts[2], "HTTP/1.") {
		reply(400, "bad request line\n", false)
		return false
	}
	keep := parts[2] == "HTTP/1.1"
	for _, h := range strings.Split(headers, "\r\n") {
		name, value, _ := strings.Cut(h, ":")
		if strings.EqualFold(strings.TrimSpace(name), "connection") {
			switch strings.ToLower(strings.TrimSpace(value)) {
			case "close":
				keep = false
			case "keep-alive":
				keep = true
			}
		}
	}
	path, query, _ := strings.Cut(parts[1], "?")
	q := parseQuery(query)
	switch path {
	case "/":
		name, ok := wcluster.Config("name")
		if !ok {
			name = os.Getenv("TENANT")
		}
		reply(200, "tenant "+name+"\n", keep)
	case "/env":
		reply(200, strings.Join(os.Environ(), "\n")+"\n", keep)
	case "/config":
		if v, ok := wcluster.Config(q["k"]); ok {
			reply(200, v, keep)
		} else {
			reply(404, "config "+strconv.Quote(q["k"])+" not set\n", keep)
		}
	case "/file":
		b, err := os.ReadFile(q["path"])
		if err != nil {
			reply(403, "error: "+err.Error()+"\n", keep)
		} else {
			reply(200, string(b), keep)
		}
	case "/net":
		code, report := 403, ""
		if fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0); err != nil {
			report += "socket: error: " + err.Error() + "\n"
		} else {
			code, report = 200, report+"socket: got fd "+strconv.Itoa(fd)+"\n"
		}
		refused := map[string]int{}
		for fd := 0; fd < 64; fd++ {
			if nfd, _, err := syscall.Accept(fd); err != nil {
				refused[err.Error()]++
			} else {
				code, report = 200, report+"sock_accept("+strconv.Itoa(fd)+"): got fd "+strconv.Itoa(nfd)+"\n"
			}
		}
		for e, n := range refused {
			report += "sock_accept: error: " + e + " (" + strconv.Itoa(n) + " fds)\n"
		}
		reply(code, report, keep)
	case "/alloc":
		mb, _ := strconv.Atoi(q["mb"])
		total := 0
		for i := 0; i < mb; i++ {
			b := make([]byte, 1<<20)
			for j := 0; j < len(b); j += 4096 {
				b[j] = 1
			}
			sink = append(sink, b)
			total++
		}
		sink = nil
		reply(200, "allocated "+strconv.Itoa(total)+" MiB\n", keep)
	case "/loop":
		for i := 0; ; i++ {
			if i < 0 {
				break
			}
		}
		reply(500, "loop ended\n", false)
		return false
	case "/crash":
		panic("probe asked to crash")
	default:
		reply(404, "no such probe\n", keep)
	}
	return keep
}

// parseQuery reads "a=1&b=2" (with %XX escapes) into a map.
func parseQuery(s string) map[string]string {
	m := map[string]string{}
	for _, kv := range strings.Split(s, "&") {
		k, v, _ := strings.Cut(kv, "=")
		if k != "" {
			m[unescape(k)] = unescape(v)
		}
	}
	return m
}

func unescape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '+':
			b.WriteByte(' ')
		case c == '%' && i+2 < len(s):
			if v, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(v))
				i += 2
				continue
			}
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func reply(status int, body string, keep bool) {
	var b strings.Builder
	b.WriteString("HTTP/1.1 ")
	b.WriteString(strconv.Itoa(status))
	b.WriteString(" ")
	b.WriteString(statusText(status))
	b.WriteString("\r\nContent-Type: text/plain\r\nContent-Length: ")
	b.WriteString(strconv.Itoa(len(body)))
	b.WriteString("\r\nX-Wcluster-Worker: ")
	b.WriteString(strconv.Itoa(wcluster.WorkerID()))
	if !keep {
		b.WriteString("\r\nConnection: close")
	}
	b.WriteString("\r\n\r\n")
	b.WriteString(body)
	wcluster.Write([]byte(b.String()))
}

func statusText(code int) string {
	switch code {
	case 200:
		return "OK"
	case 400:
		return "Bad Request"
	case 403:
		return "Forbidden"
	case 404:
		return "Not Found"
	case 431:
		return "Request Header Fields Too Large"
	}
	return "Internal Server Error"
}
