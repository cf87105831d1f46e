// Package completion writes shell completion scripts (bash, zsh, fish) for a
// command-line program from a description of its commands and flags. The
// description is built from the programs' own flag sets (FromFlagSet), so a
// flag added to a command appears in its completion without a second list to
// keep in step.
//
// Each script finds where the user is by walking the words typed so far
// through the command tree ("egressd firewall install --" is at
// firewall/install), then offers that node's subcommands, its flags, a
// flag's values (fixed words, or file names for FILE/PATH/DIR values), or
// its positional arguments.
package completion

import (
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
)

// Spec describes a program for completion.
type Spec struct {
	// Program is the name the shell completes (egressd, launcher).
	Program string
	// Commands are the top-level commands.
	Commands []Command
	// Flags are accepted before any command (--version, --help).
	Flags []Flag
}

// Command is one command or subcommand.
type Command struct {
	Name    string
	Summary string
	// Subcommands, if any, are offered as the first positional argument.
	Subcommands []Command
	Flags       []Flag
	// Args is what a positional argument completes to.
	Args Args
}

// Args says how a command's positional arguments complete.
type Args struct {
	// Words are fixed choices (profile names, shells). nil: none.
	Words []string
	// Files offers file names (after Words, if any).
	Files bool
}

// Flag is one flag, completed as --Name.
type Flag struct {
	Name  string
	Usage string
	// Value is false for a boolean flag, which takes no value word.
	Value bool
	// Words are the fixed choices for the value; nil: any text.
	Words []string
	// Files offers file names for the value.
	Files bool
	// Placeholder is the value's name in the usage ("FILE", "ADDR"; see
	// flag.UnquoteUsage), and Default the flag's default as the flag
	// package prints it ("" when it is the zero value). The CLI reference
	// (internal/clidoc) shows both.
	Placeholder, Default string
}

// FromFlagSet lists fs's flags, in name order. A flag whose value name (the
// back-quoted word in its usage, see flag.UnquoteUsage) says FILE, PATH or
// DIR completes to file names; words gives fixed choices for other flags by
// name.
func FromFlagSet(fs *flag.FlagSet, words map[string][]string) []Flag {
	var out []Flag
	fs.VisitAll(func(f *flag.Flag) {
		name, usage := flag.UnquoteUsage(f)
		fl := Flag{Name: f.Name, Usage: usage, Value: true, Placeholder: name}
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
			fl.Value, fl.Placeholder = false, ""
		}
		switch f.DefValue {
		case "", "0", "false", "[]", "0s":
		default:
			fl.Default = f.DefValue
		}
		if fl.Value {
			fl.Words = words[f.Name]
			for _, w := range []string{"FILE", "PATH", "DIR"} {
				if strings.Contains(name, w) {
					fl.Files = true
				}
			}
		}
		out = append(out, fl)
	})
	return out
}

// Shells are the shells Write supports.
var Shells = []string{"bash", "zsh", "fish"}

// Write writes the completion script for shell.
func Write(w io.Writer, shell string, s Spec) error {
	switch shell {
	case "bash":
		return writeBash(w, s)
	case "zsh":
		return writeZsh(w, s)
	case "fish":
		return writeFish(w, s)
	}
	return fmt.Errorf("no completion for shell %q; want one of %s", shell, strings.Join(Shells, ", "))
}

// node is a command with its path in the tree ("" for the program itself,
// "firewall_install" for a subcommand), which the scripts use as a state.
type node struct {
	state string
	cmd   Command
}

// nodes lists the program and every command under it, depth first.
func (s Spec) nodes() []node {
	root := node{cmd: Command{Name: s.Program, Subcommands: s.Commands, Flags: s.Flags}}
	out := []node{root}
	var walk func(prefix string, cs []Command)
	walk = func(prefix string, cs []Command) {
		for _, c := range cs {
			st := c.Name
			if prefix != "" {
				st = prefix + "_" + c.Name
			}
			out = append(out, node{state: st, cmd: c})
			walk(st, c.Subcommands)
		}
	}
	walk("", s.Commands)
	return out
}

// transitions returns "state:word" → next state for every subcommand.
func (s Spec) transitions() [][2]string {
	var out [][2]string
	for _, n := range s.nodes() {
		for _, c := range n.cmd.Subcommands {
			next := c.Name
			if n.state != "" {
				next = n.state + "_" + c.Name
			}
			out = append(out, [2]string{n.state + ":" + c.Name, next})
		}
	}
	return out
}

// funcName is a shell-safe function name for the program.
func funcName(program string) string {
	return "_" + strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return '_'
	}, program)
}

// subNames lists a command's subcommand names.
func subNames(c Command) []string {
	var out []string
	for _, s := range c.Subcommands {
		out = append(out, s.Name)
	}
	return out
}

// positional returns the fixed words a command's positional argument offers:
// its subcommands, else its Args.Words.
func positional(c Command) []string {
	if len(c.Subcommands) > 0 {
		return subNames(c)
	}
	return slices.Clone(c.Args.Words)
}

// shellWord quotes s for bash, zsh and fish inside single quotes.
func shellWord(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// fishWord quotes s for fish, where a single-quoted string escapes ' and \.
func fishWord(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// firstLine is a usage text's first line, for descriptions.
func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return strings.TrimSpace(s)
}
