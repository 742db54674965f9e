//go:build wasip1

// Command waf is a small web application firewall as an http-wasm handler
// (guests/go/httpwasm): every request's method, target, header values and
// body are matched against rules in the manner of the OWASP core rule set
// (SQL injection, cross-site scripting, path traversal, command injection,
// scanners), after URL-decoding. A match answers 403 naming the rule;
// otherwise the request goes on to the host's next handler, or, when the
// guest configuration is "terminal", is answered 200 here (a WAF in front
// of a trivial application: the benchmark's CPU-heavy guest).
package main

import (
	"io"
	"net/url"
	"regexp"
	"strings"

	"github.com/wcluster/wcluster/guests/go/httpwasm"
)

// rule is one pattern and its name.
type rule struct {
	name string
	re   *regexp.Regexp
}

// rules are matched case-insensitively against each decoded part.
var rules = []rule{
	{"sqli-union", regexp.MustCompile(`(?i)\bunion\b[\s(]+(all\s+)?select\b`)},
	{"sqli-tautology", regexp.MustCompile(`(?i)['"]\s*(or|and)\s+['"]?\w+['"]?\s*(=|like)\s*['"]?\w+`)},
	{"sqli-comment", regexp.MustCompile(`(?i)['")]\s*(--|#|/\*)|;\s*(drop|delete|insert|update|shutdown)\b`)},
	{"sqli-functions", regexp.MustCompile(`(?i)\b(sleep|benchmark|pg_sleep|waitfor\s+delay|load_file|into\s+outfile)\b\s*\(?`)},
	{"xss-script", regexp.MustCompile(`(?i)<\s*script\b|</\s*script\s*>`)},
	{"xss-handler", regexp.MustCompile(`(?i)\bon(error|load|click|mouseover|focus|blur|submit)\s*=`)},
	{"xss-uri", regexp.MustCompile(`(?i)(javascript|vbscript|data)\s*:`)},
	{"xss-tags", regexp.MustCompile(`(?i)<\s*(iframe|object|embed|svg|img|body|style|link|meta)\b`)},
	{"traversal", regexp.MustCompile(`(\.\./|\.\.\\|%2e%2e%2f|%2e%2e/|\.\.%2f)`)},
	{"lfi-files", regexp.MustCompile(`(?i)(/etc/(passwd|shadow|hosts)|c:\\windows\\|boot\.ini|/proc/self/)`)},
	{"rce-shell", regexp.MustCompile(`(?i)(;|\||&&|\$\(|` + "`" + `)\s*(cat|ls|id|whoami|uname|wget|curl|nc|bash|sh|python|perl)\b`)},
	{"rce-php", regexp.MustCompile(`(?i)<\?php|\b(eval|assert|system|passthru|shell_exec|base64_decode)\s*\(`)},
	{"ssrf-meta", regexp.MustCompile(`(?i)169\.254\.169\.254|metadata\.google\.internal`)},
	{"log4shell", regexp.MustCompile(`(?i)\$\{\s*(jndi|env|sys|lower|upper)\s*:`)},
	{"scanner-agent", regexp.MustCompile(`(?i)(sqlmap|nikto|nmap|masscan|dirbuster|acunetix|nessus|wpscan)`)},
	{"null-byte", regexp.MustCompile(`%00|\x00`)},
}

// inspect returns the first rule s matches, raw and URL-decoded.
func inspect(s string) string {
	if s == "" {
		return ""
	}
	parts := []string{s}
	if d, err := url.QueryUnescape(s); err == nil && d != s {
		parts = append(parts, d)
	}
	for _, p := range parts {
		for _, r := range rules {
			if r.re.MatchString(p) {
				return r.name
			}
		}
	}
	return ""
}

func init() {
	terminal := strings.TrimSpace(string(httpwasm.Config())) == "terminal"
	httpwasm.EnableFeatures(httpwasm.BufferRequest)
	httpwasm.HandleRequest(func(req httpwasm.Request, resp httpwasm.Response) (bool, uint32) {
		hit := inspect(req.Method() + " " + req.URI())
		h := req.Headers()
		for _, name := range h.Names() {
			if hit != "" {
				break
			}
			for _, v := range h.Values(name) {
				if hit = inspect(v); hit != "" {
					break
				}
			}
		}
		if hit == "" {
			body, _ := io.ReadAll(req.Body())
			hit = inspect(string(body))
		}
		if hit != "" {
			resp.SetStatusCode(403)
			resp.Headers().Set("Content-Type", "text/plain")
			resp.Body().WriteString("blocked by rule " + hit + "\n")
			return false, 0
		}
		if terminal {
			resp.Headers().Set("Content-Type", "text/plain")
			resp.Body().WriteString("passed\n")
			return false, 0
		}
		return true, 0
	})
}

func main() {}
