// Command launcher runs an untrusted command in a sandbox behind egressd:
// its own network namespace, egressd serving inside it, the firewall that
// forces all traffic through egressd, and a container (runc) with the rest
// of the resolved security profile. See docs/launcher.md.
//
//	launcher run [flags] -- CMD [ARGS...]
//	launcher explain [flags] [--json] -- CMD [ARGS...]
//	launcher serve [flags]
//	launcher cleanup
//	launcher completion bash|zsh|fish
//	launcher --version
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/egressd/egressd/internal/buildinfo"
	"github.com/egressd/egressd/internal/completion"
	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sandbox/pid1"
)

// Exit codes of the launcher itself; otherwise it exits with the command's
// (126 and 127 from the sandbox's init: pid1.ExitCannotInvoke, ExitNotFound).
const (
	exitTimeout  = 124 // the command ran out of time and was killed
	exitLauncher = 125 // the launcher or the runtime failed (bad flags, policy, setup, runtime error)
)

const usage = `usage: launcher run [flags] -- CMD [ARGS...]
       launcher explain [flags] [--json] -- CMD [ARGS...]
       launcher serve [flags]
       launcher cleanup
       launcher completion bash|zsh|fish
       launcher --version

run         runs CMD in a sandbox: a network namespace with egressd and the
            firewall (filtered mode), and a container with the resolved
            profile, under an init that passes signals on; a terminal when
            stdin and stdout are terminals (-t, --no-tty). Exit status:
            CMD's (128+N when signal N killed it: 137 for an out-of-memory
            kill, with a "launcher: ..." line saying so); 124 when --timeout
            killed it; 125 when the launcher or the runtime failed; 126 when
            CMD could not be executed, 127 when it was not found (every
            failure is one line on stderr: "launcher: ...").
explain     prints, without running anything, the resolved profile with the
            source of every value, the user, the host view, the protected
            paths, the firewall rules, the init and the OCI spec.
serve       serves the execution API (HTTP JSON on a unix socket, or TCP
            with a bearer token): each request runs a command in a fresh
            sandbox, its settings layered over the server's policy files
            like these flags, never below --floor (docs/serve.md).
cleanup     removes sandboxes whose launcher died without removing them.
completion  prints a shell completion script (source <(launcher completion bash)).

examples:
  launcher run --allow pypi.org --allow files.pythonhosted.org -- pip install requests
  launcher run --profile strict --policy team.toml --mount-cwd -- make test
  launcher run --net none -- python3 untrusted.py
  launcher run -t --profile strict -- bash
  launcher explain --profile strict --allow '*.github.com' -- git clone https://github.com/x/y

Run "launcher run -h" for the flags; docs/launcher.md has the reference.
`

func main() {
	// The same binary is every sandbox's init (process 1 inside the
	// container) and a terminal's guard: both before anything else.
	switch {
	case pid1.IsInit(os.Args):
		os.Exit(pid1.Main(os.Args[1:], os.Stderr))
	case len(os.Args) == 1 && os.Args[0] == ttyGuardArg0:
		os.Exit(ttyGuardMain())
	}
	os.Exit(launcher(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func launcher(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitLauncher
	}
	switch args[0] {
	case "run":
		return cmdRun(ctx, args[1:], stdin, stdout, stderr)
	case "explain":
		return cmdExplain(args[1:], stdout, stderr)
	case "serve":
		return cmdServe(ctx, args[1:], stdout, stderr)
	case "cleanup":
		return cmdCleanup(args[1:], stdout, stderr)
	case "completion":
		return cmdCompletion(args[1:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, buildinfo.Get().String("launcher"))
		return 0
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fail(stderr, fmt.Errorf("unknown command %q (want run, explain, serve, cleanup, completion or --version)", args[0]))
	return exitLauncher
}

// fail prints err as the launcher's one-line reason: "launcher: ...".
// Multi-line errors (a policy's error list, a floor's violations) are
// joined with "; ".
func fail(stderr io.Writer, err error) {
	fmt.Fprintf(stderr, "launcher: %s\n", oneLine(err.Error()))
}

func oneLine(s string) string {
	var parts []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			parts = append(parts, l)
		}
	}
	out := strings.Join(parts, "; ")
	return strings.ReplaceAll(out, ":;", ":")
}

// completionSpec describes the launcher for shell completion, from the flag
// sets run and explain parse.
func completionSpec() completion.Spec {
	profiles := policy.BuiltinNames()
	for a := range policy.ProfileAliases() {
		profiles = append(profiles, a)
	}
	words := map[string][]string{
		"profile": profiles, "floor": profiles, "net": {"none", "filtered", "report", "host"},
		"seccomp": {"strict", "moderate", "unconfined"}, "runtime": {"runc", "crun", "runsc"},
	}
	runFlags, _ := newLaunchFlags("run", runUsage, io.Discard, false)
	explainFlags, _ := newLaunchFlags("explain", explainUsage, io.Discard, true)
	serveFlags, _ := newServeFlags()
	cleanupFlags, _ := newCleanupFlags()
	return completion.Spec{
		Program: "launcher",
		Flags:   []completion.Flag{{Name: "version", Usage: "print the version and commit"}, {Name: "help", Usage: "list the commands"}},
		Commands: []completion.Command{
			{Name: "run", Summary: "run a command in a sandbox", Flags: completion.FromFlagSet(runFlags, words), Args: completion.Args{Files: true}},
			{Name: "explain", Summary: "print what run would set up", Flags: completion.FromFlagSet(explainFlags, words), Args: completion.Args{Files: true}},
			{Name: "serve", Summary: "serve the execution API", Flags: completion.FromFlagSet(serveFlags, words)},
			{Name: "cleanup", Summary: "remove sandboxes of dead launchers", Flags: completion.FromFlagSet(cleanupFlags, words)},
			{Name: "completion", Summary: "print a shell completion script", Args: completion.Args{Words: completion.Shells}},
			{Name: "version", Summary: "print the version and commit"},
		},
	}
}

func cmdCompletion(args []string, stdout, stderr io.Writer) int {
	if len(args) != 1 {
		fail(stderr, fmt.Errorf("usage: launcher completion %s", strings.Join(completion.Shells, "|")))
		return exitLauncher
	}
	if err := completion.Write(stdout, args[0], completionSpec()); err != nil {
		fail(stderr, err)
		return exitLauncher
	}
	return 0
}
