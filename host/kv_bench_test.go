package host

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/wcluster/wcluster/internal/kvstore"
)

// BenchmarkKVGuestCall: the wasm and store part of one kept-alive GET of a
// small key through the Go kv example (guests/go/kv), measured as
// BenchmarkGuestCall measures a hello (no system call but the store's),
// beside go-hello's call: go-kv on the embedded store, go-kv-mem on a store
// that answers from memory (the guest's and the host call's part alone).
//
//	make guests
//	WCLUSTER_GUESTS=$PWD/out/guests go test ./host/ -run XXX -bench KVGuestCall
func BenchmarkKVGuestCall(b *testing.B) {
	for _, guest := range []string{"go-hello", "go-kv", "go-kv-mem"} {
		b.Run(guest, func(b *testing.B) {
			wasm := strings.TrimSuffix(guest, "-mem")
			o := benchOptions(benchGuest(b, wasm), wasm, true)
			req := []byte(benchRequest)
			if wasm == "go-kv" {
				var s kvstore.Backend = memKV{}
				if guest == "go-kv" {
					var err error
					if s, err = kvstore.OpenSQLite(b.TempDir()); err != nil {
						b.Fatal(err)
					}
				}
				defer s.Close()
				if err := s.Set(context.Background(), "t", []byte("small"), []byte("a small value"), 0); err != nil {
					b.Fatal(err)
				}
				o.KV = &kvstore.Tenant{Backend: s, NS: "t", Limits: kvstore.Limits{MaxValue: 1 << 20, Quota: 64 << 20}}
				req = []byte("GET /kv/small HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n")
			}
			h := benchHandler(b, o)
			defer h.Close(context.Background())
			benchCheckKVAnswer(b, h, req)
			inst, err := h.acquire(context.Background())
			if err != nil {
				b.Fatal(err)
			}
			defer h.release(inst, true, time.Now())
			c := &conn{id: 1, h: h}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				c.pending, c.wclosed = req, true
				if _, err := inst.handle(c, 0, time.Now()); err != nil {
					b.Fatal(err)
				}
				if len(c.pending) != 0 {
					b.Fatalf("the guest left %d bytes of the request unread", len(c.pending))
				}
			}
		})
	}
}

// benchCheckKVAnswer serves req once on a socketpair and checks the answer
// is a 200 (with the value, for go-kv), so that a call measured without I/O
// is known to read the store.
func benchCheckKVAnswer(b *testing.B, h *Handler, req []byte) {
	b.Helper()
	f, client := benchSocketpair(b)
	defer client.Close()
	done := make(chan struct{})
	go func() { h.ServeConn(context.Background(), f); close(done) }()
	defer func() {
		client.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			b.Error("ServeConn did not return after the client closed")
		}
	}()
	buf := make([]byte, 4096)
	n, err := benchRoundTrip(client, req, buf)
	if err != nil {
		b.Fatalf("first request: %v", err)
	}
	if bytes.Contains(req, []byte("/kv/")) && !bytes.HasSuffix(buf[:n], []byte("\r\n\r\na small value")) {
		b.Fatalf("answer %q, want the value", buf[:n])
	}
}

// memKV answers every Get with the same small value.
type memKV struct{ kvstore.Backend }

func (memKV) Get(context.Context, string, []byte) ([]byte, error) {
	return []byte("a small value"), nil
}
func (memKV) Set(context.Context, string, []byte, []byte, int64) error { return nil }
func (memKV) Close() error                                             { return nil }
