package specconv

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"net/netip"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sandbox/pid1"
)

const (
	// DefaultHostname is the sandbox's host name when none is given.
	DefaultHostname = "sandbox"
	// DefaultHome is the home directory of a numeric non-root user (the
	// built-in profiles' policy.DefaultUID), which has no passwd entry to
	// name one.
	DefaultHome = "/home/sandbox"
	// DefaultUserName is the name the sandbox's /etc/passwd gives a numeric
	// user that its root file system does not name.
	DefaultUserName = "sandbox"
	// DefaultPath is the PATH a sandbox gets when nothing sets one.
	DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

	// ProfileAnnotation is the spec annotation naming the profile.
	ProfileAnnotation = "io.egressd.profile"

	cpuPeriod = 100000 // µs, the CFS default
	nofile    = 4096
)

// User is the resolved identity the sandboxed command runs as.
type User struct {
	UID uint32 `json:"uid"`
	GID uint32 `json:"gid"`
	// AdditionalGids are supplementary groups (from the rootfs's
	// /etc/group for a named user); nil means none.
	AdditionalGids []uint32 `json:"additional_gids,omitempty"`
	// Home is the user's home directory inside the sandbox, where "~/"
	// tmpfs paths go and HOME points.
	Home string `json:"home"`
	// Name is the user's name inside the sandbox (the generated
	// /etc/passwd); "" means DefaultUserName.
	Name string `json:"name,omitempty"`
}

// IsRoot reports whether the user is uid 0.
func (u User) IsRoot() bool { return u.UID == 0 }

// SpecOptions are the per-launch inputs of BuildSpec that the profile does
// not hold. Paths are as the OCI runtime sees them (host paths), unless
// said to be inside the sandbox.
type SpecOptions struct {
	// Args is the command and its arguments. Required.
	Args []string
	// Env is the complete environment, "NAME=VALUE" (see BuildEnv); nothing
	// else reaches the sandbox.
	Env []string
	// Cwd is the working directory inside the sandbox; "" means the
	// profile's workspace.
	Cwd string
	// Hostname is the sandbox's host name; "" means DefaultHostname.
	Hostname string
	// NetNSPath is the sandbox's network namespace (/run/netns/NAME or
	// /proc/PID/ns/net), joined by the container. Required in filtered
	// mode; in none mode "" gives the container a fresh namespace with only
	// loopback; in host mode it must be "" (no network namespace at all).
	NetNSPath string
	// RootfsDir is the container's root file system (PrepareRootfs).
	// Required, absolute.
	RootfsDir string
	// ResolvConf and Hosts are generated files (WriteEtcFiles) bind-mounted
	// read-only at /etc/resolv.conf and /etc/hosts; "" leaves the rootfs's
	// own file.
	ResolvConf, Hosts string
	// TrustBundle is a generated CA bundle (the system's and the inspection
	// CA, docs/inspection.md) bind-mounted read-only at each of TrustPaths;
	// "" mounts none.
	TrustBundle string
	TrustPaths  []string
	// WorkspaceDir is a host directory bound read-write at the profile's
	// workspace (the only host path a sandbox may change). Required when
	// the profile sets filesystem.mount_cwd; "" otherwise gives the
	// workspace a fresh tmpfs.
	WorkspaceDir string
	// MaskPaths are paths inside the sandbox hidden behind a read-only,
	// non-executable empty device (BlockedPaths), so no process of the
	// sandbox can execute them.
	MaskPaths []string
	// Binds are the host paths the sandbox sees (View.Mounts): each bound
	// at Path from Source, read-only unless Writable. For a writable
	// system directory Source is the throwaway overlay PrepareRootfs made
	// of it, never the host directory itself.
	Binds []ViewMount
	// Passwd and Group are the generated /etc/passwd and /etc/group
	// (WriteIdentityFiles), bind-mounted read-only; "" leaves the root's
	// own file.
	Passwd, Group string
	// Protected are the mounts that keep the protected paths of the
	// workspace and the writable volumes (PlanProtect).
	Protected []ProtectedPath
	// Links are the generated files' destinations (ResolvConf, Hosts,
	// Passwd, Group, TrustPaths) that are, or lie beyond, a symbolic link in
	// the root, by destination (linkedFiles): each file is mounted where
	// its links lead, if that may be (see placeFile), else the spec is
	// refused. A destination not in it is mounted where it is.
	Links map[string]LinkedFile
	// HiddenPaths are paths of the view the sandbox cannot see, masked by
	// the runtime where they exist (View.Hidden).
	HiddenPaths []string
	// User is the resolved identity (ResolveUser).
	User User
	// CgroupsPath is the container's cgroup. A relative path is placed
	// under the runtime's own cgroup (runc, cgroupfs driver); "" lets the
	// runtime choose (runc: a cgroup named after the container id).
	CgroupsPath string
	// Init is the host path of the init binary (Config.Init): bound
	// read-only at pid1.Path and run as process 1 with Args as its child;
	// "" runs Args as process 1.
	Init string
	// Terminal, when not nil, gives the process a pseudo-terminal of that
	// initial size (process.terminal); nil: pipes.
	Terminal *pid1.WindowSize
	// Seccomp says what conditional seccomp rules are evaluated against;
	// its Caps are filled from the profile. The zero value means this
	// machine.
	Seccomp SeccompEnv
}

// checkHidden returns the paths to hide (masked), sorted and once each,
// or why one cannot be.
func checkHidden(paths []string) ([]string, error) {
	hidden := slices.Clone(paths)
	slices.Sort(hidden)
	hidden = slices.Compact(hidden)
	for _, h := range hidden {
		if err := checkMountTarget(h); err != nil {
			return nil, fmt.Errorf("hidden path %q: %w", h, err)
		}
	}
	return hidden, nil
}

// checkSpecInputs checks what BuildSpec is given, and returns the user
// (its home defaulted), the workspace, the working directory and the host
// name the spec names.
func checkSpecInputs(p *policy.Profile, opts SpecOptions) (user User, workspace, cwd, hostname string, err error) {
	if p == nil {
		return User{}, "", "", "", errors.New("building the container spec: no profile")
	}
	if len(opts.Args) == 0 || opts.Args[0] == "" {
		return User{}, "", "", "", errors.New("building the container spec: no command to run")
	}
	if !isCleanAbs(opts.RootfsDir) {
		return User{}, "", "", "", fmt.Errorf("building the container spec: rootfs %q is not an absolute clean path", opts.RootfsDir)
	}
	for _, e := range opts.Env {
		name, _, ok := strings.Cut(e, "=")
		if !ok || name == "" || strings.ContainsRune(e, 0) {
			return User{}, "", "", "", fmt.Errorf("building the container spec: environment entry %q is not NAME=VALUE", e)
		}
	}
	user = opts.User
	if user.Home == "" {
		user.Home = defaultHome(user.UID)
	}
	if !isCleanAbs(user.Home) {
		return User{}, "", "", "", fmt.Errorf("building the container spec: home %q is not an absolute clean path", user.Home)
	}
	workspace = p.Filesystem.Workspace
	if workspace == "" {
		workspace = "/sandbox"
	}
	if err := checkMountTarget(workspace); err != nil {
		return User{}, "", "", "", fmt.Errorf("filesystem.workspace %q: %w", workspace, err)
	}
	cwd = opts.Cwd
	if cwd == "" {
		cwd = workspace
	}
	if !isCleanAbs(cwd) {
		return User{}, "", "", "", fmt.Errorf("building the container spec: working directory %q is not an absolute clean path", cwd)
	}
	hostname = opts.Hostname
	if hostname == "" {
		hostname = DefaultHostname
	}
	if !validHostname(hostname) {
		return User{}, "", "", "", fmt.Errorf("building the container spec: %q is not a host name", hostname)
	}
	return user, workspace, cwd, hostname, nil
}

// BuildSpec returns the OCI runtime spec for one sandboxed command from a
// resolved profile. The result depends only on p and opts (and, for a
// seccomp profile file, that file), so equal inputs give equal specs.
//
// What every sandbox gets, whatever the profile:
//
//   - its own pid, ipc, uts, mount and cgroup namespaces, and a network
//     namespace unless the mode is host. No user namespace: the launcher
//     runs as real root and the container's users are real host users
//     without capabilities (a user namespace would give the workload
//     CAP_NET_ADMIN over namespaces it owns, see THREATS G1);
//   - the runtime's /proc, a tmpfs /dev with only the standard devices,
//     /dev/pts, /dev/shm, /dev/mqueue, a read-only /sys, and runc's default
//     masked and read-only paths (/proc/kcore, /proc/sys, ...);
//   - fresh tmpfs mounts over /tmp (noexec, nosuid, nodev), /var/tmp and
//     /run, so no host scratch file or host socket (docker.sock, D-Bus:
//     THREATS F5) shows through the host root;
//   - the host paths it sees (Binds: the view's system directories,
//     read-only or a throwaway overlay, exposed paths read-only, volumes),
//     nosuid and nodev, and the generated passwd, group, hosts and
//     resolv.conf over the root's; what the view hides (HiddenPaths) is
//     masked;
//   - a tmpfs home (mode 0700, owned by the user, root included); the
//     profile's "~/" tmpfs paths go under it and are owned by the user too,
//     and so is every directory between a tmpfs the user owns and a mount
//     below it (~/.local for ~/.local/share);
//   - the workspace: WorkspaceDir bound read-write, or a tmpfs the user
//     owns; both allow executing files (nosuid, nodev); the protected
//     paths of the workspace and the writable volumes (Protected);
//   - capabilities: none but cap_add, in the bounding, effective and
//     permitted sets (and inheritable + ambient for a non-root user, so they
//     survive exec); no_new_privileges as the profile says; RLIMIT_NOFILE
//     4096 and no core dumps;
//   - pids, memory (swap may not extend it) and CPU limits when set;
//   - the seccomp filter the profile names;
//   - with Init, the init as process 1 (bind-mounted read-only, nosuid,
//     nodev at pid1.Path, run with the same user, capabilities, filter and
//     limits as the command, which it starts as its child);
//   - with Terminal, a pseudo-terminal (process.terminal and consoleSize).
//
// The root is read-only when the profile says so; otherwise it is what
// RootfsDir is (PrepareRootfs makes it a throwaway overlay).
func BuildSpec(p *policy.Profile, opts SpecOptions) (*specs.Spec, error) {
	user, workspace, cwd, hostname, err := checkSpecInputs(p, opts)
	if err != nil {
		return nil, err
	}

	caps, err := normalizeCaps(p.Process.CapAdd)
	if err != nil {
		return nil, err
	}
	senv := opts.Seccomp
	senv.Caps = caps
	filter, err := LoadSeccomp(p.Process.Seccomp, senv)
	if err != nil {
		return nil, err
	}

	namespaces, err := buildNamespaces(p.Network.Mode, opts.NetNSPath)
	if err != nil {
		return nil, err
	}
	mounts, err := buildMounts(p, opts, user, workspace)
	if err != nil {
		return nil, err
	}
	hidden, err := checkHidden(opts.HiddenPaths)
	if err != nil {
		return nil, err
	}
	args := slices.Clone(opts.Args)
	if opts.Init != "" {
		args = pid1.Args(opts.Args, opts.Terminal)
	}
	var console *specs.Box
	if opts.Terminal != nil {
		console = &specs.Box{Height: uint(opts.Terminal.Rows), Width: uint(opts.Terminal.Cols)}
	}

	spec := &specs.Spec{
		Version:  specs.Version,
		Hostname: hostname,
		Root:     &specs.Root{Path: opts.RootfsDir, Readonly: p.Filesystem.ReadOnly},
		Process: &specs.Process{
			Terminal:    opts.Terminal != nil,
			ConsoleSize: console,
			User: specs.User{
				UID:            user.UID,
				GID:            user.GID,
				AdditionalGids: slices.Clone(user.AdditionalGids),
			},
			Args:            args,
			Env:             slices.Clone(opts.Env),
			Cwd:             cwd,
			Capabilities:    buildCaps(caps, user.IsRoot()),
			NoNewPrivileges: p.Process.NoNewPrivileges,
			Rlimits: []specs.POSIXRlimit{
				{Type: "RLIMIT_CORE", Hard: 0, Soft: 0},
				{Type: "RLIMIT_NOFILE", Hard: nofile, Soft: nofile},
			},
		},
		Mounts:      mounts,
		Annotations: map[string]string{ProfileAnnotation: p.Name},
		Linux: &specs.Linux{
			Namespaces:        namespaces,
			Resources:         buildResources(p.Process),
			CgroupsPath:       opts.CgroupsPath,
			Seccomp:           filter,
			RootfsPropagation: "rprivate",
			MaskedPaths: append([]string{
				"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
				"/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
				"/proc/sched_debug", "/sys/firmware", "/proc/scsi",
			}, hidden...),
			ReadonlyPaths: []string{
				"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
			},
		},
	}
	return spec, nil
}

func defaultHome(uid uint32) string {
	if uid == 0 {
		return "/root"
	}
	return DefaultHome
}

func isCleanAbs(p string) bool {
	return p != "" && path.IsAbs(p) && path.Clean(p) == p && !strings.ContainsRune(p, 0)
}

// checkMountTarget refuses paths no sandbox mount may cover.
func checkMountTarget(p string) error {
	if !isCleanAbs(p) {
		return errors.New("not an absolute clean path")
	}
	if p == "/" {
		return errors.New("mounting over / is not allowed")
	}
	for _, sys := range []string{"/proc", "/sys", "/dev"} {
		if p == sys || strings.HasPrefix(p, sys+"/") {
			return fmt.Errorf("mounting over %s is not allowed", sys)
		}
	}
	return nil
}

// validHostname is RFC 1123: dot-separated labels of letters, digits and
// hyphens, 1-63 bytes each, 253 in all.
func validHostname(h string) bool {
	if len(h) == 0 || len(h) > 253 {
		return false
	}
	for label := range strings.SplitSeq(h, ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

func normalizeCaps(in []string) ([]string, error) {
	var out []string
	for _, c := range in {
		n, ok := policy.NormalizeCapability(c)
		if !ok {
			return nil, fmt.Errorf("process.cap_add: %q is not a Linux capability", c)
		}
		out = append(out, n)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// buildCaps gives the kept capabilities. A non-nil struct even when empty:
// runc leaves a process's capabilities alone when the field is absent.
func buildCaps(caps []string, root bool) *specs.LinuxCapabilities {
	c := &specs.LinuxCapabilities{
		Bounding:  slices.Clone(caps),
		Effective: slices.Clone(caps),
		Permitted: slices.Clone(caps),
	}
	if !root && len(caps) > 0 {
		// Ambient capabilities must also be inheritable; they are what
		// keeps a capability across a non-root user's exec.
		c.Inheritable = slices.Clone(caps)
		c.Ambient = slices.Clone(caps)
	}
	return c
}

func buildNamespaces(mode policy.Mode, netns string) ([]specs.LinuxNamespace, error) {
	ns := []specs.LinuxNamespace{
		{Type: specs.PIDNamespace},
		{Type: specs.IPCNamespace},
		{Type: specs.UTSNamespace},
		{Type: specs.MountNamespace},
	}
	if netns != "" && !isCleanAbs(netns) {
		return nil, fmt.Errorf("network namespace path %q is not an absolute clean path", netns)
	}
	switch mode {
	case policy.ModeHost:
		if netns != "" {
			return nil, fmt.Errorf("network mode host shares the host's network namespace; a namespace path (%s) makes no sense", netns)
		}
	case policy.ModeNone:
		ns = append(ns, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: netns})
	case policy.ModeFiltered, policy.ModeReport:
		if netns == "" {
			return nil, fmt.Errorf("network mode %s needs the sandbox's network namespace (where egressd runs); none was given", mode)
		}
		ns = append(ns, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: netns})
	default:
		return nil, fmt.Errorf("unknown network mode %q", mode)
	}
	ns = append(ns, specs.LinuxNamespace{Type: specs.CgroupNamespace})
	return ns, nil
}

func buildResources(pr policy.ProcessSettings) *specs.LinuxResources {
	r := &specs.LinuxResources{
		// Deny every device; the runtime adds back the standard ones
		// (null, zero, full, random, urandom, tty, ptmx).
		Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
	}
	if pr.PidsLimit > 0 {
		limit := pr.PidsLimit
		r.Pids = &specs.LinuxPids{Limit: &limit}
	}
	if pr.Memory > 0 {
		limit := pr.Memory
		// memory+swap equal to memory: swap cannot extend the limit.
		r.Memory = &specs.LinuxMemory{Limit: &limit, Swap: &limit}
	}
	if pr.CPUs > 0 {
		period := uint64(cpuPeriod)
		quota := int64(math.Ceil(pr.CPUs * cpuPeriod))
		if quota < 1000 { // the kernel's minimum quota is 1 ms
			quota = 1000
		}
		r.CPU = &specs.LinuxCPU{Quota: &quota, Period: &period}
	}
	return r
}

// mountSpec is one mount to sort.
type mountSpec struct {
	m   specs.Mount
	key string // where it came from, for conflict errors
}

func buildMounts(p *policy.Profile, opts SpecOptions, user User, workspace string) ([]specs.Mount, error) {
	ms := &mountSet{byDest: map[string]*mountSpec{}, volumeAt: map[string]bool{}, systemAt: map[string]bool{}}
	if err := ms.addBinds(opts.Binds); err != nil {
		return nil, err
	}
	if err := ms.planScratch(p, user); err != nil {
		return nil, err
	}
	if err := ms.addWorkspace(p, opts.WorkspaceDir, workspace); err != nil {
		return nil, err
	}
	// After the mounts they may lead into (placeFile).
	if err := ms.addFiles(opts); err != nil {
		return nil, err
	}
	ms.fillOwnedParents()
	if err := ms.addScratch(user); err != nil {
		return nil, err
	}
	if err := ms.addProtected(opts.Protected); err != nil {
		return nil, err
	}
	return ms.build(opts.MaskPaths)
}

// systemMounts are the file systems every container has.
func systemMounts() []specs.Mount {
	return []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
	}
}

// roBind are the options of a read-only bind of a file that is never run.
var roBind = []string{"bind", "ro", "nosuid", "nodev", "noexec"}

func bindOpts(writable bool) []string {
	if writable {
		return []string{"bind", "rw", "nosuid", "nodev"}
	}
	return []string{"bind", "ro", "nosuid", "nodev"}
}

// mountSet is the container's mounts being planned: each destination
// once, with where it came from for the error when two claim it.
type mountSet struct {
	byDest map[string]*mountSpec
	order  []string
	// volumeAt are the volumes' destinations: a volume replaces a tmpfs
	// at the same path.
	volumeAt map[string]bool
	// systemAt are the system directories' destinations (read-only binds,
	// or throwaway overlays the launcher made for the sandbox).
	systemAt map[string]bool
	// tmpfs are the scratch tmpfs mounts, by destination.
	tmpfs map[string]*scratchMount
}

// scratchMount is a tmpfs the container gets.
type scratchMount struct {
	size    int64
	mode    uint32
	opts    []string
	owned   bool // owned by the sandbox user
	key     string
	profile bool
}

func (ms *mountSet) add(m mountSpec) error {
	if prev, ok := ms.byDest[m.m.Destination]; ok {
		return fmt.Errorf("%s and %s both mount %s", prev.key, m.key, m.m.Destination)
	}
	ms.byDest[m.m.Destination] = &m
	ms.order = append(ms.order, m.m.Destination)
	return nil
}

// addBinds adds the host paths the sandbox sees: the view's system
// directories, exposed paths, volumes.
func (ms *mountSet) addBinds(binds []ViewMount) error {
	for _, b := range binds {
		key := b.Origin
		if key == "" {
			key = b.Kind + " " + b.Path
		}
		if err := checkMountTarget(b.Path); err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		if !isCleanAbs(b.Source) {
			return fmt.Errorf("%s: host path %q is not an absolute clean path", key, b.Source)
		}
		if err := ms.add(mountSpec{m: specs.Mount{Destination: b.Path, Type: "bind", Source: b.Source, Options: bindOpts(b.Writable)}, key: key}); err != nil {
			return err
		}
		if b.Kind == MountVolume {
			ms.volumeAt[b.Path] = true
		}
		if b.Kind == MountSystem {
			ms.systemAt[b.Path] = true
		}
	}
	return nil
}

// addFiles adds the init, the generated /etc files and the inspection
// trust bundle.
func (ms *mountSet) addFiles(opts SpecOptions) error {
	if opts.Init != "" {
		if !isCleanAbs(opts.Init) {
			return fmt.Errorf("init binary %q is not an absolute clean path", opts.Init)
		}
		if err := ms.add(mountSpec{m: specs.Mount{Destination: pid1.Path, Type: "bind", Source: opts.Init,
			Options: []string{"bind", "ro", "nosuid", "nodev"}}, key: "the init"}); err != nil {
			return err
		}
	}
	for _, f := range etcFiles(opts) {
		if !isCleanAbs(f.src) {
			return fmt.Errorf("%s source %q is not an absolute clean path", f.dst, f.src)
		}
		dst, err := ms.placeFile(f.dst, opts.Links)
		if err != nil {
			return err
		}
		if err := ms.add(mountSpec{m: specs.Mount{Destination: dst, Type: "bind", Source: f.src, Options: roBind}, key: "generated " + f.dst}); err != nil {
			return err
		}
	}
	if opts.TrustBundle == "" {
		return nil
	}
	if !isCleanAbs(opts.TrustBundle) {
		return fmt.Errorf("trust bundle source %q is not an absolute clean path", opts.TrustBundle)
	}
	for _, dst := range opts.TrustPaths {
		if err := checkMountTarget(dst); err != nil {
			return fmt.Errorf("trust bundle at %q: %w", dst, err)
		}
		at, err := ms.placeFile(dst, opts.Links)
		if err != nil {
			return err
		}
		if err := ms.add(mountSpec{m: specs.Mount{Destination: at, Type: "bind", Source: opts.TrustBundle, Options: roBind}, key: "the inspection trust bundle"}); err != nil {
			return err
		}
	}
	return nil
}

// planScratch plans the scratch tmpfs mounts: the always-present ones
// merged with the profile's (a profile entry for the same path sets size
// and mode and adds options; the baseline options are never removed). A
// volume at the same path replaces a tmpfs.
func (ms *mountSet) planScratch(p *policy.Profile, user User) error {
	ms.tmpfs = map[string]*scratchMount{
		"/tmp":     {mode: 0o1777, opts: []string{"noexec", "nosuid", "nodev"}, key: "the sandbox's /tmp"},
		"/var/tmp": {mode: 0o1777, opts: []string{"nosuid", "nodev"}, key: "the sandbox's /var/tmp"},
		"/run":     {mode: 0o755, opts: []string{"noexec", "nosuid", "nodev"}, key: "the sandbox's /run"},
	}
	if err := checkMountTarget(user.Home); err != nil {
		return fmt.Errorf("home %q: %w", user.Home, err)
	}
	if _, clash := ms.tmpfs[user.Home]; clash {
		return fmt.Errorf("home %q is one of the sandbox's scratch directories", user.Home)
	}
	ms.tmpfs[user.Home] = &scratchMount{mode: 0o700, opts: []string{"nosuid", "nodev"}, owned: true, key: "the user's home"}
	for _, t := range p.Filesystem.Tmpfs {
		dest := policy.ExpandHome(t.Path, user.Home)
		key := fmt.Sprintf("filesystem.tmpfs %s (%s)", t.Path, t.Source)
		if err := checkMountTarget(dest); err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		for _, o := range t.Options {
			if o != "nosuid" && o != "nodev" && o != "noexec" {
				return fmt.Errorf("%s: option %q is not nosuid, nodev or noexec", key, o)
			}
		}
		underHome := strings.HasPrefix(t.Path, "~")
		s, ok := ms.tmpfs[dest]
		switch {
		case ok && s.profile:
			return fmt.Errorf("%s and %s both mount %s", s.key, key, dest)
		case ok && s.owned:
			return fmt.Errorf("%s mounts over the user's home %s; name a directory under it", key, dest)
		case ok:
			s.size, s.mode, s.key, s.profile = t.Size, t.EffectiveMode(), key, true
			s.opts = append(s.opts, t.Options...)
		default:
			ms.tmpfs[dest] = &scratchMount{size: t.Size, mode: t.EffectiveMode(), opts: slices.Clone(t.Options),
				owned: underHome, key: key, profile: true}
		}
	}
	for dest := range ms.volumeAt {
		delete(ms.tmpfs, dest)
	}
	return nil
}

// addWorkspace adds the workspace at workspace: the host's directory dir,
// or a tmpfs the user owns.
func (ms *mountSet) addWorkspace(p *policy.Profile, dir, workspace string) error {
	switch {
	case dir != "":
		if !isCleanAbs(dir) || dir == "/" {
			return fmt.Errorf("workspace directory %q: want an absolute clean path other than /", dir)
		}
		return ms.add(mountSpec{m: specs.Mount{Destination: workspace, Type: "bind", Source: dir,
			Options: []string{"bind", "rw", "nosuid", "nodev"}}, key: "the workspace (filesystem.workspace)"})
	case p.Filesystem.MountCwd:
		return errors.New("filesystem.mount_cwd is set but no workspace directory was given")
	default:
		if s, ok := ms.tmpfs[workspace]; ok {
			return fmt.Errorf("%s and the workspace (filesystem.workspace) both mount %s", s.key, workspace)
		}
		ms.tmpfs[workspace] = &scratchMount{mode: 0o755, opts: []string{"nodev", "nosuid"}, owned: true, key: "the workspace (filesystem.workspace)"}
		return nil
	}
}

// fillOwnedParents makes every directory between a tmpfs the user owns
// and a mount below it a tmpfs the user owns too: the runtime would make
// it, as root, and the user could not create anything beside the mount
// (pip's ~/.local/lib beside ~/.local/share).
func (ms *mountSet) fillOwnedParents() {
	dests := slices.Collect(maps.Keys(ms.tmpfs))
	dests = append(dests, ms.order...)
	slices.Sort(dests)
	for _, d := range dests {
		parent := ""
		for _, a := range dests {
			if strings.HasPrefix(d, a+"/") && len(a) > len(parent) {
				parent = a
			}
		}
		if s, ok := ms.tmpfs[parent]; !ok || !s.owned {
			continue
		}
		for dir := path.Dir(d); dir != parent && strings.HasPrefix(dir, parent+"/"); dir = path.Dir(dir) {
			if _, ok := ms.tmpfs[dir]; !ok {
				ms.tmpfs[dir] = &scratchMount{mode: 0o755, opts: []string{"nodev", "nosuid"}, owned: true, key: "a directory on the way to " + d}
			}
		}
	}
}

// addScratch adds the planned tmpfs mounts, those the user owns owned by
// user.
func (ms *mountSet) addScratch(user User) error {
	for dest, s := range ms.tmpfs {
		opts := slices.Clone(s.opts)
		slices.Sort(opts)
		opts = slices.Compact(opts)
		opts = append(opts, "mode="+strconv.FormatUint(uint64(s.mode), 8))
		if s.size > 0 {
			opts = append(opts, "size="+strconv.FormatInt(s.size, 10))
		}
		if s.owned {
			opts = append(opts, "uid="+strconv.FormatUint(uint64(user.UID), 10), "gid="+strconv.FormatUint(uint64(user.GID), 10))
		}
		if err := ms.add(mountSpec{m: specs.Mount{Destination: dest, Type: "tmpfs", Source: "tmpfs", Options: opts}, key: s.key}); err != nil {
			return err
		}
	}
	return nil
}

// addProtected adds the protected paths in the workspace and the writable
// volumes: pinned directories writable, the rest read-only (see
// PlanProtect).
func (ms *mountSet) addProtected(pps []ProtectedPath) error {
	for _, pp := range pps {
		key := fmt.Sprintf("filesystem.protect %s in %s", pp.Entry, pp.Root)
		if err := checkMountTarget(pp.Path); err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		if !isCleanAbs(pp.Host) {
			return fmt.Errorf("%s: host path %q is not an absolute clean path", key, pp.Host)
		}
		if err := ms.add(mountSpec{m: specs.Mount{Destination: pp.Path, Type: "bind", Source: pp.Host,
			Options: bindOpts(pp.How == ProtectPinned)}, key: key}); err != nil {
			return err
		}
	}
	return nil
}

// build returns the system mounts, then the planned ones, parents before
// children (a path sorts after its prefix), then the masks: last, so
// nothing mounted later uncovers a masked file.
func (ms *mountSet) build(maskPaths []string) ([]specs.Mount, error) {
	slices.Sort(ms.order)
	out := systemMounts()
	for _, d := range ms.order {
		out = append(out, ms.byDest[d].m)
	}
	masks := slices.Clone(maskPaths)
	slices.Sort(masks)
	masks = slices.Compact(masks)
	for _, m := range masks {
		if err := checkMountTarget(m); err != nil {
			return nil, fmt.Errorf("masked command %q: %w", m, err)
		}
		if _, ok := ms.byDest[m]; ok {
			return nil, fmt.Errorf("masked command %q is also a mount point", m)
		}
		out = append(out, specs.Mount{Destination: m, Type: "bind", Source: os.DevNull, Options: roBind})
	}
	return out, nil
}

// EtcFiles returns the sandbox's resolv.conf (its only resolver is
// nameserver, egressd's DNS listener) and hosts (localhost and hostname),
// for SpecOptions.ResolvConf and Hosts.
func EtcFiles(nameserver netip.Addr, hostname string) (resolvConf, hosts []byte, err error) {
	if !nameserver.IsValid() || nameserver.Zone() != "" {
		return nil, nil, fmt.Errorf("writing resolv.conf: %q is not a nameserver address", nameserver)
	}
	if hostname == "" {
		hostname = DefaultHostname
	}
	if !validHostname(hostname) {
		return nil, nil, fmt.Errorf("writing hosts: %q is not a host name", hostname)
	}
	rc := "# generated by egressd: the sandbox's only resolver\nnameserver " + nameserver.Unmap().String() + "\n"
	h := "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t" + hostname + "\n"
	return []byte(rc), []byte(h), nil
}

// ToolchainDirs are the directories of toolchains installed for every
// user that SandboxPath adds when the sandbox's tree has them.
var ToolchainDirs = []string{"/usr/local/go/bin", "/usr/local/cargo/bin"}

// SandboxPath is a sandbox's PATH: the user's own bin directories under
// home (~/.local/bin for pip --user, pipx and npm --prefix ~/.local,
// ~/.cargo/bin for cargo install, ~/go/bin for go install: they exist once
// a tool installs there), then DefaultPath, then the ToolchainDirs the tree
// has.
func SandboxPath(home string, t Tree) string {
	dirs := []string{path.Join(home, ".local/bin"), path.Join(home, ".cargo/bin"), path.Join(home, "go/bin"), DefaultPath}
	for _, d := range ToolchainDirs {
		if r, err := t.resolve(d); err == nil {
			if fi, err := t.lstat(r); err == nil && fi.IsDir() {
				dirs = append(dirs, d)
			}
		}
	}
	return strings.Join(dirs, ":")
}

// BuildEnv computes a sandbox's environment, sorted by name:
//
//  1. PATH=pathEnv ("" means DefaultPath) and HOME=home;
//  2. the variables named by the profile's env.pass, copied from callerEnv
//     when set there ("NAME=VALUE" entries; others are ignored);
//  3. the profile's env.set;
//  4. extra (the launch's --env): "NAME=VALUE" sets, a bare "NAME" copies
//     the variable from callerEnv (nothing if unset there);
//  5. in filtered mode with a proxyURL, HTTP_PROXY, HTTPS_PROXY, http_proxy
//     and https_proxy = proxyURL and NO_PROXY, no_proxy =
//     "localhost,127.0.0.1,::1", so proxy-aware clients use egressd
//     explicitly (THREATS G4: the firewall sends the rest there anyway).
//
// A later step overrides an earlier one. An invalid extra entry (no name, a
// name that is not letters, digits and _, a NUL byte) is an error.
func BuildEnv(p *policy.Profile, home, pathEnv string, callerEnv, extra []string, proxyURL string) ([]string, error) {
	caller := map[string]string{}
	for _, e := range callerEnv {
		if k, v, ok := strings.Cut(e, "="); ok && k != "" {
			caller[k] = v
		}
	}
	if home == "" {
		home = "/"
	}
	if pathEnv == "" {
		pathEnv = DefaultPath
	}
	env := map[string]string{"PATH": pathEnv, "HOME": home}
	for _, name := range p.Env.Pass {
		if v, ok := caller[name]; ok {
			env[name] = v
		}
	}
	for k, v := range p.Env.Set {
		if !policy.ValidEnvName(k) || strings.ContainsRune(v, 0) {
			return nil, fmt.Errorf("env.set %q: not a valid variable", k)
		}
		env[k] = v
	}
	for _, e := range extra {
		k, v, hasValue := strings.Cut(e, "=")
		if !policy.ValidEnvName(k) || strings.ContainsRune(v, 0) {
			return nil, fmt.Errorf("--env %q: want NAME=VALUE or NAME, with a name of letters, digits and _", e)
		}
		if !hasValue {
			if cv, ok := caller[k]; ok {
				env[k] = cv
			}
			continue
		}
		env[k] = v
	}
	if p.Network.Mode.Proxied() && proxyURL != "" {
		if strings.ContainsAny(proxyURL, "\x00\n") {
			return nil, fmt.Errorf("proxy URL %q is not valid", proxyURL)
		}
		for _, k := range []string{"HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"} {
			env[k] = proxyURL
		}
		env["NO_PROXY"] = "localhost,127.0.0.1,::1"
		env["no_proxy"] = env["NO_PROXY"]
	}
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	slices.Sort(out)
	return out, nil
}
