package policy

import (
	"errors"
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
		{"open", "standard"}: {"network.mode", "process.user", "process.pids_limit", "process.memory",
			"process.cpus", "process.no_new_privileges", "process.seccomp"},
		{"open", "strict"}: {"network.mode", "filesystem.read_only", "process.user", "process.pids_limit",
			"process.memory", "process.cpus", "process.no_new_privileges", "process.seccomp"},
		{"open", "offline"}: {"network.mode", "filesystem.read_only", "process.user", "process.pids_limit",
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
		{"mounts and env are not compared", "strict", []Setting{
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
