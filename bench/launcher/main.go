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
	"encoding/json"
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

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/egressd/egressd/internal/nsthread"
	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sandbox"
)

func main() {
	launcherBin := flag.String("launcher", "bin/launcher", "launcher binary")
	baselineBin := flag.String("baseline", "", "another launcher binary (the one before a change) run interleaved with -launcher, for before/after figures")
	egressdBin := flag.String("egressd", "bin/egressd", "egressd binary")
	n := flag.Int("n", 25, "runs of each")
	interrupts := flag.Int("interrupts", 10, "runs of `launcher run -- sleep 30` stopped by SIGINT, for the time from SIGINT to the launcher's exit (0: none)")
	profile := flag.String("profile", "standard", "profile to run")
	flag.Parse()
	if os.Geteuid() != 0 {
		log.Fatal("launcher-bench: run as root")
	}
	if err := run(*launcherBin, *baselineBin, *egressdBin, *profile, *n, *interrupts); err != nil {
		log.Fatal("launcher-bench: ", err)
	}
}

// launcherFigures are one launcher binary's measurements.
type launcherFigures struct {
	bin         string
	walls, cpus []time.Duration
	phases      map[string][]time.Duration
	interrupts  []time.Duration
}

func (f *launcherFigures) measure(nsPath, egressdBin, profile string) error {
	c0 := childrenCPU()
	wall, ph, err := launcherRun(nsPath, f.bin, egressdBin, profile)
	if err != nil {
		return err
	}
	f.cpus = append(f.cpus, childrenCPU()-c0)
	f.walls = append(f.walls, wall)
	for k, v := range ph {
		f.phases[k] = append(f.phases[k], v)
	}
	return nil
}

func (f *launcherFigures) print(title, profile string) {
	fmt.Printf("%s: launcher run --profile %s -- true, %d runs (wall time, from exec to exit)\n", title, profile, len(f.walls))
	fmt.Printf("  %-22s median %7s   p90 %7s   min %7s\n", "wall", ms(median(f.walls)), ms(pct(f.walls, 90)), ms(slices.Min(f.walls)))
	fmt.Printf("  %-22s median %7s   (user+system, every process of the run)\n", "cpu", ms(median(f.cpus)))
	fmt.Println("phases (--timings; firewall, uplink, egressd and container, runtime.create included, run in parallel inside setup;")
	fmt.Println("runtime.delete to rootfs.remove in parallel inside teardown, statedir.remove after them):")
	for _, k := range []string{"prepare", "reap", "netns", "firewall", "uplink", "egressd", "container", "runtime.create", "setup", "create",
		"runtime.start", "run", "teardown", "total", "runtime.delete", "egressd.stop", "uplink.remove", "netns.remove", "rootfs.remove", "statedir.remove"} {
		if v := f.phases[k]; len(v) > 0 {
			fmt.Printf("  %-22s median %7s   p90 %7s\n", k, ms(median(v)), ms(pct(v, 90)))
		}
	}
	if len(f.interrupts) > 0 {
		fmt.Printf("launcher run -- sleep 30, SIGINT to the launcher's exit, %d runs\n", len(f.interrupts))
		fmt.Printf("  %-22s median %7s   p90 %7s   max %7s\n", "SIGINT to exit", ms(median(f.interrupts)), ms(pct(f.interrupts, 90)), ms(slices.Max(f.interrupts)))
	}
}

func run(launcherBin, baselineBin, egressdBin, profile string, n, interrupts int) (err error) {
	ns := fmt.Sprintf("egb-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add: %v: %s", err, out)
	}
	defer exec.Command("ip", "netns", "del", ns).Run()
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return fmt.Errorf("lo up: %v: %s", err, out)
	}
	nsPath := "/run/netns/" + ns

	// What the launchers leave behind is a bug, not a figure: the runtime's
	// containers are counted before and after.
	rt, err := sandbox.NewRuntime("runc", "")
	if err != nil {
		return err
	}
	before, err := sandboxContainers(rt)
	if err != nil {
		return err
	}
	defer func() {
		after, lerr := sandboxContainers(rt)
		var left []string
		for id := range after {
			if !before[id] {
				left = append(left, id)
			}
		}
		if err == nil && lerr != nil {
			err = lerr
		}
		if err == nil && len(left) > 0 {
			err = fmt.Errorf("the launchers left %d containers behind: %s", len(left), strings.Join(left, " "))
		}
	}()

	figs := []*launcherFigures{{bin: launcherBin, phases: map[string][]time.Duration{}}}
	if baselineBin != "" {
		figs = append(figs, &launcherFigures{bin: baselineBin, phases: map[string][]time.Duration{}})
	}
	// Warm the page cache (binaries, runc, the rootfs lookups) once; the
	// measured runs are cold in every other sense (a new namespace, egressd,
	// rules, rootfs and container each time).
	for _, f := range figs {
		if _, _, err := launcherRun(nsPath, f.bin, egressdBin, profile); err != nil {
			return err
		}
	}
	runcOnce, bareOnce, cleanup, err := runcRunner(nsPath, profile, egressdBin)
	if err != nil {
		return err
	}
	defer cleanup()
	if _, _, err := runcOnce(); err != nil { // warm up
		return err
	}
	if _, _, err := bareOnce("runc"); err != nil {
		return err
	}
	// crun, where it runs here; else why not.
	crun := ""
	if _, err := exec.LookPath("crun"); err == nil {
		if _, _, err := bareOnce("crun"); err != nil {
			fmt.Printf("crun run: cannot run here: %v\n", err)
		} else {
			crun = "crun"
		}
	}
	// Interleaved, so all share whatever else the machine is doing.
	var runcWalls, runcCPU, bareWalls, bareCPU, crunWalls, crunCPU []time.Duration
	for i := range n {
		// Alternate which goes first, so neither always runs on the
		// other's warm caches.
		for j := range figs {
			f := figs[(i+j)%len(figs)]
			if err := f.measure(nsPath, egressdBin, profile); err != nil {
				return err
			}
		}
		w, c, err := runcOnce()
		if err != nil {
			return err
		}
		runcWalls, runcCPU = append(runcWalls, w), append(runcCPU, c)
		if w, c, err = bareOnce("runc"); err != nil {
			return err
		}
		bareWalls, bareCPU = append(bareWalls, w), append(bareCPU, c)
		if crun != "" {
			if w, c, err = bareOnce(crun); err != nil {
				return err
			}
			crunWalls, crunCPU = append(crunWalls, w), append(crunCPU, c)
		}
	}
	for range interrupts {
		for _, f := range figs {
			d, err := interruptRun(nsPath, f.bin, egressdBin, profile)
			if err != nil {
				return err
			}
			f.interrupts = append(f.interrupts, d)
		}
	}

	figs[0].print(launcherBin, profile)
	if len(figs) > 1 {
		figs[1].print("baseline "+baselineBin, profile)
		fmt.Printf("difference (%s − baseline), medians\n", launcherBin)
		diff := func(name string, a, b []time.Duration) {
			if len(a) > 0 && len(b) > 0 {
				fmt.Printf("  %-22s %+7.1fms   ratio %.3f\n", name, float64((median(a)-median(b)).Microseconds())/1000,
					float64(median(a))/float64(median(b)))
			}
		}
		diff("wall", figs[0].walls, figs[1].walls)
		// Each iteration ran both, one after the other: the median of the
		// per-iteration differences follows the machine's load drifting
		// better than the difference of the medians.
		paired := make([]time.Duration, len(figs[0].walls))
		for i := range paired {
			paired[i] = figs[0].walls[i] - figs[1].walls[i]
		}
		fmt.Printf("  %-22s %+7.1fms   (median of the %d per-iteration differences)\n", "wall, paired",
			float64(median(paired).Microseconds())/1000, len(paired))
		diff("cpu", figs[0].cpus, figs[1].cpus)
		for _, k := range []string{"create", "run", "teardown", "total"} {
			diff(k, figs[0].phases[k], figs[1].phases[k])
		}
		diff("SIGINT to exit", figs[0].interrupts, figs[1].interrupts)
	}
	fmt.Printf("the runtime alone, true with the same spec (no init), no launcher, %d runs each (interleaved with the above)\n", n)
	row := func(name string, walls, cpus []time.Duration) {
		if len(walls) > 0 {
			fmt.Printf("  %-34s median %7s   p90 %7s   min %7s   cpu %7s\n", name, ms(median(walls)), ms(pct(walls, 90)), ms(slices.Min(walls)), ms(median(cpus)))
		}
	}
	row("runc run (one runc process)", bareWalls, bareCPU)
	row("runc create, start, wait, delete", runcWalls, runcCPU)
	row("crun run", crunWalls, crunCPU)
	for _, f := range figs {
		fmt.Printf("  %-34s median %+7.1fms  (%s)\n", "launcher − runc run", float64((median(f.walls)-median(bareWalls)).Microseconds())/1000, f.bin)
	}
	return nil
}

// sandboxContainers lists the runtime's containers named like sandboxes.
func sandboxContainers(rt *sandbox.Runtime) (map[string]bool, error) {
	cs, err := rt.List(context.Background())
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, c := range cs {
		if strings.HasPrefix(c.ID, sandbox.IDPrefix) {
			out[c.ID] = true
		}
	}
	return out, nil
}

// interruptRun runs `launcher run -- sleep 30` in the namespace, sends the
// launcher SIGINT once the sandbox's sleep runs (as Ctrl-C would), and
// returns the time from the signal to the launcher's exit.
func interruptRun(nsPath, launcherBin, egressdBin, profile string) (time.Duration, error) {
	cmd := exec.Command(launcherBin, "run", "--profile", profile,
		"--egressd", egressdBin, "--upstream-dns", "192.0.2.53", "--quiet", "--", "sleep", "30")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := startIn(nsPath, cmd); err != nil {
		return 0, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	// The sandbox's sleep is the launcher's descendant in the sandbox's
	// network namespace.
	deadline := time.Now().Add(30 * time.Second)
	for !sleepRunsFor(cmd.Process.Pid) {
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-done
			return 0, fmt.Errorf("the sandbox's sleep never ran: %s", stderr.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		return 0, err
	}
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		return 0, fmt.Errorf("the launcher did not exit within 20s of SIGINT: %s", stderr.String())
	}
	return time.Since(start), nil
}

// sleepRunsFor reports whether a process named sleep runs in the network
// namespace of the sandbox whose launcher is pid.
func sleepRunsFor(pid int) bool {
	id, ok := sandbox.OfLauncher(pid)
	if !ok {
		return false
	}
	for _, comm := range sandbox.ProcessesInNetns(filepath.Join(sandbox.NetnsDir, id)) {
		if comm == "sleep" {
			return true
		}
	}
	return false
}

// startIn starts cmd in the network namespace at nsPath: forked from a
// thread inside it, so no nsenter process runs before the launcher (its
// exec would count in the launcher's wall time and not in runc's).
func startIn(nsPath string, cmd *exec.Cmd) error {
	return nsthread.InNetns(nsPath, cmd.Start)
}

// launcherRun runs the launcher once inside the namespace at nsPath.
func launcherRun(nsPath, launcherBin, egressdBin, profile string) (time.Duration, map[string]time.Duration, error) {
	cmd := exec.Command(launcherBin, "run", "--profile", profile,
		"--egressd", egressdBin, "--upstream-dns", "192.0.2.53", "--quiet", "--timings", "--", "true")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	err := startIn(nsPath, cmd)
	if err == nil {
		err = cmd.Wait()
	}
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

// runcRunner prepares `runc run` of `true` with the container the launcher
// would make (sandbox.PrepareContainer: the host view, the profile, joined
// to the namespace at nsPath), and returns a function that runs it once
// and reports its wall and CPU time (runc removes a container that ran to
// its end; as in the launcher, delete runs only if it did not).
//
// bare runs the runtime named (runc or crun) as one `run` in the
// foreground, as a person would: it creates, starts, waits for and
// deletes the container itself.
func runcRunner(nsPath, profile, egressdBin string) (run func() (wall, cpu time.Duration, err error),
	bare func(runtime string) (wall, cpu time.Duration, err error), cleanup func(), err error) {
	p, _, err := policy.Resolve(policy.ResolveOptions{Profile: profile})
	if err != nil {
		return nil, nil, nil, err
	}
	rt, err := sandbox.NewRuntime("runc", "")
	if err != nil {
		return nil, nil, nil, err
	}
	dir, err := os.MkdirTemp("/run", "egb-runc-")
	if err != nil {
		return nil, nil, nil, err
	}
	ctx := context.Background()
	cfg := sandbox.Config{Profile: p, Args: []string{"true"}, EgressdPath: egressdBin}
	c, err := sandbox.PrepareContainer(ctx, cfg, filepath.Base(dir), dir, nsPath)
	cleanup = func() {
		if c != nil {
			c.Cleanup()
		}
		os.RemoveAll(dir)
	}
	if err != nil {
		cleanup()
		return nil, nil, nil, err
	}
	data, err := os.ReadFile(filepath.Join(c.Bundle, "config.json"))
	var spec specs.Spec
	if err == nil {
		err = json.Unmarshal(data, &spec)
	}
	if err != nil {
		cleanup()
		return nil, nil, nil, err
	}
	i := 0
	run = func() (time.Duration, time.Duration, error) {
		i++
		id := fmt.Sprintf("egb-%d-%d", os.Getpid(), i)
		spec.Linux.CgroupsPath = id
		if err := sandbox.WriteBundle(c.Bundle, &spec); err != nil {
			return 0, 0, err
		}
		c0 := childrenCPU()
		start := time.Now()
		ex, err := rt.Run(ctx, id, c.Bundle, sandbox.Stdio{})
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
	bare = func(runtime string) (time.Duration, time.Duration, error) {
		i++
		id := fmt.Sprintf("egb-%d-%d", os.Getpid(), i)
		spec.Linux.CgroupsPath = id
		if err := sandbox.WriteBundle(c.Bundle, &spec); err != nil {
			return 0, 0, err
		}
		cmd := exec.Command(runtime, "run", "--bundle", c.Bundle, id)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		c0 := childrenCPU()
		start := time.Now()
		err := cmd.Run()
		wall := time.Since(start)
		if err != nil {
			_ = exec.Command(runtime, "delete", "--force", id).Run()
			return 0, 0, fmt.Errorf("%s run: %v: %s", runtime, err, strings.TrimSpace(out.String()))
		}
		return wall, childrenCPU() - c0, nil
	}
	return run, bare, cleanup, nil
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
