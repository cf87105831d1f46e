package specconv

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/internal/nsthread"
)

// checkWritable reports whether the sandbox user u may create entries in
// the host directory dir (write and search permission), as the kernel
// decides it for u's processes, which hold no capability: ACLs, read-only
// mounts and immutable directories included.
//
// As root the launcher asks the kernel itself, on a thread of its own that
// takes u's file-system ids and groups and drops its effective
// capabilities (all per thread at the kernel level), and is thrown away
// afterwards (nsthread.Run). Only dir itself is judged: the sandbox
// reaches it through its bind mount, never through the host directories
// above it. As another user the launcher can only read the mode bits,
// which miss ACLs.
func checkWritable(dir string, u User) error {
	if os.Geteuid() != 0 {
		return checkWritableByMode(dir, u)
	}
	return nsthread.Run(func() error {
		// The sandbox reaches dir through its bind mount, not through the
		// host's parents: open it first, as root, and ask about it alone.
		fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		groups := append([]uint32{u.GID}, u.AdditionalGids...)
		if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(groups)), uintptr(unsafe.Pointer(&groups[0])), 0); e != 0 {
			return fmt.Errorf("setgroups: %w", e)
		}
		unix.RawSyscall(unix.SYS_SETFSGID, uintptr(u.GID), 0, 0)
		unix.RawSyscall(unix.SYS_SETFSUID, uintptr(u.UID), 0, 0)
		// setfsuid and setfsgid return the previous id and report no
		// error; asking with an invalid id reads the current one.
		if cur, _, _ := unix.RawSyscall(unix.SYS_SETFSUID, ^uintptr(0), 0, 0); uint32(cur) != u.UID {
			return fmt.Errorf("could not take file-system uid %d", u.UID)
		}
		if cur, _, _ := unix.RawSyscall(unix.SYS_SETFSGID, ^uintptr(0), 0, 0); uint32(cur) != u.GID {
			return fmt.Errorf("could not take file-system gid %d", u.GID)
		}
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			return fmt.Errorf("capget: %w", err)
		}
		data[0].Effective, data[1].Effective = 0, 0
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			return fmt.Errorf("capset: %w", err)
		}
		err = unix.Faccessat2(fd, "", unix.W_OK|unix.X_OK, unix.AT_EACCESS|unix.AT_EMPTY_PATH)
		if errors.Is(err, unix.ENOSYS) {
			return checkWritableByMode(dir, u)
		}
		return err
	})
}

// checkWritableByMode judges write and search permission on dir from its
// owner, group and mode bits only.
func checkWritableByMode(dir string, u User) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return errors.New("no owner information")
	}
	mode := uint32(fi.Mode().Perm())
	var bits uint32
	switch {
	case st.Uid == u.UID:
		bits = mode >> 6
	case st.Gid == u.GID || containsID(u.AdditionalGids, st.Gid):
		bits = mode >> 3
	default:
		bits = mode
	}
	if bits&3 != 3 {
		return unix.EACCES
	}
	return nil
}

func containsID(ids []uint32, id uint32) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}
