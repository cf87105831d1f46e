package daemon

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/egressd/egressd/internal/inspectca"
	"github.com/egressd/egressd/internal/mask"
	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/proxy"
)

// loadInspect builds the proxy's inspection configuration for a policy
// that inspects hosts (nil for one that does not): the CA (made on first
// start when its files do not exist), the trust store for upstreams, and
// the value of every secret a credentials entry names. Anything missing is
// an error, at start and on reload alike: egressd never runs a policy it
// cannot enforce.
func (d *Daemon) loadInspect(prof *policy.Profile) (*proxy.Inspect, error) {
	n := prof.Network
	if len(n.Inspect) == 0 {
		return nil, nil
	}
	cfg := d.cfg
	if cfg.InspectCACert == "" || cfg.InspectCAKey == "" {
		return nil, fmt.Errorf("network.inspect (%s) needs an inspection CA: give --inspect-ca-cert and --inspect-ca-key (made there if neither exists)",
			n.Inspect[0].Source)
	}
	ca, created, err := inspectca.LoadOrCreate(cfg.InspectCACert, cfg.InspectCAKey)
	if err != nil {
		return nil, err
	}
	if created {
		d.log.Warn("inspection CA created: the workload must trust its certificate", "cert", cfg.InspectCACert, "sha256", ca.Fingerprint())
	} else if prev := d.live.p.Load(); prev == nil || prev.inspect == nil || prev.inspect.CA.Fingerprint() != ca.Fingerprint() {
		d.log.Info("inspection CA loaded", "cert", cfg.InspectCACert, "sha256", ca.Fingerprint(), "not_after", ca.NotAfter())
	}
	ins := &proxy.Inspect{CA: ca, Secrets: map[string]string{}}
	if cfg.InspectUpstreamCA != "" {
		pem, err := os.ReadFile(cfg.InspectUpstreamCA)
		if err != nil {
			return nil, fmt.Errorf("--inspect-upstream-ca: %w", err)
		}
		ins.UpstreamRoots = x509.NewCertPool()
		if !ins.UpstreamRoots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--inspect-upstream-ca %s holds no PEM certificate", cfg.InspectUpstreamCA)
		}
	}
	var missing []string
	for _, c := range n.Credentials {
		if _, done := ins.Secrets[c.Secret]; done {
			continue
		}
		v, err := d.secret(c.Secret)
		if err != nil {
			return nil, fmt.Errorf("network.credentials for %s (%s): %w", c.Host, c.Source, err)
		}
		if v == "" {
			missing = append(missing, c.Secret)
			continue
		}
		if why := mask.Weakness(v); why != "" {
			d.log.Warn("a credential's secret cannot be masked reliably in its host's responses", "secret", c.Secret, "host", c.Host, "why", why)
		}
		ins.Secrets[c.Secret] = v
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return nil, fmt.Errorf("network.credentials name secrets egressd was not given: %s (give each with --secret-file NAME=PATH or --secret-env NAME)",
			strings.Join(missing, ", "))
	}
	return ins, nil
}

// secret returns a secret's value: from its file (read now, one trailing
// newline dropped), else from those given at start; "" when neither has it.
func (d *Daemon) secret(name string) (string, error) {
	if path, ok := d.cfg.SecretFiles[name]; ok {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("secret %s: %w", name, err)
		}
		v := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
		if v == "" {
			return "", fmt.Errorf("secret %s: %s is empty", name, path)
		}
		if strings.ContainsAny(v, "\r\n\x00") {
			return "", errors.New("secret " + name + ": the value holds a line break or NUL, which no header can carry")
		}
		return v, nil
	}
	return d.cfg.Secrets[name], nil
}

// policyView is GET /policy: the resolved policy with the source of every
// value, and the inspection CA in force (its certificate file and
// fingerprint), if any.
func (d *Daemon) policyView() any {
	snap := d.live.p.Load()
	list := snap.profile.Explain()
	if snap.inspect != nil {
		list = append(list, policy.Provenance{Field: policy.FieldInspectCA, Value: `"` + snap.inspect.CA.Fingerprint() + `"`, Source: d.cfg.InspectCACert})
	}
	return list
}
