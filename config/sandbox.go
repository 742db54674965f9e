package config

// The workers' process sandbox as configured: what the master reads for
// them (handler, certificate and key bytes), who they run as (--user), and
// what the worker applies to itself (Sandbox, through internal/sandbox)
// unless --worker-sandbox=off.

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/wcluster/wcluster/dispatch"
	"github.com/wcluster/wcluster/internal/sandbox"
)

// Files carries file contents from the master to its workers.
type Files struct {
	Wasm    []byte `json:"wasm,omitempty"`
	CertPEM []byte `json:"cert_pem,omitempty"`
	KeyPEM  []byte `json:"key_pem,omitempty"`
	// ExtraCerts are an ACME tenant's certificates of its other hosts
	// (one per host; CertPEM and KeyPEM hold the first's).
	ExtraCerts []KeyPairPEM `json:"extra_certs,omitempty"`
}

// ReadFiles reads what a worker needs of a handler and its certificate.
func ReadFiles(wasm []byte, cert, key string) (Files, error) {
	f := Files{Wasm: wasm}
	if cert == "" {
		return f, nil
	}
	var err error
	if f.CertPEM, err = os.ReadFile(cert); err != nil {
		return f, fmt.Errorf("tls cert: %w", err)
	}
	if f.KeyPEM, err = os.ReadFile(key); err != nil {
		return f, fmt.Errorf("tls key: %w", err)
	}
	// The bytes checked are the bytes the workers get: a file replaced
	// after this (a renewal half written) changes nothing until the next
	// reload, which checks it again.
	if _, err := tls.X509KeyPair(f.CertPEM, f.KeyPEM); err != nil {
		return f, fmt.Errorf("tls: cannot use %s with %s: %w: give a PEM certificate (chain) and its PEM private key", cert, key, err)
	}
	return f, nil
}

// KeyPair is the certificate a worker serves, from the bytes the master
// read and checked; a worker never reads certificate files itself.
func (f *Files) KeyPair() (tls.Certificate, error) {
	if len(f.CertPEM) == 0 {
		return tls.Certificate{}, errors.New("no certificate from the master")
	}
	return tls.X509KeyPair(f.CertPEM, f.KeyPEM)
}

// certificates describe tenant's certificates in f for status and
// metrics.
func (f *Files) certificates(tenant string) []dispatch.Certificate {
	var out []dispatch.Certificate
	pairs, _ := f.ExtraKeyPairs()
	if kp, err := f.KeyPair(); err == nil {
		pairs = append([]tls.Certificate{kp}, pairs...)
	}
	for _, kp := range pairs {
		if kp.Leaf == nil {
			continue
		}
		c := dispatch.Certificate{Tenant: tenant, Names: append([]string{}, kp.Leaf.DNSNames...),
			NotAfter: float64(kp.Leaf.NotAfter.Unix())}
		for _, ip := range kp.Leaf.IPAddresses {
			c.Names = append(c.Names, ip.String())
		}
		out = append(out, c)
	}
	return out
}

// ExtraKeyPairs are the certificates of ExtraCerts.
func (f *Files) ExtraKeyPairs() ([]tls.Certificate, error) {
	var out []tls.Certificate
	for _, p := range f.ExtraCerts {
		c, err := tls.X509KeyPair(p.Cert, p.Key)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// Sandbox is what a worker applies to itself before building its
// handlers, so before any guest code runs.
type Sandbox struct {
	Off bool `json:"off,omitempty"`
	// ReadPaths are all it may open, read-only: the compilation cache and
	// the tenants' mounts.
	ReadPaths []string `json:"read_paths,omitempty"`
	// WritePaths it may read and write: the key-value store's directory.
	WritePaths []string `json:"write_paths,omitempty"`
	// ConnectTCP are the ports of the tenants' upstreams (http-wasm), and
	// Resolve says some are named by host name: the only connections a
	// worker may open.
	ConnectTCP []uint16 `json:"connect_tcp,omitempty"`
	Resolve    bool     `json:"resolve,omitempty"`
}

// AllowUpstream lets the workers reach an http-wasm tenant's upstream.
func (p *Sandbox) AllowUpstream(upstream string) {
	if upstream == "" {
		return
	}
	u, err := url.Parse(upstream)
	if err != nil {
		return // checked when the configuration was read
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443", "redis": "6379", "rediss": "6379"}[u.Scheme]
	}
	if n, err := strconv.ParseUint(port, 10, 16); err == nil && !slices.Contains(p.ConnectTCP, uint16(n)) {
		p.ConnectTCP = append(p.ConnectTCP, uint16(n))
	}
	if net.ParseIP(u.Hostname()) == nil {
		p.Resolve = true
	}
}

// Apply sandboxes the calling worker as p says (bind: the ports it binds
// itself, under reuseport), unless p is off.
func (p Sandbox) Apply(bind []uint16, log *slog.Logger) error {
	if p.Off {
		log.Debug("worker sandbox off (--worker-sandbox=off)")
		return nil
	}
	var paths []string
	for _, path := range p.ReadPaths {
		if path != "" {
			paths = append(paths, path)
		}
	}
	var rw []string
	for _, path := range p.WritePaths {
		if path != "" {
			rw = append(rw, path)
		}
	}
	a, err := sandbox.Apply(sandbox.Policy{ReadPaths: paths, WritePaths: rw, BindTCP: bind, ConnectTCP: p.ConnectTCP, Resolve: p.Resolve})
	if err != nil {
		return fmt.Errorf("%w (--worker-sandbox=off serves without the process sandbox; see docs/security.md)", err)
	}
	log.Debug("worker sandbox applied", "no_new_privs", a.NoNewPrivs, "seccomp_syscalls", a.Seccomp, "landlock", a.Landlock)
	return nil
}

// ParseSandbox reads --worker-sandbox / worker_sandbox.
func ParseSandbox(s string) (off bool, err error) {
	on, err := parseOnOff("worker-sandbox", s)
	return !on, err
}

// parseOnOff reads the value of an on/off flag (true and false too; empty
// is on).
func parseOnOff(flag, s string) (on bool, err error) {
	switch strings.ToLower(s) {
	case "on", "true", "":
		return true, nil
	case "off", "false":
		return false, nil
	}
	return true, fmt.Errorf("--%s %q: use on or off", flag, s)
}

// User is a --user USER[:GROUP] resolved.
type User struct {
	spec string
	cred *syscall.Credential
}

// LookupUser resolves USER[:GROUP] (names or numbers); without GROUP the
// user's primary group.
func LookupUser(spec string) (*User, error) {
	if spec == "" {
		return nil, nil
	}
	name, group, hasGroup := strings.Cut(spec, ":")
	u, err := user.Lookup(name)
	if err != nil {
		if u, err = user.LookupId(name); err != nil {
			return nil, fmt.Errorf("user %q: no such user on this system: give an existing user name or uid (e.g. nobody)", name)
		}
	}
	gid := u.Gid
	if hasGroup {
		g, err := user.LookupGroup(group)
		if err != nil {
			if g, err = user.LookupGroupId(group); err != nil {
				return nil, fmt.Errorf("user %q: no such group %q on this system: give an existing group name or gid", spec, group)
			}
		}
		gid = g.Gid
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	g, err2 := strconv.ParseUint(gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("user %q: uid %s or gid %s is not a number", spec, u.Uid, gid)
	}
	return &User{spec: spec, cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(g)}}, nil
}

// CheckCanSwitch says why workers cannot run as u: the master must be
// root to start them as another user.
func (u *User) CheckCanSwitch() error {
	if u == nil {
		return nil
	}
	if os.Geteuid() != 0 && uint32(os.Geteuid()) != u.cred.Uid {
		return fmt.Errorf("--user %s: the master runs as uid %d, not root: it cannot start workers as another user; start it as root (it keeps root only to bind and spawn) or drop --user", u.spec, os.Geteuid())
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	if err := u.reachable(exe); err != nil {
		return fmt.Errorf("--user %s: the workers cannot start %s: %v; install wcluster where they can (e.g. /usr/local/bin)", u.spec, exe, err)
	}
	return nil
}

// ShareCache lets workers running as u read the compilation cache the
// master filled (wazero writes it for its own user only): the tree's group
// becomes u's group, readable by it, never writable. Every directory above
// it must let them pass, or this says which one does not.
func (u *User) ShareCache(dir string) error {
	if u == nil || dir == "" {
		return nil
	}
	if err := u.reachable(dir); err != nil {
		return fmt.Errorf("--user %s: the workers cannot reach the compilation cache %s: %v; give a cache directory they can reach (--cache-dir, cache_dir), e.g. /var/cache/wcluster", u.spec, dir, err)
	}
	gid := int(u.cred.Gid)
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // a temporary file of a compilation that just ended
		}
		if err != nil {
			return err
		}
		info, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := os.Lchown(p, -1, gid); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("--user %s: share the compilation cache: %w", u.spec, err)
		}
		mode := info.Mode().Perm() | 0o040
		if d.IsDir() {
			mode |= 0o010
		}
		mode &^= 0o022 // workers only read it: no one else writes
		if err := os.Chmod(p, mode); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	})
}

// CheckMount says why workers running as u could not read mount (a
// tenant's directory, which they open for the guest).
func (u *User) CheckMount(mount string) error {
	if u == nil || mount == "" {
		return nil
	}
	err := u.reachable(filepath.Join(mount, "."))
	if err == nil {
		var st syscall.Stat_t
		if err = syscall.Stat(mount, &st); err == nil {
			mode := st.Mode
			ok := mode&0o005 == 0o005 || st.Gid == u.cred.Gid && mode&0o050 == 0o050 || st.Uid == u.cred.Uid && mode&0o500 == 0o500
			if !ok {
				err = fmt.Errorf("%s (mode %o, uid %d, gid %d) is not readable by uid %d gid %d", mount, mode&0o777, st.Uid, st.Gid, u.cred.Uid, u.cred.Gid)
			}
		}
	}
	if err != nil {
		return fmt.Errorf("user %s: the workers cannot read the mount %s: %v; make it readable by them", u.spec, mount, err)
	}
	return nil
}

// reachable checks that every directory from / to path is searchable by u.
func (u *User) reachable(path string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	for p := filepath.Dir(abs); ; p = filepath.Dir(p) {
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil {
			return err
		}
		ok := st.Mode&0o001 != 0 || st.Gid == u.cred.Gid && st.Mode&0o010 != 0 || st.Uid == u.cred.Uid && st.Mode&0o100 != 0
		if !ok {
			return fmt.Errorf("%s (mode %o, uid %d, gid %d) is not searchable by uid %d gid %d", p, st.Mode&0o777, st.Uid, st.Gid, u.cred.Uid, u.cred.Gid)
		}
		if p == "/" || p == "." {
			return nil
		}
	}
}

// Credential is what dispatch runs the workers as (nil: the master's user).
func (u *User) Credential() *syscall.Credential {
	if u == nil || os.Geteuid() != 0 {
		return nil // not root: CheckCanSwitch allowed only the master's own user
	}
	return u.cred
}

// HandlerBytes is what the master passes of a handler: its bytes, or none
// for the embedded default, which the worker has.
func HandlerBytes(path string, wasm []byte) []byte {
	if path == "" {
		return nil
	}
	return wasm
}

// WarnRootWorkers says, once at start, that a root master without --user
// runs its workers as root.
func WarnRootWorkers(log *slog.Logger, u *User) {
	if u == nil && os.Geteuid() == 0 {
		log.Warn("workers run as root, with root's capabilities (seccomp and Landlock still apply): give --user (user in the config) to run them unprivileged; see docs/security.md")
	}
}

// CheckReuseport says why workers running as u could not bind addrs
// themselves (policy reuseport): ports below 1024 need root.
func (u *User) CheckReuseport(sched dispatch.Sched, addrs []string) error {
	if u == nil || sched != dispatch.SchedReusePort || u.cred.Uid == 0 {
		return nil
	}
	for _, a := range addrs {
		_, p, err := net.SplitHostPort(a)
		if err != nil {
			continue
		}
		if n, err := strconv.Atoi(p); err == nil && n > 0 && n < 1024 {
			return fmt.Errorf("user %s with sched reuseport: the workers bind their own sockets and cannot bind port %d as uid %d; use sched rr or shared (the master binds), or a port from 1024", u.spec, n, u.cred.Uid)
		}
	}
	return nil
}

// ShareKVDir makes the key-value store's directory (0700) and, under
// --user, gives it and what is in it to the workers' user: they open,
// write, lock and create the store's files there; nobody else may.
func (u *User) ShareKVDir(dir string) error {
	if dir == "" {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("key-value store directory (--kv-dir, kv_dir): %w", err)
	}
	if u == nil {
		return nil
	}
	uid, gid := int(u.cred.Uid), int(u.cred.Gid)
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := os.Lchown(p, uid, gid); err != nil {
			return fmt.Errorf("--user %s: give the key-value store %s to the workers: %w", u.spec, dir, err)
		}
		return nil
	})
}

// WarnKVDir says, once at start, that workers running as u cannot reach the
// key-value store's directory: the store's functions will fail (the
// guests get ErrUnavailable) until --kv-dir names one they can.
func WarnKVDir(log *slog.Logger, u *User, dir string) {
	if u == nil || dir == "" {
		return
	}
	if err := u.reachable(dir); err != nil {
		log.Warn("the workers cannot reach the key-value store directory: the store is unavailable to guests; give --kv-dir (kv_dir) a directory they can reach, e.g. /var/lib/wcluster/kv",
			"user", u.spec, "kv_dir", dir, "err", err)
	}
}

// CheckRedisURL says what is wrong with a --kv-redis URL.
func CheckRedisURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return err
	}
	if u.Scheme != "redis" && u.Scheme != "rediss" || u.Host == "" {
		return fmt.Errorf("%q: give redis://HOST:PORT/DB (or rediss:// for TLS)", s)
	}
	return nil
}
