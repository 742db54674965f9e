// Command httpwasmref serves an http-wasm guest on the reference host's
// net/http middleware (github.com/http-wasm/http-wasm-host-go, the way
// Traefik and Dapr host it), in one process: the baseline wcluster's
// http-wasm handlers are measured against (bench/httpwasm.sh). It is a
// module of its own so that the product does not depend on that host.
package main

import (
	"context"
	"flag"
	"log"
	"net/http"
	"os"

	"github.com/http-wasm/http-wasm-host-go/handler"
	wasm "github.com/http-wasm/http-wasm-host-go/handler/nethttp"
	"github.com/tetratelabs/wazero"
)

func main() {
	addr := flag.String("listen", "127.0.0.1:8000", "address")
	guest := flag.String("guest", "", "the guest's .wasm")
	cfg := flag.String("guest-config", "", "what get_config returns")
	// A guest built as a reactor by Go's toolchain must have _initialize
	// called before its exports; this host leaves that to its module config.
	initialize := flag.Bool("initialize", false, "call the guest's _initialize when instantiating it")
	flag.Parse()
	code, err := os.ReadFile(*guest)
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	opts := []handler.Option{handler.GuestConfig([]byte(*cfg))}
	if *initialize {
		opts = append(opts, handler.ModuleConfig(wazero.NewModuleConfig().WithStartFunctions("_initialize")))
	}
	mw, err := wasm.NewMiddleware(ctx, code, opts...)
	if err != nil {
		log.Fatal(err)
	}
	defer mw.Close(ctx)
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write([]byte("next\n"))
	})
	log.Printf("http-wasm reference middleware serving %s on %s", *guest, *addr)
	log.Fatal(http.ListenAndServe(*addr, mw.NewHandler(ctx, next)))
}
