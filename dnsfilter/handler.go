package dnsfilter

import (
	"bytes"
	"encoding/binary"
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
// its reason (audit.Reasons: the outcome follows from it, but for a
// would-deny: result), the policy's decision when the policy decided.
type outcome struct {
	reason   audit.Reason
	decision policy.Decision
	target   string
	qtype    uint16
	addrs    []string // the answer's addresses as text (filtered.addrText: shared, read only)
	stripped int
	note     string
	noAudit  bool
	// ans and snap are an allowed answer and its records for this second,
	// which the reply is made of (decide leaves building it to the caller).
	ans  *answer
	snap *ttlSnap
}

// fromDecision sets the outcome of a policy decision.
func (o *outcome) fromDecision(d policy.Decision) {
	o.decision, o.reason = d, audit.Reason(d.Reason)
}

// result is the record's decision: the reason's outcome, or would-deny
// when report mode let the name through and nothing later (the guard, a
// blocked CNAME target, the upstream) decided otherwise.
func (o *outcome) result() audit.Outcome {
	if o.decision.WouldDeny && o.reason == audit.Reason(o.decision.Reason) {
		return audit.OutcomeWouldDeny
	}
	return o.reason.Outcome()
}

// respond answers one query; nil means send nothing (req is a response).
func (s *Server) respond(req *dns.Msg, client netip.Addr, tcp bool) *dns.Msg {
	if req.Response {
		return nil
	}
	resp, out := s.query(req, client)
	if resp == nil {
		resp = buildReply(req, out.ans, out.snap)
	}
	fit(req, resp, tcp)
	return resp
}

// respondWire answers one query with the packed reply, appended to buf; nil
// means send nothing. An allowed answer's reply is packed once per query
// shape and second (replyShape, ttlSnap.packed) and its bytes reused, with
// the query's ID, for every later query of that shape in that second: the
// bytes are the very ones respond's reply packs to
// (TestReusedReplyBytesEqualAFreshlyPackedReply). Everything else about the
// query — rate limit, decision, cache, learning, metrics, audit — happens
// for every query.
func (s *Server) respondWire(req *dns.Msg, client netip.Addr, tcp bool, buf []byte) ([]byte, error) {
	if req.Response {
		return nil, nil
	}
	resp, out := s.query(req, client)
	return s.packReply(req, tcp, resp, &out, buf)
}

// packReply packs the reply to req, appended to buf: resp, or for an
// allowed answer (resp nil) the reply built from out, its bytes reused
// within the second (see respondWire).
func (s *Server) packReply(req *dns.Msg, tcp bool, resp *dns.Msg, out *outcome, buf []byte) ([]byte, error) {
	if resp != nil {
		fit(req, resp, tcp)
		return resp.PackBuffer(buf)
	}
	shape := replyShapeOf(req, tcp)
	if p := out.snap.packed.Load(); p != nil && p.shape == shape {
		buf = append(buf[:0], p.msg...)
		binary.BigEndian.PutUint16(buf, req.Id)
		return buf, nil
	}
	resp = buildReply(req, out.ans, out.snap)
	fit(req, resp, tcp)
	b, err := resp.PackBuffer(buf)
	if err == nil {
		out.snap.packed.Store(&packedReply{shape: shape, msg: bytes.Clone(b)})
	}
	return b, err
}

// query decides req and accounts for it (metrics, audit). For an allowed
// answer resp is nil: the reply is built from out.ans and out.snap, or its
// bytes reused, by the caller.
func (s *Server) query(req *dns.Msg, client netip.Addr) (*dns.Msg, outcome) {
	now := s.set.now()
	resp, out := s.decide(req, client, now, false)
	s.account(&out, client, now)
	return resp, out
}

// account counts a query's outcome and sends its audit record.
func (s *Server) account(out *outcome, client netip.Addr, now time.Time) {
	s.m.query(out.result(), out.reason)
	if out.stripped > 0 {
		s.m.stripped.Add(float64(out.stripped))
	}
	if s.audit != nil && !out.noAudit {
		s.audit.Log(out.record(s.clientText(client), now))
	}
}

// replyShape is everything of a query that its reply's bytes depend on
// besides the answer and the ID: the question as asked (case included),
// the RD and CD bits, and how fit sizes and extends the reply.
type replyShape struct {
	name          string
	qtype, qclass uint16
	rd, cd        bool
	edns, tcp     bool
	size          int
}

func replyShapeOf(req *dns.Msg, tcp bool) replyShape {
	q := req.Question[0]
	size, edns := fitSize(req, tcp)
	return replyShape{name: q.Name, qtype: q.Qtype, qclass: q.Qclass, rd: req.RecursionDesired, cd: req.CheckingDisabled,
		edns: edns, tcp: tcp, size: size}
}

// packedReply is a reply's bytes for queries of one shape.
type packedReply struct {
	shape replyShape
	msg   []byte
}

// decide decides req. again is set when the query is decided again
// after a Reset (reset.go): the rate limiter already took its token.
func (s *Server) decide(req *dns.Msg, client netip.Addr, now time.Time, again bool) (*dns.Msg, outcome) {
	var out outcome
	if len(req.Question) > 0 {
		out.target, out.qtype = req.Question[0].Name, req.Question[0].Qtype
	}
	if !again {
		if ok, aud := s.limiter.allow(client, now); !ok {
			out.reason, out.noAudit = audit.ReasonDNSRate, !aud
			return reply(req, dns.RcodeRefused), out
		}
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
		// A would-deny keeps its reason, so the name is still learned.
		if d.WouldDeny {
			out.note = "type " + dns.Type(q.Qtype).String() + " answered empty (" + string(audit.ReasonQTypeNotForwarded) + ")"
		} else {
			out.reason = audit.ReasonQTypeNotForwarded
		}
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
		out.addrs = []string{f.guarded.String()}
		return reply(req, dns.RcodeSuccess), out
	}
	out.addrs = f.addrText
	out.ans, out.snap = a, f.records(a, now, s.set.maxTTL, s.set.maxNegTTL)
	return nil, out
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

// buildReply is the client's reply from a filtered answer: the client's
// question as asked (clients match it, case included), the records for the
// canonical name with TTLs counted down since they were fetched (snap). The
// records are shared with other replies in the same second; the slices are
// capped so that nothing appends into them.
func buildReply(req *dns.Msg, a *answer, snap *ttlSnap) *dns.Msg {
	resp := reply(req, a.rcode)
	resp.Answer = snap.answer[:len(snap.answer):len(snap.answer)]
	resp.Ns = snap.ns[:len(snap.ns):len(snap.ns)]
	return resp
}

// fit sets our OPT when the client sent one (no client option is echoed) and
// truncates a UDP reply to the client's buffer (512 without EDNS; at most
// 1232) with TC=1, so the client retries over TCP.
func fit(req, resp *dns.Msg, tcp bool) {
	size, edns := fitSize(req, tcp)
	if edns {
		resp.SetEdns0(upstreamEDNSSize, false)
	}
	resp.Truncate(size)
}

// fitSize is the size fit truncates a reply to req to, and whether the
// reply gets an OPT record.
func fitSize(req *dns.Msg, tcp bool) (size int, edns bool) {
	size = dns.MinMsgSize
	if opt := req.IsEdns0(); opt != nil {
		size = min(max(int(opt.UDPSize()), dns.MinMsgSize), upstreamEDNSSize)
		edns = true
	}
	if tcp {
		size = dns.MaxMsgSize
	}
	return size, edns
}

// clientText is client as the audit record writes it. A sandbox's queries
// come from one or two addresses, so the last one's text is kept rather
// than rendered (and allocated) again for every query.
func (s *Server) clientText(client netip.Addr) string {
	if !client.IsValid() {
		return ""
	}
	if c := s.lastClient.Load(); c != nil && c.addr == client {
		return c.text
	}
	c := &clientName{addr: client, text: client.String()}
	s.lastClient.Store(c)
	return c.text
}

// clientName is an address and its text.
type clientName struct {
	addr netip.Addr
	text string
}

func (o *outcome) record(client string, now time.Time) audit.Record {
	r := audit.Record{
		Time:     now,
		Kind:     audit.KindDNS,
		Target:   audit.Escape(o.target, maxAuditName),
		Port:     53,
		Decision: o.result(),
		Reason:   o.reason,
		Error:    audit.Escape(o.note, audit.MaxTarget),
		Client:   client,
		Addrs:    o.addrs,
	}
	if o.qtype != 0 || o.target != "" {
		r.QType = dns.Type(o.qtype).String()
	}
	if rule := o.decision.Rule; rule != nil {
		r.Rule = rule.Text
		r.Source = rule.SourceText()
	}
	return r
}
