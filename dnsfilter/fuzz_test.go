package dnsfilter

import (
	"context"
	"io"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/policy"
)

// memUpstream is an in-memory exchanger that records every query it is sent
// and answers with records that exercise the filter: public and guarded
// addresses, CNAMEs into blocked and unlisted names, NXDOMAIN, big answers.
type memUpstream struct {
	mu  sync.Mutex
	got []*dns.Msg
}

func (u *memUpstream) exchange(_ context.Context, q *dns.Msg) (*dns.Msg, error) {
	u.mu.Lock()
	u.got = append(u.got, q.Copy())
	u.mu.Unlock()
	resp := new(dns.Msg)
	resp.SetReply(q)
	resp.RecursionAvailable = true
	if len(q.Question) != 1 {
		resp.Rcode = dns.RcodeFormatError
		return resp, nil
	}
	name, qtype := q.Question[0].Name, q.Question[0].Qtype
	rr := func(s string) dns.RR {
		r, err := dns.NewRR(s)
		if err != nil {
			panic(err)
		}
		return r
	}
	switch {
	case strings.HasPrefix(name, "missing"):
		resp.Rcode = dns.RcodeNameError
		resp.Ns = []dns.RR{rr(testSOA)}
		return resp, nil
	case strings.HasPrefix(name, "fail"):
		resp.Rcode = dns.RcodeServerFailure
		return resp, nil
	case strings.HasPrefix(name, "cname"):
		resp.Answer = append(resp.Answer, rr(name+" 60 IN CNAME edge.cdn.test."), rr("edge.cdn.test. 60 IN CNAME x.evil.test."), rr("x.evil.test. 60 IN A 203.0.113.66"))
		return resp, nil
	case strings.HasPrefix(name, "unlisted"):
		resp.Answer = append(resp.Answer, rr(name+" 60 IN CNAME a.unlisted.test."), rr("a.unlisted.test. 60 IN A 203.0.113.67"))
		return resp, nil
	}
	n := 3
	if strings.HasPrefix(name, "big") {
		n = 80
	}
	for i := range n {
		switch qtype {
		case dns.TypeA:
			resp.Answer = append(resp.Answer, rr(name+" 60 IN A 203.0.113."+itoa(i%250)))
			resp.Answer = append(resp.Answer, rr(name+" 60 IN A 10.0.0."+itoa(i%250)))
		case dns.TypeAAAA:
			resp.Answer = append(resp.Answer, rr(name+" 60 IN AAAA 2001:db8::"+itoa(i%250)))
			resp.Answer = append(resp.Answer, rr(name+" 60 IN AAAA ::ffff:127.0.0."+itoa(i%250)))
		case dns.TypeTXT:
			resp.Answer = append(resp.Answer, rr(name+" 60 IN TXT \"hello\""))
		}
	}
	return resp, nil
}

func (u *memUpstream) close() {}

func (u *memUpstream) drain() []*dns.Msg {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := u.got
	u.got = nil
	return out
}

func newMemServer(tb testing.TB, m *policy.Matcher, auditW io.Writer) (*Server, *memUpstream) {
	tb.Helper()
	live := &policy.Live{}
	live.Store(m)
	cfg := Config{Policy: live, Upstreams: []string{"127.0.0.1:1"}, QueryRate: -1, CacheSize: 256}
	if auditW != nil {
		cfg.Audit = audit.New(auditW, "fuzz")
	}
	s, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	up := &memUpstream{}
	s.pool.Store(&upstreamPool{addrs: s.set.upstreams, up: up})
	return s, up
}

func FuzzHandleMessage(f *testing.F) {
	seed := func(name string, qtype uint16, edns int, mod func(*dns.Msg)) {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		if edns > 0 {
			m.SetEdns0(uint16(edns), false)
		}
		if mod != nil {
			mod(m)
		}
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, false)
		f.Add(b, true)
	}
	seed("www.example.test.", dns.TypeA, 0, nil)
	seed("WwW.ExAmPlE.tEsT.", dns.TypeAAAA, 1232, nil)
	seed("big.example.test.", dns.TypeA, 0, nil)
	seed("big.example.test.", dns.TypeAAAA, 600, nil)
	seed("cname.example.test.", dns.TypeA, 0, nil)
	seed("unlisted.example.test.", dns.TypeA, 0, nil)
	seed("missing.example.test.", dns.TypeA, 0, nil)
	seed("fail.example.test.", dns.TypeA, 0, nil)
	seed("x.evil.test.", dns.TypeA, 0, nil)
	seed("secret-data.other.test.", dns.TypeTXT, 0, nil)
	seed("www.example.test.", dns.TypeANY, 0, nil)
	seed("www.example.test.", dns.TypeHTTPS, 0, nil)
	seed("www.example.test.", dns.TypeTXT, 4096, func(m *dns.Msg) {
		m.Question = append(m.Question, dns.Question{Name: "x.evil.test.", Qtype: dns.TypeA, Qclass: dns.ClassINET})
	})
	seed("www.example.test.", dns.TypeA, 1232, func(m *dns.Msg) { m.IsEdns0().SetVersion(1) })
	seed("www\\000.example.test.", dns.TypeA, 0, nil)

	m := matcher(f, []string{"*.example.test", "*.cdn.test"}, []string{"*.evil.test"})
	s, up := newMemServer(f, m, io.Discard)
	client := netip.MustParseAddr("127.0.0.1")
	f.Fuzz(func(t *testing.T, data []byte, tcp bool) {
		req := new(dns.Msg)
		if req.Unpack(data) != nil {
			return
		}
		wire, err := s.respondWire(req, client, tcp, nil)
		if err != nil {
			t.Fatalf("reply does not pack: %v", err)
		}
		for _, q := range up.drain() {
			if len(q.Question) != 1 {
				t.Fatalf("forwarded %d questions", len(q.Question))
			}
			qq := q.Question[0]
			name := strings.TrimSuffix(qq.Name, ".")
			if d := m.DecideNameAnyPort(name); !d.Allow {
				t.Fatalf("forwarded %q, denied: %v", qq.Name, d)
			}
			if name != strings.ToLower(name) || qq.Qclass != dns.ClassINET || !forwardedTypes[qq.Qtype] {
				t.Fatalf("forwarded a query that was not re-synthesised: %v", qq)
			}
			if len(q.Answer) != 0 || len(q.Ns) != 0 || len(q.Extra) != 1 {
				t.Fatalf("forwarded extra records: %v", q)
			}
			if o := q.IsEdns0(); o == nil || len(o.Option) != 0 {
				t.Fatalf("forwarded client EDNS options: %v", o)
			}
		}
		if wire == nil {
			if !req.Response {
				t.Fatal("no reply to a query")
			}
			return
		}
		resp := new(dns.Msg)
		if err := resp.Unpack(wire); err != nil {
			t.Fatalf("reply does not unpack: %v", err)
		}
		if resp.Id != req.Id || !resp.Response {
			t.Fatalf("reply id %d response=%v to query id %d", resp.Id, resp.Response, req.Id)
		}
		if !tcp {
			limit := dns.MinMsgSize
			if o := req.IsEdns0(); o != nil {
				limit = min(max(int(o.UDPSize()), dns.MinMsgSize), upstreamEDNSSize)
			}
			if len(wire) > limit {
				t.Fatalf("UDP reply of %d bytes over the client's %d", len(wire), limit)
			}
		}
		for _, rr := range resp.Answer {
			if a, ok := recordAddr(rr); ok {
				if d := m.GuardAddr(a, 0); !d.Allow {
					t.Fatalf("answered guarded address %v", a)
				}
			}
			if c, ok := rr.(*dns.CNAME); ok {
				if d := m.DecideNameAnyPort(c.Target); d.Reason == policy.ReasonBlockedBy {
					t.Fatalf("answered a CNAME into blocked %s", c.Target)
				}
			}
		}
	})
}
