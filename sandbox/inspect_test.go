package sandbox

import (
	"bytes"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sandbox/specconv"
)

const inspectTenant = `version = 1
[network]
allow = ["api.model.test"]
[[network.inspect]]
host = "api.model.test"
paths = ["/v1/messages"]
[[network.credentials]]
host = "api.model.test"
header = "x-api-key"
secret = "MODEL_KEY"
`

// TestCredentialSecretStaysWithEgressd: the sandbox's environment holds
// the placeholder where a credential's secret would be, the trust
// variables and the bundle mounts are there, and egressd gets the secret
// as a file of its own.
func TestCredentialSecretStaysWithEgressd(t *testing.T) {
	p := resolveWith(t, "standard", inspectTenant)
	rc := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(rc, []byte("nameserver 192.0.2.53\n"), 0o644)
	plan, err := NewPlan(Config{Profile: p, Args: []string{"sh"}, EgressdPath: "/nonexistent/egressd", ID: "egs-0000abcd",
		ResolvConf: rc, StateDir: t.TempDir(), Secrets: []Secret{{"MODEL_KEY", "sk-real-secret-123"}, {"OTHER", "other-secret-456"}}})
	if err != nil {
		t.Fatal(err)
	}
	c := plan.Container
	env := c.Spec.Process.Env
	for _, want := range []string{"MODEL_KEY=egressd-placeholder-MODEL_KEY", "OTHER=other-secret-456", "SSL_CERT_FILE=" + specconv.TrustBundlePath, "NODE_EXTRA_CA_CERTS=" + specconv.TrustBundlePath} {
		if !slices.Contains(env, want) {
			t.Errorf("env lacks %s: %q", want, env)
		}
	}
	if strings.Contains(strings.Join(env, "\n"), "sk-real-secret-123") {
		t.Errorf("the credential's secret is in the sandbox's environment: %q", env)
	}
	var mounted bool
	for _, m := range c.Spec.Mounts {
		if m.Source == filepath.Join(c.EtcDir, "ca-certificates.crt") {
			mounted = true
			if !slices.Contains(m.Options, "ro") {
				t.Errorf("trust bundle mounted writable: %+v", m)
			}
		}
	}
	if !mounted {
		t.Errorf("no trust bundle mount: %+v", c.Spec.Mounts)
	}
	files := map[string][]byte{}
	for _, f := range plan.Egressd.Files {
		files[f.Name] = f.Data
	}
	caCert, caKey := files[inspectCACertFile], files[inspectCAKeyFile]
	bundle := c.Files["ca-certificates.crt"]
	if len(caCert) == 0 || !bytes.HasSuffix(bytes.TrimSpace(bundle), bytes.TrimSpace(caCert)) || bytes.Contains(bundle, caKey) {
		t.Errorf("bundle %d bytes: want the system bundle, then the CA certificate, never its key", len(bundle))
	}
	if string(files[secretFilePrefix+"MODEL_KEY"]) != "sk-real-secret-123" || files[secretFilePrefix+"OTHER"] != nil {
		t.Errorf("egressd's secret files %v: want MODEL_KEY's alone", slices.Sorted(maps.Keys(files)))
	}
	args := strings.Join(plan.Egressd.Args, " ")
	dir := plan.Egressd.Dir
	if !strings.Contains(args, "--secret-file MODEL_KEY="+dir+"/secret-MODEL_KEY") || strings.Contains(args, "OTHER") ||
		!strings.Contains(args, "--inspect-ca-key "+dir+"/inspect-ca.key") {
		t.Errorf("egressd args %q", args)
	}

}

func TestCredentialWithoutItsSecretRefusesTheLaunch(t *testing.T) {
	p := resolveWith(t, "standard", inspectTenant)
	_, err := planInspection(Config{Profile: p})
	if err == nil || !strings.Contains(err.Error(), "--secret-env MODEL_KEY") {
		t.Fatalf("err = %v, want a refusal saying how to give the secret", err)
	}
}

// TestEgressdPolicyCarriesInspection: egressd's snapshot holds the same
// inspect and credentials entries, each with its original source.
func TestEgressdPolicyCarriesInspection(t *testing.T) {
	p := resolveWith(t, "standard", inspectTenant, policy.Setting{Key: "network.inspect", Values: []string{"*.git.test"}, Source: policy.Flag("--inspect")})
	path := filepath.Join(t.TempDir(), policyFile)
	data, err := egressdPolicy(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o400); err != nil {
		t.Fatal(err)
	}
	snap, _, err := policy.Resolve(policy.ResolveOptions{Files: []string{path}})
	if err != nil {
		data, _ := os.ReadFile(path)
		t.Fatalf("the snapshot does not resolve: %v\n%s", err, data)
	}
	texts := func(rs []*policy.InspectRule) (out []string) {
		for _, r := range rs {
			out = append(out, r.Text+" "+r.Source.String())
		}
		return out
	}
	if got, want := texts(snap.Network.Inspect), texts(p.Network.Inspect); !slices.Equal(got, want) {
		t.Errorf("inspect entries %q, want %q", got, want)
	}
	if len(snap.Network.Credentials) != 1 || snap.Network.Credentials[0].Text != p.Network.Credentials[0].Text ||
		snap.Network.Credentials[0].Placeholder != p.Network.Credentials[0].Placeholder ||
		snap.Network.Credentials[0].Source.String() != p.Network.Credentials[0].Source.String() {
		t.Errorf("credentials %+v", snap.Network.Credentials)
	}
}

func TestExplainShowsInspectionWithoutItsSecrets(t *testing.T) {
	p := resolveWith(t, "standard", inspectTenant)
	rc := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(rc, []byte("nameserver 192.0.2.53\n"), 0o644)
	ex, err := explainOf(Config{Profile: p, Args: []string{"true"}, EgressdPath: "/nonexistent/egressd", ResolvConf: rc,
		Secrets: []Secret{{"MODEL_KEY", "sk-real-secret-xyz"}}})
	if err != nil {
		t.Fatal(err)
	}
	data, _ := json.Marshal(ex)
	if bytes.Contains(data, []byte("sk-real-secret-xyz")) {
		t.Errorf("explain shows the secret")
	}
	plan, err := NewPlan(Config{Profile: p, Args: []string{"true"}, EgressdPath: "/nonexistent/egressd", ResolvConf: rc,
		Secrets: []Secret{{"MODEL_KEY", "sk-real-secret-xyz"}}})
	if err != nil {
		t.Fatal(err)
	}
	if data, _ := json.Marshal(plan); bytes.Contains(data, []byte("sk-real-secret-xyz")) || bytes.Contains(data, []byte("PRIVATE KEY")) {
		t.Errorf("the plan's JSON shows the secret or the CA's key")
	}
	if !strings.Contains(strings.Join(ex.Egressd, " "), "--inspect-ca-cert") {
		t.Errorf("egressd's command line lacks the CA: %q", ex.Egressd)
	}
}
