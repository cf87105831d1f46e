package nsthread

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/internal/privtest"
)

func TestRunNeverUsesTheMainThread(t *testing.T) {
	for i := 0; i < 50; i++ {
		if err := Run(func() error {
			if unix.Gettid() == unix.Getpid() {
				return errors.New("ran on the main thread")
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRunTurnsPanicsIntoErrors(t *testing.T) {
	err := Run(func() error { panic("boom") })
	if err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("err = %v, want the panic as an error", err)
	}
}

// TestInNetnsEntersAndNeverLeaks enters a throwaway namespace, checks that a
// child process forked there lives in it, and that the process itself (every
// other thread, /proc/self) never does.
func TestInNetnsEntersAndNeverLeaks(t *testing.T) {
	privtest.Require(t, "creates a network namespace")
	before, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	name := "egt-nst-" + strings.TrimPrefix(before, "net:[")[:6]
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	inside := ""
	for i := 0; i < 20; i++ {
		err = InNetns("/run/netns/"+name, func() error {
			out, err := exec.Command("readlink", "/proc/self/ns/net").Output()
			inside = strings.TrimSpace(string(out))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if inside == before {
			t.Fatalf("child of the namespace thread is in the caller's namespace %s", inside)
		}
	}
	after, _ := os.Readlink("/proc/self/ns/net")
	if after != before {
		t.Fatalf("/proc/self/ns/net changed from %s to %s: the namespace leaked into the process", before, after)
	}
	if err := InNetns("/run/netns/does-not-exist", func() error { return nil }); err == nil {
		t.Fatal("InNetns with a missing namespace succeeded")
	}
}

// TestInNetnsOwnNamespaceNeedsNoSetns acts on the caller's own namespace
// through /proc/self/ns/net. setns(2) needs CAP_SYS_ADMIN even into one's own
// namespace, so as non-root this proves InNetns skips it (an init container
// with only CAP_NET_ADMIN installs its pod's firewall this way); as root it
// proves the child still lands in the caller's namespace.
func TestInNetnsOwnNamespaceNeedsNoSetns(t *testing.T) {
	before, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	var inside string
	err = InNetns("/proc/self/ns/net", func() error {
		l, err := os.Readlink("/proc/thread-self/ns/net")
		inside = l
		return err
	})
	if err != nil {
		t.Fatalf("InNetns on the caller's own namespace: %v", err)
	}
	if inside != before {
		t.Fatalf("ran in %s, want the caller's namespace %s", inside, before)
	}
}
