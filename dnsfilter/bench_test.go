package dnsfilter

import (
	"io"
	"net"
	"testing"

	"github.com/miekg/dns"

	"github.com/egressd/egressd/internal/baredns"
)

// packWriter is a dns.ResponseWriter that packs a reply given as a message
// (as the real one does before writing) and throws it away, as it does the
// bytes of a reply given packed.
type packWriter struct {
	remote net.Addr
	buf    []byte
	n      int // replies written
}

func (w *packWriter) LocalAddr() net.Addr  { return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53} }
func (w *packWriter) RemoteAddr() net.Addr { return w.remote }
func (w *packWriter) WriteMsg(m *dns.Msg) error {
	b, err := m.PackBuffer(w.buf)
	w.buf = b[:cap(b)]
	w.n++
	return err
}
func (w *packWriter) Write(b []byte) (int, error) { w.n++; return len(b), nil }
func (w *packWriter) Close() error                { return nil }
func (w *packWriter) TsigStatus() error           { return nil }
func (w *packWriter) TsigTimersOnly(bool)         {}
func (w *packWriter) Hijack()                     {}

func benchServeDNS(b *testing.B, qname string, auditOn bool) {
	m := matcher(b, []string{"*.example.test"}, []string{"*.evil.test"})
	var aw io.Writer
	if auditOn {
		aw = io.Discard
	}
	s, _ := newMemServer(b, m, aw)
	req := new(dns.Msg)
	req.SetQuestion(qname, dns.TypeA)
	w := &packWriter{remote: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}, buf: make([]byte, 0, 512)}
	s.ServeDNS(w, req) // fill the cache
	b.ReportAllocs()
	for b.Loop() {
		s.ServeDNS(w, req)
	}
	if w.n != b.N+1 {
		b.Fatalf("%d replies to %d queries", w.n, b.N+1)
	}
}

// BenchmarkServeDNSCached is one query for a cached allowed name: rate
// limit, decision, cache hit, filter memo, reply built and packed.
func BenchmarkServeDNSCached(b *testing.B) {
	b.Run("audit=off", func(b *testing.B) { benchServeDNS(b, "www.example.test.", false) })
	b.Run("audit=on", func(b *testing.B) { benchServeDNS(b, "www.example.test.", true) })
}

// BenchmarkServeDNSDenied is one query for a name with no allow rule.
func BenchmarkServeDNSDenied(b *testing.B) {
	b.Run("audit=off", func(b *testing.B) { benchServeDNS(b, "www.other.test.", false) })
	b.Run("audit=on", func(b *testing.B) { benchServeDNS(b, "www.other.test.", true) })
}

// BenchmarkServeDNSBare is bench/dns's bare miekg/dns server, in process:
// the baseline the cached path is measured against (reply built from
// memory, packed).
func BenchmarkServeDNSBare(b *testing.B) {
	h := baredns.Handler()
	req := new(dns.Msg)
	req.SetQuestion("www.example.test.", dns.TypeA)
	w := &packWriter{remote: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}, buf: make([]byte, 0, 512)}
	b.ReportAllocs()
	for b.Loop() {
		h.ServeDNS(w, req)
	}
}
