// Package baredns is the bare miekg/dns server the resolver's benchmarks
// (bench/dns, dnsfilter's BenchmarkServeDNSBare) measure egressd's
// resolver against: it answers from memory, with nothing to decide,
// cache or log. Never part of egressd.
package baredns

import (
	"net"

	"github.com/miekg/dns"
)

// Answer is the address every A query is answered with (TEST-NET-2).
var Answer = net.IPv4(198, 51, 100, 1).To4()

// Handler answers every A query with Answer (TTL 300) and any other with
// no data, echoing EDNS0 with a 1232-byte payload when the query has it.
func Handler() dns.Handler {
	return dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		resp := new(dns.Msg)
		resp.SetReply(r)
		resp.RecursionAvailable = true
		if len(r.Question) == 1 && r.Question[0].Qtype == dns.TypeA {
			resp.Answer = []dns.RR{&dns.A{
				Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300},
				A:   Answer,
			}}
		}
		if r.IsEdns0() != nil {
			resp.SetEdns0(1232, false)
		}
		_ = w.WriteMsg(resp)
	})
}
