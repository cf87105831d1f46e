// Package buildinfo says which build of egressd is running: the version and
// commit the Makefile stamps in with -ldflags, or, for a plain `go build` or
// `go install`, what the Go toolchain recorded (the module version and the
// VCS revision). Both binaries print it for --version.
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Set at link time:
//
//	go build -ldflags "-X github.com/egressd/egressd/internal/buildinfo.version=v1.2.3
//	                   -X github.com/egressd/egressd/internal/buildinfo.commit=0123abc"
//
// Empty means "not stamped": Get falls back to the toolchain's build info.
var (
	version string
	commit  string
)

// Info is one build's identity.
type Info struct {
	// Version is a release tag (v1.2.3), a `git describe` string, or "dev"
	// when nothing says more.
	Version string
	// Commit is the VCS revision the binary was built from, with "-dirty"
	// when the work tree had uncommitted changes; "unknown" when nothing
	// recorded it.
	Commit string
	// GoVersion is the toolchain that built the binary.
	GoVersion string
}

// Get returns the running binary's build info.
func Get() Info {
	bi, _ := debug.ReadBuildInfo()
	return get(version, commit, bi)
}

// get fills what the linker did not stamp from bi (nil: not available).
func get(stampedVersion, stampedCommit string, bi *debug.BuildInfo) Info {
	in := Info{Version: stampedVersion, Commit: stampedCommit, GoVersion: runtime.Version()}
	if bi != nil {
		in.GoVersion = bi.GoVersion
		if in.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			in.Version = bi.Main.Version
		}
		if in.Commit == "" {
			var rev string
			var dirty bool
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					rev = s.Value
				case "vcs.modified":
					dirty = s.Value == "true"
				}
			}
			if rev != "" {
				if len(rev) > 12 {
					rev = rev[:12]
				}
				if dirty {
					rev += "-dirty"
				}
				in.Commit = rev
			}
		}
	}
	if in.Version == "" {
		in.Version = "dev"
	}
	if in.Commit == "" {
		in.Commit = "unknown"
	}
	return in
}

// String is the --version line: "PROGRAM VERSION (commit COMMIT, GOVERSION)".
func (in Info) String(program string) string {
	return fmt.Sprintf("%s %s (commit %s, %s)", program, in.Version, in.Commit, in.GoVersion)
}
