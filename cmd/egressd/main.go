// Command egressd is the filtered-egress sidecar: it validates and explains
// policies (validate, check, profiles, profile show) and enforces them
// (serve: the DNS resolver and the proxy inside a sandbox's network namespace).
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Exit codes.
const (
	exitOK    = 0
	exitFail  = 1 // validate: a file is invalid; serve: a runtime failure
	exitUsage = 2 // usage or policy errors
)

const usage = `usage: egressd COMMAND [flags] [args]

commands:
  validate FILE...         check policy files; errors as file:line:col, warnings on stderr
  check [flags] TARGET...  decide targets (host, host:port, IP, [v6]:port) against a policy
  profiles                 list the built-in profiles
  profile show NAME        print a built-in profile as a policy file
  serve [flags]            run the DNS resolver and proxy that enforce a policy
  version                  print the version

Run 'egressd COMMAND -h' for a command's flags.
`

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "validate":
		return cmdValidate(args[1:], stdout, stderr)
	case "check":
		return cmdCheck(args[1:], stdout, stderr)
	case "profiles":
		return cmdProfiles(args[1:], stdout, stderr)
	case "profile":
		return cmdProfile(args[1:], stdout, stderr)
	case "serve":
		return cmdServe(ctx, args[1:], stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, "egressd", version)
		return exitOK
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "egressd: unknown command %q\n\n%s", args[0], usage)
	return exitUsage
}
