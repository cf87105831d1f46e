package policyimport

import (
	"strings"

	"github.com/egressd/egressd/internal/draft"
	"github.com/egressd/egressd/policy"
)

// Anthropic's sandbox-runtime (srt) settings, ~/.srt-settings.json.
//
//	network.allowedDomains   host, *.host (strictly below), host:port, [v6]:port → network.allow
//	                         (empty, without allowAllDomains: no network → mode none)
//	network.deniedDomains    the same and `*`, checked first                   → network.block
//	network.allowAllDomains  every host, deniedDomains still apply             → allow `*`
//	filesystem.allowWrite    "." (the working directory)                       → filesystem.mount_cwd
//	filesystem.denyRead, denyWrite, allowRead: what egressd's sandbox shows of the host decides
//	                         whether each is already true (noted) or cannot be kept (BROADER)
//
// srt's patterns are egressd's: `*.x` is strictly below x, names compare
// case-insensitively, a pattern with a port matches that port only.
func importSandboxRuntime(im *importer) error {
	root := im.root
	im.keys(root, []string{"network", "filesystem", "credentials", "enableWeakerNestedSandbox"}, map[string]string{
		"ignoreViolations":             "which violations srt reports is its own logging",
		"enableWeakerNetworkIsolation": "macOS only",
		"allowAppleEvents":             "macOS only",
		"allowPty":                     "macOS only",
		"ripgrep":                      "srt's own tooling",
		"mandatoryDenySearchDepth":     "srt's own search for protected files",
		"seccomp":                      "srt's helper binaries",
		"bwrapPath":                    "srt's helper binaries",
		"socatPath":                    "srt's helper binaries",
		"windows":                      "Windows only",
		"git":                          "git safe.directory settings are not a policy",
	})
	netw, err := im.object(root, "network")
	if err != nil {
		return err
	}
	if err := im.srtNetwork(netw); err != nil {
		return err
	}
	if err := im.srtFilesystem(root); err != nil {
		return err
	}
	if n := root.get("credentials"); n != nil {
		im.warn(n, Review, "not imported: credential deny and mask rules; egressd passes no environment variable but those in env.pass, and mounts no host file outside the system directories unless the launcher is told to")
	}
	if n, err := im.boolean(root, "enableWeakerNestedSandbox"); err != nil {
		return err
	} else if n != nil && n.b {
		im.warn(n, Narrower, "egressd has no weaker nested mode")
	}
	return nil
}

func (im *importer) srtNetwork(netw *node) error {
	im.keys(netw, []string{"allowedDomains", "deniedDomains", "allowAllDomains", "allowLocalBinding", "allowUnixSockets", "allowAllUnixSockets",
		"httpProxyPort", "socksProxyPort", "mitmProxy"},
		map[string]string{
			"deniedDomainReasons": "egressd's denials name the rule and the file line that made them; custom texts are not supported",
			"strictAllowlist":     "egressd never asks: a host no rule allows is denied",
			"allowMachLookup":     "macOS only",
			"filterRequest":       "a callback of the library, not a setting",
			"tlsTerminate":        "egressd decides on host names and ports, not request bodies",
			"parentProxy":         "egressd connects to allowed hosts itself; an upstream proxy is not supported",
		})
	for _, k := range []string{"httpProxyPort", "socksProxyPort", "mitmProxy"} {
		if n := netw.get(k); n != nil {
			im.warn(n, Review, "not imported: an external proxy filters srt's traffic here, under rules this file does not hold")
		}
	}
	allow, err := im.strings(netw, "allowedDomains")
	if err != nil {
		return err
	}
	deny, err := im.strings(netw, "deniedDomains")
	if err != nil {
		return err
	}
	all, err := im.boolean(netw, "allowAllDomains")
	if err != nil {
		return err
	}
	if len(allow) == 0 && (all == nil || !all.b) {
		why := "network.allowedDomains is empty: no network"
		if netw == nil {
			why = "no network settings: no network"
		}
		im.baseProfile(policy.ModeNone, why)
		if len(deny) > 0 {
			im.warn(netw.get("deniedDomains"), Note, "not imported: no effect, no domain is allowed")
		}
		return nil
	}
	im.baseProfile(policy.ModeFiltered, im.origin(netw.get("allowedDomains")))
	im.out.EnsureList("network.allow", "")
	if all != nil && all.b {
		im.out.Append("network.allow", "*", im.origin(all))
		im.warn(all, Narrower, "srt allows every host, IP addresses included; egressd's `*` allows every name, not bare IP addresses, and keeps the address guard")
		im.anyPort(all)
	}
	for _, e := range allow {
		if im.rule("network.allow", e.str, e, im.origin(e)) && !strings.Contains(srtHost(e.str), ":") && srtPort(e.str) == "" {
			im.anyPort(e)
		}
		if h := strings.ToLower(srtHost(e.str)); h == "localhost" {
			im.warn(e, Narrower, "localhost resolves to a loopback address, which egressd's address guard refuses (the sandbox's own loopback needs no rule)")
		}
	}
	for _, e := range deny {
		host, port := srtHost(e.str), srtPort(e.str)
		im.rule("network.block", e.str, e, im.origin(e))
		if host == "*" {
			// srt's `*` matches addresses too; egressd's only names.
			suffix := ""
			if port != "" {
				suffix = ":" + port
			}
			im.rule("network.block", "0.0.0.0/0"+suffix, e, im.origin(e))
			if port != "" {
				im.rule("network.block", "[::/0]"+suffix, e, im.origin(e))
			} else {
				im.rule("network.block", "::/0", e, im.origin(e))
			}
		}
	}
	for _, k := range []string{"allowUnixSockets", "allowAllUnixSockets"} {
		if n := netw.get(k); n != nil {
			im.warn(n, Note, "not imported: host unix sockets are not in an egressd sandbox unless the launcher mounts them")
		}
	}
	if n := netw.get("allowLocalBinding"); n != nil {
		im.warn(n, Note, "not imported: the sandbox has its own network namespace; a port bound there is reachable from nowhere else")
	}
	return nil
}

// srtHost and srtPort split an srt pattern the way srt does: a port is a
// strict 1-65535 suffix; an unbracketed string with two colons is an IPv6
// address without one.
func srtHost(p string) string {
	if strings.HasPrefix(p, "[") {
		if i := strings.IndexByte(p, ']'); i > 0 {
			return p[1:i]
		}
		return p
	}
	if strings.Count(p, ":") == 1 {
		h, _, _ := strings.Cut(p, ":")
		return h
	}
	return p
}

func srtPort(p string) string {
	if strings.HasPrefix(p, "[") {
		if i := strings.Index(p, "]:"); i > 0 {
			return p[i+2:]
		}
		return ""
	}
	if strings.Count(p, ":") == 1 {
		_, port, _ := strings.Cut(p, ":")
		return port
	}
	return ""
}

// systemDirs are the host directories egressd's default root shows the
// sandbox (read-only).
var systemDirs = []string{"/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc"}

func underAny(p string, dirs []string) bool {
	for _, d := range dirs {
		if p == d || strings.HasPrefix(p, d+"/") {
			return true
		}
	}
	return false
}

// homePath reports whether p is in a home directory, which egressd's
// sandbox never shows.
func homePath(p string) bool {
	return p == "~" || strings.HasPrefix(p, "~/") || underAny(p, []string{"/home", "/root", "/Users"})
}

func cwdPath(p string) bool {
	return !strings.HasPrefix(p, "/") && !strings.HasPrefix(p, "~")
}

func (im *importer) srtFilesystem(root *node) error {
	fs, err := im.object(root, "filesystem")
	if err != nil {
		return err
	}
	im.keys(fs, []string{"disabled", "denyRead", "allowRead", "allowWrite", "denyWrite", "allowGitConfig"}, nil)
	if n, err := im.boolean(fs, "disabled"); err != nil {
		return err
	} else if n != nil && n.b {
		im.warn(n, Narrower, "srt does not restrict the file system here; an egressd sandbox always has its own root, showing only the host's system directories")
	}
	writes, err := im.strings(fs, "allowWrite")
	if err != nil {
		return err
	}
	mountCwd := false
	for _, w := range writes {
		switch p := strings.TrimSuffix(w.str, "/"); {
		case p == "." || p == "" && w.str == "./":
			if !mountCwd {
				im.set("filesystem.mount_cwd", draft.Bool(true), w, im.origin(w)+": the working directory, bound at the workspace (/sandbox)")
			}
			mountCwd = true
		case p == "/tmp" || p == "/private/tmp" || p == "/var/tmp":
			im.warn(w, Narrower, "the sandbox writes to its own %s (tmpfs), not the host's", p)
		default:
			im.warn(w, Narrower, "not writable in an egressd sandbox: only the workspace (filesystem.mount_cwd) and tmpfs paths are")
		}
	}
	if !mountCwd {
		im.set("filesystem.mount_cwd", draft.Bool(false), fs.get("allowWrite"), "filesystem.allowWrite does not hold \".\"")
	} else {
		im.warn(fs.get("allowWrite"), Broader, "srt keeps .git/hooks, .git/config, shell rc files and agent and editor settings read-only inside writable paths; egressd's workspace is writable whole")
	}
	reads, err := im.strings(fs, "denyRead")
	if err != nil {
		return err
	}
	for _, r := range reads {
		switch p := r.str; {
		case homePath(p):
			im.warn(r, Note, "already unreadable: an egressd sandbox never shows home directories")
		case cwdPath(p) && mountCwd:
			im.warn(r, Broader, "readable in an egressd sandbox: the working directory is mounted whole at the workspace")
		case cwdPath(p):
			im.warn(r, Note, "already unreadable: the working directory is not mounted")
		case underAny(p, systemDirs):
			im.warn(r, Broader, "readable in an egressd sandbox: its root shows the host's system directories (read-only)")
		default:
			im.warn(r, Note, "already unreadable: an egressd sandbox shows only the host's system directories")
		}
	}
	if n := fs.get("allowRead"); n != nil {
		im.warn(n, Narrower, "re-allowed reads inside denied paths: an egressd sandbox does not show those paths at all")
	}
	denyW, err := im.strings(fs, "denyWrite")
	if err != nil {
		return err
	}
	for _, d := range denyW {
		if cwdPath(d.str) && mountCwd {
			im.warn(d, Broader, "writable in an egressd sandbox: the workspace cannot keep one of its paths read-only")
		} else {
			im.warn(d, Note, "already not writable in an egressd sandbox")
		}
	}
	if n, err := im.boolean(fs, "allowGitConfig"); err != nil {
		return err
	} else if n != nil && n.b && !mountCwd {
		im.warn(n, Note, "no effect: the working directory is not mounted")
	}
	return nil
}
