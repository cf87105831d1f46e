// Package policy owns what egressd enforces: the policy file schema, the
// built-in profiles and their layering, the security floor, validation with
// file:line:col errors, name and IP normalisation, the compiled matcher and
// the address guard.
//
// Every enforcement point (the DNS resolver, the explicit and transparent
// proxy) asks the same compiled Matcher, so a name is judged the same way
// whichever path a packet takes:
//
//	policy files ─┐
//	builtin ──────┼─► Resolve ─► Profile ─► NewMatcher ─► *Matcher ─► Live (atomic)
//	flags ────────┘       │                                   │
//	                 warnings, floor                 Decide / DecideName / GuardAddr
//	                                                 (pure, no I/O, no allocation)
//
// The security floor and the validator judge an allow rule by what its
// compiled pattern matches (breadth.go: every name, every name of N labels,
// names of more than one registrable domain of the Public Suffix List,
// every address, a guard lift), never by how it is spelled.
//
// Decision order (docs/design.md): invalid target → deny (invalid-name); any block
// rule → deny (blocked-by); an allow rule for name and port → allow
// (allowed-by), else deny (no-allow-rule); every resolved address of an allowed
// name then passes GuardAddr (guarded-address). In report mode
// (ModeReport) the one no-allow-rule step lets the request through as a
// Decision with WouldDeny set, and nothing else changes: block rules,
// invalid names and the guard still refuse (docs/design.md, "Report mode").
package policy
