package sandbox

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeELF writes a minimal x86-64 executable's headers with the given
// program header types (PT_INTERP makes it dynamically linked).
func writeELF(t *testing.T, path string, mode os.FileMode, progs ...elf.ProgType) {
	t.Helper()
	var b bytes.Buffer
	hdr := elf.Header64{
		Ident:     [16]byte{0x7f, 'E', 'L', 'F', byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT)},
		Type:      uint16(elf.ET_EXEC),
		Machine:   uint16(elf.EM_X86_64),
		Version:   uint32(elf.EV_CURRENT),
		Phoff:     64,
		Ehsize:    64,
		Phentsize: 56,
		Phnum:     uint16(len(progs)),
	}
	_ = binary.Write(&b, binary.LittleEndian, hdr)
	for _, p := range progs {
		_ = binary.Write(&b, binary.LittleEndian, elf.Prog64{Type: uint32(p), Flags: uint32(elf.PF_R)})
	}
	if err := os.WriteFile(path, b.Bytes(), mode); err != nil {
		t.Fatal(err)
	}
}

// TestCheckInitRefusesWhatCannotRunInEverySandbox: the init must be a
// static executable the sandbox's user may execute.
func TestCheckInitRefusesWhatCannotRunInEverySandbox(t *testing.T) {
	dir := t.TempDir()
	static, dynamic, private, text := filepath.Join(dir, "static"), filepath.Join(dir, "dynamic"),
		filepath.Join(dir, "private"), filepath.Join(dir, "text")
	writeELF(t, static, 0o755, elf.PT_LOAD)
	writeELF(t, dynamic, 0o755, elf.PT_INTERP, elf.PT_LOAD)
	writeELF(t, private, 0o700, elf.PT_LOAD)
	if err := os.WriteFile(text, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path string
		uid  uint32
		want string
	}{
		{static, 100, ""},
		{private, 0, ""},
		{dynamic, 100, "dynamically linked"},
		{private, 100, "cannot be executed by the sandbox's user 100:100"},
		{text, 100, "not an executable"},
		{dir, 100, "not a regular file"},
		{filepath.Join(dir, "missing"), 100, "no such file"},
	} {
		err := CheckInit(tc.path, tc.uid, tc.uid, nil)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("CheckInit(%s, uid %d) = %v, want %q", filepath.Base(tc.path), tc.uid, err, tc.want)
		}
	}
}

func TestMayExecute(t *testing.T) {
	f := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	owner := uint32(os.Getuid())
	gid := uint32(os.Getgid())
	for _, tc := range []struct {
		mode     os.FileMode
		uid, gid uint32
		groups   []uint32
		want     bool
	}{
		{0o755, 4242, 4242, nil, true},
		{0o750, 4242, 4242, nil, false},
		{0o750, 4242, 4242, []uint32{gid}, true},
		{0o705, 4242, gid, nil, false}, // the group class decides, not others
		{0o700, owner, 4242, nil, true},
		{0o644, 0, 0, nil, false},
		{0o744, 0, 0, nil, true},
	} {
		if err := os.Chmod(f, tc.mode); err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if got := mayExecute(st, tc.uid, tc.gid, tc.groups); got != tc.want {
			t.Errorf("mode %v uid %d gid %d groups %v: %v, want %v", tc.mode, tc.uid, tc.gid, tc.groups, got, tc.want)
		}
	}
}
