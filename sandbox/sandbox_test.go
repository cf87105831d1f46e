package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sandbox/pid1"
)

// explainOf is what explain shows for cfg: its plan, rendered.
func explainOf(cfg Config) (*Explanation, error) {
	p, err := NewPlan(cfg)
	if err != nil {
		return nil, err
	}
	return p.Explain()
}

// TestUpstreamDNSRefusesWhatTheSandboxCannotReach: a loopback stub
// (systemd-resolved's 127.0.0.53) or an IPv6 resolver cannot be reached
// through the IPv4 uplink: named explicitly they are an error, in
// resolv.conf they are skipped, and an error names them when nothing is
// left.
func TestUpstreamDNSRefusesWhatTheSandboxCannotReach(t *testing.T) {
	for _, tc := range []struct {
		name       string
		flag       []string
		resolvConf string
		want       []string
		wantErr    string
	}{
		{name: "flag wins over resolv.conf", flag: []string{"203.0.113.53", "198.51.100.53:5353"}, resolvConf: "nameserver 192.0.2.1\n",
			want: []string{"203.0.113.53:53", "198.51.100.53:5353"}},
		{name: "loopback flag refused", flag: []string{"127.0.0.53"}, wantErr: "loopback resolver"},
		{name: "IPv6 flag refused", flag: []string{"2001:db8::53"}, wantErr: "IPv4 only"},
		{name: "resolv.conf", resolvConf: "# x\nsearch example\nnameserver 192.0.2.1\nnameserver 192.0.2.2\noptions edns0\n",
			want: []string{"192.0.2.1:53", "192.0.2.2:53"}},
		{name: "resolv.conf loopback and v6 skipped", resolvConf: "nameserver 127.0.0.53\nnameserver ::1\nnameserver fd00::1\nnameserver 192.0.2.9\n",
			want: []string{"192.0.2.9:53"}},
		{name: "resolv.conf with only a local stub", resolvConf: "nameserver 127.0.0.53\n", wantErr: "lists only 127.0.0.53, which the sandbox's namespace cannot reach"},
		{name: "resolv.conf without nameservers", resolvConf: "search x\n", wantErr: "lists no nameserver"},
		{name: "no resolv.conf", wantErr: "unreadable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var overrides []policy.Setting
			if tc.flag != nil {
				overrides = append(overrides, policy.Setting{Key: "network.upstream_dns", Values: tc.flag, Source: policy.Flag("--upstream-dns")})
			}
			p := resolveWith(t, "standard", "", overrides...)
			rc := filepath.Join(t.TempDir(), "resolv.conf")
			if tc.resolvConf != "" {
				if err := os.WriteFile(rc, []byte(tc.resolvConf), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := UpstreamDNS(p, rc)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("UpstreamDNS = %v, %v; want an error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var gs []string
			for _, g := range got {
				gs = append(gs, g.String())
			}
			if !slices.Equal(gs, tc.want) {
				t.Errorf("UpstreamDNS = %v, want %v", gs, tc.want)
			}
		})
	}
}

func TestConfigChecks(t *testing.T) {
	std := resolveWith(t, "standard", "")
	cwd := resolveWith(t, "standard", "", policy.Setting{Key: "filesystem.mount_cwd", Values: []string{"true"}})
	for _, tc := range []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"no profile", Config{Args: []string{"true"}}, "no profile"},
		{"no command", Config{Profile: std}, "no command"},
		{"relative rootfs", Config{Profile: std, Args: []string{"true"}, Rootfs: "img", EgressdPath: "/x"}, "not an absolute path"},
		{"relative workdir", Config{Profile: std, Args: []string{"true"}, Workdir: "src", EgressdPath: "/x"}, "working directory"},
		{"mount_cwd without a directory", Config{Profile: cwd, Args: []string{"true"}, EgressdPath: "/x"}, "mount_cwd"},
		{"bad secret name", Config{Profile: std, Args: []string{"true"}, EgressdPath: "/x", Secrets: []Secret{{"A-B", "v"}}}, "secret"},
		{"filtered without egressd", Config{Profile: std, Args: []string{"true"}}, "egressd binary"},
		{"missing rootfs", Config{Profile: std, Args: []string{"true"}, Rootfs: "/nonexistent/img", EgressdPath: "/x"}, "no such directory"},
		{"rootfs a file", Config{Profile: std, Args: []string{"true"}, Rootfs: "/etc/hostname", EgressdPath: "/x"}, "not a directory"},
		{"relative state directory", Config{Profile: std, Args: []string{"true"}, StateDir: "state", EgressdPath: "/x"}, "state directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := tc.cfg.withDefaults(); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("withDefaults: %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
	cfg, err := Config{Profile: std, Args: []string{"true"}, EgressdPath: "/x"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Rootfs != "/" || cfg.Subnet != DefaultSubnet || cfg.EgressdUID != DefaultEgressdUID || cfg.Mark != DefaultMark || cfg.StateDir != DefaultStateDir {
		t.Errorf("defaults not applied: %+v", cfg)
	}
}

// TestExplainShowsTheInit: the init, what it passes on, and a pids limit
// it would leave no room under.
func TestExplainShowsTheInit(t *testing.T) {
	p := resolveWith(t, "offline", "")
	ex, err := explainOf(Config{Profile: p, Args: []string{"true"}, Init: "/opt/bin/launcher"})
	if err != nil {
		t.Fatal(err)
	}
	if ex.Init == nil || ex.Init.Path != pid1.Path || ex.Init.Binary != "/opt/bin/launcher" ||
		!slices.Equal(ex.Init.Forwards[:4], []string{"SIGHUP", "SIGINT", "SIGQUIT", "SIGTERM"}) {
		t.Errorf("init %+v", ex.Init)
	}
	if ex.Spec.Process.Args[0] != pid1.Path {
		t.Errorf("args %q: the init is not process 1", ex.Spec.Process.Args)
	}
	if ex, err := explainOf(Config{Profile: p, Args: []string{"true"}}); err != nil || ex.Init != nil || ex.Spec.Process.Args[0] != "true" {
		t.Errorf("without an init: %v, %+v", err, ex)
	}
	low := resolveWith(t, "offline", "", policy.Setting{Key: "process.pids_limit", Values: []string{"10"}, Source: policy.Flag("--pids-limit")})
	_, err = explainOf(Config{Profile: low, Args: []string{"true"}, Init: "/opt/bin/launcher"})
	if err == nil || !strings.Contains(err.Error(), "process.pids_limit 10 (flag:--pids-limit) is too low") {
		t.Errorf("pids limit 10 with an init: %v", err)
	}
}

// TestExplainShowsWhatCreateWouldBuild: explain needs no root, mounts
// nothing, and never prints a secret or an environment value.
func TestExplainShowsWhatCreateWouldBuild(t *testing.T) {
	rc := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(rc, []byte("nameserver 192.0.2.53\n"), 0o644)
	for _, tc := range []struct {
		profile  string
		net      string
		firewall bool
		uplink   bool
		netns    string
	}{
		{"standard", "", true, true, NetnsDir + "/" + ExplainID},
		{"standard", "none", true, false, NetnsDir + "/" + ExplainID},
		{"open", "", false, false, ""},
	} {
		t.Run(tc.profile+tc.net, func(t *testing.T) {
			overrides := []policy.Setting{{Key: "env.set", Values: []string{"SETTING=set-value-xyz"}, Source: policy.Flag("--env")}}
			if tc.net != "" {
				overrides = append(overrides, policy.Setting{Key: "network.mode", Values: []string{tc.net}, Source: policy.Flag("--net")})
			}
			p := resolveWith(t, tc.profile, "", overrides...)
			ex, err := explainOf(Config{ID: ExplainID, Profile: p, Args: []string{"sh", "-c", "echo hi"}, EgressdPath: "/nonexistent/egressd",
				ResolvConf: rc, Secrets: []Secret{{"TOKEN", "secret-value-xyz"}}, CallerEnv: []string{"TERM=caller-value-xyz"}})
			if err != nil {
				t.Fatal(err)
			}
			data, _ := json.Marshal(ex)
			if bytes.Contains(data, []byte("value-xyz")) {
				t.Errorf("explain shows an environment value or secret:\n%s", data)
			}
			if (ex.FirewallIPv4 != "") != tc.firewall || (ex.Uplink != "") != tc.uplink || (len(ex.Egressd) > 0) != tc.uplink {
				t.Errorf("firewall %v uplink %v egressd %v; want %v %v", ex.FirewallIPv4 != "", ex.Uplink != "", ex.Egressd, tc.firewall, tc.uplink)
			}
			var netns string
			for _, n := range ex.Spec.Linux.Namespaces {
				if n.Type == "network" {
					netns = n.Path
				}
			}
			if netns != tc.netns {
				t.Errorf("network namespace %q, want %q", netns, tc.netns)
			}
			if !slices.Contains(ex.Spec.Process.Env, "TOKEN=<redacted>") || !slices.Contains(ex.Spec.Process.Env, "SETTING=<redacted>") {
				t.Errorf("env %q", ex.Spec.Process.Env)
			}
			if tc.uplink && !slices.Contains(ex.Spec.Process.Env, "HTTPS_PROXY=http://127.0.0.1:3128") {
				t.Errorf("filtered mode's env lacks the proxy: %q", ex.Spec.Process.Env)
			}
		})
	}
}

// TestRemoveTreeNeverCrossesAMount: a state directory with something still
// mounted in it is reported, and what is under the mount is untouched.
func TestRemoveTreeNeverCrossesAMount(t *testing.T) {
	requireRootNetns(t)
	dir := t.TempDir()
	mnt := filepath.Join(dir, "rootfs")
	os.MkdirAll(filepath.Join(dir, "bundle"), 0o700)
	os.WriteFile(filepath.Join(dir, "bundle", "config.json"), []byte("{}"), 0o600)
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(mnt, unix.MNT_DETACH)
	keep := filepath.Join(mnt, "host-file")
	os.WriteFile(keep, []byte("x"), 0o644)
	err := removeTree(dir)
	if err == nil || !strings.Contains(err.Error(), "something is mounted there") {
		t.Errorf("removeTree over a mount: %v", err)
	}
	if _, err := os.Stat(keep); err != nil {
		t.Errorf("removeTree reached into the mount: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "bundle")); err == nil {
		t.Error("removeTree left what it could remove")
	}
	unix.Unmount(mnt, 0)
	if err := removeTree(dir); err != nil {
		t.Errorf("removeTree after the unmount: %v", err)
	}
	if err := removeTree(dir); err != nil {
		t.Errorf("removeTree of nothing: %v", err)
	}
}

// testStateDir is a state root for one test, checked empty at the end.
func testStateDir(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "state")
	t.Cleanup(func() {
		ents, _ := os.ReadDir(root)
		for _, e := range ents {
			if e.Name() != subnetLockName {
				t.Errorf("left in the state directory: %s", e.Name())
			}
		}
	})
	return root
}

// TestCreateRunCloseNoNetwork runs the whole life of a --net none sandbox
// (no uplink: nothing touches the test's own namespace): output streamed,
// the command's exit status, loopback only, and nothing left after Close.
func TestCreateRunCloseNoNetwork(t *testing.T) {
	rt := requireRunc(t)
	p := resolveWith(t, "strict", "", policy.Setting{Key: "network.mode", Values: []string{"none"}})
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := Create(ctx, Config{Profile: p, Runtime: rt, StateDir: testStateDir(t),
		Args:    []string{"sh", "-c", "ls /sys/class/net; echo $SECRET; echo err >&2; exit 3"},
		Secrets: []Secret{{"SECRET", "the-secret-value"}}})
	if err != nil {
		t.Fatal(err)
	}
	nsPath, dir := s.NetNSPath(), s.StateDir()
	if _, err := os.Stat(nsPath); err != nil {
		t.Errorf("namespace: %v", err)
	}
	res, err := s.Run(ctx, Stdio{Stdout: &stdout, Stderr: &stderr})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if res.ExitCode != 3 || res.TimedOut {
		t.Errorf("result %+v, want exit 3", res)
	}
	if got := stdout.String(); got != "lo\n"+SecretMask+"\n" {
		t.Errorf("stdout %q", got)
	}
	if stderr.String() != "err\n" {
		t.Errorf("stderr %q", stderr.String())
	}
	for _, p := range []string{nsPath, dir} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s left after Close", p)
		}
	}
	// The runtime ran the container detached: its record and cgroup are
	// the teardown's to remove.
	cs, err := rt.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		if c.ID == s.ID() {
			t.Errorf("the runtime still knows container %s (%s) after Close", c.ID, c.Status)
		}
	}
	phases := map[string]bool{}
	for _, tm := range s.Timings() {
		phases[tm.Phase] = true
	}
	for _, ph := range []string{"netns", "firewall", "container", "create", "run", "teardown"} {
		if !phases[ph] {
			t.Errorf("no timing for %s: %v", ph, s.Timings())
		}
	}
	if s.Denials() != nil || s.EgressdPID() != 0 {
		t.Error("a --net none sandbox has no egressd")
	}
}

// TestCreatedContainerRunsNothingUntilStarted: Create leaves the container
// created by the runtime (its process 1 waiting) and nothing of the
// command runs until Run starts it; a sandbox closed without a Run
// destroys it (no runtime record, no process), and the command never ran.
// The same command, run, does leave its mark: the check can fail.
func TestCreatedContainerRunsNothingUntilStarted(t *testing.T) {
	rt := requireRunc(t)
	ws := t.TempDir()
	if err := os.Chmod(ws, 0o777); err != nil { // the sandbox user writes it
		t.Fatal(err)
	}
	p := resolveWith(t, "standard", "", policy.Setting{Key: "network.mode", Values: []string{"none"}},
		policy.Setting{Key: "filesystem.mount_cwd", Values: []string{"true"}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	launch := func(mark string) *Sandbox {
		t.Helper()
		s, err := Create(ctx, Config{Profile: p, Runtime: rt, StateDir: testStateDir(t), WorkspaceDir: ws,
			Args: []string{"sh", "-c", "echo ran > " + mark}})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := launch("never")
	cs, err := rt.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(cs, func(c ContainerState) bool { return c.ID == s.ID() })
	if i < 0 || cs[i].Status != "created" || cs[i].Pid <= 1 {
		t.Fatalf("after Create the runtime shows %+v, want container %s created", cs, s.ID())
	}
	pid := cs[i].Pid
	time.Sleep(300 * time.Millisecond)
	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if _, err := os.Stat(filepath.Join(ws, "never")); err == nil {
		t.Error("the command of a container never started ran")
	}
	if err := unix.Kill(pid, 0); err == nil || !errors.Is(err, unix.ESRCH) {
		t.Errorf("the created container's process %d is still there: %v", pid, err)
	}
	cs, _ = rt.List(ctx)
	if slices.ContainsFunc(cs, func(c ContainerState) bool { return c.ID == s.ID() }) {
		t.Errorf("the runtime still knows container %s", s.ID())
	}

	s = launch("started")
	defer s.Close()
	if res, err := s.Run(ctx, Stdio{}); err != nil || res.ExitCode != 0 {
		t.Fatalf("Run = %+v, %v", res, err)
	}
	if _, err := os.Stat(filepath.Join(ws, "started")); err != nil {
		t.Errorf("the command that was started left no mark: %v", err)
	}
}

// TestTimeoutKillsTheSandboxAndSays124.
func TestTimeoutKillsTheSandboxAndSays124(t *testing.T) {
	rt := requireRunc(t)
	p := resolveWith(t, "strict", "", policy.Setting{Key: "network.mode", Values: []string{"none"}},
		policy.Setting{Key: "process.timeout", Values: []string{"500ms"}})
	ctx := context.Background()
	s, err := Create(ctx, Config{Profile: p, Runtime: rt, StateDir: testStateDir(t), Args: []string{"sleep", "30"}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	start := time.Now()
	res, err := s.Run(ctx, Stdio{})
	if err != nil || !res.TimedOut || res.ExitCode != ExitTimeout {
		t.Errorf("Run = %+v, %v; want a timeout and exit %d", res, err, ExitTimeout)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("took %s", took)
	}
}

// TestCreateFailureLeavesNothing: a launch that fails half-way (here: the
// command does not exist, found while preparing the container, after the
// namespace and firewall were made) removes what it made.
func TestCreateFailureLeavesNothing(t *testing.T) {
	rt := requireRunc(t)
	p := resolveWith(t, "strict", "", policy.Setting{Key: "network.mode", Values: []string{"none"}})
	before, _ := os.ReadDir(NetnsDir)
	s, err := Create(context.Background(), Config{Profile: p, Runtime: rt, StateDir: testStateDir(t), Args: []string{"no-such-command-xyz"}})
	if err == nil {
		s.Close()
		t.Fatal("Create succeeded")
	}
	if !strings.Contains(err.Error(), "not found") {
		t.Errorf("error %v", err)
	}
	after, _ := os.ReadDir(NetnsDir)
	for _, e := range after {
		if strings.HasPrefix(e.Name(), IDPrefix) && !slices.ContainsFunc(before, func(b os.DirEntry) bool { return b.Name() == e.Name() }) {
			t.Errorf("namespace %s left by a failed Create", e.Name())
		}
	}
}

// TestReapRemovesOnlyTheDead: a sandbox whose launcher died (its lock is
// free) is removed with its namespace; one whose launcher lives is not.
func TestReapRemovesOnlyTheDead(t *testing.T) {
	requireRootNetns(t)
	root := testStateDir(t)
	mk := func() *Sandbox {
		// No runtime recorded: these sandboxes never got a container.
		p := &Plan{ID: newID(), StateRoot: root, Mode: policy.ModeNone}
		p.StateDir = filepath.Join(root, p.ID)
		s := &Sandbox{plan: p, cfg: Config{StateDir: root}, k: HostKernel(), mode: policy.ModeNone, rt: &Runtime{}, egStopping: make(chan struct{})}
		if err := s.claimStateDir(); err != nil {
			t.Fatal(err)
		}
		ns, err := s.k.Netns.Create(s.id)
		if err != nil {
			t.Fatal(err)
		}
		s.ns = ns
		return s
	}
	dead, live := mk(), mk()
	defer live.Close()
	dead.lock.Close() // as when its process dies
	reaped, err := Reap(root)
	if err != nil || !slices.Equal(reaped, []string{dead.id}) {
		t.Errorf("Reap = %v, %v; want [%s]", reaped, err, dead.id)
	}
	if _, err := os.Stat(dead.ns.Path); err == nil {
		t.Errorf("the dead sandbox's namespace is still there")
	}
	if _, err := os.Stat(dead.dir); err == nil {
		t.Errorf("the dead sandbox's state directory is still there")
	}
	if _, err := os.Stat(live.ns.Path); err != nil {
		t.Errorf("Reap touched a live sandbox: %v", err)
	}
	if again, _ := Reap(root); len(again) != 0 {
		t.Errorf("a second Reap removed %v", again)
	}
}

func TestValidID(t *testing.T) {
	for id, want := range map[string]bool{"egs-0a1b2c3d": true, "egs-0A1B2C3D": true, "egs-0a1b2c3": false, "egt-0a1b2c3d": false, "egs-0a1b2c3g": false, "subnet.lock": false} {
		if validID(id) != want {
			t.Errorf("validID(%q) = %v", id, !want)
		}
	}
	if id := newID(); !validID(id) {
		t.Errorf("newID() = %q is not valid", id)
	}
}
