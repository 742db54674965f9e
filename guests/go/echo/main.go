//go:build wasip1

// Command echo is a raw echo handler: every byte read is written back until
// the peer half-closes, then the handler half-closes too.
package main

import (
	"github.com/wcluster/wcluster/guests/go/wcluster"
)

var buf = make([]byte, 64<<10)

func init() {
	wcluster.Handle(func(wcluster.Flags) wcluster.Action {
		for {
			n, err := wcluster.Read(buf)
			if err != nil {
				break
			}
			if _, err := wcluster.Write(buf[:n]); err != nil {
				return wcluster.Close
			}
		}
		wcluster.CloseWrite()
		return wcluster.Close
	})
}

func main() {}
