package main

import (
	"bufio"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// residency writes where process pid's resident pages are: RssAnon and
// RssFile from /proc/PID/status, then the binary's resident KiB per ELF
// section and, if bin has a symbol table, per package (the top n), each
// page shared among the symbols it holds by their bytes in it. A page is
// resident when /proc/PID/pagemap says it is present.
func residency(w io.Writer, pid int, bin string, n int) error {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(st), "\n") {
		if strings.HasPrefix(line, "RssAnon:") || strings.HasPrefix(line, "RssFile:") {
			fmt.Fprintln(w, strings.Join(strings.Fields(line), " "))
		}
	}
	f, err := elf.Open(bin)
	if err != nil {
		return err
	}
	defer f.Close()
	syms, _ := f.Symbols() // none in a binary built with -s: sections only
	sort.Slice(syms, func(i, j int) bool { return syms[i].Value < syms[j].Value })
	present, err := presentPages(pid, bin)
	if err != nil {
		return err
	}
	bySection := map[string]float64{}
	byPackage := map[string]float64{}
	for _, pa := range present {
		bySection[sectionOf(f, pa)] += 4
		if len(syms) == 0 {
			continue
		}
		pe := pa + 4096
		i := sort.Search(len(syms), func(i int) bool { return syms[i].Value+syms[i].Size > pa })
		for ; i < len(syms) && syms[i].Value < pe; i++ {
			s := syms[i]
			lo, hi := max(s.Value, pa), min(s.Value+s.Size, pe)
			if hi > lo && int(s.Section) < len(f.Sections) {
				byPackage[packageOf(s.Name)+" "+f.Sections[s.Section].Name] += float64(hi-lo) / 1024
			}
		}
	}
	total := 0.0
	for _, v := range bySection {
		total += v
	}
	fmt.Fprintf(w, "binary resident KiB %.0f\n", total)
	printTop(w, "section", bySection, len(bySection))
	if len(syms) > 0 {
		printTop(w, "package", byPackage, n)
	}
	return nil
}

// presentPages returns the addresses of the resident pages of pid's
// mappings of bin.
func presentPages(pid int, bin string) ([]uint64, error) {
	maps, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return nil, err
	}
	defer maps.Close()
	pm, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", pid))
	if err != nil {
		return nil, err
	}
	defer pm.Close()
	abs, err := filepath.Abs(bin)
	if err != nil {
		return nil, err
	}
	var out []uint64
	sc := bufio.NewScanner(maps)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 6 || fs[5] != abs {
			continue
		}
		lo, hi, ok := strings.Cut(fs[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("bad mapping %q", fs[0])
		}
		buf := make([]byte, 8*(end-start)/4096)
		if _, err := pm.ReadAt(buf, int64(start/4096*8)); err != nil {
			return nil, err
		}
		for p := range uint64(len(buf) / 8) {
			if binary.LittleEndian.Uint64(buf[8*p:])&(1<<63) != 0 { // present
				out = append(out, start+p*4096)
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no resident page of %s found (not root?)", abs)
	}
	return out, sc.Err()
}

func sectionOf(f *elf.File, a uint64) string {
	for _, s := range f.Sections {
		if s.Flags&elf.SHF_ALLOC != 0 && a+4096 > s.Addr && a < s.Addr+s.Size {
			return s.Name // the first section the page overlaps
		}
	}
	return "(other)"
}

// packageOf is the import path of a Go symbol's package: up to the first
// dot after the last slash.
func packageOf(name string) string {
	i := strings.LastIndex(name, "/")
	if j := strings.Index(name[i+1:], "."); j >= 0 {
		return name[:i+1+j]
	}
	return name
}

func printTop(w io.Writer, what string, m map[string]float64, n int) {
	type kv struct {
		k string
		v float64
	}
	var l []kv
	for k, v := range m {
		l = append(l, kv{k, v})
	}
	sort.Slice(l, func(i, j int) bool { return l[i].v > l[j].v })
	for i, e := range l {
		if i == n {
			break
		}
		fmt.Fprintf(w, "  %-8s %8.0f KiB  %s\n", what, e.v, e.k)
	}
}
