package dnsfilter

import (
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/policy"
)

// forwardedTypes are the query types forwarded upstream for an allowed name.
// Only A and AAAA carry addresses, and those pass the address guard; the
// names in CNAME, MX and SRV targets are decided again when a client
// resolves them. Everything else — HTTPS/SVCB (64/65, which carry ECH
// configs and address hints: THREATS E2), NULL, PTR, NS, SOA, DNSSEC types,
// … — gets NOERROR with no data for an allowed name, so clients fall back to
// A/AAAA at once instead of retrying.
var forwardedTypes = map[uint16]bool{
	dns.TypeA:     true,
	dns.TypeAAAA:  true,
	dns.TypeCNAME: true,
	dns.TypeMX:    true,
	dns.TypeSRV:   true,
	dns.TypeTXT:   true,
}

// refusedType reports query types answered REFUSED whatever the name: ANY,
// zone transfers, and every other meta type (RFC 6895: 128-255, OPT, 0).
func refusedType(t uint16) bool {
	return t == dns.TypeNone || t == dns.TypeOPT || (t >= 128 && t <= 255)
}

// maxAuditName caps a query name as audited (escaped, audit.Escape); a
// valid name is at most 253 bytes, so only a name egressd refuses is cut.
const maxAuditName = 300

// outcome is what happened to one query, for the audit record and metrics:
// its reason (audit.Reasons: the outcome follows from it), the policy's
// decision when the policy decided.
type outcome struct {
	reason   audit.Reason
	decision policy.Decision
	target   string
	qtype    uint16
	addrs    []netip.Addr
	stripped int
	note     string
	noAudit  bool
}

// fromDecision sets the outcome of a policy decision.
func (o *outcome) fromDecision(d policy.Decision) {
	o.decision, o.reason = d, audit.Reason(d.Reason)
}

// respond answers one query; nil means send nothing (req is a response).
func (s *Server) respond(req *dns.Msg, client netip.Addr, tcp bool) *dns.Msg {
	if req.Response {
		return nil
	}
	now := s.set.now()
	resp, out := s.decide(req, client, now)
	s.m.query(out.reason)
	if out.stripped > 0 {
		s.m.stripped.Add(float64(out.stripped))
	}
	if s.audit.log != nil && !out.noAudit {
		s.audit.send(out.record(client, now))
	}
	fit(req, resp, tcp)
	return resp
}

func (s *Server) decide(req *dns.Msg, client netip.Addr, now time.Time) (*dns.Msg, outcome) {
	var out outcome
	if len(req.Question) > 0 {
		out.target, out.qtype = req.Question[0].Name, req.Question[0].Qtype
	}
	if ok, aud := s.limiter.allow(client, now); !ok {
		out.reason, out.noAudit = audit.ReasonDNSRate, !aud
		return reply(req, dns.RcodeRefused), out
	}
	if req.Opcode != dns.OpcodeQuery {
		out.reason = audit.ReasonMalformed
		return reply(req, dns.RcodeNotImplemented), out
	}
	if len(req.Question) != 1 {
		// RFC 9619: more than one question is a format error. Nothing
		// of it is forwarded.
		out.reason = audit.ReasonMalformed
		out.note = strconv.Itoa(len(req.Question)) + " questions"
		return reply(req, dns.RcodeFormatError), out
	}
	q := req.Question[0]
	if rc := checkEDNS(req); rc != dns.RcodeSuccess {
		out.reason = audit.ReasonMalformed
		return reply(req, rc), out
	}
	if q.Qclass != dns.ClassINET || refusedType(q.Qtype) {
		out.reason = audit.ReasonQTypeRefused
		return reply(req, dns.RcodeRefused), out
	}
	if len(strings.TrimSuffix(q.Name, ".")) > s.set.maxNameLen {
		out.reason = audit.ReasonDNSMaxNameLen
		return reply(req, dns.RcodeRefused), out
	}
	m := s.matcher()
	name, ok := policy.NormalizeName(q.Name)
	if !ok {
		out.fromDecision(policy.Decision{Reason: policy.ReasonInvalidName})
		return reply(req, s.blockRcode(m)), out
	}
	out.target = name
	d := m.DecideNameAnyPort(name)
	out.fromDecision(d)
	if !d.Allow {
		return reply(req, s.blockRcode(m)), out
	}
	if !forwardedTypes[q.Qtype] {
		// The name is allowed (the record names the rule); the type is
		// one egressd answers itself, empty: not a denial of the name.
		out.reason = audit.ReasonQTypeNotForwarded
		return reply(req, dns.RcodeSuccess), out
	}

	s.useUpstreamsOf(m)
	a, err := s.lookup(s.baseCtx, name, q.Qtype, now)
	if err != nil {
		if de := (*DeniedError)(nil); errors.As(err, &de) {
			// The policy changed while we looked: deny.
			out.fromDecision(de.Decision)
			return reply(req, s.blockRcode(m)), out
		}
		// The upstream resolvers failed: an error, not a denial. The
		// client gets a bare SERVFAIL (no text, no EDE): the upstream's
		// address and words go to the audit record only.
		out.reason, out.note = upstreamReason(err), err.Error()
		s.log.Debug("upstream failed", "name", name, "qtype", dns.Type(q.Qtype).String(), "err", err)
		return reply(req, dns.RcodeServerFailure), out
	}
	f := a.filterFor(m)
	s.learn(a, f, now)
	out.stripped = f.stripped
	switch {
	case f.deny:
		out.fromDecision(f.denyBy)
		out.note = "via CNAME " + f.denyName
		return reply(req, s.blockRcode(m)), out
	case f.allGuarded:
		out.fromDecision(f.guardBy)
		out.addrs = []netip.Addr{f.guarded}
		return reply(req, dns.RcodeSuccess), out
	}
	out.addrs = f.addrs
	return s.build(req, a, f, now), out
}

// checkEDNS validates the client's OPT record: at most one (RFC 6891
// §6.1.1), version 0.
func checkEDNS(req *dns.Msg) int {
	n := 0
	for _, rr := range req.Extra {
		if opt, ok := rr.(*dns.OPT); ok {
			n++
			if opt.Version() != 0 {
				return dns.RcodeBadVers
			}
		}
	}
	if n > 1 {
		return dns.RcodeFormatError
	}
	return dns.RcodeSuccess
}

// reply is an empty answer to req with rcode; the question is the client's,
// as asked (shared with req, which is never modified).
func reply(req *dns.Msg, rcode int) *dns.Msg {
	resp := &dns.Msg{MsgHdr: dns.MsgHdr{
		Id:                 req.Id,
		Response:           true,
		Opcode:             req.Opcode,
		Rcode:              rcode,
		RecursionAvailable: true,
	}}
	if req.Opcode == dns.OpcodeQuery {
		resp.RecursionDesired = req.RecursionDesired
		resp.CheckingDisabled = req.CheckingDisabled
	}
	if len(req.Question) > 0 {
		resp.Question = req.Question[:1:1]
	}
	return resp
}

// build is the client's reply from a filtered answer: the client's question
// as asked (clients match it, case included), the records for the canonical
// name with TTLs counted down since they were fetched. The records are
// shared with other replies in the same second; the slices are capped so
// that nothing appends into them.
func (s *Server) build(req *dns.Msg, a *answer, f *filtered, now time.Time) *dns.Msg {
	resp := reply(req, a.rcode)
	snap := f.records(a, now, s.set.maxTTL, s.set.maxNegTTL)
	resp.Answer = snap.answer[:len(snap.answer):len(snap.answer)]
	resp.Ns = snap.ns[:len(snap.ns):len(snap.ns)]
	return resp
}

// fit sets our OPT when the client sent one (no client option is echoed) and
// truncates a UDP reply to the client's buffer (512 without EDNS; at most
// 1232) with TC=1, so the client retries over TCP.
func fit(req, resp *dns.Msg, tcp bool) {
	size := dns.MinMsgSize
	if opt := req.IsEdns0(); opt != nil {
		size = min(max(int(opt.UDPSize()), dns.MinMsgSize), upstreamEDNSSize)
		resp.SetEdns0(upstreamEDNSSize, false)
	}
	if tcp {
		size = dns.MaxMsgSize
	}
	resp.Truncate(size)
}

func (o *outcome) record(client netip.Addr, now time.Time) audit.Record {
	r := audit.Record{
		Time:     now,
		Kind:     audit.KindDNS,
		Target:   audit.Escape(o.target, maxAuditName),
		Port:     53,
		Decision: o.reason.Outcome(),
		Reason:   o.reason,
		Error:    audit.Escape(o.note, audit.MaxTarget),
	}
	if o.qtype != 0 || o.target != "" {
		r.QType = dns.Type(o.qtype).String()
	}
	if rule := o.decision.Rule; rule != nil {
		r.Rule = rule.Text
		r.Source = rule.Source.String()
	}
	if client.IsValid() {
		r.Client = client.String()
	}
	if len(o.addrs) > 0 {
		r.Addrs = make([]string, len(o.addrs))
		for i, a := range o.addrs {
			r.Addrs[i] = a.String()
		}
	}
	return r
}
