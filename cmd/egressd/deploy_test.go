package main

// Tests of the deployment artifacts against the binaries' own flag sets:
// the Kubernetes manifests in deploy/kubernetes (decoded strictly into the
// Kubernetes API types) and the Dockerfile (its paths, user, ports and
// health check, and its build line run for real).

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"

	"github.com/egressd/egressd/firewall"
	"github.com/egressd/egressd/internal/privtest"
)

const (
	repoRoot      = "../.."
	manifestDir   = repoRoot + "/deploy/kubernetes"
	dockerfile    = repoRoot + "/Dockerfile"
	kustomization = "kustomization.yaml"
)

// manifests is every object in deploy/kubernetes, by kind.
type manifests struct {
	files         []string // the YAML files other than the kustomization
	pods          []corev1.Pod
	configMaps    []corev1.ConfigMap
	namespaces    []corev1.Namespace
	services      []corev1.Service
	netpols       []networkingv1.NetworkPolicy
	kustomization kustomize
}

// kustomize is the part of a Kustomization the example uses; decoding into
// it strictly refuses any other field, so a new one must be added here (and
// checked) first.
type kustomize struct {
	APIVersion string           `json:"apiVersion"`
	Kind       string           `json:"kind"`
	Namespace  string           `json:"namespace"`
	Resources  []string         `json:"resources"`
	Images     []kustomizeImage `json:"images"`
}

type kustomizeImage struct {
	Name    string `json:"name"`
	NewName string `json:"newName,omitempty"`
	NewTag  string `json:"newTag,omitempty"`
}

// loadManifests decodes every document of every YAML file strictly (unknown
// or duplicate fields are errors) into the Kubernetes type its kind names.
// A kind the test does not know fails it: a new kind of object needs its
// invariants written down here first.
func loadManifests(t *testing.T) manifests {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(manifestDir, "*.yaml"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no manifests in %s: %v", manifestDir, err)
	}
	var m manifests
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		name := filepath.Base(p)
		if name == kustomization {
			if err := yaml.UnmarshalStrict(b, &m.kustomization); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			continue
		}
		m.files = append(m.files, name)
		for i, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(b), -1) {
			if strings.TrimSpace(regexp.MustCompile(`(?m)^\s*#.*$`).ReplaceAllString(doc, "")) == "" {
				continue
			}
			var tm struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
			}
			if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
				t.Fatalf("%s document %d: %v", name, i+1, err)
			}
			var into any
			switch tm.APIVersion + " " + tm.Kind {
			case "v1 Pod":
				into = appendNew(&m.pods)
			case "v1 ConfigMap":
				into = appendNew(&m.configMaps)
			case "v1 Namespace":
				into = appendNew(&m.namespaces)
			case "v1 Service":
				into = appendNew(&m.services)
			case "networking.k8s.io/v1 NetworkPolicy":
				into = appendNew(&m.netpols)
			default:
				t.Fatalf("%s document %d: kind %q (%s) has no invariants in this test; add them before adding the object", name, i+1, tm.Kind, tm.APIVersion)
			}
			if err := yaml.UnmarshalStrict([]byte(doc), into); err != nil {
				t.Fatalf("%s document %d (%s): %v", name, i+1, tm.Kind, err)
			}
		}
	}
	return m
}

// appendNew appends a zero T to list and returns a pointer to it.
func appendNew[T any](list *[]T) *T {
	*list = append(*list, *new(T))
	return &(*list)[len(*list)-1]
}

// egressdPod is the example pod taken apart: the firewall init container,
// the egressd sidecar and the rest, with their arguments parsed by the
// binary's own flag sets.
type egressdPod struct {
	pod      corev1.Pod
	firewall corev1.Container
	sidecar  corev1.Container
	others   []corev1.Container // every container that is neither
	fw       firewall.Config
	serve    *serveOptions
}

// args returns what a container runs as egressd's arguments: the image's
// entrypoint is egressd, so command is empty (or names egressd).
func egressdArgs(t *testing.T, c corev1.Container) []string {
	t.Helper()
	switch {
	case len(c.Command) == 0:
		return c.Args
	case len(c.Command) >= 1 && filepath.Base(c.Command[0]) == "egressd":
		return append(slices.Clone(c.Command[1:]), c.Args...)
	}
	t.Fatalf("container %s runs %q, not egressd", c.Name, c.Command)
	return nil
}

func splitPod(t *testing.T, pod corev1.Pod) egressdPod {
	t.Helper()
	p := egressdPod{pod: pod}
	var fwIdx, scIdx = -1, -1
	for i, c := range pod.Spec.InitContainers {
		args := c.Args
		if len(c.Command) > 0 {
			args = append(slices.Clone(c.Command), c.Args...)
		}
		switch {
		case slices.Contains(args, "firewall") && slices.Contains(args, "install"):
			fwIdx, p.firewall = i, c
		case slices.Contains(args, "serve"):
			scIdx, p.sidecar = i, c
		default:
			p.others = append(p.others, c)
		}
	}
	if fwIdx < 0 || scIdx < 0 {
		t.Fatalf("pod %s: want an init container running `egressd firewall install` and one running `egressd serve`", pod.Name)
	}
	if fwIdx > scIdx {
		t.Errorf("pod %s: the firewall init container must run before the egressd sidecar starts", pod.Name)
	}
	p.others = append(p.others, pod.Spec.Containers...)

	args := egressdArgs(t, p.firewall)
	if len(args) < 2 || args[0] != "firewall" || args[1] != "install" {
		t.Fatalf("firewall init container runs %q, want egressd firewall install ...", args)
	}
	fs, o := newFirewallFlags("install", io.Discard)
	if err := fs.Parse(args[2:]); err != nil || fs.NArg() > 0 {
		t.Fatalf("firewall init container's arguments %q: %v (extra %q)", args, err, fs.Args())
	}
	cfg, err := o.config()
	if err != nil {
		t.Fatalf("firewall init container's arguments %q: %v", args, err)
	}
	p.fw = cfg

	args = egressdArgs(t, p.sidecar)
	if len(args) < 1 || args[0] != "serve" {
		t.Fatalf("sidecar runs %q, want egressd serve ...", args)
	}
	sfs, so := newServeFlags(io.Discard)
	if err := sfs.Parse(args[1:]); err != nil || sfs.NArg() > 0 {
		t.Fatalf("sidecar's arguments %q: %v (extra %q)", args, err, sfs.Args())
	}
	p.serve = so
	return p
}

// listenPorts checks that every address of a listen flag is loopback and
// returns their ports, and whether both 127.0.0.1 and ::1 are there (the
// REDIRECT target of each family).
func listenPorts(t *testing.T, flagName string, addrs []string) (ports []uint16, bothFamilies bool) {
	t.Helper()
	var v4, v6 bool
	for _, a := range addrs {
		ap, err := netip.ParseAddrPort(a)
		if err != nil {
			t.Errorf("--%s %q: %v", flagName, a, err)
			continue
		}
		if !ap.Addr().IsLoopback() {
			t.Errorf("--%s %s is not a loopback address: egressd would be reachable from outside the pod", flagName, a)
		}
		v4 = v4 || ap.Addr() == netip.MustParseAddr("127.0.0.1")
		v6 = v6 || ap.Addr() == netip.IPv6Loopback()
		ports = append(ports, ap.Port())
	}
	return ports, v4 && v6
}

func caps(c corev1.Container) (add []corev1.Capability, dropsAll bool) {
	if c.SecurityContext == nil || c.SecurityContext.Capabilities == nil {
		return nil, false
	}
	return c.SecurityContext.Capabilities.Add, slices.Contains(c.SecurityContext.Capabilities.Drop, "ALL")
}

// runAs returns a container's effective uid and gid and runAsNonRoot, the
// container's settings over the pod's; set is false where nothing says.
func runAs(pod corev1.Pod, c corev1.Container) (uid, gid int64, uidSet, nonRoot bool) {
	if ps := pod.Spec.SecurityContext; ps != nil {
		if ps.RunAsUser != nil {
			uid, uidSet = *ps.RunAsUser, true
		}
		if ps.RunAsGroup != nil {
			gid = *ps.RunAsGroup
		}
		if ps.RunAsNonRoot != nil {
			nonRoot = *ps.RunAsNonRoot
		}
	}
	if cs := c.SecurityContext; cs != nil {
		if cs.RunAsUser != nil {
			uid, uidSet = *cs.RunAsUser, true
		}
		if cs.RunAsGroup != nil {
			gid = *cs.RunAsGroup
		}
		if cs.RunAsNonRoot != nil {
			nonRoot = *cs.RunAsNonRoot
		}
	}
	return uid, gid, uidSet, nonRoot
}

func TestKubernetesManifestsKeepTheSandboxInvariants(t *testing.T) {
	m := loadManifests(t)
	if len(m.pods) != 1 {
		t.Fatalf("want one example pod, got %d", len(m.pods))
	}
	p := splitPod(t, m.pods[0])
	spec := p.pod.Spec

	t.Run("OnlyTheFirewallInitContainerHoldsNetAdmin", func(t *testing.T) {
		add, dropsAll := caps(p.firewall)
		if !dropsAll || !slices.Equal(add, []corev1.Capability{"NET_ADMIN", "NET_RAW"}) {
			t.Errorf("firewall init container: drop ALL and add exactly NET_ADMIN, NET_RAW; got add %q, drops ALL %v", add, dropsAll)
		}
		for _, c := range append([]corev1.Container{p.sidecar}, p.others...) {
			add, dropsAll := caps(c)
			if len(add) > 0 || !dropsAll {
				t.Errorf("container %s: must drop ALL capabilities and add none; adds %q, drops ALL %v", c.Name, add, dropsAll)
			}
		}
		for _, c := range append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...) {
			sc := c.SecurityContext
			if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				t.Errorf("container %s: allowPrivilegeEscalation must be false", c.Name)
			}
			if sc != nil && sc.Privileged != nil && *sc.Privileged {
				t.Errorf("container %s is privileged", c.Name)
			}
		}
		if spec.HostNetwork || spec.HostPID || spec.HostIPC {
			t.Error("the pod shares a host namespace: its firewall would be the node's")
		}
		if spec.ShareProcessNamespace != nil && *spec.ShareProcessNamespace {
			t.Error("shareProcessNamespace: the workload would see egressd's processes")
		}
		if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
			t.Error("automountServiceAccountToken must be false: the sandbox gets no API credentials")
		}
	})

	t.Run("WorkloadIsNonRootAndNeverTheExemptUID", func(t *testing.T) {
		if p.fw.ExemptUID == nil {
			t.Fatal("the firewall exempts no uid: egressd in a pod holds no CAP_NET_ADMIN, so it cannot set a mark")
		}
		exempt := int64(*p.fw.ExemptUID)
		uid, gid, set, nonRoot := runAs(p.pod, p.sidecar)
		if !set || uid != exempt || !nonRoot {
			t.Errorf("egressd sidecar runs as uid %d (set %v, runAsNonRoot %v); want the exempt uid %d, non-root", uid, set, nonRoot, exempt)
		}
		if gid == 0 {
			t.Error("egressd sidecar runs with gid 0")
		}
		if p.serve.mark != 0 {
			t.Errorf("egressd sidecar sets --mark %d, but holds no CAP_NET_ADMIN to set it", p.serve.mark)
		}
		for _, c := range p.others {
			uid, gid, set, nonRoot := runAs(p.pod, c)
			if !set || !nonRoot || uid == 0 || gid == 0 {
				t.Errorf("container %s: want runAsNonRoot and an explicit non-zero uid and gid; got uid %d (set %v) gid %d runAsNonRoot %v", c.Name, uid, set, gid, nonRoot)
			}
			if uid == exempt {
				t.Errorf("container %s runs as %d, the uid the firewall exempts: its traffic would bypass egressd", c.Name, uid)
			}
		}
		if ps := spec.SecurityContext; ps == nil || ps.SeccompProfile == nil || ps.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Error("the pod's seccompProfile must be RuntimeDefault")
		}
	})

	t.Run("FirewallPortsEqualEgressdListeners", func(t *testing.T) {
		checkListenersMatchFirewall(t, p.fw, p.serve)
		if strings.HasPrefix(p.serve.adminListen, "unix:") || p.serve.adminListen == "" {
			t.Errorf("--admin-listen %q: the example serves the admin endpoint on a loopback port the firewall protects", p.serve.adminListen)
		}
		for _, probe := range []*corev1.Probe{p.sidecar.StartupProbe, p.sidecar.ReadinessProbe, p.sidecar.LivenessProbe} {
			if probe == nil || probe.Exec == nil {
				t.Errorf("egressd sidecar: want startup, readiness and liveness probes running `egressd health` (an httpGet probe comes from outside the pod, which the firewall drops)")
				continue
			}
			args := egressdArgs(t, corev1.Container{Name: "probe", Command: probe.Exec.Command})
			fs, admin, _, _ := newHealthFlags(io.Discard)
			if len(args) == 0 || args[0] != "health" || fs.Parse(args[1:]) != nil || *admin != p.serve.adminListen {
				t.Errorf("probe %q: want egressd health --admin %s", probe.Exec.Command, p.serve.adminListen)
			}
		}
		if p.sidecar.RestartPolicy == nil || *p.sidecar.RestartPolicy != corev1.ContainerRestartPolicyAlways {
			t.Error("egressd must be a native sidecar: an init container with restartPolicy Always")
		}
	})

	t.Run("AdminPortIsExposedByNoService", func(t *testing.T) {
		aPorts, _ := listenPorts(t, "admin-listen", []string{p.serve.adminListen})
		for _, c := range append([]corev1.Container{p.sidecar}, p.others...) {
			for _, cp := range c.Ports {
				if slices.Contains(aPorts, uint16(cp.ContainerPort)) {
					t.Errorf("container %s declares the admin port %d (a Service could name it)", c.Name, cp.ContainerPort)
				}
			}
		}
		for _, s := range m.services {
			for _, sp := range s.Spec.Ports {
				if slices.Contains(aPorts, uint16(sp.TargetPort.IntValue())) || slices.Contains(aPorts, uint16(sp.Port)) {
					t.Errorf("Service %s exposes the admin port %v", s.Name, sp)
				}
			}
		}
		for _, ip := range p.fw.InboundTCPPorts {
			if slices.Contains(aPorts, ip) {
				t.Errorf("the firewall accepts inbound connections on the admin port %d", ip)
			}
		}
	})

	t.Run("PolicyIsAReadOnlyHotReloadedConfigMapThatValidates", func(t *testing.T) {
		if len(p.serve.policies) != 1 {
			t.Fatalf("egressd --policy %q: want one file", p.serve.policies)
		}
		path := p.serve.policies[0]
		var mount *corev1.VolumeMount
		for i, vm := range p.sidecar.VolumeMounts {
			if strings.HasPrefix(path, strings.TrimSuffix(vm.MountPath, "/")+"/") {
				mount = &p.sidecar.VolumeMounts[i]
			}
		}
		if mount == nil {
			t.Fatalf("no volume is mounted where --policy %s lives", path)
		}
		if !mount.ReadOnly {
			t.Errorf("the policy volume at %s is not mounted readOnly", mount.MountPath)
		}
		if mount.SubPath != "" || mount.SubPathExpr != "" {
			t.Errorf("the policy volume uses subPath: the kubelet never updates a subPath mount, so edits would not reload")
		}
		var cmName string
		for _, v := range spec.Volumes {
			if v.Name == mount.Name && v.ConfigMap != nil {
				cmName = v.ConfigMap.Name
			}
		}
		if cmName == "" {
			t.Fatalf("volume %s is not a ConfigMap", mount.Name)
		}
		key := strings.TrimPrefix(path, strings.TrimSuffix(mount.MountPath, "/")+"/")
		var data string
		for _, cm := range m.configMaps {
			if cm.Name == cmName {
				data = cm.Data[key]
			}
		}
		if data == "" {
			t.Fatalf("ConfigMap %s has no key %s", cmName, key)
		}
		file := writeFile(t, key, data)
		if code, out, errOut := runCLI(t, "validate", file); code != exitOK || errOut != "" {
			t.Errorf("egressd validate of ConfigMap %s/%s: code %d\n%s%s", cmName, key, code, out, errOut)
		}
	})

	t.Run("PodSetsNoPingSocketsSysctl", func(t *testing.T) {
		found := false
		if ps := spec.SecurityContext; ps != nil {
			for _, s := range ps.Sysctls {
				if s.Name == "net.ipv4.ping_group_range" && strings.Join(strings.Fields(s.Value), " ") == "1 0" {
					found = true
				}
			}
		}
		if !found {
			t.Error(`the pod must set net.ipv4.ping_group_range "1 0" (containers cannot write /proc/sys; firewall install refuses a wider range)`)
		}
	})

	t.Run("NetworkPolicyIsTheSecondLayer", func(t *testing.T) {
		if len(m.netpols) != 1 {
			t.Fatalf("want one NetworkPolicy, got %d", len(m.netpols))
		}
		np := m.netpols[0]
		for k, v := range np.Spec.PodSelector.MatchLabels {
			if p.pod.Labels[k] != v {
				t.Errorf("the NetworkPolicy selects %s=%s, which the pod does not carry", k, v)
			}
		}
		if len(np.Spec.PodSelector.MatchLabels) == 0 {
			t.Error("the NetworkPolicy selects no label")
		}
		if !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) || !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) {
			t.Errorf("policyTypes %v: want Ingress and Egress", np.Spec.PolicyTypes)
		}
		if len(np.Spec.Ingress) > 0 {
			t.Errorf("the sandbox accepts ingress: %v", np.Spec.Ingress)
		}
		mustExcept := map[string][]string{"0.0.0.0/0": {"169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "100.64.0.0/10"}, "::/0": {"fc00::/7", "fe80::/10"}}
		for _, rule := range np.Spec.Egress {
			for _, peer := range rule.To {
				if peer.IPBlock == nil {
					continue
				}
				want, ok := mustExcept[peer.IPBlock.CIDR]
				if !ok {
					continue
				}
				for _, w := range want {
					if !slices.Contains(peer.IPBlock.Except, w) {
						t.Errorf("egress to %s does not except %s", peer.IPBlock.CIDR, w)
					}
				}
			}
		}
	})

	t.Run("KustomizationListsEveryManifest", func(t *testing.T) {
		k := m.kustomization
		if k.Kind != "Kustomization" || k.APIVersion != "kustomize.config.k8s.io/v1beta1" {
			t.Errorf("kustomization.yaml: %s %s", k.APIVersion, k.Kind)
		}
		got := slices.Sorted(slices.Values(k.Resources))
		want := slices.Sorted(slices.Values(m.files))
		if !slices.Equal(got, want) {
			t.Errorf("kustomization resources %q, files %q", got, want)
		}
		for _, c := range []corev1.Container{p.firewall, p.sidecar} {
			name, _, _ := strings.Cut(c.Image, ":")
			if !slices.ContainsFunc(k.Images, func(i kustomizeImage) bool { return i.Name == name }) {
				t.Errorf("container %s's image %s is not in the kustomization's images", c.Name, c.Image)
			}
		}
		if p.firewall.Image != p.sidecar.Image {
			t.Errorf("the firewall and sidecar run different images (%s, %s): their flags must agree", p.firewall.Image, p.sidecar.Image)
		}
		for _, ns := range m.namespaces {
			if ns.Name != k.Namespace {
				t.Errorf("Namespace %s is not the kustomization's namespace %s", ns.Name, k.Namespace)
			}
		}
	})
}

// checkListenersMatchFirewall checks that egressd's listeners are where the
// firewall sends traffic: every resolver and transparent address on
// loopback (both families) at the firewall's DNS and transparent ports, the
// explicit proxy at its proxy port, and a TCP admin address on loopback at
// one of its protected ports.
func checkListenersMatchFirewall(t *testing.T, fw firewall.Config, so *serveOptions) {
	t.Helper()
	for _, l := range []struct {
		flag, what string
		addrs      []string
		port       uint16
	}{
		{"dns-listen", "--dns-port (DNS)", so.dnsListen, fw.DNSPort},
		{"transparent-listen", "--transparent-port (TCP)", so.transparentListen, fw.TransparentPort},
	} {
		ports, both := listenPorts(t, l.flag, l.addrs)
		if !both {
			t.Errorf("--%s %q: want both 127.0.0.1 and [::1] (the REDIRECT target of each family)", l.flag, l.addrs)
		}
		for _, port := range ports {
			if port != l.port {
				t.Errorf("egressd's --%s is on port %d, the firewall redirects to %s %d", l.flag, port, l.what, l.port)
			}
		}
	}
	pPorts, _ := listenPorts(t, "proxy-listen", so.proxyListen)
	if len(pPorts) != 1 || pPorts[0] != fw.ExplicitProxyPort {
		t.Errorf("egressd's explicit proxy is on %v, the firewall's --proxy-port is %d", pPorts, fw.ExplicitProxyPort)
	}
	if so.adminListen != "" && !strings.HasPrefix(so.adminListen, "unix:") {
		aPorts, _ := listenPorts(t, "admin-listen", []string{so.adminListen})
		if len(aPorts) != 1 || !slices.Contains(fw.ProtectedPorts, aPorts[0]) {
			t.Errorf("the admin port %v is not among the firewall's --admin-port %v: the sandbox could reach /reload", aPorts, fw.ProtectedPorts)
		}
	}
	if fw.Mark != 0 && uint32(so.mark) != fw.Mark {
		t.Errorf("egressd marks its sockets %#x, the firewall exempts mark %#x: egressd's own traffic would be redirected into itself", so.mark, fw.Mark)
	}
}

// ---- systemd ----------------------------------------------------------------

// TestSystemdUnitFlagsMatch parses the unit's ExecStartPre (the firewall)
// and ExecStart (serve) with the binary's flag sets, for an instance "sbx".
func TestSystemdUnitFlagsMatch(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, "deploy/systemd/egressd@.service"))
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string][]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			keys[k] = append(keys[k], strings.ReplaceAll(v, "%i", "sbx"))
		}
	}
	argv := func(key string) []string {
		t.Helper()
		if len(keys[key]) != 1 {
			t.Fatalf("want one %s, got %q", key, keys[key])
		}
		f := strings.Fields(strings.ReplaceAll(strings.TrimPrefix(keys[key][0], "+"), "${UPSTREAM_DNS}", ""))
		if len(f) < 2 || f[0] != "/usr/local/bin/egressd" {
			t.Fatalf("%s runs %q, want /usr/local/bin/egressd (make install's path)", key, f)
		}
		return f[1:]
	}
	pre := argv("ExecStartPre")
	if len(pre) < 2 || pre[0] != "firewall" || pre[1] != "install" || !strings.HasPrefix(keys["ExecStartPre"][0], "+") {
		t.Fatalf("ExecStartPre %q: want +egressd firewall install (as root)", pre)
	}
	fs, fo := newFirewallFlags("install", io.Discard)
	if err := fs.Parse(pre[2:]); err != nil {
		t.Fatalf("ExecStartPre: %v", err)
	}
	fw, err := fo.config()
	if err != nil {
		t.Fatalf("ExecStartPre: %v", err)
	}
	if want := keys["NetworkNamespacePath"]; len(want) != 1 || fo.netns != want[0] {
		t.Errorf("the firewall goes into %s, egressd serves in %q", fo.netns, want)
	}
	serve := argv("ExecStart")
	sfs, so := newServeFlags(io.Discard)
	if err := sfs.Parse(serve[1:]); err != nil || serve[0] != "serve" || sfs.NArg() > 0 {
		t.Fatalf("ExecStart %q: %v", serve, err)
	}
	checkListenersMatchFirewall(t, fw, so)
	if fw.Mark == 0 || !slices.Equal(keys["AmbientCapabilities"], []string{"CAP_NET_ADMIN"}) || !slices.Equal(keys["CapabilityBoundingSet"], []string{"CAP_NET_ADMIN"}) {
		t.Errorf("the unit exempts by mark (%#x): egressd needs CAP_NET_ADMIN as its only capability (AmbientCapabilities %q, CapabilityBoundingSet %q)",
			fw.Mark, keys["AmbientCapabilities"], keys["CapabilityBoundingSet"])
	}
	if u := keys["User"]; len(u) != 1 || u[0] == "root" || u[0] == "0" {
		t.Errorf("User=%q: egressd runs as its own unprivileged user", u)
	}
	if !strings.HasPrefix(so.adminListen, "unix:/run/egressd/sbx/") {
		t.Errorf("--admin-listen %s: want a unix socket in the RuntimeDirectory, outside the namespace's reach", so.adminListen)
	}
}

// ---- Dockerfile ----------------------------------------------------------

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	stage int    // 0 for the first FROM's stage
	cmd   string // upper case
	args  string
}

func parseDockerfile(t *testing.T) []instruction {
	t.Helper()
	b, err := os.ReadFile(dockerfile)
	if err != nil {
		t.Fatal(err)
	}
	var out []instruction
	stage := -1
	var cur strings.Builder
	for _, line := range strings.Split(string(b), "\n") {
		trimmed := strings.TrimSpace(line)
		if cur.Len() == 0 && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if strings.HasSuffix(trimmed, `\`) {
			cur.WriteString(strings.TrimSuffix(trimmed, `\`) + " ")
			continue
		}
		cur.WriteString(trimmed)
		full := cur.String()
		cur.Reset()
		cmd, args, _ := strings.Cut(full, " ")
		cmd = strings.ToUpper(cmd)
		if cmd == "FROM" {
			stage++
		}
		out = append(out, instruction{stage: stage, cmd: cmd, args: strings.TrimSpace(args)})
	}
	return out
}

// dockerImage is what the Dockerfile's final stage says about the image.
type dockerImage struct {
	user        string
	entrypoint  []string
	cmd         []string
	healthcheck []string
	labels      string
	copies      map[string]string // path in the image → source in the repository
	makeBuild   string            // the build stage's `make build ...` line
	binDir      string            // where that build puts the binaries in the build stage
	binaryCopy  []string          // what COPY --from=build takes
}

func readDockerfile(t *testing.T) dockerImage {
	t.Helper()
	ins := parseDockerfile(t)
	last := ins[len(ins)-1].stage
	img := dockerImage{copies: map[string]string{}}
	exec := func(s string) []string {
		var v []string
		if err := json.Unmarshal([]byte(s), &v); err != nil {
			t.Fatalf("Dockerfile: %q is not the exec (JSON) form: %v", s, err)
		}
		return v
	}
	for _, in := range ins {
		switch {
		case in.cmd == "RUN" && strings.HasPrefix(in.args, "make build") && in.stage < last:
			img.makeBuild = in.args
			if m := regexp.MustCompile(`BINDIR=(\S+)`).FindStringSubmatch(in.args); m != nil {
				img.binDir = m[1]
			}
		case in.stage != last:
		case in.cmd == "USER":
			img.user = in.args
		case in.cmd == "ENTRYPOINT":
			img.entrypoint = exec(in.args)
		case in.cmd == "CMD":
			img.cmd = exec(in.args)
		case in.cmd == "LABEL":
			img.labels += in.args + " "
		case in.cmd == "HEALTHCHECK":
			_, after, ok := strings.Cut(in.args, "CMD ")
			if !ok {
				t.Fatalf("HEALTHCHECK without CMD: %s", in.args)
			}
			img.healthcheck = exec(after)
		case in.cmd == "COPY":
			f := strings.Fields(in.args)
			if len(f) > 0 && strings.HasPrefix(f[0], "--from=") {
				img.binaryCopy = f[1 : len(f)-1]
				for _, src := range img.binaryCopy {
					img.copies[filepath.Join(f[len(f)-1], filepath.Base(src))] = "build:" + src
				}
				continue
			}
			if len(f) == 2 {
				img.copies[f[1]] = f[0]
			}
		}
	}
	return img
}

func TestDockerfileNamesWhatTheBinariesAccept(t *testing.T) {
	img := readDockerfile(t)
	m := loadManifests(t)
	p := splitPod(t, m.pods[0])

	if img.makeBuild == "" || img.binDir == "" {
		t.Fatal("the build stage must build with the Makefile (RUN make build BINDIR=... VERSION=${VERSION} COMMIT=${COMMIT}), the flags every release uses")
	}
	for _, want := range []string{"VERSION=${VERSION}", "COMMIT=${COMMIT}"} {
		if !strings.Contains(img.makeBuild, want) {
			t.Errorf("the build line %q does not pass %s: --version would not say what the image is", img.makeBuild, want)
		}
	}
	for _, src := range img.binaryCopy {
		if filepath.Dir(src) != img.binDir {
			t.Errorf("COPY --from=build %s: the build puts binaries in %s", src, img.binDir)
		}
	}
	if len(img.entrypoint) != 1 || img.copies[img.entrypoint[0]] != "build:"+img.binDir+"/egressd" {
		t.Errorf("ENTRYPOINT %q is not the egressd binary the build stage made (%v)", img.entrypoint, img.copies)
	}
	for _, key := range []string{"title", "source", "licenses", "version", "revision"} {
		if !strings.Contains(img.labels, "org.opencontainers.image."+key+"=") {
			t.Errorf("no OCI label org.opencontainers.image.%s", key)
		}
	}
	if !strings.Contains(img.labels, `version="${VERSION}"`) || !strings.Contains(img.labels, `revision="${COMMIT}"`) {
		t.Errorf("the version and revision labels must carry the build's VERSION and COMMIT: %s", img.labels)
	}

	// The user: egressd's own non-root uid, the one the pod's firewall exempts.
	uid, gid, _ := strings.Cut(img.user, ":")
	if p.fw.ExemptUID == nil || uid != fmt.Sprint(*p.fw.ExemptUID) || gid == "" || gid == "0" || uid == "0" {
		t.Errorf("USER %q: want egressd's uid:gid, the pod's exempt uid %v, never 0", img.user, p.fw.ExemptUID)
	}
	sidecarUID, _, _, _ := runAs(p.pod, p.sidecar)
	if uid != fmt.Sprint(sidecarUID) {
		t.Errorf("USER %s differs from the pod's egressd runAsUser %d", uid, sidecarUID)
	}

	// CMD: serve flags that parse, a policy the image holds, listeners the
	// pod's firewall arguments match, and the admin address the health check asks.
	if len(img.cmd) == 0 || img.cmd[0] != "serve" {
		t.Fatalf("CMD %q: want serve ...", img.cmd)
	}
	fs, so := newServeFlags(io.Discard)
	if err := fs.Parse(img.cmd[1:]); err != nil || fs.NArg() > 0 {
		t.Fatalf("CMD %q does not parse as egressd serve flags: %v", img.cmd, err)
	}
	for _, pol := range so.policies {
		src, ok := img.copies[pol]
		if !ok {
			t.Errorf("CMD --policy %s: the image has no such file (COPY destinations %v)", pol, img.copies)
			continue
		}
		if code, _, errOut := runCLI(t, "validate", filepath.Join(repoRoot, src)); code != exitOK || errOut != "" {
			t.Errorf("the image's default policy %s does not validate cleanly: %s", src, errOut)
		}
	}
	for name, pair := range map[string][2][]string{
		"dns-listen":         {so.dnsListen, p.serve.dnsListen},
		"transparent-listen": {so.transparentListen, p.serve.transparentListen},
		"proxy-listen":       {so.proxyListen, p.serve.proxyListen},
		"admin-listen":       {{so.adminListen}, {p.serve.adminListen}},
	} {
		if !slices.Equal(pair[0], pair[1]) {
			t.Errorf("--%s: the image's CMD says %q, the pod's sidecar %q; the pod's firewall is written for the latter", name, pair[0], pair[1])
		}
	}
	if len(img.healthcheck) < 2 || img.healthcheck[0] != img.entrypoint[0] || img.healthcheck[1] != "health" {
		t.Fatalf("HEALTHCHECK CMD %q: want %s health --admin ...", img.healthcheck, img.entrypoint)
	}
	hfs, admin, _, _ := newHealthFlags(io.Discard)
	if err := hfs.Parse(img.healthcheck[2:]); err != nil || *admin != so.adminListen {
		t.Errorf("HEALTHCHECK %q asks %q, CMD serves the admin endpoint on %q (%v)", img.healthcheck, *admin, so.adminListen, err)
	}
}

// TestDockerfileBuildMakesStaticBinariesThatRun runs the Dockerfile's build
// line (the Makefile's flags) into a temporary directory, checks the
// binaries are static and stamped with the version and commit, and, as
// root, runs the image's ENTRYPOINT and CMD as its USER in a private network
// namespace and its HEALTHCHECK against it.
func TestDockerfileBuildMakesStaticBinariesThatRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binaries (-short)")
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed (scripts/deps.sh installs it)")
	}
	img := readDockerfile(t)
	out, err := os.MkdirTemp("", "egressd-image-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(out) })
	if err := os.Chmod(out, 0o755); err != nil { // USER's uid runs the binaries
		t.Fatal(err)
	}
	line := strings.NewReplacer("${VERSION}", "v9.8.7-test", "${COMMIT}", "0123456789ab", "BINDIR="+img.binDir, "BINDIR="+out).Replace(img.makeBuild)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "sh", "-c", line)
	build.Dir = repoRoot
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", line, err, b)
	}
	for _, name := range []string{"egressd", "launcher"} {
		bin := filepath.Join(out, name)
		f, err := elf.Open(bin)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				t.Errorf("%s has a program interpreter: not static", name)
			}
		}
		if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
			t.Errorf("%s needs shared libraries %v", name, libs)
		}
		f.Close()
		v, err := exec.Command(bin, "--version").Output()
		if err != nil || !strings.Contains(string(v), name+" v9.8.7-test (commit 0123456789ab,") {
			t.Errorf("%s --version: %q, %v; want the stamped version and commit", name, v, err)
		}
	}

	if !privtest.Enabled() {
		t.Log("not privileged: the image's CMD and HEALTHCHECK run only as root, with " + privtest.Env + "=1 (a private network namespace, the image's uid)")
		return
	}
	// The image's files, where the test has them.
	policyDir, err := os.MkdirTemp("", "egressd-image-etc-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(policyDir) })
	if err := os.Chmod(policyDir, 0o755); err != nil {
		t.Fatal(err)
	}
	pathMap := map[string]string{img.entrypoint[0]: filepath.Join(out, "egressd")}
	for dst, src := range img.copies {
		if strings.HasPrefix(src, "build:") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(repoRoot, src))
		if err != nil {
			t.Fatal(err)
		}
		local := filepath.Join(policyDir, filepath.Base(dst))
		if err := os.WriteFile(local, b, 0o644); err != nil {
			t.Fatal(err)
		}
		pathMap[dst] = local
	}
	mapArgs := func(args []string) []string {
		out := make([]string, len(args))
		for i, a := range args {
			out[i] = a
			if p, ok := pathMap[a]; ok {
				out[i] = p
			}
		}
		return out
	}
	uid, gid, _ := strings.Cut(img.user, ":")
	asUser := []string{"setpriv", "--reuid=" + uid, "--regid=" + gid, "--clear-groups", "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--"}
	// unshare --net: a namespace that lives exactly as long as its processes.
	serveArgs := append(append([]string{"--net", "--", "sh", "-c", `ip link set lo up && exec "$@"`, "sh"}, asUser...), mapArgs(append(slices.Clone(img.entrypoint), img.cmd...))...)
	serve := exec.Command("unshare", serveArgs...)
	// One writer for both: exec then calls it from one goroutine at a time.
	// It is read only once egressd has exited.
	var serveOut bytes.Buffer
	serve.Stdout, serve.Stderr = &serveOut, &serveOut
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- serve.Wait() }()
	defer func() {
		_ = serve.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("egressd (the image's CMD) after SIGTERM: %v\n%s", err, serveOut.String())
			}
		case <-time.After(10 * time.Second):
			_ = serve.Process.Kill()
			<-exited
			t.Errorf("egressd did not stop 10s after SIGTERM\n%s", serveOut.String())
		}
	}()
	health := append(append([]string{"--net=/proc/" + fmt.Sprint(serve.Process.Pid) + "/ns/net", "--"}, asUser...), mapArgs(img.healthcheck)...)
	deadline := time.Now().Add(15 * time.Second)
	for {
		hc := exec.Command("nsenter", health...)
		b, err := hc.CombinedOutput()
		if err == nil {
			t.Logf("HEALTHCHECK as uid %s: %s", uid, bytes.TrimSpace(b))
			break
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("the image's CMD exited (%v) before it was healthy:\n%s", err, serveOut.String())
		default:
		}
		if time.Now().After(deadline) {
			_ = serve.Process.Kill()
			exited <- <-exited
			t.Fatalf("HEALTHCHECK still failing after 15s: %v: %s\negressd:\n%s", err, b, serveOut.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
}
