package specconv

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/egressd/egressd/policy"
)

// debianHost is the account databases of a Debian host with a login user,
// a service account at the old default uid 100 and subordinate ranges.
func debianHost(t *testing.T) string {
	t.Helper()
	return fakeRoot(t, map[string]string{
		"/etc/passwd": "root:x:0:0:root:/root:/bin/bash\n" +
			"daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n" +
			"messagebus:x:100:102::/nonexistent:/usr/sbin/nologin\n" +
			"postgres:x:101:104:PostgreSQL:/var/lib/postgresql:/bin/bash\n" +
			"alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash\n" +
			"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
		"/etc/group": "root:x:0:\nsudo:x:27:alice\nusers:x:100:alice\ndocker:x:999:alice,postgres\n" +
			"alice:x:1000:\nnogroup:x:65534:\n",
		"/etc/subuid": "alice:100000:65536\n",
		"/etc/subgid": "alice:100000:65536\n",
	}, nil)
}

func TestSandboxUserMayNotBeAHostAccount(t *testing.T) {
	host, err := readAccounts(debianHost(t))
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"/root", "/usr/sbin", "/nonexistent", "/var/lib/postgresql", "/home/alice"}, host.homes); d != "" {
		t.Errorf("homes (-want +got)\n%s", d)
	}
	for _, tc := range []struct {
		name  string
		user  User
		allow bool
		want  string
	}{
		{"the default", User{UID: policy.DefaultUID, GID: policy.DefaultGID}, false, ""},
		{"the old default", User{UID: 100, GID: 100}, false, `uid 100 is the host account "messagebus"`},
		{"a login account", User{UID: 1000, GID: 1000}, false, `uid 1000 is the host account "alice"`},
		{"a host group", User{UID: 5000, GID: 100}, false, `gid 100 is the host group "users"`},
		{"a supplementary host group", User{UID: 5000, GID: 5000, AdditionalGids: []uint32{999}}, false, `gid 999 is the host group "docker"`},
		{"a subordinate uid", User{UID: 100500, GID: 5000}, false, `uid 100500 is in the subordinate uid range of "alice" (/etc/subuid)`},
		{"a subordinate gid", User{UID: 5000, GID: 165535}, false, `gid 165535 is in the subordinate gid range of "alice"`},
		{"just past the range", User{UID: 165536, GID: 165536}, false, ""},
		{"nobody", User{UID: 65534, GID: 65534}, false, `uid 65534 is the host account "nobody"`},
		{"root is the floor's to judge", User{}, false, ""},
		{"allowed", User{UID: 1000, GID: 1000}, true, ""},
	} {
		err := checkHostIdentity(tc.user, host, tc.allow, "flag:--user")
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		case tc.want != "" && !strings.Contains(err.Error(), "process.allow_host_user"):
			t.Errorf("%s: %v does not say how to accept it", tc.name, err)
		}
	}
}

func TestIdentityFilesNameTheSandboxUserAndHideLoginAccounts(t *testing.T) {
	root := debianHost(t)
	u := User{UID: policy.DefaultUID, GID: policy.DefaultGID, Home: DefaultHome}
	pw, gr, err := identityFiles(DirTree(root), u, true)
	if err != nil {
		t.Fatal(err)
	}
	wantPW := "root:x:0:0:root:/root:/bin/bash\n" +
		"daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n" +
		"messagebus:x:100:102::/nonexistent:/usr/sbin/nologin\n" +
		"postgres:x:101:104:PostgreSQL:/var/lib/postgresql:/bin/bash\n" +
		"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n" +
		"sandbox:x:2000000000:2000000000:egressd sandbox user:/home/sandbox:/bin/sh\n"
	wantGR := "root:x:0:\nsudo:x:27:\nusers:x:100:\ndocker:x:999:postgres\nnogroup:x:65534:\nsandbox:x:2000000000:\n"
	if d := cmp.Diff(wantPW, string(pw)); d != "" {
		t.Errorf("passwd (-want +got)\n%s", d)
	}
	if d := cmp.Diff(wantGR, string(gr)); d != "" {
		t.Errorf("group (-want +got)\n%s", d)
	}

	// A host account the operator allowed keeps its own entry.
	alice := User{UID: 1000, GID: 1000, Home: "/home/alice", Name: "alice"}
	pw, gr, _ = identityFiles(DirTree(root), alice, true)
	if !strings.Contains(string(pw), "alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash\n") || strings.Contains(string(pw), "egressd sandbox user") {
		t.Errorf("passwd for alice:\n%s", pw)
	}
	if !strings.Contains(string(gr), "alice:x:1000:\n") || !strings.Contains(string(gr), "sudo:x:27:alice\n") {
		t.Errorf("group for alice:\n%s", gr)
	}

	// An image's files are its own: kept whole.
	pw, _, _ = identityFiles(DirTree(root), u, false)
	if !strings.Contains(string(pw), "alice:x:1000") {
		t.Errorf("an image's passwd lost its entries:\n%s", pw)
	}

	// A tree without account files still names root and the user.
	pw, gr, err = identityFiles(DirTree(t.TempDir()), User{Home: "/root"}, false)
	if err != nil || string(pw) != "root:x:0:0:egressd sandbox user:/root:/bin/sh\n" || string(gr) != "root:x:0:\n" {
		t.Errorf("empty tree: %q %q %v", pw, gr, err)
	}
}
