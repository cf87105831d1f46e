// Command goproxy-eval reproduces the measurements behind building HTTPS
// inspection on net/http rather than goproxy's MITM loop
// (docs/inspection.md): inside a MITM'd session, (1) a 256 MiB request
// header line is read into memory, unanswered; (2) an upstream that cannot
// be reached gets the client no answer at all. It is its own module, so
// egressd's go.mod does not list goproxy. Run: go run . (loopback only).
package main

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"time"

	"github.com/elazarl/goproxy"
)

func heapMiB() float64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return float64(m.HeapInuse) / (1 << 20)
}

// mitm opens a CONNECT to target through the proxy and a TLS session over
// it (goproxy presents its own certificate).
func mitm(proxyAddr, target string) *tls.Conn {
	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			log.Fatal(err)
		}
		if line == "\r\n" {
			break
		}
	}
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		log.Fatal(err)
	}
	return tc
}

func main() {
	up := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer up.Close()
	p := goproxy.NewProxyHttpServer()
	p.Logger = log.New(io.Discard, "", 0)
	p.Tr = &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	p.OnRequest().HandleConnect(goproxy.AlwaysMitm)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	go http.Serve(ln, p)

	tc := mitm(ln.Addr().String(), up.Listener.Addr().String())
	before := heapMiB()
	io.WriteString(tc, "GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
	chunk := strings.Repeat("a", 1<<20)
	for i := 0; i < 256; i++ {
		if _, err := io.WriteString(tc, chunk); err != nil {
			fmt.Println("write refused after", i, "MiB:", err)
			break
		}
	}
	time.Sleep(500 * time.Millisecond)
	fmt.Printf("256 MiB header line inside the session: heap %.0f MiB before, %.0f MiB after, no answer yet\n", before, heapMiB())
	tc.Close()

	tc = mitm(ln.Addr().String(), "127.0.0.1:1")
	io.WriteString(tc, "GET / HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n")
	if resp, err := http.ReadResponse(bufio.NewReader(tc), nil); err != nil {
		fmt.Println("upstream unreachable: the client got no answer:", err)
	} else {
		fmt.Println("upstream unreachable: the client got", resp.Status)
	}
}
