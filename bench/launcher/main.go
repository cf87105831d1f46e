// Command launcher-bench measures a cold `launcher run --profile standard
// -- true`: wall time per run (median, p90 of -n runs) and the launcher's
// own phase breakdown (--timings), and beside it `runc run` of `true` with
// the same container spec, without the launcher.
//
// Everything runs inside a throwaway network namespace (egb-<pid>) that
// stands for the launcher's host namespace: the launcher's veth, NAT rules
// and ip_forward change land there, never in the machine's own namespace,
// and it is removed at the end. Nothing leaves it: `true` sends nothing
// and the upstream resolver (192.0.2.53, TEST-NET-1) is never asked.
//
//	go run ./bench/launcher -launcher bin/launcher -egressd bin/egressd -n 30
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sandbox"
)

func main() {
	launcherBin := flag.String("launcher", "bin/launcher", "launcher binary")
	egressdBin := flag.String("egressd", "bin/egressd", "egressd binary")
	n := flag.Int("n", 25, "runs of each")
	profile := flag.String("profile", "standard", "profile to run")
	flag.Parse()
	if os.Geteuid() != 0 {
		log.Fatal("launcher-bench: run as root")
	}
	if err := run(*launcherBin, *egressdBin, *profile, *n); err != nil {
		log.Fatal("launcher-bench: ", err)
	}
}

func run(launcherBin, egressdBin, profile string, n int) error {
	ns := fmt.Sprintf("egb-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add: %v: %s", err, out)
	}
	defer exec.Command("ip", "netns", "del", ns).Run()
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return fmt.Errorf("lo up: %v: %s", err, out)
	}
	nsPath := "/run/netns/" + ns

	// Warm the page cache (binaries, runc, the rootfs lookups) once; the
	// measured runs are cold in every other sense (a new namespace, egressd,
	// rules, rootfs and container each time).
	if _, _, err := launcherRun(nsPath, launcherBin, egressdBin, profile); err != nil {
		return err
	}
	runcOnce, cleanup, err := runcRunner(nsPath, profile)
	if err != nil {
		return err
	}
	defer cleanup()
	if _, _, err := runcOnce(); err != nil { // warm up
		return err
	}
	// Interleaved, so both share whatever else the machine is doing.
	var walls, cpus, runcWalls, runcCPU []time.Duration
	phases := map[string][]time.Duration{}
	for range n {
		c0 := childrenCPU()
		wall, ph, err := launcherRun(nsPath, launcherBin, egressdBin, profile)
		if err != nil {
			return err
		}
		cpus = append(cpus, childrenCPU()-c0)
		walls = append(walls, wall)
		for k, v := range ph {
			phases[k] = append(phases[k], v)
		}
		w, c, err := runcOnce()
		if err != nil {
			return err
		}
		runcWalls, runcCPU = append(runcWalls, w), append(runcCPU, c)
	}

	fmt.Printf("launcher run --profile %s -- true, %d runs (wall time, from exec to exit)\n", profile, n)
	fmt.Printf("  %-22s median %7s   p90 %7s   min %7s\n", "wall", ms(median(walls)), ms(pct(walls, 90)), ms(slices.Min(walls)))
	fmt.Printf("  %-22s median %7s   (user+system, every process of the run)\n", "cpu", ms(median(cpus)))
	fmt.Println("phases (--timings; firewall, uplink, egressd and container run in parallel inside setup):")
	for _, k := range []string{"prepare", "reap", "netns", "firewall", "uplink", "egressd", "container", "setup", "create", "run", "teardown", "total"} {
		if v := phases[k]; len(v) > 0 {
			fmt.Printf("  %-22s median %7s   p90 %7s\n", k, ms(median(v)), ms(pct(v, 90)))
		}
	}
	fmt.Printf("runc run of true, same spec, no launcher, %d runs (interleaved with the above)\n", n)
	fmt.Printf("  %-22s median %7s   p90 %7s   min %7s\n", "runc run", ms(median(runcWalls)), ms(pct(runcWalls, 90)), ms(slices.Min(runcWalls)))
	fmt.Printf("  %-22s median %7s\n", "cpu", ms(median(runcCPU)))
	return nil
}

// launcherRun runs the launcher once inside the namespace at nsPath.
func launcherRun(nsPath, launcherBin, egressdBin, profile string) (time.Duration, map[string]time.Duration, error) {
	cmd := exec.Command("nsenter", "--net="+nsPath, "--", launcherBin, "run", "--profile", profile,
		"--egressd", egressdBin, "--upstream-dns", "192.0.2.53", "--quiet", "--timings", "--", "true")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	err := cmd.Run()
	wall := time.Since(start)
	if err != nil {
		return 0, nil, fmt.Errorf("launcher: %v: %s", err, stderr.String())
	}
	ph := map[string]time.Duration{}
	for _, line := range strings.Split(stderr.String(), "\n") {
		rest, ok := strings.CutPrefix(line, "launcher: timings: ")
		if !ok {
			continue
		}
		for _, kv := range strings.Fields(rest) {
			k, v, _ := strings.Cut(kv, "=")
			f, err := strconv.ParseFloat(strings.TrimSuffix(v, "ms"), 64)
			if err == nil {
				ph[k] = time.Duration(f * float64(time.Millisecond))
			}
		}
	}
	if len(ph) == 0 {
		return 0, nil, fmt.Errorf("no timings line in: %s", stderr.String())
	}
	return wall, ph, nil
}

// runcRunner prepares `runc run` of `true` with the container spec the
// launcher would build (rootfs overlay over /, joined to the namespace at
// nsPath), and returns a function that runs it once and reports its wall
// and CPU time (runc removes a container that ran to its end; as in the
// launcher, delete runs only if it did not).
func runcRunner(nsPath, profile string) (run func() (wall, cpu time.Duration, err error), cleanup func(), err error) {
	p, _, err := policy.Resolve(policy.ResolveOptions{Profile: profile})
	if err != nil {
		return nil, nil, err
	}
	rt, err := sandbox.NewRuntime("runc", "")
	if err != nil {
		return nil, nil, err
	}
	dir, err := os.MkdirTemp("/run", "egb-runc-")
	if err != nil {
		return nil, nil, err
	}
	ctx := context.Background()
	rootfs, rootfsCleanup, err := sandbox.PrepareRootfs(ctx, "/", dir, !p.Filesystem.ReadOnly)
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	cleanup = func() { rootfsCleanup(); os.RemoveAll(dir) }
	user, err := sandbox.ResolveUser(rootfs, p.Process.User)
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	env, err := sandbox.BuildEnv(p, user.Home, nil, nil, "http://127.0.0.1:3128")
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	bundle := filepath.Join(dir, "bundle")
	i := 0
	run = func() (time.Duration, time.Duration, error) {
		i++
		id := fmt.Sprintf("egb-%d-%d", os.Getpid(), i)
		spec, err := sandbox.BuildSpec(p, sandbox.SpecOptions{Args: []string{"true"}, Env: env, NetNSPath: nsPath,
			RootfsDir: rootfs, User: user, CgroupsPath: id})
		if err != nil {
			return 0, 0, err
		}
		if err := sandbox.WriteBundle(bundle, spec); err != nil {
			return 0, 0, err
		}
		c0 := childrenCPU()
		start := time.Now()
		ex, err := rt.Run(ctx, id, bundle, sandbox.Stdio{})
		code := ex.Code
		var derr error
		if _, serr := os.Stat(filepath.Join("/run/runc", id)); serr == nil {
			derr = rt.Delete(ctx, id)
		}
		wall := time.Since(start)
		if err != nil || code != 0 || derr != nil {
			return 0, 0, fmt.Errorf("runc run: exit %d, %v, delete: %v", code, err, derr)
		}
		return wall, childrenCPU() - c0, nil
	}
	return run, cleanup, nil
}

// childrenCPU is the user+system time of every waited-for descendant.
func childrenCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func median(ds []time.Duration) time.Duration { return pct(ds, 50) }

func pct(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	if i > 0 {
		i--
	}
	return s[i]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d.Microseconds())/1000) }
