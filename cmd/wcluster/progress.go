package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/wcluster/wcluster/config"
)

// compileProgress shows a module's compilation while it lasts: on a
// terminal, after a moment, a line counting the seconds, replaced by the
// result; otherwise one log line once it is done, at info for a
// compilation (the cache did not have it), at debug for a cache hit.
// done reports the outcome.
func compileProgress(out io.Writer, log *slog.Logger, name string, size int, cacheDir string) (done func(err error)) {
	before := config.CacheEntries(cacheDir)
	begin := time.Now()
	tty := false
	if f, ok := out.(*os.File); ok {
		tty = isTerminal(f)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	shown := false
	if tty {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(100 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
				}
				if d := time.Since(begin); d >= 300*time.Millisecond {
					fmt.Fprintf(out, "\rcompiling %s (%s) %.1fs ", name, config.SizeText(uint64(size)), d.Seconds())
					shown = true
				}
			}
		}()
	}
	return func(err error) {
		close(stop)
		wg.Wait()
		took := time.Since(begin)
		compiled := config.CacheEntries(cacheDir) != before || cacheDir == ""
		if shown {
			result := "compiled"
			if err != nil {
				result = "failed to compile"
			}
			fmt.Fprintf(out, "\r%s %s (%s) in %.1fs\n", result, name, config.SizeText(uint64(size)), took.Seconds())
			return
		}
		if err != nil {
			return // the error is reported whole by the caller
		}
		level := slog.LevelDebug
		if compiled {
			level = slog.LevelInfo
		}
		log.Log(context.Background(), level, "module ready", "handler", name, "bytes", size, "compiled", compiled, "took", took)
	}
}
