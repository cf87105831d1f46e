#!/usr/bin/env bash
# Cold start of a sandbox (issue #4): `launcher run --profile standard --
# true`, wall time and phase breakdown, and `runc run` of `true` with the
# same spec beside it. Runs inside a throwaway network namespace; as root.
#
#   bench/launcher/run.sh            # 25 runs of each
#   N=50 bench/launcher/run.sh
#   BASELINE=main bench/launcher/run.sh   # and the launcher of git ref main, interleaved
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
[[ $EUID -eq 0 ]] || { echo "run as root" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
go build -o "$work/" ./cmd/launcher ./cmd/egressd
go build -o "$work/launcher-bench" ./bench/launcher
base=()
if [[ -n "${BASELINE:-}" ]]; then
	mkdir "$work/base" "$work/base-src"
	git archive "$BASELINE" | tar -x -C "$work/base-src"
	(cd "$work/base-src" && go build -o "$work/base/" ./cmd/launcher ./cmd/egressd)
	base=(-baseline-launcher "$work/base/launcher" -baseline-egressd "$work/base/egressd")
	echo "baseline: $BASELINE ($(git rev-parse --short "$BASELINE"))"
fi
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) CPUs, $(runc --version | head -1)"
"$work/launcher-bench" -launcher "$work/launcher" -egressd "$work/egressd" -n "${N:-25}" "${base[@]}"
