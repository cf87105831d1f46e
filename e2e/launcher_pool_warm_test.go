package e2e

import (
	"slices"
	"strings"
	"testing"
)

// probeRequest is what a tenant's command looks at to find another's way
// in or out of the waiting init: its own descriptors, its environment,
// the init's environment and descriptors, and a write to the request
// pipe the init read its command from.
const probeRequest = `echo "fds: $(ls /proc/self/fd | tr '\n' ' ')"
echo "env: $(env | sort | tr '\n' ' ')"
echo "init environ: $(tr '\0' ' ' 2>&1 </proc/1/environ)"
echo "init fds: $(ls /proc/1/fd 2>&1 | tr '\n' ' ')"
echo "second request: $(printf '\0\0\0\2{}' 2>&1 >/proc/1/fd/3 && echo sent)"
echo "stdin: $(cat)"
`

// testPoolWarmCommandGetsWhatColdGets: a command sent to a pooled
// sandbox's waiting init inherits its stdio and nothing more, has the
// environment a cold sandbox gives the same request (its secret masked),
// finds neither its secret nor the request pipe in the init's /proc
// files, and cannot send the init a second request.
func testPoolWarmCommandGetsWhatColdGets(t *testing.T) {
	lw := newLauncherWorld(t)
	s := startPoolServer(t, lw, 1)
	req := sh(probeRequest)
	req["env"] = map[string]string{"GREETING": "hello"}
	req["secrets"] = map[string]string{"API_TOKEN": "tok-6f1d2a9c"}
	req["stdin"] = "from-the-request"
	warm := s.execute(req)
	if st := s.stats(); st.Pool.Warm != 1 || st.Pool.Cold != 0 {
		t.Fatalf("the probe did not run warm: %+v", st)
	}
	// The same request with another pids limit than the pool's shape runs
	// in a cold sandbox: the baseline.
	req["limits"] = map[string]any{"pids_limit": 200}
	cold := s.execute(req)
	if st := s.stats(); st.Pool.Cold != 1 {
		t.Fatalf("the baseline did not run cold: %+v", st)
	}
	if warm.ExitCode != 0 || cold.ExitCode != 0 {
		t.Fatalf("warm %+v\ncold %+v", warm, cold)
	}
	lines := func(r execResult) map[string]string {
		out := map[string]string{}
		for _, l := range strings.Split(strings.TrimSpace(r.Stdout), "\n") {
			k, v, _ := strings.Cut(l, ": ")
			out[k] = v
		}
		return out
	}
	w, c := lines(warm), lines(cold)
	if w["fds"] != "0 1 2 3 " {
		t.Errorf("the warm command's descriptors: %q, want stdio and ls's own (0 1 2 3)", w["fds"])
	}
	if w["fds"] != c["fds"] {
		t.Errorf("descriptors: warm %q, cold %q", w["fds"], c["fds"])
	}
	if w["env"] != c["env"] || !strings.Contains(w["env"], "GREETING=hello") || !strings.Contains(w["env"], "API_TOKEN=") {
		t.Errorf("environment:\nwarm %q\ncold %q", w["env"], c["env"])
	}
	for _, k := range []string{"init environ", "init fds"} {
		if strings.Contains(w[k], "API_TOKEN") || strings.Contains(w[k], "GREETING") || !strings.Contains(w[k], "Permission denied") {
			t.Errorf("%s seen by the warm command: %q; want it unreadable and holding nothing of the request", k, w[k])
		}
	}
	if w["stdin"] != "from-the-request" || c["stdin"] != w["stdin"] {
		t.Errorf("stdin: warm %q, cold %q; want the request's", w["stdin"], c["stdin"])
	}
	if strings.Contains(w["second request"], "sent") {
		t.Errorf("the warm command wrote to the init's request pipe: %q", w["second request"])
	}
	if strings.Contains(warm.Stdout, "tok-6f1d2a9c") {
		t.Errorf("the secret's value is in the output: %q", warm.Stdout)
	}
}

// testPoolWarmAnswerNamesItsDenials: the answer of a warm execution lists
// the destinations egressd denied it, as a cold one's does (the release
// resets egressd, which flushes its audit log, before the answer), and
// the next tenant's answer lists none of them.
func testPoolWarmAnswerNamesItsDenials(t *testing.T) {
	lw := newLauncherWorld(t)
	s := startPoolServer(t, lw, 1)
	a := s.execute(tenant(curlPlain+" http://blocked.test/a-denied; echo exit=$?", "allowed.test"))
	if !slices.ContainsFunc(a.Denied, func(d execDenial) bool { return d.Target == "blocked.test" && d.Reason == "no-allow-rule" }) {
		t.Errorf("tenant A's answer names no denial of blocked.test: %+v", a.Denied)
	}
	if n := lw.w.HTTPRequests("blocked.test"); n != 0 {
		t.Errorf("the fake server for blocked.test saw %d requests", n)
	}
	b := s.execute(tenant("true", "allowed.test"))
	if b.Sandbox != a.Sandbox || len(b.Denied) != 0 {
		t.Errorf("tenant B (sandbox %s, A's %s) got denials %+v, want none", b.Sandbox, a.Sandbox, b.Denied)
	}
	if st := s.stats(); st.Pool.Warm != 2 {
		t.Errorf("pool: %+v, want two warm executions", st)
	}
}
