package policy

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
)

// DefaultProfile is the built-in profile used when neither the launch nor a
// policy file names one.
const DefaultProfile = "standard"

// StandardAllow returns the allow list of the standard profile: the common
// package registries, git hosts and AI APIs a coding agent needs.
func StandardAllow() []string { return slices.Clone(standardAllow) }

var standardAllow = []string{
	"github.com",
	"api.github.com",
	"raw.githubusercontent.com",
	"codeload.github.com",
	"objects.githubusercontent.com",
	"registry.npmjs.org",
	"pypi.org",
	"files.pythonhosted.org",
	"crates.io",
	"static.crates.io",
	"index.crates.io",
	"proxy.golang.org",
	"sum.golang.org",
	"rubygems.org",
	"registry-1.docker.io",
	"api.anthropic.com",
	"api.openai.com",
	"api.githubcopilot.com",
}

// profileAliases maps names from the field to the built-in they mean.
var profileAliases = map[string]string{
	"permissive":  "open",
	"moderate":    "standard",
	"restrictive": "offline",
}

// builtinNames in order from least to most restrictive.
var builtinNames = []string{"open", "standard", "strict", "offline"}

// BuiltinNames returns the built-in profile names, least restrictive first.
// Aliases are not included; see ProfileAliases.
func BuiltinNames() []string { return slices.Clone(builtinNames) }

// ProfileAliases returns alias → built-in profile name.
func ProfileAliases() map[string]string {
	m := make(map[string]string, len(profileAliases))
	for k, v := range profileAliases {
		m[k] = v
	}
	return m
}

// CanonicalProfileName resolves an alias to the built-in profile name and
// reports whether name is a built-in or an alias.
func CanonicalProfileName(name string) (string, bool) {
	if a, ok := profileAliases[name]; ok {
		return a, true
	}
	if slices.Contains(builtinNames, name) {
		return name, true
	}
	return "", false
}

// allProfileNames are the names and aliases, sorted, for did-you-mean hints.
func allProfileNames() []string {
	names := slices.Clone(builtinNames)
	for a := range profileAliases {
		names = append(names, a)
	}
	sort.Strings(names)
	return names
}

// standardEnvPass are the variables the standard and strict profiles copy
// from the launcher. PATH and HOME are not among them: the sandbox sets
// both for its own user (a host PATH or HOME means nothing inside).
var standardEnvPass = []string{"LANG", "LC_ALL", "TERM", "TZ"}

// DefaultUID and DefaultGID are the sandbox user of every built-in profile
// but open: ids no account or group of a host uses. They lie in the range
// 1879048192-2147352575, which systemd's UID/GID allocation documents as
// unused (above the container ranges nspawn hands out, below the foreign
// range and below 2^31, which some programs still treat as signed), and far
// above what useradd gives login accounts (1000-60000) and subordinate
// ranges (/etc/subuid, from 100000). The launcher still checks the host's
// account databases before every launch.
const (
	DefaultUID = 2000000000
	DefaultGID = 2000000000
)

// DefaultProtect returns the paths every built-in profile protects inside
// the workspace and every writable volume (filesystem.protect): the files
// that make a host run code when a person works in that directory after
// the sandbox did, without choosing to run them. "NAME/" is a directory.
func DefaultProtect() []string { return slices.Clone(defaultProtect) }

var defaultProtect = []string{
	// git's hooks and configuration, and what redirects git to others:
	// commondir, the per-worktree config, submodules' and linked
	// worktrees' git directories; info/attributes, which git reads from
	// .git and not from the tree (it selects the filters and diff drivers
	// the configuration defines: .gitattributes does the same in the open,
	// a tracked file a person sees in git diff, and is left as the
	// project's). The sandbox scans what these name (see the sandbox
	// package's PlanProtectRoots): included files, core.hooksPath, a .git
	// file's git directory.
	".git/hooks/",
	".git/config",
	".git/commondir",
	".git/config.worktree",
	".git/modules/",
	".git/worktrees/",
	".git/info/attributes",
	".gitmodules",
	".gitconfig",
	// Shell start-up files: bash (login and interactive), sh, zsh (every
	// zsh reads .zshenv), where the directory is a home or a ZDOTDIR.
	".bashrc",
	".bash_profile",
	".bash_login",
	".profile",
	".zshenv",
	".zshrc",
	".zprofile",
	".zlogin",
	// direnv runs .envrc on cd.
	".envrc",
	// Editors' project settings that run programs: VS Code's tasks and
	// launch configurations and its MCP servers, JetBrains' run
	// configurations, Zed's tasks and language-server binaries, Emacs'
	// directory variables (eval), Neovim's and Vim's exrc files, and dev
	// containers' initializeCommand (run on the host).
	".vscode/",
	".idea/",
	".zed/",
	".dir-locals.el",
	".nvim.lua",
	".nvimrc",
	".exrc",
	".devcontainer/",
	// AI agents' project settings: MCP servers (commands the agent
	// starts), hooks and allowed commands of Claude Code, Cursor, Gemini
	// CLI, Continue, Amazon Q and Roo Code; aider's lint and test commands.
	".mcp.json",
	".claude/",
	".cursor/",
	".gemini/",
	".continue/",
	".amazonq/",
	".roo/",
	".aider.conf.yml",
}

// readOnlyTmpfs are the scratch mounts of the read-only profiles.
func readOnlyTmpfs() []Tmpfs {
	const mib = 1 << 20
	safe := []string{"nodev", "nosuid"} // sorted, as decoded options are
	return []Tmpfs{
		{Path: "/tmp", Size: 512 * mib, Mode: 0o1777, Options: safe},
		{Path: "/var/tmp", Size: 256 * mib, Mode: 0o1777, Options: safe},
		{Path: "~/.cache", Size: 512 * mib, Mode: 0o700, Options: safe},
		{Path: "~/.npm", Size: 512 * mib, Mode: 0o700, Options: safe},
		{Path: "~/.cargo", Size: 512 * mib, Mode: 0o700, Options: safe},
		{Path: "~/.local/share", Size: 256 * mib, Mode: 0o700, Options: safe},
	}
}

// BuiltinProfile returns a fresh copy of the built-in profile name (an alias
// is accepted), every value sourced "builtin:<name>".
//
//	             open       standard      strict        offline
//	network      host       filtered      filtered      none
//	allow        -          StandardAllow() (empty)     -
//	root fs      writable   writable      read-only     read-only
//	tmpfs        -          -             /tmp /var/tmp ~/.cache ~/.npm ~/.cargo ~/.local/share
//	user         0:0        DefaultUID:DefaultGID (2000000000:2000000000)
//	host user    allowed    refused       refused       refused
//	no_new_privs false      true          true          true
//	caps         none       none          none          none
//	seccomp      unconfined moderate      strict        strict
//	pids         no limit   256           128           128
//	memory       no limit   4GiB          2GiB          2GiB
//	cpus         no limit   2             1             1
//	env pass     PATH HOME LANG LC_ALL TERM TZ (open); LANG LC_ALL TERM TZ (standard, strict); none (offline)
//
// Every profile: default_ports [80, 443], dns_block_response nxdomain,
// upstream_dns empty (the host's resolvers), workspace /sandbox,
// mount_cwd false, no exposed paths or volumes, protect DefaultProtect(),
// no timeout, no command lists.
func BuiltinProfile(name string) (*Profile, error) {
	canon, ok := CanonicalProfileName(name)
	if !ok {
		hint := meanHint(name, allProfileNames())
		if hint == "" {
			hint = "one of " + quotedList(allProfileNames())
		}
		return nil, &Error{Msg: fmt.Sprintf("unknown profile %q", name), Hint: hint}
	}
	src := Builtin(canon)
	p := &Profile{
		Name:    canon,
		Sources: map[string]Source{},
		Network: NetworkSettings{
			Mode:             ModeFiltered,
			DefaultPorts:     []uint16{80, 443},
			DNSBlockResponse: DNSNXDomain,
		},
		Filesystem: FilesystemSettings{Workspace: "/sandbox", Protect: DefaultProtect()},
		Process: ProcessSettings{
			User:            User{UID: DefaultUID, GID: DefaultGID},
			NoNewPrivileges: true,
		},
		Env: EnvSettings{Set: map[string]string{}},
	}
	switch canon {
	case "open":
		p.Network.Mode = ModeHost
		p.Process.User = User{UID: 0, GID: 0}
		p.Process.AllowHostUser = true
		p.Process.NoNewPrivileges = false
		p.Process.Seccomp = SeccompUnconfined
		p.Env.Pass = []string{"HOME", "LANG", "LC_ALL", "PATH", "TERM", "TZ"}
	case "standard":
		for _, text := range standardAllow {
			r, err := ParseRule(text, src)
			if err != nil {
				return nil, fmt.Errorf("built-in profile %s: %w", canon, err)
			}
			p.Network.Allow = append(p.Network.Allow, r)
		}
		p.Process.PidsLimit = 256
		p.Process.Memory = 4 << 30
		p.Process.CPUs = 2
		p.Process.Seccomp = SeccompModerate
		p.Env.Pass = slices.Clone(standardEnvPass)
	case "strict":
		p.Filesystem.ReadOnly = true
		p.Filesystem.Tmpfs = readOnlyTmpfs()
		p.Process.PidsLimit = 128
		p.Process.Memory = 2 << 30
		p.Process.CPUs = 1
		p.Process.Seccomp = SeccompStrict
		p.Env.Pass = slices.Clone(standardEnvPass)
	case "offline":
		p.Network.Mode = ModeNone
		p.Filesystem.ReadOnly = true
		p.Filesystem.Tmpfs = readOnlyTmpfs()
		p.Process.PidsLimit = 128
		p.Process.Memory = 2 << 30
		p.Process.CPUs = 1
		p.Process.Seccomp = SeccompStrict
	}
	for i := range p.Filesystem.Tmpfs {
		p.Filesystem.Tmpfs[i].Source = src
	}
	p.sourceAll(src)
	return p, nil
}

// sourceAll records src as the origin of every value p holds (rules keep
// their own sources).
func (p *Profile) sourceAll(src Source) {
	p.Sources["profile"] = src
	for _, f := range fields {
		switch {
		case f.key == "env.set":
			for k := range p.Env.Set {
				p.Sources["env.set."+k] = src
			}
		case f.kind == setField:
			p.Sources[f.key] = src
			ids, _ := f.items(p)
			for _, id := range ids {
				p.Sources[elemKey(f.key, id)] = src
			}
		default:
			p.Sources[f.key] = src
		}
	}
}

func quotedList(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = strconv.Quote(n)
	}
	return joinOr(q)
}

// joinOr renders "a, b or c".
func joinOr(items []string) string {
	switch len(items) {
	case 0:
		return ""
	case 1:
		return items[0]
	}
	out := ""
	for i, it := range items[:len(items)-1] {
		if i > 0 {
			out += ", "
		}
		out += it
	}
	return out + " or " + items[len(items)-1]
}
