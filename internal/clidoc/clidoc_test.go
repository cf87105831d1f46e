package clidoc

import (
	"flag"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/egressd/egressd/internal/completion"
)

func TestWriteShowsEveryFlagWithItsValueAndDefault(t *testing.T) {
	fs := flag.NewFlagSet("install", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.String("mode", "filtered", "the `MODE`: filtered | none")
	fs.Int("proxy-port", 3128, "the proxy's port")
	fs.Bool("json", false, "print JSON")
	s := completion.Spec{
		Program: "egressd",
		Flags:   []completion.Flag{{Name: "version", Usage: "print the version"}},
		Commands: []completion.Command{{
			Name: "firewall", Summary: "put the firewall\n  into the namespace",
			Subcommands: []completion.Command{{Name: "install", Summary: "install it", Flags: completion.FromFlagSet(fs, nil)}},
		}},
	}
	var b strings.Builder
	if err := Write(&b, s, "make docs"); err != nil {
		t.Fatal(err)
	}
	want := "# `egressd` command-line reference\n\n" +
		"<!-- Generated from the flag definitions by `make docs`; do not edit. -->\n\n" +
		"Generated from the program's flag definitions; a test fails when it differs\n" +
		"from them. `egressd COMMAND -h` prints the same flags with the command's usage line.\n\n" +
		"Commands:\n\n" +
		"- [`egressd firewall`](#egressd-firewall) — put the firewall into the namespace\n" +
		"  - [`egressd firewall install`](#egressd-firewall-install) — install it\n\n" +
		"Flags before any command:\n\n" +
		"| Flag | Default | Meaning |\n|---|---|---|\n" +
		"| `--version` |  | print the version |\n\n" +
		"## egressd firewall\n\nput the firewall into the namespace.\n\nSubcommands: `install`.\n\n" +
		"## egressd firewall install\n\ninstall it.\n\n" +
		"| Flag | Default | Meaning |\n|---|---|---|\n" +
		"| `--json` |  | print JSON |\n" +
		"| `--mode MODE` | `filtered` | the MODE: filtered \\| none |\n" +
		"| `--proxy-port int` | `3128` | the proxy's port |\n\n"
	if d := cmp.Diff(want, b.String()); d != "" {
		t.Errorf("reference (-want +got):\n%s", d)
	}
}
