// Package watch owns `serve --watch`: file events on the served
// configuration, handlers and certificates, and on a build's sources,
// turned into one build and one reload per burst of changes.
package watch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Options say what to watch and what to do on a change.
type Options struct {
	// Files are the files served (configuration, handlers, certificates),
	// asked again after each reload, which may change them. A change to
	// one reloads.
	Files func() []string
	// Build, if set, is a shell command run in Sources before a reload
	// when a file under Sources changed (a failed build reloads nothing).
	Build   string
	Sources string
	// Reload applies the files as they are now; it logs its own outcome.
	Reload func(context.Context) error
	Log    *slog.Logger
	// Quiet is how long changes must stop before acting (default 200 ms):
	// an editor or a build writes a file in several steps.
	Quiet time.Duration
	// BuildTimeout bounds the build (default 5 minutes).
	BuildTimeout time.Duration
}

// skipDirs are folders under Sources whose changes are a build's own
// output or a tool's state, not sources.
var skipDirs = map[string]bool{".git": true, "target": true, "node_modules": true, "zig-cache": true, ".zig-cache": true, "zig-out": true, "out": true}

// Run watches until ctx ends. It returns an error only if watching cannot
// start (nothing to watch, a folder that cannot be watched).
func Run(ctx context.Context, o Options) error {
	if o.Quiet <= 0 {
		o.Quiet = 200 * time.Millisecond
	}
	if o.BuildTimeout <= 0 {
		o.BuildTimeout = 5 * time.Minute
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("--watch: %w", err)
	}
	defer w.Close()
	files, err := watchFiles(w, o.Files(), nil)
	if err != nil {
		return err
	}
	if len(files) == 0 && o.Build == "" {
		return errors.New("--watch: nothing to watch: the embedded handler has no file; give a handler or --config")
	}
	sources := ""
	if o.Build != "" {
		if sources, err = filepath.Abs(o.Sources); err != nil {
			return fmt.Errorf("--build: %w", err)
		}
		if err := watchTree(w, sources); err != nil {
			return err
		}
	}
	o.Log.Info("watching for changes", "files", len(files), "sources", sources)

	var build bool // a source changed: build before the reload
	quiet := time.NewTimer(time.Hour)
	quiet.Stop()
	defer quiet.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-w.Errors:
			o.Log.Warn("watching files", "err", err)
		case ev := <-w.Events:
			if ev.Op == fsnotify.Chmod {
				continue
			}
			switch {
			case files[ev.Name]:
			case sources != "" && within(sources, ev.Name):
				if ev.Op&fsnotify.Create != 0 {
					if st, err := os.Stat(ev.Name); err == nil && st.IsDir() {
						watchTree(w, ev.Name) // a new folder of sources
					}
				}
				if !hidden(sources, ev.Name) {
					build = true
				}
			default:
				continue
			}
			quiet.Reset(o.Quiet)
		case <-quiet.C:
			if build {
				build = false
				if !runBuild(ctx, o, sources) {
					continue
				}
				// The build's own writes (the handler it made) are what
				// the reload below takes.
				drain(w, o.Quiet)
			}
			o.Reload(ctx) // logs and counts its outcome
			if files, err = watchFiles(w, o.Files(), files); err != nil {
				o.Log.Warn("watching files", "err", err)
			}
		}
	}
}

// watchFiles watches the folder of each file (editors replace a file by
// renaming another over it) and returns the set of files, absolute.
func watchFiles(w *fsnotify.Watcher, paths []string, before map[string]bool) (map[string]bool, error) {
	files := map[string]bool{}
	dirs := map[string]bool{}
	for p := range before {
		dirs[filepath.Dir(p)] = true
	}
	for _, p := range paths {
		if p == "" {
			continue
		}
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, fmt.Errorf("--watch %s: %w", p, err)
		}
		files[abs] = true
		if dir := filepath.Dir(abs); !dirs[dir] {
			if err := w.Add(dir); err != nil {
				return nil, fmt.Errorf("--watch: cannot watch %s: %w", dir, err)
			}
			dirs[dir] = true
		}
	}
	return files, nil
}

// watchTree watches root and the folders under it, but skipDirs and
// hidden ones.
func watchTree(w *fsnotify.Watcher, root string) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("--build: sources %s: %w", p, err)
		}
		if !d.IsDir() {
			return nil
		}
		if p != root && (skipDirs[d.Name()] || strings.HasPrefix(d.Name(), ".")) {
			return filepath.SkipDir
		}
		if err := w.Add(p); err != nil {
			return fmt.Errorf("--build: cannot watch %s: %w", p, err)
		}
		return nil
	})
}

func within(root, p string) bool {
	rel, err := filepath.Rel(root, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// hidden reports whether p, under root, is or lies in a hidden or skipped
// folder, or is an editor's swap or backup file.
func hidden(root, p string) bool {
	rel, _ := filepath.Rel(root, p)
	for _, part := range strings.Split(rel, string(filepath.Separator)) {
		if strings.HasPrefix(part, ".") || skipDirs[part] || strings.HasSuffix(part, "~") || strings.HasSuffix(part, ".swp") {
			return true
		}
	}
	return false
}

// runBuild runs the build; a failure is logged with the end of its output.
func runBuild(ctx context.Context, o Options, dir string) bool {
	ctx, cancel := context.WithTimeout(ctx, o.BuildTimeout)
	defer cancel()
	begin := time.Now()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", o.Build)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		o.Log.Error("build failed; the old handler keeps serving", "build", o.Build, "err", err, "output", tail(out.String(), 2000))
		return false
	}
	o.Log.Info("built", "build", o.Build, "took", time.Since(begin))
	return true
}

func tail(s string, n int) string {
	if len(s) > n {
		s = "..." + s[len(s)-n:]
	}
	return strings.TrimSpace(s)
}

// drain drops the events that arrive within quiet.
func drain(w *fsnotify.Watcher, quiet time.Duration) {
	t := time.NewTimer(quiet)
	defer t.Stop()
	for {
		select {
		case <-w.Events:
		case <-t.C:
			return
		}
	}
}
