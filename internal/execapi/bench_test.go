package execapi

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sandbox"
)

// BenchmarkExecuteOverhead is what the API adds to an execution, beside a
// bare JSON handler over the same loopback HTTP (baseline): decoding,
// layering the request over a policy file, the floor, the queue, masking
// and the answer. The executor does nothing, so a cold sandbox's ~150 ms
// and a warm pool's target of ~25 ms can be compared with it.
func BenchmarkExecuteOverhead(b *testing.B) {
	const body = `{"cmd": "python3", "args": ["-c", "print(1)"], "network": {"allow": ["pypi.org", "files.pythonhosted.org"]},
		"env": {"A": "1"}, "secrets": {"TOKEN": "s3cr3t-value"}, "timeout": "30s", "limits": {"memory": "512m"}}`
	run := func(b *testing.B, url string) {
		b.Helper()
		for b.Loop() {
			resp, err := http.Post(url, "application/json", strings.NewReader(body))
			if err != nil {
				b.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Fatalf("status %d", resp.StatusCode)
			}
		}
	}
	b.Run("baseline-bare-handler", func(b *testing.B) {
		hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			var req map[string]any
			_ = json.NewDecoder(r.Body).Decode(&req)
			writeJSON(w, http.StatusOK, Result{Summary: Summary{Denied: []Denied{}}})
		}))
		defer hs.Close()
		run(b, hs.URL)
	})
	b.Run("execute", func(b *testing.B) {
		ex := &fakeExecutor{run: func(ctx context.Context, job Job) (Outcome, error) {
			_, _ = io.WriteString(job.Stdout, "1\n")
			return Outcome{SandboxID: "egs-00000001"}, nil
		}}
		s, err := New(Options{
			Executor: ex, Floor: "standard",
			Configure: func(p *policy.Profile, args []string) (sandbox.Config, error) {
				return sandbox.Config{Profile: p, Args: args}, nil
			},
		})
		if err != nil {
			b.Fatal(err)
		}
		hs := httptest.NewServer(s)
		defer hs.Close()
		run(b, hs.URL+"/v1/execute")
		ex.jobs = nil
	})
}
