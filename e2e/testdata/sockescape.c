// sockescape tries, from inside a sandbox, every way a process can get a
// socket of a family or type the seccomp filter refuses, and one socket
// option: the attack helper of e2e/socketescape_test.go (THREATS F4, F5).
//
// It prints one line per attempt, "NAME=RESULT", where RESULT is "ok" (the
// kernel handed out a socket; it is closed at once and never connected) or
// the errno's name ("EPERM", "ENOSYS", ...), or "unavailable:WHY" when the
// path itself does not exist here (no 32-bit entry point, no io_uring).
//
// Arguments choose groups: socket, i386, x32, iouring, mark (default: all).
//
//	socket   socket(2) and socketpair(2), the x86_64 system calls
//	i386     the same through the 32-bit entry point (int 0x80 from this
//	         64-bit process enters the i386 table): socket (359),
//	         socketpair (360), socketcall (102) SYS_SOCKET/SYS_SOCKETPAIR,
//	         io_uring_setup (425), setsockopt (366) SO_MARK
//	x32      socket through the x32 numbers (__X32_SYSCALL_BIT | 41)
//	iouring  io_uring_setup, then IORING_OP_SOCKET (Linux 5.19+) submitted
//	         through the ring, so no socket(2) call is made at all
//	mark     setsockopt(SOL_SOCKET, SO_MARK): CAP_NET_RAW suffices since
//	         Linux 5.17, and egressd's firewall exempts its own mark
//
// x86_64 only. Built by the test with gcc; it needs only libc and the
// kernel's uapi headers.
#define _GNU_SOURCE
#include <errno.h>
#include <linux/io_uring.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif
#ifndef AF_XDP
#define AF_XDP 44
#endif

// i386 system call numbers (arch/x86/entry/syscalls/syscall_32.tbl).
enum {
	I386_SOCKETCALL = 102,
	I386_SOCKET = 359,
	I386_SOCKETPAIR = 360,
	I386_SETSOCKOPT = 366,
	I386_IO_URING_SETUP = 425,
};
// socketcall's call numbers (linux/net.h).
enum { SYS_SOCKET_ = 1, SYS_SOCKETPAIR_ = 8 };
#define X32_BIT 0x40000000L
#define PROBE_MARK 0x4547 // egressd's default mark (sandbox.DefaultMark)

// family is one socket(2) attempt.
struct family {
	const char *name;
	long domain, type, protocol;
};

// The attempts every path makes: the first four are what ordinary
// programs need and must keep working; the others must never yield.
static const struct family families[] = {
	{"unix", AF_UNIX, SOCK_STREAM, 0},
	{"inet", AF_INET, SOCK_STREAM, 0},
	{"inet6", AF_INET6, SOCK_DGRAM, 0},
	{"netlink", AF_NETLINK, SOCK_RAW, 0}, // NETLINK_ROUTE, as ip(8) and getifaddrs(3)
	{"vsock", AF_VSOCK, SOCK_STREAM, 0},
	{"packet", AF_PACKET, SOCK_RAW, 0},
	{"packet-dgram", AF_PACKET, SOCK_DGRAM, 0},
	{"raw-icmp", AF_INET, SOCK_RAW, 1},   // IPPROTO_ICMP
	{"raw6-icmp", AF_INET6, SOCK_RAW, 58}, // IPPROTO_ICMPV6
	{"raw-flags", AF_INET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, 255},
	{"xdp", AF_XDP, SOCK_RAW, 0},
};

static void report(const char *path, const char *what, long r) {
	if (r >= 0) {
		printf("%s.%s=ok\n", path, what);
		return;
	}
	const char *name = strerrorname_np((int)-r);
	if (name)
		printf("%s.%s=%s\n", path, what, name);
	else
		printf("%s.%s=errno%ld\n", path, what, -r);
}

// sys64 is a raw x86_64 system call returning -errno, so high argument
// bits reach the kernel (and the filter) as given.
static long sys64(long nr, long a, long b, long c, long d, long e) {
	long r = syscall(nr, a, b, c, d, e);
	return r < 0 ? -errno : r;
}

// sys32 enters the i386 system call table from this 64-bit process
// (arguments in ebx, ecx, edx, esi, edi).
static long sys32(long nr, long a, long b, long c, long d, long e) {
	long ret;
	__asm__ volatile("int $0x80"
			 : "=a"(ret)
			 : "a"(nr), "b"(a), "c"(b), "d"(c), "S"(d), "D"(e)
			 : "memory", "r8", "r9", "r10", "r11", "cc");
	// The kernel returns -errno in eax; sign-extend the 32-bit result.
	return (long)(int)ret;
}

// low32 is memory below 4 GiB, where i386 system calls can point.
static uint32_t *low32;

static void close_if(long fd) {
	if (fd >= 0)
		close((int)fd);
}

typedef long (*syscall_fn)(long, long, long, long, long, long);

// try_families makes every attempt of the families table through one
// socket system call.
static void try_families(const char *path, syscall_fn sys, long nr) {
	for (size_t i = 0; i < sizeof families / sizeof families[0]; i++) {
		const struct family *f = &families[i];
		long fd = sys(nr, f->domain, f->type, f->protocol, 0, 0);
		report(path, f->name, fd);
		close_if(fd);
	}
}

static void socket_group(void) {
	try_families("socket", sys64, SYS_socket);
	// The kernel reads only the low 32 bits of the domain.
	long fd = sys64(SYS_socket, (1L << 32) | AF_VSOCK, SOCK_STREAM, 0, 0, 0);
	report("socket", "vsock-high-bits", fd);
	close_if(fd);
	fd = sys64(SYS_socket, (1L << 32) | AF_PACKET, SOCK_RAW, 0, 0, 0);
	report("socket", "packet-high-bits", fd);
	close_if(fd);

	int sv[2] = {-1, -1};
	static const struct family pairs[] = {
		{"unix", AF_UNIX, SOCK_STREAM, 0},
		{"vsock", AF_VSOCK, SOCK_STREAM, 0},
		{"packet", AF_PACKET, SOCK_RAW, 0},
	};
	for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
		sv[0] = sv[1] = -1;
		long r = sys64(SYS_socketpair, pairs[i].domain, pairs[i].type, pairs[i].protocol, (long)sv, 0);
		report("socketpair", pairs[i].name, r);
		if (r >= 0) {
			close(sv[0]);
			close(sv[1]);
		}
	}
}

// in_child runs fn in a child process, so a kernel without the 32-bit
// entry point (int 0x80 then raises SIGSEGV) reports instead of crashing.
static void in_child(const char *what, void (*fn)(void)) {
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0) {
		printf("%s=unavailable:fork-%s\n", what, strerrorname_np(errno));
		return;
	}
	if (pid == 0) {
		fn();
		fflush(stdout);
		_exit(0);
	}
	int st;
	if (waitpid(pid, &st, 0) < 0) {
		printf("%s=unavailable:wait-%s\n", what, strerrorname_np(errno));
		return;
	}
	if (WIFSIGNALED(st))
		printf("%s=unavailable:signal-%d\n", what, WTERMSIG(st));
}

static void i386_probe(void) {
	sys32(20, 0, 0, 0, 0, 0); // getpid
}

static void i386_group_body(void) {
	try_families("i386-socket", sys32, I386_SOCKET);
	for (size_t i = 0; i < sizeof families / sizeof families[0]; i++) {
		const struct family *f = &families[i];
		low32[0] = (uint32_t)f->domain;
		low32[1] = (uint32_t)f->type;
		low32[2] = (uint32_t)f->protocol;
		long fd = sys32(I386_SOCKETCALL, SYS_SOCKET_, (long)(uintptr_t)low32, 0, 0, 0);
		report("i386-socketcall", f->name, fd);
		close_if(fd);
	}
	// socketpair's vector lives in low memory too.
	int32_t *sv = (int32_t *)(low32 + 16);
	sv[0] = sv[1] = -1;
	long r = sys32(I386_SOCKETPAIR, AF_VSOCK, SOCK_STREAM, 0, (long)(uintptr_t)sv, 0);
	report("i386-socketpair", "vsock", r);
	if (r >= 0) {
		close(sv[0]);
		close(sv[1]);
	}
	sv[0] = sv[1] = -1;
	low32[0] = AF_VSOCK;
	low32[1] = SOCK_STREAM;
	low32[2] = 0;
	low32[3] = (uint32_t)(uintptr_t)sv;
	r = sys32(I386_SOCKETCALL, SYS_SOCKETPAIR_, (long)(uintptr_t)low32, 0, 0, 0);
	report("i386-socketcall", "socketpair-vsock", r);
	if (r >= 0) {
		close(sv[0]);
		close(sv[1]);
	}

	// A ring made through the 32-bit entry point works from 64-bit code.
	struct io_uring_params *p = (struct io_uring_params *)(low32 + 64);
	memset(p, 0, sizeof *p);
	long ring = sys32(I386_IO_URING_SETUP, 4, (long)(uintptr_t)p, 0, 0, 0);
	report("i386", "io_uring_setup", ring);
	close_if(ring);

	long fd = sys64(SYS_socket, AF_INET, SOCK_STREAM, 0, 0, 0);
	if (fd >= 0) {
		low32[0] = PROBE_MARK;
		r = sys32(I386_SETSOCKOPT, fd, SOL_SOCKET, SO_MARK, (long)(uintptr_t)low32, 4);
		report("i386-setsockopt", "so_mark", r);
		close((int)fd);
	}
}

static void i386_group(void) {
	low32 = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
	if (low32 == MAP_FAILED) {
		printf("i386=unavailable:mmap-%s\n", strerrorname_np(errno));
		return;
	}
	// First see whether the entry point exists at all.
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		i386_probe();
		_exit(0);
	}
	int st = 0;
	if (pid < 0 || waitpid(pid, &st, 0) < 0 || WIFSIGNALED(st)) {
		printf("i386=unavailable:no-32-bit-entry-point\n");
		return;
	}
	printf("i386=available\n");
	in_child("i386", i386_group_body);
}

static void x32_group(void) {
	try_families("x32-socket", sys64, X32_BIT | SYS_socket);
}

// ring is a minimal io_uring: one submission, one completion.
struct ring {
	int fd;
	unsigned *sq_tail, *sq_mask, *sq_array;
	unsigned *cq_head, *cq_tail, *cq_mask;
	struct io_uring_sqe *sqes;
	struct io_uring_cqe *cqes;
};

static long ring_setup(struct ring *r) {
	struct io_uring_params p;
	memset(&p, 0, sizeof p);
	long fd = sys64(__NR_io_uring_setup, 4, (long)&p, 0, 0, 0);
	if (fd < 0)
		return fd;
	r->fd = (int)fd;
	size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
	size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
	if ((p.features & IORING_FEAT_SINGLE_MMAP) && cq_len > sq_len)
		sq_len = cq_len;
	char *sq = mmap(NULL, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQ_RING);
	if (sq == MAP_FAILED)
		return -errno;
	char *cq = sq;
	if (!(p.features & IORING_FEAT_SINGLE_MMAP)) {
		cq = mmap(NULL, cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_CQ_RING);
		if (cq == MAP_FAILED)
			return -errno;
	}
	r->sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
	if (r->sqes == MAP_FAILED)
		return -errno;
	r->sq_tail = (unsigned *)(sq + p.sq_off.tail);
	r->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
	r->sq_array = (unsigned *)(sq + p.sq_off.array);
	r->cq_head = (unsigned *)(cq + p.cq_off.head);
	r->cq_tail = (unsigned *)(cq + p.cq_off.tail);
	r->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
	r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
	return 0;
}

// ring_socket submits IORING_OP_SOCKET and returns the completion's
// result: a new descriptor, or -errno.
static long ring_socket(struct ring *r, const struct family *f) {
	unsigned tail = *r->sq_tail;
	unsigned idx = tail & *r->sq_mask;
	struct io_uring_sqe *sqe = &r->sqes[idx];
	memset(sqe, 0, sizeof *sqe);
	sqe->opcode = IORING_OP_SOCKET;
	sqe->fd = (int)f->domain;
	sqe->off = (uint64_t)f->type;
	sqe->len = (uint32_t)f->protocol;
	r->sq_array[idx] = idx;
	__atomic_store_n(r->sq_tail, tail + 1, __ATOMIC_RELEASE);
	long n = sys64(__NR_io_uring_enter, r->fd, 1, 1, IORING_ENTER_GETEVENTS, 0);
	if (n < 0)
		return n;
	unsigned head = *r->cq_head;
	if (head == __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE))
		return -EAGAIN;
	long res = r->cqes[head & *r->cq_mask].res;
	__atomic_store_n(r->cq_head, head + 1, __ATOMIC_RELEASE);
	return res;
}

static void iouring_group(void) {
	struct ring r;
	memset(&r, 0, sizeof r);
	long err = ring_setup(&r);
	report("iouring", "setup", err);
	if (err < 0)
		return;
	for (size_t i = 0; i < sizeof families / sizeof families[0]; i++) {
		long fd = ring_socket(&r, &families[i]);
		report("iouring-socket", families[i].name, fd);
		close_if(fd);
	}
	close(r.fd);
}

static void mark_group(void) {
	long fd = sys64(SYS_socket, AF_INET, SOCK_STREAM, 0, 0, 0);
	if (fd < 0) {
		report("setsockopt", "so_mark-socket", fd);
		return;
	}
	int mark = PROBE_MARK;
	long r = sys64(SYS_setsockopt, fd, SOL_SOCKET, SO_MARK, (long)&mark, sizeof mark);
	report("setsockopt", "so_mark", r);
	close((int)fd);
}

int main(int argc, char **argv) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	static const struct {
		const char *name;
		void (*fn)(void);
	} groups[] = {
		{"socket", socket_group}, {"i386", i386_group}, {"x32", x32_group},
		{"iouring", iouring_group}, {"mark", mark_group},
	};
	size_t n = sizeof groups / sizeof groups[0];
	for (size_t g = 0; g < n; g++) {
		int want = argc < 2;
		for (int i = 1; i < argc; i++)
			want |= strcmp(argv[i], groups[g].name) == 0 || strcmp(argv[i], "all") == 0;
		if (want)
			groups[g].fn();
	}
	for (int i = 1; i < argc; i++) {
		int known = strcmp(argv[i], "all") == 0;
		for (size_t g = 0; g < n; g++)
			known |= strcmp(argv[i], groups[g].name) == 0;
		if (!known) {
			fprintf(stderr, "sockescape: unknown group %s\n", argv[i]);
			return 2;
		}
	}
	return 0;
}
