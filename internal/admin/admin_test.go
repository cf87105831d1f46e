package admin

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/egressd/egressd/internal/metrics"
)

func TestAdminEndpoints(t *testing.T) {
	reg := metrics.NewRegistry()
	c := metrics.NewCounter("egressd_test_things_total", "t")
	reg.MustRegister(c)
	c.Inc()
	ready := false
	reloadErr := errors.New("policy.toml:3:1: unknown key")
	resetErr := errors.New("2 connections still open")
	h := Handler(Handlers{
		Ready:  func() bool { return ready },
		Reload: func() error { return reloadErr },
		Reset: func(context.Context) (any, error) {
			return map[string]int{"cache_entries": 0}, resetErr
		},
		State:   func() any { return map[string]int{"cache_entries": 3} },
		Policy:  func() any { return map[string]string{"network.mode": "filtered"} },
		Metrics: reg,
	})
	sock := filepath.Join(t.TempDir(), "admin.sock")
	ln, err := Listen("unix:" + sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, h) }()
	defer func() { cancel(); <-done }()
	cl := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	get := func(method, path string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://admin"+path, nil)
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, tc := range []struct {
		method, path string
		before       func()
		code         int
		body         string
	}{
		{"GET", "/healthz", nil, 200, "ok"},
		{"GET", "/readyz", nil, 503, "not ready"},
		{"GET", "/readyz", func() { ready = true }, 200, "ready"},
		{"POST", "/reload", nil, 422, "policy.toml:3:1: unknown key"},
		{"POST", "/reload", func() { reloadErr = nil }, 200, "reloaded"},
		{"POST", "/reload?state=1", nil, 200, `"cache_entries": 3`},
		{"GET", "/reload", nil, 405, ""},
		{"GET", "/policy", nil, 200, `"network.mode": "filtered"`},
		{"POST", "/reset", nil, 500, `"error": "reset incomplete: 2 connections still open"`},
		{"POST", "/reset", func() { resetErr = nil }, 200, `"cache_entries": 0`},
		{"GET", "/reset", nil, 405, ""},
		{"GET", "/state", nil, 200, `"cache_entries": 3`},
		{"POST", "/state", nil, 405, ""},
		{"GET", "/metrics", nil, 200, "egressd_test_things_total 1"},
	} {
		if tc.before != nil {
			tc.before()
		}
		code, body := get(tc.method, tc.path)
		if code != tc.code || !strings.Contains(body, tc.body) {
			t.Errorf("%s %s = %d %q, want %d containing %q", tc.method, tc.path, code, body, tc.code, tc.body)
		}
	}
}

func TestListenRejectsEmptyUnixPath(t *testing.T) {
	if _, err := Listen("unix:"); err == nil {
		t.Fatal("Listen(unix:) succeeded")
	}
}
