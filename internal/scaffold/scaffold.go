// Package scaffold owns `wcluster new`: the templates of a handler's
// project per language and kind — its source, the SDK vendored from
// guests/, a build.sh writing handler.wasm, a test.sh and a README with
// the commands that matter.
package scaffold

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"text/template"

	"github.com/wcluster/wcluster/guests"
)

//go:embed templates
var templates embed.FS

// Template is one kind of project.
type Template struct {
	Name     string // its folder under templates/: LANG, or LANG-KIND
	Lang     string // what `wcluster new` takes
	Language string
	Kind     string // abi, http-wasm or wasi
	Source   string // the file to edit
	// sdk maps the SDK files (paths under guests/) to where the project
	// keeps them.
	sdk    map[string]string
	sdkDir string
}

// Templates are every template, in the order `wcluster new` lists them.
func Templates() []Template {
	goSDK := map[string]string{}
	for _, dir := range []string{"go/wcluster", "go/wcluster/store", "go/wcluster/speaksfirst", "go/httpwasm"} {
		goSDK[dir] = "wcluster-sdk/guests/" + dir
	}
	return []Template{
		{Name: "go", Lang: "go", Language: "Go", Kind: "abi", Source: "main.go", sdk: goSDK, sdkDir: "wcluster-sdk/"},
		{Name: "go-http", Lang: "go", Language: "Go", Kind: "http-wasm", Source: "main.go", sdk: goSDK, sdkDir: "wcluster-sdk/"},
		{Name: "c", Lang: "c", Language: "C", Kind: "abi", Source: "handler.c", sdk: map[string]string{"c/sdk": "sdk"}, sdkDir: "sdk/"},
		{Name: "rust", Lang: "rust", Language: "Rust", Kind: "abi", Source: "src/lib.rs", sdk: map[string]string{"rust/sdk": "wcluster-sdk"}, sdkDir: "wcluster-sdk/"},
		{Name: "assemblyscript", Lang: "assemblyscript", Language: "AssemblyScript", Kind: "abi", Source: "main.ts", sdk: map[string]string{"assemblyscript/sdk": "sdk"}, sdkDir: "sdk/"},
		{Name: "zig", Lang: "zig", Language: "Zig", Kind: "abi", Source: "main.zig", sdk: map[string]string{"zig/sdk": "sdk"}, sdkDir: "sdk/"},
	}
}

// Find returns the template for lang and kind ("": the language's first,
// its ABI handler).
func Find(lang, kind string) (Template, error) {
	for _, t := range Templates() {
		if t.Lang == lang && (kind == "" || t.Kind == kind) {
			return t, nil
		}
	}
	if kind != "" {
		return Template{}, fmt.Errorf("no %s template of kind %s: `wcluster new` lists them", lang, kind)
	}
	return Template{}, fmt.Errorf("no template for %q: `wcluster new` lists them", lang)
}

// KindText says what the kind means, for the README.
func (t Template) KindText() string {
	switch t.Kind {
	case "http-wasm":
		return "an http-wasm handler: the host speaks HTTP and calls it per request"
	case "wasi":
		return "a plain WASI command: stdin and stdout are the connection"
	}
	return "an ABI handler: it reads and writes the raw connection"
}

var nameRE = regexp.MustCompile(`[^a-z0-9_-]+`)

// Write makes the project of t in dir (which must not exist or be empty),
// named after dir's last element; version is wcluster's, for the README.
func Write(t Template, dir, version string) error {
	if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		return fmt.Errorf("%s is not empty: give a new folder", dir)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: %w", dir, err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	name := strings.Trim(nameRE.ReplaceAllString(strings.ToLower(filepath.Base(abs)), "-"), "-_")
	if name == "" || name[0] < 'a' || name[0] > 'z' {
		name = "handler" + name
	}
	data := struct {
		T                            Template
		Name, Crate, Version, SDKDir string
		BodyLen                      int
	}{T: t, Name: name, Crate: strings.ReplaceAll(name, "-", "_"), Version: version, SDKDir: t.sdkDir}
	data.BodyLen = len("hello from " + name + "\n")
	files := map[string][]byte{}
	for _, root := range []string{"templates/common", "templates/" + t.Name} {
		err := fs.WalkDir(templates, root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			src, err := templates.ReadFile(p)
			if err != nil {
				return err
			}
			tm, err := template.New(p).Parse(string(src))
			if err != nil {
				return fmt.Errorf("template %s: %w", p, err)
			}
			var b bytes.Buffer
			if err := tm.Execute(&b, data); err != nil {
				return fmt.Errorf("template %s: %w", p, err)
			}
			files[strings.TrimSuffix(strings.TrimPrefix(p, root+"/"), ".tmpl")] = b.Bytes()
			return nil
		})
		if err != nil {
			return err
		}
	}
	for from, to := range t.sdk {
		ents, err := guests.SDKs.ReadDir(from)
		if err != nil {
			return fmt.Errorf("sdk %s: %w", from, err)
		}
		for _, e := range ents {
			if e.IsDir() {
				if sub, err := guests.SDKs.ReadDir(path.Join(from, e.Name())); err == nil {
					for _, s := range sub {
						if !s.IsDir() {
							b, _ := guests.SDKs.ReadFile(path.Join(from, e.Name(), s.Name()))
							files[path.Join(to, e.Name(), s.Name())] = b
						}
					}
				}
				continue
			}
			b, err := guests.SDKs.ReadFile(path.Join(from, e.Name()))
			if err != nil {
				return err
			}
			files[path.Join(to, e.Name())] = b
		}
	}
	if t.Language == "Go" {
		files["wcluster-sdk/go.mod"] = []byte("module github.com/wcluster/wcluster\n\ngo 1.24\n")
	}
	for p, b := range files {
		full := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return err
		}
		mode := os.FileMode(0o644)
		if strings.HasSuffix(p, ".sh") {
			mode = 0o755
		}
		if err := os.WriteFile(full, b, mode); err != nil {
			return err
		}
	}
	return nil
}
