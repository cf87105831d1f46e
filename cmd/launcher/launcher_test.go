package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sandbox"
	"github.com/egressd/egressd/sandbox/pid1"
)

// TestDenialLinesSayWhatWouldAllowIt: each denied destination gets one line
// with the reason, the rule and its source, and the flag that would allow
// it, or why none can.
func TestDenialLinesSayWhatWouldAllowIt(t *testing.T) {
	for _, tc := range []struct {
		d    sandbox.Denial
		want string
	}{
		{sandbox.Denial{Kind: "connect", Target: "evil.test", Port: 443, Reason: "no-allow-rule", Count: 1},
			"denied evil.test:443 (no-allow-rule); allow it with --allow evil.test:443"},
		{sandbox.Denial{Kind: "tls", Target: "x.evil.test", Port: 443, Reason: "blocked-by", Rule: "*.evil.test", RuleSource: "policy.toml:7", Count: 3},
			"denied x.evil.test:443 (blocked-by *.evil.test from policy.toml:7, 3 times); a block rule wins over every allow: --allow cannot override it"},
		{sandbox.Denial{Kind: "dns", Target: "other.test", Port: 53, Reason: "no-allow-rule", Count: 1},
			"denied other.test (DNS lookup: no-allow-rule); allow it with --allow other.test"},
		{sandbox.Denial{Kind: "dns", Target: "gist.github.com", Port: 53, Reason: "blocked-by", Rule: "gist.github.com", RuleSource: "flag:--block", Count: 2},
			"denied gist.github.com (DNS lookup: blocked-by gist.github.com from flag:--block, 2 times); a block rule wins over every allow: --allow cannot override it"},
		{sandbox.Denial{Kind: "tcp", Target: "203.0.113.9", Port: 22, Reason: "no-allow-rule", Count: 1},
			"denied 203.0.113.9:22 (no-allow-rule); allow it with --allow 203.0.113.9:22"},
		{sandbox.Denial{Kind: "tcp", Target: "2001:db8::9", Port: 22, Reason: "no-allow-rule", Count: 1},
			"denied [2001:db8::9]:22 (no-allow-rule); allow it with --allow [2001:db8::9]:22"},
		{sandbox.Denial{Kind: "connect", Target: "meta.test", Port: 80, Reason: "guarded-address", Addrs: []string{"169.254.169.254:80"}, Count: 1},
			"denied meta.test:80 (guarded-address); it resolves to 169.254.169.254, which the address guard refuses: only an allow rule naming that IP lifts it, e.g. --allow 169.254.169.254:80"},
		{sandbox.Denial{Kind: "dns", Target: "bad..name", Port: 53, Reason: "invalid-name", Count: 1},
			"denied bad..name (DNS lookup: invalid-name); not a valid host name, so no rule can allow it"},
		{sandbox.Denial{Kind: "dns", Target: "flood.test", Port: 53, Reason: "dns-rate", Count: 9},
			"denied flood.test (DNS lookup: dns-rate, 9 times); the sandbox sent DNS queries faster than egressd's limit per client: nothing to allow"},
		{sandbox.Denial{Kind: "tcp", Target: "203.0.113.10", Name: "git.test", Port: 80, Reason: "unidentified-stream", Count: 1},
			"denied 203.0.113.10:80 (unidentified-stream); the stream names no host egressd can check (not TLS with a server name, not HTTP/1), and a rule without a port admits git.test for TLS and HTTP only: to relay raw TCP there, name the port, --allow git.test:80"},
		{sandbox.Denial{Kind: "tls", Outcome: "error", Target: "pypi.org", Port: 443, Reason: "resolver-timeout", Rule: "pypi.org", RuleSource: "builtin:standard", Count: 1},
			"error pypi.org:443 (resolver-timeout pypi.org from builtin:standard): the upstream resolver 192.0.2.53 did not answer; the policy allowed it, nothing to change there: check that the host reaches the resolver, or name another with --upstream-dns"},
		{sandbox.Denial{Kind: "dns", Target: "evil\\x1b[2J.test", Port: 53, Reason: "invalid-name", Count: 1},
			"denied evil\\x1b[2J.test (DNS lookup: invalid-name); not a valid host name, so no rule can allow it"},
	} {
		w := denialWords{resolvers: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.53:53")}}
		if got := w.line(tc.d); got != tc.want {
			t.Errorf("line(%+v)\n got %s\nwant %s", tc.d, got, tc.want)
		}
	}
}

// TestEveryReasonHasAHint: whatever refused or failed a request, the
// launcher says what would allow it or that nothing should, and never
// prints a control byte the sandbox chose.
func TestEveryReasonHasAHint(t *testing.T) {
	w := denialWords{resolvers: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.53:53"), netip.MustParseAddrPort("192.0.2.54:5353")}}
	for _, ri := range audit.Reasons {
		if ri.Outcome == audit.OutcomeAllow {
			continue
		}
		for _, kind := range ri.Kinds {
			d := sandbox.Denial{Kind: kind, Outcome: ri.Outcome, Target: "x\x1b.test", Port: 443, Reason: ri.Reason, Method: "GET", Path: "/p\r\n", Count: 1}
			got := w.line(d)
			if !strings.Contains(got, "; ") && !strings.Contains(got, "): ") {
				t.Errorf("%s (%s): no hint: %s", ri.Reason, kind, got)
			}
			if strings.ContainsAny(got, "\x1b\r\n") {
				t.Errorf("%s (%s): control bytes printed: %q", ri.Reason, kind, got)
			}
		}
	}
	if got := w.resolverWords(); got != "the upstream resolvers 192.0.2.53 and 192.0.2.54:5353" {
		t.Errorf("resolverWords = %q", got)
	}
}

// TestWouldDenyIsNotADenial: report mode's would-deny entries read "would
// deny", never "denied", say the request went through and how to allow it,
// and are counted apart in the summary's heading.
func TestWouldDenyIsNotADenial(t *testing.T) {
	w := denialWords{}
	d := sandbox.Denial{Kind: audit.KindConnect, Outcome: audit.OutcomeWouldDeny, Target: "new.test", Port: 443, Reason: audit.ReasonNoAllowRule, Count: 2}
	got := w.line(d)
	want := "would deny new.test:443 (no-allow-rule, 2 times); report mode let it through: in filtered mode allow it with --allow new.test:443, or learn every one with egressd policy suggest over --audit-log"
	if got != want {
		t.Errorf("line:\n%s\nwant\n%s", got, want)
	}
	ds := []sandbox.Denial{d, {Kind: audit.KindDNS, Outcome: audit.OutcomeDeny, Target: "x.evil.test", Reason: audit.ReasonBlockedBy}}
	if got, want := countDenials(ds), "1 destination denied, 1 destination report mode would deny (let through)"; got != want {
		t.Errorf("countDenials = %q, want %q", got, want)
	}
}

// TestSummaryIsCapped: the summary after a run lists at most maxSummary
// denials, then says how many more and where they are.
func TestSummaryIsCapped(t *testing.T) {
	var ds []sandbox.Denial
	for i := range maxSummary + 5 {
		ds = append(ds, sandbox.Denial{Kind: "connect", Target: fmt.Sprintf("h%02d.test", i), Port: 443, Reason: "no-allow-rule", Count: 1})
	}
	w := denialWords{}
	got := w.summary(ds, "/var/log/run.jsonl")
	if len(got) != maxSummary+1 || got[maxSummary] != "and 5 more; see --audit-log /var/log/run.jsonl" {
		t.Errorf("summary of %d: %d lines, last %q", len(ds), len(got), got[len(got)-1])
	}
	if got := w.summary(ds, ""); got[maxSummary] != "and 5 more; run with --audit-log FILE to keep every one" {
		t.Errorf("without an audit log: %q", got[maxSummary])
	}
	if got := w.summary(ds[:3], ""); len(got) != 3 {
		t.Errorf("summary of 3: %q", got)
	}
}

// TestFlagsAreSettingsWithProvenance: every policy flag goes through the
// policy's decoding and records itself as the source.
func TestFlagsAreSettingsWithProvenance(t *testing.T) {
	fs, f := newLaunchFlags("run", runUsage, &bytes.Buffer{}, false)
	args := []string{"--profile", "strict", "--allow", "a.test", "--allow", "b.test:8443", "--block", "c.test",
		"--net", "none", "--memory", "512m", "--cpus", "1.5", "--pids-limit", "64", "--timeout", "90s", "--read-only=false",
		"--tmpfs", "/work:size=64m", "--seccomp", "moderate", "--cap-add", "NET_BIND_SERVICE", "--user", "1000:1000",
		"--mount-cwd", "--env", "FOO=bar", "--env", "MYVAR", "--pass-env", "OTHER", "--upstream-dns", "192.0.2.1,192.0.2.2:5353",
		"--allow-host-user", "--expose", "/opt/toolchains", "--volume", "/srv/agents/42/claude:~/.claude", "--protect", ".tool/",
		"--unprotect", ".idea/", "--", "make", "test"}
	cmdArgs, err := parseLaunch(fs, args)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"make", "test"}, cmdArgs); diff != "" {
		t.Errorf("command (-want +got):\n%s", diff)
	}
	p, _, err := f.resolve()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, e := range p.Explain() {
		if strings.HasPrefix(e.Source, "flag:") {
			got[e.Field+" "+e.Value] = e.Source
		}
	}
	want := map[string]string{
		`network.mode "none"`:                                     "flag:--net",
		`network.allow "a.test"`:                                  "flag:--allow",
		`network.allow "b.test:8443"`:                             "flag:--allow",
		`network.block "c.test"`:                                  "flag:--block",
		`network.upstream_dns ["192.0.2.1:53", "192.0.2.2:5353"]`: "flag:--upstream-dns",
		`filesystem.read_only false`:                              "flag:--read-only",
		`filesystem.tmpfs "/work:size=64m"`:                       "flag:--tmpfs",
		`filesystem.mount_cwd true`:                               "flag:--mount-cwd",
		`process.user "1000:1000"`:                                "flag:--user",
		`process.allow_host_user true`:                            "flag:--allow-host-user",
		`filesystem.expose "/opt/toolchains"`:                     "flag:--expose",
		`filesystem.volumes "/srv/agents/42/claude:~/.claude:rw"`: "flag:--volume",
		`filesystem.protect ".tool/"`:                             "flag:--protect",
		`filesystem.unprotect ".idea/"`:                           "flag:--unprotect",
		`process.pids_limit 64`:                                   "flag:--pids-limit",
		`process.memory "512MiB"`:                                 "flag:--memory",
		`process.cpus 1.5`:                                        "flag:--cpus",
		`process.timeout "1m30s"`:                                 "flag:--timeout",
		`process.cap_add "CAP_NET_BIND_SERVICE"`:                  "flag:--cap-add",
		`process.seccomp "moderate"`:                              "flag:--seccomp",
		`env.pass "MYVAR"`:                                        "flag:--env",
		`env.pass "OTHER"`:                                        "flag:--pass-env",
		`env.set.FOO "<redacted>"`:                                "flag:--env",
		`profile "strict"`:                                        "flag:--profile",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("flag provenance (-want +got):\n%s", diff)
	}
}

// TestFlagValuesGetTheFileChecks: a bad flag value is refused with the
// flag named, exactly like the same key in a file.
func TestFlagValuesGetTheFileChecks(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--memory", "lots"}, "flag:--memory"},
		{[]string{"--allow", "*github.com"}, "flag:--allow"},
		{[]string{"--cap-add", "NET_ADMIN"}, "would let the sandbox bypass"},
		{[]string{"--net", "sideways"}, "flag:--net"},
		{[]string{"--profile", "stirct"}, `did you mean "strict"`},
		{[]string{"--net", "host", "--floor", "standard"}, `network.mode = "host" (flag:--net) is less restrictive than floor standard`},
		{[]string{"--volume", "/:/host"}, "flag:--volume: filesystem.volumes: host path / is never given to a sandbox"},
		{[]string{"--expose", "/etc/ssh"}, "host's configuration"},
		{[]string{"--unprotect", ".git/hooks/", "--floor", "strict"}, `filesystem.protect = (without ".git/hooks/") (flag:--unprotect)`},
		{[]string{"--allow-host-user", "--floor", "standard"}, `process.allow_host_user = true (flag:--allow-host-user) is less restrictive`},
	} {
		fs, f := newLaunchFlags("run", runUsage, &bytes.Buffer{}, false)
		if _, err := parseLaunch(fs, append(tc.args, "--", "true")); err != nil {
			t.Fatal(err)
		}
		_, _, err := f.resolve()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}

func TestFloorFromTheEnvironment(t *testing.T) {
	t.Setenv("EGRESSD_SECURITY_FLOOR", "standard")
	fs, f := newLaunchFlags("run", runUsage, &bytes.Buffer{}, false)
	if _, err := parseLaunch(fs, []string{"--profile", "open", "--", "true"}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.resolve(); err == nil || !strings.Contains(err.Error(), "security floor standard") {
		t.Errorf("open under EGRESSD_SECURITY_FLOOR=standard: %v", err)
	}
}

// TestLauncherErrorsAreOneLineAnd125: whatever goes wrong before the
// command runs, the launcher says it in one "launcher: ..." line and exits
// 125, never running anything.
func TestLauncherErrorsAreOneLineAnd125(t *testing.T) {
	pol := filepath.Join(t.TempDir(), "p.toml")
	os.WriteFile(pol, []byte("version = 1\n[network]\nalow = []\nblock = 3\n"), 0o644)
	for _, args := range [][]string{
		{"run"},
		{"run", "--no-such-flag", "--", "true"},
		{"run", "--policy", pol, "--", "true"},
		{"run", "--net", "host", "--floor", "strict", "--", "true"},
		{"run", "--secret", "NOVALUE", "--", "true"},
		{"run", "--subnet", "nonsense", "--", "true"},
		{"run", "--pids-limit", "-5", "--", "true"},
		{"explain", "--pids-limit", "8", "--", "true"},
		{"run", "-t=maybe", "--", "true"},
		{"frobnicate"},
		{"explain", "--policy", pol, "--", "true"},
		{"explain", "--rootfs", "/missing", "--", "true"},
	} {
		var stdout, stderr bytes.Buffer
		code := launcher(context.Background(), args, nil, &stdout, &stderr)
		lines := strings.Split(strings.TrimRight(stderr.String(), "\n"), "\n")
		if code != exitLauncher {
			t.Errorf("%v: exit %d, want %d", args, code, exitLauncher)
		}
		if len(lines) != 1 || !strings.HasPrefix(lines[0], "launcher: ") {
			t.Errorf("%v: stderr %q, want one line \"launcher: ...\"", args, stderr.String())
		}
	}
}

// TestExplainNamesAMissingRootfs: --rootfs of a directory that is not
// there says so, instead of failing to find the command in it.
func TestExplainNamesAMissingRootfs(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := launcher(context.Background(), []string{"explain", "--upstream-dns", "192.0.2.53", "--rootfs", "/missing", "--", "sh"}, nil, &stdout, &stderr)
	if want := "launcher: rootfs /missing: no such directory (--rootfs names the directory the sandbox's root is built on)\n"; code != exitLauncher || stderr.String() != want {
		t.Errorf("exit %d, stderr %q; want %d, %q", code, stderr.String(), exitLauncher, want)
	}
}

// TestExplainShowsTheViewVolumesProtectedPathsAndUser: explain lists what
// of the host the sandbox sees, the volumes, the protected paths of the
// workspace and the user; a workspace the sandbox user cannot write is
// refused before anything runs.
func TestExplainShowsTheViewVolumesProtectedPathsAndUser(t *testing.T) {
	ws := t.TempDir()
	vol := filepath.Join(t.TempDir(), "claude")
	if err := os.Mkdir(vol, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(vol, 0o777); err != nil {
		t.Fatal(err)
	}
	t.Chdir(ws)
	args := []string{"explain", "--upstream-dns", "192.0.2.53", "--mount-cwd", "--volume", vol + ":~/.claude", "--", "true"}

	if err := os.Chmod(ws, 0o755); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	code := launcher(context.Background(), args, nil, &stdout, &stderr)
	if code != exitLauncher || !strings.Contains(stderr.String(), "is not writable by the sandbox user 2000000000:2000000000") {
		t.Errorf("an unwritable workspace: exit %d, stderr %q", code, stderr.String())
	}

	if err := os.Chmod(ws, 0o777); err != nil {
		t.Fatal(err)
	}
	stdout.Reset()
	stderr.Reset()
	if code := launcher(context.Background(), args, nil, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{
		"# User\nuid 2000000000, gid 2000000000 (sandbox), home /home/sandbox\n",
		"# Host view: all the sandbox sees of the host",
		"/usr ", "<- /usr", "the host view (standard)",
		"/home/sandbox/.claude", "<- " + vol, "writable", "filesystem.volumes " + vol + ":~/.claude:rw (flag:--volume)",
		"hidden where the host has them: ", "/etc/shadow",
		"# Protected paths of the workspace and the writable volumes",
		"/sandbox/.idea", "missing: an empty read-only directory is made for the run", "(.idea/)",
		"/sandbox/.envrc", "/home/sandbox/.claude/.envrc",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("explain output lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("output:\n%s", out)
	}
	if entries, _ := os.ReadDir(ws); len(entries) != 0 {
		t.Errorf("explain made %d entries in the workspace; it must make nothing", len(entries))
	}
}

func TestOneLine(t *testing.T) {
	in := "profile is less restrictive than the security floor standard:\n  network.mode = \"host\" (flag:--net) ...\n  process.user = \"0:0\" ..."
	want := `profile is less restrictive than the security floor standard: network.mode = "host" (flag:--net) ...; process.user = "0:0" ...`
	if got := oneLine(in); got != want {
		t.Errorf("oneLine:\n got %s\nwant %s", got, want)
	}
}

func TestExplainJSONHasTheThreeParts(t *testing.T) {
	rc := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(rc, []byte("nameserver 192.0.2.53\n"), 0o644)
	var stdout, stderr bytes.Buffer
	code := launcher(context.Background(), []string{"explain", "--json", "--upstream-dns", "192.0.2.53", "--allow", "a.test", "--", "true"}, nil, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var out map[string]json.RawMessage
	if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"profile", "firewall", "spec", "uplink", "egressd", "user", "view", "init"} {
		if len(out[k]) == 0 {
			t.Errorf("explain --json lacks %q", k)
		}
	}
	stdout.Reset()
	code = launcher(context.Background(), []string{"explain", "--upstream-dns", "192.0.2.53", "--", "true"}, nil, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	for _, want := range []string{"# Profile \"standard\"", "network.mode", "builtin:standard", "# Firewall, IPv4", "-j REDIRECT --to-ports 15001",
		"# Init, the sandbox's process 1", pid1.Path + ": ", "# OCI runtime: ", "passes SIGHUP SIGINT SIGQUIT SIGTERM", "# OCI runtime spec", `"args": [`} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("explain output lacks %q", want)
		}
	}
}

func TestTimingsLine(t *testing.T) {
	got := formatTimings("runc", 2*time.Millisecond, 1500*time.Microsecond, []sandbox.Timing{{Phase: "run", Duration: 60 * time.Millisecond}, {Phase: "netns", Duration: 3 * time.Millisecond},
		{Phase: "runtime.start", Duration: 9 * time.Millisecond}, {Phase: "firewall", Duration: 20 * time.Millisecond}, {Phase: "runtime.create", Duration: 30 * time.Millisecond},
		{Phase: "netns.remove", Duration: 4 * time.Millisecond}}, 100*time.Millisecond)
	if want := "runtime=runc prepare=2.0ms reap=1.5ms netns=3.0ms firewall=20.0ms runtime.create=30.0ms runtime.start=9.0ms run=60.0ms total=100.0ms netns.remove=4.0ms"; got != want {
		t.Errorf("formatTimings = %q, want %q", got, want)
	}
}

func TestVersionAndCompletion(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := launcher(context.Background(), []string{"--version"}, nil, &stdout, &stderr); code != 0 ||
		!regexp.MustCompile(`^launcher \S+ \(commit \S+, go\S+\)\n$`).MatchString(stdout.String()) {
		t.Errorf("--version: code %d, output %q", code, stdout.String())
	}
	for _, tc := range []struct{ shell, check string }{{"bash", "-n"}, {"zsh", "-n"}, {"fish", "--no-execute"}} {
		t.Run(tc.shell, func(t *testing.T) {
			sh, err := exec.LookPath(tc.shell)
			if err != nil {
				t.Skipf("%s is not installed (scripts/deps.sh installs it)", tc.shell)
			}
			var out, errOut bytes.Buffer
			if code := launcher(context.Background(), []string{"completion", tc.shell}, nil, &out, &errOut); code != 0 {
				t.Fatalf("completion %s: code %d %s", tc.shell, code, errOut.String())
			}
			p := filepath.Join(t.TempDir(), "launcher."+tc.shell)
			if err := os.WriteFile(p, out.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
			if o, err := exec.Command(sh, tc.check, p).CombinedOutput(); err != nil {
				t.Fatalf("%s %s: %v\n%s", tc.shell, tc.check, err, o)
			}
			if tc.shell == "bash" {
				prog := `source "$1"; COMP_WORDS=(launcher run --net ''); COMP_CWORD=3; _launcher; printf '%s ' "${COMPREPLY[@]}"`
				o, err := exec.Command(sh, "-c", prog, "bash", p).CombinedOutput()
				if err != nil || strings.TrimSpace(string(o)) != "none filtered report host" {
					t.Errorf("launcher run --net <TAB>: %q, %v; want none filtered report host", o, err)
				}
			}
		})
	}
}

// TestTerminalFlags: -t/--tty and --no-tty, the last one wins; without
// them a terminal only when stdin and stdout both are one.
func TestTerminalFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{nil, false}, // buffers are not terminals
		{[]string{"-t"}, true},
		{[]string{"--tty"}, true},
		{[]string{"-t=false"}, false},
		{[]string{"--no-tty"}, false},
		{[]string{"-t", "--no-tty"}, false},
		{[]string{"--no-tty", "-t"}, true},
		{[]string{"--no-tty=false"}, true},
	} {
		fs, f := newLaunchFlags("run", runUsage, &bytes.Buffer{}, false)
		if _, err := parseLaunch(fs, append(tc.args, "--", "true")); err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if got := f.tty.wants(&bytes.Buffer{}, &bytes.Buffer{}); got != tc.want {
			t.Errorf("%v: terminal %v, want %v", tc.args, got, tc.want)
		}
	}
}

func TestLimitLines(t *testing.T) {
	p, _, err := policy.Resolve(policy.ResolveOptions{Profile: "strict", Overrides: []policy.Setting{
		{Key: "process.memory", Values: []string{"64m"}, Source: policy.Flag("--memory")}}})
	if err != nil {
		t.Fatal(err)
	}
	got := limitLines(p, sandbox.Result{OOMKills: 1, PidsLimitHits: 3})
	want := []string{
		"out of memory: the kernel killed 1 process of the sandbox at its memory limit, process.memory 64MiB (flag:--memory)",
		"the sandbox reached its task limit, process.pids_limit 128 (builtin:strict): 3 forks were refused",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("limitLines (-want +got):\n%s", diff)
	}
	p.Process.Memory = 0
	if got := limitLines(p, sandbox.Result{OOMKills: 2}); len(got) != 1 || !strings.Contains(got[0], "killed 2 processes of the sandbox (process.memory sets no limit") {
		t.Errorf("without a memory limit: %q", got)
	}
	if got := limitLines(p, sandbox.Result{ExitCode: 137}); len(got) != 0 {
		t.Errorf("a plain exit 137 gave %q", got)
	}
}

// TestWarningsInRawModeEndLinesWithCRLF: while the caller's terminal is
// raw, "\n" alone would not return the cursor.
func TestWarningsInRawModeEndLinesWithCRLF(t *testing.T) {
	var b bytes.Buffer
	w := &lineWriter{w: &b}
	io.WriteString(w, "launcher: a\n")
	w.crlf.Store(true)
	io.WriteString(w, "launcher: b\nlauncher: c\n")
	if want := "launcher: a\nlauncher: b\r\nlauncher: c\r\n"; b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}
}
