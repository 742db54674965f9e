package tests

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// pebbleModule is Let's Encrypt's test ACME server, built by the tests
// with the module proxy (a build failure fails the test).
const pebbleModule = "github.com/letsencrypt/pebble/v2"

const pebbleVersion = "v2.10.3"

var pebbleBuild struct {
	once     sync.Once
	bin, dir string // the binary; the module's files (its test certificates)
	err      error
}

// buildPebble installs Pebble's command into the tests' temp dir, once.
func buildPebble(t *testing.T) (bin, moduleDir string) {
	t.Helper()
	pebbleBuild.once.Do(func() {
		gobin := filepath.Join(env.dir, "pebble-bin")
		cmd := exec.Command("go", "install", pebbleModule+"/cmd/pebble@"+pebbleVersion)
		cmd.Env = append(os.Environ(), "GOBIN="+gobin, "GOFLAGS=")
		if b, err := cmd.CombinedOutput(); err != nil {
			pebbleBuild.err = fmt.Errorf("go install pebble: %v\n%s", err, b)
			return
		}
		pebbleBuild.bin = filepath.Join(gobin, "pebble")
		b, err := exec.Command("go", "mod", "download", "-json", pebbleModule+"@"+pebbleVersion).Output()
		if err != nil {
			pebbleBuild.err = fmt.Errorf("go mod download pebble: %v", err)
			return
		}
		var m struct{ Dir string }
		if err := json.Unmarshal(b, &m); err != nil || m.Dir == "" {
			pebbleBuild.err = fmt.Errorf("go mod download pebble: no Dir in %s", b)
			return
		}
		pebbleBuild.dir = m.Dir
	})
	if pebbleBuild.err != nil {
		t.Fatal(pebbleBuild.err)
	}
	return pebbleBuild.bin, pebbleBuild.dir
}

// pebble is a running Pebble.
type pebble struct {
	*server
	directory string // its ACME directory URL
	mgmt      string // its management address
	minica    string // the root of its own HTTPS certificate (ca_root)
}

// localDNS answers every A question with 127.0.0.1 (and AAAA with
// nothing), so that Pebble validates the tenants' names on loopback. It
// stops at cleanup.
func localDNS(t *testing.T) string {
	t.Helper()
	// Pebble asks over TCP: the same port for both (a port free for UDP
	// may be taken for TCP: another then).
	var pc net.PacketConn
	var l net.Listener
	for try := 0; l == nil; try++ {
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if l, err = net.Listen("tcp", pc.LocalAddr().String()); err != nil {
			pc.Close()
			if try == 10 {
				t.Fatal(err)
			}
		}
	}
	answer := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		for _, question := range q.Question {
			if question.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{
					Hdr: dns.RR_Header{Name: question.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 0},
					A:   net.IPv4(127, 0, 0, 1)})
			}
		}
		w.WriteMsg(m)
	})
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: answer}, {Listener: l, Handler: answer}} {
		go srv.ActivateAndServe()
		t.Cleanup(func() { srv.Shutdown() })
	}
	return pc.LocalAddr().String()
}

// startPebble runs Pebble validating HTTP-01 on httpPort and TLS-ALPN-01
// on tlsPort (wcluster's), issuing certificates valid for validity.
func startPebble(t *testing.T, httpPort, tlsPort int, validity time.Duration) *pebble {
	t.Helper()
	bin, mod := buildPebble(t)
	p := &pebble{minica: filepath.Join(mod, "test", "certs", "pebble.minica.pem")}
	port, mgmt := freePort(t), freePort(t)
	p.directory = fmt.Sprintf("https://localhost:%d/dir", port)
	p.mgmt = fmt.Sprintf("127.0.0.1:%d", mgmt)
	cfg := map[string]any{"pebble": map[string]any{
		"listenAddress": fmt.Sprintf("127.0.0.1:%d", port), "managementListenAddress": p.mgmt,
		"certificate": filepath.Join(mod, "test", "certs", "localhost", "cert.pem"),
		"privateKey":  filepath.Join(mod, "test", "certs", "localhost", "key.pem"),
		"httpPort":    httpPort, "tlsPort": tlsPort,
		"profiles": map[string]any{"default": map[string]any{"description": "test", "validityPeriod": int(validity.Seconds())}},
	}}
	b, _ := json.Marshal(cfg)
	path := filepath.Join(t.TempDir(), "pebble.json")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-config", path, "-dnsserver", localDNS(t))
	// No sleep before validating, no nonce refused at random, no
	// authorization reused: every order is validated by wcluster's answer.
	s, err := launch(t, cmd, noWait(), withEnv("PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0", "PEBBLE_AUTHZREUSE=0"))
	if err != nil {
		t.Fatal(err)
	}
	s.waitOutput(`ACME directory available at`, 30*time.Second)
	p.server = s
	return p
}

// root is the root Pebble issues under (it makes a new one each start).
func (p *pebble) root(t *testing.T) *x509.CertPool {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: certPool(t, p.minica)}}}
	var resp *http.Response
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if resp, err = client.Get("https://" + p.mgmt + "/roots/0"); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatalf("pebble root: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("pebble root: %d %v", resp.StatusCode, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatalf("pebble root: no PEM in %q", b)
	}
	return pool
}

// acmeGet does a GET / over TLS to addr for name, verified against roots,
// on a new connection; it returns the serial number of the certificate
// served.
func acmeGet(addr, name string, roots *x509.CertPool) (serial string, err error) {
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: &tls.Config{RootCAs: roots, ServerName: name}}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	cs := c.(*tls.Conn).ConnectionState()
	if _, err := fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", name); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return "", err
	}
	if !bytes.HasPrefix(b, []byte("HTTP/1.1 200")) {
		return "", fmt.Errorf("answer %q", b)
	}
	return cs.PeerCertificates[0].SerialNumber.String(), nil
}

// waitACMECert waits (bounded) until addr serves name a certificate
// verified against roots, and returns its serial number.
func waitACMECert(t *testing.T, addr, name string, roots *x509.CertPool, d time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		serial, err := acmeGet(addr, name, roots)
		if err == nil {
			return serial
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s for %s: no certificate from the CA within %v: %v", addr, name, d, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// acmeConfig is a config (2 workers, policy sched) with tenant "site" on
// TLS address tlsAddr getting its certificates for hosts (TOML strings)
// from Pebble, allowing challenges (and the tls keys renew), and tenant
// "web", the plaintext default of httpAddr.
func acmeConfig(t *testing.T, dir string, p *pebble, sched, tlsAddr, httpAddr, hosts, challenges, renew string) string {
	t.Helper()
	cfg := filepath.Join(dir, "wcluster.toml")
	writeConfig(t, cfg, fmt.Sprintf(`[cluster]
workers = 2
sched = %q
cache_dir = %q

[[tenant]]
name = "site"
handler = %q
listen = [%q]
hosts = [%s]
tls = { acme = true, ca = %q, ca_root = %q, email = "ops@site.test", storage = "acme", challenges = [%s]%s }

[[tenant]]
name = "web"
handler = %q
listen = [%q]
`, sched, env.cache, guest(t, "go-hello"), tlsAddr, hosts, p.directory, p.minica, challenges, renew, guest(t, "go-hello"), httpAddr))
	return cfg
}

// TestACMETLSALPN: a tenant with tls acme gets its certificates from
// Pebble, one per host name, through TLS-ALPN-01 answered by the workers'
// TLS (policy shared), and serves them by SNI; a reload keeps them;
// restarted with the same storage and Pebble stopped, wcluster serves the
// stored ones at once.
func TestACMETLSALPN(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tlsPort, httpPort := freePort(t), freePort(t)
	p := startPebble(t, httpPort, tlsPort, time.Hour)
	roots := p.root(t)
	tlsAddr := fmt.Sprintf("127.0.0.1:%d", tlsPort)
	// Policy shared: the workers accept connections themselves, so the
	// CA validates only once each has confirmed the challenge.
	// Two names: a certificate each, the handshake picking by SNI.
	names := []string{"site.test", "www.site.test"}
	cfg := acmeConfig(t, dir, p, "shared", tlsAddr, fmt.Sprintf("127.0.0.1:%d", httpPort), `"site.test", "www.site.test"`, `"tls-alpn-01"`, "")
	if out, err := run(t, "check", "--config", cfg); err != nil || !strings.Contains(out, "tenant site: ") ||
		!strings.Contains(out, "; certificates from ACME CA "+p.directory+" (tls-alpn-01), stored in ") {
		t.Errorf("check --config does not say where site's certificates come from: %v\n%s", err, out)
	}

	s := startConfig(t, cfg)
	// Every worker serving both: under policy shared a worker of the
	// generation before (one name still self-signed) may still accept
	// until the reload that replaces it is done.
	s.waitOutput(`acme: the workers serve the new certificates.* self_signed=0`, 60*time.Second)
	serials := map[string]string{}
	for _, name := range names {
		serials[name] = waitACMECert(t, tlsAddr, name, roots, 30*time.Second)
	}
	if serials[names[0]] == serials[names[1]] {
		t.Errorf("one certificate for both names, want one each")
	}
	if strings.Contains(s.output(), "not every worker confirmed") {
		t.Error("the workers did not confirm the challenge")
	}
	// A reload keeps them: the same served, nothing asked again.
	// (The certificates' own arrival reloaded the workers already.)
	reloads := strings.Count(s.output(), "reload complete")
	s.cmd.Process.Signal(syscall.SIGHUP)
	s.waitOutput(fmt.Sprintf(`(?s)(reload complete.*){%d}`, reloads+1), 60*time.Second)
	for _, name := range names {
		if got, err := acmeGet(tlsAddr, name, roots); err != nil || got != serials[name] {
			t.Errorf("%s after a reload: serial %s, %v; want %s", name, got, err, serials[name])
		}
	}
	if n := strings.Count(s.output(), "acme: obtaining a certificate"); n != len(names) {
		t.Errorf("%d certificates asked for, want %d", n, len(names))
	}

	s.stop()
	p.stop()
	s = startConfig(t, cfg)
	// Served from the first request: the CA (stopped) is not asked.
	for _, name := range names {
		if got, err := acmeGet(tlsAddr, name, roots); err != nil || got != serials[name] {
			t.Fatalf("%s after a restart with the same storage: serial %s, %v; want the stored %s", name, got, err, serials[name])
		}
	}
	if strings.Contains(s.output(), "acme: obtaining") {
		t.Errorf("the restarted master asked the CA for a certificate it had stored")
	}
}

// TestACMEHTTP01Renewal: a tenant's certificate comes through HTTP-01,
// answered by the host on the plaintext listener of another tenant
// (whose guest never sees it), and is renewed (Pebble issues for 30 s,
// renewal comes with 60% of that left) while clients keep connecting:
// the new certificate replaces the old without a failed request. A
// renewal failing (Pebble stopped) is logged, and the current certificate
// serves on.
func TestACMEHTTP01Renewal(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tlsPort, httpPort := freePort(t), freePort(t)
	p := startPebble(t, httpPort, tlsPort, 30*time.Second)
	roots := p.root(t)
	tlsAddr, httpAddr := fmt.Sprintf("127.0.0.1:%d", tlsPort), fmt.Sprintf("127.0.0.1:%d", httpPort)
	cfg := acmeConfig(t, dir, p, "rr", tlsAddr, httpAddr, `"site.test"`, `"http-01"`, `, renew_check = "1s", renew_window = 0.6`)

	s := startConfig(t, cfg)
	s.waitOutput(`acme: certificate obtained.*host=site.test`, 30*time.Second)
	first := waitACMECert(t, tlsAddr, "site.test", roots, 30*time.Second)
	// The plaintext tenant is still served, and an unknown token is its.
	if code, _ := mustGet(t, httpAddr, "site.test", "/.well-known/acme-challenge/unknown"); code != 200 {
		t.Errorf("an unknown token: %d, want the guest's 200", code)
	}

	// Until the renewed certificate is served, every request succeeds.
	deadline := time.Now().Add(40 * time.Second)
	requests := 0
	for {
		serial, err := acmeGet(tlsAddr, "site.test", roots)
		requests++
		if err != nil {
			t.Fatalf("request %d during renewal: %v", requests, err)
		}
		if serial != first {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("certificate %s not renewed within 40 s", first)
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.waitOutput(`acme: certificate obtained.*renewal=true`, 5*time.Second)
	t.Logf("renewed after %d requests, none failed", requests)

	// The CA gone, the next renewal fails: logged, and the current
	// certificate keeps serving.
	renewed, err := acmeGet(tlsAddr, "site.test", roots)
	if err != nil {
		t.Fatal(err)
	}
	p.stop()
	s.waitOutput(`level=ERROR msg="acme: renewal failed; the current certificate keeps serving`, 30*time.Second)
	if serial, err := acmeGet(tlsAddr, "site.test", roots); err != nil || serial != renewed {
		t.Fatalf("after a failed renewal: serial %s, %v; want the current %s", serial, err, renewed)
	}
}
