package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sandbox"
)

// launchFlags are the flags run and explain share.
type launchFlags struct {
	profile    string
	policies   listFlag
	floor      string
	settings   settings
	upstream   []string
	rootfs     string
	runtime    string
	secrets    listFlag
	secretEnv  listFlag
	workdir    string
	subnet     string
	auditLog   string
	egressd    string
	upstreamCA string
	quiet      bool
	timings    bool
	tty        ttyFlag
	json       bool // explain only
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// settings collects the flags that are policy settings, in command-line
// order, each with its flag as the source: they are decoded and checked
// exactly like the same key in a policy file.
type settings []policy.Setting

// settingFlag is one such flag.
type settingFlag struct {
	s          *settings
	key, name  string
	isBool     bool
	transform  func(string) (key, value string)
	lastString string
}

func (f *settingFlag) String() string { return f.lastString }
func (f *settingFlag) Set(v string) error {
	key := f.key
	if f.transform != nil {
		key, v = f.transform(v)
	}
	f.lastString = v
	*f.s = append(*f.s, policy.Setting{Key: key, Values: []string{v}, Source: policy.Flag(f.name)})
	return nil
}
func (f *settingFlag) IsBoolFlag() bool { return f.isBool }

// upstreamFlag collects --upstream-dns values (repeatable or
// comma-separated) into one setting.
type upstreamFlag struct{ vals *[]string }

func (f upstreamFlag) String() string { return "" }
func (f upstreamFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*f.vals = append(*f.vals, s)
		}
	}
	return nil
}

const runUsage = `usage: launcher run [flags] -- CMD [ARGS...]

Runs CMD in a sandbox with the resolved profile (built-in profile, then
--policy files, then these flags). Flags that set a policy key are checked
like the key in a file and shown as their source ("flag:--allow").

Examples:
  launcher run --allow pypi.org --allow files.pythonhosted.org -- pip install requests
  launcher run --profile strict --mount-cwd --timeout 10m -- make test
  launcher run --net none --memory 512m -- python3 untrusted.py

flags:
`

const explainUsage = `usage: launcher explain [flags] [--json] -- CMD [ARGS...]

Prints, without running anything, what "launcher run" with the same flags
would set up: the resolved profile with the source of every value, the
user, what of the host the sandbox sees (system directories, exposed
paths, volumes), the protected paths, the firewall rules and the OCI
runtime spec.

Example:
  launcher explain --profile strict --allow '*.github.com' --json -- git pull

flags:
`

func newLaunchFlags(name, usageText string, stderr io.Writer, explain bool) (*flag.FlagSet, *launchFlags) {
	f := &launchFlags{}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	// Parse errors are reported by the caller as one line; -h prints the
	// usage (printUsage).
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	setting := func(flagName, key, usage string) {
		fs.Var(&settingFlag{s: &f.settings, key: key, name: "--" + flagName}, flagName, usage)
	}
	boolSetting := func(flagName, key, usage string) {
		fs.Var(&settingFlag{s: &f.settings, key: key, name: "--" + flagName, isBool: true}, flagName, usage)
	}
	sandboxFlags(fs, f)
	setting("allow", "network.allow", "allow `PATTERN` (repeatable): host, *.domain, .domain, IP, CIDR, with :PORT")
	setting("block", "network.block", "block `PATTERN` (repeatable); block wins over every allow")
	setting("net", "network.mode", "network `MODE`: none, filtered, report (learn an allow list: docs/migrating.md) or host")
	setting("inspect", "network.inspect", "terminate and inspect the HTTPS of hosts matching `PATTERN` (repeatable; docs/inspection.md)")
	fs.Var(&settingFlag{s: &f.settings, key: "env.set", name: "--env", transform: func(v string) (string, string) {
		if strings.Contains(v, "=") {
			return "env.set", v
		}
		return "env.pass", v
	}}, "env", "set `NAME=VALUE` in the sandbox, or pass NAME from here (repeatable)")
	setting("pass-env", "env.pass", "pass variable `NAME` from the launcher's environment (repeatable)")
	fs.Var(&f.secrets, "secret", "secret `NAME=VALUE`: set in the sandbox, masked in its output; one a network.credentials entry names stays with egressd and the sandbox gets a placeholder (repeatable)")
	fs.Var(&f.secretEnv, "secret-env", "secret from the launcher's variable `NAME` (repeatable)")
	setting("memory", "process.memory", "memory limit `SIZE` (512m, 4GiB; 0: none)")
	setting("cpus", "process.cpus", "CPU limit in `CPUS` (1.5; 0: none)")
	setting("pids-limit", "process.pids_limit", "maximum number of `TASKS`, threads included (0 means no limit; at least 16: the init takes up to 8; negative is refused)")
	setting("timeout", "process.timeout", "kill every process after `DURATION` and exit 124 (0: none)")
	boolSetting("read-only", "filesystem.read_only", "read-only root file system")
	setting("tmpfs", "filesystem.tmpfs", "tmpfs `PATH[:size=SIZE,mode=OCTAL,nosuid,nodev,noexec]` (repeatable)")
	setting("seccomp", "process.seccomp", "seccomp `PROFILE`: strict, moderate, unconfined or a JSON file")
	setting("cap-add", "process.cap_add", "keep `CAPABILITY` (repeatable)")
	setting("user", "process.user", "run as `UID[:GID]` or a user name (default: ids no host account uses)")
	boolSetting("allow-host-user", "process.allow_host_user", "let --user be an account or group of the host")
	fs.StringVar(&f.workdir, "workdir", "", "working `DIR` inside the sandbox (default: the workspace, /sandbox)")
	boolSetting("mount-cwd", "filesystem.mount_cwd", "bind the current directory read-write at the workspace")
	setting("expose", "filesystem.expose", "show host `PATH` read-only at the same path (repeatable)")
	setting("volume", "filesystem.volumes", "mount host directory `HOST:PATH[:rw|ro]` (PATH absolute or ~/...; repeatable)")
	setting("protect", "filesystem.protect", "keep `PATH` (relative to the workspace and writable volumes; NAME/ for a directory) read-only (repeatable)")
	setting("unprotect", "filesystem.unprotect", "remove `PATH` from the protected paths, where the floor allows (repeatable)")
	fs.Var(&f.tty, "t", "give the command a terminal (default: when stdin and stdout are terminals; -t=false or --no-tty for pipes)")
	fs.Var(&f.tty, "tty", "the same as -t")
	fs.Var(noTTYFlag{&f.tty}, "no-tty", "give the command pipes, never a terminal")
	fs.BoolVar(&f.quiet, "quiet", false, "no summary of denied destinations, no warnings")
	fs.BoolVar(&f.timings, "timings", os.Getenv("EGRESSD_LAUNCHER_TIMINGS") != "", "print how long each phase took (also $EGRESSD_LAUNCHER_TIMINGS)")
	if explain {
		fs.BoolVar(&f.json, "json", false, "print one JSON object")
	}
	return fs, f
}

// sandboxFlags adds the flags that say how sandboxes are made, which
// launch commands and serve share: the policy, the floor, the root file
// system, the runtime, egressd and its upstream resolvers, the uplink's
// subnet and the audit log.
func sandboxFlags(fs *flag.FlagSet, f *launchFlags) {
	fs.StringVar(&f.profile, "profile", "", "built-in base `profile`: open, standard, strict, offline (default: the policy's, else standard)")
	fs.Var(&f.policies, "policy", "policy `FILE` (repeatable, applied in order)")
	fs.StringVar(&f.upstreamCA, "inspect-upstream-ca", "", "PEM `FILE` egressd verifies inspected hosts' certificates against (default: the host's trust store)")
	fs.StringVar(&f.floor, "floor", "", "security floor `PROFILE`: refuse a profile less restrictive (default $EGRESSD_SECURITY_FLOOR)")
	fs.StringVar(&f.rootfs, "rootfs", "", "image `DIR` to build the container's root on (default: the host view: the host's system directories)")
	fs.StringVar(&f.runtime, "runtime", "", "OCI runtime: runc, crun, runsc or a `PATH` (default: crun where it is installed and runs on the host's cgroups and the spec's version, else runc)")
	fs.Var(upstreamFlag{&f.upstream}, "upstream-dns", "upstream resolvers `IP[:PORT][,...]` (default: network.upstream_dns, else /etc/resolv.conf)")
	fs.StringVar(&f.subnet, "subnet", sandbox.DefaultSubnet.String(), "IPv4 `CIDR` the uplink's /30 is taken from")
	fs.StringVar(&f.auditLog, "audit-log", "", "append egressd's audit records (JSON lines) to `FILE`")
	fs.StringVar(&f.egressd, "egressd", "", "egressd binary `PATH` (default: next to the launcher, else $PATH)")
}

// printUsage writes the flag set's usage to w.
func printUsage(fs *flag.FlagSet, usageText string, w io.Writer) {
	io.WriteString(w, usageText)
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}

// parseLaunch parses args; the command is what follows the flags (after
// "--"). A flag error says which flag and how to get help.
// parseAndResolve parses a launch command's flags and resolves its profile.
// When ok is false the command returns code at once: 0 after -h, or
// exitLauncher after an error it has printed.
func parseAndResolve(name, usage string, args []string, stdout, stderr io.Writer, explain bool) (f *launchFlags, cmdArgs []string, p *policy.Profile, warnings []policy.Warning, code int, ok bool) {
	fs, f := newLaunchFlags(name, usage, stderr, explain)
	cmdArgs, err := parseLaunch(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(fs, usage, stdout)
			return nil, nil, nil, nil, 0, false
		}
		fail(stderr, err)
		return nil, nil, nil, nil, exitLauncher, false
	}
	if p, warnings, err = f.resolve(); err != nil {
		fail(stderr, err)
		return nil, nil, nil, nil, exitLauncher, false
	}
	return f, cmdArgs, p, warnings, 0, true
}

func parseLaunch(fs *flag.FlagSet, args []string) ([]string, error) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, fmt.Errorf("%w (see launcher %s -h)", err, fs.Name())
	}
	cmd := fs.Args()
	if len(cmd) == 0 {
		return nil, errors.New("no command given: launcher run [flags] -- CMD [ARGS...]")
	}
	return cmd, nil
}

// resolve resolves the profile the flags describe.
func (f *launchFlags) resolve() (*policy.Profile, []policy.Warning, error) {
	return policy.Resolve(policy.ResolveOptions{Profile: f.profile, Files: f.policies, Overrides: f.overrides(), Floor: f.floorName()})
}

// overrides are the policy settings the flags make, in command-line order
// (--upstream-dns last), each with its flag as the source.
func (f *launchFlags) overrides() []policy.Setting {
	overrides := append(settings(nil), f.settings...)
	if len(f.upstream) > 0 {
		overrides = append(overrides, policy.Setting{Key: "network.upstream_dns", Values: f.upstream, Source: policy.Flag("--upstream-dns")})
	}
	return overrides
}

// floorName is --floor, else $EGRESSD_SECURITY_FLOOR.
func (f *launchFlags) floorName() string {
	if f.floor != "" {
		return f.floor
	}
	return os.Getenv("EGRESSD_SECURITY_FLOOR")
}

// config builds the sandbox's config from the flags and the profile.
func (f *launchFlags) config(p *policy.Profile, args []string, forRun bool) (sandbox.Config, error) {
	cfg := sandbox.Config{Profile: p, Args: args, Rootfs: f.rootfs, CallerEnv: os.Environ(), Workdir: f.workdir}
	// The sandbox's init is this very binary (package pid1).
	self, err := os.Executable()
	if err != nil {
		return cfg, fmt.Errorf("finding the launcher's own binary (the sandbox's init): %w", err)
	}
	cfg.Init = self
	if f.rootfs != "" {
		abs, err := filepath.Abs(f.rootfs)
		if err != nil {
			return cfg, fmt.Errorf("--rootfs: %w", err)
		}
		cfg.Rootfs = abs
	}
	if f.subnet != "" {
		pfx, err := netip.ParsePrefix(f.subnet)
		if err != nil {
			return cfg, fmt.Errorf("--subnet %q: want an IPv4 CIDR such as %s", f.subnet, sandbox.DefaultSubnet)
		}
		cfg.Subnet = pfx
	}
	for _, s := range f.secrets {
		name, value, ok := strings.Cut(s, "=")
		if !ok || name == "" {
			return cfg, fmt.Errorf("--secret: want NAME=VALUE, got an entry without '=' (value not shown)")
		}
		cfg.Secrets = append(cfg.Secrets, sandbox.Secret{Name: name, Value: value})
	}
	for _, name := range f.secretEnv {
		value, ok := os.LookupEnv(name)
		if !ok {
			return cfg, fmt.Errorf("--secret-env %s: the variable is not set in the launcher's environment", name)
		}
		cfg.Secrets = append(cfg.Secrets, sandbox.Secret{Name: name, Value: value})
	}
	if f.upstreamCA != "" {
		abs, err := filepath.Abs(f.upstreamCA)
		if err != nil {
			return cfg, fmt.Errorf("--inspect-upstream-ca: %w", err)
		}
		cfg.InspectUpstreamCA = abs
	}
	if p.Filesystem.MountCwd {
		wd, err := os.Getwd()
		if err != nil {
			return cfg, fmt.Errorf("filesystem.mount_cwd: the current directory: %w", err)
		}
		cfg.WorkspaceDir = wd
	}
	if f.runtime != "" || forRun {
		rt, err := sandbox.NewRuntime(f.runtime, "")
		if err != nil {
			return cfg, err
		}
		cfg.Runtime = rt
	}
	if p.Network.Mode.Proxied() {
		path, err := f.egressdPath(forRun)
		if err != nil {
			return cfg, err
		}
		cfg.EgressdPath = path
	}
	return cfg, nil
}

// egressdPath finds the egressd binary: --egressd, else next to the
// launcher's own binary, else in PATH. Without need (explain), a missing
// binary is fine.
func (f *launchFlags) egressdPath(need bool) (string, error) {
	if f.egressd != "" {
		p, err := filepath.Abs(f.egressd)
		if err != nil {
			return "", err
		}
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("--egressd: %w", err)
		}
		return p, nil
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "egressd")
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	if p, err := exec.LookPath("egressd"); err == nil {
		return p, nil
	}
	if !need {
		return "egressd", nil
	}
	return "", errors.New("filtered mode needs the egressd binary: not found next to the launcher or in PATH; give --egressd PATH")
}

// secretWarnings names the secrets too short to mask safely, and the
// credentials' secrets egressd cannot reliably mask in their hosts'
// responses (sandbox.CredentialWeakness).
func secretWarnings(cfg sandbox.Config) []string {
	var out []string
	for _, s := range cfg.Secrets {
		if len(s.Value) < sandbox.MinSecretLength {
			out = append(out, fmt.Sprintf("secret %s is shorter than %d bytes: it is masked, and so is every other occurrence of those %s bytes in the output",
				s.Name, sandbox.MinSecretLength, strconv.Itoa(len(s.Value))))
		}
		if cfg.Profile == nil || !slices.ContainsFunc(cfg.Profile.Network.Credentials, func(c *policy.Credential) bool { return c.Secret == s.Name }) {
			continue
		}
		if why := sandbox.CredentialWeakness(s.Value); why != "" {
			out = append(out, fmt.Sprintf("secret %s of network.credentials cannot be masked reliably in its host's responses: %s", s.Name, why))
		}
	}
	return out
}
