package docs

import (
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/policy"
)

// vocabRow is one row of docs/audit.md's table of outcomes and reasons, or
// the code's view of one.
type vocabRow struct {
	Value   string
	Outcome string // "outcome" for a row that is an outcome
	Kinds   []string
	Status  []int
	DNS     string
}

// auditTable parses the table of docs/audit.md whose header begins
// "| value | outcome |".
func auditTable(t *testing.T, r *repo) map[string]vocabRow {
	t.Helper()
	const page = "docs/audit.md"
	rows := map[string]vocabRow{}
	in, header := false, 0
	lines(r.files[page], true, func(n int, line string) {
		if !strings.HasPrefix(strings.TrimSpace(line), "|") {
			in = false
			return
		}
		c := tableCells(line)
		for i := range c {
			c[i] = strings.TrimSpace(c[i])
		}
		if len(c) >= 2 && c[0] == "value" && c[1] == "outcome" {
			in, header = true, n
			return
		}
		if !in || n == header+1 {
			return
		}
		if len(c) != 6 {
			t.Errorf("%s:%d: %d cells, want 6", page, n, len(c))
			return
		}
		row := vocabRow{DNS: c[4]}
		if v := codeSpans(c[0]); len(v) == 1 {
			row.Value = v[0]
		} else {
			t.Errorf("%s:%d: the first cell is not one code span: %q", page, n, c[0])
			return
		}
		switch o := codeSpans(c[1]); {
		case c[1] == "outcome":
			row.Outcome = "outcome"
		case len(o) == 1:
			row.Outcome = o[0]
		default:
			t.Errorf("%s:%d: outcome cell %q", page, n, c[1])
		}
		row.Kinds = codeSpans(c[2])
		for _, s := range codeSpans(c[3]) {
			code, err := strconv.Atoi(s)
			if err != nil {
				t.Errorf("%s:%d: status %q", page, n, s)
			}
			row.Status = append(row.Status, code)
		}
		if _, dup := rows[row.Value]; dup {
			t.Errorf("%s:%d: %s has a row already", page, n, row.Value)
		}
		rows[row.Value] = row
	})
	if len(rows) == 0 {
		t.Fatalf("%s has no table of outcomes and reasons (header | value | outcome | ...)", page)
	}
	return rows
}

// TestAuditTableMatchesTheVocabulary: docs/audit.md has one row for every
// outcome and every reason of the code (audit.Outcomes, audit.Reasons),
// none for a word the code does not have, and each reason's outcome,
// kinds, HTTP statuses and DNS answer as the code has them. The policy's
// reasons are spelt as the audit's.
func TestAuditTableMatchesTheVocabulary(t *testing.T) {
	got := auditTable(t, loadRepo(t))
	want := map[string]vocabRow{}
	for _, o := range audit.Outcomes {
		want[string(o)] = vocabRow{Value: string(o), Outcome: "outcome"}
	}
	for _, ri := range audit.Reasons {
		row := vocabRow{Value: string(ri.Reason), Outcome: string(ri.Outcome), Status: ri.Status, DNS: ri.DNS}
		for _, k := range ri.Kinds {
			row.Kinds = append(row.Kinds, string(k))
		}
		want[row.Value] = row
	}
	for v := range want {
		if _, ok := got[v]; !ok {
			t.Errorf("docs/audit.md has no row for %s: add | `%s` | ... | to its table of outcomes and reasons", v, v)
		}
	}
	for v, g := range got {
		w, ok := want[v]
		if !ok {
			t.Errorf("docs/audit.md has a row for %s, which is no outcome or reason of audit/vocab.go", v)
			continue
		}
		if g.Outcome == "outcome" {
			continue
		}
		if diff := cmp.Diff(w, g, cmp.Transformer("sorted", func(in []string) []string { return slices.Sorted(slices.Values(in)) })); diff != "" {
			t.Errorf("docs/audit.md's row for %s differs from audit.Reasons (-code +docs):\n%s", v, diff)
		}
	}
	for _, pr := range []policy.Reason{policy.ReasonAllowedBy, policy.ReasonBlockedBy, policy.ReasonNoAllowRule, policy.ReasonInvalidName, policy.ReasonGuardedAddress} {
		ri, ok := audit.Reason(pr).Info()
		wantOutcome := audit.OutcomeDeny
		if pr == policy.ReasonAllowedBy {
			wantOutcome = audit.OutcomeAllow
		}
		if !ok || ri.Outcome != wantOutcome {
			t.Errorf("policy reason %s: in audit.Reasons %v with outcome %s, want %s", pr, ok, ri.Outcome, wantOutcome)
		}
	}
	for _, ri := range audit.Reasons {
		if got := ri.Reason.Outcome(); got != ri.Outcome {
			t.Errorf("%s.Outcome() = %s, audit.Reasons says %s", ri.Reason, got, ri.Outcome)
		}
	}
	if got := audit.Reason("no-such-reason").Outcome(); got != audit.OutcomeDeny {
		t.Errorf("an unknown reason's outcome is %s, want deny (fail closed)", got)
	}
}
