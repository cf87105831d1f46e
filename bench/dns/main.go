// Command dns-bench starts, on loopback in one process, (a) a bare miekg/dns
// server answering every A query from memory and (b) a dnsfilter.Server whose
// upstream is (a), prints their addresses, and serves until -duration ends or
// it is interrupted. run.sh drives dnsperf against both.
//
// The dnsfilter policy allows *.cached.bench and *.uncached.bench and
// nothing else, so names under denied.bench are denied with no-allow-rule.
// Every A answer is 198.51.100.1 (TEST-NET-2: not guarded).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/miekg/dns"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/dnsfilter"
	"github.com/egressd/egressd/internal/baredns"
	"github.com/egressd/egressd/policy"
)

func main() {
	exit := 0
	defer func() { os.Exit(exit) }()
	bareAddr := flag.String("bare", "127.0.0.1:0", "address of the bare server")
	filterAddr := flag.String("filter", "127.0.0.1:0", "address of the dnsfilter server")
	auditPath := flag.String("audit", "", `audit log: "" none, "discard", or a file path`)
	cacheSize := flag.Int("cache", 0, "dnsfilter cache size in entries (0: default)")
	duration := flag.Duration("duration", 10*time.Minute, "stop after this long")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	mutexProfile := flag.String("mutexprofile", "", "write a profile of contended locks (every 5th contention) to this file at exit")
	flag.Parse()
	if *mutexProfile != "" {
		runtime.SetMutexProfileFraction(5)
		defer func() {
			f, err := os.Create(*mutexProfile)
			if err != nil {
				log.Print(err)
				return
			}
			defer f.Close()
			if err := pprof.Lookup("mutex").WriteTo(f, 0); err != nil {
				log.Print(err)
			}
		}()
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatal(err)
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	if err := run(*bareAddr, *filterAddr, *auditPath, *cacheSize, *duration); err != nil {
		log.Print(err)
		exit = 1
	}
}

func run(bareAddr, filterAddr, auditPath string, cacheSize int, duration time.Duration) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, duration)
	defer cancel()

	bare, err := startBare(bareAddr)
	if err != nil {
		return err
	}
	defer bare.Shutdown()

	var rules []*policy.Rule
	for _, p := range []string{"*.cached.bench", "*.uncached.bench"} {
		r, err := policy.ParseRule(p, policy.Flag("--allow"))
		if err != nil {
			return err
		}
		rules = append(rules, r)
	}
	m, err := policy.NewMatcher(policy.NetworkPolicy{Mode: policy.ModeFiltered, Allow: rules})
	if err != nil {
		return err
	}
	live := &policy.Live{}
	live.Store(m)

	var aw io.Writer
	switch auditPath {
	case "":
	case "discard":
		aw = io.Discard
	default:
		f, err := os.Create(auditPath)
		if err != nil {
			return err
		}
		defer f.Close()
		aw = f
	}
	cfg := dnsfilter.Config{
		Policy:    live,
		Upstreams: []string{bare.PacketConn.LocalAddr().String()},
		QueryRate: -1, // one dnsperf client would otherwise be limited to 200/s
		CacheSize: cacheSize,
	}
	if aw != nil {
		// The writer egressd serve uses: batched, never blocking a query.
		al := audit.NewBuffered(aw, "bench", audit.BufferOptions{})
		defer func() {
			al.Close()
			log.Printf("audit: %d records dropped, %d failed to write", al.Dropped(), al.WriteErrors())
		}()
		cfg.Audit = al
	}
	srv, err := dnsfilter.New(cfg)
	if err != nil {
		return err
	}
	if err := srv.Listen(filterAddr); err != nil {
		return err
	}
	fmt.Printf("bare=%s filter=%s\n", bare.PacketConn.LocalAddr(), srv.Addrs()[0])
	return srv.Serve(ctx)
}

// startBare serves UDP on addr, answering every A query with 198.51.100.1
// and anything else with no data.
func startBare(addr string) (*dns.Server, error) {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return nil, err
	}
	srv := &dns.Server{PacketConn: pc, Handler: baredns.Handler()}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	errc := make(chan error, 1)
	go func() { errc <- srv.ActivateAndServe() }()
	select {
	case <-started:
		return srv, nil
	case err := <-errc:
		return nil, fmt.Errorf("bare server: %w", err)
	}
}
