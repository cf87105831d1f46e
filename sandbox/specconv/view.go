package specconv

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/egressd/egressd/policy"
)

// The host view is what of the host a sandbox's root file system shows.
// By default that is the host's system directories, read-only, and nothing
// else: no /home, /root, /srv, /opt, /mnt, /media, /var beyond the
// sandbox's own scratch /var/tmp, no other top-level directory. The
// programs in /usr find what they need there and in /etc; data of the
// host's users and services lives elsewhere. Operators add host paths
// (filesystem.expose, read-only; filesystem.volumes, writable), and
// --rootfs replaces the whole view with an image directory.
//
// The view is planned here (PlanView, pure: it reads the host, changes
// nothing) and applied by PrepareRootfs (the root's skeleton and, for a
// writable root, throwaway overlays) and BuildSpec (one bind mount per
// host path).

// SystemDirs are the host's top-level entries the default view shows, when
// the host has them: directories are bound read-only (a throwaway overlay
// under a writable root, for a user that may own files there), symbolic
// links (/bin -> usr/bin on a merged-/usr host) are copied into the root
// as they are.
//
//   - usr: the programs, libraries and toolchains (/usr/local/go
//     included: /usr/local is where the host installed software for every
//     user to run);
//   - bin, sbin, lib, lib32, lib64, libx32: the same on hosts without a
//     merged /usr (and the dynamic loader's path on every host);
//   - etc: what programs read at run time (ld.so.cache, ssl certificates,
//     alternatives, nsswitch, locale and time zone settings). What a host
//     keeps secret there is hidden (hiddenPaths: what other users may not
//     read, and HiddenEtcPaths), and the sandbox's own
//     passwd, group, hosts and resolv.conf are mounted over the host's.
//
// Not shown: /var (package databases, logs, mail, spools, services' data:
// programs run without them; the sandbox gets an empty /var with its own
// /var/tmp), /opt and /srv (third-party software and data: expose what a
// sandbox needs), /home, /root, /mnt, /media, /boot, and anything else at
// the top level.
var SystemDirs = []string{"bin", "etc", "lib", "lib32", "lib64", "libx32", "sbin", "usr"}

// HiddenEtcPaths are what the default view hides of the host's /etc by
// name (masked: an empty read-only file, or an empty read-only directory,
// where the host has the path), besides what the rule hides (see
// hiddenPaths): every entry of /etc the host keeps from its ordinary
// users, a file other users may not read or a directory they may not
// list, is hidden whatever its name, since a sandbox run as uid 0 would
// own it (password hashes, private and host keys, sssd, service
// credentials). The names are what the rule misses: the account lists
// that name the host's people, and the files hosts keep world-readable
// that hold credentials or identity (package-index and git credentials,
// container-runtime, cluster, CI-runner, mail-relay and cloud
// configuration, network secrets, /etc/environment, the machine id, the
// host's name, the operator's egressd policies), and the secret ones that
// some hosts leave readable. Masking hides a file; it cannot know every
// secret an operator keeps world-readable in /etc: use --rootfs with an
// image for a sandbox that must see nothing of the host.
var HiddenEtcPaths = []string{
	// Password hashes, and the account lists the sandbox's own passwd
	// and group leave out (login names).
	"/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/security/opasswd",
	"/etc/passwd-", "/etc/group-", "/etc/subuid", "/etc/subuid-", "/etc/subgid", "/etc/subgid-",
	"/etc/sudoers", "/etc/sudoers.d",
	// Private keys and service credentials.
	"/etc/ssl/private", "/etc/pki/tls/private", "/etc/letsencrypt", "/etc/krb5.keytab",
	"/etc/ipsec.secrets", "/etc/ppp/chap-secrets", "/etc/ppp/pap-secrets", "/etc/openvpn",
	"/etc/wpa_supplicant", "/etc/mysql/debian.cnf", "/etc/libvirt", "/etc/sssd",
	"/etc/ldap.secret", "/etc/pam_ldap.secret", "/etc/libnss-ldap.secret", "/etc/nslcd.conf",
	"/etc/samba/private", "/etc/samba/smbpasswd", "/etc/davfs2/secrets", "/etc/rsyncd.secrets",
	"/etc/ceph", "/etc/salt/pki", "/etc/puppetlabs/puppet/ssl", "/etc/chef",
	"/etc/vault.d", "/etc/consul.d", "/etc/nomad.d",
	// Mail relays' passwords.
	"/etc/postfix/sasl_passwd", "/etc/postfix/sasl_passwd.db", "/etc/exim4/passwd.client",
	"/etc/mail/authinfo", "/etc/msmtprc", "/etc/ssmtp", "/etc/fetchmailrc",
	// The host's identity and environment.
	"/etc/machine-id", "/etc/hostname", "/etc/environment",
	// Package-index and git credentials (tokens in index URLs, credential
	// helpers), netrc files.
	"/etc/pip.conf", "/etc/npmrc", "/etc/gitconfig", "/etc/netrc", "/etc/.netrc", "/etc/boto.cfg",
	"/etc/apt/auth.conf", "/etc/apt/auth.conf.d",
	// Container-runtime, cluster, CI-runner, network and cloud credentials
	// and configuration; the operator's egressd policies.
	"/etc/docker", "/etc/containerd", "/etc/containers/auth.json", "/etc/kubernetes", "/etc/rancher",
	"/etc/gitlab-runner", "/etc/buildkite-agent",
	"/etc/wireguard", "/etc/NetworkManager/system-connections", "/etc/netplan",
	"/etc/cloud", "/etc/egressd",
}

// Kinds of view mounts.
const (
	// MountSystem is a host system directory of the default view.
	MountSystem = "system"
	// MountExpose is a host path filesystem.expose adds, read-only.
	MountExpose = "expose"
	// MountVolume is a host path filesystem.volumes mounts.
	MountVolume = "volume"
)

// ViewMount is one host path the sandbox sees.
type ViewMount struct {
	// Path is where the sandbox sees it: absolute and clean.
	Path string `json:"path"`
	// Source is the host path, with symbolic links resolved.
	Source string `json:"source"`
	// Kind is MountSystem, MountExpose or MountVolume.
	Kind string `json:"kind"`
	// Writable: a writable volume, or a system directory made a throwaway
	// overlay (writes never reach the host; see ViewOptions.SystemWritable).
	// Otherwise the sandbox cannot change it.
	Writable bool `json:"writable"`
	// Origin is the setting that asked for it, with its source.
	Origin string `json:"origin"`
}

// ViewLink is a symbolic link at the top of the root (/bin -> usr/bin).
type ViewLink struct {
	Path   string `json:"path"`
	Target string `json:"target"`
}

// View is the file tree a sandbox starts with, before the runtime's and the
// profile's own mounts (/proc, tmpfs, the workspace) go on top.
type View struct {
	// Image is the directory the root is built on (--rootfs); "" means the
	// host view: an empty root with Links and Mounts.
	Image string `json:"image,omitempty"`
	// Links are the root's symbolic links (host view only).
	Links []ViewLink `json:"links,omitempty"`
	// Mounts are the host paths the sandbox sees, sorted by Path (a path
	// before those below it).
	Mounts []ViewMount `json:"mounts"`
	// Hidden are paths of the view the sandbox cannot see (HiddenEtcPaths,
	// host keys), each masked where the host has it.
	Hidden []string `json:"hidden,omitempty"`
}

// ViewOptions are the launch's inputs to PlanView that the profile does not
// hold.
type ViewOptions struct {
	// HostRoot is where the system directories are read; "" means "/".
	HostRoot string
	// Image is --rootfs: the root is this directory instead of the host
	// view. "" means the host view.
	Image string
	// Home is the sandbox user's home, for "~/" volume paths. Required
	// when a volume path starts with "~/".
	Home string
	// Workspace is the workspace inside the sandbox and WorkspaceDir the
	// host directory bound there ("" for a tmpfs workspace).
	Workspace, WorkspaceDir string
	// StateDir is the launcher's state directory, which no sandbox may see.
	StateDir string
	// Homes are the host accounts' home directories, which no sandbox may
	// see (nor what leads to them, nor their hidden entries).
	Homes []string
	// SystemWritable makes the system directories throwaway overlays the
	// sandbox may write (a writable root: what it writes never reaches the
	// host); otherwise they are read-only binds. Under a writable root the
	// launcher sets it only for a user that may own files there (root, or
	// a host account): any other user could not write a host directory
	// anyway, and the binds cost less.
	SystemWritable bool

	// hidden, when not nil, is what the host view hides of /etc, as the
	// same Convert found it a moment before (identity): /etc is walked
	// once per plan, not twice.
	hidden *[]string
}

// PlanView computes the view of a profile: the system directories (or the
// image), the exposed paths and the volumes, each checked against what no
// sandbox may see. It reads the host and changes nothing.
func PlanView(p *policy.Profile, o ViewOptions) (*View, error) {
	v, err := planSystemView(o.HostRoot, o.Image, p, o.SystemWritable, o.hidden)
	if err != nil {
		return nil, err
	}
	check := func(host, what string) (string, error) {
		return checkHostPath(host, what, o)
	}
	for _, e := range p.Filesystem.Expose {
		origin := fmt.Sprintf("filesystem.expose (%s)", p.SourceOf("filesystem.expose["+e+"]"))
		src, err := check(e, origin)
		if err != nil {
			return nil, err
		}
		if o.Image == "" {
			if sys := underSystemDir(e); sys != "" {
				return nil, fmt.Errorf("%s %s: the host view shows %s read-only already", origin, e, sys)
			}
		}
		v.Mounts = append(v.Mounts, ViewMount{Path: e, Source: src, Kind: MountExpose, Origin: origin})
	}
	for _, vol := range p.Filesystem.Volumes {
		origin := fmt.Sprintf("filesystem.volumes %s (%s)", vol, p.SourceOf("filesystem.volumes["+vol.String()+"]"))
		dest := vol.Path
		if strings.HasPrefix(dest, "~") {
			if o.Home == "" {
				return nil, fmt.Errorf("%s: the sandbox user has no home for ~", origin)
			}
			dest = policy.ExpandHome(dest, o.Home)
		}
		if err := checkMountTarget(dest); err != nil {
			return nil, fmt.Errorf("%s: %w", origin, err)
		}
		src, err := check(vol.Host, origin)
		if err != nil {
			return nil, err
		}
		if o.Image == "" {
			if sys := underSystemDir(dest); sys != "" {
				return nil, fmt.Errorf("%s: %s is inside the host view's %s, which the sandbox sees read-only; mount the volume elsewhere", origin, dest, sys)
			}
		}
		if o.WorkspaceDir != "" && (dest == o.Workspace || strings.HasPrefix(dest, o.Workspace+"/")) {
			return nil, fmt.Errorf("%s: %s is inside the workspace %s, a host directory (its mount point would be made there); mount the volume elsewhere", origin, dest, o.Workspace)
		}
		v.Mounts = append(v.Mounts, ViewMount{Path: dest, Source: src, Kind: MountVolume, Writable: !vol.ReadOnly, Origin: origin})
	}
	slices.SortStableFunc(v.Mounts, func(a, b ViewMount) int { return strings.Compare(a.Path, b.Path) })
	for i := 1; i < len(v.Mounts); i++ {
		if v.Mounts[i].Path == v.Mounts[i-1].Path {
			return nil, fmt.Errorf("%s and %s both mount %s", v.Mounts[i-1].Origin, v.Mounts[i].Origin, v.Mounts[i].Path)
		}
	}
	return v, nil
}

// planSystemView is the view without exposed paths and volumes: the host's
// system directories (read from hostRoot, "" meaning "/"; writable ones
// become throwaway overlays), or the image.
func planSystemView(hostRoot, image string, p *policy.Profile, writable bool, known *[]string) (*View, error) {
	if hostRoot == "" {
		hostRoot = "/"
	}
	v := &View{Image: image}
	if image == "" {
		for _, name := range SystemDirs {
			full := filepath.Join(hostRoot, name)
			fi, err := os.Lstat(full)
			switch {
			case errors.Is(err, fs.ErrNotExist):
				continue
			case err != nil:
				return nil, fmt.Errorf("the host view: %w", err)
			case fi.Mode()&fs.ModeSymlink != 0:
				target, err := os.Readlink(full)
				if err != nil {
					return nil, fmt.Errorf("the host view: %w", err)
				}
				v.Links = append(v.Links, ViewLink{Path: "/" + name, Target: target})
			case fi.IsDir():
				v.Mounts = append(v.Mounts, ViewMount{Path: "/" + name, Source: full, Kind: MountSystem,
					Writable: writable, Origin: "the host view (" + p.Name + ")"})
			}
		}
		if known != nil {
			v.Hidden = slices.Clone(*known)
		} else {
			hidden, err := hiddenPaths(hostRoot)
			if err != nil {
				return nil, err
			}
			v.Hidden = hidden
		}
	}
	return v, nil
}

// underSystemDir returns the system directory of the default view that p
// (a path inside the sandbox) lies in, or "".
func underSystemDir(p string) string {
	for _, d := range SystemDirs {
		if p == "/"+d || strings.HasPrefix(p, "/"+d+"/") {
			return "/" + d
		}
	}
	return ""
}

// hiddenPaths lists what the view hides of hostRoot's /etc: HiddenEtcPaths,
// the ssh keys (/etc/ssh/*key: host keys, a CA's key, whatever their
// mode), and every entry other users may not read (a file without o+r, a
// directory without o+rx; nothing below a hidden directory is listed).
// Symbolic links are not followed: what a link in /etc leads to in /etc
// is walked where it is, and the view shows nothing else it could lead to
// but /usr. A walk that fails refuses the launch.
func hiddenPaths(hostRoot string) ([]string, error) {
	out := slices.Clone(HiddenEtcPaths)
	etc := filepath.Join(hostRoot, "etc")
	keys, err := filepath.Glob(filepath.Join(etc, "ssh", "*key"))
	if err != nil {
		return nil, err
	}
	for _, k := range keys {
		out = append(out, "/etc/ssh/"+filepath.Base(k))
	}
	err = filepath.WalkDir(etc, func(p string, d fs.DirEntry, err error) error {
		switch {
		case err != nil && p == etc && errors.Is(err, fs.ErrNotExist):
			return fs.SkipAll
		case err != nil:
			return err
		case p == etc || d.Type()&fs.ModeSymlink != 0:
			return nil
		}
		fi, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil // gone since it was listed
		} else if err != nil {
			return err
		}
		if readableByOthers(fi.Mode()) {
			return nil
		}
		out = append(out, "/etc/"+filepath.ToSlash(strings.TrimPrefix(p, etc+"/")))
		if d.IsDir() {
			return fs.SkipDir
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("the host view: finding what /etc keeps from other users: %w", err)
	}
	slices.Sort(out)
	out = slices.Compact(out)
	// What lies below a hidden directory is hidden with it.
	kept := out[:0]
	for _, h := range out {
		if len(kept) > 0 && strings.HasPrefix(h, kept[len(kept)-1]+"/") {
			continue
		}
		kept = append(kept, h)
	}
	return kept, nil
}

// readableByOthers reports whether a user that is neither a file's owner
// nor in its group may read it (list and enter it, for a directory).
func readableByOthers(m fs.FileMode) bool {
	if m.IsDir() {
		return m&0o005 == 0o005
	}
	return m&0o004 != 0
}

// checkHostPath resolves host (an absolute clean host path) through its
// symbolic links and refuses what no sandbox may see: ForbiddenHostPath,
// the launcher's state directory, every host account's home, what leads to
// one, and a home's hidden entries (~/.ssh). It returns the resolved path.
func checkHostPath(host, what string, o ViewOptions) (string, error) {
	if err := checkHostPathOnce(host, host, what, o); err != nil {
		return "", err
	}
	resolved, err := filepath.EvalSymlinks(host)
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", what, host, err)
	}
	return resolved, checkHostPathOnce(host, resolved, what, o)
}

// checkHostPathOnce checks p, host itself or where its links lead.
func checkHostPathOnce(host, p, what string, o ViewOptions) error {
	if why := policy.ForbiddenHostPath(p); why != "" {
		return fmt.Errorf("%s %s: %s is never given to a sandbox: %s", what, host, p, why)
	}
	if o.StateDir != "" && (isAncestorOrSelf(p, o.StateDir) || isAncestorOrSelf(o.StateDir, p)) {
		return fmt.Errorf("%s %s: %s holds the launcher's state directory %s", what, host, p, o.StateDir)
	}
	for _, h := range o.Homes {
		if h == "/" {
			continue
		}
		if isAncestorOrSelf(p, h) {
			return fmt.Errorf("%s %s: %s is, or holds, the home directory %s of a host account", what, host, p, h)
		}
		if rest, ok := strings.CutPrefix(p, h+"/"); ok && strings.HasPrefix(rest, ".") {
			return fmt.Errorf("%s %s: %s is a hidden entry of the home directory %s of a host account (credentials and configuration live there)", what, host, p, h)
		}
	}
	return nil
}

// isAncestorOrSelf reports whether a is p or a directory above it.
func isAncestorOrSelf(a, p string) bool {
	return a == p || a == "/" || strings.HasPrefix(p, a+"/")
}

// Tree is the file tree a sandbox starts with, as the launcher reads it
// before the sandbox exists: to look up users, commands and toolchains
// where the sandbox will find them. It is a plain directory (an image, or
// a prepared root) or a View.
type Tree struct {
	dir  string
	view *View
}

// DirTree is the tree of directory dir.
func DirTree(dir string) Tree { return Tree{dir: dir} }

// Tree is the tree the view shows.
func (v *View) Tree() Tree {
	if v.Image != "" {
		return Tree{dir: v.Image, view: v}
	}
	return Tree{view: v}
}

// host returns where the sandbox path p (absolute, clean, its parents
// resolved) is on the host: the mount it lies in, else the image. For the
// host view's own entries (the root, its links, the directories leading to
// a mount) synth says what the sandbox sees instead.
func (t Tree) host(p string) (host string, synth *synthEntry) {
	if t.view != nil {
		for i := len(t.view.Mounts) - 1; i >= 0; i-- { // deepest first
			m := t.view.Mounts[i]
			if p == m.Path {
				return m.Source, nil
			}
			if rest, ok := strings.CutPrefix(p, m.Path+"/"); ok {
				return filepath.Join(m.Source, filepath.FromSlash(rest)), nil
			}
		}
		if t.view.Image == "" {
			if p == "/" {
				return "", &synthEntry{name: "/", mode: fs.ModeDir | 0o755}
			}
			for _, l := range t.view.Links {
				if p == l.Path {
					return "", &synthEntry{name: path.Base(p), mode: fs.ModeSymlink | 0o777, target: l.Target}
				}
			}
			for _, m := range t.view.Mounts {
				if strings.HasPrefix(m.Path, p+"/") {
					return "", &synthEntry{name: path.Base(p), mode: fs.ModeDir | 0o755}
				}
			}
			return "", &synthEntry{} // not in the view
		}
	}
	return filepath.Join(t.dir, filepath.FromSlash(p)), nil
}

// synthEntry is an entry of the host view's root, which exists only in the
// sandbox. The zero value is a missing entry.
type synthEntry struct {
	name   string
	mode   fs.FileMode
	target string
}

func (e *synthEntry) Name() string       { return e.name }
func (e *synthEntry) Size() int64        { return 0 }
func (e *synthEntry) Mode() fs.FileMode  { return e.mode }
func (e *synthEntry) ModTime() time.Time { return time.Time{} }
func (e *synthEntry) IsDir() bool        { return e.mode.IsDir() }
func (e *synthEntry) Sys() any           { return nil }

func (t Tree) lstat(p string) (fs.FileInfo, error) {
	h, synth := t.host(p)
	if synth != nil {
		if synth.name == "" {
			return nil, &fs.PathError{Op: "lstat", Path: p, Err: syscall.ENOENT}
		}
		return synth, nil
	}
	return os.Lstat(h)
}

func (t Tree) readlink(p string) (string, error) {
	h, synth := t.host(p)
	if synth != nil {
		if synth.mode&fs.ModeSymlink == 0 {
			return "", &fs.PathError{Op: "readlink", Path: p, Err: syscall.EINVAL}
		}
		return synth.target, nil
	}
	return os.Readlink(h)
}

// hostFile returns the host path of the sandbox path p (resolved), or ""
// when p is an entry of the host view's own root (no file on the host).
func (t Tree) hostFile(p string) string {
	h, synth := t.host(p)
	if synth != nil {
		return ""
	}
	return h
}
