package tests

import (
	"crypto/tls"
	"io"
	"net/http"
	"strings"
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
