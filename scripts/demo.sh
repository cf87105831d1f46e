#!/usr/bin/env bash
# make demo: one filtered sandbox against the fake internet, no real network
# needed. It starts the e2e suite's fake internet (e2e/cmd/fakeworld: a DNS
# server at 203.0.113.53, HTTPS servers that answer with what they saw, no
# route anywhere else), runs the launcher inside it, and inside the sandbox
# fetches one allowed host and one that is not allowed. Everything is
# removed at the end. Run as root.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if [[ $EUID -ne 0 ]]; then
	echo "demo: run as root (it creates network namespaces, firewall rules and a container)" >&2
	exit 1
fi
export PATH=/usr/local/go/bin:$HOME/go/bin:$PATH
CGO_ENABLED=0 go build -o bin/ ./cmd/... ./e2e/cmd/fakeworld # static: the launcher is every sandbox's init

# Sandboxes of other runs (a test suite, say) are not the demo's to count.
before=$(ip netns list | grep -c '^egs-' || true)
ws=$(mktemp -d /tmp/egressd-demo.XXXXXX)
trap 'rm -rf "$ws"' EXIT
chmod 0777 "$ws" # the sandbox user (no host account) may write its workspace: the launcher checks
cd "$ws" # mounted at /sandbox (--mount-cwd): the world's CA goes there

cat <<'TXT'
== launcher run --profile standard --allow allowed.demo -- sh -c 'curl allowed.demo; curl blocked.demo'
   (inside a fake internet: allowed.demo is 203.0.113.10, blocked.demo 198.51.100.10)

TXT
set +e
"$root/bin/fakeworld" -ca "$ws/ca.pem" \
	-record allowed.demo=203.0.113.10 -record blocked.demo=198.51.100.10 -- \
	"$root/bin/launcher" run --profile standard --allow allowed.demo \
	--upstream-dns 203.0.113.53 --mount-cwd --timings -- \
	sh -c '
		curl="curl -sS --max-time 5 --cacert /sandbox/ca.pem"
		echo "sandbox\$ curl https://allowed.demo/hello"
		$curl https://allowed.demo/hello; echo
		echo "sandbox\$ curl https://blocked.demo/hello"
		$curl https://blocked.demo/hello; echo "(curl exit $?)"
		echo "sandbox\$ curl --noproxy \"*\" https://blocked.demo/hello   # around the proxy"
		$curl --noproxy "*" https://blocked.demo/hello; echo "(curl exit $?)"
		exit 0'
code=$?
set -e
echo
left=$(( $(ip netns list | grep -c '^egs-' || true) - before ))
if [[ $code -ne 0 ]]; then
	echo "demo: the launcher exited $code" >&2
elif [[ $left -gt 0 ]]; then
	echo "demo: $left sandbox namespaces left behind!" >&2
	code=1
else
	echo "demo: done; the allowed host answered, the other was refused with its reason, and nothing is left behind."
fi
exit "$code"
