package policy

// FormatBytes renders a byte count as in a policy file: "4GiB", "512MiB".
func FormatBytes(n int64) string { return formatSize(n, false) }

// TOMLString renders s as a TOML basic string, as policy files are written.
func TOMLString(s string) string { return tomlString(s) }
