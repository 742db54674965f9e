// Command httpcmd is a plain WASI command that answers one HTTP request:
// it reads stdin (the connection) to the end of the request head, writes
// a response to stdout and exits, which closes the connection. The
// benchmark of commands (bench/commands.sh) serves it beside the same
// program in C.
package main

import (
	"bytes"
	"os"
)

const response = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\nhello world\n"

func main() {
	head := make([]byte, 0, 8192)
	buf := make([]byte, 8192)
	for !bytes.HasSuffix(head, []byte("\r\n\r\n")) {
		n, err := os.Stdin.Read(buf)
		if n == 0 && err != nil {
			os.Exit(0)
		}
		if len(head)+n > cap(head) {
			os.Exit(1) // a head this long is not served
		}
		head = append(head, buf[:n]...)
	}
	os.Stdout.WriteString(response)
}
