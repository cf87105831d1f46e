package audit

import (
	"errors"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// The record's JSON encoding, written by hand: appended to a caller's
// buffer, with no reflection and no allocation for the usual record. It is
// byte for byte what encoding/json's Marshal writes for a *Record (field
// order, omitempty, HTML-safe string escaping, time and float formats);
// TestAppendJSONMatchesEncodingJSON and FuzzAppendJSONMatchesEncodingJSON
// hold it to that for every field of Record, so a field added to Record and
// not here fails them.

// errUnsupportedFloat mirrors encoding/json's refusal of NaN and ±Inf.
var errUnsupportedFloat = errors.New("audit: duration_ms is NaN or infinite")

// AppendJSON appends r as one JSON object, exactly as encoding/json's
// Marshal(r) encodes it, and returns the extended buffer. It fails where
// Marshal fails: a Time that RFC 3339 cannot represent (a year outside
// 0-9999, a zone offset of 24 hours or more) or a DurationMS that is NaN or
// infinite; then b is returned unchanged.
func (r *Record) AppendJSON(b []byte) ([]byte, error) {
	n0 := len(b)
	b = append(b, `{"time":"`...)
	b, err := appendTime(b, r.Time)
	if err != nil {
		return b[:n0], err
	}
	b = append(b, '"')
	if r.SandboxID != "" {
		b = appendString(append(b, `,"sandbox_id":`...), r.SandboxID)
	}
	b = appendString(append(b, `,"kind":`...), string(r.Kind))
	if r.Target == "" && r.AddrValues.Target.IsValid() {
		b = appendAddr(append(b, `,"target":`...), r.AddrValues.Target)
	} else {
		b = appendString(append(b, `,"target":`...), r.Target)
	}
	if r.Name != "" {
		b = appendString(append(b, `,"name":`...), r.Name)
	}
	b = strconv.AppendUint(append(b, `,"port":`...), uint64(r.Port), 10)
	if r.QType != "" {
		b = appendString(append(b, `,"qtype":`...), r.QType)
	}
	if len(r.Addrs) > 0 || len(r.AddrValues.Dialed) > 0 {
		b = append(b, `,"addrs":[`...)
		for i, a := range r.Addrs {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, a)
		}
		for i, a := range r.AddrValues.Dialed {
			if i > 0 || len(r.Addrs) > 0 {
				b = append(b, ',')
			}
			b = appendAddrPort(b, a)
		}
		b = append(b, ']')
	}
	b = appendString(append(b, `,"decision":`...), string(r.Decision))
	b = appendString(append(b, `,"reason":`...), string(r.Reason))
	if r.Rule != "" {
		b = appendString(append(b, `,"rule":`...), r.Rule)
	}
	if r.Source != "" {
		b = appendString(append(b, `,"rule_source":`...), r.Source)
	}
	if r.Client != "" {
		b = appendString(append(b, `,"client":`...), r.Client)
	} else if r.AddrValues.Client.IsValid() {
		b = appendAddrPort(append(b, `,"client":`...), r.AddrValues.Client)
	}
	if r.Method != "" {
		b = appendString(append(b, `,"method":`...), r.Method)
	}
	if r.Path != "" {
		b = appendString(append(b, `,"path":`...), r.Path)
	}
	if r.Status != 0 {
		b = strconv.AppendInt(append(b, `,"status":`...), int64(r.Status), 10)
	}
	if r.Inspected {
		b = append(b, `,"inspected":true`...)
	}
	if r.Credential != "" {
		b = appendString(append(b, `,"credential":`...), r.Credential)
	}
	if r.Error != "" {
		b = appendString(append(b, `,"error":`...), r.Error)
	}
	if r.BytesUp != 0 {
		b = strconv.AppendInt(append(b, `,"bytes_up":`...), r.BytesUp, 10)
	}
	if r.BytesDown != 0 {
		b = strconv.AppendInt(append(b, `,"bytes_down":`...), r.BytesDown, 10)
	}
	if r.DurationMS != 0 {
		if math.IsNaN(r.DurationMS) || math.IsInf(r.DurationMS, 0) {
			return b[:n0], errUnsupportedFloat
		}
		b = appendFloat(append(b, `,"duration_ms":`...), r.DurationMS)
	}
	return append(b, '}'), nil
}

const hexDigits = "0123456789abcdef"

// appendAddrPort appends ap as a JSON string, as netip.AddrPort.String
// writes it: "ip:port", "[ip]:port" for IPv6. The text needs no escaping
// unless the address has a zone, which may hold any byte, or is invalid:
// those take String's text through appendString.
func appendAddrPort(b []byte, ap netip.AddrPort) []byte {
	if a := ap.Addr(); !a.IsValid() || a.Zone() != "" {
		return appendString(b, ap.String())
	}
	return append(ap.AppendTo(append(b, '"')), '"')
}

// appendAddr appends a as a JSON string, as netip.Addr.String writes it.
func appendAddr(b []byte, a netip.Addr) []byte {
	if !a.IsValid() || a.Zone() != "" {
		return appendString(b, a.String())
	}
	return append(a.AppendTo(append(b, '"')), '"')
}

// textual returns r with its AddrValues rendered into Target, Addrs and
// Client, as AppendJSON writes them: what encoding/json must write for
// AppendJSON's output to be right (encode_test.go).
func (r *Record) textual() Record {
	t := *r
	v := t.AddrValues
	if t.Target == "" && v.Target.IsValid() {
		t.Target = v.Target.String()
	}
	if len(v.Dialed) > 0 {
		t.Addrs = slices.Clone(t.Addrs)
		for _, a := range v.Dialed {
			t.Addrs = append(t.Addrs, a.String())
		}
	}
	if t.Client == "" && v.Client.IsValid() {
		t.Client = v.Client.String()
	}
	t.AddrValues = AddrValues{}
	return t
}

// appendString appends s as a JSON string the way encoding/json does with
// HTML escaping on (its default): ", \ and control bytes escaped (\b \f \n
// \r \t by name, the rest as \u00XX), <, > and & as \u003c \u003e \u0026,
// U+2028 and U+2029 as \u2028 \u2029, and each byte of invalid UTF-8 as
// \ufffd.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// appendFloat appends f as encoding/json does for a float64: the shortest
// representation, in exponent form below 1e-6 and from 1e21 up, with an
// exponent of one digit written without a leading zero (1e-7, not 1e-07).
func appendFloat(b []byte, f float64) []byte {
	abs := math.Abs(f)
	format := byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		n := len(b)
		if n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}

// secondText is one second of one location rendered in RFC 3339: the date
// and clock ("2006-01-02T15:04:05") and the zone ("Z", "+01:00").
type secondText struct {
	loc         *time.Location
	sec         int64
	clock, zone string
	err         error
}

// lastSecond is the second the last record's time fell in: records come in
// bursts within one second, so its text is nearly always reused.
var lastSecond atomic.Pointer[secondText]

// appendTime appends t as time.Time.AppendText does (RFC 3339 with
// nanoseconds, trailing zeros dropped), rendering the date, clock and zone
// once per second: the standard formatter's deep frames made every short
// query goroutine of the resolver grow its stack.
func appendTime(b []byte, t time.Time) ([]byte, error) {
	sec, loc := t.Unix(), t.Location()
	st := lastSecond.Load()
	if st == nil || st.sec != sec || st.loc != loc {
		st = &secondText{loc: loc, sec: sec}
		whole, err := t.Truncate(time.Second).AppendText(nil)
		switch {
		case err != nil:
			st.err = err
		case len(whole) < len("2006-01-02T15:04:05Z"):
			st.err = errors.New("audit: unexpected time format " + string(whole))
		default:
			st.clock, st.zone = string(whole[:19]), string(whole[19:])
		}
		lastSecond.Store(st)
	}
	if st.err != nil {
		return b, st.err
	}
	b = append(b, st.clock...)
	if ns := t.Nanosecond(); ns != 0 {
		var frac [10]byte
		frac[0] = '.'
		for i := 9; i >= 1; i-- {
			frac[i] = byte('0' + ns%10)
			ns /= 10
		}
		n := 10
		for frac[n-1] == '0' {
			n--
		}
		b = append(b, frac[:n]...)
	}
	return append(b, st.zone...), nil
}
