package main

import (
	"strings"
	"testing"

	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sandbox"
)

// A credential's secret whose shape makes masking in its host's responses
// unreliable (short, whitespace) is warned about; a plain key is not.
func TestWeakCredentialSecretIsWarnedAbout(t *testing.T) {
	prof := &policy.Profile{}
	prof.Network.Credentials = []*policy.Credential{{Host: "api.test", Header: "X-Api-Key", Secret: "MODEL_KEY", Placeholder: "egressd-placeholder-MODEL_KEY"}}
	for value, want := range map[string]bool{"sk-short": true, "a long key with spaces in it": true, "sk-ant-api03-AbCdEfGhIjKlMnOp": false} {
		cfg := sandbox.Config{Profile: prof, Secrets: []sandbox.Secret{{Name: "MODEL_KEY", Value: value}, {Name: "OTHER", Value: "x y z long enough value"}}}
		got := strings.Join(secretWarnings(cfg), "\n")
		if strings.Contains(got, "MODEL_KEY of network.credentials") != want {
			t.Errorf("%q: warnings %q, want a credential warning: %v", value, got, want)
		}
		if strings.Contains(got, "OTHER of network.credentials") {
			t.Errorf("a secret no credential names got the credential warning: %q", got)
		}
	}
}
