package sandbox

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/egressd/egressd/internal/inspectca"
)

// HTTPS inspection for one launch (docs/inspection.md):
//
//	launcher ─ planInspection ─► which secrets egressd holds, the placeholders the sandbox sees
//	         ─ Create: a CA for this sandbox ─► ca.pem + ca.key (egressd's dir, its uid only)
//	                                          ├► trust bundle: the rootfs's system bundle + ca.pem,
//	                                          │  bound read-only over every CA bundle path of the
//	                                          │  sandbox, and SSL_CERT_FILE & co. pointing at it
//	                                          └► egressd serve --inspect-ca-cert/--inspect-ca-key
//	                                             --secret-file NAME=PATH (egressd's dir)
//
// The CA's key and the credentials' secrets are never inside the
// container's view: egressd's directory is under the state directory,
// below /run, which every sandbox sees as a fresh tmpfs.

// caValidity is how long a sandbox's inspection CA is valid.
const caValidity = 30 * 24 * time.Hour

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

// inspectPlan is what a launch does for inspection.
type inspectPlan struct {
	// inspects: the profile inspects hosts (filtered mode): the sandbox
	// gets a CA of its own and trusts it.
	inspects bool
	// held are the secrets egressd holds for credentials; the sandbox's
	// variable of the same name holds placeholders[name] instead.
	held         []Secret
	placeholders map[string]string
	// caCert and caKey are the sandbox's CA (PEM), made by Create.
	caCert, caKey []byte
}

// planInspection decides what the launch's inspection needs: nothing
// outside filtered mode; else, for each credentials entry, the secret of
// that name among the launch's secrets (an error when it is not given).
func planInspection(cfg Config) (*inspectPlan, error) {
	n := cfg.Profile.Network
	if !n.Mode.Proxied() || len(n.Inspect) == 0 {
		return &inspectPlan{}, nil
	}
	pl := &inspectPlan{inspects: true, placeholders: map[string]string{}}
	for _, c := range n.Credentials {
		if _, done := pl.placeholders[c.Secret]; done {
			continue
		}
		i := slices.IndexFunc(cfg.Secrets, func(s Secret) bool { return s.Name == c.Secret })
		if i < 0 {
			return nil, fmt.Errorf("network.credentials for %s (%s) names secret %s, which this launch was not given: give it with --secret-env %s (or --secret %s=VALUE); the sandbox sees only a placeholder",
				c.Host, c.Source, c.Secret, c.Secret, c.Secret)
		}
		pl.held = append(pl.held, cfg.Secrets[i])
		pl.placeholders[c.Secret] = c.Placeholder
	}
	return pl, nil
}

// makeCA gives the plan a CA of its own, named after the sandbox.
func (pl *inspectPlan) makeCA(id string) error {
	if !pl.inspects {
		return nil
	}
	var err error
	pl.caCert, pl.caKey, err = inspectca.Generate(id, caValidity)
	return err
}

// env returns the sandbox's value of secret s: its placeholder when egressd
// holds it.
func (pl *inspectPlan) env(s Secret) string {
	if ph, ok := pl.placeholders[s.Name]; ok {
		return ph
	}
	return s.Value
}

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
// systemBundles it has; none is fine) with the sandbox's CA after it.
func (pl *inspectPlan) trustBundle(t Tree, id string) ([]byte, error) {
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
	b.Write(pl.caCert)
	return b.Bytes(), nil
}

// applyEnv adds the trust variables the environment does not set yet.
func (pl *inspectPlan) applyEnv(env []string) []string {
	if !pl.inspects {
		return env
	}
	for _, v := range TrustVariables {
		if !slices.ContainsFunc(env, func(e string) bool { return len(e) > len(v) && e[:len(v)+1] == v+"=" }) {
			env = append(env, v+"="+TrustBundlePath)
		}
	}
	slices.Sort(env)
	return env
}

// egressd's inspection files in its private directory.
const (
	inspectCACertFile     = "inspect-ca.pem"
	inspectCAKeyFile      = "inspect-ca.key"
	inspectUpstreamCAFile = "inspect-upstream-ca.pem"
	secretFilePrefix      = "secret-"
)

// egressdArgs are egressd's flags for inspection, naming its files in dir.
func (pl *inspectPlan) egressdArgs(dir, upstreamCA string) []string {
	if !pl.inspects {
		return nil
	}
	args := []string{"--inspect-ca-cert", filepath.Join(dir, inspectCACertFile), "--inspect-ca-key", filepath.Join(dir, inspectCAKeyFile)}
	if upstreamCA != "" {
		args = append(args, "--inspect-upstream-ca", filepath.Join(dir, inspectUpstreamCAFile))
	}
	for _, s := range pl.held {
		args = append(args, "--secret-file", s.Name+"="+filepath.Join(dir, secretFilePrefix+s.Name))
	}
	return args
}

// writeEgressdFiles writes the files egressdArgs names into egressd's
// private directory, owned by its uid, mode 0400: the CA, a copy of the
// upstream CA bundle, the held secrets.
func (pl *inspectPlan) writeEgressdFiles(dir string, uid, gid uint32, upstreamCA string) error {
	if !pl.inspects {
		return nil
	}
	write := func(name string, data []byte) error {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o400); err != nil {
			return fmt.Errorf("writing egressd's %s: %w", name, err)
		}
		if err := os.Chown(p, int(uid), int(gid)); err != nil {
			return fmt.Errorf("writing egressd's %s: %w", name, err)
		}
		return nil
	}
	if err := write(inspectCACertFile, pl.caCert); err != nil {
		return err
	}
	if err := write(inspectCAKeyFile, pl.caKey); err != nil {
		return err
	}
	if upstreamCA != "" {
		data, err := os.ReadFile(upstreamCA)
		if err != nil {
			return fmt.Errorf("the upstream CA bundle for inspection: %w", err)
		}
		if err := write(inspectUpstreamCAFile, data); err != nil {
			return err
		}
	}
	for _, s := range pl.held {
		if err := write(secretFilePrefix+s.Name, []byte(s.Value)); err != nil {
			return err
		}
	}
	return nil
}
