// Command pool-bench measures an execution of `true` through a warm
// sandbox.Pool (Acquire, Run, Release: the library call) beside a cold
// sandbox (Create, Run, Close) in the same run, interleaved: median and
// p99 of each, and the warm one's breakdown (acquire, run, release, which
// includes the reset and its verification).
//
// It runs inside a throwaway network namespace (egbp-<pid>) standing for
// the launcher's host namespace, re-executing itself there: the uplinks'
// veths, NAT rules and ip_forward change land in it, never in the
// machine's own namespace, and it is removed at the end. Nothing leaves
// it: `true` sends nothing and the upstream resolver (192.0.2.53,
// TEST-NET-1) is never asked.
//
//	go run ./bench/pool -egressd bin/egressd -init bin/launcher -n 200
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sandbox"
)

func main() {
	egressdBin := flag.String("egressd", "bin/egressd", "egressd binary")
	initBin := flag.String("init", "", "the sandboxes' init (a static launcher binary); none when empty")
	n := flag.Int("n", 200, "executions of each")
	inside := flag.Bool("inside", false, "internal: run the measurement in the current namespace")
	flag.Parse()
	if os.Geteuid() != 0 {
		log.Fatal("pool-bench: run as root")
	}
	var err error
	if *inside {
		err = measure(*egressdBin, *initBin, *n)
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

func measure(egressdBin, initBin string, n int) (err error) {
	egressdBin, err = filepath.Abs(egressdBin)
	if err != nil {
		return err
	}
	if initBin != "" {
		if initBin, err = filepath.Abs(initBin); err != nil {
			return err
		}
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
	ctx := context.Background()
	pool, err := sandbox.NewPool(sandbox.PoolConfig{Config: cfg, Size: 1})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := pool.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	start := time.Now()
	if err := pool.Ready(ctx); err != nil {
		return err
	}
	fmt.Printf("pool of 1 warm after %s\n", ms(time.Since(start)))
	var acquire, run, release, warm, cold []time.Duration
	phases := map[string][]time.Duration{}
	for i := range n {
		t0 := time.Now()
		l, err := pool.Acquire(ctx, cfg)
		if err != nil {
			return fmt.Errorf("warm execution %d: %w", i, err)
		}
		t1 := time.Now()
		if _, err := l.Run(ctx, sandbox.Stdio{}); err != nil {
			return errors.Join(fmt.Errorf("warm execution %d: %w", i, err), l.Release())
		}
		t2 := time.Now()
		if err := l.Release(); err != nil {
			return fmt.Errorf("warm execution %d: %w", i, err)
		}
		t3 := time.Now()
		for _, t := range l.Timings() {
			phases[t.Phase] = append(phases[t.Phase], t.Duration)
		}
		if !l.Warm() {
			return fmt.Errorf("warm execution %d ran cold", i)
		}
		acquire, run, release, warm = append(acquire, t1.Sub(t0)), append(run, t2.Sub(t1)), append(release, t3.Sub(t2)), append(warm, t3.Sub(t0))

		t0 = time.Now()
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
	fmt.Printf("%-28s %10s %10s\n", "", "median", "p99")
	for _, row := range []struct {
		name string
		ds   []time.Duration
	}{
		{"cold: Create, Run, Close", cold},
		{"warm: Acquire, Run, Release", warm},
		{"  acquire", acquire},
		{"  run", run},
		{"  release (reset, verify)", release},
	} {
		fmt.Printf("%-28s %10s %10s\n", row.name, ms(pct(row.ds, 50)), ms(pct(row.ds, 99)))
	}
	for _, ph := range []string{"plan", "policy", "firewall", "container", "reset"} {
		if ds := phases[ph]; len(ds) > 0 {
			fmt.Printf("%-28s %10s %10s\n", "    "+ph, ms(pct(ds, 50)), ms(pct(ds, 99)))
		}
	}
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
