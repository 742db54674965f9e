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
	h := benchHandler(b, benchOptions(wasm, "router", true))
	defer h.Close(context.Background())
	s := benchServe(b, "router", h)
	req, buf := []byte(benchRequest), make([]byte, 4096)
	n, err := benchRoundTrip(s.c, req, buf)
	if err != nil || !strings.HasSuffix(string(buf[:n]), "hello world") {
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
