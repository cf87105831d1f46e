// Command rss measures the resident memory of `egressd serve`: idle after
// start-up, and with N open CONNECT tunnels, on loopback only. It starts a
// TCP sink on 127.0.0.1, runs the egressd binary given by -egressd with a
// policy that allows the sink by an IP rule (which lifts the loopback guard),
// opens the tunnels through the explicit proxy, and reads VmRSS from
// /proc/PID/status. Everything stops by itself.
//
// With -pages (as root: it reads /proc/PID/pagemap) it also says where the
// idle process's resident pages are: anonymous or the binary's, and of the
// binary's, how much of each ELF section and, when the binary has its
// symbol table (built without -s), of each package's code and data.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	bin := flag.String("egressd", "bin/egressd", "egressd binary")
	tunnels := flag.Int("tunnels", 1000, "tunnels to open")
	pages := flag.Int("pages", 0, "print where the idle process's pages are, with this many packages (needs root)")
	settle := flag.Duration("settle", 2*time.Second, "wait this long after ready before reading the idle RSS (past 2m: after the runtime's first forced GC)")
	flag.Parse()
	if err := run(*bin, *tunnels, *pages, *settle); err != nil {
		log.Fatal(err)
	}
}

func run(bin string, n, pages int, settle time.Duration) error {
	sink, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer sink.Close()
	go func() {
		for {
			c, err := sink.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	sinkPort := sink.Addr().(*net.TCPAddr).Port
	dir, err := os.MkdirTemp("", "egressd-rss-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	pol := filepath.Join(dir, "policy.toml")
	if err := os.WriteFile(pol, []byte(fmt.Sprintf("version = 1\nprofile = \"strict\"\n[network]\nallow = [\"127.0.0.1:%d\"]\n", sinkPort)), 0o644); err != nil {
		return err
	}
	proxyLn, err := net.Listen("tcp", "127.0.0.1:0") // find a free port
	if err != nil {
		return err
	}
	proxyAddr := proxyLn.Addr().String()
	proxyLn.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, "serve", "--policy", pol, "--dns-listen", "127.0.0.1:0",
		"--proxy-listen", proxyAddr, "--transparent-listen", "127.0.0.1:0",
		"--upstream-dns", "127.0.0.1:9", "--max-tunnels", strconv.Itoa(n+100), "--max-tunnels-per-dest", strconv.Itoa(n+100),
		"--ready-fd", "3")
	cmd.ExtraFiles = []*os.File{w}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	w.Close()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}()
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(r).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("ready-fd said %q", line)
		}
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			return fmt.Errorf("egressd did not become ready: %w", err)
		}
	case <-time.After(30 * time.Second):
		return fmt.Errorf("egressd not ready after 30s")
	}
	time.Sleep(settle)
	idle, err := rss(cmd.Process.Pid)
	if err != nil {
		return err
	}
	fmt.Printf("idle_rss_kib %d\n", idle)
	if pages > 0 {
		if err := residency(os.Stdout, cmd.Process.Pid, bin, pages); err != nil {
			return fmt.Errorf("reading the resident pages: %w", err)
		}
	}

	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	target := fmt.Sprintf("127.0.0.1:%d", sinkPort)
	for i := 0; i < n; i++ {
		c, err := net.DialTimeout("tcp", proxyAddr, 5*time.Second)
		if err != nil {
			return fmt.Errorf("tunnel %d: %w", i, err)
		}
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		status, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || !strings.Contains(status, " 200") {
			c.Close()
			return fmt.Errorf("tunnel %d: CONNECT answered %q (%v)", i, status, err)
		}
		// Non-TLS first bytes that are no request line (a lone letter could
		// still become one and would be held): the tunnel relays after this.
		if _, err := c.Write([]byte("x\n")); err != nil {
			return err
		}
		conns = append(conns, c)
	}
	time.Sleep(2 * time.Second)
	busy, err := rss(cmd.Process.Pid)
	if err != nil {
		return err
	}
	fmt.Printf("tunnels %d\nrss_with_tunnels_kib %d\nper_tunnel_kib %.1f\n", n, busy, float64(busy-idle)/float64(n))
	return nil
}

func rss(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			return strconv.Atoi(f[1])
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}
