package metrics

import (
	"bufio"
	"bytes"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// runtimeCollector writes the go_* and process_* families the Prometheus
// client's default collectors write, under the same names, types and
// meanings: the Go runtime's (goroutines, threads, GC pauses, memory
// statistics) and the process's (CPU, descriptors, memory, start time,
// network bytes of its namespace), read from the runtime and /proc/self
// at scrape time. A value that cannot be read is left out.
type runtimeCollector struct {
	gauges []memGauge
	family map[string]*desc
}

type memGauge struct {
	d *desc
	v func(*runtime.MemStats) float64
}

// NewRuntimeCollector returns the collector of the go_* and process_*
// families.
func NewRuntimeCollector() Collector {
	c := &runtimeCollector{family: map[string]*desc{}}
	for _, f := range runtimeFamilies {
		c.family[f.name] = newDesc(f.name, f.help, f.typ, f.labels)
	}
	for _, m := range memStats {
		c.gauges = append(c.gauges, memGauge{newDesc(m.name, m.help, m.typ, nil), m.v})
	}
	return c
}

type familySpec struct {
	name, help string
	typ        Type
	labels     []string
}

var runtimeFamilies = []familySpec{
	{"go_gc_duration_seconds", "A summary of the wall-time pause (stop-the-world) duration in garbage collection cycles.", TypeSummary, nil},
	{"go_gc_gogc_percent", "Heap size target percentage configured by the user, otherwise 100. This value is set by the GOGC environment variable (egressd never changes it at run time).", TypeGauge, nil},
	{"go_gc_gomemlimit_bytes", "Go runtime memory limit configured by the user, otherwise math.MaxInt64. This value is set by the GOMEMLIMIT environment variable, and the runtime/debug.SetMemoryLimit function.", TypeGauge, nil},
	{"go_goroutines", "Number of goroutines that currently exist.", TypeGauge, nil},
	{"go_info", "Information about the Go environment.", TypeGauge, []string{"version"}},
	{"go_sched_gomaxprocs_threads", "The current runtime.GOMAXPROCS setting, or the number of operating system threads that can execute user-level Go code simultaneously.", TypeGauge, nil},
	{"go_threads", "Number of OS threads created.", TypeGauge, nil},
	{"process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", TypeCounter, nil},
	{"process_max_fds", "Maximum number of open file descriptors.", TypeGauge, nil},
	{"process_network_receive_bytes_total", "Number of bytes received by the process over the network.", TypeCounter, nil},
	{"process_network_transmit_bytes_total", "Number of bytes sent by the process over the network.", TypeCounter, nil},
	{"process_open_fds", "Number of open file descriptors.", TypeGauge, nil},
	{"process_resident_memory_bytes", "Resident memory size in bytes.", TypeGauge, nil},
	{"process_start_time_seconds", "Start time of the process since unix epoch in seconds.", TypeGauge, nil},
	{"process_virtual_memory_bytes", "Virtual memory size in bytes.", TypeGauge, nil},
	{"process_virtual_memory_max_bytes", "Maximum amount of virtual memory available in bytes.", TypeGauge, nil},
}

type memStatSpec struct {
	name, help string
	typ        Type
	v          func(*runtime.MemStats) float64
}

var memStats = []memStatSpec{
	{"go_memstats_alloc_bytes", "Number of bytes allocated in heap and currently in use.", TypeGauge, func(m *runtime.MemStats) float64 { return float64(m.Alloc) }},
	{"go_memstats_alloc_bytes_total", "Total number of bytes allocated in heap until now, even if released already.", TypeCounter, func(m *runtime.MemStats) float64 { return float64(m.TotalAlloc) }},
	{"go_memstats_buck_hash_sys_bytes", "Number of bytes used by the profiling bucket hash table.", TypeGauge, func(m *runtime.MemStats) float64 { return float64(m.BuckHashSys) }},
	{"go_memstats_frees_total", "Total number of heap objects frees.", TypeCounter, func(m *runtime.MemStats) float64 { return float64(m.Frees) }},
	{"go_memstats_gc_sys_bytes", "Number of bytes used for garbage collection system metadata.", TypeGauge, func(m *runtime.MemStats) float64 { return float64(m.GCSys) }},
	{"go_memstats_heap_alloc_bytes", "Number of heap bytes allocated and currently in use, same as go_memstats_alloc_bytes.", TypeGauge, func(m *runtime.MemStats) float64 { return float64(m.HeapAlloc) }},
	{"go_memstats_heap_idle_bytes", "Number of heap bytes waiting to be used.", TypeGauge, func(m *runtime.MemStats) float64 { return float64(m.HeapIdle) }},
	{"go_memstats_heap_inuse_bytes", "Number of heap bytes that are in use.", TypeGauge, func(m *runtime.MemStats) float64 { return float64(m.HeapInuse) }},
	{"go_memstats_heap_objects", "Number of currently allocated objects.", TypeGauge, func(m *runtime.MemStats) float64 { return float64(m.HeapObjects) }},
	{"go_memstats_heap_released_bytes", "Number of heap bytes released to OS.", TypeGauge, func(m *runtime.MemStats) float64 { return float64(m.HeapReleased) }},
	{"go_memstats_heap_sys_bytes", "Number of heap bytes obtained from system.", TypeGauge, func(m *runtime.MemStats) float64 { return float64(m.HeapSys) }},
	{"go_memstats_last_gc_time_seconds", "Number of seconds since 1970 of last garbage collection.", TypeGauge, func(m *runtime.MemStats) float64 { return float64(m.LastGC) / 1e9 }},
	{"go_memstats_mallocs_total", "Total number of heap objects allocated, both live and gc-ed. Semantically a counter version for go_memstats_heap_objects gauge.", TypeCounter, func(m *runtime.MemStats) float64 { return float64(m.Mallocs) }},
	{"go_memstats_mcache_inuse_bytes", "Number of bytes in use by mcache structures.", TypeGauge, func(m *runtime.MemStats) float64 { return float64(m.MCacheInuse) }},
	{"go_memstats_mcache_sys_bytes", "Number of bytes used for mcache structures obtained from system.", TypeGauge, func(m *runtime.MemStats) float64 { return float64(m.MCacheSys) }},
	{"go_memstats_mspan_inuse_bytes", "Number of bytes in use by mspan structures.", TypeGauge, func(m *runtime.MemStats) float64 { return float64(m.MSpanInuse) }},
	{"go_memstats_mspan_sys_bytes", "Number of bytes used for mspan structures obtained from system.", TypeGauge, func(m *runtime.MemStats) float64 { return float64(m.MSpanSys) }},
	{"go_memstats_next_gc_bytes", "Number of heap bytes when next garbage collection will take place.", TypeGauge, func(m *runtime.MemStats) float64 { return float64(m.NextGC) }},
	{"go_memstats_other_sys_bytes", "Number of bytes used for other system allocations.", TypeGauge, func(m *runtime.MemStats) float64 { return float64(m.OtherSys) }},
	{"go_memstats_stack_inuse_bytes", "Number of bytes obtained from system for stack allocator in non-CGO environments.", TypeGauge, func(m *runtime.MemStats) float64 { return float64(m.StackInuse) }},
	{"go_memstats_stack_sys_bytes", "Number of bytes obtained from system for stack allocator.", TypeGauge, func(m *runtime.MemStats) float64 { return float64(m.StackSys) }},
	{"go_memstats_sys_bytes", "Number of bytes obtained from system.", TypeGauge, func(m *runtime.MemStats) float64 { return float64(m.Sys) }},
}

func (c *runtimeCollector) descs() []*desc {
	var ds []*desc
	for _, f := range runtimeFamilies {
		ds = append(ds, c.family[f.name])
	}
	for _, g := range c.gauges {
		ds = append(ds, g.d)
	}
	return ds
}

func (c *runtimeCollector) one(w *writer, name string, v float64, labelValues ...string) {
	d := c.family[name]
	w.family(d)
	w.sample(d, "", labelValues, "", "", v)
}

func (c *runtimeCollector) collect(w *writer) {
	// The Go runtime.
	gc := debug.GCStats{PauseQuantiles: make([]time.Duration, 5)}
	debug.ReadGCStats(&gc)
	d := c.family["go_gc_duration_seconds"]
	w.family(d)
	for i, q := range []string{"0", "0.25", "0.5", "0.75", "1"} {
		var v float64
		if gc.NumGC > 0 {
			v = gc.PauseQuantiles[i].Seconds()
		}
		w.sample(d, "", nil, "quantile", q, v)
	}
	w.sample(d, "_sum", nil, "", "", gc.PauseTotal.Seconds())
	w.sample(d, "_count", nil, "", "", float64(gc.NumGC))

	c.one(w, "go_gc_gogc_percent", float64(gogc()))
	c.one(w, "go_gc_gomemlimit_bytes", float64(debug.SetMemoryLimit(-1))) // a negative limit only reads it
	c.one(w, "go_sched_gomaxprocs_threads", float64(runtime.GOMAXPROCS(0)))
	c.one(w, "go_goroutines", float64(runtime.NumGoroutine()))
	c.one(w, "go_info", 1, runtime.Version())
	threads, _ := runtime.ThreadCreateProfile(nil)
	c.one(w, "go_threads", float64(threads))
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	for _, g := range c.gauges {
		w.family(g.d)
		w.sample(g.d, "", nil, "", "", g.v(&ms))
	}

	// The process.
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		c.one(w, "process_cpu_seconds_total", tvSeconds(ru.Utime)+tvSeconds(ru.Stime))
	}
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil {
		c.one(w, "process_max_fds", float64(lim.Cur))
	}
	if syscall.Getrlimit(syscall.RLIMIT_AS, &lim) == nil {
		c.one(w, "process_virtual_memory_max_bytes", float64(lim.Cur))
	}
	if n, err := openFDs(); err == nil {
		c.one(w, "process_open_fds", float64(n))
	}
	if vsize, rss, err := statm(); err == nil {
		c.one(w, "process_virtual_memory_bytes", vsize)
		c.one(w, "process_resident_memory_bytes", rss)
	}
	if t, err := startTime(); err == nil {
		c.one(w, "process_start_time_seconds", t)
	}
	if in, out, err := netOctets(); err == nil {
		c.one(w, "process_network_receive_bytes_total", in)
		c.one(w, "process_network_transmit_bytes_total", out)
	}
}

// gogc is the GC percentage as the runtime read it from GOGC at start
// ("off": -1, unset or not a number: 100). Nothing in egressd or the
// launcher calls debug.SetGCPercent, so that is the setting in force; the
// runtime/metrics package that would read it costs every process a
// package initialisation (its table of descriptions) that this saves.
func gogc() int {
	v := os.Getenv("GOGC")
	if v == "off" {
		return -1
	}
	if n, err := strconv.Atoi(v); err == nil {
		return n
	}
	return 100
}

func tvSeconds(tv syscall.Timeval) float64 { return float64(tv.Sec) + float64(tv.Usec)/1e6 }

// openFDs counts the entries of /proc/self/fd, less the one reading it.
func openFDs() (int, error) {
	f, err := os.Open("/proc/self/fd")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return 0, err
	}
	return len(names) - 1, nil
}

// statm returns the virtual and resident size, in bytes.
func statm() (vsize, rss float64, err error) {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0, 0, err
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0, 0, syscall.EINVAL
	}
	size, err1 := strconv.ParseUint(f[0], 10, 64)
	res, err2 := strconv.ParseUint(f[1], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, syscall.EINVAL
	}
	page := float64(os.Getpagesize())
	return float64(size) * page, float64(res) * page, nil
}

// userHZ is the unit of /proc's clock ticks (USER_HZ), 100 on every Linux
// architecture Go supports.
const userHZ = 100

// startTime is when the process started, Unix seconds: its start in ticks
// after boot (/proc/self/stat, field 22) plus the boot time (/proc/stat).
func startTime() (float64, error) {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')') // the command name may hold spaces and parentheses
	if i < 0 {
		return 0, syscall.EINVAL
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state): field 22 is f[19].
	if len(f) < 20 {
		return 0, syscall.EINVAL
	}
	ticks, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0, err
	}
	st, err := os.Open("/proc/stat")
	if err != nil {
		return 0, err
	}
	defer st.Close()
	sc := bufio.NewScanner(st)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "btime "); ok {
			boot, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return 0, err
			}
			return float64(boot) + float64(ticks)/userHZ, nil
		}
	}
	return 0, syscall.EINVAL
}

// netOctets returns the IP bytes received and sent in the process's
// network namespace (/proc/self/net/netstat, IpExt InOctets and OutOctets).
func netOctets() (in, out float64, err error) {
	b, err := os.ReadFile("/proc/self/net/netstat")
	if err != nil {
		return 0, 0, err
	}
	var header []string
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "IpExt:" {
			continue
		}
		if header == nil {
			header = f
			continue
		}
		var got int
		for i := 1; i < len(f) && i < len(header); i++ {
			switch header[i] {
			case "InOctets", "OutOctets":
				v, err := strconv.ParseFloat(f[i], 64)
				if err != nil {
					return 0, 0, err
				}
				if header[i] == "InOctets" {
					in = v
				} else {
					out = v
				}
				got++
			}
		}
		if got == 2 {
			return in, out, nil
		}
		break
	}
	return 0, 0, syscall.EINVAL
}
