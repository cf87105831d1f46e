package specconv

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sandbox/pid1"
)

// MinPidsLimit is the lowest process.pids_limit a sandbox with an init
// runs with: the init's own tasks (pid1.Tasks) and as many for the
// command.
const MinPidsLimit = 2 * pid1.Tasks

// DefaultWorkspace is the workspace inside the sandbox when the profile
// names none.
const DefaultWorkspace = "/sandbox"

// Input is one launch's container as the launcher knows it before anything
// exists. Paths are host paths unless said to be inside the sandbox.
type Input struct {
	// Profile is the resolved profile. Required.
	Profile *policy.Profile
	// Args is the command and its arguments. Required.
	Args []string
	// Image is the directory the root is built on (--rootfs); "" means the
	// host view.
	Image string
	// HostRoot is where the host's system directories and account
	// databases are read; "" means "/".
	HostRoot string
	// CallerEnv is the environment env.pass copies from; nil passes
	// nothing.
	CallerEnv []string
	// Env are further "NAME=VALUE" entries (the launch's secrets, a
	// placeholder where egressd holds the secret).
	Env []string
	// Workdir is the working directory inside the sandbox; "" means the
	// workspace.
	Workdir string
	// WorkspaceDir is the host directory bound read-write at the
	// workspace; "" gives the workspace a fresh tmpfs.
	WorkspaceDir string
	// Hostname is the sandbox's host name; "" means DefaultHostname.
	Hostname string
	// Init is the host path of the init binary, run as process 1 with the
	// command as its child; "" runs the command as process 1.
	Init string
	// Terminal, when not nil, gives the command a pseudo-terminal of that
	// initial size.
	Terminal *pid1.WindowSize
	// StateRoot is the launcher's state directory, which no sandbox may
	// see; Dir is this sandbox's own directory in it, where the root, the
	// overlays and the generated files are planned (Container.Rootfs,
	// EtcDir).
	StateRoot, Dir string
	// ID names the sandbox: its cgroup, and its CA in the trust bundle.
	ID string
	// NetNSPath is the network namespace the container joins ("" in host
	// mode, and for a fresh one in mode none).
	NetNSPath string
	// ProxyURL is egressd's explicit proxy, which the proxy variables name
	// in filtered mode; "" sets none.
	ProxyURL string
	// ReservedUID and ReservedGID are egressd's ids, which the sandbox
	// user may not have in filtered mode; zero reserves none.
	ReservedUID, ReservedGID uint32
	// TrustCA, when not nil, is the sandbox's inspection CA (PEM): the
	// container trusts it (a trust bundle and the trust variables).
	TrustCA []byte
}

// Container is everything a launch's container is, decided before anything
// is made: the plan the launcher applies (making the root, the
// placeholders, the generated files and the bundle) and shows (`launcher
// explain`).
type Container struct {
	// Spec is the OCI runtime spec.
	Spec *specs.Spec `json:"spec"`
	// View is what of the host the sandbox sees; Rootfs the root made of
	// it (RootfsDir), with a throwaway overlay at OverlayDir for each
	// writable system directory.
	View   *View  `json:"view"`
	Rootfs string `json:"rootfs"`
	// User is who the command runs as.
	User User `json:"user"`
	// Protected are the mounts keeping the protected paths of the
	// workspace and the writable volumes.
	Protected []ProtectedPath `json:"protected,omitempty"`
	// EtcDir is where Files go: the sandbox's passwd and group, its
	// resolv.conf and hosts (not in host mode), and its CA bundle when it
	// trusts an inspection CA (ca-certificates.crt).
	EtcDir string            `json:"etc_dir"`
	Files  map[string][]byte `json:"-"`
	// Warnings are what the launch should tell the operator.
	Warnings []string `json:"warnings,omitempty"`
}

// RootfsDir is where the root of view v is made in the sandbox's directory
// dir, and OverlayDir the throwaway overlay of the writable system
// directory at path.
func RootfsDir(v *View, dir string) string {
	if v.Image != "" {
		return filepath.Join(dir, "rootfs")
	}
	return filepath.Join(dir, "upper-tmpfs", "root")
}

// OverlayDir: see RootfsDir.
func OverlayDir(dir, path string) string {
	return filepath.Join(dir, "view", strings.TrimPrefix(path, "/"))
}

// Convert plans in's container: the user (checked against the host's
// accounts), the view, the environment, the command (checked against the
// profile's command rules and found in the root), the writable host
// directories and their protected paths, the generated /etc files, the
// trust bundle and the spec. It reads the host and changes nothing.
func Convert(in Input) (*Container, error) {
	p := in.Profile
	if p == nil {
		return nil, errors.New("planning the container: no profile")
	}
	if n := p.Process.PidsLimit; in.Init != "" && n > 0 && n < MinPidsLimit {
		return nil, fmt.Errorf("process.pids_limit %d (%s) is too low: the sandbox's init takes up to %d tasks itself (its threads count); "+
			"give at least %d, or 0 for no limit", n, p.SourceOf("process.pids_limit"), pid1.Tasks, MinPidsLimit)
	}
	user, host, hidden, err := identity(in)
	if err != nil {
		return nil, err
	}
	view, workspaceDir, err := planContainerView(in, user, host, hidden)
	if err != nil {
		return nil, err
	}
	tree := view.Tree()
	c := &Container{View: view, Rootfs: RootfsDir(view, in.Dir), User: user, EtcDir: filepath.Join(in.Dir, "etc")}
	env, pathEnv, err := environment(in, user, tree)
	if err != nil {
		return nil, err
	}
	masks, err := BlockedPaths(tree, p.Commands.Block, pathEnv)
	if err != nil {
		return nil, err
	}
	args, err := CheckCommand(p, tree, user, in.Args, env)
	if err != nil {
		return nil, err
	}
	if err := findExecutable(p, tree, user, args[0], pathEnv); err != nil {
		return nil, err
	}
	if c.Protected, c.Warnings, err = protectWritable(in, view, user, host, workspaceDir); err != nil {
		return nil, err
	}
	opts, err := c.generate(in, tree)
	if err != nil {
		return nil, err
	}
	opts.Args, opts.Env, opts.MaskPaths, opts.WorkspaceDir = args, env, masks, workspaceDir
	c.Spec, err = BuildSpec(p, opts)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// identity resolves the sandbox's user from the view's /etc (expose and
// volumes cannot change it) and checks it against the host's accounts and
// egressd's reserved ids.
func identity(in Input) (User, *accounts, []string, error) {
	p := in.Profile
	sys, err := planSystemView(in.HostRoot, in.Image, p, false, nil)
	if err != nil {
		return User{}, nil, nil, err
	}
	user, host, err := identityIn(in, sys)
	return user, host, sys.Hidden, err
}

// identityIn is identity in the system view sys.
func identityIn(in Input, sys *View) (User, *accounts, error) {
	p := in.Profile
	user, err := ResolveUser(sys.Tree(), p.Process.User)
	if err != nil {
		return User{}, nil, err
	}
	hostRoot := in.HostRoot
	if hostRoot == "" {
		hostRoot = "/"
	}
	host, err := readAccounts(hostRoot)
	if err != nil {
		return User{}, nil, err
	}
	if err := checkHostIdentity(user, host, p.Process.AllowHostUser, p.SourceOf("process.user").String()); err != nil {
		return User{}, nil, err
	}
	reserved := in.ReservedUID != 0 && user.UID == in.ReservedUID || in.ReservedGID != 0 && user.GID == in.ReservedGID
	if p.Network.Mode.Proxied() && reserved {
		return User{}, nil, fmt.Errorf("process.user %s (%s) shares egressd's uid or gid %d:%d; the sandbox must not be able to act as egressd",
			p.Process.User, p.SourceOf("process.user"), in.ReservedUID, in.ReservedGID)
	}
	return user, host, nil
}

// workspace is the profile's workspace inside the sandbox.
func workspace(p *policy.Profile) string {
	if p.Filesystem.Workspace == "" {
		return DefaultWorkspace
	}
	return p.Filesystem.Workspace
}

// planContainerView plans the view for user, the workspace directory
// checked and resolved through its links (it is bound, and protected,
// where they lead).
func planContainerView(in Input, user User, host *accounts, hidden []string) (*View, string, error) {
	p := in.Profile
	vo := ViewOptions{HostRoot: in.HostRoot, Image: in.Image, Home: user.Home, Workspace: workspace(p),
		WorkspaceDir: in.WorkspaceDir, StateDir: in.StateRoot, Homes: host.homes,
		SystemWritable: !p.Filesystem.ReadOnly && (user.UID == 0 || host.isAccount(user.UID) || p.Process.AllowHostUser),
		hidden:         &hidden}
	if in.WorkspaceDir != "" {
		what := fmt.Sprintf("the workspace (filesystem.mount_cwd, %s)", p.SourceOf("filesystem.mount_cwd"))
		dir, err := checkHostPath(in.WorkspaceDir, what, vo)
		if err != nil {
			return nil, "", err
		}
		vo.WorkspaceDir = dir
	}
	view, err := PlanView(p, vo)
	if err != nil {
		return nil, "", err
	}
	return view, vo.WorkspaceDir, nil
}

// environment is the sandbox's environment (BuildEnv, and the trust
// variables when it trusts an inspection CA) and its PATH.
func environment(in Input, user User, tree Tree) (env []string, pathEnv string, err error) {
	proxyURL := ""
	if in.Profile.Network.Mode.Proxied() {
		proxyURL = in.ProxyURL
	}
	env, err = BuildEnv(in.Profile, user.Home, SandboxPath(user.Home, tree), in.CallerEnv, in.Env, proxyURL)
	if err != nil {
		return nil, "", err
	}
	if in.TrustCA != nil {
		env = withTrustVariables(env)
	}
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			pathEnv = v
		}
	}
	return env, pathEnv, nil
}

// protectWritable checks the host directories the sandbox may write (the
// workspace and the writable volumes: each must be writable by the sandbox
// user) and plans their protected paths.
func protectWritable(in Input, view *View, user User, host *accounts, workspaceDir string) ([]ProtectedPath, []string, error) {
	p := in.Profile
	type writableDir struct{ host, path, what string }
	var dirs []writableDir
	if workspaceDir != "" {
		dirs = append(dirs, writableDir{workspaceDir, workspace(p),
			fmt.Sprintf("the workspace %s (filesystem.mount_cwd, %s)", workspaceDir, p.SourceOf("filesystem.mount_cwd"))})
	}
	for _, m := range view.Mounts {
		if m.Kind == MountVolume && m.Writable {
			dirs = append(dirs, writableDir{m.Source, m.Path, m.Origin})
		}
	}
	var roots []ProtectRoot
	var warnings []string
	for _, w := range dirs {
		fi, err := os.Stat(w.host)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", w.what, err)
		}
		if !fi.IsDir() {
			continue
		}
		if err := checkWritable(w.host, user); err != nil {
			return nil, nil, fmt.Errorf("%s is not writable by the sandbox user %d:%d (%v); give that user write access "+
				"(setfacl -m u:%d:rwx %s), or run as the directory's owner with --user UID:GID --allow-host-user",
				w.what, user.UID, user.GID, err, user.UID, w.host)
		}
		if user.UID == 0 {
			warnings = append(warnings, fmt.Sprintf("the command runs as root with %s: what it creates there is owned by root on the host", w.what))
		}
		roots = append(roots, ProtectRoot{Host: w.host, Path: w.path})
	}
	if len(roots) == 0 {
		return nil, warnings, nil
	}
	// What git reads for these directories' repositories, wherever it
	// lies: the system's and every account's global configuration too.
	hostRoot := in.HostRoot
	if hostRoot == "" {
		hostRoot = "/"
	}
	gitConfigs := []string{filepath.Join(hostRoot, "etc/gitconfig")}
	for _, h := range host.homes {
		gitConfigs = append(gitConfigs, filepath.Join(h, ".gitconfig"), filepath.Join(h, ".config/git/config"))
	}
	protected, err := PlanProtectRoots(ProtectOptions{Roots: roots, Entries: p.Filesystem.EffectiveProtect(),
		GitRefusesOwner: user.UID != 0 && !host.isAccount(user.UID), Homes: host.homes, GitConfigs: gitConfigs})
	if err != nil {
		return nil, nil, err
	}
	return protected, warnings, nil
}

// generate plans the files the launch writes into EtcDir and returns the
// spec options that name them, with the rest of what the spec is made of
// but the command, environment, masks and workspace.
func (c *Container) generate(in Input, tree Tree) (SpecOptions, error) {
	p := in.Profile
	passwd, group, err := identityFiles(tree, c.User, in.Image == "")
	if err != nil {
		return SpecOptions{}, err
	}
	c.Files = map[string][]byte{"passwd": passwd, "group": group}
	binds := slices.Clone(c.View.Mounts)
	for i, b := range binds {
		if b.Kind == MountSystem && b.Writable {
			binds[i].Source = OverlayDir(in.Dir, b.Path)
		}
	}
	opts := SpecOptions{
		Cwd: in.Workdir, Hostname: in.Hostname, RootfsDir: c.Rootfs, NetNSPath: in.NetNSPath,
		User: c.User, CgroupsPath: in.ID, Binds: binds, Protected: c.Protected, HiddenPaths: c.View.Hidden,
		Passwd: filepath.Join(c.EtcDir, "passwd"), Group: filepath.Join(c.EtcDir, "group"),
		Init: in.Init, Terminal: in.Terminal,
	}
	if p.Network.Mode != policy.ModeHost {
		// The sandbox's only resolver is on loopback: the firewall
		// redirects port 53 of any address to egressd (filtered), and
		// nothing answers there in mode none (lookups fail at once).
		rc, hosts, err := EtcFiles(netip.MustParseAddr("127.0.0.1"), in.Hostname)
		if err != nil {
			return SpecOptions{}, err
		}
		c.Files["resolv.conf"], c.Files["hosts"] = rc, hosts
		opts.ResolvConf, opts.Hosts = filepath.Join(c.EtcDir, "resolv.conf"), filepath.Join(c.EtcDir, "hosts")
	}
	if in.TrustCA != nil {
		bundle, err := trustBundle(tree, in.ID, in.TrustCA)
		if err != nil {
			return SpecOptions{}, err
		}
		c.Files["ca-certificates.crt"] = bundle
		opts.TrustBundle, opts.TrustPaths = filepath.Join(c.EtcDir, "ca-certificates.crt"), trustPaths(tree)
	}
	if opts.Links, err = linkedFiles(tree, generatedDests(opts)); err != nil {
		return SpecOptions{}, err
	}
	return opts, nil
}

// findExecutable checks that argv0 names an executable file in the root
// file system the way exec would find it (a name in PATH, or a path), so a
// typo fails the launch with a clear error instead of the runtime's. A path
// the sandbox mounts over (the workspace, /tmp, ...) or a relative path
// cannot be checked beforehand and is left to exec.
func findExecutable(p *policy.Profile, t Tree, user User, argv0, pathEnv string) error {
	var candidates []string
	switch {
	case strings.HasPrefix(argv0, "/"):
		for _, sh := range shadowedPaths(p, user) {
			if argv0 == sh || strings.HasPrefix(argv0, sh+"/") {
				return nil
			}
		}
		candidates = []string{argv0}
	case strings.Contains(argv0, "/"):
		return nil
	default:
		for _, d := range searchDirs(pathEnv, false) {
			candidates = append(candidates, d+"/"+argv0)
		}
	}
	for _, c := range candidates {
		f, ok, err := t.stat(c)
		if err != nil {
			return fmt.Errorf("looking up the command: %w", err)
		}
		if ok && f.mode&0o111 != 0 {
			return nil
		}
	}
	if strings.HasPrefix(argv0, "/") {
		return fmt.Errorf("command %q not found in the sandbox's root file system (or not executable)", argv0)
	}
	return fmt.Errorf("command %q not found in the sandbox's PATH (%s)", argv0, pathEnv)
}
