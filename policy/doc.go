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
// Decision order (docs/design.md): invalid target → deny (invalid-name); any block
// rule → deny (blocked-by); an allow rule for name and port → allow
// (allowed-by), else deny (no-allow-rule); every resolved address of an allowed
// name then passes GuardAddr (guarded-address).
package policy
