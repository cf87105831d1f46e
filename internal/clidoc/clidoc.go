// Package clidoc writes a program's command-line reference as Markdown from
// the same description its shell completion is built from
// (completion.Spec, itself read from the commands' flag sets). Each
// program's tests compare the reference in docs/cli/ with what Write makes
// now, so a flag added, renamed or re-described without the reference
// being regenerated fails the build instead of leaving the page stale.
package clidoc

import (
	"bufio"
	"fmt"
	"io"
	"strings"

	"github.com/egressd/egressd/internal/completion"
)

// Write writes the reference of s: the program's own flags, then every
// command and subcommand, depth first, each with its summary and a table
// of its flags (name and value, default, meaning). regenerate is the
// command that rewrites the file, named in its header.
func Write(w io.Writer, s completion.Spec, regenerate string) error {
	b := bufio.NewWriter(w)
	fmt.Fprintf(b, "# `%s` command-line reference\n\n", s.Program)
	fmt.Fprintf(b, "<!-- Generated from the flag definitions by `%s`; do not edit. -->\n\n", regenerate)
	fmt.Fprintf(b, "Generated from the program's flag definitions; a test fails when it differs\n"+
		"from them. `%s COMMAND -h` prints the same flags with the command's usage line.\n\n", s.Program)
	b.WriteString("Commands:\n\n")
	var toc func(prefix string, cs []completion.Command, depth int)
	toc = func(prefix string, cs []completion.Command, depth int) {
		for _, c := range cs {
			path := strings.TrimSpace(prefix + " " + c.Name)
			fmt.Fprintf(b, "%s- [`%s`](#%s) — %s\n", strings.Repeat("  ", depth), path, anchor(path), oneLine(c.Summary))
			toc(path, c.Subcommands, depth+1)
		}
	}
	toc(s.Program, s.Commands, 0)
	b.WriteString("\n")
	if len(s.Flags) > 0 {
		fmt.Fprintf(b, "Flags before any command:\n\n")
		writeFlags(b, s.Flags)
	}
	var walk func(prefix string, cs []completion.Command)
	walk = func(prefix string, cs []completion.Command) {
		for _, c := range cs {
			path := strings.TrimSpace(prefix + " " + c.Name)
			fmt.Fprintf(b, "## %s\n\n", path)
			if c.Summary != "" {
				fmt.Fprintf(b, "%s.\n\n", strings.TrimSuffix(oneLine(c.Summary), "."))
			}
			if len(c.Subcommands) > 0 {
				names := make([]string, len(c.Subcommands))
				for i, sc := range c.Subcommands {
					names[i] = "`" + sc.Name + "`"
				}
				fmt.Fprintf(b, "Subcommands: %s.\n\n", strings.Join(names, ", "))
			}
			if len(c.Args.Words) > 0 {
				fmt.Fprintf(b, "Argument: one of `%s`.\n\n", strings.Join(c.Args.Words, "`, `"))
			}
			if len(c.Flags) > 0 {
				writeFlags(b, c.Flags)
			} else if len(c.Subcommands) == 0 {
				b.WriteString("No flags.\n\n")
			}
			walk(path, c.Subcommands)
		}
	}
	walk(s.Program, s.Commands)
	return b.Flush()
}

func writeFlags(b *bufio.Writer, flags []completion.Flag) {
	b.WriteString("| Flag | Default | Meaning |\n|---|---|---|\n")
	for _, f := range flags {
		name := "--" + f.Name
		if f.Placeholder != "" {
			name += " " + f.Placeholder
		}
		def := ""
		if f.Default != "" {
			def = "`" + cell(f.Default) + "`"
		}
		fmt.Fprintf(b, "| `%s` | %s | %s |\n", cell(name), def, cell(oneLine(f.Usage)))
	}
	b.WriteString("\n")
}

// anchor is the fragment GitHub gives a "## egressd firewall install"
// heading: lower case, spaces as hyphens.
func anchor(heading string) string {
	return strings.ReplaceAll(strings.ToLower(heading), " ", "-")
}

// oneLine joins a multi-line usage into one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// cell escapes what would end a Markdown table cell.
func cell(s string) string {
	return strings.ReplaceAll(s, "|", `\|`)
}
