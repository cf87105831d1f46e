// Command inspectbench measures HTTPS inspection beside the plain tunnel,
// in one run on loopback: small HTTPS requests on kept-alive connections
// (requests/s and egressd's CPU per request), time to first byte (new
// connection and kept-alive), and bulk MiB/s. egressd runs in this process
// alone; the clients and the upstream HTTPS server run in a child process
// (this binary with -peer), so this process's CPU time is egressd's.
// See README.md.
package main

import (
	"bufio"
	"context"
	"crypto/x509"
	"flag"
	"fmt"
	"log"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/egressd/egressd/internal/inspectca"
	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/proxy"
)

var (
	peer      = flag.Bool("peer", false, "run as the client/upstream process (internal)")
	dir       = flag.String("dir", "", "work directory (internal)")
	proxyAddr = flag.String("proxy", "", "egressd's explicit listener (internal)")
	rounds    = flag.Int("rounds", 3, "rounds per measurement (median reported; paths interleaved)")
	dur       = flag.Duration("dur", 2*time.Second, "duration of one requests/s round")
	workers   = flag.Int("workers", 4, "concurrent clients, each on its own kept-alive connection")
	bulkBytes = flag.Int64("bulk-bytes", 256<<20, "bytes per bulk download")
	ttfbN     = flag.Int("ttfb", 100, "requests per time-to-first-byte round")
	only      = flag.String("only", "", "measure only paths whose name contains this")
	cpuProf   = flag.String("cpuprofile", "", "write egressd's CPU profile to `FILE`")
)

// The paths compared. Each name resolves to the upstream on 127.0.0.1.
var paths = []struct{ name, host string }{
	{"direct", ""},
	{"tunnel (spliced)", "tunnel.test"},
	{"inspected", "inspect.test"},
	{"inspected+rules+credential", "cred.test"},
}

const benchPolicy = `version = 1
profile = "strict"
[network]
allow = ["tunnel.test:*", "inspect.test:*", "cred.test:*", "127.0.0.1:*"]
[[network.inspect]]
host = "inspect.test"
[[network.inspect]]
host = "cred.test"
methods = ["GET"]
paths = ["/small", "/bulk/*"]
block_paths = ["/admin/**"]
[[network.credentials]]
host = "cred.test"
header = "Authorization"
prefix = "Bearer "
secret = "BENCH_KEY"
`

func main() {
	flag.Parse()
	log.SetFlags(0)
	if *peer {
		runPeer()
		return
	}
	work, err := os.MkdirTemp("", "inspectbench-")
	check(err)
	defer os.RemoveAll(work)
	if *cpuProf != "" {
		f, err := os.Create(*cpuProf)
		check(err)
		check(pprof.StartCPUProfile(f))
		defer pprof.StopCPUProfile()
	}

	// Two CAs: the "public" one the upstream's certificates chain to, and
	// the inspection CA egressd signs with.
	upCert, upKey, err := inspectca.Generate("upstream", 24*time.Hour)
	check(err)
	check(os.WriteFile(filepath.Join(work, "upstream-ca.pem"), upCert, 0o600))
	check(os.WriteFile(filepath.Join(work, "upstream-ca.key"), upKey, 0o600))
	insCert, insKey, err := inspectca.Generate("bench", 24*time.Hour)
	check(err)
	check(os.WriteFile(filepath.Join(work, "inspect-ca.pem"), insCert, 0o600))
	ca, err := inspectca.Load(insCert, insKey)
	check(err)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(upCert)

	f, err := policy.ParseFile("bench.toml", []byte(benchPolicy))
	check(err)
	prof, _, err := policy.ResolveFiles("", []*policy.File{f}, nil, "")
	check(err)
	m, err := policy.NewMatcher(prof.NetworkPolicy())
	check(err)
	var live policy.Live
	live.Store(m)
	p, err := proxy.New(proxy.Config{
		Policy:   &live,
		Resolver: loopback{},
		Inspect:  &proxy.Inspect{CA: ca, UpstreamRoots: roots, Secrets: map[string]string{"BENCH_KEY": "sk-bench-0123456789abcdef"}},
	})
	check(err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	go p.ServeExplicit(ln)

	cmd := exec.Command(os.Args[0], append([]string{"-peer", "-dir", work, "-proxy", ln.Addr().String()}, os.Args[1:]...)...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	check(err)
	in, err := cmd.StdinPipe()
	check(err)
	check(cmd.Start())
	// The peer announces each measured phase; egressd's CPU is sampled
	// around it.
	sc := bufio.NewScanner(out)
	var cpu0 time.Duration
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "begin":
			cpu0 = cpuTime()
			fmt.Fprintln(in, "ok")
		case line == "end":
			fmt.Fprintf(in, "%d\n", cpuTime()-cpu0)
		default:
			fmt.Println(line)
		}
	}
	check(cmd.Wait())
}

// loopback resolves every name to 127.0.0.1.
type loopback struct{}

func (loopback) Resolve(context.Context, string) ([]netip.Addr, error) {
	return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
}

// cpuTime is this process's user+system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	check(syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
