// Command tenants writes a wcluster configuration with many tenants, for
// bench/tenants.sh: n tenants on one listener, each its own host name
// (tN.test) and config value name = "tN", sharing one handler or (with
// -distinct) each of m handlers made distinct by a custom section.
//
//	go run ./bench/tenants -n 10000 -handler out/guests/go-probe.wasm -listen 127.0.0.1:8080 -o /tmp/t.toml
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
)

func main() {
	n := flag.Int("n", 1000, "tenants")
	handler := flag.String("handler", "", "the handler (.wasm) every tenant serves")
	distinct := flag.Int("distinct", 0, "make this many distinct copies of the handler (next to -o), tenants spread over them")
	listen := flag.String("listen", "127.0.0.1:8080", "the listener every tenant shares")
	workers := flag.Int("workers", 2, "worker processes")
	cache := flag.String("cache-dir", "", "compilation cache")
	out := flag.String("o", "wcluster.toml", "the configuration to write")
	flag.Parse()
	if err := run(*n, *handler, *distinct, *listen, *workers, *cache, *out); err != nil {
		fmt.Fprintln(os.Stderr, "tenants:", err)
		os.Exit(1)
	}
}

func run(n int, handler string, distinct int, listen string, workers int, cache, out string) error {
	if handler == "" {
		return fmt.Errorf("-handler is required")
	}
	abs, err := filepath.Abs(handler)
	if err != nil {
		return err
	}
	handlers := []string{abs}
	if distinct > 0 {
		if handlers, err = distinctHandlers(abs, filepath.Dir(out), distinct); err != nil {
			return err
		}
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	if err := writeConfig(f, n, listen, workers, cache, handlers); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
