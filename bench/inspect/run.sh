#!/usr/bin/env bash
# Measures HTTPS inspection beside the plain (spliced) tunnel, on loopback,
# in one run (see README.md). No root needed. Extra arguments go to the Go
# program (e.g. -rounds 5 -bulk-bytes 536870912).
set -euo pipefail
cd "$(dirname "$0")"
bin=$(mktemp -d)/inspectbench
trap 'rm -rf "$(dirname "$bin")"' EXIT
go build -o "$bin" .
"$bin" "$@"
