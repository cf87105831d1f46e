package proxy

import (
	"errors"
	"fmt"
)

// TLS ClientHello peeking: enough of RFC 8446 §4.1.2 / RFC 6066 §3 to find
// the server_name, and to refuse anything that would let a client hide or
// double it (THREATS E1-E3). The parser is pure and bounded; the caller
// feeds it the bytes read so far and reads more while it answers
// errHelloIncomplete.

const (
	recordTypeHandshake      = 0x16
	handshakeTypeClientHello = 0x01
	recordHeaderLen          = 5
	// maxRecordPayload is TLSPlaintext.length's limit (RFC 8446 §5.1).
	maxRecordPayload = 1 << 14
	// maxHelloLen bounds the reassembled ClientHello handshake message.
	// Real hellos are 200-2,000 bytes (post-quantum key shares included);
	// anything larger is refused rather than buffered.
	maxHelloLen = 16 << 10
	// maxHelloBytes bounds the stream bytes (record headers included) the
	// peeker reads before it has the whole hello.
	maxHelloBytes = maxHelloLen + 64*recordHeaderLen

	extServerName = 0x0000
	extECH        = 0xfe0d // encrypted_client_hello (draft-ietf-tls-esni, RFC 9849)
	extESNI       = 0xffce // the earlier encrypted_server_name draft
)

var (
	// errHelloIncomplete: the bytes are a valid prefix of a ClientHello;
	// read more.
	errHelloIncomplete = errors.New("ClientHello incomplete")
	// errHelloECH: the hello carries an encrypted ClientHello; the name
	// that matters is hidden, so it is refused (THREATS E2).
	errHelloECH = errors.New("ClientHello carries encrypted_client_hello (ECH)")
)

// helloError is a malformed or ambiguous ClientHello.
type helloError struct{ msg string }

func (e *helloError) Error() string { return "malformed ClientHello: " + e.msg }

func badHello(format string, args ...any) error {
	return &helloError{msg: fmt.Sprintf(format, args...)}
}

// clientHello is what egressd needs from a ClientHello.
type clientHello struct {
	// serverName is the host_name of the server_name extension exactly as
	// sent (printable ASCII, not yet normalised); empty when hasSNI is false.
	serverName string
	hasSNI     bool
}

// looksLikeTLS reports whether the first byte of a stream starts a TLS
// handshake record.
func looksLikeTLS(b []byte) bool { return len(b) > 0 && b[0] == recordTypeHandshake }

// parseClientHello parses the ClientHello at the start of b, a TLS record
// stream. It reassembles a hello fragmented over several handshake records.
// It returns errHelloIncomplete when b is a valid but unfinished prefix,
// errHelloECH for an ECH hello, and a *helloError for anything malformed:
// a non-handshake record before the hello is complete, an empty record, a
// record or hello over the bounds, trailing bytes, a duplicated extension,
// a server_name list with zero or several names, a name type other than
// host_name, or a name with a byte outside printable ASCII.
func parseClientHello(b []byte) (clientHello, error) {
	var msg []byte // the handshake message, reassembled
	single := true // msg aliases b (one record so far)
	off := 0
	for {
		if off >= maxHelloBytes {
			return clientHello{}, badHello("more than %d bytes without a complete hello", maxHelloBytes)
		}
		if len(b) > off {
			if typ := b[off]; typ != recordTypeHandshake {
				if off == 0 {
					return clientHello{}, badHello("record type %d, want handshake (22)", typ)
				}
				return clientHello{}, badHello("record type %d before the ClientHello was complete", typ)
			}
		}
		if len(b) > off+1 && b[off+1] != 3 {
			return clientHello{}, badHello("record version %d.x", b[off+1])
		}
		if len(b)-off < recordHeaderLen {
			return clientHello{}, errHelloIncomplete
		}
		n := int(b[off+3])<<8 | int(b[off+4])
		if n == 0 {
			return clientHello{}, badHello("empty handshake record")
		}
		if n > maxRecordPayload {
			return clientHello{}, badHello("record of %d bytes (limit %d)", n, maxRecordPayload)
		}
		start := off + recordHeaderLen
		if start+n > maxHelloBytes {
			return clientHello{}, badHello("ClientHello spans more than %d bytes", maxHelloBytes)
		}
		if len(b)-start < n {
			// Check what we already have of this record so an obviously
			// bad hello fails before the peer sends the rest.
			if err := checkPartialHello(msg, b[start:]); err != nil {
				return clientHello{}, err
			}
			return clientHello{}, errHelloIncomplete
		}
		frag := b[start : start+n]
		if msg == nil {
			msg = frag
		} else {
			if single {
				msg = append(make([]byte, 0, len(msg)+len(frag)), msg...)
				single = false
			}
			msg = append(msg, frag...)
		}
		off = start + n
		if len(msg) < 4 {
			continue
		}
		if msg[0] != handshakeTypeClientHello {
			return clientHello{}, badHello("handshake type %d, want ClientHello (1)", msg[0])
		}
		bodyLen := int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3])
		if bodyLen > maxHelloLen {
			return clientHello{}, badHello("ClientHello of %d bytes (limit %d)", bodyLen, maxHelloLen)
		}
		if len(msg) < 4+bodyLen {
			continue
		}
		if len(msg) > 4+bodyLen {
			return clientHello{}, badHello("%d bytes after the ClientHello in its record", len(msg)-4-bodyLen)
		}
		return parseHelloBody(msg[4:])
	}
}

// checkPartialHello rejects a hello whose first bytes are already wrong.
func checkPartialHello(msg, part []byte) error {
	var first [4]byte
	n := copy(first[:], msg)
	n += copy(first[n:], part)
	if n >= 1 && first[0] != handshakeTypeClientHello {
		return badHello("handshake type %d, want ClientHello (1)", first[0])
	}
	if n >= 4 {
		if bodyLen := int(first[1])<<16 | int(first[2])<<8 | int(first[3]); bodyLen > maxHelloLen {
			return badHello("ClientHello of %d bytes (limit %d)", bodyLen, maxHelloLen)
		}
	}
	return nil
}

// parseHelloBody parses the ClientHello body (after the 4-byte handshake
// header).
func parseHelloBody(body []byte) (clientHello, error) {
	r := byteReader{b: body}
	r.skip(2)  // legacy_version
	r.skip(32) // random
	sid := r.vec8()
	if len(sid) > 32 {
		return clientHello{}, badHello("session id of %d bytes", len(sid))
	}
	suites := r.vec16()
	if len(suites) < 2 || len(suites)%2 != 0 {
		return clientHello{}, badHello("cipher suite list of %d bytes", len(suites))
	}
	if comp := r.vec8(); len(comp) < 1 {
		return clientHello{}, badHello("empty compression method list")
	}
	if r.bad {
		return clientHello{}, badHello("truncated before the extensions")
	}
	var h clientHello
	if r.empty() {
		return h, nil // no extensions at all: no SNI (TLS 1.0-1.2 allow this)
	}
	exts := r.vec16()
	if r.bad || !r.empty() {
		return clientHello{}, badHello("extension block does not end the hello")
	}
	er := byteReader{b: exts}
	seen := make(map[uint16]bool, 24)
	for !er.empty() {
		typ := er.u16()
		data := er.vec16()
		if er.bad {
			return clientHello{}, badHello("truncated extension")
		}
		if seen[typ] {
			return clientHello{}, badHello("extension %#04x appears twice", typ)
		}
		seen[typ] = true
		switch typ {
		case extECH, extESNI:
			return clientHello{}, errHelloECH
		case extServerName:
			name, err := parseServerName(data)
			if err != nil {
				return clientHello{}, err
			}
			h.serverName, h.hasSNI = name, true
		}
	}
	return h, nil
}

// parseServerName parses the server_name extension data (RFC 6066 §3):
// exactly one entry, of type host_name, printable ASCII.
func parseServerName(data []byte) (string, error) {
	r := byteReader{b: data}
	list := r.vec16()
	if r.bad || !r.empty() {
		return "", badHello("server_name list length does not match the extension")
	}
	if len(list) == 0 {
		return "", badHello("empty server_name list")
	}
	lr := byteReader{b: list}
	nameType := lr.u8()
	name := lr.vec16()
	if lr.bad {
		return "", badHello("truncated server_name entry")
	}
	if nameType != 0 {
		return "", badHello("server_name type %d, want host_name (0)", nameType)
	}
	if !lr.empty() {
		return "", badHello("more than one server_name")
	}
	if len(name) == 0 {
		return "", badHello("empty server_name")
	}
	for _, c := range name {
		if c < 0x21 || c > 0x7e {
			return "", badHello("server_name contains byte %#02x", c)
		}
	}
	return string(name), nil
}

// byteReader reads TLS presentation-language vectors; any overrun sets bad
// and yields zero values.
type byteReader struct {
	b   []byte
	bad bool
}

func (r *byteReader) empty() bool { return len(r.b) == 0 }

func (r *byteReader) take(n int) []byte {
	if r.bad || n > len(r.b) {
		r.bad = true
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *byteReader) skip(n int) { r.take(n) }

func (r *byteReader) u8() int {
	v := r.take(1)
	if v == nil {
		return 0
	}
	return int(v[0])
}

func (r *byteReader) u16() uint16 {
	v := r.take(2)
	if v == nil {
		return 0
	}
	return uint16(v[0])<<8 | uint16(v[1])
}

func (r *byteReader) vec8() []byte  { return r.take(r.u8()) }
func (r *byteReader) vec16() []byte { return r.take(int(r.u16())) }
