package sandbox

import (
	"os"
	"path"
	"strconv"
	"strings"
)

// cgroupDirs are a container's memory and pids cgroup directories on the
// host ("" when not found), each with the file and key of the counter read
// there.
type cgroupDirs struct {
	memory, pids cgroupCounter
}

// cgroupCounter is one counter: the file and the key of its line.
type cgroupCounter struct{ file, key string }

// findCgroupDirs finds the cgroup directories of the container whose
// cgroupsPath is leaf (a relative path: the launcher's is the container
// id), as the caller's process sees them. For each of the memory and pids
// controllers it uses the hierarchy it is bound to: a cgroup v1 hierarchy
// (this machine's hybrid layout binds both there), else the unified
// (v2) one. A relative cgroupsPath lands below the runtime's own cgroup
// (runc's cgroupfs driver: v1 below it, v2 below its parent, since the own
// cgroup holds processes), and the runtime runs in the caller's: the
// search goes from there up to the hierarchy's root and takes the first
// directory named leaf. The counters are read once the container's process
// has ended, before the runtime deletes the cgroup.
func findCgroupDirs(leaf string) cgroupDirs {
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return cgroupDirs{}
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return cgroupDirs{}
	}
	return locateCgroups(string(self), string(mounts), leaf, isDir)
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

// locateCgroups is findCgroupDirs on the contents of /proc/self/cgroup and
// /proc/self/mountinfo, with exists for the directory checks.
func locateCgroups(selfCgroup, mountinfo, leaf string, exists func(string) bool) cgroupDirs {
	if leaf == "" || strings.Contains(leaf, "..") {
		return cgroupDirs{}
	}
	l := parseSelfCgroup(selfCgroup)
	l.v1Mounts, l.v2Mount = parseCgroupMounts(mountinfo)
	l.leaf, l.exists = leaf, exists
	return cgroupDirs{
		memory: l.find("memory", cgroupCounter{file: "memory.oom_control", key: "oom_kill"},
			cgroupCounter{file: "memory.events", key: "oom_kill"}),
		pids: l.find("pids", cgroupCounter{file: "pids.events", key: "max"}, cgroupCounter{file: "pids.events", key: "max"}),
	}
}

// cgroupLayout is where the launcher's cgroups are (/proc/self/cgroup) and
// where their hierarchies are mounted (/proc/self/mountinfo).
type cgroupLayout struct {
	v1       []cgroupHierarchy
	v2Path   string
	hasV2    bool
	v1Mounts map[string]cgroupMount // controller → its hierarchy's mount
	v2Mount  *cgroupMount
	leaf     string
	exists   func(string) bool
}

type cgroupHierarchy struct {
	controllers []string
	path        string
}

type cgroupMount struct{ root, point string }

// parseSelfCgroup reads /proc/self/cgroup: the v1 hierarchies and the v2
// path.
func parseSelfCgroup(selfCgroup string) *cgroupLayout {
	l := &cgroupLayout{}
	for line := range strings.SplitSeq(selfCgroup, "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		if f[0] == "0" && f[1] == "" {
			l.v2Path, l.hasV2 = f[2], true
			continue
		}
		l.v1 = append(l.v1, cgroupHierarchy{controllers: strings.Split(f[1], ","), path: f[2]})
	}
	return l
}

// parseCgroupMounts reads /proc/self/mountinfo: the first mount of each
// v1 controller's hierarchy and of the v2 hierarchy.
func parseCgroupMounts(mountinfo string) (v1 map[string]cgroupMount, v2 *cgroupMount) {
	v1 = map[string]cgroupMount{}
	for line := range strings.SplitSeq(mountinfo, "\n") {
		left, right, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		lf, rf := strings.Fields(left), strings.Fields(right)
		if len(lf) < 5 || len(rf) < 3 {
			continue
		}
		m := cgroupMount{root: unescapeMountinfo(lf[3]), point: unescapeMountinfo(lf[4])}
		switch rf[0] {
		case "cgroup2":
			if v2 == nil {
				v2 = &m
			}
		case "cgroup":
			for _, o := range strings.Split(rf[2], ",") {
				if _, seen := v1[o]; !seen {
					v1[o] = m
				}
			}
		}
	}
	return v1, v2
}

// find is the counter of controller in the sandbox's cgroup (leaf, below
// the launcher's own or one of its ancestors): v1Counter's file in the v1
// hierarchy that has the controller, else v2Counter's in the v2 one.
func (l *cgroupLayout) find(controller string, v1Counter, v2Counter cgroupCounter) cgroupCounter {
	var m cgroupMount
	var own string
	var counter cgroupCounter
	found := false
	for _, h := range l.v1 {
		for _, c := range h.controllers {
			if mm, ok := l.v1Mounts[controller]; ok && c == controller {
				m, own, counter, found = mm, h.path, v1Counter, true
			}
		}
	}
	if !found {
		if !l.hasV2 || l.v2Mount == nil {
			return cgroupCounter{}
		}
		m, own, counter = *l.v2Mount, l.v2Path, v2Counter
	}
	rel, ok := strings.CutPrefix(own, m.root)
	if !ok || (rel != "" && !strings.HasPrefix(rel, "/") && m.root != "/") {
		return cgroupCounter{}
	}
	for dir := path.Clean("/" + rel); ; dir = path.Dir(dir) {
		candidate := path.Join(m.point, dir, l.leaf)
		if l.exists(candidate) {
			counter.file = path.Join(candidate, counter.file)
			return counter
		}
		if dir == "/" {
			return cgroupCounter{}
		}
	}
}

// readCgroupEvents returns the out-of-memory kills and the refused forks
// the container's cgroups counted (0 for a counter not found).
func readCgroupEvents(d cgroupDirs) (oomKills, pidsMax uint64) {
	return readCounter(d.memory), readCounter(d.pids)
}

func readCounter(c cgroupCounter) uint64 {
	if c.file == "" {
		return 0
	}
	data, err := os.ReadFile(c.file)
	if err != nil {
		return 0
	}
	return counterValue(string(data), c.key)
}

// counterValue is the value of the "key N" line of a cgroup's flat keyed
// file (memory.events, memory.oom_control, pids.events).
func counterValue(data, key string) uint64 {
	for line := range strings.SplitSeq(data, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), " ")
		if ok && k == key {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			if err == nil {
				return n
			}
		}
	}
	return 0
}

// unescapeMountinfo undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for _, c := range s[i+1 : i+4] {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + byte(c-'0')
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
