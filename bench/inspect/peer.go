package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/egressd/egressd/internal/inspectca"
)

// runPeer is the child process: the upstream HTTPS server and the clients.
func runPeer() {
	upCert, err := os.ReadFile(filepath.Join(*dir, "upstream-ca.pem"))
	check(err)
	upKey, err := os.ReadFile(filepath.Join(*dir, "upstream-ca.key"))
	check(err)
	insCert, err := os.ReadFile(filepath.Join(*dir, "inspect-ca.pem"))
	check(err)
	upCA, err := inspectca.Load(upCert, upKey)
	check(err)
	upPool, insPool := x509.NewCertPool(), x509.NewCertPool()
	upPool.AppendCertsFromPEM(upCert)
	insPool.AppendCertsFromPEM(insCert)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	srv := &http.Server{
		Handler: http.HandlerFunc(upstream),
		TLSConfig: &tls.Config{GetCertificate: func(chi *tls.ClientHelloInfo) (*tls.Certificate, error) {
			return upCA.Certificate(chi.ServerName)
		}},
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
	go srv.ServeTLS(ln, "", "")
	port := ln.Addr().(*net.TCPAddr).Port
	ctl := &control{in: bufio.NewScanner(os.Stdin)}

	type result struct {
		rps, cpuPerReq, ttfbNew, ttfbKeep, bulk, cpuPerGiB []float64
	}
	res := make([]result, len(paths))
	for r := 0; r < *rounds; r++ {
		for i, p := range paths {
			if !strings.Contains(p.name, *only) {
				continue
			}
			c := newClientMaker(p.host, port, upPool, insPool)
			rps, cpu := ctl.measure(func() float64 { return requestsPerSecond(c) })
			res[i].rps = append(res[i].rps, rps)
			res[i].cpuPerReq = append(res[i].cpuPerReq, float64(cpu.Microseconds())/(rps*dur.Seconds()))
			res[i].ttfbNew = append(res[i].ttfbNew, ttfb(c, true))
			res[i].ttfbKeep = append(res[i].ttfbKeep, ttfb(c, false))
			mibs, cpu := ctl.measure(func() float64 { return bulk(c) })
			res[i].bulk = append(res[i].bulk, mibs)
			res[i].cpuPerGiB = append(res[i].cpuPerGiB, float64(cpu.Milliseconds())*float64(1<<30)/float64(*bulkBytes))
		}
	}
	fmt.Printf("%d rounds (paths interleaved); small: %d workers x %s, 64-byte responses on kept-alive connections; TTFB: median of %d requests; bulk: %d MiB\n",
		*rounds, *workers, *dur, *ttfbN, *bulkBytes>>20)
	fmt.Printf("%-28s %10s %8s %14s %14s %14s %10s %8s %14s\n", "path", "req/s", "vs tunnel", "egressd µs/req", "TTFB new conn", "TTFB kept", "bulk MiB/s", "vs tunnel", "egressd ms/GiB")
	base := res[1]
	for i, p := range paths {
		r := res[i]
		if len(r.rps) == 0 {
			continue
		}
		fmt.Printf("%-28s %10.0f %8s %14.1f %14s %14s %10.0f %8s %14.0f\n", p.name,
			median(r.rps), pct(median(r.rps), median(base.rps)), median(r.cpuPerReq),
			ms(median(r.ttfbNew)), ms(median(r.ttfbKeep)),
			median(r.bulk), pct(median(r.bulk), median(base.bulk)), median(r.cpuPerGiB))
	}
}

// upstream serves /small (64 bytes) and /bulk/N (N bytes).
func upstream(w http.ResponseWriter, r *http.Request) {
	if n, ok := strings.CutPrefix(r.URL.Path, "/bulk/"); ok {
		size, err := strconv.ParseInt(n, 10, 64)
		if err != nil {
			http.Error(w, "bad size", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		buf := make([]byte, 64<<10)
		for i := range buf {
			buf[i] = 'x'
		}
		for size > 0 {
			k := min(size, int64(len(buf)))
			if _, err := w.Write(buf[:k]); err != nil {
				return
			}
			size -= k
		}
		return
	}
	w.Header().Set("Content-Length", "64")
	_, _ = io.WriteString(w, strings.Repeat("s", 64))
}

// clientMaker makes HTTP clients for one path.
type clientMaker struct {
	base string
	new  func(keepAlive bool) *http.Client
}

func newClientMaker(host string, port int, upPool, insPool *x509.CertPool) *clientMaker {
	roots := upPool
	if host == "inspect.test" || host == "cred.test" {
		roots = insPool
	}
	target := host
	if host == "" {
		target = "direct.test"
	}
	pu, _ := url.Parse("http://" + *proxyAddr)
	return &clientMaker{
		base: fmt.Sprintf("https://%s:%d", target, port),
		new: func(keepAlive bool) *http.Client {
			tr := &http.Transport{
				TLSClientConfig:     &tls.Config{RootCAs: roots},
				TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{},
				DisableKeepAlives:   !keepAlive,
				MaxIdleConnsPerHost: 1,
				MaxConnsPerHost:     1,
			}
			if host == "" {
				tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, network, fmt.Sprintf("127.0.0.1:%d", port))
				}
			} else {
				tr.Proxy = http.ProxyURL(pu)
			}
			return &http.Client{Transport: tr, Timeout: time.Minute}
		},
	}
}

func get(c *http.Client, u string) (int64, error) {
	resp, err := c.Get(u)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return 0, fmt.Errorf("%s: %s", u, resp.Status)
	}
	return io.Copy(io.Discard, resp.Body)
}

// requestsPerSecond runs the small-request loop on kept-alive connections.
func requestsPerSecond(cm *clientMaker) float64 {
	var n atomic.Int64
	var wg sync.WaitGroup
	clients := make([]*http.Client, *workers)
	for i := range clients {
		clients[i] = cm.new(true)
		_, err := get(clients[i], cm.base+"/small") // connection set up outside the timing
		check(err)
	}
	deadline := time.Now().Add(*dur)
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				_, err := get(c, cm.base+"/small")
				check(err)
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	for _, c := range clients {
		c.CloseIdleConnections()
	}
	return float64(n.Load()) / dur.Seconds()
}

// ttfb is the median time from sending a request to its first response
// byte: each on a new connection (CONNECT and TLS included), or on one
// kept-alive connection.
func ttfb(cm *clientMaker, newConn bool) float64 {
	c := cm.new(!newConn)
	defer c.CloseIdleConnections()
	if !newConn {
		_, err := get(c, cm.base+"/small")
		check(err)
	}
	var ds []float64
	for range *ttfbN {
		var first time.Time
		start := time.Now()
		req, _ := http.NewRequest("GET", cm.base+"/small", nil)
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
			GotFirstResponseByte: func() { first = time.Now() },
		}))
		resp, err := c.Do(req)
		check(err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		ds = append(ds, first.Sub(start).Seconds())
	}
	return median(ds)
}

// bulk downloads bulkBytes over one connection and returns MiB/s.
func bulk(cm *clientMaker) float64 {
	c := cm.new(true)
	defer c.CloseIdleConnections()
	start := time.Now()
	n, err := get(c, fmt.Sprintf("%s/bulk/%d", cm.base, *bulkBytes))
	check(err)
	if n != *bulkBytes {
		log.Fatalf("bulk: got %d bytes, want %d", n, *bulkBytes)
	}
	return float64(n) / (1 << 20) / time.Since(start).Seconds()
}

// control brackets a measurement with egressd's CPU time.
type control struct{ in *bufio.Scanner }

func (c *control) measure(fn func() float64) (float64, time.Duration) {
	fmt.Println("begin")
	c.in.Scan()
	v := fn()
	fmt.Println("end")
	c.in.Scan()
	ns, err := strconv.ParseInt(c.in.Text(), 10, 64)
	check(err)
	return v, time.Duration(ns)
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func pct(v, base float64) string {
	if base == 0 {
		return ""
	}
	return fmt.Sprintf("%.0f%%", 100*v/base)
}

func ms(s float64) string { return fmt.Sprintf("%.2f ms", s*1000) }
