// Command nethttp is the plain single-process Go net/http hello that
// wcluster is measured against.
package main

import (
	"flag"
	"log"
	"net/http"
)

func main() {
	addr := flag.String("listen", "127.0.0.1:8000", "address")
	flag.Parse()
	body := []byte("hello world\n")
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write(body)
	})
	log.Printf("net/http serving on %s", *addr)
	log.Fatal(http.ListenAndServe(*addr, nil))
}
