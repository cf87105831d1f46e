package proxy

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"net"
	"testing"
	"time"
)

// helloSpec describes a ClientHello built by buildHello.
type helloSpec struct {
	names    []string // entries of the server_name list; nil: no server_name extension
	nameType byte     // host_name is 0
	sniExts  int      // how many server_name extensions (default 1 when names != nil)
	ech      bool     // add encrypted_client_hello (0xfe0d)
	esni     bool     // add the draft encrypted_server_name (0xffce)
	dupExt   bool     // add supported_groups twice
	extra    int      // padding extension of this many bytes
	noExts   bool     // no extension block at all (legal before TLS 1.3)
}

// helloMessage builds a ClientHello handshake message (header included).
func helloMessage(s helloSpec) []byte {
	var exts []byte
	addExt := func(typ uint16, data []byte) {
		exts = binary.BigEndian.AppendUint16(exts, typ)
		exts = binary.BigEndian.AppendUint16(exts, uint16(len(data)))
		exts = append(exts, data...)
	}
	if s.names != nil {
		var list []byte
		for _, n := range s.names {
			list = append(list, s.nameType)
			list = binary.BigEndian.AppendUint16(list, uint16(len(n)))
			list = append(list, n...)
		}
		data := binary.BigEndian.AppendUint16(nil, uint16(len(list)))
		data = append(data, list...)
		n := s.sniExts
		if n == 0 {
			n = 1
		}
		for range n {
			addExt(extServerName, data)
		}
	}
	addExt(0x000a, []byte{0, 2, 0, 0x1d}) // supported_groups: x25519
	if s.dupExt {
		addExt(0x000a, []byte{0, 2, 0, 0x17})
	}
	if s.ech {
		addExt(extECH, []byte{0, 1, 2, 3})
	}
	if s.esni {
		addExt(extESNI, []byte{0})
	}
	if s.extra > 0 {
		addExt(0x0015, make([]byte, s.extra))
	}
	var body []byte
	body = append(body, 3, 3)                // legacy_version
	body = append(body, make([]byte, 32)...) // random
	body = append(body, 0)                   // session id
	body = append(body, 0, 2, 0x13, 0x01)    // cipher suites
	body = append(body, 1, 0)                // compression
	if !s.noExts {
		body = binary.BigEndian.AppendUint16(body, uint16(len(exts)))
		body = append(body, exts...)
	}
	msg := []byte{handshakeTypeClientHello, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}
	return append(msg, body...)
}

// records wraps a handshake message in TLS records, split at the given
// fragment sizes (the last fragment takes the rest).
func records(msg []byte, sizes ...int) []byte {
	var out []byte
	for len(msg) > 0 {
		n := len(msg)
		if len(sizes) > 0 {
			n = min(sizes[0], len(msg))
			sizes = sizes[1:]
		}
		out = append(out, recordTypeHandshake, 3, 1, byte(n>>8), byte(n))
		out = append(out, msg[:n]...)
		msg = msg[n:]
	}
	return out
}

func buildHello(s helloSpec) []byte { return records(helloMessage(s)) }

// goClientHello captures the ClientHello crypto/tls sends for serverName
// ("" sends none).
func goClientHello(t testing.TB, serverName string) []byte {
	t.Helper()
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	go func() {
		_ = tls.Client(c1, &tls.Config{ServerName: serverName, InsecureSkipVerify: true}).Handshake()
	}()
	_ = c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	var buf []byte
	tmp := make([]byte, 4096)
	for {
		n, err := c2.Read(tmp)
		buf = append(buf, tmp[:n]...)
		if _, perr := parseClientHello(buf); !errors.Is(perr, errHelloIncomplete) {
			return buf
		}
		if err != nil {
			t.Fatalf("capturing ClientHello: %v", err)
		}
	}
}

func TestParseClientHello(t *testing.T) {
	good := helloMessage(helloSpec{names: []string{"allowed.test"}})
	tests := []struct {
		name    string
		in      []byte
		wantSNI string
		noSNI   bool
		wantErr string // "" ok, "incomplete", "ech", "malformed"
	}{
		{name: "one name", in: records(good), wantSNI: "allowed.test"},
		{name: "no extension block", in: buildHello(helloSpec{noExts: true}), noSNI: true},
		{name: "no server_name", in: buildHello(helloSpec{}), noSNI: true},
		{name: "split over two records, name in the second", in: records(good, 40), wantSNI: "allowed.test"},
		{name: "split over many records", in: records(good, 1, 1, 1, 10, 7), wantSNI: "allowed.test"},
		{name: "two names in one list", in: buildHello(helloSpec{names: []string{"allowed.test", "evil.test"}}), wantErr: "malformed"},
		{name: "two server_name extensions", in: buildHello(helloSpec{names: []string{"allowed.test"}, sniExts: 2}), wantErr: "malformed"},
		{name: "non-zero name type", in: buildHello(helloSpec{names: []string{"allowed.test"}, nameType: 1}), wantErr: "malformed"},
		{name: "empty name", in: buildHello(helloSpec{names: []string{""}}), wantErr: "malformed"},
		{name: "empty name list", in: buildHello(helloSpec{names: []string{}}), wantErr: "malformed"},
		{name: "NUL in name", in: buildHello(helloSpec{names: []string{"evil.test\x00.allowed.test"}}), wantErr: "malformed"},
		{name: "space in name", in: buildHello(helloSpec{names: []string{"allowed.test evil"}}), wantErr: "malformed"},
		{name: "non-ASCII name", in: buildHello(helloSpec{names: []string{"allowéd.test"}}), wantErr: "malformed"},
		{name: "ECH", in: buildHello(helloSpec{names: []string{"allowed.test"}, ech: true}), wantErr: "ech"},
		{name: "draft ESNI", in: buildHello(helloSpec{names: []string{"allowed.test"}, esni: true}), wantErr: "ech"},
		{name: "duplicate extension", in: buildHello(helloSpec{names: []string{"allowed.test"}, dupExt: true}), wantErr: "malformed"},
		{name: "large padding still fine", in: records(helloMessage(helloSpec{names: []string{"allowed.test"}, extra: 9000}), 16384), wantSNI: "allowed.test"},
		{name: "hello over the bound", in: records(helloMessage(helloSpec{names: []string{"allowed.test"}, extra: maxHelloLen}), 16384), wantErr: "malformed"},
		{name: "application data record", in: append([]byte{0x17, 3, 3, 0, 1}, 0), wantErr: "malformed"},
		{name: "SSLv2-style first byte", in: []byte{0x80, 0x2e, 0x01}, wantErr: "malformed"},
		{name: "record version 2", in: append([]byte{0x16, 2, 0, 0, 4}, good[:4]...), wantErr: "malformed"},
		{name: "empty record", in: []byte{0x16, 3, 1, 0, 0}, wantErr: "malformed"},
		{name: "oversized record", in: []byte{0x16, 3, 1, 0x40, 0x01}, wantErr: "malformed"},
		{name: "not a ClientHello", in: records(append([]byte{2}, good[1:]...)), wantErr: "malformed"},
		{name: "not a ClientHello, seen early", in: []byte{0x16, 3, 1, 0, 100, 2}, wantErr: "malformed"},
		{name: "alert record between fragments", in: append(records(good[:40]), append([]byte{0x15, 3, 3, 0, 2, 2, 40}, records(good[40:])...)...), wantErr: "malformed"},
		{name: "bytes after the hello in its record", in: records(append(append([]byte{}, good...), 0x0b, 0, 0, 0)), wantErr: "malformed"},
		{name: "truncated header", in: []byte{0x16, 3}, wantErr: "incomplete"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, err := parseClientHello(tc.in)
			got := ""
			var he *helloError
			switch {
			case err == nil:
			case errors.Is(err, errHelloIncomplete):
				got = "incomplete"
			case errors.Is(err, errHelloECH):
				got = "ech"
			case errors.As(err, &he):
				got = "malformed"
			default:
				got = "other: " + err.Error()
			}
			if got != tc.wantErr {
				t.Fatalf("parseClientHello error = %v (%q), want %q", err, got, tc.wantErr)
			}
			if err != nil {
				return
			}
			if tc.noSNI {
				if h.hasSNI {
					t.Fatalf("hasSNI = true (%q), want no SNI", h.serverName)
				}
				return
			}
			if !h.hasSNI || h.serverName != tc.wantSNI {
				t.Fatalf("SNI = %q (has %v), want %q", h.serverName, h.hasSNI, tc.wantSNI)
			}
		})
	}
}

func TestParseClientHelloRealGoClient(t *testing.T) {
	for _, name := range []string{"example.com", "xn--nxasmq6b.test"} {
		h, err := parseClientHello(goClientHello(t, name))
		if err != nil || !h.hasSNI || h.serverName != name {
			t.Errorf("Go ClientHello for %q: got %q (has %v), err %v", name, h.serverName, h.hasSNI, err)
		}
	}
	// crypto/tls sends no SNI for an empty ServerName or an IP literal.
	for _, name := range []string{"", "127.0.0.1"} {
		h, err := parseClientHello(goClientHello(t, name))
		if err != nil || h.hasSNI {
			t.Errorf("Go ClientHello for %q: got SNI %q (has %v), err %v; want none", name, h.serverName, h.hasSNI, err)
		}
	}
}

// Every strict prefix of a hello is incomplete (never a different answer),
// however the hello is fragmented: a peeker that stops early fails closed.
func TestParseClientHelloPrefixesAreIncomplete(t *testing.T) {
	for _, in := range [][]byte{
		goClientHello(t, "allowed.test"),
		records(helloMessage(helloSpec{names: []string{"allowed.test"}}), 3, 50, 2),
	} {
		for i := range len(in) {
			if _, err := parseClientHello(in[:i]); !errors.Is(err, errHelloIncomplete) {
				t.Fatalf("prefix of %d/%d bytes: err = %v, want incomplete", i, len(in), err)
			}
		}
	}
}
