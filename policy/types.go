package policy

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
)

// SourceKind says which layer a value or rule came from.
type SourceKind uint8

const (
	// SourceNone is the zero value: no recorded origin.
	SourceNone SourceKind = iota
	// SourceBuiltin is a built-in profile; Name holds the profile name.
	SourceBuiltin
	// SourceFile is a policy file; File, Line and Col locate the value.
	SourceFile
	// SourceFlag is a per-launch flag; Name holds the flag (e.g. "--allow").
	SourceFlag
	// SourceRequest is a field of a request to `launcher serve`'s
	// execution API, layered like a per-launch flag; Name holds the field
	// (e.g. "network.allow").
	SourceRequest
)

// Source says where a value or a rule came from, so every decision can
// answer "why".
type Source struct {
	Kind SourceKind
	// File is the policy file path as given on the command line (SourceFile).
	File string
	// Line and Col are 1-based; zero means unknown (SourceFile).
	Line, Col int
	// Name is the built-in profile name (SourceBuiltin), the flag name
	// including dashes (SourceFlag) or the request's field (SourceRequest).
	Name string
}

// String renders the source as it appears in decisions and audit lines:
// "policy.toml:12", "builtin:standard", "flag:--allow",
// "request:network.allow".
func (s Source) String() string {
	switch s.Kind {
	case SourceBuiltin:
		return "builtin:" + s.Name
	case SourceFile:
		if s.Line > 0 {
			return s.File + ":" + strconv.Itoa(s.Line)
		}
		return s.File
	case SourceFlag:
		return "flag:" + s.Name
	case SourceRequest:
		return "request:" + s.Name
	}
	return ""
}

// ParseSource reads a source as String writes it: "builtin:NAME",
// "flag:NAME", "FILE:LINE" or "FILE". It is how a tool that writes an
// egressd policy for someone else (the launcher's snapshot) hands each
// rule's original source over (serve --rule-sources).
func ParseSource(s string) (Source, error) {
	switch {
	case s == "":
		return Source{}, errors.New("empty source")
	case strings.HasPrefix(s, "builtin:") && len(s) > len("builtin:"):
		return Builtin(strings.TrimPrefix(s, "builtin:")), nil
	case strings.HasPrefix(s, "flag:") && len(s) > len("flag:"):
		return Flag(strings.TrimPrefix(s, "flag:")), nil
	}
	if i := strings.LastIndexByte(s, ':'); i > 0 {
		if n, err := strconv.Atoi(s[i+1:]); err == nil && n > 0 {
			return Source{Kind: SourceFile, File: s[:i], Line: n}, nil
		}
	}
	return Source{Kind: SourceFile, File: s}, nil
}

// Builtin returns the source of a value from built-in profile name.
func Builtin(name string) Source { return Source{Kind: SourceBuiltin, Name: name} }

// Flag returns the source of a value given by a per-launch flag.
func Flag(name string) Source { return Source{Kind: SourceFlag, Name: name} }

// Request returns the source of a value given by field of a request to the
// execution API (`launcher serve`).
func Request(field string) Source { return Source{Kind: SourceRequest, Name: field} }

// Reason is the machine-readable cause of a Decision. The values are part of
// the audit log and CLI output and must not change.
type Reason string

const (
	ReasonAllowedBy      Reason = "allowed-by"
	ReasonBlockedBy      Reason = "blocked-by"
	ReasonNoAllowRule    Reason = "no-allow-rule"
	ReasonInvalidName    Reason = "invalid-name"
	ReasonGuardedAddress Reason = "guarded-address"
)

// Decision is the verdict of the matcher. Rule is nil when no rule decided
// (no-allow-rule, invalid-name, or a guarded address no rule lifted).
type Decision struct {
	Allow  bool
	Reason Reason
	Rule   *Rule
	// WouldDeny marks a request let through only because the mode is
	// ModeReport: Allow is true and Reason is the reason it would have
	// been refused with in ModeFiltered (always no-allow-rule). Audit
	// records and metrics give it the outcome would-deny.
	WouldDeny bool
}

// String renders a decision for people: "blocked-by *.evil.test (policy.toml:12)",
// "no-allow-rule", "guarded-address 10.0.0.0/8 (private)".
func (d Decision) String() string {
	if d.Rule == nil {
		return string(d.Reason)
	}
	if src := d.Rule.Source.String(); src != "" {
		return fmt.Sprintf("%s %s (%s)", d.Reason, d.Rule.Text, src)
	}
	return fmt.Sprintf("%s %s", d.Reason, d.Rule.Text)
}

// Mode is a profile's network mode.
type Mode string

const (
	ModeNone     Mode = "none"
	ModeFiltered Mode = "filtered"
	ModeHost     Mode = "host"
	// ModeReport is ModeFiltered (the same namespace, firewall and
	// egressd) with names no allow rule admits let through and recorded
	// as would-deny instead of refused; everything else filtered mode
	// refuses stays refused (Matcher.DecideName). It learns an allow
	// list (egressd policy suggest); only the open floor allows it.
	ModeReport Mode = "report"
)

// Proxied reports whether the mode sends the sandbox's traffic through
// egressd: filtered and report (the same firewall), not none or host.
func (m Mode) Proxied() bool { return m == ModeFiltered || m == ModeReport }

// Live holds the policy in force. Enforcement points read it with Current on
// every decision; a reload swaps it with Store. The zero value holds nil,
// which enforcement points must treat as "deny everything".
type Live struct{ p atomic.Pointer[Matcher] }

// Current returns the matcher in force, or nil if none was stored.
func (l *Live) Current() *Matcher { return l.p.Load() }

// Store makes m the matcher in force for every later decision.
func (l *Live) Store(m *Matcher) { l.p.Store(m) }
