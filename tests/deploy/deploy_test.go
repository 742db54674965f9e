package deploy

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// The deployment files in deploy/ checked against each other and against
// the real binary: what can be tested without a container engine, a
// cluster or systemd as PID 1. The image's entrypoint and the Deployment's
// args run as one command line on a binary built as the Dockerfile builds
// it, and the probes are sent to it; the systemd units are verified by
// systemd-analyze, and their ExecStart runs under systemd-socket-activate
// with a NOTIFY_SOCKET, as the .socket and Type=notify would run it.

// ---- Dockerfile ----

type dockerfile struct {
	froms      []string // FROM lines, in order
	runs       []string // RUN commands, continuation lines joined
	user       string
	expose     []int
	entrypoint []string // exec form
	cmd        []string
	stopsignal string
}

func readDockerfile(t *testing.T) dockerfile {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(env.root, "deploy", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var d dockerfile
	var logical []string
	cur := ""
	for _, line := range strings.Split(string(b), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur == "") {
			continue
		}
		if strings.HasSuffix(trimmed, "\\") {
			cur += strings.TrimSuffix(trimmed, "\\") + " "
			continue
		}
		logical = append(logical, cur+trimmed)
		cur = ""
	}
	for _, l := range logical {
		if l == "" {
			continue
		}
		instr, rest, _ := strings.Cut(l, " ")
		rest = strings.TrimSpace(rest)
		switch strings.ToUpper(instr) {
		case "FROM":
			d.froms = append(d.froms, rest)
		case "RUN":
			d.runs = append(d.runs, rest)
		case "USER":
			d.user = rest
		case "STOPSIGNAL":
			d.stopsignal = rest
		case "EXPOSE":
			for _, p := range strings.Fields(rest) {
				n, err := strconv.Atoi(strings.TrimSuffix(p, "/tcp"))
				if err != nil {
					t.Fatalf("Dockerfile: EXPOSE %s", rest)
				}
				d.expose = append(d.expose, n)
			}
		case "ENTRYPOINT", "CMD":
			var argv []string
			if err := json.Unmarshal([]byte(rest), &argv); err != nil {
				t.Fatalf("Dockerfile: %s must be in exec form (a JSON array), so signals reach the master: %v", instr, err)
			}
			if strings.ToUpper(instr) == "ENTRYPOINT" {
				d.entrypoint = argv
			} else {
				d.cmd = argv
			}
		}
	}
	return d
}

// flagValue returns the last value of --name in argv ("--name v" or
// "--name=v"), and whether it is there.
func flagValue(argv []string, name string) (string, bool) {
	val, found := "", false
	for i, a := range argv {
		switch {
		case a == "--"+name || a == "-"+name:
			if i+1 < len(argv) {
				val, found = argv[i+1], true
			}
		case strings.HasPrefix(a, "--"+name+"="):
			val, found = strings.TrimPrefix(a, "--"+name+"="), true
		}
	}
	return val, found
}

// rewriteArgs replaces the values of the flags in set, and path prefixes
// (in arguments and flag values) by paths, so a command line written for a
// container or a unit runs here.
func rewriteArgs(argv []string, set map[string]string, paths map[string]string) []string {
	out := make([]string, len(argv))
	copy(out, argv)
	fix := func(s string) string {
		for from, to := range paths {
			if s == from || strings.HasPrefix(s, from+"/") {
				return to + strings.TrimPrefix(s, from)
			}
		}
		return s
	}
	for i := 0; i < len(out); i++ {
		a := out[i]
		name, val, eq := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if strings.HasPrefix(a, "-") {
			if v, ok := set[name]; ok {
				if eq {
					out[i] = "--" + name + "=" + v
				} else if i+1 < len(out) {
					out[i+1] = v
					i++
				}
				continue
			}
			if eq {
				out[i] = a[:len(a)-len(val)] + fix(val)
			}
			continue
		}
		out[i] = fix(a)
	}
	return out
}

func portOf(t *testing.T, addr string) int {
	t.Helper()
	i := strings.LastIndex(addr, ":")
	p, err := strconv.Atoi(addr[i+1:])
	if i < 0 || err != nil {
		t.Fatalf("address %q has no port", addr)
	}
	return p
}

func selects(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// defaultFlag reads a flag's default from `wcluster serve --help`.
func defaultFlag(t *testing.T, name string) string {
	t.Helper()
	out, err := run(t, "serve", "--help")
	if err != nil {
		t.Fatalf("serve --help: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`--` + regexp.QuoteMeta(name) + ` value[^\n]*\(default: ([^)]*)\)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("serve --help shows no default for --%s:\n%s", name, out)
	}
	return m[1]
}

// shutdownTimeout is the --shutdown-timeout argv sets, or the default.
func shutdownTimeout(t *testing.T, argv []string) time.Duration {
	t.Helper()
	v, ok := flagValue(argv, "shutdown-timeout")
	if !ok {
		v = defaultFlag(t, "shutdown-timeout")
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("--shutdown-timeout %q: %v", v, err)
	}
	return d
}

// TestDeployManifests: the manifests parse, and agree with each other and
// with the image's entrypoint: ports, probe paths, volumes for what the
// master writes, and a grace period that covers the preStop and the drain.
func TestDeployManifests(t *testing.T) {
	t.Parallel()
	d := readDockerfile(t)
	m := readManifests(t)
	dep := m.deployments[0]
	pod := dep.Spec.Template
	if !selects(dep.Spec.Selector.MatchLabels, pod.Labels) {
		t.Errorf("Deployment selector %v does not select its pods %v", dep.Spec.Selector.MatchLabels, pod.Labels)
	}
	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("want one container, got %d", len(pod.Spec.Containers))
	}
	c := pod.Spec.Containers[0]
	if len(c.Command) > 0 {
		t.Errorf("container command %v replaces the image's entrypoint; use args", c.Command)
	}
	argv := append(append([]string{}, d.entrypoint...), c.Args...)

	listen, ok := flagValue(argv, "listen")
	if !ok {
		t.Fatalf("entrypoint %v has no --listen", argv)
	}
	admin, ok := flagValue(argv, "admin")
	if !ok {
		t.Fatalf("entrypoint %v has no --admin (the probes' server)", argv)
	}
	httpPort, adminPort := portOf(t, listen), portOf(t, admin)
	if got := containerPort(t, c, "http"); got != httpPort {
		t.Errorf("container port http is %d, the entrypoint listens on %d", got, httpPort)
	}
	if got := containerPort(t, c, "admin"); got != adminPort {
		t.Errorf("container port admin is %d, the entrypoint's --admin is %d", got, adminPort)
	}
	for _, p := range []int{httpPort, adminPort} {
		found := false
		for _, e := range d.expose {
			found = found || e == p
		}
		if !found {
			t.Errorf("Dockerfile does not EXPOSE %d (EXPOSE %v)", p, d.expose)
		}
	}

	for _, pr := range []struct {
		name  string
		probe *corev1.Probe
		path  string
		need  bool
	}{
		{"readinessProbe", c.ReadinessProbe, "/readyz", true},
		{"livenessProbe", c.LivenessProbe, "/healthz", true},
		{"startupProbe", c.StartupProbe, "/healthz", false},
	} {
		if pr.probe == nil {
			if pr.need {
				t.Errorf("no %s", pr.name)
			}
			continue
		}
		if pr.probe.HTTPGet == nil {
			t.Errorf("%s is not an httpGet probe", pr.name)
			continue
		}
		if pr.probe.HTTPGet.Path != pr.path {
			t.Errorf("%s path %q, want %q", pr.name, pr.probe.HTTPGet.Path, pr.path)
		}
		if got := containerPort(t, c, pr.probe.HTTPGet.Port.String()); got != adminPort {
			t.Errorf("%s on port %d, want the admin port %d", pr.name, got, adminPort)
		}
	}

	// Grace: preStop sleep + --shutdown-timeout + the master's second of
	// kill grace, all within terminationGracePeriodSeconds.
	shutdown := shutdownTimeout(t, argv)
	preStop := int64(0)
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil {
		t.Error("no preStop: the pod would stop accepting before it leaves the Service's endpoints")
	} else if ps := c.Lifecycle.PreStop; ps.Sleep != nil {
		preStop = ps.Sleep.Seconds
	}
	if pod.Spec.TerminationGracePeriodSeconds == nil {
		t.Fatal("no terminationGracePeriodSeconds (the default, 30s, must be stated against --shutdown-timeout)")
	}
	grace := time.Duration(*pod.Spec.TerminationGracePeriodSeconds) * time.Second
	need := time.Duration(preStop)*time.Second + shutdown + time.Second
	if grace <= need {
		t.Errorf("terminationGracePeriodSeconds %v must exceed preStop %ds + --shutdown-timeout %v + 1s", grace, preStop, shutdown)
	} else {
		t.Logf("grace %v > preStop %ds + shutdown %v + 1s", grace, preStop, shutdown)
	}

	// Everything the master writes is on a volume: the root is read-only.
	if sc := c.SecurityContext; sc != nil && sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem {
		mounted := func(p string) bool {
			for _, vm := range c.VolumeMounts {
				if p == vm.MountPath || strings.HasPrefix(p, vm.MountPath+"/") {
					return !vm.ReadOnly
				}
			}
			return false
		}
		if dir, ok := flagValue(argv, "cache-dir"); !ok || !mounted(dir) {
			t.Errorf("read-only root: --cache-dir %q (set: %v) must be on a writable volume", dir, ok)
		}
		if ctl, ok := flagValue(argv, "control"); ok && !mounted(ctl) {
			t.Errorf("read-only root: --control %q must be on a writable volume", ctl)
		}
	}
	vols := map[string]bool{}
	for _, v := range pod.Spec.Volumes {
		vols[v.Name] = true
	}
	for _, vm := range c.VolumeMounts {
		if !vols[vm.Name] {
			t.Errorf("volumeMount %s has no volume", vm.Name)
		}
	}
	if sched, ok := flagValue(argv, "sched"); ok && sched == "reuseport" {
		t.Errorf("--sched reuseport resets queued connections when a worker restarts; use rr or shared in pods")
	}
	if _, ok := flagValue(argv, "workers"); !ok {
		t.Errorf("no --workers: the default follows the node's CPUs, not the pod's limit")
	}

	svc := m.services[0]
	if !selects(svc.Spec.Selector, pod.Labels) {
		t.Errorf("Service selector %v does not select the pods %v", svc.Spec.Selector, pod.Labels)
	}
	for _, p := range svc.Spec.Ports {
		if got := containerPort(t, c, p.TargetPort.String()); got != httpPort {
			t.Errorf("Service port %s targets %d, want the http port %d (the admin port stays off the Service)", p.Name, got, httpPort)
		}
	}
	for _, pdb := range m.pdbs {
		if !selects(pdb.Spec.Selector.MatchLabels, pod.Labels) {
			t.Errorf("PodDisruptionBudget %s selects %v, not the pods %v", pdb.Name, pdb.Spec.Selector.MatchLabels, pod.Labels)
		}
	}
}

var staticBin struct {
	once sync.Once
	path string
	err  error
}

// buildStatic builds wcluster as the Dockerfile does (CGO_ENABLED=0) and
// checks it is static: distroless/static and scratch have no libc.
func buildStatic(t *testing.T, d dockerfile) string {
	t.Helper()
	build := ""
	for _, r := range d.runs {
		if strings.Contains(r, "go build") {
			build = r
		}
	}
	for _, want := range []string{"CGO_ENABLED=0", "./cmd/wcluster"} {
		if !strings.Contains(build, want) {
			t.Fatalf("the Dockerfile's go build (%q) lacks %s", build, want)
		}
	}
	staticBin.once.Do(func() {
		staticBin.path = filepath.Join(env.dir, "wcluster-static")
		staticBin.err = goBuild([]string{"CGO_ENABLED=0"}, staticBin.path,
			"-trimpath", "-buildvcs=false", "-ldflags=-s -w", "./cmd/wcluster")
		if staticBin.err != nil {
			return
		}
		f, err := elf.Open(staticBin.path)
		if err != nil {
			staticBin.err = err
			return
		}
		defer f.Close()
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				staticBin.err = errors.New("the CGO_ENABLED=0 build is dynamically linked (has an ELF interpreter)")
			}
		}
	})
	if staticBin.err != nil {
		t.Fatal(staticBin.err)
	}
	return staticBin.path
}

// TestDeployEntrypoint: the image's entrypoint plus the Deployment's args,
// on the binary the Dockerfile builds, as the image's user would run it
// (HOME elsewhere, nothing else in the environment), with its ports moved
// to loopback: it serves, its probes answer as the kubelet expects, and on
// SIGTERM it drains and exits 0 within the grace period.
func TestDeployEntrypoint(t *testing.T) {
	t.Parallel()
	d := readDockerfile(t)
	if len(d.froms) < 2 || !strings.HasPrefix(d.froms[0], "golang:") {
		t.Errorf("want a multi-stage build from golang:, got FROM %q", d.froms)
	}
	if last := d.froms[len(d.froms)-1]; !strings.Contains(last, "distroless/static") && last != "scratch" {
		t.Errorf("final stage FROM %q: want distroless/static or scratch", last)
	}
	if d.user == "" || strings.HasPrefix(d.user, "0") || d.user == "root" {
		t.Errorf("USER %q: the image must not run as root", d.user)
	}
	if len(d.entrypoint) < 2 || d.entrypoint[1] != "serve" {
		t.Fatalf("ENTRYPOINT %q: want [BINARY serve ...]", d.entrypoint)
	}
	bin := buildStatic(t, d)
	m := readManifests(t)
	pod := m.deployments[0].Spec.Template
	c := pod.Spec.Containers[0]

	argv := append(append(append([]string{}, d.entrypoint...), d.cmd...), c.Args...)
	httpAddr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	adminAddr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	tmp := t.TempDir()
	paths := map[string]string{d.entrypoint[0]: bin}
	for _, vm := range c.VolumeMounts { // each volume becomes a directory of ours
		dir := filepath.Join(tmp, "vol-"+vm.Name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		paths[vm.MountPath] = dir
	}
	// What the volumes hold: a ConfigMap's files (their paths to other
	// volumes made ours), the hello guest as every file of the handlers'
	// image that the ConfigMap names.
	for _, v := range pod.Spec.Volumes {
		if v.ConfigMap == nil {
			continue
		}
		dir := filepath.Join(tmp, "vol-"+v.Name)
		for name, data := range m.configMapFor(t, v).Data {
			for _, vm := range c.VolumeMounts {
				data = strings.ReplaceAll(data, `"`+vm.MountPath+"/", `"`+paths[vm.MountPath]+"/")
			}
			if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
				t.Fatal(err)
			}
			for _, h := range regexp.MustCompile(`(?m)^handler = "([^"]+)"`).FindAllStringSubmatch(data, -1) {
				b, err := os.ReadFile(helloGuest(t))
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(h[1], b, 0o644); err != nil {
					t.Fatalf("the handler %s of %s: %v", h[1], name, err)
				}
			}
		}
	}
	if dir, ok := flagValue(argv, "cache-dir"); ok {
		if _, mapped := paths[dir]; !mapped {
			paths[dir] = filepath.Join(tmp, "cache")
		}
	}
	argv = rewriteArgs(argv, map[string]string{"listen": httpAddr, "admin": adminAddr}, paths)
	t.Logf("running %q", argv)

	cmd := exec.Command(argv[0], argv[1:]...)
	home := filepath.Join(tmp, "home")
	os.MkdirAll(home, 0o755)
	cmd.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=" + home}
	for _, e := range c.Env {
		cmd.Env = append(cmd.Env, e.Name+"="+e.Value)
	}
	w := launch(t, cmd)
	banner := w.waitOutput(`serving .* on (\S+) \(`, 90*time.Second)
	if banner[1] != httpAddr {
		t.Fatalf("serving on %s, want %s", banner[1], httpAddr)
	}

	client := &http.Client{Timeout: 10 * time.Second}
	// Each probe as the kubelet runs it: every periodSeconds, each try
	// bounded by timeoutSeconds; it must succeed before failureThreshold
	// tries fail in a row (a liveness probe would restart the container,
	// a readiness probe would keep the pod out of the Service).
	probe := func(name string, p *corev1.Probe) {
		t.Helper()
		if p == nil || p.HTTPGet == nil {
			return
		}
		timeout := time.Duration(p.TimeoutSeconds) * time.Second
		if timeout == 0 {
			timeout = time.Second // the kubelet's defaults
		}
		period := time.Duration(p.PeriodSeconds) * time.Second
		if period == 0 {
			period = 10 * time.Second
		}
		tries := int(p.FailureThreshold)
		if tries == 0 {
			tries = 3
		}
		// The probe's port is the admin port (TestDeployManifests checks
		// that); here it is on loopback.
		url := "http://" + adminAddr + p.HTTPGet.Path
		try := func() error {
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
			resp, err := client.Do(req)
			if err != nil {
				return err
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode < 200 || resp.StatusCode >= 400 {
				return fmt.Errorf("status %d", resp.StatusCode)
			}
			return nil
		}
		tick := time.NewTicker(period)
		defer tick.Stop()
		var errs []string
		for i := 0; i < tries; i++ {
			if i > 0 {
				<-tick.C
			}
			err := try()
			if err == nil {
				return
			}
			errs = append(errs, err.Error())
		}
		t.Errorf("%s GET %s failed %d times in a row: %s", name, p.HTTPGet.Path, tries, strings.Join(errs, "; "))
	}
	probe("startupProbe", c.StartupProbe)
	probe("livenessProbe", c.LivenessProbe)
	probe("readinessProbe", c.ReadinessProbe)

	body, err := fetch(context.Background(), "http://"+httpAddr+"/")
	if err != nil || body != "hello world\n" {
		t.Fatalf("request: %q %v", body, err)
	}
	if ctl, ok := flagValue(argv, "control"); ok {
		if out, err := run(t, "status", "--control", ctl); err != nil {
			t.Errorf("wcluster status --control %s (as kubectl exec would run it): %v\n%s", ctl, err, out)
		}
	}

	// The kubelet's stop: preStop, then SIGTERM; SIGKILL at the grace
	// period's end. The master must be gone before that.
	grace := 30 * time.Second
	if g := pod.Spec.TerminationGracePeriodSeconds; g != nil {
		grace = time.Duration(*g) * time.Second
	}
	if c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.Sleep != nil {
		ps := c.Lifecycle.PreStop
		grace -= time.Duration(ps.Sleep.Seconds) * time.Second
	}
	w.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-w.done:
		if w.err != nil {
			t.Fatalf("exit after SIGTERM: %v", w.err)
		}
	case <-time.After(grace):
		t.Fatalf("still running %v after SIGTERM: the kubelet would SIGKILL it", grace)
	}
}

// ---- systemd units ----

// unitFile is a parsed systemd unit: section → key → values in order.
type unitFile map[string]map[string][]string

func readUnit(t *testing.T, path string) unitFile {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if strings.HasSuffix(line, "\\") {
			t.Fatalf("%s:%d: continuation lines are not used here", path, n)
		}
		if line[0] == '[' {
			section = strings.Trim(line, "[]")
			u[section] = map[string][]string{}
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || section == "" {
			t.Fatalf("%s:%d: %q is not key=value in a section", path, n, line)
		}
		u[section][strings.TrimSpace(k)] = append(u[section][strings.TrimSpace(k)], strings.TrimSpace(v))
	}
	return u
}

func (u unitFile) get(section, key string) string {
	v := u[section][key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

// systemdDuration reads a plain systemd time span: 20, 20s, 1min 30s, 2m.
func systemdDuration(t *testing.T, s string) time.Duration {
	t.Helper()
	if n, err := strconv.Atoi(s); err == nil {
		return time.Duration(n) * time.Second
	}
	d, err := time.ParseDuration(strings.NewReplacer("min", "m", " ", "").Replace(s))
	if err != nil {
		t.Fatalf("time span %q: %v", s, err)
	}
	return d
}

// TestDeploySystemdUnits: the units pass systemd-analyze verify and say
// what a draining master needs; the service's ExecStart, under
// systemd-socket-activate with the socket's name and a NOTIFY_SOCKET,
// serves the passed socket, notifies READY=1, reloads on ExecReload's
// SIGHUP and stops on KillSignal within TimeoutStopSec.
func TestDeploySystemdUnits(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(env.root, "deploy", "systemd")
	svc := readUnit(t, filepath.Join(dir, "wcluster.service"))
	sock := readUnit(t, filepath.Join(dir, "wcluster.socket"))

	exec0 := svc.get("Service", "ExecStart")
	if strings.ContainsAny(exec0, `"'$%\`) {
		t.Fatalf("ExecStart %q: keep it free of quotes, variables and specifiers (this test splits it on spaces)", exec0)
	}
	argv := strings.Fields(exec0)
	if len(argv) < 2 || argv[1] != "serve" {
		t.Fatalf("ExecStart %q: want BINARY serve ...", exec0)
	}
	for _, kv := range [][3]string{
		{"Service", "Type", "notify"},
		{"Service", "KillMode", "mixed"},
		{"Service", "ExecReload", "/bin/kill -HUP $MAINPID"},
		{"Socket", "Accept", "no"},
	} {
		u := svc
		if kv[0] == "Socket" {
			u = sock
		}
		if got := u.get(kv[0], kv[1]); got != kv[2] && !(kv[1] == "Accept" && got == "") {
			t.Errorf("[%s] %s=%q, want %q", kv[0], kv[1], got, kv[2])
		}
	}
	if ks := svc.get("Service", "KillSignal"); ks != "" && ks != "SIGTERM" {
		t.Errorf("KillSignal=%s: the master drains on SIGTERM", ks)
	}
	if !strings.Contains(svc.get("Unit", "Requires")+" "+svc.get("Unit", "After"), "wcluster.socket") {
		t.Error("the service must require the socket")
	}
	if sched, ok := flagValue(argv, "sched"); ok && sched == "reuseport" {
		t.Error("ExecStart uses --sched reuseport, which cannot serve a passed socket")
	}
	shutdown := shutdownTimeout(t, argv)
	stopTimeout := 90 * time.Second // DefaultTimeoutStopSec
	if v := svc.get("Service", "TimeoutStopSec"); v != "" {
		stopTimeout = systemdDuration(t, v)
	}
	if stopTimeout <= shutdown+time.Second {
		t.Errorf("TimeoutStopSec %v must exceed --shutdown-timeout %v + the master's 1s", stopTimeout, shutdown)
	}
	listens := sock["Socket"]["ListenStream"]
	if len(listens) == 0 {
		t.Fatal("the socket has no ListenStream=")
	}

	// systemd-analyze verify, on copies whose ExecStart names our binary
	// (it checks the command exists).
	if analyze, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Error("systemd-analyze not installed (Debian package systemd; `make deps` installs it): units not verified")
	} else {
		vdir := t.TempDir()
		for _, name := range []string{"wcluster.service", "wcluster.socket"} {
			b, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			b = bytes.ReplaceAll(b, []byte("ExecStart="+argv[0]+" "), []byte("ExecStart="+env.bin+" "))
			if err := os.WriteFile(filepath.Join(vdir, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, analyze, "verify", "--man=no", "--generators=no",
			filepath.Join(vdir, "wcluster.service"), filepath.Join(vdir, "wcluster.socket"))
		out, err := cmd.CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("systemd-analyze verify: %v\n%s", err, out)
		}
	}

	// Run it as the units would.
	n := sdNotifySocket(t)
	tmp := t.TempDir()
	paths := map[string]string{argv[0]: env.bin}
	if v, ok := flagValue(argv, "cache-dir"); ok {
		paths[v] = filepath.Join(tmp, "cache")
	}
	if v, ok := flagValue(argv, "kv-dir"); ok {
		paths[v] = filepath.Join(tmp, "state", "kv")
	}
	if v, ok := flagValue(argv, "control"); ok {
		paths[filepath.Dir(v)] = filepath.Join(tmp, "run")
		os.MkdirAll(filepath.Join(tmp, "run"), 0o755)
	}
	if h := argv[len(argv)-1]; strings.HasSuffix(h, ".wasm") {
		paths[h] = helloGuest(t)
	}
	argv = rewriteArgs(argv, map[string]string{"listen": "127.0.0.1:0"}, paths)
	if dir, ok := flagValue(argv, "cache-dir"); ok && strings.HasSuffix(argv[len(argv)-1], ".wasm") {
		warm(t, dir, argv[len(argv)-1])
	}
	if _, ok := flagValue(argv, "listen"); !ok {
		// Ignored under socket activation; should that fail, the master
		// binds loopback rather than every address.
		argv = append([]string{argv[0], argv[1], "--listen", "127.0.0.1:0"}, argv[2:]...)
	}
	extra := []string{"-E", "NOTIFY_SOCKET=" + n.path}
	if name := sock.get("Socket", "FileDescriptorName"); name != "" {
		extra = append(extra, "--fdname="+name)
	}
	w, addr := socketActivated(t, extra, argv...)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	first := make(chan error, 1)
	go func() {
		_, err := fetch(ctx, "http://"+addr+"/")
		first <- err
	}()
	if banner := w.waitOutput(`serving .* on (\S+) \(`, 90*time.Second); banner[1] != addr {
		t.Fatalf("serving %s, want the socket's %s", banner[1], addr)
	}
	n.expect(w, "READY", 15*time.Second)
	if err := <-first; err != nil {
		t.Fatalf("request through the unit's socket: %v", err)
	}
	if ctl, ok := flagValue(argv, "control"); ok {
		if out, err := run(t, "status", "--control", ctl); err != nil {
			t.Errorf("wcluster status --control %s: %v\n%s", ctl, err, out)
		}
	}

	w.cmd.Process.Signal(syscall.SIGHUP) // ExecReload
	n.expect(w, "RELOADING", 30*time.Second)
	n.expect(w, "READY", 90*time.Second)

	w.cmd.Process.Signal(syscall.SIGTERM) // KillSignal
	n.expect(w, "STOPPING", 30*time.Second)
	select {
	case <-w.done:
		if w.err != nil {
			t.Fatalf("exit after SIGTERM: %v", w.err)
		}
	case <-time.After(stopTimeout):
		t.Fatalf("still running TimeoutStopSec (%v) after SIGTERM: systemd would SIGKILL it", stopTimeout)
	}
}
