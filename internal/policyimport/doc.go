// Package policyimport translates other sandboxes' settings into egressd
// policies (`egressd policy import --from FORMAT FILE`): agentkernel.toml,
// isol8.config.json, Anthropic's sandbox-runtime settings and smokescreen's
// ACL YAML.
//
//	source file ─► tree of values with lines (JSON, YAML, TOML) ─► format importer
//	                                                                    │
//	            draft.Policy (every value commented with its origin) ◄──┤
//	            []Warning (what could not be carried over, and how) ◄───┘
//	                                │ Render: parsed and resolved by package policy
//	                                ▼
//	                          policy TOML
//
// A rule is translated only when the translation is exact; nothing is
// widened to fit. What cannot be expressed is left out with a Warning whose
// Effect says what leaving it out does: Narrower (the sandbox loses
// something the source allowed — safe), Broader (the sandbox may do
// something the source denied: a block rule or a file restriction egressd
// cannot express), Review (different, not comparable) or Note. The source
// tool's own semantics are followed, not its names: agentkernel's `*.x`
// includes x itself (egressd's `.x`), smokescreen's service allow list wins
// over its global deny list (egressd's block always wins: narrower, warned),
// isol8's regexes match anywhere in a host name unless anchored.
package policyimport
