package fakenet

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// DefaultTTL is the TTL of a Record unless WithTTL says otherwise.
const DefaultTTL = 60

// maxLogEntries bounds the DNS and HTTP logs; counters keep counting past it.
const maxLogEntries = 1 << 16

// Record is one answer the fake DNS server gives for a name. Build it with A, AAAA, CNAME, TXT
// or RR. The constructors panic on a malformed literal, like regexp.MustCompile: they are meant
// for constants in tests.
type Record struct {
	rr dns.RR // owner name is a placeholder, replaced by the queried name when answering
}

func header(rrtype uint16) dns.RR_Header {
	return dns.RR_Header{Name: ".", Rrtype: rrtype, Class: dns.ClassINET, Ttl: DefaultTTL}
}

// A is an IPv4 address record. An IPv4-mapped IPv6 literal ("::ffff:10.0.0.1") is unmapped.
func A(ip string) Record {
	a, err := netip.ParseAddr(ip)
	if err != nil || a.Zone() != "" {
		panic(fmt.Sprintf("fakenet.A(%q): not an IP address", ip))
	}
	a = a.Unmap()
	if !a.Is4() {
		panic(fmt.Sprintf("fakenet.A(%q): an IPv6 address; use AAAA", ip))
	}
	return Record{&dns.A{Hdr: header(dns.TypeA), A: net.IP(a.AsSlice())}}
}

// AAAA is an IPv6 address record. IPv4-mapped forms stay mapped ("::ffff:10.0.0.1" is answered
// as exactly that), which is what a rebinding test wants; a plain IPv4 literal panics.
func AAAA(ip string) Record {
	a, err := netip.ParseAddr(ip)
	if err != nil || a.Zone() != "" {
		panic(fmt.Sprintf("fakenet.AAAA(%q): not an IP address", ip))
	}
	if !a.Is6() {
		panic(fmt.Sprintf("fakenet.AAAA(%q): an IPv4 address; use A, or AAAA(\"::ffff:%s\")", ip, ip))
	}
	return Record{&dns.AAAA{Hdr: header(dns.TypeAAAA), AAAA: net.IP(a.AsSlice())}}
}

// CNAME is an alias. The server follows a chain of CNAMEs through its own table (at most 8
// links, stopping at a loop), like the recursive resolver it stands in for; a chain ending at a
// name not in the table is answered NXDOMAIN with the chain in the answer section.
func CNAME(target string) Record {
	if _, ok := dns.IsDomainName(target); !ok {
		panic(fmt.Sprintf("fakenet.CNAME(%q): not a domain name", target))
	}
	return Record{&dns.CNAME{Hdr: header(dns.TypeCNAME), Target: dns.Fqdn(target)}}
}

// TXT is a text record with one character-string per argument.
func TXT(txt ...string) Record {
	return Record{&dns.TXT{Hdr: header(dns.TypeTXT), Txt: append([]string(nil), txt...)}}
}

// RR is a record of any type in zone-file syntax, for what the helpers above do not cover:
// RR("HTTPS", `1 . alpn="h2" ipv4hint=203.0.113.10`), RR("MX", "10 mail.example.test."),
// RR("SRV", "0 0 443 svc.example.test.").
func RR(typ, rdata string) Record {
	rr, err := dns.NewRR(fmt.Sprintf(". %d IN %s %s", DefaultTTL, typ, rdata))
	if err != nil || rr == nil {
		panic(fmt.Sprintf("fakenet.RR(%q, %q): %v", typ, rdata, err))
	}
	return Record{rr}
}

// WithTTL returns the record with another TTL (0 is allowed and useful for rebinding tests).
func (r Record) WithTTL(ttl uint32) Record {
	rr := dns.Copy(r.rr)
	rr.Header().Ttl = ttl
	return Record{rr}
}

// String is the record in zone-file syntax, with "." as the owner.
func (r Record) String() string {
	if r.rr == nil {
		return "<zero Record>"
	}
	return r.rr.String()
}

// DNSQuery is one question the fake DNS server received.
type DNSQuery struct {
	Time   time.Time
	Name   string         // as asked, in presentation format, with the trailing dot, case kept
	Type   string         // "A", "AAAA", "TXT", "TYPE65534", ...
	Proto  string         // "udp" or "tcp"
	From   netip.AddrPort // the client
	Server netip.AddrPort // the address it was sent to (203.0.113.53:53 or [2001:db8::53]:53)
}

// canonName is the key of the table and of the counters: lower-case, fully qualified.
func canonName(name string) string {
	return strings.ToLower(dns.Fqdn(name))
}

// dnsServer is the world's authoritative (and, for its own table, recursive-looking) server.
type dnsServer struct {
	mu      sync.Mutex
	records map[string][]dns.RR // canonical name → templates
	log     []DNSQuery
	counts  map[string]int
}

func newDNSServer() *dnsServer {
	return &dnsServer{records: make(map[string][]dns.RR), counts: make(map[string]int)}
}

func (d *dnsServer) set(name string, rrs []Record) {
	key := canonName(name)
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(rrs) == 0 {
		delete(d.records, key)
		return
	}
	tmpl := make([]dns.RR, 0, len(rrs))
	for _, r := range rrs {
		if r.rr == nil {
			panic("fakenet: SetRecords given a zero Record; build records with A, AAAA, CNAME, TXT or RR")
		}
		tmpl = append(tmpl, dns.Copy(r.rr))
	}
	d.records[key] = tmpl
}

// lookup finds the records of name: an exact entry first, then the closest wildcard entry
// ("*.example.test" answers any name below example.test without an entry of its own).
func (d *dnsServer) lookup(name string) ([]dns.RR, bool) {
	key := canonName(name)
	d.mu.Lock()
	defer d.mu.Unlock()
	if rrs, ok := d.records[key]; ok {
		return rrs, true
	}
	for rest := key; ; {
		i := strings.IndexByte(rest, '.')
		if i < 0 || i == len(rest)-1 {
			return nil, false
		}
		rest = rest[i+1:]
		if rrs, ok := d.records["*."+rest]; ok {
			return rrs, true
		}
	}
}

func (d *dnsServer) record(q DNSQuery) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.counts[canonName(q.Name)]++
	if len(d.log) < maxLogEntries {
		d.log = append(d.log, q)
	}
}

func (d *dnsServer) queries(name string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.counts[canonName(name)]
}

func (d *dnsServer) snapshot() []DNSQuery {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]DNSQuery(nil), d.log...)
}

func (d *dnsServer) reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.log = nil
	d.counts = make(map[string]int)
}

var negativeSOA = &dns.SOA{
	Hdr:     dns.RR_Header{Name: ".", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: DefaultTTL},
	Ns:      "ns.fakenet.test.",
	Mbox:    "hostmaster.fakenet.test.",
	Serial:  1,
	Refresh: 3600,
	Retry:   600,
	Expire:  86400,
	Minttl:  DefaultTTL,
}

// ServeDNS answers one message. Every question is logged before anything else, so a test can
// count what arrived even when the answer is an error.
func (d *dnsServer) ServeDNS(rw dns.ResponseWriter, req *dns.Msg) {
	proto := rw.LocalAddr().Network()
	from, _ := netip.ParseAddrPort(rw.RemoteAddr().String())
	server, _ := netip.ParseAddrPort(rw.LocalAddr().String())
	now := time.Now()
	for _, q := range req.Question {
		d.record(DNSQuery{Time: now, Name: q.Name, Type: dns.Type(q.Qtype).String(), Proto: proto,
			From: from, Server: server})
	}

	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	m.RecursionAvailable = true
	switch {
	case req.Opcode != dns.OpcodeQuery:
		m.Rcode = dns.RcodeNotImplemented
	case len(req.Question) != 1:
		m.Rcode = dns.RcodeFormatError
	case req.Question[0].Qclass != dns.ClassINET:
		m.Rcode = dns.RcodeRefused
	default:
		d.answer(m, req.Question[0])
	}

	size := dns.MinMsgSize
	if opt := req.IsEdns0(); opt != nil {
		size = max(int(opt.UDPSize()), dns.MinMsgSize)
		m.SetEdns0(1232, false)
	}
	if proto == "tcp" {
		size = dns.MaxMsgSize
	}
	m.Truncate(size)
	_ = rw.WriteMsg(m)
}

func (d *dnsServer) answer(m *dns.Msg, q dns.Question) {
	name := q.Name
	seen := map[string]bool{canonName(name): true}
	for range 9 {
		rrs, ok := d.lookup(name)
		if !ok {
			m.Rcode = dns.RcodeNameError
			m.Ns = append(m.Ns, dns.Copy(negativeSOA))
			return
		}
		if q.Qtype != dns.TypeCNAME {
			if target := cnameOf(rrs); target != nil {
				m.Answer = append(m.Answer, withOwner(target, name))
				name = target.(*dns.CNAME).Target
				if seen[canonName(name)] {
					return // a loop: answer the chain so far
				}
				seen[canonName(name)] = true
				continue
			}
		}
		for _, rr := range rrs {
			if q.Qtype == dns.TypeANY || rr.Header().Rrtype == q.Qtype {
				m.Answer = append(m.Answer, withOwner(rr, name))
			}
		}
		if len(m.Answer) == 0 {
			m.Ns = append(m.Ns, dns.Copy(negativeSOA)) // NODATA
		}
		return
	}
}

func cnameOf(rrs []dns.RR) dns.RR {
	for _, rr := range rrs {
		if rr.Header().Rrtype == dns.TypeCNAME {
			return rr
		}
	}
	return nil
}

func withOwner(rr dns.RR, owner string) dns.RR {
	c := dns.Copy(rr)
	c.Header().Name = owner
	return c
}

// countingReader counts UDP datagrams as the DNS server reads them, before parsing, so a
// malformed query still counts as "arrived". (TCP is counted per connection, by the listener.)
type countingReader struct {
	dns.Reader
	count func(local net.Addr)
}

func (r countingReader) ReadUDP(conn *net.UDPConn, timeout time.Duration) ([]byte, *dns.SessionUDP, error) {
	b, s, err := r.Reader.ReadUDP(conn, timeout)
	if err == nil {
		r.count(conn.LocalAddr())
	}
	return b, s, err
}
