#!/usr/bin/env bash
# Cold start of a sandbox (issue #4): `launcher run --profile standard --
# true`, wall time and phase breakdown, and `runc run` of `true` with the
# same spec beside it; and the time from SIGINT to the launcher's exit for
# `launcher run -- sleep 30` (issue #8). Runs inside a throwaway network
# namespace; as root.
#
#   bench/launcher/run.sh                      # 25 runs of each, 10 interrupts
#   N=50 INTERRUPTS=20 bench/launcher/run.sh
#   BASELINE_REV=main bench/launcher/run.sh    # before/after: that revision's launcher interleaved
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
[[ $EUID -eq 0 ]] || { echo "run as root" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"; git worktree prune' EXIT
# Static, as `make build`: the launcher is also every sandbox's init.
export CGO_ENABLED=0
go build -o "$work/" ./cmd/launcher ./cmd/egressd
go build -o "$work/launcher-bench" ./bench/launcher
base=()
if [[ -n "${BASELINE_REV:-}" ]]; then
  git worktree add --detach -q "$work/base" "$BASELINE_REV"
  (cd "$work/base" && go build -o "$work/baseline/launcher" ./cmd/launcher)
  git worktree remove --force "$work/base"
  base=(-baseline "$work/baseline/launcher")
fi
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) CPUs, $(runc --version | head -1)"
"$work/launcher-bench" -launcher "$work/launcher" "${base[@]}" -egressd "$work/egressd" -n "${N:-25}" -interrupts "${INTERRUPTS:-10}"
