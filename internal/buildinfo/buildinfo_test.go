package buildinfo

import (
	"runtime/debug"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestStampedValuesWinAndToolchainInfoFillsTheRest(t *testing.T) {
	vcs := &debug.BuildInfo{
		GoVersion: "go1.26.8",
		Main:      debug.Module{Path: "github.com/egressd/egressd", Version: "v0.3.0"},
		Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	for _, tc := range []struct {
		name             string
		version, commit  string
		bi               *debug.BuildInfo
		wantVer, wantCom string
	}{
		{"stamped by the Makefile", "v1.0.0", "abc1234", vcs, "v1.0.0", "abc1234"},
		{"go install at a tag", "", "", vcs, "v0.3.0", "0123456789ab-dirty"},
		{"go build in a clone", "", "", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "feedface"}, {Key: "vcs.modified", Value: "false"}}}, "dev", "feedface"},
		{"nothing recorded", "", "", nil, "dev", "unknown"},
		{"only the version stamped", "v2.0.0", "", vcs, "v2.0.0", "0123456789ab-dirty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := get(tc.version, tc.commit, tc.bi)
			if diff := cmp.Diff([2]string{tc.wantVer, tc.wantCom}, [2]string{got.Version, got.Commit}); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestStringNamesProgramVersionAndCommit(t *testing.T) {
	got := Info{Version: "v1.2.3", Commit: "abc", GoVersion: "go1.26.8"}.String("egressd")
	if want := "egressd v1.2.3 (commit abc, go1.26.8)"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
