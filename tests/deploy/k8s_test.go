package deploy

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/api/resmap"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// The Kubernetes base in deploy/k8s, rendered offline by kustomize's own
// library (what `kubectl apply -k` runs) and every object decoded strictly
// into the Kubernetes API types: a field they do not have (a typo such as
// readinesProbe, a field of a newer API) fails.

// podMonitor is the part of the Prometheus Operator's PodMonitor
// (monitoring.coreos.com/v1) the component uses: its CRD is not in
// k8s.io/api, so a local type, decoded as strictly.
type podMonitor struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   metav1.ObjectMeta `json:"metadata"`
	Spec       struct {
		Selector            metav1.LabelSelector `json:"selector"`
		PodMetricsEndpoints []struct {
			Port     string `json:"port"`
			Path     string `json:"path"`
			Interval string `json:"interval"`
		} `json:"podMetricsEndpoints"`
	} `json:"spec"`
}

type manifests struct {
	deployments []appsv1.Deployment
	services    []corev1.Service
	pdbs        []policyv1.PodDisruptionBudget
	configMaps  []corev1.ConfigMap
	hpas        []autoscalingv2.HorizontalPodAutoscaler
	netpols     []networkingv1.NetworkPolicy
	podMonitors []podMonitor
}

func k8sDir() string { return filepath.Join(env.root, "deploy", "k8s") }

// render runs kustomize on dir of fsys and decodes what it makes.
func render(t *testing.T, fsys filesys.FileSystem, dir string) manifests {
	t.Helper()
	rm, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(fsys, dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	return decode(t, rm)
}

func decode(t *testing.T, rm resmap.ResMap) manifests {
	t.Helper()
	var m manifests
	for _, r := range rm.Resources() {
		b, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		gvk := r.GetGvk()
		id := gvk.ApiVersion() + " " + gvk.Kind + " " + r.GetName()
		strict := func(v any) {
			if err := yaml.UnmarshalStrict(b, v); err != nil {
				t.Fatalf("%s: %v\n%s", id, err, b)
			}
		}
		switch gvk.ApiVersion() + " " + gvk.Kind {
		case "apps/v1 Deployment":
			var v appsv1.Deployment
			strict(&v)
			m.deployments = append(m.deployments, v)
		case "v1 Service":
			var v corev1.Service
			strict(&v)
			m.services = append(m.services, v)
		case "policy/v1 PodDisruptionBudget":
			var v policyv1.PodDisruptionBudget
			strict(&v)
			m.pdbs = append(m.pdbs, v)
		case "v1 ConfigMap":
			var v corev1.ConfigMap
			strict(&v)
			m.configMaps = append(m.configMaps, v)
		case "autoscaling/v2 HorizontalPodAutoscaler":
			var v autoscalingv2.HorizontalPodAutoscaler
			strict(&v)
			m.hpas = append(m.hpas, v)
		case "networking.k8s.io/v1 NetworkPolicy":
			var v networkingv1.NetworkPolicy
			strict(&v)
			m.netpols = append(m.netpols, v)
		case "monitoring.coreos.com/v1 PodMonitor":
			var v podMonitor
			strict(&v)
			m.podMonitors = append(m.podMonitors, v)
		default:
			t.Fatalf("%s is not a kind this test knows: add it here", id)
		}
	}
	if len(m.deployments) != 1 || len(m.services) != 1 {
		t.Fatalf("want one Deployment and one Service, got %d and %d", len(m.deployments), len(m.services))
	}
	return m
}

// readManifests renders the base as `kubectl apply -k deploy/k8s` would.
func readManifests(t *testing.T) manifests {
	t.Helper()
	return render(t, filesys.MakeFsOnDisk(), k8sDir())
}

func containerPort(t *testing.T, c corev1.Container, ref string) int {
	t.Helper()
	if n, err := strconv.Atoi(ref); err == nil {
		return n
	}
	for _, p := range c.Ports {
		if p.Name == ref {
			return int(p.ContainerPort)
		}
	}
	t.Fatalf("container %s has no port named %q", c.Name, ref)
	return 0
}

// configMapFor is the rendered ConfigMap a volume names.
func (m manifests) configMapFor(t *testing.T, v corev1.Volume) corev1.ConfigMap {
	t.Helper()
	for _, cm := range m.configMaps {
		if cm.Name == v.ConfigMap.Name {
			return cm
		}
	}
	t.Fatalf("volume %s: no ConfigMap %s in the base", v.Name, v.ConfigMap.Name)
	return corev1.ConfigMap{}
}

// sizeBytes reads wcluster's sizes: 448MiB, 1GiB, 512KiB, bytes.
func sizeBytes(t *testing.T, s string) int64 {
	t.Helper()
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseInt(n, 10, 64)
			if err != nil {
				t.Fatalf("size %q: %v", s, err)
			}
			return v * u.mult
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatalf("size %q: want N, NKiB, NMiB or NGiB", s)
	}
	return v
}

// TestDeployKubernetesBase: what the base promises an operator, on the
// objects kustomize renders: Guaranteed QoS for real, memory flags that fit
// the limit, a pod that cannot escalate and has no API token, the admin
// port off the Service and reachable only from the monitoring namespace,
// an HPA on the Deployment's CPU, spread over zones and nodes, the
// ConfigMap's wcluster.toml accepted by `wcluster check`, the handlers in
// an image volume, no image by :latest; and the PodMonitor component.
func TestDeployKubernetesBase(t *testing.T) {
	t.Parallel()
	m := readManifests(t)
	dep := m.deployments[0]
	pod := dep.Spec.Template
	spec := pod.Spec
	c := spec.Containers[0]

	// Guaranteed QoS: every container's requests equal its limits, for
	// cpu and memory both.
	for _, ct := range append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...) {
		for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			req, lim := ct.Resources.Requests[res], ct.Resources.Limits[res]
			if lim.IsZero() || req.Cmp(lim) != 0 {
				t.Errorf("container %s: %s request %s, limit %s: Guaranteed QoS needs both, equal", ct.Name, res, req.String(), lim.String())
			}
		}
	}
	argv := c.Args
	workers, err := strconv.Atoi(flagOr(t, argv, "workers", ""))
	if err != nil {
		t.Fatalf("--workers: %v", err)
	}
	cpu := c.Resources.Limits[corev1.ResourceCPU]
	if cpu.MilliValue() != int64(workers)*1000 {
		t.Errorf("--workers=%d but a CPU limit of %s: one worker per whole core", workers, cpu.String())
	}
	memLimit := c.Resources.Limits[corev1.ResourceMemory]
	maxWorker, ok := flagValue(argv, "max-worker-memory")
	if !ok || sizeBytes(t, maxWorker) == 0 {
		t.Fatal("no --max-worker-memory: a leaking worker would be OOM-killed with the pod instead of recycled")
	}
	const masterShare = 64 << 20
	if need := int64(workers)*sizeBytes(t, maxWorker) + masterShare; need > memLimit.Value() {
		t.Errorf("%d workers x --max-worker-memory %s + 64MiB for the master = %d bytes > the memory limit %s", workers, maxWorker, need, memLimit.String())
	}
	budget, ok := flagValue(argv, "guest-memory-budget")
	if !ok || budget == "auto" || sizeBytes(t, budget) == 0 {
		t.Errorf("--guest-memory-budget %q: set it against the limit", budget)
	} else {
		if sizeBytes(t, budget) >= sizeBytes(t, maxWorker) {
			t.Errorf("--guest-memory-budget %s must leave room under --max-worker-memory %s for the worker itself", budget, maxWorker)
		}
		if ml := sizeBytes(t, strings.Trim(flagOr(t, argv, "memory-limit", defaultFlag(t, "memory-limit")), `"`)); ml > sizeBytes(t, budget) {
			t.Errorf("--memory-limit %d > --guest-memory-budget %s: an instance could never grow that far", ml, budget)
		}
	}

	// No escalation, no token, nothing from the host.
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Error("automountServiceAccountToken must be false: wcluster uses no Kubernetes API")
	}
	psc := spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod securityContext %+v: want runAsNonRoot and seccompProfile RuntimeDefault", psc)
	}
	sc := c.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" || len(sc.Capabilities.Add) > 0 {
		t.Errorf("container securityContext %+v: want readOnlyRootFilesystem, no privilege escalation, drop ALL", sc)
	}
	if spec.HostNetwork || spec.HostPID || spec.HostIPC {
		t.Error("the pod shares a host namespace")
	}

	// Images: a tag or a digest, never latest.
	images := []string{}
	for _, ct := range append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...) {
		images = append(images, ct.Image)
	}
	var handlers *corev1.Volume
	for i, v := range spec.Volumes {
		if v.Image != nil {
			images = append(images, v.Image.Reference)
			handlers = &spec.Volumes[i]
		}
	}
	imageRe := regexp.MustCompile(`^[a-z0-9.\-]+(:[0-9]+)?/[a-z0-9._/\-]+(@sha256:[0-9a-f]{64}|:[A-Za-z0-9_][A-Za-z0-9_.\-]*)$`)
	for _, img := range images {
		if !imageRe.MatchString(img) || strings.HasSuffix(img, ":latest") {
			t.Errorf("image %q: want REGISTRY/NAME:TAG or @sha256:DIGEST, and not :latest", img)
		}
	}

	// The handlers come from an image volume the tenants' file names.
	if handlers == nil {
		t.Fatal("no image volume: handlers could only be shipped by rebuilding wcluster's image")
	}
	var cfgVol *corev1.Volume
	for i, v := range spec.Volumes {
		if v.ConfigMap != nil {
			cfgVol = &spec.Volumes[i]
		}
	}
	if cfgVol == nil {
		t.Fatal("no ConfigMap volume for wcluster.toml")
	}
	cfgPath, ok := flagValue(argv, "config")
	if !ok {
		t.Fatal("no --config: the ConfigMap's wcluster.toml is not served")
	}
	mountOf := func(name string) string {
		for _, vm := range c.VolumeMounts {
			if vm.Name == name {
				if !vm.ReadOnly {
					t.Errorf("volume %s is mounted read-write", name)
				}
				return vm.MountPath
			}
		}
		t.Fatalf("volume %s is not mounted", name)
		return ""
	}
	cm := m.configMapFor(t, *cfgVol)
	toml, ok := cm.Data[filepath.Base(cfgPath)]
	if filepath.Dir(cfgPath) != mountOf(cfgVol.Name) || !ok {
		t.Fatalf("--config %s is not in the ConfigMap %s mounted at %s (keys: %v)", cfgPath, cm.Name, mountOf(cfgVol.Name), keys(cm.Data))
	}
	hm := mountOf(handlers.Name)
	names := regexp.MustCompile(`(?m)^handler = "([^"]+)"`).FindAllStringSubmatch(toml, -1)
	if len(names) == 0 {
		t.Fatalf("%s names no handler:\n%s", cfgPath, toml)
	}
	for _, n := range names {
		if !strings.HasPrefix(n[1], hm+"/") {
			t.Errorf("handler %s is not in the image volume mounted at %s", n[1], hm)
		}
	}
	// The file, with its handler paths made ours, passes wcluster check.
	dir := t.TempDir()
	hello, err := os.ReadFile(helloGuest(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		p := filepath.Join(dir, "handlers", strings.TrimPrefix(n[1], hm))
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, hello, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	local := filepath.Join(dir, "wcluster.toml")
	if err := os.WriteFile(local, []byte(strings.ReplaceAll(toml, `"`+hm+"/", `"`+filepath.Join(dir, "handlers")+"/")), 0o644); err != nil {
		t.Fatal(err)
	}
	// As the pod runs it: the image's --listen is the tenants' default.
	listen, ok := flagValue(readDockerfile(t).entrypoint, "listen")
	if !ok {
		t.Fatal("the image's entrypoint has no --listen")
	}
	if out, err := run(t, "check", "--config", local, "--listen", listen, "--cache-dir", filepath.Join(dir, "cache")); err != nil {
		t.Errorf("wcluster check --config (the ConfigMap's %s): %v\n%s", filepath.Base(cfgPath), err, out)
	}
	// The TLS Secret, optional, readable by the pod's group only.
	for _, v := range spec.Volumes {
		if v.Secret != nil {
			if mode := v.Secret.DefaultMode; mode == nil || *mode&0o007 != 0 {
				t.Errorf("secret volume %s: defaultMode must give others nothing", v.Name)
			}
			if psc.FSGroup == nil {
				t.Errorf("secret volume %s: without fsGroup, uid %v cannot read a 0440 key", v.Name, psc.RunAsUser)
			}
		}
	}

	// The Service: the http port only.
	adminPort := containerPort(t, c, "admin")
	for _, p := range m.services[0].Spec.Ports {
		if containerPort(t, c, p.TargetPort.String()) == adminPort || int(p.Port) == adminPort {
			t.Errorf("Service port %s exposes the admin port", p.Name)
		}
	}
	// NetworkPolicy: the admin port from the monitoring namespace only.
	if len(m.netpols) != 1 {
		t.Fatalf("want one NetworkPolicy, got %d", len(m.netpols))
	}
	np := m.netpols[0]
	if !selects(np.Spec.PodSelector.MatchLabels, pod.Labels) {
		t.Errorf("NetworkPolicy selects %v, not the pods %v", np.Spec.PodSelector.MatchLabels, pod.Labels)
	}
	adminOpen := false
	for _, rule := range np.Spec.Ingress {
		for _, p := range rule.Ports {
			if p.Port == nil || containerPort(t, c, p.Port.String()) != adminPort {
				continue
			}
			adminOpen = true
			if len(rule.From) == 0 {
				t.Error("NetworkPolicy opens the admin port to everyone")
			}
			for _, peer := range rule.From {
				if peer.NamespaceSelector == nil || peer.NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] != "monitoring" || peer.IPBlock != nil {
					t.Errorf("NetworkPolicy opens the admin port to %+v, not the monitoring namespace only", peer)
				}
			}
		}
		if len(rule.Ports) == 0 {
			t.Error("NetworkPolicy has a rule for every port")
		}
	}
	if !adminOpen {
		t.Error("NetworkPolicy lets nothing reach the admin port: Prometheus could not scrape")
	}

	// HPA on the Deployment's CPU.
	if len(m.hpas) != 1 {
		t.Fatalf("want one HorizontalPodAutoscaler, got %d", len(m.hpas))
	}
	hpa := m.hpas[0]
	if ref := hpa.Spec.ScaleTargetRef; ref.Kind != "Deployment" || ref.Name != dep.Name || ref.APIVersion != "apps/v1" {
		t.Errorf("HPA scales %+v, not the Deployment %s", ref, dep.Name)
	}
	if dep.Spec.Replicas != nil {
		t.Errorf("the Deployment sets replicas: %d; with an HPA every kubectl apply would reset the count it chose", *dep.Spec.Replicas)
	}
	cpuMetric := false
	for _, mt := range hpa.Spec.Metrics {
		cpuMetric = cpuMetric || mt.Type == autoscalingv2.ResourceMetricSourceType && mt.Resource != nil && mt.Resource.Name == corev1.ResourceCPU
	}
	if !cpuMetric || hpa.Spec.MinReplicas == nil || *hpa.Spec.MinReplicas < 2 || hpa.Spec.MaxReplicas < *hpa.Spec.MinReplicas {
		t.Errorf("HPA: want a CPU metric and 2 <= minReplicas <= maxReplicas, got %+v", hpa.Spec)
	}
	for _, pdb := range m.pdbs {
		if pdb.Spec.MinAvailable != nil && pdb.Spec.MinAvailable.IntValue() >= int(*hpa.Spec.MinReplicas) {
			t.Errorf("PodDisruptionBudget minAvailable %v blocks every drain at minReplicas", pdb.Spec.MinAvailable)
		}
	}

	// Spread over zones and nodes.
	keysSpread := map[string]bool{}
	for _, tsc := range spec.TopologySpreadConstraints {
		if tsc.LabelSelector == nil || !selects(tsc.LabelSelector.MatchLabels, pod.Labels) {
			t.Errorf("topology spread on %s does not select the pods", tsc.TopologyKey)
		}
		keysSpread[tsc.TopologyKey] = true
	}
	for _, k := range []string{"topology.kubernetes.io/zone", "kubernetes.io/hostname"} {
		if !keysSpread[k] {
			t.Errorf("no topology spread constraint on %s", k)
		}
	}

	// The PodMonitor component, added as an overlay would add it.
	mem := filesys.MakeFsInMemory()
	err = filepath.WalkDir(k8sDir(), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return mem.WriteFile(filepath.Join("/base", strings.TrimPrefix(p, k8sDir())), b)
	})
	if err != nil {
		t.Fatal(err)
	}
	mem.WriteFile("/overlay/kustomization.yaml", []byte("resources: [../base]\ncomponents: [../base/components/podmonitor]\n"))
	withMon := render(t, mem, "/overlay")
	if len(withMon.podMonitors) != 1 {
		t.Fatalf("the podmonitor component adds %d PodMonitors, want 1", len(withMon.podMonitors))
	}
	pm := withMon.podMonitors[0]
	if !selects(pm.Spec.Selector.MatchLabels, pod.Labels) {
		t.Errorf("PodMonitor selects %v, not the pods %v", pm.Spec.Selector.MatchLabels, pod.Labels)
	}
	if len(pm.Spec.PodMetricsEndpoints) != 1 || containerPort(t, c, pm.Spec.PodMetricsEndpoints[0].Port) != adminPort || pm.Spec.PodMetricsEndpoints[0].Path != "/metrics" {
		t.Errorf("PodMonitor endpoints %+v: want /metrics on the admin port", pm.Spec.PodMetricsEndpoints)
	}
}

func flagOr(t *testing.T, argv []string, name, def string) string {
	t.Helper()
	if v, ok := flagValue(argv, name); ok {
		return v
	}
	if def == "" {
		t.Fatalf("no --%s in %v", name, argv)
	}
	return def
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
