package firewall

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// Uplink is the launcher's side of one sandbox's way out: the NAT and
// FORWARD rules for a veth pair whose sandbox end is in Prefix, in chains of
// the sandbox's own in the launcher's network namespace (IPv4 only: the
// uplink carries no IPv6):
//
//	filter FORWARD ─► ForwardChain
//	    in from the sandbox                     → ACCEPT
//	    out to the sandbox, RELATED,ESTABLISHED → ACCEPT
//	    out to the sandbox, anything else       → DROP
//	nat POSTROUTING ─► NATChain
//	    from the sandbox's /30, not to it       → MASQUERADE
//
// The FORWARD rules matter where the launcher's namespace drops forwarded
// traffic by default (Docker sets FORWARD's policy to DROP); the last one
// keeps anyone who can route to the /30 from opening connections into the
// sandbox. Each sandbox has chains of its own, so installing and removing
// them never touches another sandbox's rules or anyone else's.
type Uplink struct {
	// Netns is the network namespace of the launcher's end (its path, as
	// for Netfilter); "" is the calling thread's own.
	Netns string
	// Link is the launcher's end of the veth pair.
	Link string
	// Prefix is the link's network: the sandbox's traffic from it is
	// masqueraded. Required by InstallUplink; RemoveUplink ignores it.
	Prefix netip.Prefix
	// ForwardChain and NATChain are the chains in filter and nat.
	ForwardChain, NATChain string
}

// uplinkHooks are the built-in chains the uplink's chains hang from.
func (u Uplink) hooks() []struct{ table, builtin, chain string } {
	return []struct{ table, builtin, chain string }{{"filter", "FORWARD", u.ForwardChain}, {"nat", "POSTROUTING", u.NATChain}}
}

// validate refuses names iptables would read as something else, and (for
// install) a prefix that is not IPv4.
func (u Uplink) validate(install bool) error {
	for _, n := range []string{u.Link, u.ForwardChain, u.NATChain} {
		if n == "" || len(n) > 28 || strings.ContainsFunc(n, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_')
		}) || n[0] == '-' {
			return fmt.Errorf("uplink: %q is not a link or chain name (letters, digits, - and _, at most 28)", n)
		}
	}
	if install && (!u.Prefix.IsValid() || !u.Prefix.Addr().Is4()) {
		return fmt.Errorf("uplink %s: prefix %v is not an IPv4 prefix", u.Link, u.Prefix)
	}
	return nil
}

// UplinkRules is the iptables-restore batch InstallUplink applies.
func UplinkRules(u Uplink) ([]byte, error) {
	if err := u.validate(true); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "*filter\n:%s - [0:0]\n", u.ForwardChain)
	fmt.Fprintf(&b, "-A %s -i %s -j ACCEPT\n", u.ForwardChain, u.Link)
	fmt.Fprintf(&b, "-A %s -o %s -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n", u.ForwardChain, u.Link)
	fmt.Fprintf(&b, "-A %s -o %s -j DROP\n", u.ForwardChain, u.Link)
	fmt.Fprintf(&b, "-I FORWARD 1 -j %s\nCOMMIT\n", u.ForwardChain)
	fmt.Fprintf(&b, "*nat\n:%s - [0:0]\n", u.NATChain)
	fmt.Fprintf(&b, "-A %s -s %s ! -o %s -j MASQUERADE\n", u.NATChain, u.Prefix.Masked(), u.Link)
	fmt.Fprintf(&b, "-I POSTROUTING 1 -j %s\nCOMMIT\n", u.NATChain)
	return b.Bytes(), nil
}

// uplinkRemoveRules is the batch that takes the chains out when they are
// all there.
func uplinkRemoveRules(u Uplink) []byte {
	var b bytes.Buffer
	for _, h := range u.hooks() {
		fmt.Fprintf(&b, "*%s\n-D %s -j %s\n-F %s\n-X %s\nCOMMIT\n", h.table, h.builtin, h.chain, h.chain, h.chain)
	}
	return b.Bytes()
}

// InstallUplink installs u's chains and jumps into u's network namespace
// (the launcher's), in one batch: both tables or, on
// error, whatever tables committed before the failure (RemoveUplink takes
// out any part).
func (fw *Firewall) InstallUplink(ctx context.Context, u Uplink) error {
	batch, err := UplinkRules(u)
	if err != nil {
		return err
	}
	if err := fw.nf.Restore(ctx, u.Netns, IPv4, batch); err != nil {
		return fmt.Errorf("uplink %s: NAT rules: %w", u.Link, err)
	}
	return nil
}

// RemoveUplink removes u's chains and the jumps to them from u's network
// namespace: one batch when they are all there (the usual
// case), else table by table, what exists. Parts that are already gone are
// not errors, so it is safe after a partial install and twice.
func (fw *Firewall) RemoveUplink(ctx context.Context, u Uplink) error {
	if err := u.validate(false); err != nil {
		return err
	}
	if err := fw.nf.Restore(ctx, u.Netns, IPv4, uplinkRemoveRules(u)); err == nil {
		return nil
	}
	var errs []error
	for _, h := range u.hooks() {
		listing, err := fw.nf.List(ctx, u.Netns, IPv4, h.table, h.builtin)
		if err != nil {
			errs = append(errs, fmt.Errorf("uplink %s: listing %s %s: %w", u.Link, h.table, h.builtin, err))
			continue
		}
		var lines []string
		for _, r := range parseListing(h.builtin, listing) {
			if r.spec == "-j "+h.chain {
				lines = append(lines, fmt.Sprintf("-D %s -j %s", h.builtin, h.chain))
			}
		}
		exists, err := fw.nf.ChainExists(ctx, u.Netns, IPv4, h.table, h.chain)
		if err != nil {
			errs = append(errs, fmt.Errorf("uplink %s: looking for %s %s: %w", u.Link, h.table, h.chain, err))
			continue
		}
		if exists {
			lines = append(lines, "-F "+h.chain, "-X "+h.chain)
		}
		if len(lines) == 0 {
			continue
		}
		batch := "*" + h.table + "\n" + strings.Join(lines, "\n") + "\nCOMMIT\n"
		if err := fw.nf.Restore(ctx, u.Netns, IPv4, []byte(batch)); err != nil {
			errs = append(errs, fmt.Errorf("uplink %s: removing %s chain %s: %w", u.Link, h.table, h.chain, err))
		}
	}
	return errors.Join(errs...)
}
