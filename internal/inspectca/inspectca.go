// Package inspectca is the certificate authority of egressd's HTTPS
// inspection (docs/inspection.md): it creates a CA (the launcher, once per
// sandbox; egressd serve, when its files do not exist yet), loads one, and
// mints the certificate egressd presents to the sandbox for each inspected
// host. Only the CA certificate ever reaches a sandbox (its trust store);
// the key stays with egressd.
//
//	launcher ─ Generate ─► ca.pem (sandbox trust) + ca.key (egressd only)
//	egressd ── Load ─────► CA ─ Certificate("api.example.com") ─► leaf, cached
package inspectca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"sync"
	"time"
)

// Validity of what this package makes.
const (
	// DefaultValidity is how long a CA made by LoadOrCreate is valid.
	DefaultValidity = 365 * 24 * time.Hour
	// leafValidity is how long a minted certificate is valid (never past
	// the CA's end); one within leafRenew of its end is minted again.
	leafValidity = 7 * 24 * time.Hour
	leafRenew    = time.Hour
	// maxCached bounds the minted certificates kept (names beyond it are
	// minted on each new connection).
	maxCached = 1024
)

// CA signs the certificates of inspected hosts. It is safe for concurrent
// use.
type CA struct {
	cert    *x509.Certificate
	certPEM []byte
	key     crypto.Signer
	// leafKey is the key of every minted certificate (one per CA: the
	// certificates differ in name only, and a key per name would cost an
	// ECDSA key generation per host).
	leafKey *ecdsa.PrivateKey

	mu    sync.Mutex
	cache map[string]*tls.Certificate
}

// Generate makes a new CA valid for validity from now, named after label
// ("egressd inspection CA <label>"). It returns the certificate and the
// PKCS #8 key, both PEM.
func Generate(label string, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generating the inspection CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "egressd inspection CA " + label, Organization: []string{"egressd"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("creating the inspection CA certificate: %w", err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encoding the inspection CA key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127)) // crypto/rand does not fail
	return n.Add(n, big.NewInt(1))
}

// Load parses a CA certificate and its key (PEM; the key PKCS #8, PKCS #1
// or SEC 1). The certificate must be a CA that may sign certificates and
// be valid now, and the key must match it.
func Load(certPEM, keyPEM []byte) (*CA, error) {
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return nil, errors.New("the CA certificate is not a PEM CERTIFICATE block")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing the CA certificate: %w", err)
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, errors.New("the certificate is not a CA allowed to sign certificates")
	}
	if now := time.Now(); now.Before(cert.NotBefore) || now.After(cert.NotAfter) {
		return nil, fmt.Errorf("the CA certificate is not valid now (valid %s to %s)", cert.NotBefore.Format(time.RFC3339), cert.NotAfter.Format(time.RFC3339))
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, errors.New("the CA key is not PEM")
	}
	key, err := parseKey(kb)
	if err != nil {
		return nil, err
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, errors.New("the CA key does not belong to the CA certificate")
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating the certificates' key: %w", err)
	}
	return &CA{
		cert:    cert,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}),
		key:     key,
		leafKey: leafKey,
		cache:   make(map[string]*tls.Certificate),
	}, nil
}

func parseKey(b *pem.Block) (crypto.Signer, error) {
	var (
		k   any
		err error
	)
	switch b.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(b.Bytes)
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
	default:
		return nil, fmt.Errorf("the CA key is a PEM %q block, not a private key", b.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parsing the CA key: %w", err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("the CA key (%T) cannot sign", k)
	}
	return s, nil
}

// LoadFiles loads the CA from a certificate file and a key file.
func LoadFiles(certPath, keyPath string) (*CA, error) {
	c, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("inspection CA certificate: %w", err)
	}
	k, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("inspection CA key: %w", err)
	}
	ca, err := Load(c, k)
	if err != nil {
		return nil, fmt.Errorf("inspection CA %s, %s: %w", certPath, keyPath, err)
	}
	return ca, nil
}

// LoadOrCreate loads the CA from its two files, or, when neither exists,
// generates one (valid DefaultValidity) and writes it there: the
// certificate readable by everyone (the workload's trust store takes it),
// the key by its owner only. created reports the latter. One file without
// the other is an error: egressd never replaces half a CA.
func LoadOrCreate(certPath, keyPath string) (ca *CA, created bool, err error) {
	_, cerr := os.Stat(certPath)
	_, kerr := os.Stat(keyPath)
	switch {
	case cerr == nil && kerr == nil:
		ca, err := LoadFiles(certPath, keyPath)
		return ca, false, err
	case errors.Is(cerr, fs.ErrNotExist) && errors.Is(kerr, fs.ErrNotExist):
	case cerr != nil && !errors.Is(cerr, fs.ErrNotExist):
		return nil, false, fmt.Errorf("inspection CA certificate: %w", cerr)
	case kerr != nil && !errors.Is(kerr, fs.ErrNotExist):
		return nil, false, fmt.Errorf("inspection CA key: %w", kerr)
	default:
		return nil, false, fmt.Errorf("inspection CA: one of %s and %s exists without the other; remove it to have a new CA made, or give both", certPath, keyPath)
	}
	certPEM, keyPEM, err := Generate(time.Now().UTC().Format("2006-01-02"), DefaultValidity)
	if err != nil {
		return nil, false, err
	}
	if err := writeNew(keyPath, keyPEM, 0o600); err != nil {
		return nil, false, fmt.Errorf("writing the inspection CA key: %w", err)
	}
	if err := writeNew(certPath, certPEM, 0o644); err != nil {
		_ = os.Remove(keyPath)
		return nil, false, fmt.Errorf("writing the inspection CA certificate: %w", err)
	}
	ca, err = Load(certPEM, keyPEM)
	return ca, true, err
}

// writeNew creates path (never replacing a file) with data and mode.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}

// CertPEM returns the CA certificate, PEM.
func (ca *CA) CertPEM() []byte { return append([]byte(nil), ca.certPEM...) }

// Fingerprint is the SHA-256 of the CA certificate, hex.
func (ca *CA) Fingerprint() string {
	sum := sha256.Sum256(ca.cert.Raw)
	return hex.EncodeToString(sum[:])
}

// NotAfter is when the CA stops being valid.
func (ca *CA) NotAfter() time.Time { return ca.cert.NotAfter }

// Certificate returns a certificate for name (a normalised host name)
// signed by the CA, with the CA in its chain: minted on first use and
// cached until shortly before it expires.
func (ca *CA) Certificate(name string) (*tls.Certificate, error) {
	now := time.Now()
	ca.mu.Lock()
	c, ok := ca.cache[name]
	ca.mu.Unlock()
	if ok && now.Add(leafRenew).Before(c.Leaf.NotAfter) {
		return c, nil
	}
	notAfter := now.Add(leafValidity)
	if ca.cert.NotAfter.Before(notAfter) {
		notAfter = ca.cert.NotAfter
	}
	if !now.Before(notAfter) {
		return nil, fmt.Errorf("the inspection CA expired at %s", ca.cert.NotAfter.Format(time.RFC3339))
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{name},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &ca.leafKey.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("minting a certificate for %s: %w", name, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("minting a certificate for %s: %w", name, err)
	}
	c = &tls.Certificate{Certificate: [][]byte{der, ca.cert.Raw}, PrivateKey: ca.leafKey, Leaf: leaf}
	ca.mu.Lock()
	if len(ca.cache) >= maxCached {
		clear(ca.cache)
	}
	ca.cache[name] = c
	ca.mu.Unlock()
	return c, nil
}

// CachedCertificates is the number of minted certificates cached now: one
// per host name a client was served since the CA was loaded.
func (ca *CA) CachedCertificates() int {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	return len(ca.cache)
}
