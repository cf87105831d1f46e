package sandbox

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/firewall"
	"github.com/egressd/egressd/internal/nsthread"
	"github.com/egressd/egressd/policy"
)

// TestNewNamespaceHasOnlyLoopbackUp: nothing of the caller's network
// shows through, and lo is ready for egressd.
func TestNewNamespaceHasOnlyLoopbackUp(t *testing.T) {
	requireRootNetns(t)
	ns := testNetNS(t)
	if !strings.HasPrefix(ns.Name, IDPrefix) || ns.Path != NetnsDir+"/"+ns.Name {
		t.Errorf("namespace %s at %s", ns.Name, ns.Path)
	}
	h, err := netnsHandle(ns.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	if len(links) != 1 || links[0].Attrs().Name != "lo" || links[0].Attrs().Flags&(1<<0) == 0 {
		t.Errorf("links %v: want lo alone, up", links)
	}
	if got := inNS(t, ns, "ip", "-4", "route", "show", "table", "all"); strings.Contains(got, "default") {
		t.Errorf("routes in a fresh namespace:\n%s", got)
	}
	// `ip netns list` shows it, under its sandbox name.
	out, _ := exec.Command("ip", "netns", "list").Output()
	if !strings.Contains(string(out), ns.Name) {
		t.Errorf("ip netns list does not show %s:\n%s", ns.Name, out)
	}
	// Nothing of the namespace leaked into this process.
	if selfNetNS() == "" || selfNetNS() == fmtNS(ns) {
		t.Error("the test process is inside the sandbox's namespace")
	}
}

func fmtNS(n NetNS) string {
	var st unix.Stat_t
	if unix.Stat(n.Path, &st) != nil {
		return ""
	}
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

// TestRemoveKillsWhatIsLeftInside: a process that outlived its sandbox
// (a leaked child, a runtime that failed to delete) is killed, by pid,
// before the namespace goes; Remove is idempotent.
func TestRemoveKillsWhatIsLeftInside(t *testing.T) {
	requireRootNetns(t)
	ns, err := hostNamespaces{}.Create(newID())
	if err != nil {
		t.Fatal(err)
	}
	var cmd *exec.Cmd
	if err := nsthread.InNetns(ns.Path, func() error {
		cmd = exec.Command("sleep", "60")
		return cmd.Start()
	}); err != nil {
		hostNamespaces{}.Remove(ns)
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	if err := (hostNamespaces{}).Remove(ns); err != nil {
		t.Errorf("destroy: %v", err)
	}
	select {
	case err := <-waited:
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
			t.Errorf("sleep ended with %v, want SIGKILL", err)
		}
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		t.Fatal("the process in the namespace survived destroy")
	}
	if _, err := os.Lstat(ns.Path); err == nil {
		t.Errorf("%s still exists", ns.Path)
	}
	if err := (hostNamespaces{}).Remove(ns); err != nil {
		t.Errorf("second destroy: %v", err)
	}
}

// TestOpenNetNSOfNothing: Reap opening a namespace that is gone, or a
// plain file where one was, finds nothing to kill.
func TestOpenNetNSOfNothing(t *testing.T) {
	n := hostNamespaces{}.Open("egs-ffffffff")
	if n.Ino != 0 {
		t.Errorf("Open of a missing name: %+v", n)
	}
	if err := (hostNamespaces{}).Remove(n); err != nil {
		t.Errorf("destroy of a missing namespace: %v", err)
	}
}

// TestFreshFirewallIsWhatInstallPuts: the launcher's one-batch install into
// a new namespace leaves exactly what firewall.Install would (Verify, which
// compares rule for rule and checks ping_group_range, passes), in both
// modes.
func TestFreshFirewallIsWhatInstallPuts(t *testing.T) {
	requireRootNetns(t)
	for _, cfg := range []firewall.Config{
		{Mode: policy.ModeFiltered, DNSPort: EgressdDNSPort, TransparentPort: EgressdTransparentPort,
			ExplicitProxyPort: EgressdProxyPort, Mark: DefaultMark, UpstreamDNSPorts: []uint16{53, 5353}},
		{Mode: policy.ModeNone},
	} {
		t.Run(string(cfg.Mode), func(t *testing.T) {
			ns := testNetNS(t)
			ctx := context.Background()
			if err := firewall.InstallFresh(ctx, ns.Path, cfg); err != nil {
				t.Fatal(err)
			}
			if err := firewall.Verify(ctx, ns.Path, cfg); err != nil {
				t.Errorf("Verify after the fresh install: %v", err)
			}
		})
	}
}

// TestOpenTCPSocketsLeavesOutListeners: the sockets a pooled reset must
// not find are every row of /proc/net/tcp but the listening ones.
func TestOpenTCPSocketsLeavesOutListeners(t *testing.T) {
	const table = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0C38 00000000:0000 0A 00000000:00000000 00:00000000 00000000 65530        0 1 1 ffff 100 0 0 10 0
   1: 0100007F:0C38 0100007F:D431 08 00000000:00000000 00:00000000 00000000     0        0 0 1 ffff 20 4 30 10 -1
   2: B2A8C80A:9E64 0A7100CB:0050 06 00000000:00000000 03:00001770 00000000     0        0 0 3 ffff
`
	got := openTCPSockets(table)
	want := []string{"08 0100007F:0C38 0100007F:D431", "06 B2A8C80A:9E64 0A7100CB:0050"}
	if !slices.Equal(got, want) {
		t.Errorf("openTCPSockets = %q, want %q", got, want)
	}
	if got := openTCPSockets(""); len(got) != 0 {
		t.Errorf("an empty table: %q", got)
	}
}

// TestQueuedUDPSocketsAreThoseWithUnreadDatagrams: a UDP socket is left
// by a reset only when datagrams wait in it.
func TestQueuedUDPSocketsAreThoseWithUnreadDatagrams(t *testing.T) {
	const table = `   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 0100007F:3ACD 00000000:0000 07 00000000:00000000 00:00000000 00000000 65530        0 1 2 ffff 0
  101: 0100007F:3ACD 00000000:0000 07 00000000:00000340 00:00000000 00000000 65530        0 2 2 ffff 0
`
	got := queuedUDPSockets(table)
	want := []string{"udp 0100007F:3ACD 00000000:0000 queued=00000000:00000340"}
	if !slices.Equal(got, want) {
		t.Errorf("queuedUDPSockets = %q, want %q", got, want)
	}
}
