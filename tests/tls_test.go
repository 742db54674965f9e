package tests

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSingleHandlerTLS: serve HANDLER --tls-cert --tls-key terminates TLS in
// the host (keep-alive included) and the guest answers in plaintext; a bad
// key pair stops the start with one line.
func TestSingleHandlerTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert, key := writeTestCert(t, dir, "one", "localhost")
	s := start(t, "--workers", "2", "--tls-cert", cert, "--tls-key", key)
	pool := certPool(t, cert)
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"},
	}}
	url := "https://" + s.addr + "/"
	workers := map[string]int{}
	for i := 0; i < 20; i++ {
		resp, err := client.Get(url)
		if err != nil {
			t.Fatalf("request %d over TLS: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "hello world\n" || resp.TLS == nil {
			t.Fatalf("request %d: %d %q tls=%v", i, resp.StatusCode, b, resp.TLS != nil)
		}
		workers[resp.Header.Get("X-Wcluster-Worker")]++
	}
	t.Logf("20 requests over TLS, by worker: %v", workers)
	// Plaintext on the TLS port is not served as HTTP.
	if body, _, err := get(t.Context(), newClient(), "http://"+s.addr+"/", true); err == nil && body == "hello world\n" {
		t.Fatal("plaintext request answered on the TLS port")
	}

	other, otherKey := writeTestCert(t, dir, "two", "localhost")
	_ = other
	out, err := run(t, "serve", "--listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", otherKey)
	if err == nil || !strings.Contains(out, "--tls-cert/--tls-key") || strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Fatalf("mismatched key: want one line naming the flags and an error exit, got %v:\n%s", err, out)
	}
}

// tlsServerSerial is the serial number of the certificate addr serves.
func tlsServerSerial(t *testing.T, addr, name string, pool *x509.CertPool) string {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, &tls.Config{RootCAs: pool, ServerName: name})
	if err != nil {
		t.Fatalf("TLS handshake with %s: %v", addr, err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

// killAllWorkers SIGKILLs every worker and waits for as many new ones to
// serve.
func killAllWorkers(t *testing.T, ctl string) {
	t.Helper()
	st := getStatus(t, ctl)
	old := map[int]bool{}
	for _, w := range st.Workers {
		old[w.PID] = true
		syscall.Kill(w.PID, syscall.SIGKILL)
	}
	waitStatus(t, ctl, "every worker replaced", func(s status) bool {
		n := 0
		for _, w := range s.Workers {
			if !old[w.PID] && w.State == "ready" {
				n++
			}
		}
		return n == len(old)
	})
}

// TestTLSCertificateFromMaster: workers serve the certificate the master
// read and checked, never the files. A broken key on disk after a refused
// reload, and then a valid other certificate dropped in without a reload,
// each survive SIGKILL of every worker: the master lives and the
// certificate it accepted is the one served.
func TestTLSCertificateFromMaster(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert, key := writeTestCert(t, dir, "one", "localhost")
	pool := certPool(t, cert)
	s, ctl := startControlled(t, "--workers", "2", "--tls-cert", cert, "--tls-key", key, "--admin", "127.0.0.1:0")
	want := tlsServerSerial(t, s.addr, "localhost", pool)
	admin := "http://" + adminAddr(t, s) + "/metrics"
	checkCertStatus(t, ctl, admin, cert)

	if err := os.WriteFile(key, []byte("-----BEGIN PRIVATE KEY-----\nbroken\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	syscall.Kill(s.cmd.Process.Pid, syscall.SIGHUP)
	s.waitOutput("reload failed; the old workers keep serving", 30*time.Second)
	// (Each phase kills every worker once: 4 kills in all, under the
	// crash-loop breaker's 5 in 30 s, which a worker failing on the
	// broken key would have passed at once.)
	killAllWorkers(t, ctl)
	for i := range 4 {
		if got := tlsServerSerial(t, s.addr, "localhost", pool); got != want {
			t.Fatalf("connection %d after SIGKILL of every worker: certificate %s served, want the accepted %s", i, got, want)
		}
	}

	// A valid renewal on disk, no reload: still the accepted one, on
	// every worker, restarted or not.
	other, otherKey := writeTestCert(t, dir, "two", "localhost")
	for _, p := range [][2]string{{other, cert}, {otherKey, key}} {
		b, err := os.ReadFile(p[0])
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(p[1], b, 0o600)
	}
	killAllWorkers(t, ctl)
	for i := range 4 {
		if got := tlsServerSerial(t, s.addr, "localhost", pool); got != want {
			t.Fatalf("connection %d after a renewal on disk without reload: certificate %s, want %s", i, got, want)
		}
	}
	// The reload takes it.
	syscall.Kill(s.cmd.Process.Pid, syscall.SIGHUP)
	s.waitOutput(`reload complete`, 30*time.Second)
	renewed := tlsServerSerial(t, s.addr, "localhost", certPool(t, cert))
	if renewed == want {
		t.Fatalf("after reload: still certificate %s", want)
	}
	checkCertStatus(t, ctl, admin, cert)
	if s.cmd.ProcessState != nil {
		t.Fatal("master exited")
	}
}

// TestTLSSessionsResumeOnAnyWorker: a client keeping only its latest
// session resumes on reconnect whichever of 2 workers (rr) takes the
// connection, and across a reload.
func TestTLSSessionsResumeOnAnyWorker(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert, key := writeTestCert(t, dir, "one", "localhost")
	s := start(t, "--workers", "2", "--tls-cert", cert, "--tls-key", key)
	cfg := &tls.Config{RootCAs: certPool(t, cert), ServerName: "localhost", ClientSessionCache: tls.NewLRUClientSessionCache(1)}
	connect := func(i int) (resumed bool, worker string) {
		t.Helper()
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", s.addr, cfg)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		// A request answered: the client has read the session ticket that
		// came after the handshake.
		fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		return c.ConnectionState().DidResume, resp.Header.Get("X-Wcluster-Worker")
	}
	connect(0)
	resumed, workers := 0, map[string]int{}
	for i := 1; i <= 10; i++ {
		r, w := connect(i)
		workers[w]++
		if r {
			resumed++
		}
	}
	t.Logf("10 reconnects: %d resumed; by worker %v", resumed, workers)
	if resumed < 9 || len(workers) < 2 {
		t.Fatalf("%d of 10 reconnects resumed over workers %v; want ≥ 9 over both", resumed, workers)
	}
	syscall.Kill(s.cmd.Process.Pid, syscall.SIGHUP)
	s.waitOutput(`reload complete`, 30*time.Second)
	if r, _ := connect(11); !r {
		t.Fatal("no resumption after a reload: the new workers did not get the keys")
	}
}

// TestTLSDefaults: TLS 1.2 only with AEAD suites (a CBC-SHA1 client is
// refused), ALPN http/1.1, the unrecognized_name alert for an SNI no
// tenant serves, a 400 for plaintext HTTP on the TLS port, and failed
// handshakes counted but not logged at info.
func TestTLSDefaults(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert, _ := writeTestCert(t, dir, "site", "site.test")
	port := freePort(t)
	ctl := filepath.Join(dir, "ctl.sock")
	cfg := filepath.Join(dir, "wcluster.toml")
	writeConfig(t, cfg, fmt.Sprintf(`[cluster]
workers = 1
cache_dir = %q
control = %q

[[tenant]]
name = "site"
handler = %q
listen = ["127.0.0.1:%d"]
hosts = ["site.test"]
tls = { cert = "site.pem", key = "site-key.pem" }
`, env.cache, ctl, probeGuest(t), port))
	s := startConfig(t, cfg)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	pool := certPool(t, cert)
	dial := func(c *tls.Config) (*tls.Conn, error) {
		return tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, c)
	}

	c, err := dial(&tls.Config{RootCAs: pool, ServerName: "site.test", NextProtos: []string{"h2", "http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	if p := c.ConnectionState().NegotiatedProtocol; p != "http/1.1" {
		t.Errorf("ALPN: %q negotiated, want http/1.1", p)
	}
	c.Close()
	for _, suite := range []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA} {
		c, err := dial(&tls.Config{RootCAs: pool, ServerName: "site.test", MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{suite}})
		if err == nil {
			c.Close()
			t.Errorf("TLS 1.2 with %s accepted", tls.CipherSuiteName(suite))
		}
	}
	if c, err := dial(&tls.Config{RootCAs: pool, ServerName: "site.test", MaxVersion: tls.VersionTLS12}); err != nil {
		t.Errorf("TLS 1.2 with the default suites: %v", err)
	} else if s := c.ConnectionState().CipherSuite; !strings.Contains(tls.CipherSuiteName(s), "GCM") && !strings.Contains(tls.CipherSuiteName(s), "CHACHA20") {
		t.Errorf("TLS 1.2 suite %s", tls.CipherSuiteName(s))
		c.Close()
	} else {
		c.Close()
	}
	_, err = dial(&tls.Config{InsecureSkipVerify: true, ServerName: "nobody.test"})
	if err == nil || !strings.Contains(err.Error(), "unrecognized name") {
		t.Errorf("SNI nobody.test: %v, want the alert unrecognized name", err)
	}

	pc, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	pc.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprint(pc, "GET / HTTP/1.1\r\nHost: site.test\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(pc), nil)
	if err != nil || resp.StatusCode != 400 {
		t.Errorf("plaintext HTTP on the TLS port: %v %v, want 400", resp, err)
	} else {
		b, _ := io.ReadAll(resp.Body)
		if !strings.Contains(string(b), "HTTPS") {
			t.Errorf("400 body %q", b)
		}
	}
	pc.Close()

	waitStatus(t, ctl, "failed handshakes counted", func(st status) bool {
		return len(st.Workers) == 1 && st.Workers[0].Handler.TLSFailures >= 4
	})
	if strings.Contains(s.output(), "TLS handshake failed") {
		t.Errorf("a failed handshake was logged at info:\n%s", s.output())
	}
}

// checkCertStatus: the status lists the certificate in the PEM file cert
// (the one served), with its names and expiry, and so do the metrics.
func checkCertStatus(t *testing.T, ctl, metrics, cert string) {
	t.Helper()
	b, err := os.ReadFile(cert)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	st := getStatus(t, ctl)
	if len(st.Groups) != 1 || len(st.Groups[0].Certificates) != 1 {
		t.Fatalf("status certificates: %+v", st.Groups)
	}
	c := st.Groups[0].Certificates[0]
	if int64(c.NotAfter) != leaf.NotAfter.Unix() || !slices.Equal(c.Names, leaf.DNSNames) {
		t.Fatalf("status certificate %+v, want names %v expiring %d", c, leaf.DNSNames, leaf.NotAfter.Unix())
	}
	_, scrape := httpGet(t, metrics)
	if v, ok := metricSum(scrape, "wcluster_certificate_expiry_timestamp_seconds"); !ok || int64(v) != leaf.NotAfter.Unix() {
		t.Fatalf("wcluster_certificate_expiry_timestamp_seconds = %v (present %v), want %d", v, ok, leaf.NotAfter.Unix())
	}
}
