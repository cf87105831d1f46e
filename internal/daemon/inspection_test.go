package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/egressd/egressd/policy"
)

const inspectingPolicy = `version = 1
profile = "strict"
[network]
allow = ["api.model.test"]
[[network.inspect]]
host = "api.model.test"
[[network.credentials]]
host = "api.model.test"
header = "x-api-key"
secret = "MODEL_KEY"
`

// TestInspectionNeedsItsCAAndEverySecret: a policy that inspects is
// refused without a CA or without a credential's secret, at start and on
// reload; with both, the CA is made once, its key private, and GET
// /policy names it.
func TestInspectionNeedsItsCAAndEverySecret(t *testing.T) {
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.toml")
	writePolicy(t, pol, inspectingPolicy)
	secret := filepath.Join(dir, "model.key")
	if err := os.WriteFile(secret, []byte("sk-value\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := Config{PolicyFiles: []string{pol}, DNSListen: []string{"127.0.0.1:0"}, UpstreamDNS: []string{"127.0.0.1:53"}}

	if _, err := New(base); err == nil || !strings.Contains(err.Error(), "--inspect-ca-cert") {
		t.Fatalf("no CA: err %v", err)
	}
	withCA := base
	withCA.InspectCACert, withCA.InspectCAKey = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca.key")
	if _, err := New(withCA); err == nil || !strings.Contains(err.Error(), "MODEL_KEY") {
		t.Fatalf("no secret: err %v", err)
	}
	withCA.SecretFiles = map[string]string{"MODEL_KEY": secret}
	d, err := New(withCA)
	if err != nil {
		t.Fatal(err)
	}
	defer d.closeListeners()
	if st, err := os.Stat(withCA.InspectCAKey); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("CA key %v, %v; want a file of mode 0600", st, err)
	}
	if got := d.proxyInspectSecret("MODEL_KEY"); got != "sk-value" {
		t.Errorf("secret = %q, want the file's value without its newline", got)
	}
	var found bool
	for _, e := range d.policyView().([]policy.Provenance) {
		if e.Field == "inspect.ca_sha256" && strings.Contains(e.Value, d.live.p.Load().inspect.CA.Fingerprint()) {
			found = true
		}
	}
	if !found {
		t.Errorf("GET /policy does not name the CA: %v", d.policyView())
	}
	// A reload after the secret is gone is refused; the last good stays.
	if err := os.Remove(secret); err != nil {
		t.Fatal(err)
	}
	if err := d.Reload(); err == nil || !strings.Contains(err.Error(), "MODEL_KEY") {
		t.Errorf("reload without the secret: err %v", err)
	}
	if got := d.proxyInspectSecret("MODEL_KEY"); got != "sk-value" {
		t.Errorf("after a refused reload the secret is %q", got)
	}
}

// proxyInspectSecret is the value of a secret in the proxy's inspection
// configuration (for tests).
func (d *Daemon) proxyInspectSecret(name string) string {
	ins := d.proxy.InspectConfig()
	if ins == nil {
		return ""
	}
	return ins.Secrets[name]
}
