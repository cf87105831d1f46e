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

	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sandbox"
	"github.com/egressd/egressd/sandbox/specconv"
)

func cmdExplain(args []string, stdout, stderr io.Writer) int {
	f, cmdArgs, p, warnings, code, ok := parseAndResolve("explain", explainUsage, args, stdout, stderr, true)
	if !ok {
		return code
	}
	cfg, err := f.config(p, cmdArgs, false)
	if err != nil {
		fail(stderr, err)
		return exitLauncher
	}
	if f.tty.wants(os.Stdin, stdout) {
		ws := windowSize(stdout, os.Stdin)
		cfg.Terminal = &ws
	}
	cfg.ID = sandbox.ExplainID
	plan, err := sandbox.NewPlan(cfg)
	if err != nil {
		fail(stderr, sandbox.MaskErr(err, secretValues(cfg)))
		return exitLauncher
	}
	ex, err := plan.Explain()
	if err != nil {
		fail(stderr, err)
		return exitLauncher
	}
	rt := runtimeChoice(cfg.Runtime, f.runtime)
	if f.json {
		err = writeExplainJSON(stdout, warnings, ex, rt)
	} else {
		err = writeExplainText(stdout, stderr, p, warnings, ex, rt)
	}
	if err != nil {
		fail(stderr, err)
		return exitLauncher
	}
	return 0
}

// explainRuntime is the OCI runtime a run would use, and why (or why
// there is none).
type explainRuntime struct {
	Name  string `json:"name,omitempty"`
	Path  string `json:"path,omitempty"`
	Why   string `json:"why,omitempty"`
	Error string `json:"error,omitempty"`
}

// runtimeChoice is the runtime a run would use: rt, the one --runtime
// named, or else the one NewRuntime chooses on this host.
func runtimeChoice(rt *sandbox.Runtime, named string) explainRuntime {
	if rt == nil {
		var err error
		if rt, err = sandbox.NewRuntime(named, ""); err != nil {
			return explainRuntime{Error: err.Error()}
		}
	}
	return explainRuntime{Name: rt.Name, Path: rt.Path, Why: rt.Why}
}

// writeExplainJSON writes the plan as `explain --json` shows it.
func writeExplainJSON(stdout io.Writer, warnings []policy.Warning, ex *sandbox.Explanation, rt explainRuntime) error {
	out := struct {
		Profile   []policy.Provenance      `json:"profile"`
		Warnings  []string                 `json:"warnings,omitempty"`
		Firewall  *explainFirewall         `json:"firewall,omitempty"`
		Uplink    string                   `json:"uplink,omitempty"`
		Egressd   []string                 `json:"egressd,omitempty"`
		User      specconv.User            `json:"user"`
		View      *specconv.View           `json:"view"`
		Protected []specconv.ProtectedPath `json:"protected,omitempty"`
		Init      any                      `json:"init,omitempty"`
		Runtime   explainRuntime           `json:"runtime"`
		Spec      any                      `json:"spec"`
	}{Profile: ex.Profile, Uplink: ex.Uplink, Egressd: ex.Egressd, User: ex.User, View: ex.View, Protected: ex.Protected, Init: ex.Init, Runtime: rt, Spec: ex.Spec}
	for _, w := range warnings {
		out.Warnings = append(out.Warnings, w.String())
	}
	out.Warnings = append(out.Warnings, ex.Warnings...)
	if ex.FirewallIPv4 != "" {
		out.Firewall = &explainFirewall{IPv4: ex.FirewallIPv4, IPv6: ex.FirewallIPv6}
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

// writeExplainText writes the plan as `explain` shows it to a person: the
// warnings on stderr, the rest on stdout.
func writeExplainText(stdout, stderr io.Writer, p *policy.Profile, warnings []policy.Warning, ex *sandbox.Explanation, rt explainRuntime) error {
	for _, w := range warnings {
		fmt.Fprintf(stderr, "launcher: %s\n", oneLine(w.String()))
	}
	for _, w := range ex.Warnings {
		fmt.Fprintf(stderr, "launcher: warning: %s\n", oneLine(w))
	}
	fmt.Fprintf(stdout, "# Profile %q: every value and where it came from\n", p.Name)
	io.WriteString(stdout, policy.FormatProvenance(ex.Profile))
	io.WriteString(stdout, formatSandboxFS(ex))
	if ex.FirewallIPv4 != "" {
		fmt.Fprintf(stdout, "\n# Firewall, IPv4, in the sandbox's network namespace (iptables-restore input)\n%s", ex.FirewallIPv4)
		fmt.Fprintf(stdout, "\n# Firewall, IPv6\n%s", ex.FirewallIPv6)
	} else {
		fmt.Fprintf(stdout, "\n# Firewall: none (network.mode %q: the host's network namespace)\n", p.Network.Mode)
	}
	if p.Network.Mode == policy.ModeReport {
		fmt.Fprintf(stdout, "\n# Report mode (%s)\n%s\n", p.SourceOf("network.mode"), policy.ReportModeMeaning)
	}
	if ex.Uplink != "" {
		fmt.Fprintf(stdout, "\n# Uplink NAT, in the launcher's namespace (the /30 is chosen at launch)\n%s", ex.Uplink)
	}
	if len(ex.Egressd) > 0 {
		fmt.Fprintf(stdout, "\n# egressd, inside the sandbox's namespace\n%s\n", strings.Join(ex.Egressd, " "))
	}
	if ex.Init != nil {
		fmt.Fprintf(stdout, "\n# Init, the sandbox's process 1 (the command runs as its child)\n"+
			"%s: %s bound read-only; reaps every orphan, passes %s to the command's process group, exits with the command's status (128+N for signal N)\n",
			ex.Init.Path, ex.Init.Binary, strings.Join(ex.Init.Forwards, " "))
	}
	if ex.Spec.Process.Terminal {
		fmt.Fprintf(stdout, "\n# Terminal: a pseudo-terminal made inside the sandbox, %dx%d\n", ex.Spec.Process.ConsoleSize.Height, ex.Spec.Process.ConsoleSize.Width)
	}
	if rt.Error != "" {
		fmt.Fprintf(stdout, "\n# OCI runtime: none usable (%s)\n", rt.Error)
	} else {
		fmt.Fprintf(stdout, "\n# OCI runtime: %s (%s)\n%s\n", rt.Name, rt.Path, rt.Why)
	}
	spec, err := json.MarshalIndent(ex.Spec, "", "  ")
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\n# OCI runtime spec (environment values redacted)\n%s\n", spec)
	return nil
}

// formatSandboxFS renders the user, the host view and the protected paths
// of an explanation.
func formatSandboxFS(ex *sandbox.Explanation) string {
	var b strings.Builder
	u := ex.User
	name := u.Name
	if name == "" {
		name = specconv.DefaultUserName
	}
	fmt.Fprintf(&b, "\n# User\nuid %d, gid %d (%s), home %s", u.UID, u.GID, name, u.Home)
	if len(u.AdditionalGids) > 0 {
		fmt.Fprintf(&b, ", groups %v", u.AdditionalGids)
	}
	b.WriteString("\n")

	v := ex.View
	if v.Image != "" {
		fmt.Fprintf(&b, "\n# Host view: the image %s (--rootfs), under a throwaway overlay, and\n", v.Image)
	} else {
		b.WriteString("\n# Host view: all the sandbox sees of the host (the root is the sandbox's own)\n")
	}
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	for _, l := range v.Links {
		fmt.Fprintf(tw, "%s\t-> %s\t\tlink\n", l.Path, l.Target)
	}
	for _, m := range v.Mounts {
		how := "read-only"
		switch {
		case m.Kind == specconv.MountSystem && m.Writable:
			how = "writable, throwaway (an overlay: writes never reach the host)"
		case m.Writable:
			how = "writable"
		}
		fmt.Fprintf(tw, "%s\t<- %s\t%s\t%s\n", m.Path, m.Source, how, m.Origin)
	}
	tw.Flush()
	if len(v.Hidden) > 0 {
		fmt.Fprintf(&b, "hidden where the host has them: %s\n", strings.Join(v.Hidden, " "))
	}

	if len(ex.Protected) > 0 {
		b.WriteString("\n# Protected paths of the workspace and the writable volumes\n")
		tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
		for _, pp := range ex.Protected {
			how := pp.How
			switch pp.How {
			case specconv.ProtectPinned:
				how = "pinned: cannot be renamed or removed"
			case specconv.ProtectPlaceholder:
				kind := "file"
				if pp.Dir {
					kind = "directory"
				}
				how = "missing: an empty read-only " + kind + " is made for the run"
			}
			fmt.Fprintf(tw, "%s\t%s\t(%s)\n", pp.Path, how, pp.Entry)
		}
		tw.Flush()
	}
	return b.String()
}

type explainFirewall struct {
	IPv4 string `json:"ipv4"`
	IPv6 string `json:"ipv6"`
}

func newCleanupFlags() (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("cleanup", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs, fs.String("state-dir", sandbox.DefaultStateDir, "`DIR` of the sandboxes' state (launcher serve --state-dir)")
}

func cmdCleanup(args []string, stdout, stderr io.Writer) int {
	fs, stateDir := newCleanupFlags()
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(fs, "usage: launcher cleanup [--state-dir DIR]\n\nRemoves the sandboxes in DIR whose launcher died.\n\nflags:\n", stdout)
			return 0
		}
		fail(stderr, fmt.Errorf("%w (usage: launcher cleanup [--state-dir DIR])", err))
		return exitLauncher
	}
	if fs.NArg() > 0 {
		fail(stderr, fmt.Errorf("cleanup takes no arguments (usage: launcher cleanup [--state-dir DIR])"))
		return exitLauncher
	}
	reaped, err := sandbox.Reap(*stateDir)
	for _, id := range reaped {
		fmt.Fprintf(stdout, "removed %s\n", id)
	}
	if err != nil {
		fail(stderr, err)
		return exitLauncher
	}
	return 0
}
