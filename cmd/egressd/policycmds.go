package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/policy"
)

func cmdValidate(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("validate", "usage: egressd validate FILE...\n\nExit 0 if every file is valid (warnings on stderr), 1 otherwise; errors as\nfile:line:col: message (hint).\n\nExample:\n  egressd validate /etc/egressd/*.toml\n", stderr)
	if err := fs.Parse(args); err != nil {
		return flagExit(err)
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return exitUsage
	}
	code := exitOK
	for _, file := range fs.Args() {
		warnings, err := policy.Validate(file)
		for _, w := range warnings {
			fmt.Fprintln(stderr, w)
		}
		if err != nil {
			fmt.Fprintln(stderr, strings.TrimRight(err.Error(), "\n"))
			code = exitFail
			continue
		}
		fmt.Fprintf(stdout, "%s: ok\n", file)
	}
	return code
}

// flagExit maps a flag parse error to an exit code: -h is not a failure.
func flagExit(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	return exitUsage
}

// profileFlags are the flags shared by commands that resolve a profile.
type profileFlags struct {
	policies, allow, block listFlag
	profile, floor         string
}

func (p *profileFlags) register(fs *flag.FlagSet) {
	fs.Var(&p.policies, "policy", "policy `FILE` (repeatable, applied in order)")
	fs.StringVar(&p.profile, "profile", "", "built-in base `profile` (default: the policy's, else standard)")
	fs.Var(&p.allow, "allow", "allow `PATTERN` (repeatable)")
	fs.Var(&p.block, "block", "block `PATTERN` (repeatable)")
	fs.StringVar(&p.floor, "floor", os.Getenv("EGRESSD_SECURITY_FLOOR"), "refuse a profile less restrictive than this built-in `profile` (env EGRESSD_SECURITY_FLOOR)")
}

func (p *profileFlags) options() policy.ResolveOptions {
	var over []policy.Setting
	if len(p.allow) > 0 {
		over = append(over, policy.Setting{Key: "network.allow", Values: p.allow, Source: policy.Flag("--allow")})
	}
	if len(p.block) > 0 {
		over = append(over, policy.Setting{Key: "network.block", Values: p.block, Source: policy.Flag("--block")})
	}
	return policy.ResolveOptions{Profile: p.profile, Files: p.policies, Overrides: over, Floor: p.floor}
}

// resolve resolves the profile, printing warnings and errors to stderr.
func (p *profileFlags) resolve(stderr io.Writer) (*policy.Profile, bool) {
	prof, warnings, err := policy.Resolve(p.options())
	for _, w := range warnings {
		fmt.Fprintln(stderr, w)
	}
	if err != nil {
		fmt.Fprintln(stderr, strings.TrimRight(err.Error(), "\n"))
		return nil, false
	}
	return prof, true
}

// checkResult is one line of `egressd check --json`. Key names are part of
// the CLI's interface (docs/cli.md).
type checkResult struct {
	Target   string `json:"target"`
	Host     string `json:"host"`
	Port     uint16 `json:"port"`
	Decision string `json:"decision"`
	Reason   string `json:"reason"`
	Rule     string `json:"rule"`
	Source   string `json:"source"`
	// Error says why a target that does not parse is invalid.
	Error string `json:"error,omitempty"`
}

const checkUsage = `usage: egressd check [--policy FILE]... [--profile NAME] [--allow P]... [--block P]... [--json] TARGET...

Decides each TARGET (host, host:port, IP, IPv4:port, [v6]:port; port 443 when
omitted) against the resolved policy, without any network access. Names are
not resolved: the address guard applies to IP targets only.
Exit 0 when every target was evaluated, 2 on usage or policy errors.

Examples:
  egressd check --policy policy.toml pypi.org github.com:22 169.254.169.254
  egressd check --profile strict --allow '*.github.com' --json api.github.com

`

// newCheckFlags returns check's flag set.
func newCheckFlags(stderr io.Writer) (*flag.FlagSet, *profileFlags, *bool) {
	fs := newFlagSet("check", checkUsage, stderr)
	var pf profileFlags
	pf.register(fs)
	asJSON := fs.Bool("json", false, "one JSON object per line")
	return fs, &pf, asJSON
}

func cmdCheck(args []string, stdout, stderr io.Writer) int {
	fs, pf, asJSON := newCheckFlags(stderr)
	targets, err := parseInterleaved(fs, args)
	if err != nil {
		return flagExit(err)
	}
	if len(targets) == 0 {
		fs.Usage()
		return exitUsage
	}
	prof, ok := pf.resolve(stderr)
	if !ok {
		return exitUsage
	}
	m, err := policy.NewMatcher(prof.NetworkPolicy())
	if err != nil {
		fmt.Fprintf(stderr, "egressd: compiling policy: %v\n", err)
		return exitUsage
	}
	enc := json.NewEncoder(stdout)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	for _, raw := range targets {
		r := checkTarget(m, raw)
		if *asJSON {
			if err := enc.Encode(r); err != nil {
				fmt.Fprintf(stderr, "egressd: %v\n", err)
				return exitFail
			}
			continue
		}
		why := r.Reason
		if r.Error != "" {
			why += ": " + r.Error
		}
		if r.Rule != "" {
			why += " " + r.Rule
			if r.Source != "" {
				why += " (" + r.Source + ")"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Decision, r.Target, why)
	}
	tw.Flush()
	return exitOK
}

// checkTarget decides one target. A target that does not parse is denied
// as invalid-name, shown as written (control bytes escaped, capped: a
// target may come from anywhere, an audit log included).
func checkTarget(m *policy.Matcher, raw string) checkResult {
	t, err := policy.ParseTarget(raw, 443)
	if err != nil {
		return checkResult{Target: audit.Escape(raw, audit.MaxTarget), Decision: string(audit.OutcomeDeny), Reason: string(policy.ReasonInvalidName),
			Error: audit.Escape(err.Error(), audit.MaxTarget)}
	}
	d := m.Decide(t)
	r := checkResult{Target: t.String(), Port: t.Port, Decision: string(audit.OutcomeDeny), Reason: string(d.Reason)}
	if t.Addr.IsValid() {
		r.Host = t.Addr.String()
	} else {
		r.Host = t.Name
	}
	if d.Allow {
		r.Decision = string(audit.Reason(d.Reason).OutcomeLetThrough(d.WouldDeny))
	}
	switch {
	case d.Rule != nil:
		r.Rule, r.Source = d.Rule.Text, d.Rule.Source.String()
	case d.Reason == policy.ReasonGuardedAddress:
		if label, ok := policy.GuardedRange(t.Addr); ok {
			r.Rule = label
		}
	}
	return r
}

// cmdProfiles is `egressd profile list` (and its older spelling, profiles).
func cmdProfiles(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("profile list", "usage: egressd profile list\n\nLists the built-in profiles (also: egressd profiles).\n", stderr)
	if err := fs.Parse(args); err != nil {
		return flagExit(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "egressd profile list: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	aliases := map[string][]string{}
	for a, p := range policy.ProfileAliases() {
		aliases[p] = append(aliases[p], a)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tALIAS\tNETWORK\tALLOW\tROOT\tPIDS\tMEMORY\tCPUS\tSECCOMP")
	for _, name := range policy.BuiltinNames() {
		p, err := policy.BuiltinProfile(name)
		if err != nil {
			fmt.Fprintf(stderr, "egressd: %v\n", err)
			return exitFail
		}
		root := "writable"
		if p.Filesystem.ReadOnly {
			root = "read-only"
		}
		alias := strings.Join(aliases[name], ",")
		if alias == "" {
			alias = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n", name, alias, p.Network.Mode, len(p.Network.Allow),
			root, showLimit(p.Process.PidsLimit), showBytes(p.Process.Memory), showCPUs(p.Process.CPUs), p.Process.Seccomp)
	}
	tw.Flush()
	return exitOK
}

func cmdProfile(args []string, stdout, stderr io.Writer) int {
	const u = `usage: egressd profile list
       egressd profile show NAME

list  lists the built-in profiles: network mode, allow-list size, root file
      system, limits, seccomp
show  prints a built-in profile as a policy file, a starting point for your own

Examples:
  egressd profile list
  egressd profile show strict > policy.toml
`
	if len(args) > 0 && args[0] == "list" {
		return cmdProfiles(args[1:], stdout, stderr)
	}
	if len(args) == 1 && (args[0] == "-h" || args[0] == "--help") {
		fmt.Fprint(stdout, u)
		return exitOK
	}
	if len(args) != 2 || args[0] != "show" {
		fmt.Fprint(stderr, u)
		return exitUsage
	}
	p, err := policy.BuiltinProfile(args[1])
	if err != nil {
		fmt.Fprintf(stderr, "egressd: %v\n", err)
		return exitUsage
	}
	b, err := p.TOML()
	if err != nil {
		fmt.Fprintf(stderr, "egressd: %v\n", err)
		return exitFail
	}
	stdout.Write(b)
	return exitOK
}

func showLimit(n int64) string {
	if n <= 0 {
		return "unlimited"
	}
	return fmt.Sprint(n)
}

func showBytes(n int64) string {
	if n <= 0 {
		return "unlimited"
	}
	return policy.FormatBytes(n)
}

func showCPUs(c float64) string {
	if c <= 0 {
		return "unlimited"
	}
	return fmt.Sprint(c)
}
