package draft

import (
	"strings"
	"testing"
)

// TestRenderRefusesWhatEgressdRefuses: a draft egressd would not accept is
// an error, never a printed policy.
func TestRenderRefusesWhatEgressdRefuses(t *testing.T) {
	var p Policy
	p.Append("network.allow", "*github.com", "")
	if _, _, err := p.Render("x"); err == nil || !strings.Contains(err.Error(), "does not parse") {
		t.Errorf("a bad pattern rendered: %v", err)
	}
	var ok Policy
	ok.Profile = "strict"
	ok.Add("network.mode", String("filtered"), "a\ncomment\x1b that tries to end its line")
	ok.Append("network.allow", "pypi.org", "seen 3 times")
	text, _, err := ok.Render("x")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(string(text), "\n") != 8 || strings.Contains(string(text), "\x1b") {
		t.Errorf("a comment broke its line or kept a control character:\n%q", text)
	}
}

func TestCheck(t *testing.T) {
	if err := Check("process.memory", String("512m")); err != nil {
		t.Errorf("512m: %v", err)
	}
	if err := Check("commands.block", String("./evil")); err == nil || !strings.Contains(err.Error(), "relative path") {
		t.Errorf("a relative command path: %v", err)
	}
	if err := Check("network.allow", String("*.example.com")); err != nil {
		t.Errorf("a list element: %v", err)
	}
}
