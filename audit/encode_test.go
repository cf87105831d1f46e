package audit

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"testing"
	"time"
)

// The hand-written encoder must write exactly what encoding/json writes,
// for every record: these tests fill every field of Record by reflection,
// so a field added to Record and not to AppendJSON (or one renamed in its
// tag only) makes them fail instead of silently diverging.

// recordFiller fills a Record's fields from a source of choices.
type recordFiller struct {
	// pick returns a number in [0, n).
	pick func(n int) int
	// u64 returns 64 random bits.
	u64 func() uint64
}

var (
	timeType       = reflect.TypeFor[time.Time]()
	addrValuesType = reflect.TypeFor[AddrValues]()
	// strAtoms are the pieces random strings are built of: plain text and
	// every class of byte encoding/json treats specially.
	strAtoms = []string{
		"", "a", "github.com", "203.0.113.7:443", " ", "\"", "\\", "/", "<", ">", "&",
		"\x00", "\x01", "\b", "\f", "\n", "\r", "\t", "\x1f", "\x7f", "é", "日本",
		"\u2028", "\u2029", "\ufffd", "\xff", "\xc3", "\xe2\x80", "\xed\xa0\x80", "😀", "\U0010ffff",
	}
	zones = []*time.Location{
		time.UTC, time.FixedZone("", 0), time.FixedZone("plus", 5*3600+30*60), time.FixedZone("minus", -8*3600),
		time.FixedZone("odd", 3600+17), time.FixedZone("big", 23*3600+59*60), time.FixedZone("over", 24*3600), time.FixedZone("neg-over", -25*3600),
	}
)

func (f recordFiller) str() string {
	n := f.pick(6)
	s := ""
	for range n {
		s += strAtoms[f.pick(len(strAtoms))]
	}
	return s
}

func (f recordFiller) float() float64 {
	switch f.pick(12) {
	case 0:
		return 0
	case 1:
		return math.Copysign(0, -1)
	case 2:
		return math.NaN()
	case 3:
		return math.Inf(1 - 2*f.pick(2))
	case 4:
		return float64(int64(f.u64()>>40)) / 1000 // a duration in ms, µs precision
	case 5:
		return 1e-7 * float64(1+f.pick(100))
	case 6:
		return 1e21 * float64(1+f.pick(100))
	case 7:
		return math.SmallestNonzeroFloat64 * float64(1+f.pick(3))
	case 8:
		return math.MaxFloat64
	case 9:
		return 1e-6
	}
	return math.Float64frombits(f.u64())
}

func (f recordFiller) time() time.Time {
	var sec int64
	switch f.pick(4) {
	case 0:
		sec = time.Date(2026, 11, 22, 8, 36, 51, 0, time.UTC).Unix() + int64(f.pick(1<<30))
	case 1:
		sec = int64(f.u64()) >> (1 + f.pick(30)) // years far outside 0-9999 too
	case 2:
		sec = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC).Unix() - int64(f.pick(100000)) + 50000
	default:
		sec = time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC).Unix() + int64(f.pick(200000)) - 100000
	}
	nsec := int64(0)
	if f.pick(2) == 0 {
		nsec = int64(f.pick(1e9))
	}
	return time.Unix(sec, nsec).In(zones[f.pick(len(zones))])
}

// addr returns an address of every kind the writer renders: IPv4, IPv6,
// IPv4-mapped, with a zone (any bytes), and invalid.
func (f recordFiller) addr() netip.Addr {
	var b16 [16]byte
	for i := range 2 {
		u := f.u64()
		for j := range 8 {
			b16[8*i+j] = byte(u >> (8 * j))
		}
	}
	switch f.pick(6) {
	case 0:
		return netip.AddrFrom4([4]byte(b16[:4]))
	case 1:
		return netip.AddrFrom16(b16)
	case 2:
		return netip.AddrFrom16(netip.AddrFrom4([4]byte(b16[:4])).As16()) // ::ffff:a.b.c.d
	case 3:
		return netip.AddrFrom16(b16).WithZone(f.str())
	case 4:
		return netip.Addr{}
	}
	return netip.MustParseAddr("203.0.113.7")
}

func (f recordFiller) addrPort() netip.AddrPort {
	return netip.AddrPortFrom(f.addr(), uint16(f.u64()))
}

// addrValues fills each of AddrValues' fields, or leaves it zero.
func (f recordFiller) addrValues() AddrValues {
	var v AddrValues
	if f.pick(3) != 0 {
		v.Target = f.addr()
	}
	for range f.pick(4) {
		v.Dialed = append(v.Dialed, f.addrPort())
	}
	if f.pick(3) != 0 {
		v.Client = f.addrPort()
	}
	return v
}

// fill sets every field of r, each left at its zero value now and then.
func (f recordFiller) fill(t testing.TB, r *Record) {
	v := reflect.ValueOf(r).Elem()
	for i := range v.NumField() {
		fv, sf := v.Field(i), v.Type().Field(i)
		if f.pick(4) == 0 && sf.Type != timeType {
			continue // zero: omitempty fields must be omitted
		}
		switch {
		case sf.Type == timeType:
			if f.pick(8) != 0 {
				fv.Set(reflect.ValueOf(f.time()))
			}
		case sf.Type == addrValuesType:
			fv.Set(reflect.ValueOf(f.addrValues()))
		case sf.Type.Kind() == reflect.String:
			fv.SetString(f.str())
		case sf.Type.Kind() == reflect.Bool:
			fv.SetBool(f.pick(2) == 0)
		case sf.Type.Kind() >= reflect.Int && sf.Type.Kind() <= reflect.Int64:
			x := int64(f.u64())
			if f.pick(2) == 0 {
				x = int64(f.pick(70000)) - 1000
			}
			fv.SetInt(x)
		case sf.Type.Kind() >= reflect.Uint && sf.Type.Kind() <= reflect.Uint64:
			fv.SetUint(f.u64())
		case sf.Type.Kind() == reflect.Float64:
			fv.SetFloat(f.float())
		case sf.Type.Kind() == reflect.Slice && sf.Type.Elem().Kind() == reflect.String:
			n := f.pick(4)
			s := reflect.MakeSlice(sf.Type, n, n)
			for j := range n {
				s.Index(j).SetString(f.str())
			}
			fv.Set(s)
		default:
			t.Fatalf("Record.%s has type %s, which this test cannot fill: teach AppendJSON (encode.go) and this test about it", sf.Name, sf.Type)
		}
	}
}

// checkSameAsEncodingJSON fails t unless AppendJSON writes what
// json.Marshal writes for r (its address values rendered as text:
// Record.textual), or both refuse it.
func checkSameAsEncodingJSON(t testing.TB, r *Record) {
	t.Helper()
	tr := r.textual()
	want, wantErr := json.Marshal(&tr)
	prefix := []byte("prefix:")
	got, gotErr := r.AppendJSON(prefix)
	if (wantErr != nil) != (gotErr != nil) {
		t.Fatalf("record %#v:\nencoding/json error: %v\nAppendJSON error:    %v", r, wantErr, gotErr)
	}
	if wantErr != nil {
		if string(got) != string(prefix) {
			t.Fatalf("AppendJSON failed (%v) but changed the buffer: %q", gotErr, got)
		}
		return
	}
	if string(got[:len(prefix)]) != string(prefix) || string(got[len(prefix):]) != string(want) {
		t.Fatalf("record %#v:\nencoding/json: %s\nAppendJSON:    %s", r, want, got[len(prefix):])
	}
}

func TestAppendJSONMatchesEncodingJSON(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	f := recordFiller{pick: rng.IntN, u64: rng.Uint64}
	for range 200000 {
		var r Record
		f.fill(t, &r)
		checkSameAsEncodingJSON(t, &r)
	}
}

// TestEveryFieldIsEncoded sets one field at a time, so that a field the
// encoder leaves out fails by name even if random records never caught it.
func TestEveryFieldIsEncoded(t *testing.T) {
	base := Record{Time: time.Date(2026, 11, 22, 8, 0, 0, 0, time.UTC)}
	v := reflect.ValueOf(&base).Elem()
	for i := range v.NumField() {
		sf := v.Type().Field(i)
		t.Run(sf.Name, func(t *testing.T) {
			r := base
			fv := reflect.ValueOf(&r).Elem().Field(i)
			if sf.Type == addrValuesType {
				// Each address alone, and beside its text field.
				for _, v := range []AddrValues{
					{Target: netip.MustParseAddr("2001:db8::1")},
					{Dialed: []netip.AddrPort{netip.MustParseAddrPort("[2001:db8::1]:443"), netip.MustParseAddrPort("192.0.2.1:80")}},
					{Client: netip.MustParseAddrPort("192.0.2.1:40000")},
				} {
					r := base
					r.AddrValues = v
					checkSameAsEncodingJSON(t, &r)
					r.Target, r.Addrs, r.Client = "t", []string{"a"}, "c"
					checkSameAsEncodingJSON(t, &r)
				}
				return
			}
			switch sf.Type.Kind() {
			case reflect.String:
				fv.SetString("x<\"\n")
			case reflect.Bool:
				fv.SetBool(true)
			case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
				fv.SetInt(-7)
			case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
				fv.SetUint(7)
			case reflect.Float32, reflect.Float64:
				fv.SetFloat(1.5)
			case reflect.Slice:
				fv.Set(reflect.Append(reflect.MakeSlice(sf.Type, 0, 1), reflect.ValueOf("a").Convert(sf.Type.Elem())))
			case reflect.Struct:
				if sf.Type != timeType {
					t.Fatalf("Record.%s: a struct field; teach AppendJSON and this test about it", sf.Name)
				}
				fv.Set(reflect.ValueOf(time.Date(2001, 2, 3, 4, 5, 6, 7, time.FixedZone("", 3600))))
			default:
				t.Fatalf("Record.%s has kind %s: teach AppendJSON and this test about it", sf.Name, sf.Type.Kind())
			}
			checkSameAsEncodingJSON(t, &r)
		})
	}
}

// FuzzAppendJSONMatchesEncodingJSON builds a record from the fuzzer's bytes
// (every field, by reflection) and compares the two encodings.
func FuzzAppendJSONMatchesEncodingJSON(f *testing.F) {
	f.Add([]byte("seed"))
	f.Add([]byte("\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f<>&\"\\\xff\xe2\x80\xa8"))
	f.Fuzz(func(t *testing.T, data []byte) {
		next := func() byte {
			if len(data) == 0 {
				return 0
			}
			b := data[0]
			data = data[1:]
			return b
		}
		fl := recordFiller{
			pick: func(n int) int {
				x := int(next()) | int(next())<<8 | int(next())<<16
				return x % n
			},
			u64: func() uint64 {
				var b [8]byte
				for i := range b {
					b[i] = next()
				}
				return binary.LittleEndian.Uint64(b[:])
			},
		}
		var r Record
		fl.fill(t, &r)
		// Some strings straight from the fuzzer, not only from the atoms.
		if len(data) > 0 {
			r.Target = string(data)
			r.Path = string(data[len(data)/2:])
		}
		checkSameAsEncodingJSON(t, &r)
	})
}

func BenchmarkEncodeRecord(b *testing.B) {
	r := Record{Time: time.Date(2026, 11, 22, 8, 36, 51, 450000000, time.UTC), SandboxID: "job-42", Kind: KindConnect,
		Target: "api.github.com", Port: 443, Addrs: []string{"203.0.113.10:443"}, Decision: "allow", Reason: "allowed-by",
		Rule: "*.github.com", Source: "builtin:standard", Client: "127.0.0.1:40000", BytesUp: 1234, BytesDown: 56789, DurationMS: 12.345}
	b.Run("AppendJSON", func(b *testing.B) {
		b.ReportAllocs()
		buf := make([]byte, 0, 1024)
		for b.Loop() {
			buf, _ = r.AppendJSON(buf[:0])
		}
	})
	b.Run("encoding/json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, _ = json.Marshal(&r)
		}
	})
}

// TestAddrValuesAreWrittenAsTheirText: the proxy hands the writer
// addresses as values; the line must read as if it had written the text.
func TestAddrValuesAreWrittenAsTheirText(t *testing.T) {
	at := time.Date(2026, 12, 3, 19, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		r    Record
		want string
	}{
		{"values only", Record{Time: at, Kind: KindConnect, Port: 443, AddrValues: AddrValues{
			Target: netip.MustParseAddr("192.0.2.7"),
			Dialed: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.7:443")},
			Client: netip.MustParseAddrPort("[2001:db8::2]:40000"),
		}}, `{"time":"2026-12-03T19:00:00Z","kind":"connect","target":"192.0.2.7","port":443,"addrs":["192.0.2.7:443"],"decision":"","reason":"","client":"[2001:db8::2]:40000"}`},
		{"text wins, dialed follow addrs", Record{Time: at, Kind: KindConnect, Target: "a.test", Port: 443, Addrs: []string{"192.0.2.9"}, Client: "10.0.0.1:1", AddrValues: AddrValues{
			Target: netip.MustParseAddr("192.0.2.7"),
			Dialed: []netip.AddrPort{netip.MustParseAddrPort("[2001:db8::1]:443")},
			Client: netip.MustParseAddrPort("192.0.2.1:2"),
		}}, `{"time":"2026-12-03T19:00:00Z","kind":"connect","target":"a.test","port":443,"addrs":["192.0.2.9","[2001:db8::1]:443"],"decision":"","reason":"","client":"10.0.0.1:1"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.r.AppendJSON(nil)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}
