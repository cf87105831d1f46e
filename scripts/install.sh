#!/usr/bin/env bash
# make install / make uninstall: puts egressd, launcher, their shell
# completions and the license under PREFIX (with DESTDIR, for packagers), or
# removes exactly those files again.
#   scripts/install.sh install|uninstall BINDIR PREFIX
set -euo pipefail
op=$1 bindir=$2 prefix=$3
files=(
	"bin/egressd" "bin/launcher"
	"share/bash-completion/completions/egressd" "share/bash-completion/completions/launcher"
	"share/zsh/site-functions/_egressd" "share/zsh/site-functions/_launcher"
	"share/fish/vendor_completions.d/egressd.fish" "share/fish/vendor_completions.d/launcher.fish"
	"share/doc/egressd/LICENSE" "share/doc/egressd/README.md" "share/doc/egressd/CHANGELOG.md"
)
case $op in
install)
	root=$(cd "$(dirname "$0")/.." && pwd)
	for prog in egressd launcher; do
		install -D -m 0755 "$bindir/$prog" "$prefix/bin/$prog"
		tmp=$(mktemp)
		trap 'rm -f "$tmp"' EXIT
		"$bindir/$prog" completion bash >"$tmp" && install -D -m 0644 "$tmp" "$prefix/share/bash-completion/completions/$prog"
		"$bindir/$prog" completion zsh >"$tmp" && install -D -m 0644 "$tmp" "$prefix/share/zsh/site-functions/_$prog"
		"$bindir/$prog" completion fish >"$tmp" && install -D -m 0644 "$tmp" "$prefix/share/fish/vendor_completions.d/$prog.fish"
		rm -f "$tmp"
	done
	for f in LICENSE README.md CHANGELOG.md; do
		install -D -m 0644 "$root/$f" "$prefix/share/doc/egressd/$f"
	done
	echo "installed under $prefix: ${files[*]}"
	;;
uninstall)
	for f in "${files[@]}"; do
		rm -f "$prefix/$f"
	done
	rmdir "$prefix/share/doc/egressd" 2>/dev/null || true
	echo "removed from $prefix: ${files[*]}"
	;;
*)
	echo "usage: $0 install|uninstall BINDIR PREFIX" >&2
	exit 2
	;;
esac
