#!/usr/bin/env bash
# Installs what egressd's build, demo and tests need on a Debian machine, and
# only what is missing. Run as root. Safe to run again.
set -euo pipefail

need_go="1.26"
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
	export PATH="/usr/local/go/bin:$PATH"
fi
if ! command -v go >/dev/null 2>&1; then
	echo "deps: Go $need_go or newer is required (https://go.dev/doc/install); not found on PATH" >&2
	exit 1
fi

# command → Debian package providing it
declare -A pkgs=(
	[iptables]=iptables [ip6tables]=iptables [iptables-restore]=iptables [iptables-save]=iptables [ip6tables-save]=iptables
	[ip]=iproute2 [runc]=runc [curl]=curl [dig]=dnsutils [conntrack]=conntrack
	[socat]=socat [nc]=netcat-openbsd [dnsperf]=dnsperf [openssl]=openssl
	[python3]=python3 [strace]=strace [ping]=iputils-ping [git]=git [make]=make [gcc]=gcc
	[zsh]=zsh [fish]=fish [setpriv]=util-linux [nsenter]=util-linux
)
missing=()
for cmd in "${!pkgs[@]}"; do
	command -v "$cmd" >/dev/null 2>&1 || missing+=("${pkgs[$cmd]}")
done
# gcc builds the e2e attack helpers (e2e/testdata/*.c), which need libc's and
# the kernel's headers; gcc only recommends them, and recommends are not
# installed below.
[ -e /usr/include/stdio.h ] || missing+=(libc6-dev)
[ -e /usr/include/linux/io_uring.h ] || missing+=(linux-libc-dev)
# The system Python's pip (the host view's, not a pyenv shim on PATH): the
# launcher e2e suite installs a wheel with `pip install --user` in a sandbox.
[ -d /usr/lib/python3/dist-packages/pip ] || missing+=(python3-pip)
if [ "${#missing[@]}" -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "deps: missing packages (${missing[*]}); run as root to install them" >&2
		exit 1
	fi
	mapfile -t uniq < <(printf '%s\n' "${missing[@]}" | sort -u)
	echo "deps: installing ${uniq[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${uniq[@]}" >/dev/null
fi

# The sandbox firewall uses the iptables-legacy or nft backend, whichever the
# kernel supports; both need these modules, loaded on demand by iptables.
exit 0
