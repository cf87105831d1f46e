package policy

import (
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Profile is a complete, resolved security profile for one sandbox: every
// section of a policy file, with where each value came from. Resolve builds
// it (built-in profile → policy files → per-launch flags); BuiltinProfile
// returns the bare built-ins. A Profile is a value to read: callers that
// change it are on their own (provenance is not updated).
type Profile struct {
	// Name is the canonical name of the built-in profile this one builds on
	// ("standard", never an alias).
	Name string

	Network    NetworkSettings
	Filesystem FilesystemSettings
	Process    ProcessSettings
	Env        EnvSettings
	Commands   CommandSettings

	// Sources records where every value came from. Keys are field keys as
	// written in a policy file, "section.key" ("process.memory"); a list
	// element is "section.key[value]" ("process.cap_add[CAP_NET_RAW]",
	// "filesystem.tmpfs[/tmp]", "env.pass[TERM]"); an env.set entry is
	// "env.set.NAME"; "profile" is where the base profile was named. Allow
	// and block rules are there too ("network.allow[*.github.com]"), with the
	// same source as their Rule.Source. A set field's own key
	// ("network.allow") is where the base profile set it.
	Sources map[string]Source
}

// NetworkSettings is the [network] section.
type NetworkSettings struct {
	// Mode is none (loopback only), filtered (everything through egressd) or
	// host (no network namespace at all).
	Mode Mode
	// Allow and Block are the pattern lists, in the order they were first
	// written; identical texts appear once, with the first source.
	Allow, Block []*Rule
	// DefaultPorts are the ports a portless allow rule allows. A policy always
	// has at least one; the built-ins use [80, 443].
	DefaultPorts []uint16
	// DNSBlockResponse is what the resolver answers for a denied name.
	DNSBlockResponse DNSResponse
	// UpstreamDNS are the resolvers egressd forwards allowed queries to.
	// Empty means the host's resolvers (its resolv.conf).
	UpstreamDNS []netip.AddrPort
	// Inspect are the hosts whose HTTPS egressd terminates, with their
	// request rules ([[network.inspect]], docs/inspection.md). Empty means
	// no TLS is terminated.
	Inspect []*InspectRule
	// Credentials are headers egressd sets on requests to inspected hosts
	// from secrets the sandbox never holds ([[network.credentials]]).
	Credentials []*Credential
}

// DNSResponse is the DNS answer code for a denied name.
type DNSResponse string

const (
	DNSNXDomain DNSResponse = "nxdomain"
	DNSRefused  DNSResponse = "refused"
)

// FilesystemSettings is the [filesystem] section.
type FilesystemSettings struct {
	// ReadOnly makes the sandbox's root file system read-only; only Tmpfs
	// paths and the workspace are writable. When false the root is a
	// throwaway overlay (docs/design.md: a writable root is never the host's).
	ReadOnly bool
	// Tmpfs are the writable scratch mounts, one per path.
	Tmpfs []Tmpfs
	// Workspace is the path inside the sandbox where the operator's
	// workspace directory is mounted (the only host path a sandbox may
	// change).
	Workspace string
	// MountCwd mounts the launcher's current directory at Workspace.
	MountCwd bool
	// Expose are host paths (absolute, clean) the sandbox also sees,
	// read-only, at the same path, on top of the host view (the system
	// directories the default root shows). Empty means none. Paths that
	// hold other users' or the launcher's data are refused
	// (ForbiddenHostPath).
	Expose []string
	// Volumes are host directories mounted into the sandbox, writable
	// unless marked read-only, under every profile (a read-only root
	// included). Empty means none.
	Volumes []Volume
	// Protect are paths relative to the workspace and to every writable
	// volume that the sandbox may not change or create (DefaultProtect in
	// every built-in profile); "NAME/" names a directory. Unprotect removes
	// entries, where the floor allows (EffectiveProtect).
	Protect, Unprotect []string
}

// Volume is one host directory mounted into the sandbox.
type Volume struct {
	// Host is the host path: absolute and clean.
	Host string
	// Path is where the sandbox sees it: absolute, or "~/..." under the
	// sandbox user's home (ExpandHome).
	Path string
	// ReadOnly mounts it read-only; the default is writable.
	ReadOnly bool
}

// String renders the volume in the policy file's syntax,
// "/srv/agents/42/claude:~/.claude:rw".
func (v Volume) String() string {
	mode := "rw"
	if v.ReadOnly {
		mode = "ro"
	}
	return v.Host + ":" + v.Path + ":" + mode
}

// EffectiveProtect is Protect without the entries Unprotect names, in
// Protect's order. Entries compare without a trailing "/".
func (f FilesystemSettings) EffectiveProtect() []string {
	var out []string
	for _, e := range f.Protect {
		if !slices.ContainsFunc(f.Unprotect, func(u string) bool { return ProtectID(u) == ProtectID(e) }) {
			out = append(out, e)
		}
	}
	return out
}

// ProtectID is a protected path's identity: the path without the trailing
// "/" that marks a directory.
func ProtectID(e string) string { return strings.TrimSuffix(e, "/") }

// Tmpfs is one tmpfs mount.
type Tmpfs struct {
	// Path is absolute, or starts with "~/" for a path under the sandbox
	// user's home directory. The profile keeps "~" symbolic; the sandbox
	// substitutes the home it gives the user (ExpandHome).
	Path string
	// Size is the mount's size limit in bytes; 0 means the kernel default
	// (half of RAM), still charged to the sandbox's memory limit.
	Size int64
	// Mode is the permission bits of the mount's root; 0 means 01777 for
	// paths outside the home directory and 0700 for "~/" paths.
	Mode uint32
	// Options are extra mount options: any of nosuid, nodev, noexec.
	Options []string
	// Source is where this mount was last written. A later layer naming the
	// same path sets the size and mode it gives and adds its options (an
	// option, being a restriction, is never removed).
	Source Source
}

// ExpandHome returns path with a leading "~/" (or a bare "~") replaced by
// home. Other paths are returned as they are.
func ExpandHome(path, home string) string {
	h := strings.TrimSuffix(home, "/")
	if path == "~" {
		if h == "" {
			return "/"
		}
		return h
	}
	if rest, ok := strings.CutPrefix(path, "~/"); ok {
		return h + "/" + rest
	}
	return path
}

// EffectiveMode is Mode, or the documented default when Mode is 0.
func (t Tmpfs) EffectiveMode() uint32 {
	if t.Mode != 0 {
		return t.Mode
	}
	if strings.HasPrefix(t.Path, "~") {
		return 0o700
	}
	return 0o1777
}

// String renders the mount in the policy file's string syntax:
// "/tmp:size=512m,mode=1777,nosuid,nodev".
func (t Tmpfs) String() string {
	var opts []string
	if t.Size > 0 {
		opts = append(opts, "size="+formatSize(t.Size, true))
	}
	if t.Mode != 0 {
		opts = append(opts, "mode="+strconv.FormatUint(uint64(t.Mode), 8))
	}
	opts = append(opts, t.Options...)
	if len(opts) == 0 {
		return t.Path
	}
	return t.Path + ":" + strings.Join(opts, ",")
}

// ProcessSettings is the [process] section.
type ProcessSettings struct {
	// User is who the command runs as inside the sandbox.
	User User
	// AllowHostUser lets User (other than root) be a uid or gid that an
	// account or group of the host uses; without it such a user is
	// refused, since the sandbox would own that account's files.
	AllowHostUser bool
	// PidsLimit caps the number of tasks; 0 means no limit.
	PidsLimit int64
	// Memory caps memory in bytes; 0 means no limit.
	Memory int64
	// CPUs caps CPU time in CPUs (1.5 = one and a half); 0 means no limit.
	CPUs float64
	// Timeout ends the command after this long; 0 means no timeout.
	Timeout time.Duration
	// NoNewPrivileges sets the no_new_privs bit (no setuid escalation).
	NoNewPrivileges bool
	// CapAdd are the capabilities kept, "CAP_X" form; every other one is
	// dropped. Empty means none.
	CapAdd []string
	// Seccomp is "strict", "moderate", "unconfined", or the absolute path of
	// a seccomp profile (OCI JSON) on the host.
	Seccomp string
}

// Seccomp levels.
const (
	SeccompStrict     = "strict"
	SeccompModerate   = "moderate"
	SeccompUnconfined = "unconfined"
)

// User is the identity a sandboxed command runs as: a numeric uid/gid pair,
// or a name to look up in the sandbox's own /etc/passwd.
type User struct {
	// Name is a user name; empty when the user is numeric.
	Name string
	// UID and GID are the numeric ids; meaningful only when Name is empty.
	UID, GID uint32
}

// String renders "uid:gid" or the name.
func (u User) String() string {
	if u.Name != "" {
		return u.Name
	}
	return strconv.FormatUint(uint64(u.UID), 10) + ":" + strconv.FormatUint(uint64(u.GID), 10)
}

// IsRoot reports whether the user is known to be root (uid 0 or the name
// "root").
func (u User) IsRoot() bool {
	if u.Name != "" {
		return u.Name == "root"
	}
	return u.UID == 0
}

// EnvSettings is the [env] section.
type EnvSettings struct {
	// Pass are the names of variables copied from the launcher's environment
	// when set there. Empty means none.
	Pass []string
	// Set are variables given fixed values (applied after Pass).
	Set map[string]string
}

// CommandSettings is the [commands] section, the launcher's check on the
// command it is asked to run (not on what that command runs in turn).
type CommandSettings struct {
	// Allow and Block are command names ("git") or absolute paths.
	Allow, Block []string
	// AllowlistOnly refuses any command not in Allow.
	AllowlistOnly bool
}

// NetworkPolicy returns the part of the profile the matcher compiles: the
// [network] section. Self is left empty: the caller knows egressd's own
// addresses.
func (p *Profile) NetworkPolicy() NetworkPolicy {
	return NetworkPolicy{
		Mode:             p.Network.Mode,
		Allow:            slices.Clone(p.Network.Allow),
		Block:            slices.Clone(p.Network.Block),
		DefaultPorts:     slices.Clone(p.Network.DefaultPorts),
		DNSBlockResponse: p.Network.DNSBlockResponse,
		UpstreamDNS:      slices.Clone(p.Network.UpstreamDNS),
		Inspect:          slices.Clone(p.Network.Inspect),
		Credentials:      slices.Clone(p.Network.Credentials),
	}
}

// Clone returns a deep copy (rules are shared: they are immutable).
func (p *Profile) Clone() *Profile {
	c := *p
	c.Network.Allow = slices.Clone(p.Network.Allow)
	c.Network.Block = slices.Clone(p.Network.Block)
	c.Network.DefaultPorts = slices.Clone(p.Network.DefaultPorts)
	c.Network.UpstreamDNS = slices.Clone(p.Network.UpstreamDNS)
	c.Network.Inspect = slices.Clone(p.Network.Inspect)
	c.Network.Credentials = slices.Clone(p.Network.Credentials)
	c.Filesystem.Tmpfs = slices.Clone(p.Filesystem.Tmpfs)
	for i := range c.Filesystem.Tmpfs {
		c.Filesystem.Tmpfs[i].Options = slices.Clone(c.Filesystem.Tmpfs[i].Options)
	}
	c.Filesystem.Expose = slices.Clone(p.Filesystem.Expose)
	c.Filesystem.Volumes = slices.Clone(p.Filesystem.Volumes)
	c.Filesystem.Protect = slices.Clone(p.Filesystem.Protect)
	c.Filesystem.Unprotect = slices.Clone(p.Filesystem.Unprotect)
	c.Process.CapAdd = slices.Clone(p.Process.CapAdd)
	c.Env.Pass = slices.Clone(p.Env.Pass)
	c.Env.Set = maps.Clone(p.Env.Set)
	if c.Env.Set == nil {
		c.Env.Set = map[string]string{}
	}
	c.Commands.Allow = slices.Clone(p.Commands.Allow)
	c.Commands.Block = slices.Clone(p.Commands.Block)
	c.Sources = maps.Clone(p.Sources)
	if c.Sources == nil {
		c.Sources = map[string]Source{}
	}
	return &c
}

// SourceOf returns where the value of field key came from (see Sources for
// the key syntax), or the zero Source if unrecorded.
func (p *Profile) SourceOf(key string) Source { return p.Sources[key] }

// elemKey is the Sources key of one list element.
func elemKey(field, value string) string { return field + "[" + value + "]" }

// formatSize renders a byte count with the largest binary unit that divides
// it: "4GiB", "512MiB", "1536". short selects docker-style units ("4g"),
// used inside tmpfs option strings.
func formatSize(n int64, short bool) string {
	units := []struct {
		long, short string
		size        int64
	}{
		{"TiB", "t", 1 << 40}, {"GiB", "g", 1 << 30}, {"MiB", "m", 1 << 20}, {"KiB", "k", 1 << 10},
	}
	for _, u := range units {
		if n >= u.size && n%u.size == 0 {
			if short {
				return strconv.FormatInt(n/u.size, 10) + u.short
			}
			return strconv.FormatInt(n/u.size, 10) + u.long
		}
	}
	return strconv.FormatInt(n, 10)
}
