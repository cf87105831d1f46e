package policyimport

import (
	"strconv"
	"strings"

	"github.com/egressd/egressd/internal/draft"
	"github.com/egressd/egressd/policy"
)

// agentkernel (agentkernel.toml). The effective permissions are agentkernel's:
// the [security] profile's (or, with [agent] compatibility_mode, that agent
// profile's), then [security] network and mount_cwd, then the other
// documented [security] keys.
//
//	[security] network            → network.mode none | filtered
//	[security.domains] allow      exact names, *.x (x and below) → network.allow; with
//	                              allowlist_only = false every name is allowed (`*`)
//	[security.domains] block      → network.block
//	[security.commands]           → [commands] allow, block, allowlist_only
//	[security] read_only, mount_cwd, pass_env, seccomp; [resources] → filesystem, env, process

// akPerms are agentkernel's permissions for a profile.
type akPerms struct {
	network, mountCwd, mountHome, passEnv, readOnly bool
	memoryMB                                        int64 // 0: unlimited
	cpuPercent                                      int64 // 0: unlimited
	seccomp                                         string
}

var akProfiles = map[string]akPerms{
	"permissive":  {network: true, mountCwd: true, mountHome: true, passEnv: true, seccomp: "default"},
	"moderate":    {network: true, memoryMB: 512, cpuPercent: 100, seccomp: "moderate"},
	"restrictive": {readOnly: true, memoryMB: 256, cpuPercent: 50, seccomp: "restrictive"},
}

// akCompat are the permissions of the [agent] compatibility modes, which
// replace the [security] profile's.
func akCompat(mode string) (akPerms, bool) {
	switch strings.ToLower(mode) {
	case "native", "default":
		return akProfiles["moderate"], true
	case "claude", "claude-code", "claudecode":
		p := akProfiles["moderate"]
		p.mountCwd, p.passEnv, p.seccomp = true, false, "ai-agent"
		return p, true
	case "codex", "openai-codex":
		p := akProfiles["restrictive"]
		p.network, p.mountCwd, p.seccomp = true, true, "ai-agent"
		return p, true
	case "gemini", "gemini-cli":
		p := akProfiles["moderate"]
		p.mountCwd, p.seccomp = true, "ai-agent"
		return p, true
	}
	return akPerms{}, false
}

// akPassEnv are the variables agentkernel passes with pass_env; PATH and
// HOME are left to the sandbox, which sets both for its own user.
var akPassEnv = []string{"USER", "LANG", "LC_ALL", "TERM"}

func importAgentkernel(im *importer) error {
	root := im.root
	im.keys(root, []string{"security", "resources", "agent"}, map[string]string{
		"sandbox": "the sandbox's name and image are the launcher's business (--rootfs), not a policy",
		"build":   "images are the launcher's --rootfs, not a policy",
		"network": "agentkernel's vsock settings (Firecracker)",
		"files":   "files injected into the sandbox are not a policy; mount them with the launcher",
	})
	sec, err := im.object(root, "security")
	if err != nil {
		return err
	}
	im.keys(sec, []string{"profile", "network", "mount_cwd", "mount_home", "pass_env", "read_only", "seccomp", "domains", "commands"}, nil)

	// The base permissions.
	profName, profWhy := "moderate", "[security] profile (agentkernel default)"
	prof, err := im.str(sec, "profile")
	if err != nil {
		return err
	}
	if prof != nil {
		profName, profWhy = strings.ToLower(prof.str), im.origin(prof)
		if profName == "custom" {
			profName = "moderate" // agentkernel: custom starts from the defaults, moderate's
		}
	}
	perms, ok := akProfiles[profName]
	if !ok {
		return &lineError{line: prof.line, msg: "security.profile must be \"permissive\", \"moderate\", \"restrictive\" or \"custom\", not " + draft.Quote(prof.str)}
	}
	agent, err := im.object(root, "agent")
	if err != nil {
		return err
	}
	im.keys(agent, []string{"compatibility_mode"}, map[string]string{"preferred": ""})
	compat, err := im.str(agent, "compatibility_mode")
	if err != nil {
		return err
	}
	if compat != nil {
		if p, ok := akCompat(compat.str); ok {
			perms, profWhy, prof = p, im.origin(compat), compat
			im.warn(compat, Note, "agentkernel takes the permissions of this agent profile instead of [security] profile; its built-in domain lists are not enforced by agentkernel and are not imported")
		}
	}
	why := func(what string) string { return profWhy + ": " + what }

	// Overrides.
	type override struct {
		key string
		dst *bool
	}
	whys := map[string]string{}
	for _, o := range []override{{"network", &perms.network}, {"mount_cwd", &perms.mountCwd}, {"mount_home", &perms.mountHome},
		{"pass_env", &perms.passEnv}, {"read_only", &perms.readOnly}} {
		n, err := im.boolean(sec, o.key)
		if err != nil {
			return err
		}
		if n != nil {
			*o.dst, whys[o.key] = n.b, im.origin(n)
		}
	}
	reason := func(key, what string) (string, *node) {
		if w, ok := whys[key]; ok {
			return w, sec.get(key)
		}
		return why(what), prof
	}

	// Network.
	domains, err := im.object(sec, "domains")
	if err != nil {
		return err
	}
	netWhy, netNode := reason("network", "network "+strconv.FormatBool(perms.network))
	if !perms.network {
		im.baseProfile(policy.ModeNone, netWhy)
		if domains != nil && len(domains.keys) > 0 {
			im.warn(domains, Note, "not imported: no effect, the network is off")
		}
	} else {
		im.baseProfile(policy.ModeFiltered, netWhy)
		if err := im.akDomains(domains, netNode); err != nil {
			return err
		}
	}

	// Filesystem, environment, process.
	w, n := reason("read_only", "read_only "+strconv.FormatBool(perms.readOnly))
	im.set("filesystem.read_only", draft.Bool(perms.readOnly), n, w)
	w, n = reason("mount_cwd", "mount_cwd "+strconv.FormatBool(perms.mountCwd))
	im.set("filesystem.mount_cwd", draft.Bool(perms.mountCwd), n, w)
	if perms.mountHome {
		_, n := reason("mount_home", "")
		im.warn(n, Narrower, "mount_home: egressd never mounts the home directory (mount it with the launcher if the sandbox needs it)")
	}
	if perms.passEnv {
		w, n := reason("pass_env", "pass_env true")
		for _, v := range akPassEnv {
			im.out.Append("env.pass", v, w)
		}
		im.warn(n, Narrower, "pass_env also passes PATH and HOME; egressd's sandbox sets both for its own user")
	}
	if err := im.akResources(perms, why); err != nil {
		return err
	}
	if err := im.akSeccomp(sec, perms, why, prof); err != nil {
		return err
	}
	return im.akCommands(sec)
}

// akDomains translates [security.domains]. agentkernel's `*.x` matches x
// and every name below it (egressd's `.x`); any other `*` is a literal
// character, so such an entry matches no name.
func (im *importer) akDomains(domains, netNode *node) error {
	im.keys(domains, []string{"allow", "block", "allowlist_only"}, nil)
	allow, err := im.strings(domains, "allow")
	if err != nil {
		return err
	}
	block, err := im.strings(domains, "block")
	if err != nil {
		return err
	}
	only, err := im.boolean(domains, "allowlist_only")
	if err != nil {
		return err
	}
	if len(allow)+len(block) > 0 || only != nil && only.b {
		im.warn(domains, Note, "agentkernel does not enforce [security.domains] at run time (its documentation says so); egressd does")
	}
	im.out.EnsureList("network.allow", "")
	if only == nil || !only.b {
		src := netNode
		comment := "[security.domains] allowlist_only is false: agentkernel allows every domain"
		if only != nil {
			src, comment = only, im.origin(only)+": every domain"
		}
		im.out.Append("network.allow", "*", comment)
		im.warn(src, Narrower, "agentkernel allows every destination; egressd's `*` allows every name, not bare IP addresses, and keeps the address guard")
		im.anyPort(src)
		if len(allow) > 0 {
			im.warn(domains.get("allow"), Note, "allow entries have no effect without allowlist_only (every domain is allowed)")
		}
	} else {
		for _, e := range allow {
			pat, ok := akPattern(e.str)
			if !ok {
				im.warn(e, Note, "%s matches no domain in agentkernel (only a leading `*.` is a wildcard); nothing to allow", draft.Quote(e.str))
				continue
			}
			if im.rule("network.allow", pat, e, im.origin(e)) {
				im.anyPort(e)
			}
		}
	}
	for _, e := range block {
		pat, ok := akPattern(e.str)
		if !ok {
			im.warn(e, Note, "%s matches no domain in agentkernel (only a leading `*.` is a wildcard); nothing to block", draft.Quote(e.str))
			continue
		}
		im.rule("network.block", pat, e, im.origin(e))
	}
	return nil
}

// akPattern translates an agentkernel domain pattern; false when it can
// match no domain.
func akPattern(s string) (string, bool) {
	if rest, ok := strings.CutPrefix(s, "*."); ok {
		if strings.Contains(rest, "*") {
			return "", false
		}
		return "." + rest, true
	}
	if strings.Contains(s, "*") {
		return "", false
	}
	return s, true
}

// akResources maps memory and CPU: [resources] when written, else the
// profile's limits.
func (im *importer) akResources(perms akPerms, why func(string) string) error {
	res, err := im.object(im.root, "resources")
	if err != nil {
		return err
	}
	im.keys(res, []string{"vcpus", "memory_mb"}, nil)
	mem, err := im.number(res, "memory_mb")
	if err != nil {
		return err
	}
	switch {
	case mem != nil && mem.num >= 1 && mem.num == float64(int64(mem.num)) && mem.num < 1<<40:
		im.set("process.memory", draft.String(policy.FormatBytes(int64(mem.num)<<20)), mem, im.origin(mem))
	case mem != nil:
		im.warn(mem, Review, "not imported: memory_mb must be a whole, positive number")
	case perms.memoryMB > 0:
		im.set("process.memory", draft.String(policy.FormatBytes(perms.memoryMB<<20)), nil, why("memory "+strconv.FormatInt(perms.memoryMB, 10)+" MB"))
	default:
		im.set("process.memory", "0", nil, why("no memory limit"))
	}
	cpus, err := im.number(res, "vcpus")
	if err != nil {
		return err
	}
	switch {
	case cpus != nil && cpus.num > 0:
		im.set("process.cpus", draft.Float(cpus.num), cpus, im.origin(cpus))
	case cpus != nil:
		im.warn(cpus, Review, "not imported: vcpus must be positive")
	case perms.cpuPercent > 0:
		im.set("process.cpus", draft.Float(float64(perms.cpuPercent)/100), nil, why("CPU "+strconv.FormatInt(perms.cpuPercent, 10)+"%"))
	default:
		im.set("process.cpus", "0.0", nil, why("no CPU limit"))
	}
	return nil
}

// akSeccomp maps agentkernel's seccomp profiles. The lists differ from
// egressd's, so every mapping but a custom file asks for a review.
func (im *importer) akSeccomp(sec *node, perms akPerms, why func(string) string, profNode *node) error {
	n, err := im.str(sec, "seccomp")
	if err != nil {
		return err
	}
	name, w := perms.seccomp, why("seccomp "+strconv.Quote(perms.seccomp))
	if n != nil {
		name, w = n.str, im.origin(n)
	} else {
		n = profNode
	}
	var level string
	switch name {
	case "default", "moderate", "ai-agent":
		level = "moderate"
	case "restrictive":
		level = "strict"
	default:
		if !strings.HasPrefix(name, "/") {
			im.warn(n, Review, "not imported: egressd needs the absolute path of a Docker-format seccomp profile; the base profile's filter applies")
			return nil
		}
		im.set("process.seccomp", draft.String(name), n, w)
		return nil
	}
	im.set("process.seccomp", draft.String(level), n, w)
	im.warn(n, Review, "agentkernel's %s seccomp profile and egressd's %s are different syscall lists; check your workload under it", draft.Quote(name), level)
	return nil
}

// akCommands maps [security.commands] to egressd's [commands]: the same
// keys. egressd's block list holds for every process of the sandbox,
// agentkernel's for the commands it launches, so egressd's is no wider.
func (im *importer) akCommands(sec *node) error {
	cmds, err := im.object(sec, "commands")
	if err != nil || cmds == nil {
		return err
	}
	im.keys(cmds, []string{"allow", "block", "allowlist_only"}, nil)
	for _, list := range []string{"allow", "block"} {
		entries, err := im.strings(cmds, list)
		if err != nil {
			return err
		}
		for _, e := range entries {
			key := "commands." + list
			if err := draft.Check(key, draft.String(e.str)); err != nil {
				eff, what := Narrower, "not allowed"
				if list == "block" {
					eff, what = Broader, "NOT blocked"
				}
				im.warn(e, eff, "%s: %v", what, err)
				continue
			}
			if !im.out.Has(key, e.str) {
				im.out.Append(key, e.str, im.origin(e))
			}
		}
	}
	only, err := im.boolean(cmds, "allowlist_only")
	if err != nil {
		return err
	}
	if only != nil {
		im.set("commands.allowlist_only", draft.Bool(only.b), only, im.origin(only))
	}
	return nil
}
