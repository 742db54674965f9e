package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// writeConfig writes a configuration of n tenants on one listener, each
// named tN with the host name tN.test and the config value name = "tN",
// served by handlers: handlers[i % len(handlers)] for tenant i.
func writeConfig(w io.Writer, n int, listen string, workers int, cacheDir string, handlers []string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "[cluster]\nworkers = %d\n", workers)
	if cacheDir != "" {
		fmt.Fprintf(&b, "cache_dir = %q\n", cacheDir)
	}
	for i := range n {
		fmt.Fprintf(&b, "\n[[tenant]]\nname = \"t%d\"\nhandler = %q\nlisten = [%q]\nhosts = [\"t%d.test\"]\nconfig = { name = \"t%d\" }\n",
			i, handlers[i%len(handlers)], listen, i, i)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// distinctHandlers writes n copies of the module at src into dir, each
// with a custom section of its own appended, so that their bytes differ.
func distinctHandlers(src, dir string, n int) ([]string, error) {
	wasm, err := os.ReadFile(src)
	if err != nil {
		return nil, err
	}
	out := make([]string, n)
	for i := range n {
		name := fmt.Sprintf("copy-%d", i)
		// A custom section: id 0, size, name (length-prefixed), one byte
		// of payload (wazero refuses an empty one).
		sec := append(append([]byte{0, byte(2 + len(name)), byte(len(name))}, name...), 'x')
		p := filepath.Join(dir, fmt.Sprintf("handler-%d.wasm", i))
		if err := os.WriteFile(p, append(append([]byte{}, wasm...), sec...), 0o644); err != nil {
			return nil, err
		}
		out[i] = p
	}
	return out, nil
}
