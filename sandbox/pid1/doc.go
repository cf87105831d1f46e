// Package pid1 is the init every sandbox's command runs under: the
// container's process 1, which starts the command as its only child and
//
//   - reaps every process that ends up its child (zombies of orphaned
//     grandchildren included), so none piles up in the sandbox;
//   - passes the signals a person or a supervisor sends (SIGHUP, SIGINT,
//     SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH, SIGALRM, SIGCONT,
//     SIGTSTP) on to the command's process group, which a command running
//     as process 1 itself would not get: the kernel drops every signal
//     process 1 of a namespace has no handler for, so `sleep 30` ignored
//     Ctrl-C;
//   - exits with the command's status, 128+N when a signal N killed it,
//     and when it exits the kernel ends every other process of the
//     sandbox's pid namespace.
//
// With a terminal (the runtime made the init a session leader with the
// pseudo-terminal as its controlling terminal), the command's process
// group is made the terminal's foreground group, so the keys a person types
// (^C, ^Z, ^\) signal the command, and the window size given to Args is set
// before the command starts.
//
// The init is the launcher's own binary, bind-mounted read-only at Path and
// recognised by that argv[0] (see IsInit). It runs as the sandbox's user,
// with the sandbox's capabilities (none by default), seccomp filter and
// root, so it must need nothing of any file system: the launcher is built
// static (CGO_ENABLED=0). It trusts nothing it sees: everything the
// launcher reports about a sandbox's end (its exit status, an out-of-memory
// kill, a pids-limit hit) it reads on the host, never from the init, which
// a process of the same uid could tamper with. The init marks itself
// non-dumpable so that, without CAP_SYS_PTRACE, no sandbox process can
// trace it or open its /proc files.
//
// In waiting mode (WaitArgs) the init starts no command until it has read
// one Request from RequestFD, a pipe: a pooled sandbox's container is made
// and started before its tenant is known, and the tenant's command,
// environment (secrets included) and working directory come by the pipe,
// never by a file. The init reads exactly one request, closes the pipe
// and runs it; a malformed or oversized request, or none, makes it exit
// 125 with a message. Either way the command inherits its stdio and no
// other descriptor.
//
// Process 1 is not required: outside a pid namespace the init makes itself
// a child subreaper, so orphans still come to it.
package pid1
