package specconv

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/egressd/egressd/policy"
)

// convertOnHost plans a launch of sh on the fake host root host (the host
// view, or the image dir when image is set) and returns where each
// generated file is mounted, by its name.
func convertOnHost(t *testing.T, host, image string, volume string) (map[string]string, error) {
	t.Helper()
	p := resolveWith(t, "standard", "")
	if volume != "" {
		p.Filesystem.Volumes = []policy.Volume{{Host: volume, Path: "/data"}}
	}
	in := Input{Profile: p, Args: []string{"sh"}, HostRoot: host, Image: image,
		StateRoot: "/run/egressd-test", Dir: "/run/egressd-test/egs-etc", ID: "egs-etc", NetNSPath: "/run/netns/egs-etc"}
	c, err := Convert(in)
	if err != nil {
		return nil, err
	}
	got := map[string]string{}
	for _, m := range c.Spec.Mounts {
		if strings.HasPrefix(m.Source, c.EtcDir+"/") {
			got[filepath.Base(m.Source)] = m.Destination
		}
	}
	return got, nil
}

// TestResolvConfSymlinkStillPointsAtEgressd plans the host view of hosts
// whose /etc/resolv.conf and /etc/hosts are symbolic links (relative,
// absolute, dangling, chained through /etc as on NixOS, onto a file of
// /etc): the launcher's files are mounted where the links lead, inside the
// sandbox's root, so every reader of the link reads them; where they lead
// somewhere the file cannot be made, or that a sandbox may write, the
// launch is refused, naming the link.
func TestResolvConfSymlinkStillPointsAtEgressd(t *testing.T) {
	for _, tc := range []struct {
		name    string
		files   map[string]string
		links   map[string]string
		volume  bool
		want    map[string]string
		wantErr string
	}{{
		name:  "regular files",
		files: map[string]string{"/etc/resolv.conf": "nameserver 10.0.0.1\n", "/etc/hosts": "127.0.0.1 localhost\n"},
		want:  map[string]string{"resolv.conf": "/etc/resolv.conf", "hosts": "/etc/hosts", "passwd": "/etc/passwd", "group": "/etc/group"},
	}, {
		name:  "systemd-resolved relative link",
		links: map[string]string{"/etc/resolv.conf": "../run/systemd/resolve/stub-resolv.conf", "/etc/hosts": "../run/hosts"},
		want:  map[string]string{"resolv.conf": "/run/systemd/resolve/stub-resolv.conf", "hosts": "/run/hosts", "passwd": "/etc/passwd", "group": "/etc/group"},
	}, {
		name:  "absolute link",
		links: map[string]string{"/etc/resolv.conf": "/run/resolvconf/resolv.conf"},
		want:  map[string]string{"resolv.conf": "/run/resolvconf/resolv.conf", "hosts": "/etc/hosts", "passwd": "/etc/passwd", "group": "/etc/group"},
	}, {
		name:  "dangling link outside the view, through a link in etc (NixOS)",
		links: map[string]string{"/etc/static": "/nix/store/0-etc/etc", "/etc/hosts": "/etc/static/hosts", "/etc/resolv.conf": "/etc/resolvconf/run/resolv.conf", "/etc/resolvconf/run": "/run/resolvconf"},
		want:  map[string]string{"resolv.conf": "/run/resolvconf/resolv.conf", "hosts": "/nix/store/0-etc/etc/hosts", "passwd": "/etc/passwd", "group": "/etc/group"},
	}, {
		name:  "link climbing above the root stays in it",
		links: map[string]string{"/etc/resolv.conf": "../../../../run/r.conf"},
		want:  map[string]string{"resolv.conf": "/run/r.conf", "hosts": "/etc/hosts", "passwd": "/etc/passwd", "group": "/etc/group"},
	}, {
		name:  "link onto a file of the read-only etc",
		files: map[string]string{"/etc/resolv.d/real.conf": "nameserver 10.0.0.1\n"},
		links: map[string]string{"/etc/resolv.conf": "resolv.d/real.conf"},
		want:  map[string]string{"resolv.conf": "/etc/resolv.d/real.conf", "hosts": "/etc/hosts", "passwd": "/etc/passwd", "group": "/etc/group"},
	}, {
		name:    "dangling link into the read-only etc",
		links:   map[string]string{"/etc/resolv.conf": "resolv.d/missing.conf"},
		wantErr: "the sandbox's /etc/resolv.conf is a symbolic link to /etc/resolv.d/missing.conf, which does not exist in /etc, a host directory the sandbox sees read-only",
	}, {
		name:    "link into a writable volume",
		volume:  true,
		links:   map[string]string{"/etc/resolv.conf": "/data/resolv.conf"},
		wantErr: "the sandbox's /etc/resolv.conf is a symbolic link to /data/resolv.conf, which lies in /data, a directory a sandbox may write",
	}, {
		name:    "link onto a directory",
		files:   map[string]string{"/etc/resolv.d/x": ""},
		links:   map[string]string{"/etc/resolv.conf": "resolv.d"},
		wantErr: "/etc/resolv.conf (a symbolic link, or beyond one) leads to /etc/resolv.d, which in the sandbox's root is a directory",
	}, {
		name:    "link into proc",
		links:   map[string]string{"/etc/resolv.conf": "/proc/self/fd/0"},
		wantErr: "mounting over /proc is not allowed",
	}, {
		name:    "loop",
		links:   map[string]string{"/etc/resolv.conf": "resolv.conf.1", "/etc/resolv.conf.1": "resolv.conf"},
		wantErr: "too many levels of symbolic links",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			files := map[string]string{"/usr/bin/sh": "x", "/etc/passwd": "root:x:0:0:root:/root:/bin/sh\n", "/etc/group": "root:x:0:\n"}
			if tc.links["/etc/hosts"] == "" {
				files["/etc/hosts"] = "127.0.0.1 localhost\n"
			}
			for p, c := range tc.files {
				files[p] = c
			}
			host := fakeRoot(t, files, tc.links)
			volume := ""
			if tc.volume {
				volume = t.TempDir()
				if err := os.Chmod(volume, 0o777); err != nil {
					t.Fatal(err)
				}
			}
			got, err := convertOnHost(t, host, "", volume)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("generated files mounted at (-want +got):\n%s", diff)
			}
		})
	}
}
