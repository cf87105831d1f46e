package policy

// Rule is one allow or block pattern, parsed and compiled by ParseRule.
type Rule struct {
	// Text is the pattern as written, e.g. "*.github.com:443".
	Text string
	// Source is where the rule was written.
	Source Source
}

// Matcher is a compiled network policy. It is immutable and safe for
// concurrent use; its methods do no I/O and do not allocate.
type Matcher struct{}
