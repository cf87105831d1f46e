package policyimport

import (
	"math"
	"strings"
	"time"

	"github.com/egressd/egressd/internal/draft"
	"github.com/egressd/egressd/policy"
)

// isol8 (isol8.config.json): the file is deep-merged with isol8's built-in
// defaults, so a key the file leaves out takes isol8's default, and the
// import writes that default too (marked "isol8 default").
//
//	defaults.network        none | host | filtered          → network.mode
//	network.whitelist       host regexes; empty: every host → network.allow (exact translations only)
//	network.blacklist       host regexes, win over the list → network.block
//	defaults.memoryLimit    "512m"                          → process.memory
//	defaults.cpuLimit       1                               → process.cpus
//	defaults.timeoutMs      30000                           → process.timeout
//	defaults.readonlyRootFs true                            → filesystem.read_only
//	defaults.tmpSize        "256m", /tmp noexec             → filesystem.tmpfs
//	security.seccomp        strict | unconfined | custom    → process.seccomp
var isol8Defaults = struct {
	network, memory, tmpSize, seccomp string
	cpus                              float64
	timeoutMS                         int64
	readOnly                          bool
}{network: "none", memory: "512m", tmpSize: "256m", seccomp: "strict", cpus: 1, timeoutMS: 30000, readOnly: true}

var isol8Ignored = map[string]string{
	"$schema":        "",
	"debug":          "isol8's own logging",
	"maxConcurrent":  "isol8's server concurrency",
	"cleanup":        "isol8's container pruning",
	"poolStrategy":   "isol8's container pool",
	"poolSize":       "isol8's container pool",
	"prebuiltImages": "images are the launcher's --rootfs, not a policy",
	"dependencies":   "images are the launcher's --rootfs, not a policy",
	"remoteCode":     "isol8 fetches remote code on the host before a run; the sandbox's egress is not involved",
	"audit":          "egressd's decision log is `egressd serve --audit-log` (docs/audit.md)",
	"auth":           "isol8's API keys",
}

func importIsol8(im *importer) error {
	root := im.root
	im.keys(root, []string{"defaults", "network", "security"}, isol8Ignored)

	defaults, err := im.object(root, "defaults")
	if err != nil {
		return err
	}
	im.keys(defaults, []string{"network", "memoryLimit", "cpuLimit", "timeoutMs", "readonlyRootFs", "tmpSize"},
		map[string]string{"sandboxSize": "egressd's workspace tmpfs has no size setting in a policy"})

	// Network.
	modeNode, err := im.str(defaults, "network")
	if err != nil {
		return err
	}
	mode, modeWhy := isol8Defaults.network, "defaults.network (isol8 default)"
	if modeNode != nil {
		mode, modeWhy = modeNode.str, im.origin(modeNode)
	}
	netw, err := im.object(root, "network")
	if err != nil {
		return err
	}
	im.keys(netw, []string{"whitelist", "blacklist"}, nil)
	white, err := im.strings(netw, "whitelist")
	if err != nil {
		return err
	}
	black, err := im.strings(netw, "blacklist")
	if err != nil {
		return err
	}
	switch mode {
	case "none":
		im.baseProfile(policy.ModeNone, modeWhy)
		im.noEffect(netw, white, black, "defaults.network is \"none\": no network at all")
	case "host":
		im.baseProfile(policy.ModeHost, modeWhy)
		im.warn(modeNode, Note, "host network: egressd does not filter it either (and refuses it under any --floor but open)")
		im.noEffect(netw, white, black, "defaults.network is \"host\": isol8 does not filter")
	case "filtered":
		im.baseProfile(policy.ModeFiltered, modeWhy)
		im.isol8Rules(netw, white, black)
	default:
		return &lineError{line: modeNode.line, msg: "defaults.network must be \"none\", \"host\" or \"filtered\", not " + draft.Quote(mode)}
	}

	// Filesystem and process.
	ro, err := im.boolean(defaults, "readonlyRootFs")
	if err != nil {
		return err
	}
	if ro != nil {
		im.set("filesystem.read_only", draft.Bool(ro.b), ro, im.origin(ro))
	} else {
		im.set("filesystem.read_only", draft.Bool(isol8Defaults.readOnly), nil, "defaults.readonlyRootFs (isol8 default)")
	}
	tmp, err := im.str(defaults, "tmpSize")
	if err != nil {
		return err
	}
	size, why := isol8Defaults.tmpSize, "defaults.tmpSize (isol8 default); isol8 mounts /tmp noexec"
	if tmp != nil {
		size, why = tmp.str, im.origin(tmp)+"; isol8 mounts /tmp noexec"
	}
	if err := draft.Check("filesystem.tmpfs", draft.String("/tmp:size="+size)); err != nil {
		im.warn(tmp, Review, "not imported: /tmp size %s: %v", draft.Quote(size), err)
	} else {
		im.out.Append("filesystem.tmpfs", "/tmp:size="+size+",nodev,noexec,nosuid", why)
	}

	mem, err := im.str(defaults, "memoryLimit")
	if err != nil {
		return err
	}
	if mem != nil {
		im.set("process.memory", draft.String(mem.str), mem, im.origin(mem))
	} else {
		im.set("process.memory", draft.String(isol8Defaults.memory), nil, "defaults.memoryLimit (isol8 default)")
	}
	cpu, err := im.number(defaults, "cpuLimit")
	if err != nil {
		return err
	}
	if cpu != nil {
		im.set("process.cpus", draft.Float(cpu.num), cpu, im.origin(cpu))
	} else {
		im.set("process.cpus", draft.Float(isol8Defaults.cpus), nil, "defaults.cpuLimit (isol8 default)")
	}
	tmo, err := im.number(defaults, "timeoutMs")
	if err != nil {
		return err
	}
	ms, why := isol8Defaults.timeoutMS, "defaults.timeoutMs (isol8 default)"
	if tmo != nil {
		ms, why = int64(tmo.num), im.origin(tmo)
		if tmo.num <= 0 || tmo.num != math.Trunc(tmo.num) || tmo.num > 1e12 {
			ms = 0
		}
	}
	if ms > 0 {
		im.set("process.timeout", draft.String((time.Duration(ms) * time.Millisecond).String()), tmo, why)
	} else {
		im.warn(tmo, Review, "not imported: a timeout must be a whole, positive number of milliseconds")
	}

	// Seccomp.
	sec, err := im.object(root, "security")
	if err != nil {
		return err
	}
	im.keys(sec, []string{"seccomp", "customProfilePath"}, nil)
	sc, err := im.str(sec, "seccomp")
	if err != nil {
		return err
	}
	custom, err := im.str(sec, "customProfilePath")
	if err != nil {
		return err
	}
	level, why := isol8Defaults.seccomp, "security.seccomp (isol8 default)"
	if sc != nil {
		level, why = sc.str, im.origin(sc)
	}
	switch level {
	case "strict", "safety":
		im.set("process.seccomp", draft.String("strict"), sc, why)
		im.warn(sc, Review, "isol8's %s filter and egressd's strict filter are different syscall lists (egressd's refuses more, e.g. io_uring and unlisted socket families); check your workload under it", level)
	case "unconfined":
		im.set("process.seccomp", draft.String("unconfined"), sc, why)
	case "custom":
		if custom == nil {
			return &lineError{line: sc.line, msg: "security.seccomp is \"custom\" but security.customProfilePath is missing"}
		}
		if !strings.HasPrefix(custom.str, "/") {
			im.warn(custom, Review, "not imported: egressd needs the absolute path of a Docker-format seccomp profile; the base profile's strict filter applies")
		} else {
			im.set("process.seccomp", draft.String(custom.str), custom, im.origin(custom))
		}
	default:
		return &lineError{line: sc.line, msg: "security.seccomp must be \"strict\", \"unconfined\" or \"custom\", not " + draft.Quote(level)}
	}
	return nil
}

// noEffect notes filter lists the network mode ignores.
func (im *importer) noEffect(netw *node, white, black []*node, why string) {
	if len(white)+len(black) > 0 {
		im.warn(netw, Note, "%d whitelist and %d blacklist rules not imported: %s", len(white), len(black), why)
	}
}

// isol8Rules translates the whitelist and blacklist regexes.
func (im *importer) isol8Rules(netw *node, white, black []*node) {
	im.out.EnsureList("network.allow", "")
	if len(white) == 0 {
		im.out.Append("network.allow", "*", "network.whitelist is empty: isol8 allows every host")
		im.warn(netw, Narrower, "isol8 allows every host, IP addresses included; egressd's `*` allows every name, not bare IP addresses, and keeps the address guard")
		im.anyPort(netw)
	}
	for _, e := range white {
		t := TranslateRegex(e.str)
		switch {
		case t.Err != nil:
			im.warn(e, Narrower, "not allowed: %s cannot be translated exactly: %v", draft.Quote(e.str), t.Err)
			continue
		case len(t.Patterns) == 0:
			im.warn(e, Note, "%s matches no host name egressd accepts; nothing to allow", draft.Quote(e.str))
			continue
		case t.IPs:
			im.warn(e, Narrower, "%s also matches IP addresses written as digits and dots; egressd's name patterns never match an address", draft.Quote(e.str))
		}
		for _, p := range t.Patterns {
			if im.rule("network.allow", p, e, im.origin(e)) {
				im.anyPort(e)
				if strings.Contains(p, "**") {
					im.warn(e, Note, "%s matches every name the regex matches, %s among them: anchor the regex (^...$) if that is not meant", p, unanchoredExample(p))
				}
			}
		}
	}
	for _, e := range black {
		t := TranslateRegex(e.str)
		switch {
		case t.Err != nil:
			im.warn(e, Broader, "NOT blocked: %s cannot be translated exactly: %v", draft.Quote(e.str), t.Err)
			continue
		case len(t.Patterns) == 0:
			im.warn(e, Note, "%s matches no host name egressd accepts (egressd denies such names anyway)", draft.Quote(e.str))
			continue
		}
		for _, p := range t.Patterns {
			im.rule("network.block", p, e, im.origin(e))
			if p == "*" {
				// Every name and, as the regex, every address.
				im.rule("network.block", "0.0.0.0/0", e, im.origin(e))
				im.rule("network.block", "::/0", e, im.origin(e))
				t.IPs = false
			}
		}
		if t.IPs {
			im.warn(e, Broader, "addresses NOT blocked: %s also matches IP addresses written as digits and dots, which egressd's name patterns never match; add IP range rules (e.g. \"10.0.0.0/8\") to block them", draft.Quote(e.str))
		}
	}
}

// unanchoredExample makes a name a `**` pattern matches that its author
// may not have meant: **github.com → evilgithub.com.
func unanchoredExample(p string) string {
	if rest, ok := strings.CutPrefix(p, "**"); ok {
		if strings.HasPrefix(rest, ".") {
			p = "x.evil" + rest
		} else {
			p = "evil" + rest
		}
	}
	if rest, ok := strings.CutSuffix(p, "**"); ok {
		if strings.HasSuffix(rest, ".") {
			p = rest + "evil.example"
		} else {
			p = rest + ".evil.example"
		}
	}
	return strings.ReplaceAll(p, "**", "x")
}
