package fakenet

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"sync"
	"time"
)

// maxCachedCerts bounds the minted-certificate cache (a test that sends thousands of distinct
// SNIs still gets a certificate for each, minted again when not cached).
const maxCachedCerts = 4096

// testCA is the world's certificate authority: created at Start, trusted by nothing but what a
// test points at CAFile or CertPool, and gone with the world.
type testCA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte

	mu    sync.Mutex
	cache map[string]*tls.Certificate
}

func newTestCA(name string) (*testCA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "fakenet test CA " + name, Organization: []string{"egressd e2e"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(48 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("creating CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing CA certificate: %w", err)
	}
	return &testCA{
		cert:    cert,
		key:     key,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		cache:   make(map[string]*tls.Certificate),
	}, nil
}

func randomSerial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127)) // crypto/rand never fails
	return n.Add(n, big.NewInt(1))
}

// getCertificate is the HTTPS servers' tls.Config.GetCertificate: a certificate for whatever
// SNI the client sent; with no SNI (or an IP literal as SNI), one for the address it connected
// to.
func (ca *testCA) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	var (
		key   string
		dns   []string
		ips   []net.IP
		label string
	)
	if ip, err := netip.ParseAddr(hello.ServerName); err == nil {
		key, ips, label = "ip:"+ip.String(), []net.IP{ip.AsSlice()}, ip.String()
	} else if hello.ServerName != "" {
		key, dns, label = "dns:"+hello.ServerName, []string{hello.ServerName}, hello.ServerName
	} else {
		local, err := netip.ParseAddrPort(hello.Conn.LocalAddr().String())
		if err != nil {
			return nil, fmt.Errorf("no SNI and no usable local address: %w", err)
		}
		ip := local.Addr().Unmap()
		key, ips, label = "ip:"+ip.String(), []net.IP{ip.AsSlice()}, ip.String()
	}

	ca.mu.Lock()
	c, ok := ca.cache[key]
	ca.mu.Unlock()
	if ok {
		return c, nil
	}
	c, err := ca.mint(label, dns, ips)
	if err != nil {
		return nil, err
	}
	ca.mu.Lock()
	if len(ca.cache) < maxCachedCerts {
		ca.cache[key] = c
	}
	ca.mu.Unlock()
	return c, nil
}

func (ca *testCA) mint(cn string, dnsNames []string, ips []net.IP) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating key for %q: %w", cn, err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     dnsNames,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("minting certificate for %q: %w", cn, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing certificate for %q: %w", cn, err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}
