package specconv

import (
	"strings"
	"testing"
)

func TestFindExecutableNamesAMissingCommand(t *testing.T) {
	p := resolveWith(t, "standard", "")
	u := User{UID: 100, GID: 100, Home: DefaultHome}
	for cmd, wantErr := range map[string]string{
		"sh":                  "",
		"/bin/sh":             "",
		"no-such-command-xyz": `command "no-such-command-xyz" not found in the sandbox's PATH`,
		"/no/such/command":    `command "/no/such/command" not found`,
		"/etc/passwd":         "not executable",
		"/sandbox/run.sh":     "", // the workspace: not in the root file system, exec decides
		"./relative":          "",
	} {
		err := findExecutable(p, DirTree("/"), u, cmd, DefaultPath)
		if (err == nil) != (wantErr == "") || err != nil && !strings.Contains(err.Error(), wantErr) {
			t.Errorf("findExecutable(%q) = %v, want %q", cmd, err, wantErr)
		}
	}
}
