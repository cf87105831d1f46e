package inspectca

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestMintedCertificateVerifiesForItsNameOnly(t *testing.T) {
	certPEM, keyPEM, err := Generate("test", 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := Load(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca.CertPEM()) {
		t.Fatal("CertPEM does not parse")
	}
	c, err := ca.Certificate("api.model.test")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Leaf.Verify(x509.VerifyOptions{DNSName: "api.model.test", Roots: pool}); err != nil {
		t.Errorf("minted certificate does not verify: %v", err)
	}
	if _, err := c.Leaf.Verify(x509.VerifyOptions{DNSName: "evil.test", Roots: pool}); err == nil {
		t.Error("minted certificate verifies for another name")
	}
	if c.Leaf.NotAfter.After(ca.NotAfter()) {
		t.Errorf("leaf outlives its CA: %s > %s", c.Leaf.NotAfter, ca.NotAfter())
	}
	again, err := ca.Certificate("api.model.test")
	if err != nil || again != c {
		t.Errorf("second call minted again (%v)", err)
	}
}

func TestLoadRefusesWhatIsNotAUsableCA(t *testing.T) {
	certPEM, keyPEM, err := Generate("a", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	_, otherKey, err := Generate("b", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		cert, key []byte
		want      string
	}{
		{"key of another CA", certPEM, otherKey, "does not belong"},
		{"not PEM", []byte("hello"), keyPEM, "not a PEM CERTIFICATE"},
		{"key is a certificate", certPEM, certPEM, "not a private key"},
	} {
		if _, err := Load(tc.cert, tc.key); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
	}
}

// TestLoadOrCreateMakesOnceAndNeverHalf: a CA is made when neither file
// exists (key private to its owner), loaded afterwards, and one file
// without the other is refused rather than replaced.
func TestLoadOrCreateMakesOnceAndNeverHalf(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca.key")
	ca, created, err := LoadOrCreate(cert, key)
	if err != nil || !created {
		t.Fatalf("first call: created %v, %v", created, err)
	}
	st, err := os.Stat(key)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v; want 0600", st.Mode().Perm(), err)
	}
	ca2, created, err := LoadOrCreate(cert, key)
	if err != nil || created || ca2.Fingerprint() != ca.Fingerprint() {
		t.Fatalf("second call: created %v, same CA %v, %v", created, ca2 != nil && ca2.Fingerprint() == ca.Fingerprint(), err)
	}
	if err := os.Remove(key); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreate(cert, key); err == nil || !strings.Contains(err.Error(), "without the other") {
		t.Fatalf("half a CA: err = %v", err)
	}
}
