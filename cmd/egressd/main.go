// Command egressd is the filtered-egress sidecar: it validates and explains
// policies (validate, check, profile), enforces them (serve: the DNS
// resolver and the proxy inside a sandbox's network namespace), and puts the
// sandbox firewall into a namespace (firewall install|verify|remove).
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"github.com/egressd/egressd/internal/buildinfo"
	"github.com/egressd/egressd/internal/completion"
	"github.com/egressd/egressd/policy"
)

// Exit codes.
const (
	exitOK    = 0
	exitFail  = 1 // validate: a file is invalid; serve: a runtime failure
	exitUsage = 2 // usage or policy errors
)

// command is one egressd command: the dispatch in run, the list in the
// usage text and the shell completion all come from the table below, so a
// new command is one entry there.
type command struct {
	name string
	// synopsis follows the name in the usage list ("FILE...").
	synopsis string
	summary  string
	run      func(ctx context.Context, args []string, stdout, stderr io.Writer) int
	// complete describes the command's flags, subcommands and arguments for
	// shell completion; nil: the name only.
	complete func() completion.Command
	// alias names the command this one is another spelling of; an alias is
	// dispatched but not listed.
	alias string
}

// commands is the command table (a function: completion refers back to it).
func commands() []command {
	return []command{
		{name: "validate", synopsis: "FILE...", summary: "check policy files; errors as file:line:col, warnings on stderr",
			run: noCtx(cmdValidate), complete: func() completion.Command { return completion.Command{Args: completion.Args{Files: true}} }},
		{name: "check", synopsis: "[flags] TARGET...", summary: "decide targets (host, host:port, IP, [v6]:port) against a policy",
			run: noCtx(cmdCheck), complete: completeCheck},
		{name: "profile", synopsis: "list | show NAME", summary: "list the built-in profiles, or print one as a policy file",
			run: noCtx(cmdProfile), complete: completeProfile},
		{name: "profiles", alias: "profile list", run: noCtx(cmdProfiles)},
		{name: "serve", synopsis: "[flags]", summary: "run the DNS resolver and proxy that enforce a policy",
			run: cmdServe, complete: completeServe},
		{name: "policy", synopsis: "import|suggest [flags] FILE...", summary: "translate another tool's settings into a policy; learn an allow list from audit logs",
			run: noCtx(cmdPolicy), complete: completePolicy},
		{name: "firewall", synopsis: "install|verify|remove [flags]", summary: "put the sandbox firewall into the current network namespace (init containers)",
			run: cmdFirewall, complete: completeFirewall},
		{name: "health", synopsis: "--admin ADDR [--ready]", summary: "ask a running egressd whether it is healthy (container and pod probes)",
			run: cmdHealth, complete: func() completion.Command {
				fs, _, _, _ := newHealthFlags(io.Discard)
				return completion.Command{Flags: completion.FromFlagSet(fs, nil)}
			}},
		{name: "completion", synopsis: "bash|zsh|fish", summary: "print a shell completion script",
			run: noCtx(cmdCompletion), complete: func() completion.Command {
				return completion.Command{Args: completion.Args{Words: completion.Shells}}
			}},
		{name: "version", summary: "print the version and commit (also --version)",
			run: noCtx(func(_ []string, stdout, _ io.Writer) int { return printVersion(stdout) })},
	}
}

func noCtx(f func(args []string, stdout, stderr io.Writer) int) func(context.Context, []string, io.Writer, io.Writer) int {
	return func(_ context.Context, args []string, stdout, stderr io.Writer) int { return f(args, stdout, stderr) }
}

const examples = `
examples:
  egressd validate policy.toml
  egressd check --policy policy.toml pypi.org evil.example:443
  egressd profile show strict > policy.toml
  egressd policy import --from isol8 isol8.config.json > policy.toml
  egressd policy suggest --collapse 3 audit.log > learned.toml
  egressd serve --policy /etc/egressd/policy.toml --admin-listen 127.0.0.1:9901 --mark 0x4547
  egressd firewall install --mark 0x4547 --admin-port 9901
  source <(egressd completion bash)

Run 'egressd COMMAND -h' for a command's flags; docs/ has the references.
`

// usage is the top-level help, listing the commands of the table.
func usage() string {
	var b strings.Builder
	b.WriteString("usage: egressd COMMAND [flags] [args]\n\ncommands:\n")
	for _, c := range commands() {
		if c.alias != "" {
			continue
		}
		fmt.Fprintf(&b, "  %-40s %s\n", strings.TrimSpace(c.name+" "+c.synopsis), c.summary)
	}
	b.WriteString(examples)
	return b.String()
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage())
		return exitUsage
	}
	switch args[0] {
	case "--version", "-version":
		return printVersion(stdout)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage())
		return exitOK
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "egressd: unknown command %q\n\n%s", args[0], usage())
	return exitUsage
}

func printVersion(stdout io.Writer) int {
	fmt.Fprintln(stdout, buildinfo.Get().String("egressd"))
	return exitOK
}

// completionSpec describes egressd for shell completion, from the command
// table and each command's own flag set.
func completionSpec() completion.Spec {
	s := completion.Spec{Program: "egressd", Flags: []completion.Flag{
		{Name: "version", Usage: "print the version and commit"},
		{Name: "help", Usage: "list the commands"},
	}}
	for _, c := range commands() {
		if c.alias != "" {
			continue
		}
		cc := completion.Command{}
		if c.complete != nil {
			cc = c.complete()
		}
		cc.Name, cc.Summary = c.name, c.summary
		s.Commands = append(s.Commands, cc)
	}
	return s
}

func cmdCompletion(args []string, stdout, stderr io.Writer) int {
	const u = `usage: egressd completion bash|zsh|fish

Prints a completion script for the shell.

Examples (load it into the current shell):
  source <(egressd completion bash)
  source <(egressd completion zsh)
  egressd completion fish | source
or install it where the shell looks (bash:
/usr/share/bash-completion/completions/egressd; zsh: _egressd in $fpath;
fish: ~/.config/fish/completions/egressd.fish); make install does.
`
	if len(args) != 1 {
		fmt.Fprint(stderr, u)
		return exitUsage
	}
	if args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(stdout, u)
		return exitOK
	}
	if err := completion.Write(stdout, args[0], completionSpec()); err != nil {
		fmt.Fprintf(stderr, "egressd completion: %v\n", err)
		return exitUsage
	}
	return exitOK
}

// profileWords are the names --profile and --floor accept.
func profileWords() []string {
	words := policy.BuiltinNames()
	for a := range policy.ProfileAliases() {
		words = append(words, a)
	}
	slices.Sort(words)
	return words
}

func completeCheck() completion.Command {
	fs, _, _ := newCheckFlags(io.Discard)
	return completion.Command{Flags: completion.FromFlagSet(fs, map[string][]string{"profile": profileWords(), "floor": profileWords()})}
}

func completeProfile() completion.Command {
	return completion.Command{Subcommands: []completion.Command{
		{Name: "list", Summary: "list the built-in profiles"},
		{Name: "show", Summary: "print a built-in profile as a policy file", Args: completion.Args{Words: profileWords()}},
	}}
}

func completeServe() completion.Command {
	fs, _ := newServeFlags(io.Discard)
	return completion.Command{Flags: completion.FromFlagSet(fs, map[string][]string{
		"profile": profileWords(), "floor": profileWords(), "log-format": {"text", "json"}})}
}

func completeFirewall() completion.Command {
	var subs []completion.Command
	for _, op := range []struct{ name, summary string }{
		{"install", "install or repair the rules, then verify them"},
		{"verify", "print the difference from the config; exit 1 if there is one"},
		{"remove", "remove egressd's chains and their jumps"},
	} {
		fs, _ := newFirewallFlags(op.name, io.Discard)
		subs = append(subs, completion.Command{Name: op.name, Summary: op.summary,
			Flags: completion.FromFlagSet(fs, map[string][]string{"mode": {"filtered", "none"}})})
	}
	return completion.Command{Subcommands: subs}
}
