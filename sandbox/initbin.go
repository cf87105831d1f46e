package sandbox

import (
	"debug/elf"
	"fmt"
	"os"
	"slices"
	"syscall"
)

// CheckInit refuses an init binary (Config.Init) that could not run in
// every sandbox: one that is not a static executable (a dynamically linked
// init would need a loader and C library from the sandbox's root, which an
// image given by --rootfs may lack or have in another version), or one the
// sandbox's user (uid, gid, supplementary gids) may not execute: the init
// runs as that user.
func CheckInit(path string, uid, gid uint32, groups []uint32) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("the sandbox's init %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("the sandbox's init %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("the sandbox's init %s is not a regular file", path)
	}
	ef, err := elf.NewFile(f)
	if err != nil {
		return fmt.Errorf("the sandbox's init %s is not an executable for this machine: %w", path, err)
	}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("the sandbox's init is the launcher's own binary, %s, which is dynamically linked: "+
				"it would need the sandbox's C library; build the launcher with CGO_ENABLED=0 (make build does)", path)
		}
	}
	if !mayExecute(st, uid, gid, groups) {
		return fmt.Errorf("the sandbox's init %s (mode %v) cannot be executed by the sandbox's user %d:%d; "+
			"make it executable for everyone (chmod 755)", path, st.Mode().Perm(), uid, gid)
	}
	return nil
}

// mayExecute reports whether uid (with gid and groups) may execute the
// file st describes: root needs any x bit, others the owner's, the group's
// or everyone's, whichever class they fall in.
func mayExecute(st os.FileInfo, uid, gid uint32, groups []uint32) bool {
	perm := st.Mode().Perm()
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return perm&0o001 != 0
	}
	switch {
	case uid == 0:
		return perm&0o111 != 0
	case sys.Uid == uid:
		return perm&0o100 != 0
	case sys.Gid == gid || slices.Contains(groups, sys.Gid):
		return perm&0o010 != 0
	}
	return perm&0o001 != 0
}
