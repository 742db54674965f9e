//go:build wasip1

// Command faults is a misbehaving handler for wcluster's fault tests. It
// reads one line and does what it names:
//
//	trap   panic (the instance traps)
//	loop   spin forever (only the time limit stops it)
//	oom    allocate until memory runs out
//	flood  write without end to a client that never reads
//	hold   wait for the peer to close, then answer
//	spew   write 1000 lines to stderr (past the host's rate limit), then answer
//	chatter  call log 1000 times at warn (past the same limit), then answer
//	sleep  sleep for an hour without reading (only the time limit stops it)
//	other  answer "ok <worker id> <line>\n" and close
package main

import (
	"bytes"
	"os"
	"strconv"
	"time"

	"github.com/wcluster/wcluster/guests/go/wcluster"
)

var sink [][]byte

func init() { wcluster.Handle(serve) }

func main() {}

func serve(wcluster.Flags) wcluster.Action {
	line := make([]byte, 0, 256)
	buf := make([]byte, 256)
	for !bytes.Contains(line, []byte("\n")) {
		n, err := wcluster.Read(buf)
		if err != nil {
			return wcluster.Close
		}
		line = append(line, buf[:n]...)
	}
	cmd := string(bytes.TrimSpace(line[:bytes.IndexByte(line, '\n')]))
	switch cmd {
	case "trap":
		panic("asked to trap")
	case "loop":
		for i := 0; ; i++ {
			if i < 0 {
				break
			}
		}
	case "oom":
		for {
			sink = append(sink, make([]byte, 1<<20))
		}
	case "flood":
		chunk := bytes.Repeat([]byte("x"), 64<<10)
		for {
			if _, err := wcluster.Write(chunk); err != nil {
				return wcluster.Close
			}
		}
	case "sleep":
		time.Sleep(time.Hour)
	case "spew":
		for i := range 1000 {
			os.Stderr.WriteString("spew line " + strconv.Itoa(i) + "\n")
		}
	case "chatter":
		for i := range 1000 {
			wcluster.Log(wcluster.LevelWarn, "chatter "+strconv.Itoa(i))
		}
	case "hold":
		for {
			if _, err := wcluster.Read(buf); err != nil {
				break
			}
		}
	}
	wcluster.Write([]byte("ok " + strconv.Itoa(wcluster.WorkerID()) + " " + cmd + "\n"))
	return wcluster.Close
}
