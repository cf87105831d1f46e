// Command pool-bench measures an execution of `true` through a warm
// sandbox.Pool beside a cold sandbox (Create, Run, Close), in the same run:
//
//   - the library call, Acquire, Run, Release (the caller has the result
//     and the denials), interleaved with the cold one, median and p99,
//     with its breakdown: acquire (plan, policy), run (send to the waiting
//     init, exit), release (egressd's reset), and the background part
//     that follows it, off the caller's path (reset: delete, checks,
//     conntrack, verify; next: the next container made and started);
//   - back to back on a pool of 1 (each acquire waits for the last
//     release's background part);
//   - concurrent executions on a pool of 2 with 1, 2 and 4 clients:
//     throughput and latency, and how many got a pooled sandbox made for
//     them (every pooled one running an execution when they came);
//   - with -api, `launcher serve --pool 2` answering `POST /v1/execute` of
//     `true` beside `launcher run true`, interleaved.
//
// It runs inside a throwaway network namespace (egbp-<pid>) standing for
// the launcher's host namespace, re-executing itself there: the uplinks'
// veths, NAT rules and ip_forward change land in it, never in the
// machine's own namespace, and it is removed at the end. Nothing leaves
// it: `true` sends nothing and the upstream resolver (192.0.2.53,
// TEST-NET-1) is never asked.
//
//	go run ./bench/pool -egressd bin/egressd -init bin/launcher -n 200 [-api bin/launcher]
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sandbox"
)

func main() {
	egressdBin := flag.String("egressd", "bin/egressd", "egressd binary")
	initBin := flag.String("init", "", "the sandboxes' init (a static launcher binary); a pool needs one")
	n := flag.Int("n", 200, "executions of each")
	api := flag.String("api", "", "also measure `launcher serve --pool 2` (POST /v1/execute) beside `launcher run`, with this launcher binary")
	skipLibrary := flag.Bool("api-only", false, "measure the API only (with -api)")
	inside := flag.Bool("inside", false, "internal: run the measurement in the current namespace")
	flag.Parse()
	if os.Geteuid() != 0 {
		log.Fatal("pool-bench: run as root")
	}
	var err error
	if *inside {
		err = measure(*egressdBin, *initBin, *api, *n, *skipLibrary)
	} else {
		err = inNamespace()
	}
	if err != nil {
		log.Fatal("pool-bench: ", err)
	}
}

// inNamespace runs this program again with -inside in a fresh network
// namespace, and removes the namespace.
func inNamespace() error {
	ns := "egbp-" + strconv.Itoa(os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add: %v: %s", err, out)
	}
	defer exec.Command("ip", "netns", "del", ns).Run()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	// nsenter, not `ip netns exec`: that one mounts a sysfs of the
	// namespace over /sys, which hides the cgroup file system from runc.
	args := append([]string{"--net=/run/netns/" + ns, self, "-inside"}, os.Args[1:]...)
	cmd := exec.Command("nsenter", args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	return cmd.Run()
}

// row is one line of a report.
type row struct {
	name string
	ds   []time.Duration
}

func report(rows []row) {
	fmt.Printf("%-42s %10s %10s\n", "", "median", "p99")
	for _, r := range rows {
		if len(r.ds) > 0 {
			fmt.Printf("%-42s %10s %10s\n", r.name, ms(pct(r.ds, 50)), ms(pct(r.ds, 99)))
		}
	}
}

func measure(egressdBin, initBin, api string, n int, apiOnly bool) (err error) {
	egressdBin, err = filepath.Abs(egressdBin)
	if err != nil {
		return err
	}
	if initBin == "" {
		return errors.New("-init: a pool needs the init (a static launcher binary)")
	}
	if initBin, err = filepath.Abs(initBin); err != nil {
		return err
	}
	p, _, err := policy.Resolve(policy.ResolveOptions{Profile: "standard", Overrides: []policy.Setting{
		{Key: "network.upstream_dns", Values: []string{"192.0.2.53"}, Source: policy.Flag("--upstream-dns")}}})
	if err != nil {
		return err
	}
	stateDir, err := os.MkdirTemp("/run", "egbp-state-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stateDir)
	if err := os.Chmod(stateDir, 0o711); err != nil {
		return err
	}
	cfg := sandbox.Config{Profile: p, Args: []string{"true"}, EgressdPath: egressdBin, Init: initBin, StateDir: stateDir}
	if !apiOnly {
		if err := library(cfg, n); err != nil {
			return err
		}
	}
	if api != "" {
		return apiBench(api, egressdBin, stateDir, n)
	}
	return nil
}

// newPool makes a pool of size of cfg's shape and waits for it.
func newPool(cfg sandbox.Config, size int) (*sandbox.Pool, error) {
	pool, err := sandbox.NewPool(sandbox.PoolConfig{Config: cfg, Size: size})
	if err != nil {
		return nil, err
	}
	start := time.Now()
	if err := pool.Ready(context.Background()); err != nil {
		return nil, errors.Join(err, pool.Close())
	}
	fmt.Printf("pool of %d warm after %s\n", size, ms(time.Since(start)))
	return pool, nil
}

// call is one library call: Acquire, Run, Release, with its parts.
type call struct {
	acquire, run, release, total time.Duration
	lease                        *sandbox.Lease
}

// execute is one library call; a cold one (every pooled sandbox running
// an execution) is no error.
func execute(pool *sandbox.Pool, cfg sandbox.Config) (call, error) {
	ctx := context.Background()
	t0 := time.Now()
	l, err := pool.Acquire(ctx, cfg)
	if err != nil {
		return call{}, err
	}
	t1 := time.Now()
	res, runErr := l.Run(ctx, sandbox.Stdio{})
	t2 := time.Now()
	relErr := l.Release()
	t3 := time.Now()
	if err := errors.Join(runErr, relErr); err != nil {
		return call{}, err
	}
	if res.ExitCode != 0 {
		return call{}, fmt.Errorf("exit %d", res.ExitCode)
	}
	return call{acquire: t1.Sub(t0), run: t2.Sub(t1), release: t3.Sub(t2), total: t3.Sub(t0), lease: l}, nil
}

// library measures the library call (see the package doc).
func library(cfg sandbox.Config, n int) error {
	pool, err := newPool(cfg, 1)
	if err != nil {
		return err
	}
	defer pool.Close()
	ctx := context.Background()
	var acquire, run, release, warm, cold []time.Duration
	phases := map[string][]time.Duration{}
	for i := range n {
		c, err := execute(pool, cfg)
		if err == nil && !c.lease.Warm() {
			err = errors.New("ran cold")
		}
		if err != nil {
			return fmt.Errorf("warm execution %d: %w", i, err)
		}
		if err := c.lease.Wait(); err != nil {
			return fmt.Errorf("warm execution %d's reset: %w", i, err)
		}
		for _, t := range c.lease.Timings() {
			phases[t.Phase] = append(phases[t.Phase], t.Duration)
		}
		acquire, run, release, warm = append(acquire, c.acquire), append(run, c.run), append(release, c.release), append(warm, c.total)

		t0 := time.Now()
		s, err := sandbox.Create(ctx, cfg)
		if err != nil {
			return fmt.Errorf("cold execution %d: %w", i, err)
		}
		_, runErr := s.Run(ctx, sandbox.Stdio{})
		if err := s.Close(); err != nil || runErr != nil {
			return fmt.Errorf("cold execution %d: %v %v", i, runErr, err)
		}
		cold = append(cold, time.Since(t0))
	}
	st := pool.Stats()
	fmt.Printf("%d executions of `true` each, interleaved (pool: created %d, destroyed %d, failed %d)\n", n, st.Created, st.Destroyed, st.Failed)
	report([]row{
		{"cold: Create, Run, Close", cold},
		{"warm: Acquire, Run, Release", warm},
		{"  acquire", acquire},
		{"    plan", phases["plan"]},
		{"    policy (write, reload, state)", phases["policy"]},
		{"    firewall (only after 10 s idle)", phases["firewall"]},
		{"  run (send to the waiting init, exit)", run},
		{"  release (egressd's reset)", release},
		{"  background: reset and checks", phases["reset"]},
		{"  background: next container", phases["next"]},
	})
	fmt.Printf("warm/cold median: %.2f\n", float64(pct(warm, 50))/float64(pct(cold, 50)))

	// Back to back: each acquire waits for the last release's background
	// part.
	var b2b []time.Duration
	start := time.Now()
	for i := range n {
		c, err := execute(pool, cfg)
		if err == nil && !c.lease.Warm() {
			err = errors.New("ran cold")
		}
		if err != nil {
			return fmt.Errorf("back-to-back execution %d: %w", i, err)
		}
		b2b = append(b2b, c.total)
	}
	elapsed := time.Since(start)
	fmt.Printf("\nback to back on a pool of 1, %d executions: %.1f/s\n", n, float64(n)/elapsed.Seconds())
	report([]row{{"warm: Acquire, Run, Release", b2b}})
	if err := pool.Close(); err != nil {
		return err
	}
	return concurrent(cfg, n)
}

// concurrent runs n executions on a pool of 2 from 1, 2 and 4 clients.
func concurrent(cfg sandbox.Config, n int) error {
	pool, err := newPool(cfg, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	fmt.Printf("\nconcurrent executions on a pool of 2, %d each (%d cores)\n", n, runtime.NumCPU())
	fmt.Printf("%-12s %12s %10s %10s %12s\n", "clients", "executions/s", "median", "p99", "made for one")
	for _, clients := range []int{1, 2, 4} {
		if err := pool.Ready(context.Background()); err != nil {
			return err
		}
		before := pool.Stats().Created
		var mu sync.Mutex
		var ds []time.Duration
		var errs []error
		var wg sync.WaitGroup
		next := make(chan int, n)
		for i := range n {
			next <- i
		}
		close(next)
		start := time.Now()
		for range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range next {
					c, err := execute(pool, cfg)
					mu.Lock()
					if err != nil {
						errs = append(errs, err)
					} else {
						ds = append(ds, c.total)
					}
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		elapsed := time.Since(start)
		if err := errors.Join(errs...); err != nil {
			return fmt.Errorf("%d clients: %w", clients, err)
		}
		fmt.Printf("%-12d %12.1f %10s %10s %12d\n", clients, float64(n)/elapsed.Seconds(), ms(pct(ds, 50)), ms(pct(ds, 99)), pool.Stats().Created-before)
	}
	st := pool.Stats()
	fmt.Printf("(pool: created %d, destroyed %d, failed %d, cold %d)\n", st.Created, st.Destroyed, st.Failed, st.Cold)
	return nil
}

// apiBench measures `launcher serve --pool 2` answering POST /v1/execute
// of `true` beside `launcher run true`, interleaved.
func apiBench(launcher, egressdBin, stateDir string, n int) error {
	launcher, err := filepath.Abs(launcher)
	if err != nil {
		return err
	}
	sock := filepath.Join(stateDir, "api.sock")
	serveState := filepath.Join(stateDir, "serve")
	if err := os.Mkdir(serveState, 0o711); err != nil {
		return err
	}
	common := []string{"--egressd", egressdBin, "--upstream-dns", "192.0.2.53"}
	srv := exec.Command(launcher, append([]string{"serve", "--listen", "unix:" + sock, "--pool", "2", "--state-dir", serveState}, common...)...)
	var srvLog bytes.Buffer
	srv.Stderr = &srvLog
	if err := srv.Start(); err != nil {
		return err
	}
	defer func() {
		_ = srv.Process.Signal(syscall.SIGTERM)
		_ = srv.Wait()
	}()
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	// Ready once the pool is warm.
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := client.Get("http://serve/v1/pool")
		if err == nil {
			var st struct {
				Idle int `json:"idle"`
			}
			_ = json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
			if st.Idle == 2 {
				break
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("launcher serve never had 2 idle sandboxes:\n%s", srvLog.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	post := func() error {
		resp, err := client.Post("http://serve/v1/execute", "application/json", strings.NewReader(`{"cmd":"true"}`))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var res struct {
			ExitCode int    `json:"exit_code"`
			Error    string `json:"error"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&res); err != nil || resp.StatusCode != http.StatusOK || res.ExitCode != 0 {
			return fmt.Errorf("POST /v1/execute: %d %+v %v", resp.StatusCode, res, err)
		}
		return nil
	}
	var warm, cold []time.Duration
	for i := range n {
		t0 := time.Now()
		if err := post(); err != nil {
			return fmt.Errorf("API execution %d: %w\n%s", i, err, srvLog.String())
		}
		warm = append(warm, time.Since(t0))
		t0 = time.Now()
		run := exec.Command(launcher, append([]string{"run"}, append(common, "--", "true")...)...)
		if out, err := run.CombinedOutput(); err != nil {
			return fmt.Errorf("launcher run %d: %v: %s", i, err, out)
		}
		cold = append(cold, time.Since(t0))
	}
	fmt.Printf("\nthe API: %d executions of `true` each, interleaved\n", n)
	report([]row{
		{"cold: launcher run true", cold},
		{"warm: POST /v1/execute (serve --pool 2)", warm},
	})
	fmt.Printf("warm/cold median: %.2f\n", float64(pct(warm, 50))/float64(pct(cold, 50)))
	return nil
}

func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[min(max(i-1, 0), len(s)-1)]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d.Microseconds())/1000) }
