package policy

// FormatBytes renders a byte count as in a policy file: "4GiB", "512MiB".
func FormatBytes(n int64) string { return formatSize(n, false) }
