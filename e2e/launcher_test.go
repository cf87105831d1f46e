package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/egressd/egressd/e2e/fakenet"
	"github.com/egressd/egressd/internal/syncbuf"
	"github.com/egressd/egressd/sandbox"
	"github.com/egressd/egressd/sandbox/pid1"
)

// Issue #4, "Done when": the launcher runs inside a fake-internet world
// (its uplink veth and NAT live there, its upstream DNS is the world's
// 203.0.113.53) and ordinary tools inside the sandbox prove what the
// profile promises. Every verdict is scored on what the world saw.
//
// The tests are subtests of TestLauncher so that, when they have all
// finished, it can check the machine: no namespace, state directory,
// container or link of a sandbox is left (each world checks its own rules
// and links as it ends).
func TestLauncher(t *testing.T) {
	fakenet.RequireRoot(t)
	launcherBinary(t)
	if left := launcherLeftovers(t); len(left) > 0 {
		t.Fatalf("leftovers before the launcher tests ran (not ours; refusing to judge): %v", left)
	}
	t.Run("group", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			fn   func(t *testing.T)
		}{
			{"AllowedHostFetchedWithAndWithoutProxyEnv", testLauncherAllowedHostFetched},
			{"BlockedHostRefusedWithItsRule", testLauncherBlockedHostRefused},
			{"DenialSeenInsideNamesTheUsersRuleNotTheLaunchersFiles", testLauncherDenialNamesUsersRule},
			{"DNSToAnyServerIsAnsweredByEgressd", testLauncherDNSAnsweredByEgressd},
			{"UDPPingAndIPv6CannotLeave", testLauncherUDPPingIPv6Fail},
			{"IptablesFlushInsideFailsAndFilterHolds", testLauncherIptablesFlushFails},
			{"ReadOnlyRootButWritableWorkspace", testLauncherReadOnlyRoot},
			{"PidsLimitStopsForkLoopAndSaysSo", testLauncherPidsLimit},
			{"MemoryLimitOOMKillIs137AndSaysSo", testLauncherMemoryLimit},
			{"TimeoutKillsAndExits124", testLauncherTimeout},
			{"BlockedCommandCannotRunEvenFromShell", testLauncherBlockedCommand},
			{"SecretIsMaskedInOutput", testLauncherSecretMasked},
			{"KillingEgressdLeavesNoEgress", testLauncherEgressdDeathFailsClosed},
			{"NetNoneHasLoopbackOnly", testLauncherNetNone},
			{"NetHostRefusedUnderFloorStandard", testLauncherNetHostRefused},
			{"BroadWildcardAllowRefusedUnderFloorStrict", testLauncherBroadAllowRefused},
			{"ExitCodeIsTheCommandsAnd125ForLauncherErrors", testLauncherExitCodes},
			{"SIGTERMTearsDownAndNothingIsLeft", testLauncherSIGTERM},
			{"ExplainShowsProfileRulesAndSpec", testLauncherExplain},
			{"SandboxOfAKilledLauncherIsReaped", testLauncherReapsStale},
			{"StreamsThatNameNoAllowedHostAreRefused", testLauncherUndecidedStreamsRefused},
			{"HostFilesOutsideTheViewAreUnreadable", testLauncherHostViewHidesHostFiles},
			{"FileOfTheOldDefaultUIDIsUnreadable", testLauncherOldDefaultUIDFileUnreadable},
			{"WorkspaceGitHooksAndConfigCannotBeWritten", testLauncherWorkspaceGitIsProtected},
			{"MissingProtectedPathsCannotBeCreated", testLauncherMissingProtectedPathsCannotBeCreated},
			{"NestedGitIncludeCannotSetAHook", testLauncherNestedGitIncludeCannotSetAHook},
			{"GitfileTargetInsideTheWorkspaceIsProtected", testLauncherGitfileTargetInsideTheWorkspaceIsProtected},
			{"AgentEditorAndShellSettingsCannotBeCreated", testLauncherAgentEditorAndShellSettingsCannotBeCreated},
			{"RootSandboxCannotReadHostKeysUnderEtc", testLauncherRootSandboxCannotReadHostKeysUnderEtc},
			{"ResolvConfSymlinkStillPointsAtEgressd", testLauncherResolvConfSymlinkStillPointsAtEgressd},
			{"UserInstallsWorkUnderStrict", testLauncherUserInstallsUnderStrict},
			{"VolumeWritableUnderStrictAndOfflineButNotItsProtectedPaths", testLauncherVolumeWritableUnderReadOnlyProfiles},
			{"UnwritableWorkspaceIsRefusedAndRootWarned", testLauncherWorkspacePreflight},
			{"ExplainShowsViewVolumesProtectedPathsAndUser", testLauncherExplainFilesystem},
			{"SleepStopsWithinASecondOfSIGINTAndSIGTERM", testLauncherSignalsStopSleep},
			{"OrphanedZombiesAreReaped", testLauncherZombiesReaped},
			{"TerminalUnderTWithSizeResizeAndCtrlC", testLauncherTerminal},
			{"TerminalRestoredWhenTheLauncherIsKilled", testLauncherTerminalRestoredWhenKilled},
			{"TerminalInjectionStaysInTheSandbox", testLauncherTerminalInjectionStaysInTheSandbox},
			{"BrokenRuntimeExits125WithItsMessage", testLauncherBrokenRuntime},
			{"CommandThatCannotRunIs126Or127", testLauncherCommandThatCannotRun},
			{"NegativePidsLimitRefused", testLauncherNegativePidsLimitRefused},
			{"StatusLineOnlyClientsSayWhyTheyWereRefused", testLauncherStatusLineSaysWhy},
			{"DenialIsPrintedWhileTheCommandRuns", testLauncherDenialPrintedWhileTheCommandRuns},
			{"AllowedNameResolvingToMetadataIsAuditedAsDenial", testLauncherGuardedAddressAfterAllowedNameIsADenial},
			{"SilentUpstreamResolverIsAnErrorNeverNamedToTheSandbox", testLauncherSilentResolverIsAnErrorNotNamedToTheSandbox},
			{"SecretUsedAsNameOrPathIsMaskedInStderrAndAuditLog", testLauncherSecretAsNameOrPathIsMasked},
			{"DenialNamesTheUsersRuleNotEgressdsSnapshot", testLauncherDenialNamesTheUsersRule},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				tc.fn(t)
			})
		}
	})
	if left := launcherLeftovers(t); len(left) > 0 {
		t.Errorf("the launcher tests left behind: %v", left)
	}
}

func testLauncherAllowedHostFetched(t *testing.T) {
	lw := newLauncherWorld(t)
	r := lw.run("--allow", "allowed.test", "--", "sh", "-c",
		curlArgs+" https://allowed.test/proxied; echo; "+
			curlArgs+" --noproxy '*' https://allowed.test/direct; echo; "+
			"env -u HTTP_PROXY -u http_proxy "+curlArgs+" http://allowed.test/plain; echo")
	if r.code != 0 {
		t.Fatalf("want exit 0\n%s", r)
	}
	got := map[string]fakenet.HTTPRequest{}
	for _, rep := range replies(r.stdout) {
		got[rep.URI] = rep
	}
	for _, uri := range []string{"/proxied", "/direct", "/plain"} {
		rep, ok := got[uri]
		if !ok {
			t.Errorf("no reply from the fake server for %s\n%s", uri, r)
			continue
		}
		if rep.Host != "allowed.test" {
			t.Errorf("%s: the server saw Host %q", uri, rep.Host)
		}
		// The world saw the sandbox's uplink address, not the world's
		// own: the request left through the launcher's veth.
		if !sandbox.DefaultSubnet.Contains(rep.Remote.Addr()) {
			t.Errorf("%s came from %s, want an uplink address in %s", uri, rep.Remote.Addr(), sandbox.DefaultSubnet)
		}
	}
	if got["/proxied"].SNI != "allowed.test" || got["/direct"].SNI != "allowed.test" {
		t.Errorf("SNI: proxied %q, direct %q; want allowed.test", got["/proxied"].SNI, got["/direct"].SNI)
	}
	// Both paths were egressd's: the explicit proxy (CONNECT) for the
	// first, the transparent listener (TLS on SNI) for the second.
	kinds := map[string]bool{}
	for _, a := range r.audit {
		if a.Target == "allowed.test" && a.Decision == "allow" {
			kinds[a.Kind] = true
			if a.Rule != "allowed.test" || a.Source != "flag:--allow" {
				t.Errorf("audit record %+v: want rule allowed.test from flag:--allow", a)
			}
		}
	}
	for _, k := range []string{"connect", "tls", "http"} {
		if !kinds[k] {
			t.Errorf("no allowed %q audit record for allowed.test; got %v", k, kinds)
		}
	}
	if n := lw.w.HTTPRequests("allowed.test"); n != 3 {
		t.Errorf("world served %d requests for allowed.test, want 3", n)
	}
}

func testLauncherBlockedHostRefused(t *testing.T) {
	lw := newLauncherWorld(t)
	r := lw.run("--allow", "allowed.test", "--block", "blocked.test", "--", "sh", "-c",
		curlArgs+" https://blocked.test/; echo proxied=$?; "+
			curlArgs+" --noproxy '*' --resolve blocked.test:443:203.0.113.10 https://blocked.test/; echo direct=$?; "+
			curlArgs+" https://other.test/; echo other=$?; "+
			curlArgs+" https://allowed.test/ >/dev/null; echo allowed=$?")
	if r.code != 0 {
		t.Fatalf("want exit 0 (the script's)\n%s", r)
	}
	for _, m := range []string{"proxied", "direct", "other"} {
		if v := marker(r.stdout, m); v == "0" || v == "" {
			t.Errorf("%s fetch: curl exit %q, want a failure\n%s", m, v, r)
		}
	}
	if v := marker(r.stdout, "allowed"); v != "0" {
		t.Errorf("allowed fetch in the same sandbox: curl exit %q, want 0\n%s", v, r)
	}
	for _, host := range []string{"blocked.test", "other.test"} {
		if n := lw.w.HTTPRequests(host); n != 0 {
			t.Errorf("world served %d requests for %s", n, host)
		}
		if n := lw.w.DNSQueries(host); n != 0 {
			t.Errorf("world's DNS saw %d queries for %s", n, host)
		}
	}
	// One line per denied destination, with the rule and what to do.
	for _, want := range []string{
		"launcher: denied blocked.test:443 (blocked-by blocked.test from flag:--block, 2 times); a block rule wins over every allow: --allow cannot override it",
		"launcher: denied other.test:443 (no-allow-rule); allow it with --allow other.test:443",
	} {
		if !strings.Contains(r.stderr, want+"\n") {
			t.Errorf("stderr lacks %q\n%s", want, r)
		}
	}
	// The audit log names the rule's real source, not egressd's snapshot.
	found := false
	for _, a := range r.audit {
		if a.Target == "blocked.test" && a.Decision == "deny" {
			found = true
			if a.Reason != "blocked-by" || a.Rule != "blocked.test" || a.Source != "flag:--block" {
				t.Errorf("audit record %+v: want blocked-by blocked.test from flag:--block", a)
			}
		}
	}
	if !found {
		t.Errorf("no deny audit record for blocked.test: %+v", r.audit)
	}
}

// testLauncherDenialNamesUsersRule: what a denied client inside the sandbox
// reads (the X-Egressd-Denied header and the 403 body, through the explicit
// proxy and transparently) names the rule where its author wrote it — the
// policy file's line, the flag — and nothing of the launcher's own files
// (egressd's policy snapshot lives in the launcher's state directory, which
// no sandbox should learn about).
func testLauncherDenialNamesUsersRule(t *testing.T) {
	lw := newLauncherWorld(t)
	if err := os.WriteFile(filepath.Join(lw.ws, "tenant.toml"), []byte("version = 1\n[network]\nblock = [\"evil.test\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	show := func(name, args string) string {
		return "curl -sS --max-time 5 -D - " + args + " | tr -d '\\r' | sed 's/^/" + name + ": /'; "
	}
	r := lw.run("--policy", "tenant.toml", "--allow", "allowed.test", "--block", "blocked.test", "--", "sh", "-c",
		show("flag-proxied", "http://blocked.test/")+
			show("flag-direct", "--noproxy '*' --resolve blocked.test:80:203.0.113.10 http://blocked.test/")+
			show("file-proxied", "http://evil.test/"))
	if r.code != 0 {
		t.Fatalf("want exit 0 (the script's)\n%s", r)
	}
	for _, want := range []string{
		"flag-proxied: X-Egressd-Denied: blocked-by blocked.test (flag:--block)",
		"flag-proxied: egressd: denied blocked.test:80: blocked-by blocked.test (flag:--block)",
		"flag-direct: X-Egressd-Denied: blocked-by blocked.test (flag:--block)",
		"file-proxied: X-Egressd-Denied: blocked-by evil.test (tenant.toml:3)",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("inside the sandbox, no %q\n%s", want, r)
		}
	}
	for _, leak := range []string{sandbox.DefaultStateDir, "policy.json", "policy.toml"} {
		if strings.Contains(r.stdout, leak) {
			t.Errorf("a denial seen inside the sandbox names the launcher's file %q\n%s", leak, r)
		}
	}
	for _, host := range []string{"blocked.test", "evil.test"} {
		if n := lw.w.HTTPRequests(host); n != 0 {
			t.Errorf("world served %d requests for %s", n, host)
		}
	}
}

// digScript queries with dig and prints "NAME status=STATUS answer=ADDR".
const digScript = `q() { out=$(dig +time=2 +tries=1 "$@" 2>&1); st=$(echo "$out" | sed -n 's/.*status: \([A-Z]*\).*/\1/p'); an=$(echo "$out" | awk '/^[^;].*IN[ \t]+A[ \t]/ {print $NF}' | head -1); echo "$1$2 status=${st:-none} answer=${an:-none}"; }
`

func testLauncherDNSAnsweredByEgressd(t *testing.T) {
	lw := newLauncherWorld(t)
	r := lw.run("--allow", "allowed.test", "--", "sh", "-c", digScript+
		`q @203.0.113.53 allowed.test; q +tcp @203.0.113.53 allowed.test; q @203.0.113.53 other.test; q +tcp @198.51.100.10 other.test; q allowed.test`)
	if r.code != 0 {
		t.Fatalf("want exit 0\n%s", r)
	}
	want := map[string]string{
		"@203.0.113.53allowed.test": "status=NOERROR answer=203.0.113.10",
		"+tcp@203.0.113.53":         "status=NOERROR answer=203.0.113.10",
		"@203.0.113.53other.test":   "status=NXDOMAIN answer=none",
		"+tcp@198.51.100.10":        "status=NXDOMAIN answer=none",
		"allowed.test":              "status=NOERROR answer=203.0.113.10",
	}
	for prefix, w := range want {
		found := false
		for _, line := range strings.Split(r.stdout, "\n") {
			if rest, ok := strings.CutPrefix(line, prefix+" "); ok {
				found = true
				if rest != w {
					t.Errorf("dig %s: %s, want %s", prefix, rest, w)
				}
			}
		}
		if !found {
			t.Errorf("no dig result for %s\n%s", prefix, r)
		}
	}
	// other.test is in the world's table: NXDOMAIN came from egressd, and
	// the query never reached the world, over UDP or TCP, to any server.
	if n := lw.w.DNSQueries("other.test"); n != 0 {
		t.Errorf("world's DNS saw %d queries for other.test", n)
	}
	for _, q := range lw.w.DNSLog() {
		if !sandbox.DefaultSubnet.Contains(q.From.Addr()) {
			t.Errorf("world's DNS got a query from %s, not egressd's uplink address", q.From)
		}
	}
	dns := 0
	for _, a := range r.audit {
		if a.Kind == "dns" && a.Target == "other.test" && a.Decision == "deny" && a.Reason == "no-allow-rule" {
			dns++
		}
	}
	if dns < 2 {
		t.Errorf("want a deny audit record for each other.test query (UDP and TCP), got %d: %+v", dns, r.audit)
	}
}

// probeScript tries UDP, ICMP and IPv6 from inside the sandbox.
const probeScript = `
import json, shutil, socket, subprocess, sys
res = {}
def udp(host, port):
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
        s.sendto(b"leak", (host, port)); s.recvfrom(100); return "reply"
    except Exception as e:
        return type(e).__name__
res["udp7"] = udp("203.0.113.10", 7)
res["udp123"] = udp("198.51.100.10", 123)
res["udp443"] = udp("203.0.113.10", 443)
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP); res["icmpsock"] = "opened"
except Exception as e:
    res["icmpsock"] = type(e).__name__
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); res["rawsock"] = "opened"
except Exception as e:
    res["rawsock"] = type(e).__name__
if shutil.which("ping"):
    res["ping"] = subprocess.run(["ping", "-c", "1", "-W", "1", "203.0.113.10"], capture_output=True).returncode
else:
    res["ping"] = "absent"
try:
    c = socket.create_connection(("2001:db8::10", 80), timeout=2); res["tcp6"] = "connected"
except Exception as e:
    res["tcp6"] = type(e).__name__
try:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(1); s.sendto(b"x", ("2001:db8::10", 7)); s.recvfrom(10); res["udp6"] = "reply"
except Exception as e:
    res["udp6"] = type(e).__name__
res["curl6"] = subprocess.run(["curl", "-sS", "--max-time", "3", "--noproxy", "*", "http://[2001:db8::10]/"], capture_output=True).returncode
print(json.dumps(res))
`

func testLauncherUDPPingIPv6Fail(t *testing.T) {
	lw := newLauncherWorld(t)
	echo4, echo6 := icmpEchoes(t, lw.w)
	r := lw.run("--allow", "allowed.test", "--allow", "203.0.113.10:7", "--", sandboxPython, "-c", probeScript)
	if r.code != 0 {
		t.Fatalf("want exit 0\n%s", r)
	}
	t.Logf("probes from inside the sandbox: %s", strings.TrimSpace(r.stdout))
	var res map[string]any
	if err := json.Unmarshal([]byte(strings.TrimSpace(r.stdout)), &res); err != nil {
		t.Fatalf("probe output: %v\n%s", err, r)
	}
	if res["ping"] == "absent" {
		t.Log("no ping in the root file system (install iputils-ping); ICMP checked with sockets only")
	}
	for k, v := range res {
		switch v {
		case "reply", "connected", "opened", float64(0):
			t.Errorf("%s from the sandbox succeeded (%v)", k, v)
		}
	}
	for _, a := range []string{"203.0.113.10:7", "198.51.100.10:123", "203.0.113.10:443"} {
		if n := lw.w.UDPReceived(netip.MustParseAddrPort(a)); n != 0 {
			t.Errorf("world received %d UDP datagrams on %s", n, a)
		}
	}
	if n := worldHTTPTo(lw.w, host6); n != 0 {
		t.Errorf("world served %d requests on its IPv6 address", n)
	}
	if n := lw.w.TCPAccepted(ap(host6, 80)); n != 0 {
		t.Errorf("world accepted %d IPv6 connections", n)
	}
	if a, b := icmpEchoes(t, lw.w); a != echo4 || b != echo6 {
		t.Errorf("world received ICMP echoes: v4 %d→%d, v6 %d→%d", echo4, a, echo6, b)
	}
}

func testLauncherIptablesFlushFails(t *testing.T) {
	lw := newLauncherWorld(t)
	script := `iptables -F; echo flush=$?; iptables -t nat -F OUTPUT; echo natflush=$?; ip6tables -F; echo flush6=$?; ` +
		`ip route add 198.51.100.0/24 dev eth0; echo route=$?; ` +
		curlArgs + ` --noproxy '*' --resolve other.test:443:198.51.100.10 https://other.test/; echo other=$?`
	for _, user := range []string{"", "0:0"} {
		args := []string{"--allow", "allowed.test"}
		if user != "" {
			args = append(args, "--user", user)
		}
		r := lw.run(append(args, "--", "sh", "-c", script)...)
		if r.code != 0 {
			t.Fatalf("user %s: want exit 0\n%s", user, r)
		}
		t.Logf("as %s: %s", user, strings.Join(strings.Fields(r.stdout+" "+r.stderr), " "))
		for _, m := range []string{"flush", "natflush", "flush6", "route", "other"} {
			if v := marker(r.stdout, m); v == "0" || v == "" {
				t.Errorf("user %s: %s exit %q, want a failure\n%s", user, m, v, r)
			}
		}
	}
	if n := lw.w.HTTPRequests("other.test"); n != 0 {
		t.Errorf("world served %d requests for other.test after the flush attempts", n)
	}
}

func testLauncherReadOnlyRoot(t *testing.T) {
	lw := newLauncherWorld(t)
	script := `touch /x; echo root=$?; touch /usr/x; echo usr=$?; touch /sandbox/w && echo sandbox=0; touch /tmp/t && echo tmp=0`
	// strict: read-only root; the workspace is a fresh tmpfs the user owns.
	r := lw.runWith(lopts{noMount: true}, "--profile", "strict", "--", "sh", "-c", script)
	if r.code != 0 {
		t.Fatalf("want exit 0\n%s", r)
	}
	for m, want := range map[string]bool{"root": false, "usr": false, "sandbox": true, "tmp": true} {
		if ok := marker(r.stdout, m) == "0"; ok != want {
			t.Errorf("strict: writing %s: succeeded=%v, want %v\n%s", m, ok, want, r)
		}
	}
	// --read-only on standard, with the workspace mounted: the write lands
	// in the host directory.
	r = lw.run("--read-only", "--", "sh", "-c", script)
	if r.code != 0 {
		t.Fatalf("want exit 0\n%s", r)
	}
	if marker(r.stdout, "root") == "0" || marker(r.stdout, "sandbox") != "0" {
		t.Errorf("--read-only: want / read-only and /sandbox writable\n%s", r)
	}
	if _, err := os.Stat(filepath.Join(lw.ws, "w")); err != nil {
		t.Errorf("the workspace write did not reach the mounted directory: %v", err)
	}
	// A writable root (standard) is a throwaway overlay: the host's / is
	// untouched.
	r = lw.run("--user", "0:0", "--", "sh", "-c", "touch /launcher-e2e-probe && echo root=0")
	if marker(r.stdout, "root") != "0" {
		t.Errorf("standard as root: writing / failed\n%s", r)
	}
	if _, err := os.Stat("/launcher-e2e-probe"); err == nil {
		os.Remove("/launcher-e2e-probe")
		t.Error("a write to the sandbox's writable root reached the host's /")
	}
}

const forkScript = `
import os, time
pids, err = [], ""
try:
    for i in range(200):
        pid = os.fork()
        if pid == 0:
            time.sleep(30); os._exit(0)
        pids.append(pid)
except OSError as e:
    err = e.strerror
for p in pids:
    os.kill(p, 9)
for p in pids:
    os.waitpid(p, 0)
print("forked=%d" % len(pids)); print("error=" + err)
`

func testLauncherPidsLimit(t *testing.T) {
	lw := newLauncherWorld(t)
	r := lw.run("--pids-limit", "20", "--timeout", "60s", "--", sandboxPython, "-c", forkScript)
	if r.code != 0 {
		t.Fatalf("want exit 0\n%s", r)
	}
	n := 0
	fmt.Sscan(marker(r.stdout, "forked"), &n)
	if n == 0 || n >= 20 || marker(r.stdout, "error") == "" {
		t.Errorf("fork loop under --pids-limit 20: forked %d, error %q; want fewer than 20 and a fork error\n%s", n, marker(r.stdout, "error"), r)
	}
	if !strings.Contains(r.stderr, pidsLimitLine(20)) {
		t.Errorf("the launcher does not say the task limit was reached (%q)\n%s", pidsLimitLine(20), r)
	}
}

func testLauncherMemoryLimit(t *testing.T) {
	lw := newLauncherWorld(t)
	hog := `b = bytearray(512 << 20)
for i in range(0, len(b), 4096): b[i] = 1
print("allocated=512MiB")`
	r := lw.run("--memory", "64m", "--timeout", "60s", "--", sandboxPython, "-c", hog)
	if r.code != 137 || marker(r.stdout, "allocated") != "" {
		t.Errorf("a 512 MiB allocation under --memory 64m: want it killed, exit 137\n%s", r)
	}
	const oom = "launcher: out of memory: the kernel killed 1 process of the sandbox at its memory limit, process.memory 64MiB (flag:--memory)"
	if !strings.Contains(r.stderr, oom) {
		t.Errorf("the launcher does not say why (%q)\n%s", oom, r)
	}
	// The same program with room for it runs, and nothing is said.
	r = lw.run("--memory", "1g", "--timeout", "60s", "--", sandboxPython, "-c", hog)
	if r.code != 0 || marker(r.stdout, "allocated") == "" || strings.Contains(r.stderr, "out of memory") {
		t.Errorf("under --memory 1g the allocation should succeed, silently\n%s", r)
	}
}

func testLauncherTimeout(t *testing.T) {
	lw := newLauncherWorld(t)
	r := lw.run("--timeout", "1s", "--", "sh", "-c", "sleep 30 & sleep 30; echo survived")
	if r.code != 124 {
		t.Errorf("want exit 124\n%s", r)
	}
	if strings.Contains(r.stdout, "survived") || r.took > 15*time.Second {
		t.Errorf("the timeout did not kill the command promptly\n%s", r)
	}
	if !strings.Contains(r.stderr, "launcher: the command was killed: it ran longer than process.timeout 1s (flag:--timeout)") {
		t.Errorf("stderr does not say why\n%s", r)
	}
}

func testLauncherBlockedCommand(t *testing.T) {
	lw := newLauncherWorld(t)
	pol := filepath.Join(t.TempDir(), "no-curl.toml")
	if err := os.WriteFile(pol, []byte("version = 1\n\n[commands]\nblock = [\"curl\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := lw.run("--policy", pol, "--allow", "allowed.test", "--", "sh", "-c",
		`curl --version; echo curl=$?; /usr/bin/curl --version; echo abs=$?; env curl --version; echo env=$?; echo ok`)
	if r.code != 0 || !strings.Contains(r.stdout, "ok") {
		t.Fatalf("want the shell to run\n%s", r)
	}
	for _, m := range []string{"curl", "abs", "env"} {
		if v := marker(r.stdout, m); v == "0" || v == "" {
			t.Errorf("%s: curl ran (exit %q)\n%s", m, v, r)
		}
	}
	if strings.Contains(r.stdout, "libcurl") {
		t.Errorf("curl printed its version\n%s", r)
	}
	r = lw.run("--policy", pol, "--", "curl", "--version")
	if r.code != 125 || !strings.Contains(r.stderr, `launcher: command "curl" refused: blocked by commands.block`) {
		t.Errorf("launching curl directly: want exit 125 and the refusal\n%s", r)
	}
}

func testLauncherSecretMasked(t *testing.T) {
	lw := newLauncherWorld(t)
	const secret = "s3cr3t-Tok3n-0123456789"
	r := lw.runWith(lopts{env: []string{"API_KEY=" + secret + "-env"}},
		"--secret", "TOKEN="+secret, "--secret-env", "API_KEY", "--", "sh", "-c",
		`echo "out=$TOKEN"; echo "err=$TOKEN" >&2; printf 'split=%s' "$TOKEN" | fold -w 7; echo; echo "key=$API_KEY"; test -n "$TOKEN" && echo set=yes`)
	if r.code != 0 {
		t.Fatalf("want exit 0\n%s", r)
	}
	if strings.Contains(r.stdout, secret) || strings.Contains(r.stderr, secret) {
		t.Errorf("the secret reached the output unmasked\n%s", r)
	}
	if marker(r.stdout, "out") != sandbox.SecretMask || marker(r.stdout, "key") != sandbox.SecretMask || marker(r.stdout, "set") != "yes" {
		t.Errorf("want the secrets set in the sandbox and printed as %s\n%s", sandbox.SecretMask, r)
	}
	if !strings.Contains(r.stderr, "err="+sandbox.SecretMask+"\n") {
		t.Errorf("stderr: want err=%s\n%s", sandbox.SecretMask, r)
	}
}

func testLauncherEgressdDeathFailsClosed(t *testing.T) {
	lw := newLauncherWorld(t)
	stdinR, stdinW := io.Pipe()
	defer stdinW.Close()
	firstOK := make(chan struct{})
	outR, outW := io.Pipe()
	go func() {
		sc := bufio.NewScanner(outR)
		for sc.Scan() {
			if sc.Text() == "first=0" {
				close(firstOK)
				break
			}
		}
		_, _ = io.Copy(io.Discard, outR)
	}()
	var pid int
	started := make(chan struct{})
	done := make(chan lresult, 1)
	go func() {
		done <- lw.runWith(lopts{stdin: stdinR, stdout: outW, started: func(p int) { pid = p; close(started) }},
			"--allow", "allowed.test", "--", "sh", "-c",
			curlArgs+` https://allowed.test/ >/dev/null; echo first=$?; read go; `+
				curlArgs+` https://allowed.test/; echo proxied=$?; `+
				curlArgs+` --noproxy '*' https://allowed.test/; echo direct=$?; `+
				curlArgs+` --noproxy '*' --resolve allowed.test:443:203.0.113.10 https://allowed.test/; echo resolved=$?; `+
				`dig +time=1 +tries=1 @203.0.113.53 allowed.test >/dev/null; echo dig=$?`)
		outW.Close()
	}()
	select {
	case <-started:
	case r := <-done:
		t.Fatalf("the launcher never started\n%s", r)
	}
	select {
	case <-firstOK:
	case r := <-done:
		t.Fatalf("the first fetch did not succeed\n%s", r)
	case <-time.After(60 * time.Second):
		t.Fatal("no first fetch after 60s")
	}
	id, ok := sandboxOf(pid)
	if !ok {
		t.Fatalf("no state record for launcher pid %d", pid)
	}
	procs := processesInNetns(filepath.Join(sandbox.NetnsDir, id))
	egressdPID := 0
	for p, comm := range procs {
		if comm == "egressd" {
			egressdPID = p
		}
	}
	if egressdPID == 0 {
		t.Fatalf("no egressd in the sandbox's namespace: %v", procs)
	}
	if err := syscall.Kill(egressdPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !eventually(5*time.Second, func() bool {
		_, alive := processesInNetns(filepath.Join(sandbox.NetnsDir, id))[egressdPID]
		return !alive
	}) {
		t.Fatal("egressd still running after SIGKILL")
	}
	lw.w.ResetCounters()
	fmt.Fprintln(stdinW, "go")
	stdinW.Close()
	r := <-done
	if r.code != 0 {
		t.Fatalf("want the script's exit 0\n%s", r)
	}
	for _, m := range []string{"proxied", "direct", "resolved", "dig"} {
		if v := marker(r.stdout, m); v == "0" || v == "" {
			t.Errorf("%s with egressd dead: exit %q, want a failure\n%s", m, v, r)
		}
	}
	if n := len(lw.w.HTTPLog()); n != 0 {
		t.Errorf("world served %d requests after egressd died", n)
	}
	if n := len(lw.w.DNSLog()); n != 0 {
		t.Errorf("world's DNS saw %d queries after egressd died", n)
	}
	if n := lw.w.TCPAccepted(ap(host4, 443)); n != 0 {
		t.Errorf("world accepted %d connections after egressd died", n)
	}
	if !strings.Contains(r.stderr, "exited during the run") || !strings.Contains(r.stderr, "no network egress") {
		t.Errorf("the launcher did not report egressd's death\n%s", r)
	}
}

func testLauncherNetNone(t *testing.T) {
	lw := newLauncherWorld(t)
	r := lw.run("--net", "none", "--", "sh", "-c",
		`ls /sys/class/net | tr '\n' ' '; echo; grep -c . /proc/net/route; `+
			curlArgs+` --noproxy '*' http://203.0.113.10/; echo direct=$?; dig +time=1 +tries=1 @203.0.113.53 allowed.test >/dev/null; echo dig=$?`)
	if r.code != 0 {
		t.Fatalf("want exit 0\n%s", r)
	}
	if first := strings.SplitN(r.stdout, "\n", 2)[0]; strings.TrimSpace(first) != "lo" {
		t.Errorf("interfaces: %q, want only lo\n%s", first, r)
	}
	for _, m := range []string{"direct", "dig"} {
		if v := marker(r.stdout, m); v == "0" || v == "" {
			t.Errorf("%s in --net none: exit %q, want a failure", m, v)
		}
	}
	if n := len(lw.w.HTTPLog()) + len(lw.w.DNSLog()); n != 0 {
		t.Errorf("the world saw %d requests from a --net none sandbox", n)
	}
	if strings.Contains(r.stderr, "launcher: denied") {
		t.Errorf("no egressd runs in --net none, so no denial summary\n%s", r)
	}
}

func testLauncherNetHostRefused(t *testing.T) {
	lw := newLauncherWorld(t)
	for _, o := range []struct {
		opts lopts
		args []string
	}{
		{lopts{}, []string{"--net", "host", "--floor", "standard", "--", "true"}},
		{lopts{env: []string{"EGRESSD_SECURITY_FLOOR=standard"}}, []string{"--net", "host", "--", "true"}},
		{lopts{}, []string{"--profile", "open", "--floor", "strict", "--", "true"}},
	} {
		r := lw.runWith(o.opts, o.args...)
		if r.code != 125 {
			t.Errorf("%v: want exit 125\n%s", o.args, r)
		}
		lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
		if len(lines) != 1 || !strings.HasPrefix(lines[0], "launcher: profile is less restrictive than the security floor") ||
			!strings.Contains(lines[0], `network.mode = "host"`) {
			t.Errorf("%v: want one line naming network.mode and the floor\n%s", o.args, r)
		}
	}
	// Nothing was made: the world's cleanup checks its links and rules,
	// TestLauncher the machine.
}

// testLauncherBroadAllowRefused: `--profile strict --floor strict --allow
// '*.*'` used to start the sandbox and reach an arbitrary host; the floor
// judged `*` by its spelling. Now every rule that matches every name, every
// name of N labels or the names of more than one registrant is refused
// before anything is made (exit 125, one line naming the rule, its source
// and what it matches), and the world sees nothing. The same command with
// the one host allowed reaches it, so the setup is sound.
func testLauncherBroadAllowRefused(t *testing.T) {
	lw := newLauncherWorld(t)
	fetch := curlArgs + " https://other.test/reached"
	if r := lw.run("--profile", "strict", "--floor", "strict", "--allow", "other.test", "--", "sh", "-c", fetch); r.code != 0 || len(replies(r.stdout)) != 1 {
		t.Fatalf("with --allow other.test the fetch must work\n%s", r)
	}
	lw.w.ResetCounters()
	for rule, matches := range map[string]string{
		"*.*":         "matches every name of 2 labels",
		"**.":         "matches every name",
		"*.test":      "matches every name under the public suffix test",
		"other*.test": "matches names of different registrants under the public suffix test (othera.test, otherb.test)",
	} {
		r := lw.run("--profile", "strict", "--floor", "strict", "--allow", rule, "--", "sh", "-c", fetch)
		lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
		want := fmt.Sprintf(`network.allow %q (flag:--allow) %s`, rule, matches)
		if r.code != 125 || len(lines) != 1 || !strings.HasPrefix(lines[0], "launcher: profile is less restrictive than the security floor strict") ||
			!strings.Contains(lines[0], want) {
			t.Errorf("--allow %s: want exit 125 and one line naming %s\n%s", rule, want, r)
		}
	}
	if n := lw.w.HTTPRequests("other.test"); n != 0 {
		t.Errorf("the world served %d requests for other.test under a refused floor", n)
	}
	if n := lw.w.DNSQueries("other.test"); n != 0 {
		t.Errorf("the world's DNS saw %d queries for other.test under a refused floor", n)
	}
}

func testLauncherExitCodes(t *testing.T) {
	lw := newLauncherWorld(t)
	if r := lw.run("--", "sh", "-c", "exit 7"); r.code != 7 {
		t.Errorf("want the command's exit 7\n%s", r)
	}
	// The command is not the container's process 1 (the init is), so a
	// signal from inside the sandbox kills it like any process.
	if r := lw.run("--", "sh", "-c", `kill -9 $$`); r.code != 137 {
		t.Errorf("a command killed by SIGKILL: want 137\n%s", r)
	}
	if r := lw.run("--", "sh", "-c", `sh -c 'kill -9 $$'; exit $?`); r.code != 137 {
		t.Errorf("a command whose child was killed by SIGKILL: want 137\n%s", r)
	}
	for _, args := range [][]string{
		{"--memory", "lots", "--", "true"},
		{"--allow", "*github.com", "--", "true"},
		{"--profile", "nope", "--", "true"},
		{"--", "/no/such/command"},
		{"--upstream-dns", "127.0.0.53", "--", "true"},
	} {
		r := lw.runWith(lopts{noDefaults: true}, append([]string{"--egressd", egressdBin}, args...)...)
		lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
		if r.code != 125 || len(lines) != 1 || !strings.HasPrefix(lines[0], "launcher: ") {
			t.Errorf("%v: want exit 125 and one line \"launcher: ...\"\n%s", args, r)
		}
	}
}

func testLauncherSIGTERM(t *testing.T) {
	lw := newLauncherWorld(t)
	started := make(chan int, 1)
	done := make(chan lresult, 1)
	var out syncbuf.Buffer
	go func() {
		done <- lw.runWith(lopts{started: func(p int) { started <- p }, stdout: &out}, "--", "sh", "-c", "trap 'exit 42' TERM; echo up; sleep 60 & wait")
	}()
	pid := <-started
	var id string
	// "up" comes after the trap is set: from then on SIGTERM is the
	// shell's to handle (before, the runtime may still be setting up).
	if !eventually(30*time.Second, func() bool {
		var ok bool
		id, ok = sandboxOf(pid)
		return ok && strings.Contains(out.String(), "up")
	}) {
		t.Fatal("the sandbox never came up")
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.code != 42 {
		t.Errorf("SIGTERM is passed to the command, whose exit status is the launcher's: want 42\n%s", r)
	}
	if _, err := os.Stat(filepath.Join(sandbox.NetnsDir, id)); err == nil {
		t.Errorf("namespace %s still there after the launcher exited", id)
	}
	if _, err := os.Stat(filepath.Join(sandbox.DefaultStateDir, id)); err == nil {
		t.Errorf("state directory of %s still there after the launcher exited", id)
	}
}

func testLauncherExplain(t *testing.T) {
	bin := launcherBinary(t)
	lw := newLauncherWorld(t)
	ctxArgs := []string{"explain", "--json", "--upstream-dns", "203.0.113.53", "--allow", "allowed.test", "--memory", "1g",
		"--secret", "TOKEN=hunter2-hunter2", "--", "curl", "https://allowed.test/"}
	out, errOut, code := lw.w.Run(t, bin, ctxArgs...)
	if code != 0 {
		t.Fatalf("explain: exit %d\n%s", code, errOut)
	}
	if strings.Contains(out, "hunter2") {
		t.Error("explain printed a secret")
	}
	var ex struct {
		Profile  []struct{ Field, Value, Source string } `json:"profile"`
		Firewall struct{ IPv4, IPv6 string }             `json:"firewall"`
		Egressd  []string                                `json:"egressd"`
		Init     struct {
			Path, Binary string
			Forwards     []string
		} `json:"init"`
		Spec struct {
			Mounts []struct {
				Destination, Source string
				Options             []string
			} `json:"mounts"`
			Process struct {
				Args []string `json:"args"`
				Env  []string `json:"env"`
			} `json:"process"`
			Linux struct {
				Namespaces []struct{ Type, Path string } `json:"namespaces"`
			} `json:"linux"`
		} `json:"spec"`
	}
	if err := json.Unmarshal([]byte(out), &ex); err != nil {
		t.Fatalf("explain --json: %v\n%s", err, out)
	}
	prov := map[string]string{}
	for _, p := range ex.Profile {
		prov[p.Field+"="+p.Value] = p.Source
	}
	for k, want := range map[string]string{`network.allow="allowed.test"`: "flag:--allow", `process.memory="1GiB"`: "flag:--memory",
		`network.mode="filtered"`: "builtin:standard", `network.upstream_dns=["203.0.113.53:53"]`: "flag:--upstream-dns"} {
		if got := prov[k]; got != want {
			t.Errorf("provenance of %s: %q, want %q", k, got, want)
		}
	}
	if !strings.Contains(ex.Firewall.IPv4, "REDIRECT --to-ports 15053") || !strings.Contains(ex.Firewall.IPv6, "REDIRECT --to-ports 15001") {
		t.Errorf("firewall rules do not redirect to egressd:\n%s\n%s", ex.Firewall.IPv4, ex.Firewall.IPv6)
	}
	// The command runs under the init, the launcher's own binary bound
	// read-only at pid1.Path.
	if !slices.Equal(ex.Spec.Process.Args, []string{pid1.Path, "--", "curl", "https://allowed.test/"}) {
		t.Errorf("spec args %q", ex.Spec.Process.Args)
	}
	if ex.Init.Path != pid1.Path || ex.Init.Binary != bin || !slices.Contains(ex.Init.Forwards, "SIGINT") {
		t.Errorf("explain's init: %+v, want %s from %s passing SIGINT on", ex.Init, pid1.Path, bin)
	}
	initMount := false
	for _, m := range ex.Spec.Mounts {
		initMount = initMount || m.Destination == pid1.Path && m.Source == bin && slices.Contains(m.Options, "ro")
	}
	if !initMount {
		t.Errorf("the spec does not bind the launcher read-only at %s: %+v", pid1.Path, ex.Spec.Mounts)
	}
	if !slices.Contains(ex.Spec.Process.Env, "HTTPS_PROXY=http://127.0.0.1:3128") || !slices.Contains(ex.Spec.Process.Env, "TOKEN=<redacted>") {
		t.Errorf("spec env %q", ex.Spec.Process.Env)
	}
	netns := false
	for _, n := range ex.Spec.Linux.Namespaces {
		netns = netns || n.Type == "network" && strings.HasPrefix(n.Path, sandbox.NetnsDir+"/"+sandbox.IDPrefix)
	}
	if !netns {
		t.Errorf("the spec does not join the sandbox's network namespace: %+v", ex.Spec.Linux.Namespaces)
	}
}

func testLauncherReapsStale(t *testing.T) {
	lw := newLauncherWorld(t)
	before := listDir(t, lw.ws)
	started := make(chan int, 1)
	done := make(chan lresult, 1)
	go func() {
		done <- lw.runWith(lopts{started: func(p int) { started <- p }}, "--", "sleep", "60")
	}()
	pid := <-started
	var id string
	if !eventually(30*time.Second, func() bool {
		var ok bool
		id, ok = sandboxOf(pid)
		for _, comm := range processesInNetns(filepath.Join(sandbox.NetnsDir, id)) {
			if ok && comm == "sleep" {
				return true
			}
		}
		return false
	}) {
		t.Fatal("the sandbox never came up")
	}
	// The protected paths' placeholders are in the workspace while it runs.
	if _, err := os.Lstat(filepath.Join(lw.ws, ".envrc")); err != nil {
		t.Errorf("no .envrc placeholder in the workspace of a running sandbox: %v", err)
	}
	// The launcher dies without a chance to clean up; egressd dies with it
	// (parent-death signal), the container and everything else stay.
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-done
	nsPath := filepath.Join(sandbox.NetnsDir, id)
	if _, err := os.Stat(nsPath); err != nil {
		t.Fatalf("the killed launcher's namespace is already gone (%v): nothing to reap", err)
	}
	out, errOut, code := lw.w.Run(t, launcherBinary(t), "cleanup")
	if code != 0 || !strings.Contains(out, "removed "+id) {
		t.Fatalf("launcher cleanup: exit %d, stdout %q, stderr %q; want it to remove %s", code, out, errOut, id)
	}
	if procs := processesInNetns(nsPath); len(procs) != 0 {
		t.Errorf("processes left in the reaped namespace: %v", procs)
	}
	for _, p := range []string{nsPath, filepath.Join(sandbox.DefaultStateDir, id)} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s still exists after cleanup", p)
		}
	}
	if after := listDir(t, lw.ws); !slices.Equal(after, before) {
		t.Errorf("the workspace holds %v after the reap, want %v (placeholders removed)", after, before)
	}
	// The world's cleanup checks the veth and the NAT chains are gone.
}
