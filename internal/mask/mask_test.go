package mask

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
)

// writeSplit writes the pieces of in cut at the given offsets, then closes.
func writeSplit(t testing.TB, secrets []string, in string, cuts ...int) string {
	t.Helper()
	var out bytes.Buffer
	m := NewWriter(&out, secrets)
	prev := 0
	for _, c := range append(cuts, len(in)) {
		n, err := m.Write([]byte(in[prev:c]))
		if err != nil || n != c-prev {
			t.Fatalf("Write = %d, %v", n, err)
		}
		prev = c
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	return out.String()
}

// TestSecretSplitAcrossWritesIsMasked cuts the input at every offset (and
// every pair of offsets) and checks the secret never survives.
func TestSecretSplitAcrossWritesIsMasked(t *testing.T) {
	const secret = "hunter2-token"
	in := "before " + secret + " middle " + secret + secret + " after"
	want := "before *** middle ****** after"
	for i := 0; i <= len(in); i++ {
		if got := writeSplit(t, []string{secret}, in, i); got != want {
			t.Fatalf("cut at %d: got %q, want %q", i, got, want)
		}
		for j := i; j <= len(in); j++ {
			if got := writeSplit(t, []string{secret}, in, i, j); got != want {
				t.Fatalf("cuts at %d,%d: got %q, want %q", i, j, got, want)
			}
		}
	}
	// One byte at a time.
	cuts := make([]int, 0, len(in))
	for i := 1; i < len(in); i++ {
		cuts = append(cuts, i)
	}
	if got := writeSplit(t, []string{secret}, in, cuts...); got != want {
		t.Fatalf("byte by byte: got %q, want %q", got, want)
	}
}

func TestMaskerRules(t *testing.T) {
	tests := []struct {
		name    string
		secrets []string
		in      string
		want    string
	}{
		{"no secrets passes through", nil, "abc", "abc"},
		{"empty secret ignored", []string{""}, "abc", "abc"},
		{"several secrets", []string{"alpha", "beta"}, "alpha beta gamma", "*** *** gamma"},
		{"longest wins at the same position", []string{"abc", "abcdef"}, "xabcdefx abcx", "x***x ***x"},
		{"shorter first when it starts earlier", []string{"bcd", "abcdef"}, "abcdex", "a***ex"},
		{"overlapping occurrences: leftmost, no overlap", []string{"aba"}, "ababa", "***ba"},
		{"prefix of a secret at the end is flushed", []string{"secret"}, "my sec", "my sec"},
		{"repeated secret", []string{"s3"}, "s3s3s3", "*********"},
		{"secret inside a prefix of another", []string{"xyzw", "yz"}, "xyz", "x***"},
		{"duplicate secrets", []string{"k", "k"}, "kak", "***a***"},
		{"short secrets still masked", []string{"42"}, "answer 42, 420", "answer ***, ***0"},
		{"binary bytes", []string{"\x00\xff"}, "a\x00\xffb", "a***b"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for cut := 0; cut <= len(tc.in); cut++ {
				if got := writeSplit(t, tc.secrets, tc.in, cut); got != tc.want {
					t.Fatalf("cut at %d: got %q, want %q", cut, got, tc.want)
				}
			}
			if got := String(tc.in, tc.secrets); got != tc.want {
				t.Errorf("MaskSecrets = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestMaskerHoldsBackOnlyAPossibleSecretStart: output not part of a
// possible secret is written at once (interactive output is not delayed).
func TestMaskerHoldsBackOnlyAPossibleSecretStart(t *testing.T) {
	var out bytes.Buffer
	m := NewWriter(&out, []string{"password"})
	_, _ = m.Write([]byte("prompt> "))
	if out.String() != "prompt> " {
		t.Errorf("after a write with no secret prefix, out = %q", out.String())
	}
	_, _ = m.Write([]byte("my pass"))
	if out.String() != "prompt> my " {
		t.Errorf("held back more than the possible secret start: out = %q", out.String())
	}
	_, _ = m.Write([]byte("port"))
	if out.String() != "prompt> my passport" {
		t.Errorf("not released when settled: out = %q", out.String())
	}
	_ = m.Close()
}

type failWriter struct{ n int }

func (f *failWriter) Write(p []byte) (int, error) {
	if f.n == 0 {
		return 0, errors.New("disk full")
	}
	f.n--
	return len(p), nil
}

func TestMaskerReportsWriteErrors(t *testing.T) {
	m := NewWriter(&failWriter{n: 1}, []string{"zz"})
	if _, err := m.Write([]byte("a")); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Write([]byte("b")); err == nil {
		t.Fatal("write error not reported")
	}
	if _, err := m.Write([]byte("c")); err == nil {
		t.Fatal("write after an error succeeded")
	}
	if err := m.Close(); err == nil {
		t.Fatal("Close after an error succeeded")
	}
	m2 := NewWriter(&bytes.Buffer{}, []string{"zz"})
	_ = m2.Close()
	if _, err := m2.Write([]byte("x")); err == nil {
		t.Fatal("write after Close succeeded")
	}
}

func TestMaskerConcurrentWriters(t *testing.T) {
	var out bytes.Buffer
	m := NewWriter(&out, []string{"TOPSECRET"})
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				_, _ = m.Write([]byte("TOPSECRET\n"))
			}
		}()
	}
	wg.Wait()
	_ = m.Close()
	if strings.Contains(out.String(), "TOPSECRET") || strings.Count(out.String(), "***\n") != 800 {
		t.Errorf("concurrent writes: %d masked lines", strings.Count(out.String(), "***\n"))
	}
}

// overlaps reports whether two secrets can overlap in a text: one contains
// the other, or a suffix of one is a prefix of the other.
func overlaps(a, b string) bool {
	if strings.Contains(a, b) || strings.Contains(b, a) {
		return true
	}
	for k := 1; k < len(a) && k < len(b); k++ {
		if a[len(a)-k:] == b[:k] || b[len(b)-k:] == a[:k] {
			return true
		}
	}
	return false
}

// FuzzMasker: for secrets that cannot overlap, the masked stream, however
// it is cut into writes, equals strings.ReplaceAll on the whole input.
func FuzzMasker(f *testing.F) {
	f.Add("the token is abc123 and abc123", "abc123", "", uint8(3), uint8(17))
	f.Add("xxyyxxyy", "xy", "yx", uint8(1), uint8(2))
	f.Add("aaaa", "aa", "b", uint8(0), uint8(1))
	f.Add("pass\x00word", "s\x00w", "q", uint8(5), uint8(2))
	f.Fuzz(func(t *testing.T, in, s1, s2 string, cut1, cut2 uint8) {
		var secrets []string
		for _, s := range []string{s1, s2} {
			if s != "" && !strings.Contains(s, "*") {
				secrets = append(secrets, s)
			}
		}
		if len(secrets) == 2 && overlaps(secrets[0], secrets[1]) {
			secrets = secrets[:1]
		}
		want := in
		for _, s := range secrets {
			want = strings.ReplaceAll(want, s, Mask)
		}
		a, b := int(cut1)%(len(in)+1), int(cut2)%(len(in)+1)
		if a > b {
			a, b = b, a
		}
		if got := writeSplit(t, secrets, in, a, b); got != want {
			t.Fatalf("secrets %q, input %q cut at %d,%d: got %q, want %q", secrets, in, a, b, got, want)
		}
		for _, s := range secrets {
			if strings.Contains(writeSplit(t, secrets, in, a, b), s) && !strings.Contains(want, s) {
				t.Fatalf("secret %q survived", s)
			}
		}
	})
}

func BenchmarkMasker(b *testing.B) {
	line := []byte(strings.Repeat("ordinary build output without anything interesting in it ", 16) + "\n")
	m := NewWriter(io.Discard, []string{"ghp_abcdefghijklmnopqrstuvwxyz0123456789", "sk-ant-api03-xyz", "AKIAIOSFODNN7EXAMPLE"})
	b.SetBytes(int64(len(line)))
	for b.Loop() {
		_, _ = m.Write(line)
	}
}

// TestReaderMasksAcrossReadsAndStaysLive: a secret split across two reads
// of the source is masked, and bytes that cannot begin the secret are
// returned before the source delivers more.
func TestReaderMasksAcrossReadsAndStaysLive(t *testing.T) {
	pr, pw := io.Pipe()
	r := NewReader(pr, []string{"sk-SECRET"})
	go func() {
		_, _ = pw.Write([]byte("data: one\n\n"))
		_, _ = pw.Write([]byte("key=sk-SE"))
		_, _ = pw.Write([]byte("CRET end"))
		_ = pw.Close()
	}()
	buf := make([]byte, 64)
	n, err := r.Read(buf)
	if err != nil || string(buf[:n]) != "data: one\n\n" {
		t.Fatalf("first read = %q, %v; want the first event at once", buf[:n], err)
	}
	rest, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(rest); got != "key="+Mask+" end" {
		t.Errorf("rest = %q", got)
	}
}

func TestSameLengthReaderKeepsTheLength(t *testing.T) {
	in := "a sk-SECRET b sk-SECRET"
	out, err := io.ReadAll(NewSameLengthReader(strings.NewReader(in), []string{"sk-SECRET"}))
	if err != nil {
		t.Fatal(err)
	}
	if want := "a ********* b *********"; string(out) != want {
		t.Errorf("got %q, want %q", out, want)
	}
}
