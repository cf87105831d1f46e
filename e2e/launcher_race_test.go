package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/egressd/egressd/e2e/fakenet"
)

// raceSwapper is sandbox B's program: it makes .git in the shared
// workspace and swaps it (renameat2 RENAME_EXCHANGE, x86_64) with a
// symbolic link to ../review-target, on for a moment and back, until its
// time is up.
const raceSwapper = `import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
def exchange(a, b):
    return libc.syscall(316, -100, a.encode(), -100, b.encode(), 2)
os.chdir('/sandbox')
os.makedirs('.git', exist_ok=True)
if not os.path.islink('.gitl'):
    os.symlink('../review-target', '.gitl')
open('b.ready', 'w').close()
end = time.time() + float(os.environ['B_SECS'])
n = 0
while time.time() < end:
    if exchange('.git', '.gitl') != 0:
        print('exchange failed', ctypes.get_errno()); break
    time.sleep(0.002)
    exchange('.git', '.gitl'); time.sleep(0.002); n += 1
print('swaps', n)
`

// raceReader is sandbox A's command: it reads the host directory's file
// wherever a redirected mount would show it, and tries to plant one.
const raceReader = `echo a-ran
for f in /sandbox/.git/hostfile.txt /review-target/hostfile.txt; do
  cat "$f" 2>/dev/null && echo planted > "$(dirname "$f")/planted.txt"
done
exit 0
`

// TestSwappedWorkspacePathCannotRedirectAMount is attack review 1's
// finding H1 as it was found (THREATS I5): sandbox B shares its workspace
// with sandbox A and keeps swapping .git with a symbolic link to a host
// directory next to the workspace while A is launched again and again.
// When A's checks saw the directory and the runtime's mount the link, A
// got the host directory bound (writable, as the pinned .git) and read
// it. No attempt of A may ever read or write the host directory, and no
// launch may make anything in it; each attempt either runs normally or is
// refused, exit 125, naming the path. Bounded to about 25 s.
func TestSwappedWorkspacePathCannotRedirectAMount(t *testing.T) {
	fakenet.RequireRoot(t)
	launcherBinary(t) // built before B's clock starts
	lw := newLauncherWorld(t)
	target := filepath.Join(filepath.Dir(lw.ws), "review-target")
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	secret := "host-only-secret-" + hex.EncodeToString(b[:])
	if err := os.WriteFile(filepath.Join(target, "hostfile.txt"), []byte(secret+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{"b.py": raceSwapper, "a.sh": raceReader} {
		if err := os.WriteFile(filepath.Join(lw.ws, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	const bSecs = 22
	var bResult lresult
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		bResult = lw.run("--env", "B_SECS="+strconv.Itoa(bSecs), "--", sandboxPython, "/sandbox/b.py")
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(lw.ws, "b.ready")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			wg.Wait()
			t.Fatalf("sandbox B did not start swapping\n%s", bResult)
		}
		time.Sleep(20 * time.Millisecond)
	}
	stop := time.Now().Add((bSecs - 3) * time.Second)
	attempts, ran, refused := 0, 0, 0
	var reasons []string
	for time.Now().Before(stop) {
		attempts++
		r := lw.run("--", "sh", "/sandbox/a.sh")
		if strings.Contains(r.stdout+r.stderr, secret) || strings.Contains(r.stdout, "planted") {
			t.Errorf("attempt %d of sandbox A read the host directory through a redirected mount\n%s", attempts, r)
			break
		}
		switch {
		case r.code == 0 && strings.Contains(r.stdout, "a-ran"):
			ran++
		case r.code == 125 && strings.HasPrefix(r.stderr, "launcher: ") && !strings.Contains(r.stdout, "a-ran"):
			refused++
			if line := strings.SplitN(r.stderr, "\n", 2)[0]; !slices.Contains(reasons, line) && len(reasons) < 4 {
				reasons = append(reasons, line)
			}
		default:
			t.Errorf("attempt %d: want exit 0 having run, or 125 refused with a launcher: line and nothing run\n%s", attempts, r)
		}
	}
	wg.Wait()
	if !strings.Contains(bResult.stdout, "swaps ") {
		t.Errorf("sandbox B did not swap .git\n%s", bResult)
	}
	ents, _ := os.ReadDir(target)
	if len(ents) != 1 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("the host directory holds %v after the race, want only hostfile.txt (a launch made a placeholder there?)", names)
	}
	t.Logf("%d attempts of sandbox A while B swapped (%s): %d ran, %d refused", attempts, strings.TrimSpace(bResult.stdout), ran, refused)
	for _, r := range reasons {
		t.Logf("refused: %s", r)
	}
}
