package main

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sandbox"
)

// formatDenial renders one denied destination for the summary after a run:
// what was denied, why, and the flag that would allow it (or why no flag
// can):
//
//	denied evil.test:443 (no-allow-rule); allow it with --allow evil.test:443
//	denied x.evil.test:443 (blocked-by *.evil.test from policy.toml:7); a block rule wins over every allow: --allow cannot override it
func formatDenial(d sandbox.Denial) string {
	dest := hostPort(d.Target, d.Port)
	what := "denied " + dest
	if d.Kind == "https" {
		what = "denied " + d.Method + " " + dest + d.Path
	}
	if d.Kind == "dns" {
		what = "denied " + d.Target + " (DNS lookup"
	} else {
		what += " ("
	}
	reason := d.Reason
	if d.Rule != "" {
		reason += " " + d.Rule
		if d.RuleSource != "" {
			reason += " from " + d.RuleSource
		}
	}
	count := ""
	if d.Count > 1 {
		count = fmt.Sprintf(", %d times", d.Count)
	}
	if d.Kind == "dns" {
		what += ": " + reason + count + ")"
	} else {
		what += reason + count + ")"
	}
	allowTarget := dest
	if d.Kind == "dns" {
		allowTarget = d.Target
	}
	if d.Kind == "https" {
		return what + inspectHint(d)
	}
	switch policy.Reason(d.Reason) {
	case policy.ReasonNoAllowRule:
		return what + "; allow it with --allow " + allowTarget
	case policy.ReasonBlockedBy:
		return what + "; a block rule wins over every allow: --allow cannot override it"
	case policy.ReasonInvalidName:
		return what + "; not a valid host name, so no rule can allow it"
	case policy.ReasonGuardedAddress:
		addr := guardedAddr(d)
		if addr == "" {
			return what + "; it resolves to an address the guard refuses (private, loopback, link-local, ...): only an allow rule naming that IP lifts the guard"
		}
		if d.Port == 0 || d.Kind == "dns" {
			return what + "; it resolves to " + addr + ", which the address guard refuses: only an allow rule naming that IP lifts it, e.g. --allow " + addr
		}
		return what + "; it resolves to " + addr + ", which the address guard refuses: only an allow rule naming that IP lifts it, e.g. --allow " + hostPort(addr, d.Port)
	}
	return what
}

// guardedAddr picks the address a guarded-address denial is about.
func guardedAddr(d sandbox.Denial) string {
	if a, err := netip.ParseAddr(d.Target); err == nil {
		return a.String()
	}
	for _, s := range d.Addrs {
		if ap, err := netip.ParseAddrPort(s); err == nil {
			return ap.Addr().String()
		}
		if a, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil {
			return a.String()
		}
	}
	return ""
}

func hostPort(host string, port uint16) string {
	if port == 0 {
		return host
	}
	if strings.Contains(host, ":") {
		return net.JoinHostPort(host, strconv.Itoa(int(port)))
	}
	return host + ":" + strconv.Itoa(int(port))
}

// inspectHint says what refused a request inside an inspected session.
func inspectHint(d sandbox.Denial) string {
	switch d.Reason {
	case string(policy.ReasonBlockedBy):
		return "; the inspect entry's block_methods and block_paths win over its allow rules"
	case string(policy.ReasonNoAllowRule):
		return "; the inspect entry's methods and paths do not include it"
	case "host-mismatch": // proxy.ReasonHostMismatch
		return "; a request inside the TLS session of one name may not ask for another host"
	case "credential-placeholder": // proxy.ReasonPlaceholder
		return "; a credential's placeholder is only replaced on requests to its own host, and never sent anywhere else"
	}
	return ""
}
