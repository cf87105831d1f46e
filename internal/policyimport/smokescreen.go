package policyimport

import (
	"fmt"
	"strings"

	"github.com/egressd/egressd/internal/draft"
	"github.com/egressd/egressd/policy"
)

// smokescreen's ACL (YAML, version v1). A smokescreen ACL holds a rule per
// service (the client's identity) and a default rule; an egressd policy is
// one sandbox's, so one rule is imported: --service NAME, else the default.
// smokescreen decides, for that rule:
//
//	host in allowed_domains   → allow (even if the global deny list has it)
//	host in global_deny_list  → deny
//	host in global_allow_list → allow
//	action enforce → deny; report, open → allow (report logs it)
//
// which becomes: allow = allowed_domains + global_allow_list (and `*` for
// report and open), block = global_deny_list. egressd's block wins over any
// allow, so an allowed_domains entry the deny list covers becomes denied:
// narrower, and said so.
func importSmokescreen(im *importer) error {
	root := im.root
	im.keys(root, []string{"version", "services", "default", "global_allow_list", "global_deny_list"}, nil)
	ver, err := im.str(root, "version")
	if err != nil {
		return err
	}
	if ver == nil || ver.str != "v1" {
		line := 1
		if ver != nil {
			line = ver.line
		}
		return &lineError{line: line, msg: `version must be "v1" (smokescreen refuses any other)`}
	}
	services := root.get("services")
	if services == nil || services.kind != kArray {
		return &lineError{line: 1, msg: "the top-level list 'services' is missing (smokescreen refuses the file)"}
	}
	// smokescreen refuses the whole file for any bad rule: so does the import.
	var names []string
	byName := map[string]*node{}
	for _, s := range services.elems {
		if s.kind != kObject {
			return im.typeError(s, "a service rule (an object)")
		}
		name, err := im.str(s, "name")
		if err != nil {
			return err
		}
		n := ""
		if name != nil {
			n = name.str
		}
		if _, dup := byName[n]; dup {
			return &lineError{line: s.line, msg: fmt.Sprintf("rule already exists for service %s", draft.Quote(n))}
		}
		if err := im.ssCheckRule(s); err != nil {
			return err
		}
		byName[n] = s
		names = append(names, n)
	}
	def, err := im.object(root, "default")
	if err != nil {
		return err
	}
	if def != nil {
		if err := im.ssCheckRule(def); err != nil {
			return err
		}
	}
	gAllow, err := im.ssGlobs(root, "global_allow_list")
	if err != nil {
		return err
	}
	gDeny, err := im.ssGlobs(root, "global_deny_list")
	if err != nil {
		return err
	}

	rule, label := def, "the ACL's default rule"
	if svc := im.opts.Service; svc != "" {
		r, ok := byName[svc]
		if !ok {
			return &lineError{line: services.line, msg: fmt.Sprintf("no service %s in the ACL (services: %s)", draft.Quote(svc), quotedNames(names))}
		}
		rule, label = r, "the rule of service "+draft.Quote(svc)
	} else if def == nil {
		return &lineError{line: 1, msg: fmt.Sprintf("the ACL has no default rule (smokescreen denies every service it does not know); choose one with --service (%s)", quotedNames(names))}
	}
	im.out.Header = append(im.out.Header, "Imported: "+label+".")
	if p := rule.get("project"); p != nil && p.kind == kString {
		im.out.Header = append(im.out.Header, "Project: "+draft.Quote(p.str)+".")
	}
	if others := len(names); others > 0 && im.opts.Service == "" || others > 1 {
		im.warn(services, Note, "%d service rules not imported (one policy is one sandbox's; import each with --service NAME)", len(names)-btoi(im.opts.Service != ""))
	}

	action := rule.get("action")
	im.baseProfile(policy.ModeFiltered, im.origin(action))
	im.out.EnsureList("network.allow", "")
	allowed, _ := im.ssGlobs(rule, "allowed_domains")
	for _, g := range allowed {
		if im.rule("network.allow", g.str, g, im.origin(g)) {
			im.anyPort(g)
		}
	}
	for _, g := range gAllow {
		if d := ssCoveredBy(g, gDeny); d != nil {
			im.warn(g, Note, "no effect: global_deny_list %s (%s) is checked first", draft.Quote(d.str), im.at(d))
			continue
		}
		if im.rule("network.allow", g.str, g, im.origin(g)) {
			im.anyPort(g)
		}
	}
	switch action.str {
	case "report", "open":
		im.out.Append("network.allow", "*", im.origin(action)+": every other host is allowed")
		im.warn(action, Narrower, "action %s allows every host, IP addresses included; egressd's `*` allows every name, not bare IP addresses, and keeps the address guard (remove \"*\" to enforce the allow list)", action.str)
		im.anyPort(action)
	}
	for _, g := range gDeny {
		im.rule("network.block", g.str, g, im.origin(g))
	}
	// smokescreen lets a service's own allowed_domains override the deny
	// list; egressd's block always wins.
	for _, a := range allowed {
		if d := ssOverlap(a, gDeny); d != nil {
			im.warn(a, Narrower, "overlaps global_deny_list %s (%s): smokescreen lets the service's allowed_domains win, egressd's block wins", draft.Quote(d.str), im.at(d))
		}
	}
	if n := rule.get("mitm_domains"); n != nil {
		im.warn(n, Note, "not imported: smokescreen's MITM headers and detailed HTTP logs")
	}
	if n := rule.get("allowed_external_proxies"); n != nil {
		im.warn(n, Narrower, "not imported: egressd does not chain to external proxies")
	}
	return nil
}

// ssCoveredBy returns the deny glob that covers every host g matches.
func ssCoveredBy(g *node, deny []*node) *node {
	gr, err := policy.ParseRule(g.str, policy.Source{})
	if err != nil {
		return nil
	}
	for _, d := range deny {
		if dr, err := policy.ParseRule(d.str, policy.Source{}); err == nil && dr.Covers(gr) {
			return d
		}
	}
	return nil
}

// ssOverlap returns a deny glob sharing a host with g. smokescreen globs
// are exact names or "*.suffix", so two overlap exactly when one covers the
// other.
func ssOverlap(g *node, deny []*node) *node {
	gr, err := policy.ParseRule(g.str, policy.Source{})
	if err != nil {
		return nil
	}
	for _, d := range deny {
		if dr, err := policy.ParseRule(d.str, policy.Source{}); err == nil && (dr.Covers(gr) || gr.Covers(dr)) {
			return d
		}
	}
	return nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func quotedNames(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = draft.Quote(n)
	}
	if len(q) == 0 {
		return "none"
	}
	return strings.Join(q, ", ")
}

// ssCheckRule checks a service or default rule as smokescreen does.
func (im *importer) ssCheckRule(r *node) error {
	im.keys(r, []string{"name", "project", "action", "allowed_domains", "mitm_domains", "allowed_external_proxies"}, nil)
	action, err := im.str(r, "action")
	if err != nil {
		return err
	}
	if action == nil {
		return &lineError{line: r.line, msg: "a rule needs an action (enforce, report or open)"}
	}
	switch action.str {
	case "enforce", "report", "open":
	default:
		return &lineError{line: action.line, msg: "unknown action " + draft.Quote(action.str) + " (enforce, report or open)"}
	}
	if _, err := im.ssGlobs(r, "allowed_domains"); err != nil {
		return err
	}
	if _, err := im.ssGlobs(r, "allowed_external_proxies"); err != nil {
		return err
	}
	mitm := r.get("mitm_domains")
	if mitm != nil && mitm.kind != kArray {
		return im.typeError(mitm, "a list")
	}
	return nil
}

// ssGlobs returns a list of smokescreen domain globs, refusing those
// smokescreen refuses: only a leading "*." is a wildcard, never alone.
func (im *importer) ssGlobs(parent *node, key string) ([]*node, error) {
	globs, err := im.strings(parent, key)
	if err != nil {
		return nil, err
	}
	for _, g := range globs {
		s := g.str
		rest := strings.TrimPrefix(s, "*.")
		var msg string
		switch {
		case s == "":
			msg = "glob cannot be empty"
		case s == "*" || s == "*.":
			msg = "domain glob must not match everything"
		case strings.HasPrefix(s, "*") && !strings.HasPrefix(s, "*."):
			msg = "domain glob must represent a full prefix (sub)domain"
		case strings.Contains(rest, "*"):
			msg = "domain globs are only supported as prefix"
		}
		if msg != "" {
			return nil, &lineError{line: g.line, msg: fmt.Sprintf("%s %s: %s (smokescreen refuses the file)", g.path, draft.Quote(s), msg)}
		}
	}
	return globs, nil
}
