// Command launcher runs an untrusted command in a sandbox behind egressd:
// its own network namespace, egressd serving inside it, the firewall that
// forces all traffic through egressd, and a container (runc) with the rest
// of the resolved security profile. See docs/launcher.md.
//
//	launcher run [flags] -- CMD [ARGS...]
//	launcher explain [flags] [--json] -- CMD [ARGS...]
//	launcher cleanup
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
)

// Exit codes of the launcher itself; otherwise it exits with the command's.
const (
	exitTimeout  = 124 // the command ran out of time and was killed
	exitLauncher = 125 // the launcher failed (bad flags, policy, setup)
)

const usage = `usage: launcher run [flags] -- CMD [ARGS...]
       launcher explain [flags] [--json] -- CMD [ARGS...]
       launcher cleanup

run      runs CMD in a sandbox: a network namespace with egressd and the
         firewall (filtered mode), and a container with the resolved profile.
         Exit status: CMD's; 124 when --timeout killed it; 125 when the
         launcher failed (one line on stderr: "launcher: ...").
explain  prints, without running anything, the resolved profile with the
         source of every value, the firewall rules and the OCI spec.
cleanup  removes sandboxes whose launcher died without removing them.

Run "launcher run -h" for the flags; docs/launcher.md has the reference.
`

func main() {
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
	case "cleanup":
		return cmdCleanup(args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fail(stderr, fmt.Errorf("unknown command %q (want run, explain or cleanup)", args[0]))
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
