package host

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// BenchmarkHTTPWasmServeConn: one keep-alive request at a time through the
// http-wasm fast path (Handler.ServeConn over a unix socketpair), serving
// the router example of the http-wasm module ("hello world"), with the
// CLI's default limits.
//
//	go test ./host -run XXX -bench HTTPWasm -benchmem -cpuprofile cpu.out
func BenchmarkHTTPWasmServeConn(b *testing.B) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/http-wasm/http-wasm-host-go").Output()
	if err != nil {
		b.Fatalf("go list the http-wasm module: %v", err)
	}
	wasm, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(out)), "examples", "router.wasm"))
	if err != nil {
		b.Fatal(err)
	}
	benchRequests(b, "router", benchOptions(wasm, "router", true), benchRequest, "hello world")
}

// BenchmarkHTTPWasmWAF: the CPU-heavy guest of bench/httpwasm.sh, the
// firewall of guests/go/waf answering itself ("terminal"), one request at
// a time: what one request costs in the guest and around it.
//
//	WCLUSTER_GUESTS=$PWD/out/guests go test ./host -run XXX -bench HTTPWasmWAF
func BenchmarkHTTPWasmWAF(b *testing.B) {
	o := benchOptions(benchGuest(b, "go-waf"), "waf", true)
	o.GuestConfig = []byte("terminal")
	benchRequests(b, "waf", o, "GET /search?q=wasm+cluster&page=2 HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: wrk\r\n\r\n", "passed")
}

// benchRequests serves a Handler of o over a socketpair and times keep-alive
// requests req, one at a time, after a first answer that must contain want.
func benchRequests(b *testing.B, name string, o Options, request, want string) {
	h := benchHandler(b, o)
	defer h.Close(context.Background())
	s := benchServe(b, name, h)
	req, buf := []byte(request), make([]byte, 4096)
	n, err := benchRoundTrip(s.c, req, buf)
	if err != nil || !strings.Contains(string(buf[:n]), want) {
		b.Fatalf("first answer %q: %v", buf[:n], err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := benchRoundTrip(s.c, req, buf); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	s.stop(b)
}
