package tests

// Routing per request on a shared listener (docs/config.md, "Routing on a
// shared listener"): every request of a kept-alive connection, sequential
// or pipelined, reaches the tenant its own Host names; a host of another
// worker group gets 421; malformed heads get 400, oversized ones 431; and
// a real nginx with pooled upstream connections in front sends each request
// to its own tenant.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// startRouted serves alpha.test and beta.test on one port (group default)
// and gamma.test on another port in group "gamma", all with the probe guest
// answering "tenant NAME" on /. It returns the shared address and the
// control socket.
func startRouted(t *testing.T) (shared, ctl string) {
	t.Helper()
	dir := t.TempDir()
	probe := probeGuest(t)
	port, other := freePort(t), freePort(t)
	ctl = filepath.Join(dir, "ctl.sock")
	cfg := filepath.Join(dir, "wcluster.toml")
	writeConfig(t, cfg, fmt.Sprintf(`[cluster]
workers = 2
cache_dir = %q
control = %q

[[tenant]]
name = "alpha"
handler = %q
listen = ["127.0.0.1:%d"]
hosts = ["alpha.test"]
config = { name = "alpha" }

[[tenant]]
name = "beta"
handler = %q
listen = ["127.0.0.1:%d"]
hosts = ["beta.test"]
config = { name = "beta" }

[[tenant]]
name = "gamma"
handler = %q
listen = ["127.0.0.1:%d"]
hosts = ["gamma.test"]
config = { name = "gamma" }
group = "gamma"
workers = 1
`, env.cache, ctl, probe, port, probe, port, probe, other))
	startConfig(t, cfg)
	return fmt.Sprintf("127.0.0.1:%d", port), ctl
}

// dialRaw opens a connection with a deadline on the whole exchange.
func dialRaw(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

// readAnswer reads one response: status, body, and whether it asked to
// close the connection.
func readAnswer(t *testing.T, br *bufio.Reader) (int, string, bool) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading a response: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading a body: %v", err)
	}
	return resp.StatusCode, string(b), resp.Close
}

// expectClosed checks the server closed the connection after its answer
// (within 10s).
func expectClosed(t *testing.T, what string, c net.Conn, br *bufio.Reader) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, err := br.ReadByte(); err == nil {
		t.Errorf("%s: connection still open (read %q), want closed", what, b)
	}
}

func TestRoutingPerRequest(t *testing.T) {
	t.Parallel()
	shared, _ := startRouted(t)
	get := func(host string) string { return "GET / HTTP/1.1\r\nHost: " + host + "\r\n\r\n" }

	t.Run("sequential", func(t *testing.T) {
		c, br := dialRaw(t, shared)
		for i, r := range [][2]string{{"alpha.test", "alpha"}, {"beta.test", "beta"}, {"beta.test", "beta"},
			{"ALPHA.test:80", "alpha"}, {"beta.test.", "beta"}} {
			if _, err := io.WriteString(c, get(r[0])); err != nil {
				t.Fatal(err)
			}
			if code, body, closed := readAnswer(t, br); code != 200 || body != "tenant "+r[1]+"\n" || closed {
				t.Errorf("request %d (Host %s) on one connection: %d %q (close %v), want tenant %s", i, r[0], code, body, closed, r[1])
			}
		}
	})

	t.Run("pipelined", func(t *testing.T) {
		c, br := dialRaw(t, shared)
		hosts := []string{"beta.test", "alpha.test", "alpha.test", "beta.test", "alpha.test", "beta.test"}
		var all strings.Builder
		for _, h := range hosts {
			all.WriteString(get(h))
		}
		if _, err := io.WriteString(c, all.String()); err != nil {
			t.Fatal(err)
		}
		for i, h := range hosts {
			want := "tenant " + strings.TrimSuffix(h, ".test") + "\n"
			if code, body, _ := readAnswer(t, br); code != 200 || body != want {
				t.Errorf("pipelined request %d (Host %s): %d %q, want %q", i, h, code, body, want)
			}
		}
	})

	t.Run("other group", func(t *testing.T) {
		// First on its own connection, then after a request served, and
		// pipelined behind it.
		c, br := dialRaw(t, shared)
		io.WriteString(c, get("gamma.test"))
		if code, body, closed := readAnswer(t, br); code != http.StatusMisdirectedRequest || !closed {
			t.Errorf("Host gamma.test (group gamma) on the shared port: %d %q (close %v), want 421 and close", code, body, closed)
		}
		expectClosed(t, "after 421", c, br)

		c, br = dialRaw(t, shared)
		io.WriteString(c, get("alpha.test")+get("gamma.test")+get("beta.test"))
		if code, body, _ := readAnswer(t, br); code != 200 || body != "tenant alpha\n" {
			t.Errorf("alpha before gamma: %d %q", code, body)
		}
		if code, body, closed := readAnswer(t, br); code != http.StatusMisdirectedRequest || !closed {
			t.Errorf("gamma after alpha on one connection: %d %q (close %v), want 421 and close", code, body, closed)
		}
		expectClosed(t, "after 421 on a kept-alive connection", c, br)
	})

	t.Run("malformed", func(t *testing.T) {
		for name, head := range map[string]string{
			"space before colon": "GET / HTTP/1.1\r\nHost : alpha.test\r\n\r\n",
			"tab before colon":   "GET / HTTP/1.1\r\nHost\t: alpha.test\r\n\r\n",
			"obs-fold":           "GET / HTTP/1.1\r\nX-Note: a\r\n Host: beta.test\r\nHost: alpha.test\r\n\r\n",
			"folded Host":        "GET / HTTP/1.1\r\nHost: alpha.test\r\n beta.test\r\n\r\n",
			"duplicate Host":     "GET / HTTP/1.1\r\nHost: alpha.test\r\nHost: beta.test\r\n\r\n",
			"same Host twice":    "GET / HTTP/1.1\r\nHost: alpha.test\r\nhost: alpha.test\r\n\r\n",
			"bad authority":      "GET / HTTP/1.1\r\nHost: alpha.test/x\r\n\r\n",
			"userinfo":           "GET / HTTP/1.1\r\nHost: me@alpha.test\r\n\r\n",
			"bad port":           "GET / HTTP/1.1\r\nHost: alpha.test:http\r\n\r\n",
			"no Host in 1.1":     "GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n",
			"CL and TE":          "POST / HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
			"after a good one":   get("alpha.test") + "GET / HTTP/1.1\r\nHost :beta.test\r\n\r\n",
		} {
			c, br := dialRaw(t, shared)
			io.WriteString(c, head)
			if strings.HasPrefix(name, "after") {
				if code, body, _ := readAnswer(t, br); code != 200 || body != "tenant alpha\n" {
					t.Errorf("%s: first answer %d %q", name, code, body)
				}
			}
			if code, body, closed := readAnswer(t, br); code != http.StatusBadRequest || !closed {
				t.Errorf("%s: %d %q (close %v), want 400 and close", name, code, body, closed)
			}
			expectClosed(t, name, c, br)
		}
	})

	t.Run("oversized head", func(t *testing.T) {
		// The Host comes after 9 KiB of cookies: never the default tenant's
		// (nor any tenant's) to read.
		c, br := dialRaw(t, shared)
		go io.WriteString(c, "GET / HTTP/1.1\r\nCookie: "+strings.Repeat("s", 9<<10)+"\r\nHost: alpha.test\r\n\r\n")
		if code, body, closed := readAnswer(t, br); code != http.StatusRequestHeaderFieldsTooLarge || !closed {
			t.Errorf("9 KiB head: %d %q (close %v), want 431 and close", code, body, closed)
		}
	})
}

// TestRoutingBehindNginx: nginx, keeping upstream connections to the shared
// port (keepalive 8), proxies requests for both hosts; each is answered by
// its own tenant, over fewer upstream connections than requests.
func TestRoutingBehindNginx(t *testing.T) {
	t.Parallel()
	nginx := "/usr/sbin/nginx"
	if _, err := os.Stat(nginx); err != nil {
		if nginx, err = exec.LookPath("nginx"); err != nil {
			t.Fatal("nginx is not installed (apt-get install nginx-light): this test needs a real reverse proxy")
		}
	}
	shared, ctl := startRouted(t)
	front := startNginx(t, nginx, shared)

	before := getStatus(t, ctl).Totals.Accepted
	const clients, perClient = 4, 25
	var wg sync.WaitGroup
	errs := make(chan error, clients*perClient)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
			defer client.CloseIdleConnections()
			for j := 0; j < perClient; j++ {
				host := []string{"alpha", "beta"}[(i+j)%2]
				code, body, err := hostGet(ctx, client, front, host+".test", "/")
				if err == nil && (code != 200 || body != "tenant "+host+"\n") {
					err = fmt.Errorf("Host %s.test through nginx: %d %q", host, code, body)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	accepted := getStatus(t, ctl).Totals.Accepted - before
	if accepted == 0 || accepted >= clients*perClient {
		t.Errorf("wcluster accepted %d connections from nginx for %d requests: want upstream keep-alive (fewer connections than requests)", accepted, clients*perClient)
	}
	t.Logf("%d requests through nginx over %d upstream connections", clients*perClient, accepted)
}

// startNginx runs nginx in the foreground as the test's own process, as a
// reverse proxy on a free loopback port in front of upstream, and returns
// its address once it accepts connections.
func startNginx(t *testing.T, bin, upstream string) string {
	t.Helper()
	dir := t.TempDir()
	port := freePort(t)
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;" // else workers run as nobody, locked out of dir
	}
	conf := fmt.Sprintf(`%s
daemon off;
master_process on;
worker_processes 1;
pid %[2]s/nginx.pid;
lock_file %[2]s/nginx.lock;
error_log %[2]s/error.log info;
events { worker_connections 256; }
http {
	access_log off;
	client_body_temp_path %[2]s/body;
	proxy_temp_path %[2]s/proxy;
	fastcgi_temp_path %[2]s/fastcgi;
	uwsgi_temp_path %[2]s/uwsgi;
	scgi_temp_path %[2]s/scgi;
	upstream wcluster {
		server %[3]s;
		keepalive 8;
	}
	server {
		listen 127.0.0.1:%[4]d;
		location / {
			proxy_pass http://wcluster;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
			proxy_set_header Host $host;
		}
	}
}
`, user, dir, upstream, port)
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-p", dir, "-c", path, "-e", filepath.Join(dir, "error.log"))
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting nginx: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt) // fast shutdown
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Logf("nginx error log:\n%s", log)
		}
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return addr
		}
		select {
		case err := <-exited:
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Fatalf("nginx exited (%v): %s\n%s", err, out.String(), log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("nginx not accepting on %s after 30s", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
