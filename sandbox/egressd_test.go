package sandbox

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/egressd/egressd/policy"
)

// resolveWith resolves a profile from a policy file body and flags.
func resolveWith(t *testing.T, profile, file string, overrides ...policy.Setting) *policy.Profile {
	t.Helper()
	var files []string
	if file != "" {
		path := filepath.Join(t.TempDir(), "tenant.toml")
		if err := os.WriteFile(path, []byte(file), 0o644); err != nil {
			t.Fatal(err)
		}
		files = append(files, path)
	}
	p, _, err := policy.Resolve(policy.ResolveOptions{Profile: profile, Files: files, Overrides: overrides})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

type ruleView struct{ Text, Source string }

func rulesOf(rs []*policy.Rule) []ruleView {
	out := []ruleView{}
	for _, r := range rs {
		out = append(out, ruleView{r.Text, r.Source.String()})
	}
	return out
}

// TestEgressdPolicyIsTheLaunchsNetworkPolicy: the snapshot egressd loads
// resolves to exactly the launch's rules, ports and DNS answer, in filtered
// mode, each rule with its real source (the built-in, the tenant file's
// line, the flag), as egressd reads it: no map back from snapshot lines.
func TestEgressdPolicyIsTheLaunchsNetworkPolicy(t *testing.T) {
	tenant := "version = 1\n\n[network]\nmode = \"none\"\nallow = [\"*.example.com\", \"203.0.113.0/24:8000-8100\", \"bücher.example\"]\n" +
		"block = [\"gist.github.com\"]\ndefault_ports = [443]\ndns_block_response = \"refused\"\n"
	for _, profile := range []string{"standard", "strict", "offline", "open"} {
		t.Run(profile, func(t *testing.T) {
			p := resolveWith(t, profile, tenant,
				policy.Setting{Key: "network.mode", Values: []string{"filtered"}, Source: policy.Flag("--net")},
				policy.Setting{Key: "network.allow", Values: []string{"api.test:443"}, Source: policy.Flag("--allow")},
				policy.Setting{Key: "network.block", Values: []string{"*.evil.test"}, Source: policy.Flag("--block")})
			path := filepath.Join(t.TempDir(), policyFile)
			data, err := egressdPolicy(p)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, data, 0o400); err != nil {
				t.Fatal(err)
			}
			snap, _, err := policy.Resolve(policy.ResolveOptions{Files: []string{path}})
			if err != nil {
				data, _ := os.ReadFile(path)
				t.Fatalf("the snapshot does not resolve: %v\n%s", err, data)
			}
			if snap.Network.Mode != policy.ModeFiltered {
				t.Errorf("snapshot mode %q", snap.Network.Mode)
			}
			if diff := cmp.Diff(rulesOf(p.Network.Allow), rulesOf(snap.Network.Allow)); diff != "" {
				t.Errorf("allow rules (-launch +egressd):\n%s", diff)
			}
			if diff := cmp.Diff(rulesOf(p.Network.Block), rulesOf(snap.Network.Block)); diff != "" {
				t.Errorf("block rules (-launch +egressd):\n%s", diff)
			}
			if diff := cmp.Diff(p.Network.DefaultPorts, snap.Network.DefaultPorts); diff != "" {
				t.Errorf("default ports (-launch +egressd):\n%s", diff)
			}
			if p.Network.DNSBlockResponse != snap.Network.DNSBlockResponse {
				t.Errorf("dns_block_response %q, want %q", snap.Network.DNSBlockResponse, p.Network.DNSBlockResponse)
			}
		})
	}
}

// TestAuditSinkMasksAndListsEachDenialOnce: records leave with the
// sandbox's secrets masked in every form egressd writes them (lower case in
// a name, escaped, URL-escaped, cut at a cap); denials and failures are one
// per destination and reason, told to onDenial live the first time, a
// lookup denial is dropped when the connection to the same name was denied
// too, and a line that is not a record passes through (masked).
func TestAuditSinkMasksAndListsEachDenialOnce(t *testing.T) {
	const secret = "Sk3tchyT0ken"
	var (
		out  bytes.Buffer
		live []Denial
	)
	a := newAuditSink(&out, NewLineMasker([]string{secret}), func(d Denial) { live = append(live, d) })
	lines := []string{
		`{"time":"2026-01-01T00:00:00Z","kind":"dns","target":"evil.test","port":53,"decision":"deny","reason":"blocked-by","rule":"evil.test","rule_source":"flag:--block"}`,
		`{"time":"2026-01-01T00:00:00Z","kind":"connect","target":"evil.test","port":443,"decision":"deny","reason":"blocked-by","rule":"evil.test","rule_source":"flag:--block"}`,
		`{"time":"2026-01-01T00:00:00Z","kind":"connect","target":"evil.test","port":443,"decision":"deny","reason":"blocked-by","rule":"evil.test","rule_source":"flag:--block"}`,
		`{"time":"2026-01-01T00:00:00Z","kind":"dns","target":"sk3tchyt0ken.x.test","port":53,"decision":"deny","reason":"no-allow-rule"}`,
		`{"time":"2026-01-01T00:00:00Z","kind":"https","target":"api.test","port":443,"method":"GET","path":"/v1/Sk3tchyT0k...","decision":"deny","reason":"no-allow-rule"}`,
		`{"time":"2026-01-01T00:00:00Z","kind":"tls","target":"pypi.org","port":443,"decision":"error","reason":"resolver-timeout","rule":"pypi.org","rule_source":"builtin:standard","error":"resolving pypi.org: upstream 192.0.2.53:53: i/o timeout"}`,
		`{"time":"2026-01-01T00:00:00Z","kind":"tls","target":"ok.test","port":443,"decision":"allow","reason":"allowed-by","rule":"ok.test","rule_source":"tenant.toml:3","bytes_up":5}`,
		`not json Sk3tchyT0ken`,
	}
	a.consume(strings.NewReader(strings.Join(lines, "\n") + "\n"))
	got := a.list()
	want := []Denial{
		{Kind: "dns", Outcome: "deny", Target: "***.x.test", Port: 53, Reason: "no-allow-rule", Count: 1},
		{Kind: "https", Outcome: "deny", Target: "api.test", Port: 443, Reason: "no-allow-rule", Method: "GET", Path: "/v1/***...", Count: 1},
		{Kind: "connect", Outcome: "deny", Target: "evil.test", Port: 443, Reason: "blocked-by", Rule: "evil.test", RuleSource: "flag:--block", Count: 2},
		{Kind: "tls", Outcome: "error", Target: "pypi.org", Port: 443, Reason: "resolver-timeout", Rule: "pypi.org", RuleSource: "builtin:standard",
			Error: "resolving pypi.org: upstream 192.0.2.53:53: i/o timeout", Count: 1},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("denials (-want +got):\n%s", diff)
	}
	if len(live) != 5 { // the lookup of evil.test, then its connection: each once
		t.Errorf("told live of %d denials, want 5: %+v", len(live), live)
	}
	outLines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(outLines) != len(lines) {
		t.Fatalf("copied %d lines, want %d:\n%s", len(outLines), len(lines), out.String())
	}
	if outLines[7] != "not json ***" {
		t.Errorf("a non-record line became %q", outLines[7])
	}
	var rec map[string]any
	if err := json.Unmarshal([]byte(outLines[6]), &rec); err != nil {
		t.Fatal(err)
	}
	if rec["rule_source"] != "tenant.toml:3" || rec["bytes_up"] != float64(5) {
		t.Errorf("allowed record copied as %v", rec)
	}
	if low := strings.ToLower(out.String()); strings.Contains(low, strings.ToLower(secret)) || strings.Contains(low, "sk3tchyt0k") {
		t.Errorf("the secret reached the audit log:\n%s", out.String())
	}
}

// TestLineMaskerMasksEveryFormEgressdWrites: a secret the sandbox used as
// a name or a path is masked in the forms egressd writes it in, and a
// value without the secret is left alone.
func TestLineMaskerMasksEveryFormEgressdWrites(t *testing.T) {
	m := NewLineMasker([]string{"AbC:d3f/\x01gh", "Pl41nT0ken"})
	for in, want := range map[string]string{
		"denied Pl41nT0ken.evil.test:443":   "denied ***.evil.test:443",
		"denied pl41nt0ken.evil.test:443":   "denied ***.evil.test:443",
		`path /AbC:d3f/\x01gh`:              "path /***",
		`path /abc:d3f/\x01gh`:              "path /***",
		"path /AbC:d3f%2F%01gh":             "path /***",
		`query AbC\:d3f/\001gh.x.`:          `query AbC\:d3f/\001gh.x.`, // not a form egressd writes: left as is
		`query AbC:d3f/\001gh.x.`:           "query ***.x.",
		"cut /v1/Pl41nT0...":                "cut /v1/***...",
		"cut /v1/Pl4...":                    "cut /v1/Pl4...", // under MinSecretLength: too short to mean anything
		"allowed pypi.org (builtin:strict)": "allowed pypi.org (builtin:strict)",
	} {
		if got := m.String(in); got != want {
			t.Errorf("String(%q) = %q, want %q", in, got, want)
		}
	}
	if got := NewLineMasker(nil).String("Pl41nT0ken"); got != "Pl41nT0ken" {
		t.Errorf("no secrets: %q", got)
	}
}

func TestEgressdArgs(t *testing.T) {
	args := egressdArgs(egressdFlags{dir: "/run/x/egressd", mark: 0x4547, sandboxID: "egs-1",
		upstream: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.53:53"), netip.MustParseAddrPort("192.0.2.54:5353")}})
	joined := strings.Join(args, " ")
	for _, want := range []string{
		"serve --policy /run/x/egressd/policy.json",
		"--dns-listen 127.0.0.1:15053,[::1]:15053",
		"--proxy-listen 127.0.0.1:3128",
		"--transparent-listen 127.0.0.1:15001,[::1]:15001",
		"--admin-listen unix:/run/x/egressd/admin.sock",
		"--upstream-dns 192.0.2.53:53,192.0.2.54:5353",
		"--mark 17735", "--audit-log -", "--sandbox-id egs-1", "--ready-fd 3",
		"--watch-policy=false",
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("egressd args lack %q: %s", want, joined)
		}
	}
}

func TestTailBufferKeepsTheEnd(t *testing.T) {
	b := newTailBuffer(16)
	fmt.Fprintf(b, "first line\nsecond line\n")
	fmt.Fprintf(b, "third\n")
	if got := b.lastLines(5); got != "cond line | third" {
		t.Errorf("lastLines = %q", got)
	}
	if got := newTailBuffer(8).lastLines(2); got != "(no output)" {
		t.Errorf("empty lastLines = %q", got)
	}
}

// egressdBinary builds egressd into a directory of the test's (go's build
// cache makes this quick after the first time).
func egressdBinary(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "egressd")
	out, err := exec.Command("go", "build", "-o", path, "github.com/egressd/egressd/cmd/egressd").CombinedOutput()
	if err != nil {
		t.Fatalf("building egressd: %v\n%s", err, out)
	}
	return path
}

// procStatus reads fields of /proc/PID/status.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out
}

// TestEgressdRunsUnprivilegedWithOnlyNetAdmin: egressd runs in the
// sandbox's namespace as its own non-root uid, with CAP_NET_ADMIN as its
// only capability (effective, permitted, ambient and bounding), no
// supplementary groups and no_new_privs, even when its binary lies where
// that uid cannot reach; stop removes it and its binary mount.
func TestEgressdRunsUnprivilegedWithOnlyNetAdmin(t *testing.T) {
	requireRootNetns(t)
	bin := egressdBinary(t) // in a 0700 directory: unreachable for egressd's uid
	ns := testNetNS(t)
	dir := filepath.Join(t.TempDir(), "egressd")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, DefaultEgressdUID, DefaultEgressdGID); err != nil {
		t.Fatal(err)
	}
	// t.TempDir's parents are 0700: open them up to the uid for this test.
	for d := filepath.Dir(dir); d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		os.Chmod(d, 0o711)
	}
	p := resolveWith(t, "standard", "", policy.Setting{Key: "network.allow", Values: []string{"allowed.test"}, Source: policy.Flag("--allow")})
	data, err := egressdPolicy(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, policyFile), data, 0o400); err != nil {
		t.Fatal(err)
	}
	os.Chown(filepath.Join(dir, policyFile), DefaultEgressdUID, DefaultEgressdGID)
	if err := bindFile(hostFS{}, bin, filepath.Join(dir, binaryName)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmountAndRemove(hostFS{}, filepath.Join(dir, binaryName)) })
	plan := &EgressdPlan{Binary: bin, Dir: dir, UID: DefaultEgressdUID, GID: DefaultEgressdGID, ReadyTimeout: 20 * time.Second,
		Args: egressdArgs(egressdFlags{dir: dir, mark: DefaultMark, upstream: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.53:53")}, sandboxID: "egs-test"})}
	proc, err := hostEgressd{}.Start(context.Background(), ns.Path, plan, newAuditSink(nil, nil, nil).consume)
	if proc != nil {
		t.Cleanup(func() { proc.Stop() })
	}
	if err != nil {
		t.Fatalf("starting egressd: %v", err)
	}
	e := proc.(*egressdProc)
	st := procStatus(t, e.pid)
	const netAdmin = "0000000000001000"
	for k, want := range map[string]string{
		"Uid": "65530\t65530\t65530\t65530", "Gid": "65530\t65530\t65530\t65530", "Groups": "",
		"CapInh": netAdmin, "CapPrm": netAdmin, "CapEff": netAdmin, "CapBnd": netAdmin, "CapAmb": netAdmin,
		"NoNewPrivs": "1",
	} {
		if st[k] != want {
			t.Errorf("egressd %s = %q, want %q", k, st[k], want)
		}
	}
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", e.pid)); strings.TrimSpace(string(comm)) != "egressd" {
		t.Errorf("egressd's comm is %q", comm)
	}
	if procs := procsIn(ns.Dev, ns.Ino); len(procs) != 1 || procs[0] != e.pid {
		t.Errorf("processes in the sandbox namespace: %v, want egressd's pid %d alone", procs, e.pid)
	}
	if _, err := os.Stat(filepath.Join(dir, adminSocket)); err != nil {
		t.Errorf("admin socket: %v", err)
	}
	if err := e.Stop(); err != nil {
		t.Errorf("stop: %v", err)
	}
	select {
	case <-e.Done():
	default:
		t.Error("egressd still running after stop")
	}
}

// TestEgressdThatCannotStartFailsTheLaunchWithItsReason: a policy egressd
// refuses surfaces egressd's own message, not a timeout.
func TestEgressdThatCannotStartFailsTheLaunchWithItsReason(t *testing.T) {
	requireRootNetns(t)
	bin := egressdBinary(t)
	ns := testNetNS(t)
	dir := filepath.Join(t.TempDir(), "egressd")
	if err := os.Mkdir(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	for d := filepath.Dir(dir); d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		os.Chmod(d, 0o711)
	}
	if err := os.WriteFile(filepath.Join(dir, policyFile), []byte(`[{"field": "network.alow", "value": "[]", "source": "t.toml:3"}]`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := bindFile(hostFS{}, bin, filepath.Join(dir, binaryName)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmountAndRemove(hostFS{}, filepath.Join(dir, binaryName)) })
	start := time.Now()
	plan := &EgressdPlan{Binary: bin, Dir: dir, UID: DefaultEgressdUID, GID: DefaultEgressdGID, ReadyTimeout: 20 * time.Second,
		Args: egressdArgs(egressdFlags{dir: dir, mark: DefaultMark, upstream: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.53:53")}, sandboxID: "egs-test"})}
	e, err := hostEgressd{}.Start(context.Background(), ns.Path, plan, newAuditSink(nil, nil, nil).consume)
	if e != nil {
		defer e.Stop()
	}
	if err == nil || !strings.Contains(err.Error(), "exited before it was ready") || !strings.Contains(err.Error(), `unknown field "network.alow"`) {
		t.Errorf("start with a broken policy: %v; want egressd's exit and its message", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("took %s to notice", took)
	}
}

// TestEgressdPolicyKeepsReportMode: a report-mode launch gives egressd a
// report-mode snapshot (the floor was checked on the launch's profile);
// every other proxied launch a filtered one.
func TestEgressdPolicyKeepsReportMode(t *testing.T) {
	p := resolveWith(t, "open", "version = 1\n[network]\nallow = [\"pypi.org\"]\n",
		policy.Setting{Key: "network.mode", Values: []string{"report"}, Source: policy.Flag("--net")})
	data, err := egressdPolicy(p)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), policyFile)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	snap, _, err := policy.Resolve(policy.ResolveOptions{Files: []string{path}})
	if err != nil || snap.Network.Mode != policy.ModeReport {
		t.Fatalf("snapshot of a report-mode launch: mode %v, err %v", snap.Network.Mode, err)
	}
}

// TestCommandOutputMasksTheFormsProgramsPrintASecretIn: a command that
// prints its secret JSON-encoded (json.dumps of a dict), URL-encoded (a
// query string it logs), HTML-escaped or base64-encoded (a Basic header it
// logs) does not put the value in the launcher's output — split across
// writes included.
func TestCommandOutputMasksTheFormsProgramsPrintASecretIn(t *testing.T) {
	secret := "sk-rev&iew<1234>abcd"
	for name, shown := range map[string]string{
		"literal":    secret,
		"lower":      strings.ToLower(secret),
		"json":       `sk-rev\u0026iew\u003c1234\u003eabcd`,
		"url":        "sk-rev%26iew%3C1234%3Eabcd",
		"html":       "sk-rev&amp;iew&lt;1234&gt;abcd",
		"base64":     base64.StdEncoding.EncodeToString([]byte("user:" + secret)),
		"base64-url": base64.URLEncoding.EncodeToString([]byte(secret)),
	} {
		var out strings.Builder
		w := NewMasker(&out, []string{secret})
		line := "token=" + shown + "\n"
		for i := range len(line) { // one byte per write
			if _, err := w.Write([]byte{line[i]}); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if got := out.String(); strings.Contains(got, shown) || !strings.Contains(got, SecretMask) {
			t.Errorf("%s: %q came out as %q", name, line, got)
		}
	}
}
