package specconv

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/egressd/egressd/policy"
)

// The sandbox's identity: a user that owns nothing on the host.
//
// The built-in profiles run the command as policy.DefaultUID:DefaultGID,
// ids no account, group or subordinate id range of the host uses (checked
// before every launch: a host that took them is refused, not shared). A
// file of the host is then the sandbox's only through its "other"
// permission bits, and what the sandbox creates in a workspace or volume
// belongs to no host account: git, ssh and sudo on the host distrust it.
// A configured user that is a host account (other than root, which the
// floor governs) is refused unless process.allow_host_user says so.
//
// Every sandbox has the same default ids, so what one run leaves in a
// workspace or a volume the next one can change. Sandboxes that run at
// once are told apart by their own pid, ipc, mount and network namespaces
// and their cgroup (egs-<id>), never by their uid; what they share through
// the uid is the kernel's per-user accounting (inotify instances, pipe
// buffers), which is why the default is no host account's.
//
// No user namespace: the launcher runs as real root and the sandbox user
// is a real host uid without capabilities. A user namespace mapping uid 0
// inside to an unprivileged host id would make the workload root with
// every capability over namespaces it owns: CAP_NET_ADMIN in a network
// namespace of its own reaches nf_tables (THREATS G1), and CAP_SYS_ADMIN
// over a mount namespace it owns can unmount what runc mounted in it (the
// protected paths, the masks). Without id-mapped mounts (runc 1.2), the
// workspace, volumes and the host view would also show up owned by the
// overflow id 65534, which git refuses.

// accounts are the ids an account database (passwd, group, subuid,
// subgid) gives out.
type accounts struct {
	users  map[uint32]string
	groups map[uint32]string
	homes  []string
	// subUIDs and subGIDs are the subordinate id ranges (/etc/subuid,
	// /etc/subgid) given to users for their own containers.
	subUIDs, subGIDs []subRange
}

type subRange struct {
	owner        string
	start, count uint64
}

func (r subRange) holds(id uint32) bool {
	return uint64(id) >= r.start && uint64(id) < r.start+r.count
}

// isAccount reports whether uid is a host account's or in a subordinate
// uid range.
func (a *accounts) isAccount(uid uint32) bool {
	if _, ok := a.users[uid]; ok {
		return true
	}
	for _, r := range a.subUIDs {
		if r.holds(uid) {
			return true
		}
	}
	return false
}

// readAccounts reads the account databases under root ("/" for the host):
// /etc/passwd must be there; group, subuid and subgid may be missing.
func readAccounts(root string) (*accounts, error) {
	read := func(name string, required bool) ([]byte, error) {
		data, err := os.ReadFile(filepath.Join(root, name))
		if errors.Is(err, fs.ErrNotExist) && !required {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("reading the host's accounts: %w", err)
		}
		return data, nil
	}
	a := &accounts{users: map[uint32]string{}, groups: map[uint32]string{}}
	pw, err := read("etc/passwd", true)
	if err != nil {
		return nil, err
	}
	for _, f := range colonRecords(pw, 7) {
		if id, err := strconv.ParseUint(f[2], 10, 32); err == nil {
			a.users[uint32(id)] = f[0]
			if h := filepath.Clean("/" + f[5]); !slices.Contains(a.homes, h) {
				a.homes = append(a.homes, h)
			}
		}
	}
	gr, err := read("etc/group", false)
	if err != nil {
		return nil, err
	}
	for _, f := range colonRecords(gr, 4) {
		if id, err := strconv.ParseUint(f[2], 10, 32); err == nil {
			a.groups[uint32(id)] = f[0]
		}
	}
	for _, sub := range []struct {
		name string
		dst  *[]subRange
	}{{"etc/subuid", &a.subUIDs}, {"etc/subgid", &a.subGIDs}} {
		data, err := read(sub.name, false)
		if err != nil {
			return nil, err
		}
		for _, f := range colonRecords(data, 3) {
			start, err1 := strconv.ParseUint(f[1], 10, 32)
			count, err2 := strconv.ParseUint(f[2], 10, 32)
			if err1 == nil && err2 == nil {
				*sub.dst = append(*sub.dst, subRange{owner: f[0], start: start, count: count})
			}
		}
	}
	return a, nil
}

// checkHostIdentity refuses a sandbox user whose uid, gid or supplementary
// gid a host account, group or subordinate id range uses, unless allow.
// Root (uid and gid 0) is not refused here: the floor decides about it. src
// says where the user was set, for the message.
func checkHostIdentity(u User, host *accounts, allow bool, src string) error {
	if allow {
		return nil
	}
	hint := fmt.Sprintf("run as ids no host account uses (the built-in profiles' %d:%d), or set process.allow_host_user (--allow-host-user) to accept it",
		policy.DefaultUID, policy.DefaultGID)
	fail := func(what string) error {
		return fmt.Errorf("the sandbox user %d:%d (process.user, %s): %s: the sandbox would own the host's files of it; %s",
			u.UID, u.GID, src, what, hint)
	}
	if u.UID != 0 {
		if name, ok := host.users[u.UID]; ok {
			return fail(fmt.Sprintf("uid %d is the host account %q", u.UID, name))
		}
		for _, r := range host.subUIDs {
			if r.holds(u.UID) {
				return fail(fmt.Sprintf("uid %d is in the subordinate uid range of %q (/etc/subuid)", u.UID, r.owner))
			}
		}
	}
	for _, gid := range append([]uint32{u.GID}, u.AdditionalGids...) {
		if gid == 0 {
			continue
		}
		if name, ok := host.groups[gid]; ok {
			return fail(fmt.Sprintf("gid %d is the host group %q", gid, name))
		}
		for _, r := range host.subGIDs {
			if r.holds(gid) {
				return fail(fmt.Sprintf("gid %d is in the subordinate gid range of %q (/etc/subgid)", gid, r.owner))
			}
		}
	}
	return nil
}

// loginIDMin is where login accounts start (useradd's UID_MIN): the host
// view's passwd and group keep the entries below it, and nobody.
const loginIDMin = 1000

// nobodyID is the overflow id, kept in the host view's passwd and group.
const nobodyID = 65534

// identityFiles returns the sandbox's /etc/passwd and /etc/group: the
// tree's own entries, with the sandbox user and its group added where the
// tree does not name them, so id, whoami, ~ and ls -l work. From the host
// view (hostView) only the system accounts and groups are kept (ids below
// 1000, and nobody: `ls -l` names the owners of system files), and group
// members that are not among them are dropped: login accounts name the
// host's people. An image's files are kept whole.
func identityFiles(t Tree, u User, hostView bool) (passwd, group []byte, err error) {
	pw, err := t.readFile("/etc/passwd")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("reading the sandbox's /etc/passwd: %w", err)
	}
	gr, err := t.readFile("/etc/group")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("reading the sandbox's /etc/group: %w", err)
	}
	keepID := func(id uint32, own ...uint32) bool {
		return !hostView || id < loginIDMin || id == nobodyID || slices.Contains(own, id)
	}
	passwd, name, names := passwdFile(pw, u, hostView, keepID)
	return passwd, groupFile(gr, u, hostView, keepID, name, names), nil
}

// passwdFile is the sandbox's /etc/passwd made of pw (the view's): in a
// host view only the system accounts, nobody and the user's, and a line for
// the user when none names its uid. It returns the user's name and every
// name the file holds.
func passwdFile(pw []byte, u User, hostView bool, keepID func(uint32, ...uint32) bool) (out []byte, name string, names map[string]bool) {
	var pwOut bytes.Buffer
	names = map[string]bool{}
	uidNamed := false
	for _, line := range lines(pw) {
		f := strings.Split(line, ":")
		id, err := strconv.ParseUint(field(f, 2), 10, 32)
		if len(f) < 7 || err != nil {
			if !hostView {
				pwOut.WriteString(line + "\n")
			}
			continue
		}
		if !keepID(uint32(id), u.UID) {
			continue
		}
		names[f[0]] = true
		uidNamed = uidNamed || uint32(id) == u.UID
		pwOut.WriteString(line + "\n")
	}
	name = u.Name
	if name == "" {
		name = DefaultUserName
	}
	if !uidNamed {
		if names[name] {
			name = DefaultUserName + "-" + strconv.FormatUint(uint64(u.UID), 10)
		}
		if u.UID == 0 && !names["root"] {
			name = "root"
		}
		fmt.Fprintf(&pwOut, "%s:x:%d:%d:egressd sandbox user:%s:/bin/sh\n", name, u.UID, u.GID, u.Home)
		names[name] = true
	}
	return pwOut.Bytes(), name, names
}

// groupFile is the sandbox's /etc/group made of gr (the view's): in a host
// view only the groups passwdFile's accounts may see, their members only
// those accounts (names), and a line for the user's group (called name)
// when none names its gid.
func groupFile(gr []byte, u User, hostView bool, keepID func(uint32, ...uint32) bool, name string, names map[string]bool) []byte {
	var grOut bytes.Buffer
	groupNames := map[string]bool{}
	gidNamed := false
	for _, line := range lines(gr) {
		f := strings.Split(line, ":")
		id, err := strconv.ParseUint(field(f, 2), 10, 32)
		if len(f) < 4 || err != nil {
			if !hostView {
				grOut.WriteString(line + "\n")
			}
			continue
		}
		if !keepID(uint32(id), append([]uint32{u.GID}, u.AdditionalGids...)...) {
			continue
		}
		if hostView && f[3] != "" {
			var members []string
			for m := range strings.SplitSeq(f[3], ",") {
				if names[strings.TrimSpace(m)] {
					members = append(members, strings.TrimSpace(m))
				}
			}
			f[3] = strings.Join(members, ",")
			line = strings.Join(f, ":")
		}
		groupNames[f[0]] = true
		gidNamed = gidNamed || uint32(id) == u.GID
		grOut.WriteString(line + "\n")
	}
	if !gidNamed {
		gname := name
		if groupNames[gname] {
			gname = DefaultUserName + "-" + strconv.FormatUint(uint64(u.GID), 10)
		}
		if u.GID == 0 && !groupNames["root"] {
			gname = "root"
		}
		fmt.Fprintf(&grOut, "%s:x:%d:\n", gname, u.GID)
	}
	return grOut.Bytes()
}

// lines returns data's lines without trailing newlines, blank lines
// dropped.
func lines(data []byte) []string {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		if l := sc.Text(); strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return out
}

func field(f []string, i int) string {
	if i < len(f) {
		return f[i]
	}
	return ""
}
