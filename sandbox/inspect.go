package sandbox

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/egressd/egressd/internal/inspectca"
)

// HTTPS inspection for one launch (docs/inspection.md):
//
//	launcher ─ planInspection ─► which secrets egressd holds, the placeholders the sandbox sees,
//	                             a CA for this sandbox ─► ca.pem + ca.key (egressd's dir, its uid only)
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

// inspectPlan is what a launch does for inspection.
type inspectPlan struct {
	// inspects: the profile inspects hosts (filtered mode): the sandbox
	// gets a CA of its own and trusts it.
	inspects bool
	// held are the secrets egressd holds for credentials; the sandbox's
	// variable of the same name holds placeholders[name] instead.
	held         []Secret
	placeholders map[string]string
	// caCert and caKey are the sandbox's CA (PEM), made by makeCA.
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

// egressdFiles are the files egressdArgs names, for egressd's private
// directory (mode 0400, owned by its uid): the CA, a copy of the upstream
// CA bundle (read here), the held secrets.
func (pl *inspectPlan) egressdFiles(upstreamCA string) ([]EgressdFile, error) {
	if !pl.inspects {
		return nil, nil
	}
	files := []EgressdFile{{Name: inspectCACertFile, Data: pl.caCert}, {Name: inspectCAKeyFile, Data: pl.caKey}}
	if upstreamCA != "" {
		data, err := os.ReadFile(upstreamCA)
		if err != nil {
			return nil, fmt.Errorf("the upstream CA bundle for inspection: %w", err)
		}
		files = append(files, EgressdFile{Name: inspectUpstreamCAFile, Data: data})
	}
	for _, s := range pl.held {
		files = append(files, EgressdFile{Name: secretFilePrefix + s.Name, Data: []byte(s.Value)})
	}
	return files, nil
}
