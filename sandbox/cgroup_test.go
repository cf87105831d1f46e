package sandbox

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

// This machine's layout: cgroup v1 controllers, plus the unified
// hierarchy without controllers at /sys/fs/cgroup/unified.
const hybridMountinfo = `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`

const hybridSelf = `9:name=systemd:/user.slice
8:pids:/user.slice/user-0.slice
4:memory:/process_api/abc
1:cpu,cpuacct:/
0::/user.slice
`

func TestLocateCgroups(t *testing.T) {
	tests := []struct {
		name             string
		self, mountinfo  string
		dirs             []string // existing directories
		memFile, pidFile string
	}{
		{
			name: "v1: below the launcher's own cgroup (runc's cgroupfs driver)",
			self: hybridSelf, mountinfo: hybridMountinfo,
			dirs:    []string{"/sys/fs/cgroup/memory/process_api/abc/egs-1", "/sys/fs/cgroup/pids/user.slice/user-0.slice/egs-1"},
			memFile: "/sys/fs/cgroup/memory/process_api/abc/egs-1/memory.oom_control",
			pidFile: "/sys/fs/cgroup/pids/user.slice/user-0.slice/egs-1/pids.events",
		},
		{
			name: "v2: below the own cgroup's parent (runc, cgroup v2)",
			self: "0::/system.slice/launcher.service\n",
			mountinfo: "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n" +
				"22 1 0:21 / /proc rw - proc proc rw\n",
			dirs:    []string{"/sys/fs/cgroup/system.slice/egs-1"},
			memFile: "/sys/fs/cgroup/system.slice/egs-1/memory.events",
			pidFile: "/sys/fs/cgroup/system.slice/egs-1/pids.events",
		},
		{
			name: "v1 mounted from a non-root cgroup (a container's view)",
			self: "4:memory:/docker/xyz\n8:pids:/docker/xyz\n",
			mountinfo: "35 31 0:32 /docker/xyz /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n" +
				"39 31 0:36 /docker/xyz /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n",
			dirs:    []string{"/sys/fs/cgroup/memory/egs-1", "/sys/fs/cgroup/pids/egs-1"},
			memFile: "/sys/fs/cgroup/memory/egs-1/memory.oom_control",
			pidFile: "/sys/fs/cgroup/pids/egs-1/pids.events",
		},
		{
			name: "not found: no counters",
			self: hybridSelf, mountinfo: hybridMountinfo,
		},
		{
			name:      "a mount with a space in its path",
			self:      "0::/a b\n",
			mountinfo: `30 23 0:26 / /sys/fs/cg\040two rw - cgroup2 cgroup2 rw` + "\n",
			dirs:      []string{"/sys/fs/cg two/a b/egs-1"},
			memFile:   "/sys/fs/cg two/a b/egs-1/memory.events",
			pidFile:   "/sys/fs/cg two/a b/egs-1/pids.events",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			exists := func(p string) bool {
				for _, d := range tc.dirs {
					if d == p {
						return true
					}
				}
				return false
			}
			got := locateCgroups(tc.self, tc.mountinfo, "egs-1", exists)
			if diff := cmp.Diff([]string{tc.memFile, tc.pidFile}, []string{got.memory.file, got.pids.file}); diff != "" {
				t.Errorf("counter files (-want +got):\n%s", diff)
			}
		})
	}
	if got := locateCgroups(hybridSelf, hybridMountinfo, "../egs-1", func(string) bool { return true }); got != (cgroupDirs{}) {
		t.Errorf("a leaf with .. was looked up: %+v", got)
	}
}

func TestCounterValue(t *testing.T) {
	for _, tc := range []struct {
		data, key string
		want      uint64
	}{
		{"oom_kill_disable 0\nunder_oom 0\noom_kill 3\n", "oom_kill", 3},
		{"low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\noom_group_kill 0\n", "oom_kill", 2},
		{"max 12\n", "max", 12},
		{"max 12\n", "oom_kill", 0},
		{"max lots\n", "max", 0},
		{"", "max", 0},
	} {
		if got := counterValue(tc.data, tc.key); got != tc.want {
			t.Errorf("counterValue(%q, %q) = %d, want %d", tc.data, tc.key, got, tc.want)
		}
	}
}
