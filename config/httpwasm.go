package config

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
)

// CheckUpstream checks an http-wasm handler's upstream URL ("" is none).
func CheckUpstream(s string) (string, error) {
	if s == "" {
		return "", nil
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("%q is not an http:// or https:// URL with a host: give one like http://127.0.0.1:8080", s)
	}
	return s, nil
}

// ReadGuestConfig reads what an http-wasm guest's get_config returns: the
// value itself, or with a leading @ the bytes of that file (relative to dir
// when dir is set).
func ReadGuestConfig(v, dir string) ([]byte, error) {
	path, ok := strings.CutPrefix(v, "@")
	if !ok {
		if v == "" {
			return nil, nil
		}
		return []byte(v), nil
	}
	if dir != "" && !filepath.IsAbs(path) {
		path = filepath.Join(dir, path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%s: no such file: give @FILE of an existing file, or the value itself", path)
		}
		return nil, err
	}
	return b, nil
}
