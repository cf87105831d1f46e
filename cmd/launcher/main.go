// Command launcher runs untrusted commands in a sandbox behind egressd.
// The run and explain subcommands are being built (issue #4); for now it
// prints its usage.
package main

import (
	"fmt"
	"os"
)

const usage = `usage: launcher run [flags] -- CMD [ARGS...]
       launcher explain [flags] -- CMD [ARGS...]

launcher creates a network namespace, starts egressd inside it, installs the
firewall that forces all traffic through egressd, and runs CMD in a container
with the resolved security profile. Not implemented yet: see issue #4.
`

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help") {
		fmt.Print(usage)
		return
	}
	fmt.Fprint(os.Stderr, usage)
	os.Exit(2)
}
