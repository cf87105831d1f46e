package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/egressd/egressd/internal/completion"
	"github.com/egressd/egressd/internal/policyimport"
	"github.com/egressd/egressd/internal/suggest"
	"github.com/egressd/egressd/policy"
)

const policyUsage = `usage: egressd policy import --from FORMAT [--service NAME] FILE
       egressd policy suggest [--collapse N] [--profile NAME] AUDIT-LOG...

import   translate another tool's settings into an egressd policy (stdout);
         what cannot be expressed is warned about on stderr
suggest  print the smallest allow list covering what the audit logs show
         denied for want of an allow rule

FILE and AUDIT-LOG may be - for standard input. docs/migrating.md has the details.

examples:
  egressd policy import --from sandbox-runtime ~/.srt-settings.json > policy.toml
  egressd policy import --from smokescreen --service ci-runner acl.yaml > ci.toml
  egressd policy suggest --collapse 3 /var/log/egressd/audit.log > learned.toml
`

// cmdPolicy is the `egressd policy` command group.
func cmdPolicy(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, policyUsage)
		return exitUsage
	}
	switch args[0] {
	case "import":
		return cmdPolicyImport(args[1:], stdout, stderr)
	case "suggest":
		return cmdPolicySuggest(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, policyUsage)
		return exitOK
	}
	fmt.Fprintf(stderr, "egressd: unknown policy command %q\n\n%s", args[0], policyUsage)
	return exitUsage
}

// readInput reads a named file, or standard input for "-", refusing more
// than limit bytes.
func readInput(name string, limit int64) (string, []byte, error) {
	r := io.Reader(os.Stdin)
	display := "stdin"
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return name, nil, err
		}
		defer f.Close()
		r, display = f, name
	}
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err == nil && int64(len(data)) > limit {
		err = fmt.Errorf("larger than %d bytes", limit)
	}
	return display, data, err
}

func newPolicyImportFlags(stderr io.Writer) (fs *flag.FlagSet, from, service *string) {
	var formats strings.Builder
	for _, f := range policyimport.Formats() {
		fmt.Fprintf(&formats, "  %-16s %s\n", f[0], f[1])
	}
	fs = newFlagSet("policy import", `usage: egressd policy import --from FORMAT [--service NAME] FILE

Prints an egressd policy equivalent to FILE, every value commented with
where it came from. A rule is translated only when the translation is
exact; what cannot be expressed is left out and warned about on stderr as
narrower (the sandbox loses something the source allowed), BROADER (the
sandbox may do something the source denied), review or note.
Exit 0 when nothing is broader than the source, 1 when something is (the
policy is still printed, with the list at its top), 2 on usage errors or a
source that cannot be read.

formats:
`+formats.String()+`
examples:
  egressd policy import --from agentkernel agentkernel.toml > policy.toml
  egressd policy import --from smokescreen --service ci-runner acl.yaml > ci.toml

`, stderr)
	from = fs.String("from", "", "source `FORMAT` (see above)")
	service = fs.String("service", "", "smokescreen: the service `NAME` whose rule to import (default: the ACL's default rule)")
	return fs, from, service
}

func cmdPolicyImport(args []string, stdout, stderr io.Writer) int {
	fs, from, service := newPolicyImportFlags(stderr)
	files, err := parseInterleaved(fs, args)
	if err != nil {
		return flagExit(err)
	}
	if *from == "" || len(files) != 1 {
		fs.Usage()
		return exitUsage
	}
	name, data, err := readInput(files[0], 4<<20)
	if err != nil {
		fmt.Fprintf(stderr, "egressd: %s: %v\n", name, err)
		return exitUsage
	}
	res, err := policyimport.Import(*from, name, data, policyimport.Options{Service: *service})
	if err != nil {
		var se *policyimport.SourceError
		if errors.As(err, &se) {
			fmt.Fprintln(stderr, se.Error())
		} else {
			fmt.Fprintf(stderr, "egressd: %v\n", err)
		}
		return exitUsage
	}
	stdout.Write(res.Policy)
	for _, w := range res.Warnings {
		fmt.Fprintln(stderr, w)
	}
	printValidate(stderr, res.Validate)
	if res.Broader() {
		fmt.Fprintln(stderr, "egressd: the imported policy may allow what the source denied (BROADER above); review it before use")
		return exitFail
	}
	return exitOK
}

// printValidate prints what `egressd validate` would say of a printed policy.
func printValidate(stderr io.Writer, warnings []policy.Warning) {
	for _, w := range warnings {
		fmt.Fprintln(stderr, w)
	}
}

func newPolicySuggestFlags(stderr io.Writer) (fs *flag.FlagSet, collapse *int, profile *string) {
	fs = newFlagSet("policy suggest", `usage: egressd policy suggest [--collapse N] [--profile NAME] AUDIT-LOG...

Reads egressd audit logs (egressd serve --audit-log; - for standard input)
and prints the smallest allow list that covers every destination denied for
want of an allow rule (decision deny or would-deny, reason no-allow-rule):
exact names, with a port where it was not a default port. Denials a block
rule, the address guard or an invalid name made are counted, never allowed.
Lines that are not audit records are reported with their numbers.
Exit 0, 1 when some lines could not be used (the policy is still printed),
2 on usage errors or a log that cannot be read.

examples:
  egressd policy suggest audit.log > learned.toml
  egressd policy suggest --collapse 3 --profile strict audit-*.log > learned.toml

`, stderr)
	collapse = fs.Int("collapse", 0, "write *.suffix for `N` or more names below one suffix (never a public suffix such as com, co.uk or github.io); 0: exact names")
	profile = fs.String("profile", "", "write `profile` = NAME as the policy's base (default: none, the file layers on the launch's profile)")
	return fs, collapse, profile
}

func cmdPolicySuggest(args []string, stdout, stderr io.Writer) int {
	fs, collapse, profile := newPolicySuggestFlags(stderr)
	files, err := parseInterleaved(fs, args)
	if err != nil {
		return flagExit(err)
	}
	if len(files) == 0 {
		fs.Usage()
		return exitUsage
	}
	if *collapse == 1 || *collapse < 0 {
		fmt.Fprintln(stderr, "egressd: --collapse takes 0 (off) or a threshold of 2 or more")
		return exitUsage
	}
	if *profile != "" {
		canon, ok := policy.CanonicalProfileName(*profile)
		if !ok {
			_, err := policy.BuiltinProfile(*profile)
			fmt.Fprintf(stderr, "egressd: --profile: %v\n", err)
			return exitUsage
		}
		*profile = canon
	}
	s := suggest.New(suggest.Options{Collapse: *collapse, Profile: *profile})
	for _, f := range files {
		if err := readLog(s, f); err != nil {
			fmt.Fprintf(stderr, "egressd: %v\n", err)
			return exitUsage
		}
	}
	p, notes := s.Policy()
	text, warnings, err := p.Render("(suggested policy)")
	if err != nil {
		fmt.Fprintf(stderr, "egressd: %v\n", err)
		return exitFail
	}
	stdout.Write(text)
	for _, n := range notes {
		fmt.Fprintln(stderr, "note:", n)
	}
	printValidate(stderr, warnings)
	problems := s.Problems()
	for _, p := range problems {
		fmt.Fprintln(stderr, p)
	}
	if len(problems) > 0 {
		fmt.Fprintf(stderr, "egressd: %d lines could not be used; the policy covers the rest\n", len(problems))
		return exitFail
	}
	return exitOK
}

func readLog(s *suggest.Suggester, name string) error {
	if name == "-" {
		return s.Read("stdin", os.Stdin)
	}
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	return s.Read(name, f)
}

// completePolicy describes `egressd policy` for shell completion.
func completePolicy() completion.Command {
	var formats []string
	for _, f := range policyimport.Formats() {
		formats = append(formats, f[0])
	}
	imp, _, _ := newPolicyImportFlags(io.Discard)
	sug, _, _ := newPolicySuggestFlags(io.Discard)
	return completion.Command{Subcommands: []completion.Command{
		{Name: "import", Summary: "translate another tool's settings into an egressd policy",
			Flags: completion.FromFlagSet(imp, map[string][]string{"from": formats}), Args: completion.Args{Files: true}},
		{Name: "suggest", Summary: "print the smallest allow list covering what audit logs show denied",
			Flags: completion.FromFlagSet(sug, map[string][]string{"profile": profileWords()}), Args: completion.Args{Files: true}},
	}}
}
