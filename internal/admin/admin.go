// Package admin serves egressd's admin endpoint: health, readiness,
// Prometheus metrics, policy reload, the resolved policy, and the reset
// between two tenants of a pooled sandbox with the state that proves it
// (docs/design.md, "Admin endpoint"). It must never be
// reachable from the sandbox: serve it on a unix socket outside anything
// mounted into the container, or on a loopback port the sandbox firewall
// protects (docs/design.md, THREATS G3).
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// Handlers are the daemon's hooks. Nil hooks answer 501.
type Handlers struct {
	// Ready reports whether every listener is serving and a policy is in force.
	Ready func() bool
	// Reload re-reads the policy files; an error means the last good policy
	// stays in force, and is returned to the caller with status 422.
	Reload func() error
	// Reset forgets the tenant (deny-everything policy, caches, learned
	// addresses, connections) and returns the state after it,
	// JSON-encodable; an error means something was left, and is answered
	// 500 with the state.
	Reset func(ctx context.Context) (any, error)
	// State returns what egressd holds now, JSON-encodable.
	State func() any
	// Policy returns the resolved policy with provenance, JSON-encodable.
	Policy func() any
	// Metrics serves GET /metrics (a *metrics.Registry); nil serves no
	// metrics.
	Metrics http.Handler
}

// Handler returns the admin HTTP handler.
func Handler(h Handlers) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if h.Ready == nil || !h.Ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("POST /reload", func(w http.ResponseWriter, r *http.Request) {
		if h.Reload == nil {
			http.Error(w, "reload not supported", http.StatusNotImplemented)
			return
		}
		if err := h.Reload(); err != nil {
			http.Error(w, "reload refused, last good policy stays in force:\n"+err.Error(), http.StatusUnprocessableEntity)
			return
		}
		// ?state=1: the answer is the state after the reload (GET
		// /state's), which a pool reads to prove the tenant's policy in
		// force without a second request.
		if r.URL.Query().Get("state") == "1" && h.State != nil {
			writeJSON(w, http.StatusOK, h.State())
			return
		}
		fmt.Fprintln(w, "reloaded")
	})
	mux.HandleFunc("GET /policy", func(w http.ResponseWriter, _ *http.Request) {
		if h.Policy == nil {
			http.Error(w, "no policy view", http.StatusNotImplemented)
			return
		}
		writeJSON(w, http.StatusOK, h.Policy())
	})
	mux.HandleFunc("POST /reset", func(w http.ResponseWriter, r *http.Request) {
		if h.Reset == nil {
			http.Error(w, "reset not supported", http.StatusNotImplemented)
			return
		}
		st, err := h.Reset(r.Context())
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, struct {
				Error string `json:"error"`
				State any    `json:"state"`
			}{"reset incomplete: " + err.Error(), st})
			return
		}
		writeJSON(w, http.StatusOK, st)
	})
	mux.HandleFunc("GET /state", func(w http.ResponseWriter, _ *http.Request) {
		if h.State == nil {
			http.Error(w, "no state view", http.StatusNotImplemented)
			return
		}
		writeJSON(w, http.StatusOK, h.State())
	})
	if h.Metrics != nil {
		mux.Handle("GET /metrics", h.Metrics)
	}
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// Listen binds addr: "unix:/path/to.sock" (a stale socket file is replaced,
// mode 0600) or a TCP "host:port".
func Listen(addr string) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		if path == "" {
			return nil, errors.New("admin listen address unix: needs a path")
		}
		if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			_ = os.Remove(path)
		}
		ln, err := net.Listen("unix", path)
		if err != nil {
			return nil, fmt.Errorf("admin socket %s: %w", path, err)
		}
		if err := os.Chmod(path, 0o600); err != nil {
			ln.Close()
			return nil, fmt.Errorf("admin socket %s: %w", path, err)
		}
		return ln, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin listener %s: %w", addr, err)
	}
	return ln, nil
}

// Serve serves h on ln until ctx ends, then shuts down within a second.
func Serve(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 30 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		return nil
	}
}
