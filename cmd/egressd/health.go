package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

const healthUsage = `usage: egressd health --admin ADDR|unix:PATH [--ready] [--timeout D]

Asks a running egressd's admin endpoint whether it is alive (GET /healthz)
or, with --ready, serving with a policy in force (GET /readyz). For a
container HEALTHCHECK or a Kubernetes exec probe: the image needs no curl,
and the probe runs as egressd's own uid, which the firewall lets through to
the protected admin port.
Exit status: 0 healthy; 1 not (the reason on stderr); 2 usage errors.

Examples:
  egressd health --admin 127.0.0.1:9901
  egressd health --admin unix:/run/egressd/admin.sock --ready

flags:
`

func newHealthFlags(stderr io.Writer) (*flag.FlagSet, *string, *bool, *time.Duration) {
	fs := newFlagSet("health", healthUsage, stderr)
	admin := fs.String("admin", "", "admin endpoint `ADDR|unix:PATH` (serve --admin-listen)")
	ready := fs.Bool("ready", false, "check /readyz (serving, policy in force) instead of /healthz")
	timeout := fs.Duration("timeout", 3*time.Second, "give up after `D`")
	return fs, admin, ready, timeout
}

func cmdHealth(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs, admin, ready, timeout := newHealthFlags(stderr)
	if err := fs.Parse(args); err != nil {
		return flagExit(err)
	}
	if fs.NArg() > 0 || *admin == "" {
		fs.Usage()
		return exitUsage
	}
	path := "/healthz"
	if *ready {
		path = "/readyz"
	}
	tr := &http.Transport{DisableKeepAlives: true, Proxy: nil}
	url := "http://" + *admin + path
	if sock, ok := strings.CutPrefix(*admin, "unix:"); ok {
		url = "http://egressd-admin" + path
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		fmt.Fprintf(stderr, "egressd health: --admin %q: %v\n", *admin, err)
		return exitUsage
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "egressd health: %v\n", err)
		return exitFail
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "egressd health: GET %s: %s: %s\n", path, resp.Status, strings.TrimSpace(string(body)))
		return exitFail
	}
	fmt.Fprintf(stdout, "%s\n", strings.TrimSpace(string(body)))
	return exitOK
}
