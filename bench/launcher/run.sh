#!/usr/bin/env bash
# Cold start of a sandbox (issue #4): `launcher run --profile standard --
# true`, wall time and phase breakdown, and `runc run` of `true` with the
# same spec beside it. Runs inside a throwaway network namespace; as root.
#
#   bench/launcher/run.sh            # 25 runs of each
#   N=50 bench/launcher/run.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
[[ $EUID -eq 0 ]] || { echo "run as root" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
CGO_ENABLED=0 go build -o "$work/" ./cmd/launcher ./cmd/egressd # static: the launcher is every sandbox's init
go build -o "$work/launcher-bench" ./bench/launcher
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) CPUs, $(runc --version | head -1)"
"$work/launcher-bench" -launcher "$work/launcher" -egressd "$work/egressd" -n "${N:-25}"
