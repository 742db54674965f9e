package deploy

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The hardening of the systemd units, checked without systemd as PID 1:
// systemd-analyze rates and verifies the unit files; the syscalls and
// socket families the real binary uses (traced with strace, workers and
// their own sandbox included) must pass the units' SystemCallFilter= and
// RestrictAddressFamilies=; and the config-mode unit's ExecStart serves
// TLS from the files LoadCredential= names.

func systemdDir() string { return filepath.Join(env.root, "deploy", "systemd") }

func serviceUnits(t *testing.T) []string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(systemdDir(), "*.service"))
	if len(files) < 2 {
		t.Fatalf("want wcluster.service and a config-mode unit in deploy/systemd, got %v", files)
	}
	return files
}

func lookTool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not installed (Debian package %s; `make deps` installs it)", name, pkg)
	}
	return p
}

// execStart is a unit's ExecStart= split on spaces.
func execStart(t *testing.T, u unitFile, name string) []string {
	t.Helper()
	line := u.get("Service", "ExecStart")
	if strings.ContainsAny(line, `"'$%\`) {
		t.Fatalf("%s: ExecStart %q: keep it free of quotes, variables and specifiers (this test splits it on spaces)", name, line)
	}
	argv := strings.Fields(line)
	if len(argv) < 2 || argv[1] != "serve" {
		t.Fatalf("%s: ExecStart %q: want BINARY serve ...", name, line)
	}
	return argv
}

// syscallFilter is what a unit's SystemCallFilter= lines let through:
// the union of the allow lists less the union of the ~ lists, with
// @groups expanded by systemd-analyze syscall-filter.
type syscallFilter struct{ allow, deny map[string]bool }

var groupCache sync.Map // "@group" → []string, expanded

func expandGroup(t *testing.T, analyze, group string) []string {
	t.Helper()
	if v, ok := groupCache.Load(group); ok {
		return v.([]string)
	}
	out, err := exec.Command(analyze, "syscall-filter", "--no-pager", group).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze syscall-filter %s: %v\n%s", group, err, out)
	}
	var names []string
	for i, line := range strings.Split(string(out), "\n") {
		line = strings.TrimSpace(line)
		if i == 0 || line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "@") {
			names = append(names, expandGroup(t, analyze, line)...)
		} else {
			names = append(names, line)
		}
	}
	if len(names) == 0 {
		t.Fatalf("systemd-analyze syscall-filter %s: no system calls in\n%s", group, out)
	}
	groupCache.Store(group, names)
	return names
}

func readFilter(t *testing.T, analyze string, u unitFile) syscallFilter {
	t.Helper()
	f := syscallFilter{allow: map[string]bool{}, deny: map[string]bool{}}
	for _, v := range u["Service"]["SystemCallFilter"] {
		set := f.allow
		if strings.HasPrefix(v, "~") {
			set, v = f.deny, v[1:]
		}
		for _, item := range strings.Fields(v) {
			if strings.HasPrefix(item, "@") {
				for _, n := range expandGroup(t, analyze, item) {
					set[n] = true
				}
			} else {
				set[item] = true
			}
		}
	}
	if len(f.allow) == 0 {
		t.Fatal("no SystemCallFilter= allow list")
	}
	return f
}

func (f syscallFilter) allows(name string) bool { return f.allow[name] && !f.deny[name] }

// TestDeploySystemdSecurity: every service unit passes systemd-analyze
// verify, `systemd-analyze security --offline` rates it at most 2.0, its
// writable paths are the directories systemd makes for it, and its
// syscall filter lets the workers' own sandbox be applied.
func TestDeploySystemdSecurity(t *testing.T) {
	t.Parallel()
	analyze := lookTool(t, "systemd-analyze", "systemd")
	if out, _ := exec.Command(analyze, "security", "--help").CombinedOutput(); !bytes.Contains(out, []byte("--offline")) {
		t.Fatalf("systemd-analyze security has no --offline (systemd >= 250 has it):\n%s", out)
	}
	// Copies whose ExecStart names our binary: verify checks it exists.
	vdir := t.TempDir()
	units, _ := filepath.Glob(filepath.Join(systemdDir(), "*.s*"))
	var copies []string
	for _, f := range units {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		b = regexp.MustCompile(`(?m)^ExecStart=\S+ `).ReplaceAll(b, []byte("ExecStart="+env.bin+" "))
		c := filepath.Join(vdir, filepath.Base(f))
		if err := os.WriteFile(c, b, 0o644); err != nil {
			t.Fatal(err)
		}
		copies = append(copies, c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, analyze, append([]string{"verify", "--man=no", "--generators=no"}, copies...)...).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}

	for _, path := range serviceUnits(t) {
		name := filepath.Base(path)
		u := readUnit(t, path)
		out, err := exec.CommandContext(ctx, analyze, "security", "--offline=yes", "--no-pager", filepath.Join(vdir, name)).CombinedOutput()
		m := regexp.MustCompile(`Overall exposure level for \S+: (\d+\.\d+)`).FindSubmatch(out)
		if err != nil || m == nil {
			t.Errorf("systemd-analyze security %s: %v\n%s", name, err, out)
			continue
		}
		score, _ := strconv.ParseFloat(string(m[1]), 64)
		if score > 2.0 {
			t.Errorf("%s: exposure %.1f, want at most 2.0:\n%s", name, score, out)
		} else {
			t.Logf("%s: exposure %.1f", name, score)
		}

		for _, kv := range [][2]string{
			{"NoNewPrivileges", "yes"}, {"DynamicUser", "yes"}, {"UMask", "0077"},
			{"SystemCallArchitectures", "native"}, {"ProtectSystem", "strict"},
		} {
			if got := u.get("Service", kv[0]); got != kv[1] {
				t.Errorf("%s: %s=%q, want %q", name, kv[0], got, kv[1])
			}
		}
		// What would break wcluster while lowering the score.
		if u.get("Service", "MemoryDenyWriteExecute") == "yes" {
			t.Errorf("%s: MemoryDenyWriteExecute=yes: wazero maps its compiled code executable", name)
		}
		if u.get("Service", "PrivateUsers") == "yes" {
			t.Errorf("%s: PrivateUsers=yes: root becomes nobody inside, and the control socket refuses it", name)
		}
		if u.get("Service", "ProcSubset") == "pid" {
			t.Errorf("%s: ProcSubset=pid hides /proc/meminfo, which the automatic guest memory budget reads", name)
		}
		for _, key := range []string{"CapabilityBoundingSet", "AmbientCapabilities"} {
			v, set := u["Service"][key]
			if !set {
				t.Errorf("%s: no %s=: the service would keep every capability it gets", name, key)
			}
			for _, c := range strings.Fields(strings.Join(v, " ")) {
				if c != "CAP_NET_BIND_SERVICE" {
					t.Errorf("%s: %s= has %s; wcluster needs at most CAP_NET_BIND_SERVICE", name, key, c)
				}
			}
		}
		argv := execStart(t, u, name)
		if _, ok := flagValue(argv, "user"); ok {
			t.Errorf("%s: --user with DynamicUser=yes: the master cannot switch users", name)
		}
		// ProtectSystem=strict: the master writes only where systemd
		// made it a directory.
		for _, w := range []struct{ flag, key, base string }{
			{"cache-dir", "CacheDirectory", "/var/cache/"},
			{"kv-dir", "StateDirectory", "/var/lib/"},
			{"control", "RuntimeDirectory", "/run/"},
		} {
			v, ok := flagValue(argv, w.flag)
			if !ok {
				t.Errorf("%s: no --%s: its default is under HOME, read-only here", name, w.flag)
				continue
			}
			d := u.get("Service", w.key)
			if d == "" || !strings.HasPrefix(v, w.base+d+"/") && v != w.base+d {
				t.Errorf("%s: --%s %s is not in %s=%s (%s%s): ProtectSystem=strict makes it read-only", name, w.flag, v, w.key, d, w.base, d)
			}
		}
		f := readFilter(t, analyze, u)
		for _, call := range []string{"seccomp", "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self", "execve", "mprotect"} {
			if !f.allows(call) {
				t.Errorf("%s: SystemCallFilter= refuses %s, which a worker's own sandbox or wazero needs", name, call)
			}
		}
	}
}

var straceLine = regexp.MustCompile(`^\d+\s+(?:<\.\.\. ([a-z0-9_]+) resumed>|([a-z0-9_]+)\()`)

// TestDeploySystemdSyscalls runs wcluster.service's ExecStart, built as a
// release is (no race detector), under strace -f: start, a request, a
// reload that replaces the workers, a graceful stop. Every system call the
// master and its workers made must pass the unit's SystemCallFilter=, every
// socket's family its RestrictAddressFamilies=, and the workers must have
// applied their own seccomp filter (and Landlock, where the kernel has it).
func TestDeploySystemdSyscalls(t *testing.T) {
	t.Parallel()
	analyze := lookTool(t, "systemd-analyze", "systemd")
	strace := lookTool(t, "strace", "strace")
	u := readUnit(t, filepath.Join(systemdDir(), "wcluster.service"))
	f := readFilter(t, analyze, u)
	families := strings.Fields(u.get("Service", "RestrictAddressFamilies"))
	if len(families) == 0 {
		t.Fatal("wcluster.service has no RestrictAddressFamilies=")
	}

	bin := buildStatic(t, readDockerfile(t))
	argv := execStart(t, u, "wcluster.service")
	tmp := t.TempDir()
	// Not root, as under DynamicUser= (root's paths differ: a root master
	// warns and its workers keep files' owners): strace -u runs it as
	// nobody, owning only the directories systemd would make.
	var asUser []string
	if os.Geteuid() == 0 {
		const nobody = 65534
		asUser = []string{"-u", "nobody"}
		chmod(t, filepath.Dir(tmp), 0o755)
		chmod(t, tmp, 0o755)
		copyFile(t, bin, filepath.Join(tmp, "bin", "wcluster"), 0o755)
		bin = filepath.Join(tmp, "bin", "wcluster")
		for _, d := range []string{"cache", "state", "run"} {
			mkdirOwned(t, filepath.Join(tmp, d), nobody)
		}
	} else {
		t.Log("not root: traced as the test's user")
	}
	paths := unitPaths(t, argv, bin, tmp)
	if h := argv[len(argv)-1]; strings.HasSuffix(h, ".wasm") {
		paths[h] = filepath.Join(tmp, "handler.wasm")
		copyFile(t, helloGuest(t), paths[h], 0o644)
	}
	argv = rewriteArgs(argv, nil, paths)
	// No socket unit here: the master binds loopback itself.
	argv = append([]string{argv[0], argv[1], "--listen", "127.0.0.1:0"}, argv[2:]...)
	if dir, ok := flagValue(argv, "cache-dir"); ok {
		warm(t, dir, argv[len(argv)-1])
		if asUser != nil {
			err := filepath.WalkDir(dir, func(p string, _ os.DirEntry, err error) error {
				if err != nil {
					return err
				}
				return os.Chown(p, 65534, 65534)
			})
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	ctl, _ := flagValue(argv, "control")
	trace := filepath.Join(tmp, "strace.txt")
	straceArgs := append(append([]string{"-f", "-qq", "-s", "8", "-e", "signal=none", "-o", trace}, asUser...), argv...)
	cmd := exec.Command(strace, straceArgs...)
	cmd.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/"}
	w := launch(t, cmd)
	banner := w.waitOutput(`serving .* on (\S+) \(`, 3*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if body, err := fetch(ctx, "http://"+banner[1]+"/"); err != nil || body != "hello world\n" {
		t.Fatalf("request: %q %v", body, err)
	}
	if out, err := run(t, "reload", "--control", ctl); err != nil {
		t.Fatalf("wcluster reload: %v\n%s", err, out)
	}
	if body, err := fetch(ctx, "http://"+banner[1]+"/"); err != nil || body != "hello world\n" {
		t.Fatalf("request after the reload: %q %v", body, err)
	}
	if out, err := run(t, "stop", "--control", ctl); err != nil {
		t.Fatalf("wcluster stop: %v\n%s", err, out)
	}
	select {
	case <-w.done:
	case <-time.After(2 * time.Minute):
		t.Fatal("still running 2 minutes after wcluster stop")
	}

	if asUser != nil && strings.Contains(w.output(), "workers run as root") {
		t.Error("strace -u nobody: the master still ran as root")
	}
	b, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	calls := map[string]int{}
	famRe := regexp.MustCompile(`^\d+\s+socket(?:pair)?\((AF_[A-Z0-9]+)`)
	var sandboxed []string
	for _, line := range strings.Split(string(b), "\n") {
		m := straceLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		call := m[1] + m[2]
		calls[call]++
		if fm := famRe.FindStringSubmatch(line); fm != nil && !slices.Contains(families, fm[1]) {
			t.Errorf("socket family %s is not in RestrictAddressFamilies=%s: %s", fm[1], strings.Join(families, " "), line)
		}
		if (call == "seccomp" || call == "landlock_restrict_self") && strings.HasSuffix(strings.TrimSpace(line), "= 0") && !slices.Contains(sandboxed, call) {
			sandboxed = append(sandboxed, call)
		}
	}
	if len(calls) < 20 {
		t.Fatalf("strace recorded only %d system calls", len(calls))
	}
	var refused []string
	for c := range calls {
		if !f.allows(c) {
			refused = append(refused, c)
		}
	}
	slices.Sort(refused)
	if len(refused) > 0 {
		t.Errorf("wcluster made system calls wcluster.service's SystemCallFilter= refuses: %v", refused)
	}
	if !slices.Contains(sandboxed, "seccomp") {
		t.Error("no worker loaded its seccomp filter (no seccomp(...) = 0 in the trace)")
	}
	if strings.Contains(string(b), "landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION) = ") && !regexp.MustCompile(`LANDLOCK_CREATE_RULESET_VERSION\) = -1`).Match(b) {
		if !slices.Contains(sandboxed, "landlock_restrict_self") {
			t.Error("the kernel has Landlock, but no worker restricted itself (no landlock_restrict_self(...) = 0)")
		}
	} else {
		t.Log("the kernel has no Landlock: only seccomp checked")
	}
	t.Logf("%d distinct system calls; sandbox applied with %v", len(calls), sandboxed)
}

// unitPaths maps the paths a unit's ExecStart names (binary, directories
// systemd makes, handler) to ones of the test.
func unitPaths(t *testing.T, argv []string, bin, tmp string) map[string]string {
	t.Helper()
	paths := map[string]string{argv[0]: bin}
	if v, ok := flagValue(argv, "cache-dir"); ok {
		paths[v] = filepath.Join(tmp, "cache")
	}
	if v, ok := flagValue(argv, "kv-dir"); ok {
		paths[v] = filepath.Join(tmp, "state", "kv")
	}
	if v, ok := flagValue(argv, "control"); ok {
		paths[filepath.Dir(v)] = filepath.Join(tmp, "run")
		if err := os.MkdirAll(filepath.Join(tmp, "run"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if h := argv[len(argv)-1]; strings.HasSuffix(h, ".wasm") {
		paths[h] = helloGuest(t)
	}
	return paths
}

// selfSigned makes a certificate for 127.0.0.1 and localhost.
func selfSigned(t *testing.T) (certPEM, keyPEM []byte, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), pool
}

// TestDeploySystemdConfigUnit: the config-mode unit's ExecStart with the
// shipped wcluster.toml, its TLS certificate and key where LoadCredential=
// puts them (a directory only the service's user can read), run as systemd
// would: as an unprivileged uid of the DynamicUser= range owning only its
// directories and credentials, HOME=/, a NOTIFY_SOCKET: READY=1, HTTPS from the tenant,
// /readyz on the admin address, status over the control socket, a reload
// on ExecReload's SIGHUP and a graceful stop within TimeoutStopSec.
func TestDeploySystemdConfigUnit(t *testing.T) {
	t.Parallel()
	const name = "wcluster-config.service"
	u := readUnit(t, filepath.Join(systemdDir(), name))
	argv := execStart(t, u, name)
	for _, kv := range [][2]string{{"Type", "notify"}, {"KillMode", "mixed"}, {"ExecReload", "/bin/kill -HUP $MAINPID"}} {
		if got := u.get("Service", kv[0]); got != kv[1] {
			t.Errorf("%s: %s=%q, want %q", name, kv[0], got, kv[1])
		}
	}
	cfg, ok := flagValue(argv, "config")
	if !ok {
		t.Fatalf("%s: ExecStart has no --config", name)
	}
	admin, ok := flagValue(argv, "admin")
	if !ok || !strings.HasPrefix(admin, "127.0.0.1:") {
		t.Errorf("%s: --admin %q: keep /metrics on loopback (set: %v)", name, admin, ok)
	}
	if _, ok := flagValue(argv, "control"); !ok {
		t.Fatalf("%s: ExecStart has no --control", name)
	}

	// The credentials: ID → source file; the service sees them in
	// /run/credentials/UNIT/ID.
	credDir := "/run/credentials/" + name
	creds := map[string]string{}
	for _, v := range u["Service"]["LoadCredential"] {
		id, src, ok := strings.Cut(v, ":")
		if !ok || !filepath.IsAbs(src) {
			t.Fatalf("%s: LoadCredential=%s: want ID:/absolute/path", name, v)
		}
		creds[id] = src
	}
	if len(creds) == 0 {
		t.Fatalf("%s: no LoadCredential=: TLS keys would have to be readable by the dynamic user", name)
	}
	toml, err := os.ReadFile(filepath.Join(systemdDir(), filepath.Base(cfg)))
	if err != nil {
		t.Fatalf("the config %s names: %v (ship it as deploy/systemd/%s)", cfg, err, filepath.Base(cfg))
	}
	orig := slices.Clone(toml)
	tlsRe := regexp.MustCompile(`tls = \{ cert = "([^"]+)", key = "([^"]+)" \}`)
	tlsm := tlsRe.FindAllSubmatch(toml, -1)
	if len(tlsm) == 0 {
		t.Fatalf("%s: no tenant with tls = { cert = ..., key = ... }", filepath.Base(cfg))
	}

	tmp := t.TempDir()
	etc, credTmp := filepath.Join(tmp, "etc"), filepath.Join(tmp, "credentials")
	for _, d := range []string{etc, credTmp} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	certPEM, keyPEM, pool := selfSigned(t)
	for _, m := range tlsm {
		for i, p := range []string{string(m[1]), string(m[2])} {
			id, found := strings.CutPrefix(p, credDir+"/")
			if _, loaded := creds[id]; !found || !loaded {
				t.Fatalf("%s: tls path %s is not a credential of %s (%s/ID with LoadCredential=ID:...)", filepath.Base(cfg), p, name, credDir)
			}
			data := certPEM
			if i == 1 {
				data = keyPEM
			}
			if err := os.WriteFile(filepath.Join(credTmp, id), data, 0o400); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Its handlers, relative to the file: the hello guest.
	for _, m := range regexp.MustCompile(`(?m)^handler = "([^"]+)"`).FindAllSubmatch(toml, -1) {
		b, err := os.ReadFile(helloGuest(t))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(etc, string(m[1])), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Its listeners, on loopback ports of ours.
	var addrs []string
	toml = regexp.MustCompile(`(?m)^listen = \[[^\]]*\]`).ReplaceAllFunc(toml, func(l []byte) []byte {
		a := "127.0.0.1:" + strconv.Itoa(freePort(t))
		addrs = append(addrs, a)
		return []byte(`listen = ["` + a + `"]`)
	})
	if len(addrs) == 0 {
		t.Fatalf("%s: no tenant with listen = [...]", filepath.Base(cfg))
	}
	// A port below 1024 needs CAP_NET_BIND_SERVICE, the master binding
	// it as the dynamic user.
	for _, m := range regexp.MustCompile(`(?m)^listen = \[([^\]]*)\]`).FindAllSubmatch(orig, -1) {
		for _, a := range regexp.MustCompile(`"[^"]*:(\d+)"`).FindAllSubmatch(m[1], -1) {
			if p, _ := strconv.Atoi(string(a[1])); p < 1024 && (!strings.Contains(u.get("Service", "AmbientCapabilities"), "CAP_NET_BIND_SERVICE") ||
				!strings.Contains(u.get("Service", "CapabilityBoundingSet"), "CAP_NET_BIND_SERVICE")) {
				t.Errorf("%s listens on port %d: %s needs CAP_NET_BIND_SERVICE in AmbientCapabilities= and CapabilityBoundingSet=", filepath.Base(cfg), p, name)
			}
		}
	}
	toml = bytes.ReplaceAll(toml, []byte(credDir), []byte(credTmp))
	if err := os.WriteFile(filepath.Join(etc, filepath.Base(cfg)), toml, 0o644); err != nil {
		t.Fatal(err)
	}

	bin, cred, serviceCmd := asDynamicUser(t, tmp, credTmp, etc)

	paths := unitPaths(t, argv, bin, tmp)
	paths[filepath.Dir(cfg)] = etc
	adminAddr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	argv = rewriteArgs(argv, map[string]string{"admin": adminAddr}, paths)
	cfgPath, _ := flagValue(argv, "config")
	cacheDir, _ := flagValue(argv, "cache-dir")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, err := serviceCmd(ctx, bin, "check", "--config", cfgPath, "--cache-dir", cacheDir).CombinedOutput(); err != nil {
		t.Fatalf("wcluster check --config (the shipped %s): %v\n%s", filepath.Base(cfg), err, out)
	}

	n := sdNotifySocket(t)
	if cred != nil { // systemd's notify socket takes any sender
		chmod(t, filepath.Dir(filepath.Dir(n.path)), 0o755)
		chmod(t, filepath.Dir(n.path), 0o755)
		chmod(t, n.path, 0o666)
	}
	cmd := serviceCmd(context.Background(), argv...)
	cmd.Env = append(cmd.Env, "NOTIFY_SOCKET="+n.path)
	w := launch(t, cmd)
	n.expect(w, "READY", 3*time.Minute)
	if cred != nil {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", w.cmd.Process.Pid))
		if m := regexp.MustCompile(`(?m)^Uid:\s+(\d+)`).FindSubmatch(b); err != nil || m == nil || string(m[1]) != strconv.Itoa(dynamicUID) {
			t.Fatalf("the master does not run as uid %d: %v %q", dynamicUID, err, m)
		}
	}

	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool},
		DisableKeepAlives: true,
	}}
	get := func(url string) (int, string, error) {
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		resp, err := client.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}
	for _, a := range addrs {
		if code, body, err := get("https://" + a + "/"); err != nil || code != 200 || body != "hello world\n" {
			t.Errorf("https://%s/: %d %q %v", a, code, body, err)
		}
	}
	if code, _, err := get("http://" + adminAddr + "/readyz"); err != nil || code != 200 {
		t.Errorf("/readyz on --admin: %d %v", code, err)
	}
	ctl, _ := flagValue(argv, "control")
	if out, err := run(t, "status", "--control", ctl); err != nil {
		t.Errorf("wcluster status --control %s: %v\n%s", ctl, err, out)
	}

	w.cmd.Process.Signal(syscall.SIGHUP) // ExecReload
	n.expect(w, "RELOADING", 30*time.Second)
	n.expect(w, "READY", 3*time.Minute)
	for _, a := range addrs {
		if code, body, err := get("https://" + a + "/"); err != nil || code != 200 || body != "hello world\n" {
			t.Errorf("after the reload, https://%s/: %d %q %v", a, code, body, err)
		}
	}

	stopTimeout := systemdDuration(t, u.get("Service", "TimeoutStopSec"))
	if shutdown := shutdownTimeout(t, argv); stopTimeout <= shutdown+time.Second {
		t.Errorf("TimeoutStopSec %v must exceed --shutdown-timeout %v + 1s", stopTimeout, shutdown)
	}
	w.cmd.Process.Signal(syscall.SIGTERM)
	n.expect(w, "STOPPING", 30*time.Second)
	select {
	case <-w.done:
		if w.err != nil {
			t.Fatalf("exit after SIGTERM: %v", w.err)
		}
	case <-time.After(stopTimeout):
		t.Fatal(fmt.Sprintf("still running TimeoutStopSec (%v) after SIGTERM", stopTimeout))
	}
}

// dynamicUID is the first uid of systemd's range for DynamicUser=.
const dynamicUID = 61184

func chmod(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func chown(t *testing.T, path string, uid int) {
	t.Helper()
	if err := os.Chown(path, uid, uid); err != nil {
		t.Fatal(err)
	}
}

func mkdirOwned(t *testing.T, dir string, uid int) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	chown(t, dir, uid)
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, mode); err != nil {
		t.Fatal(err)
	}
}

// asDynamicUser prepares tmp as DynamicUser= and LoadCredential= would
// (when the test runs as root): a uid of systemd's dynamic range owns the
// directories systemd makes (tmp/cache, tmp/state, tmp/run) and the
// credentials' copies in credDir (0400, the directory 0500), and nothing
// else; readable dirs are made traversable. It returns the binary to run
// (a copy others may execute), the credential, and a command maker that
// runs as that user with HOME=/ and $CREDENTIALS_DIRECTORY, as systemd
// runs a dynamic user's service.
func asDynamicUser(t *testing.T, tmp, credDir string, readable ...string) (string, *syscall.Credential, func(context.Context, ...string) *exec.Cmd) {
	t.Helper()
	bin := env.bin
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		cred = &syscall.Credential{Uid: dynamicUID, Gid: dynamicUID}
		bin = filepath.Join(tmp, "bin", "wcluster")
		copyFile(t, env.bin, bin, 0o755)
		for _, d := range append([]string{filepath.Dir(tmp), tmp}, readable...) {
			chmod(t, d, 0o755)
		}
		for _, d := range []string{"cache", "state", "run"} {
			mkdirOwned(t, filepath.Join(tmp, d), dynamicUID)
		}
		entries, _ := os.ReadDir(credDir)
		for _, e := range entries {
			chown(t, filepath.Join(credDir, e.Name()), dynamicUID)
		}
		chown(t, credDir, dynamicUID)
		chmod(t, credDir, 0o500)
	} else {
		t.Log("not root: the service runs as the test's user")
	}
	return bin, cred, func(ctx context.Context, argv ...string) *exec.Cmd {
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/", "CREDENTIALS_DIRECTORY=" + credDir}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		return cmd
	}
}

// TestDeploySystemdTLSCredentials follows wcluster.service's TLS comment
// literally: its LoadCredential= lines uncommented and the flags it names
// added to ExecStart. systemd-analyze verify accepts the result and still
// rates it at most 2.0, and the command, %d expanded to the credentials'
// directory, run as the dynamic user, serves HTTPS with the copies.
func TestDeploySystemdTLSCredentials(t *testing.T) {
	t.Parallel()
	analyze := lookTool(t, "systemd-analyze", "systemd")
	b, err := os.ReadFile(filepath.Join(systemdDir(), "wcluster.service"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	m := regexp.MustCompile(`TLS \(add (--tls-cert \S+ --tls-key \S+) to ExecStart\)`).FindStringSubmatch(text)
	if m == nil {
		t.Fatal("wcluster.service does not say which flags TLS adds to ExecStart (\"TLS (add --tls-cert ... --tls-key ... to ExecStart)\")")
	}
	creds := regexp.MustCompile(`(?m)^#(LoadCredential=(\S+?):(\S+))$`).FindAllStringSubmatch(text, -1)
	if len(creds) != 2 {
		t.Fatalf("wcluster.service: want two commented LoadCredential= lines, got %d", len(creds))
	}
	for _, c := range creds {
		text = strings.Replace(text, "#"+c[1], c[1], 1)
	}
	text = regexp.MustCompile(`(?m)^ExecStart=(\S+) serve `).ReplaceAllString(text, "ExecStart=$1 serve "+m[1]+" ")

	// The unit as an operator would have it, checked as shipped units are.
	vdir := t.TempDir()
	for _, name := range []string{"wcluster.service", "wcluster.socket"} {
		data := text
		if name == "wcluster.socket" {
			b, err := os.ReadFile(filepath.Join(systemdDir(), name))
			if err != nil {
				t.Fatal(err)
			}
			data = string(b)
		}
		data = regexp.MustCompile(`(?m)^ExecStart=\S+ `).ReplaceAllString(data, "ExecStart="+env.bin+" ")
		if err := os.WriteFile(filepath.Join(vdir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	unit := filepath.Join(vdir, "wcluster.service")
	if out, err := exec.CommandContext(ctx, analyze, "verify", "--man=no", "--generators=no", unit, filepath.Join(vdir, "wcluster.socket")).CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify, with TLS: %v\n%s", err, out)
	}
	out, err := exec.CommandContext(ctx, analyze, "security", "--offline=yes", "--no-pager", unit).CombinedOutput()
	sm := regexp.MustCompile(`Overall exposure level for \S+: (\d+\.\d+)`).FindSubmatch(out)
	if err != nil || sm == nil {
		t.Errorf("systemd-analyze security, with TLS: %v\n%s", err, out)
	} else if score, _ := strconv.ParseFloat(string(sm[1]), 64); score > 2.0 {
		t.Errorf("with TLS, exposure %.1f, want at most 2.0:\n%s", score, out)
	}

	// Run it: %d is the credentials' directory.
	tmp := t.TempDir()
	credTmp := filepath.Join(tmp, "credentials")
	if err := os.MkdirAll(credTmp, 0o700); err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, pool := selfSigned(t)
	for _, c := range creds {
		data := certPEM
		if strings.Contains(c[2], "key") {
			data = keyPEM
		}
		if err := os.WriteFile(filepath.Join(credTmp, c[2]), data, 0o400); err != nil {
			t.Fatal(err)
		}
	}
	handler := filepath.Join(tmp, "handler.wasm")
	copyFile(t, helloGuest(t), handler, 0o644)
	bin, _, serviceCmd := asDynamicUser(t, tmp, credTmp)
	u := readUnit(t, unit)
	line := strings.ReplaceAll(u.get("Service", "ExecStart"), "%d", credTmp)
	argv := strings.Fields(line)
	paths := unitPaths(t, argv, bin, tmp)
	paths[argv[len(argv)-1]] = handler
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	argv = rewriteArgs(argv, nil, paths)
	// No socket unit here: the master binds loopback itself.
	argv = append([]string{argv[0], argv[1], "--listen", addr}, argv[2:]...)
	w := launch(t, serviceCmd(context.Background(), argv...))
	w.waitOutput(`serving .* on `+regexp.QuoteMeta(addr), 3*time.Minute)
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool},
		DisableKeepAlives: true,
	}}
	req, _ := http.NewRequestWithContext(ctx, "GET", "https://"+addr+"/", nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("https://%s/: %v", addr, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || string(body) != "hello world\n" {
		t.Fatalf("https://%s/: %d %q %v", addr, resp.StatusCode, body, err)
	}
}
