#!/usr/bin/env bash
# Measures egressd's proxy side by side with a direct connection and a
# minimal splice relay (see README.md). As root it runs inside a throwaway
# network namespace with iptables REDIRECT rules, so the transparent path is
# measured too; otherwise only direct / relay / CONNECT. Extra arguments go
# to the Go program (e.g. -rounds 3 -only egressd).
# STRACE=1 also counts the syscalls of one CONNECT bulk transfer.
# SMOKESCREEN=<version> (e.g. v0.1.0) also measures stripe/smokescreen, built
# from the Go module proxy into the temp dir (never into egressd's go.mod),
# each CONNECT proxy then in a process of its own (-procs: CPU per tunnel).
set -euo pipefail
cd "$(dirname "$0")"
bin=$(mktemp -d)/proxybench
trap 'rm -rf "$(dirname "$bin")"' EXIT
go build -o "$bin" .
if [ -n "${SMOKESCREEN:-}" ]; then
  (cd "$(dirname "$bin")" && GOBIN="$(dirname "$bin")" GOFLAGS=-mod=mod go install "github.com/stripe/smokescreen@$SMOKESCREEN")
  set -- -smokescreen "$(dirname "$bin")/smokescreen" "$@"
fi
if [ "$(id -u)" != 0 ]; then
  exec "$bin" "$@"
fi
ns="egt-pxbench-$$"
ip netns add "$ns"
trap 'ip netns del "$ns"; rm -rf "$(dirname "$bin")"' EXIT
x() { ip netns exec "$ns" "$@"; }
x ip link set lo up
x ip addr add 198.51.100.30/32 dev lo
x ip addr add 198.51.100.31/32 dev lo
x sysctl -qw net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range="1024 65535"
x iptables -t nat -A OUTPUT -m mark --mark 0x1e5 -j RETURN
x iptables -t nat -A OUTPUT -p tcp -d 198.51.100.30 -j REDIRECT --to-ports 15001
x iptables -t nat -A OUTPUT -p tcp -d 198.51.100.31 -j REDIRECT --to-ports 15002
x "$bin" -transparent "$@"
if [ "${STRACE:-}" = 1 ] && command -v strace >/dev/null; then
  echo
  echo "syscalls of one bulk transfer through each CONNECT path (strace -c -f; read/write are the client's and the sink's):"
  for p in relay-connect egressd-connect; do
    echo "== $p"
    x strace -f -c -e trace=splice,read,write,readv,writev,recvfrom,sendto "$bin" -only "$p" -rounds 1 -rate-rounds 0 2>&1 >/dev/null | sed -n '1,12p'
  done
fi
