package specconv

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"slices"
)

// The sandbox's trust in its HTTPS inspection CA (docs/inspection.md): when
// the profile inspects hosts, the container gets a CA bundle of its own —
// its root's system bundle with the sandbox's CA after it — bound
// read-only over every CA bundle path of its root, and the common clients'
// variables pointing at it. The CA's key never enters the container.

// TrustBundlePath is where a sandbox's clients find the CA bundle that
// includes its inspection CA; the trust variables point here.
const TrustBundlePath = "/etc/ssl/certs/ca-certificates.crt"

// systemBundles are where distributions keep their CA bundle (Go's
// crypto/x509 list). Each one the root file system has is covered by the
// trust bundle; the first one found is the system bundle extended.
var systemBundles = []string{
	"/etc/ssl/certs/ca-certificates.crt",
	"/etc/pki/tls/certs/ca-bundle.crt",
	"/etc/ssl/ca-bundle.pem",
	"/etc/pki/tls/cacert.pem",
	"/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
	"/etc/ssl/cert.pem",
}

// TrustVariables are the variables that point the common clients at the
// trust bundle: OpenSSL and Go (SSL_CERT_FILE), requests, pip, Node.js,
// git and curl. A variable the launch already sets is left alone.
var TrustVariables = []string{"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT", "NODE_EXTRA_CA_CERTS", "GIT_SSL_CAINFO", "CURL_CA_BUNDLE"}

// trustPaths are the paths in the sandbox the trust bundle covers: every
// system bundle the root file system has (resolved, so a symlink and its
// target are covered once), and TrustBundlePath, where the variables
// point, made as a mount point when the root lacks it.
func trustPaths(t Tree) []string {
	var out []string
	add := func(p string) {
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	for _, p := range systemBundles {
		if r, err := t.resolve(p); err == nil {
			add(r)
		}
	}
	if _, err := t.resolve(TrustBundlePath); err != nil {
		add(TrustBundlePath)
	}
	return out
}

// trustBundle is the root file system's system bundle (the first of
// systemBundles it has; none is fine) with the sandbox's CA (caCert, PEM)
// after it.
func trustBundle(t Tree, id string, caCert []byte) ([]byte, error) {
	var b bytes.Buffer
	for _, p := range systemBundles {
		data, err := t.readFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading the system CA bundle %s: %w", p, err)
		}
		b.Write(data)
		if len(data) > 0 && data[len(data)-1] != '\n' {
			b.WriteByte('\n')
		}
		break
	}
	fmt.Fprintf(&b, "# egressd inspection CA of sandbox %s\n", id)
	b.Write(caCert)
	return b.Bytes(), nil
}

// withTrustVariables adds the trust variables the environment does not set
// yet, pointing at TrustBundlePath.
func withTrustVariables(env []string) []string {
	for _, v := range TrustVariables {
		if !slices.ContainsFunc(env, func(e string) bool { return len(e) > len(v) && e[:len(v)+1] == v+"=" }) {
			env = append(env, v+"="+TrustBundlePath)
		}
	}
	slices.Sort(env)
	return env
}
