//go:build wasip1

// Command greet is a server-speaks-first handler, like an SMTP server: it
// greets every connection at once with "220 greet ready", then answers each
// line with "250 " and the line, and "221 bye" to QUIT.
package main

import (
	"bytes"

	"github.com/wcluster/wcluster/guests/go/wcluster"
	_ "github.com/wcluster/wcluster/guests/go/wcluster/speaksfirst"
)

var in = make([]byte, 4096)

func init() { wcluster.Handle(serve) }

func main() {}

func serve(flags wcluster.Flags) wcluster.Action {
	if flags&wcluster.New != 0 {
		if _, err := wcluster.Write([]byte("220 greet ready\r\n")); err != nil {
			return wcluster.Close
		}
		return wcluster.Keep
	}
	n, err := wcluster.Read(in)
	if err != nil {
		return wcluster.Close
	}
	buf := in[:n]
	var out []byte
	for {
		i := bytes.IndexByte(buf, '\n')
		if i < 0 {
			break
		}
		line := bytes.TrimRight(buf[:i], "\r")
		buf = buf[i+1:]
		if string(line) == "QUIT" {
			wcluster.Write(append(out, "221 bye\r\n"...))
			return wcluster.Close
		}
		out = append(append(append(out, "250 "...), line...), "\r\n"...)
	}
	if len(out) > 0 {
		if _, err := wcluster.Write(out); err != nil {
			return wcluster.Close
		}
	}
	if len(buf) > 0 && wcluster.Unread(buf) != nil {
		return wcluster.Close
	}
	return wcluster.Keep
}
