#!/usr/bin/env bash
# make release: static egressd and launcher for each platform, each in
# egressd-VERSION-OS-ARCH.tar.gz with the license, README, changelog and
# shell completions, and SHA256SUMS over the archives, all in $DIST.
# Archives are reproducible: sorted entries, owner 0, the commit's time as
# every file's mtime, gzip without a timestamp.
# Environment (set by the Makefile): GO VERSION LDFLAGS DIST BINDIR PLATFORMS.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
: "${GO:=go}" "${VERSION:?}" "${LDFLAGS:?}" "${DIST:=dist}" "${BINDIR:=bin}" "${PLATFORMS:=linux/amd64 linux/arm64}"
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
rm -rf "$DIST"
mkdir -p "$DIST"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
for platform in $PLATFORMS; do
	os=${platform%/*} arch=${platform#*/}
	name="egressd-$VERSION-$os-$arch"
	dir="$stage/$name"
	mkdir -p "$dir/completions"
	CGO_ENABLED=0 GOOS=$os GOARCH=$arch "$GO" build -trimpath -ldflags "$LDFLAGS" -o "$dir/" ./cmd/egressd ./cmd/launcher
	cp LICENSE README.md CHANGELOG.md "$dir/"
	# The completion scripts do not depend on the platform: the build
	# machine's binaries (make build) write them.
	for prog in egressd launcher; do
		for sh in bash zsh fish; do
			"$BINDIR/$prog" completion "$sh" >"$dir/completions/$prog.$sh"
		done
	done
	tar -C "$stage" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" -cf - "$name" | gzip -9n >"$DIST/$name.tar.gz"
	echo "release: $DIST/$name.tar.gz"
done
(cd "$DIST" && sha256sum -- *.tar.gz >SHA256SUMS)
echo "release: $DIST/SHA256SUMS"
