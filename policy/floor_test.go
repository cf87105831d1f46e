package policy

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func floorFields(t *testing.T, err error) []string {
	t.Helper()
	if err == nil {
		return nil
	}
	var fe *FloorError
	if !errors.As(err, &fe) {
		t.Fatalf("error is %T, want *FloorError: %v", err, err)
	}
	var fields []string
	for _, v := range fe.Violations {
		fields = append(fields, v.Field)
	}
	return fields
}

// TestBuiltinsAreOrderedByTheFloor: each built-in satisfies itself and every
// less restrictive floor, and violates every more restrictive one.
func TestBuiltinsAreOrderedByTheFloor(t *testing.T) {
	want := map[[2]string][]string{
		{"open", "standard"}: {"network.mode", "process.user", "process.allow_host_user", "process.pids_limit", "process.memory",
			"process.cpus", "process.no_new_privileges", "process.seccomp"},
		{"open", "strict"}: {"network.mode", "filesystem.read_only", "process.user", "process.allow_host_user", "process.pids_limit",
			"process.memory", "process.cpus", "process.no_new_privileges", "process.seccomp"},
		{"open", "offline"}: {"network.mode", "filesystem.read_only", "process.user", "process.allow_host_user", "process.pids_limit",
			"process.memory", "process.cpus", "process.no_new_privileges", "process.seccomp"},
		{"standard", "strict"}: {"filesystem.read_only", "process.pids_limit", "process.memory", "process.cpus",
			"process.seccomp"},
		{"standard", "offline"}: {"network.mode", "filesystem.read_only", "process.pids_limit", "process.memory",
			"process.cpus", "process.seccomp"},
		{"strict", "offline"}: {"network.mode"},
	}
	names := BuiltinNames()
	for i, profile := range names {
		for j, floor := range names {
			got := floorFields(t, CheckFloor(mustBuiltin(t, profile), floor))
			w := want[[2]string{profile, floor}]
			if j <= i {
				w = nil
			}
			if diff := cmp.Diff(w, got); diff != "" {
				t.Errorf("profile %s under floor %s (-want +got):\n%s", profile, floor, diff)
			}
		}
	}
}

func TestFloorComparesFieldByField(t *testing.T) {
	cases := []struct {
		name     string
		base     string
		settings []Setting
		floor    string
		want     []string
	}{
		{"no floor", "open", nil, "", nil},
		{"alias floor", "open", nil, "permissive", nil},
		{"stricter than the floor", "offline", []Setting{{Key: "process.memory", Values: []string{"64m"}}}, "standard", nil},
		{"more memory", "standard", []Setting{{Key: "process.memory", Values: []string{"5g"}}}, "standard", []string{"process.memory"}},
		{"no memory limit", "standard", []Setting{{Key: "process.memory", Values: []string{"0"}}}, "standard", []string{"process.memory"}},
		{"no pids limit", "standard", []Setting{{Key: "process.pids_limit", Values: []string{"0"}}}, "standard", []string{"process.pids_limit"}},
		{"fewer cpus is fine", "standard", []Setting{{Key: "process.cpus", Values: []string{"0.5"}}}, "standard", nil},
		{"any added capability", "standard", []Setting{{Key: "process.cap_add", Values: []string{"NET_BIND_SERVICE"}}}, "standard", []string{"process.cap_add"}},
		{"root user", "standard", []Setting{{Key: "process.user", Values: []string{"0"}}}, "standard", []string{"process.user"}},
		{"root by name", "standard", []Setting{{Key: "process.user", Values: []string{"root"}}}, "standard", []string{"process.user"}},
		{"unprovable name", "standard", []Setting{{Key: "process.user", Values: []string{"builder"}}}, "standard", []string{"process.user"}},
		{"root is fine under open", "standard", []Setting{{Key: "process.user", Values: []string{"0:0"}}}, "open", nil},
		{"custom seccomp under standard", "standard", []Setting{{Key: "process.seccomp", Values: []string{"/etc/s.json"}}}, "standard", []string{"process.seccomp"}},
		{"custom seccomp under open", "standard", []Setting{{Key: "process.seccomp", Values: []string{"/etc/s.json"}}}, "open", nil},
		{"unconfined", "standard", []Setting{{Key: "process.seccomp", Values: []string{"unconfined"}}}, "standard", []string{"process.seccomp"}},
		{"strict seccomp is fine", "standard", []Setting{{Key: "process.seccomp", Values: []string{"strict"}}}, "standard", nil},
		{"allow everything", "strict", []Setting{{Key: "network.allow", Values: []string{"*"}}}, "strict", []string{"network.allow"}},
		{"allow everything on a port", "strict", []Setting{{Key: "network.allow", Values: []string{"*:443"}}}, "strict", []string{"network.allow"}},
		{"allow a host", "strict", []Setting{{Key: "network.allow", Values: []string{"pypi.org"}}}, "strict", nil},
		{"allow everything under open", "open", []Setting{{Key: "network.allow", Values: []string{"*"}}}, "open", nil},
		{"host network", "strict", []Setting{{Key: "network.mode", Values: []string{"host"}}}, "strict", []string{"network.mode"}},
		{"none is above filtered", "strict", []Setting{{Key: "network.mode", Values: []string{"none"}}}, "strict", nil},
		{"writable root", "strict", []Setting{{Key: "filesystem.read_only", Values: []string{"false"}}}, "strict", []string{"filesystem.read_only"}},
		{"new privileges", "strict", []Setting{{Key: "process.no_new_privileges", Values: []string{"false"}}}, "strict", []string{"process.no_new_privileges"}},
		{"host user", "standard", []Setting{{Key: "process.allow_host_user", Values: []string{"true"}}}, "standard", []string{"process.allow_host_user"}},
		{"host user under open", "standard", []Setting{{Key: "process.allow_host_user", Values: []string{"true"}}}, "open", nil},
		{"unprotect a default", "standard", []Setting{{Key: "filesystem.unprotect", Values: []string{".git/hooks"}}}, "standard", []string{"filesystem.protect"}},
		{"unprotect under open", "standard", []Setting{{Key: "filesystem.unprotect", Values: []string{".idea/"}}}, "open", []string{"filesystem.protect"}},
		{"unprotect without a floor", "standard", []Setting{{Key: "filesystem.unprotect", Values: []string{".idea/"}}}, "", nil},
		{"protect more", "standard", []Setting{{Key: "filesystem.protect", Values: []string{".cursor/"}}}, "strict", []string{"filesystem.read_only", "process.pids_limit", "process.memory", "process.cpus", "process.seccomp"}},
		{"mounts and env are not compared", "strict", []Setting{
			{Key: "filesystem.expose", Values: []string{"/opt/toolchains"}},
			{Key: "filesystem.volumes", Values: []string{"/srv/a:~/.claude"}},
			{Key: "filesystem.mount_cwd", Values: []string{"true"}},
			{Key: "env.pass", Values: []string{"HOME"}},
			{Key: "network.default_ports", Values: []string{"22"}},
		}, "offline", []string{"network.mode"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, _, err := Resolve(ResolveOptions{Profile: tc.base, Overrides: tc.settings})
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, floorFields(t, CheckFloor(p, tc.floor))); diff != "" {
				t.Errorf("violations (-want +got):\n%s", diff)
			}
		})
	}
}

func TestFloorErrorNamesEachFieldValueAndSource(t *testing.T) {
	_, _, err := Resolve(ResolveOptions{
		Overrides: []Setting{
			{Key: "network.mode", Values: []string{"host"}, Source: Flag("--net")},
			{Key: "process.cap_add", Values: []string{"NET_RAW"}, Source: Flag("--cap-add")},
		},
		Floor: "standard",
	})
	want := `profile is less restrictive than the security floor standard:
  network.mode = "host" (flag:--net) is less restrictive than floor standard ("filtered")
  process.cap_add = "CAP_NET_RAW" (flag:--cap-add) is less restrictive than floor standard (none)`
	if err == nil || err.Error() != want {
		t.Errorf("error:\n%v\nwant:\n%s", err, want)
	}
}

// TestFloorRefusesBroadAllowRules: the floors standard and strict judge
// what an allow rule matches, not how it is spelled (breadth.go): every
// class is refused, with the rule, its source and what it matches; narrow
// rules and one subnet of a private network pass; the open floor refuses
// none of them.
func TestFloorRefusesBroadAllowRules(t *testing.T) {
	broad := map[string]string{
		"*":                       "matches every name",
		"**":                      "matches every name",
		"**.":                     "matches every name",
		"?**":                     "matches every name",
		"*:443":                   "matches every name",
		"*.*":                     "matches every name of 2 labels",
		"*.*.*":                   "matches every name of 3 labels",
		"*.**":                    "matches every name of 2 or more labels",
		"*.com":                   "matches every name under the public suffix com",
		".com":                    "matches every name under the public suffix com",
		"**.com":                  "matches every name under the public suffix com",
		"*.co.uk":                 "matches every name under the public suffix co.uk",
		"foo*.com":                "matches names of different registrants under the public suffix com (fooa.com, foob.com)",
		"*.github.io":             "matches every name under the public suffix github.io",
		"*.githubusercontent.com": "matches every name under the public suffix githubusercontent.com",
		"*.s3.amazonaws.com":      "matches every name under the public suffix s3.amazonaws.com",
		"*.amazonaws.com":         "matches every name under the public suffix s3.amazonaws.com",
		"*.cloudfront.net":        "matches every name under the public suffix cloudfront.net",
		"api.*":                   "matches names of more than one registrable domain (api.com, api.net)",
		"*.internal":              "matches every name under the public suffix internal",
		"0.0.0.0/0":               "matches every IPv4 address",
		"::/0":                    "matches every IPv6 address",
		"0.0.0.0/7":               "matches a range wider than an IANA allocation (/8): hosts of unrelated networks",
		"2000::/3":                "matches a range wider than an IANA allocation (/12): hosts of unrelated networks",
		"169.254.169.254":         "lifts the address guard for metadata 169.254.169.254/32",
		"[fd00:ec2::254]:80":      "lifts the address guard for metadata fd00:ec2::254/128",
		"127.0.0.1:8080":          "lifts the address guard for loopback 127.0.0.0/8",
		"169.254.0.0/16":          "lifts the address guard for link-local 169.254.0.0/16",
		"64:ff9b::a00:1":          "lifts the address guard for nat64 64:ff9b::/96",
		"10.0.0.0/8":              "lifts the address guard for private 10.0.0.0/8 over more than one subnet (/24)",
		"[fd00::/48]:443":         "lifts the address guard for ula fc00::/7 over more than one subnet (/64)",
	}
	narrowRules := []string{"pypi.org", "*.example.com", ".example.com", "api-*.example.com", "**.example.com",
		"*.corp.internal", "raw.githubusercontent.com", "203.0.113.0/24", "9.0.0.0/8", "2001:db8::/32",
		"10.1.2.0/24", "10.1.2.3:5000", "[fd00:1::/64]:443", "100.64.1.0/24"}
	for _, floor := range []string{"standard", "strict"} {
		for rule, what := range broad {
			t.Run(floor+" "+rule, func(t *testing.T) {
				_, _, err := Resolve(ResolveOptions{Profile: "strict", Overrides: []Setting{{Key: "network.allow", Values: []string{rule}, Source: Flag("--allow")}}, Floor: floor})
				want := fmt.Sprintf("network.allow %q (flag:--allow) %s", rule, what)
				var fe *FloorError
				if !errors.As(err, &fe) || len(fe.Violations) != 1 || fe.Violations[0].String() != want {
					t.Errorf("floor %s, --allow %s: err %v\nwant the one violation %s", floor, rule, err, want)
				}
			})
		}
		for _, rule := range narrowRules {
			if _, _, err := Resolve(ResolveOptions{Profile: "strict", Overrides: []Setting{{Key: "network.allow", Values: []string{rule}, Source: Flag("--allow")}}, Floor: floor}); err != nil {
				t.Errorf("floor %s refused the narrow rule %s: %v", floor, rule, err)
			}
		}
	}
	for rule := range broad {
		if _, _, err := Resolve(ResolveOptions{Profile: "strict", Overrides: []Setting{{Key: "network.allow", Values: []string{rule}}}, Floor: "open"}); err != nil {
			t.Errorf("floor open refused %s: %v", rule, err)
		}
	}
}

// TestFloorNamesTheRuleItsPositionAndWhatItMatches is the example,
// from a file.
func TestFloorNamesTheRuleItsPositionAndWhatItMatches(t *testing.T) {
	paths := writePolicies(t, [2]string{"policy.toml", "version = 1\n[network]\nallow = [\"*.co.uk\", \"pypi.org\"]\n"})
	_, _, err := Resolve(ResolveOptions{Profile: "strict", Files: paths, Floor: "strict"})
	want := `profile is less restrictive than the security floor strict:
  network.allow "*.co.uk" (` + paths[0] + `:3:10) matches every name under the public suffix co.uk`
	if err == nil || err.Error() != want {
		t.Errorf("error:\n%v\nwant:\n%s", err, want)
	}
}

func TestFloorNamesTheUnprotectThatRemovedAProtectedPath(t *testing.T) {
	_, _, err := Resolve(ResolveOptions{
		Overrides: []Setting{{Key: "filesystem.unprotect", Values: []string{".envrc"}, Source: Flag("--unprotect")}},
		Floor:     "strict",
	})
	want := `filesystem.protect = (without ".envrc") (flag:--unprotect) is less restrictive than floor strict (".envrc")`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("error:\n%v\nwant it to contain:\n%s", err, want)
	}
}

func TestUnprotectOfWhatIsNotProtectedWarns(t *testing.T) {
	_, warnings, err := Resolve(ResolveOptions{Overrides: []Setting{{Key: "filesystem.unprotect", Values: []string{"Makefile"}, Source: Flag("--unprotect")}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0].String(), `filesystem.unprotect "Makefile" removes nothing`) {
		t.Errorf("warnings = %v", warnings)
	}
}

func TestUnknownFloorIsAnError(t *testing.T) {
	err := CheckFloor(mustBuiltin(t, "offline"), "paranoid")
	if err == nil || !strings.Contains(err.Error(), `security floor: unknown profile "paranoid"`) {
		t.Errorf("err = %v", err)
	}
	var fe *FloorError
	if errors.As(err, &fe) {
		t.Error("an unknown floor is not a violation of it")
	}
}
