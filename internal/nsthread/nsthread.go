// Package nsthread runs code on an OS thread of its own that is destroyed
// afterwards, so whatever the code changes about its thread — the network
// namespace it entered, its no_new_privs bit, its capability bounding set —
// never reaches another goroutine, and no failure to switch back can leak
// a sandbox's namespace into the rest of the process.
package nsthread

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Run runs fn on a fresh OS thread: the goroutine locks itself to its thread
// and exits without unlocking, so the Go runtime destroys the thread. A panic
// in fn is returned as an error (code run inside a sandbox's namespace fails
// its operation, closed, instead of the process).
func Run(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			// The main thread is never destroyed (the runtime parks it
			// instead), and /proc/self follows it: it must not be changed.
			// Stay locked, so this goroutine cannot run the retry itself,
			// and try again on another thread.
			errc <- Run(fn)
			runtime.UnlockOSThread()
			return
		}
		// No UnlockOSThread, on purpose: see above.
		errc <- callSafely(fn)
	}()
	return <-errc
}

// InNetns runs fn on a fresh OS thread that has entered the network
// namespace at nsPath (a bind mount such as /run/netns/NAME, or
// /proc/PID/ns/net). Sockets fn opens belong to that namespace, and so does
// every process fn execs: a child forked from a thread inherits the thread's
// namespaces.
//
// When nsPath names the namespace the thread is already in (say
// /proc/self/ns/net), fn runs there without setns(2): entering a network
// namespace needs CAP_SYS_ADMIN even when it is one's own, and a process that
// holds only CAP_NET_ADMIN (an init container installing its pod's firewall)
// must still be able to act on the namespace it lives in.
func InNetns(nsPath string, fn func() error) error {
	if nsPath == "" {
		return errors.New("network namespace path is empty")
	}
	return Run(func() error {
		ns, err := netns.GetFromPath(nsPath)
		if err != nil {
			return fmt.Errorf("opening network namespace %s: %w", nsPath, err)
		}
		defer ns.Close()
		cur, err := netns.Get()
		if err != nil {
			return fmt.Errorf("opening the thread's own network namespace: %w", err)
		}
		same := cur.Equal(ns)
		cur.Close()
		if !same {
			if err := netns.Set(ns); err != nil {
				return fmt.Errorf("entering network namespace %s: %w", nsPath, err)
			}
		}
		return fn()
	})
}

func callSafely(fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			buf := make([]byte, 8<<10)
			buf = buf[:runtime.Stack(buf, false)]
			err = fmt.Errorf("panic on a namespace thread: %v\n%s", r, buf)
		}
	}()
	return fn()
}
