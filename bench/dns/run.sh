#!/usr/bin/env bash
# DNS resolver throughput (issue #3): dnsperf against a bare miekg/dns server
# and against dnsfilter in front of it, same process, loopback only.
#
#   bench/dns/run.sh                 # 3 rounds of 10 s per scenario
#   ROUNDS=5 SECONDS_EACH=10 AUDIT=discard bench/dns/run.sh
#
# Scenarios (each round runs all four, interleaved, so they share the noise):
#   bare      the bare server (every name answered from memory)
#   cached    dnsfilter, 100 allowed names, all cached after the first pass
#   denied    dnsfilter, 100 names with no allow rule (answered NXDOMAIN locally)
#   uncached  dnsfilter, unique allowed names (every query forwarded to bare)
# Prints the median queries/s per scenario and the server process's CPU per
# query, each as a share of bare. Goals (issue 13): cached allowed >= 90% of
# bare's q/s with the audit log on, at <= 1.2x its CPU per query.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
SECONDS_EACH=${SECONDS_EACH:-10}
AUDIT=${AUDIT:-}          # "" (off), "discard", or a file path
CLIENTS=${CLIENTS:-4}
OUTSTANDING=${OUTSTANDING:-100}
PROFILE=${PROFILE:-}      # a path: write a CPU profile of the server process there
SCENARIOS=${SCENARIOS:-bare cached denied uncached}

command -v dnsperf >/dev/null || { echo "dnsperf not installed (apt-get install dnsperf)" >&2; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
pid=""
cleanup() {
	if [[ -n "$pid" ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
	rm -rf "$work"
}
trap cleanup EXIT

(cd "$root" && go build -o "$work/dns-bench" ./bench/dns)

for i in $(seq 1 100); do echo "n$i.cached.bench A"; done >"$work/cached.txt"
for i in $(seq 1 100); do echo "n$i.denied.bench A"; done >"$work/denied.txt"
# More unique names than one run can send, and far more than the cache holds.
seq 1 400000 | sed 's/.*/u&.uncached.bench A/' >"$work/uncached.txt"

total=$(( ROUNDS * 4 * (SECONDS_EACH + 2) + 60 ))
"$work/dns-bench" -audit "$AUDIT" -duration "${total}s" ${PROFILE:+-cpuprofile "$PROFILE"} >"$work/addrs" 2>"$work/server.log" &
pid=$!
for _ in $(seq 1 100); do [[ -s "$work/addrs" ]] && break; sleep 0.1; done
read -r bare_kv filter_kv <"$work/addrs" || { echo "bench server did not start:" >&2; cat "$work/server.log" >&2; exit 1; }
bare=${bare_kv#bare=}; filter=${filter_kv#filter=}
echo "bare server $bare, dnsfilter $filter; $ROUNDS rounds x ${SECONDS_EACH}s, -c $CLIENTS -q $OUTSTANDING, audit='${AUDIT:-off}'"

tck=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }

qps() { # addr file -> "queries/s µs-of-server-CPU-per-query"
	local addr=$1 file=$2 out t0 t1
	t0=$(cpu_ticks)
	out=$(dnsperf -s "${addr%:*}" -p "${addr##*:}" -d "$file" -l "$SECONDS_EACH" -c "$CLIENTS" -q "$OUTSTANDING" 2>&1)
	t1=$(cpu_ticks)
	awk -v dt=$((t1 - t0)) -v tck="$tck" '
		/Queries completed:/ {n = $3}
		/Queries per second:/ {q = int($4)}
		END {printf "%d %.1f\n", q, (n > 0 ? dt * 1e6 / tck / n : 0)}' <<<"$out"
}

declare -A results cpus
for r in $(seq 1 "$ROUNDS"); do
	for s in $SCENARIOS; do
		case $s in
		bare) v=$(qps "$bare" "$work/cached.txt") ;;
		cached) v=$(qps "$filter" "$work/cached.txt") ;;
		denied) v=$(qps "$filter" "$work/denied.txt") ;;
		uncached) v=$(qps "$filter" "$work/uncached.txt") ;;
		esac
		results[$s]="${results[$s]:-} ${v% *}"
		cpus[$s]="${cpus[$s]:-} ${v#* }"
		echo "round $r $s: ${v% *} q/s, ${v#* } µs CPU/query"
	done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
b=$(echo "${results[bare]:-}" | median)
bc=$(echo "${cpus[bare]:-}" | median)
echo
echo "The server process's CPU per query (user+system) counts everything it did while dnsperf ran,"
echo "audit writing included; in the uncached runs it includes the bare upstream's share."
printf '%-10s %10s %8s %12s %8s  %s\n' scenario "median q/s" "of bare" "µs CPU/query" "of bare" "q/s per round"
for s in $SCENARIOS; do
	m=$(echo "${results[$s]}" | median)
	c=$(echo "${cpus[$s]}" | median)
	printf '%-10s %10.0f %7s %12.1f %7s  %s\n' "$s" "$m" "${b:+$(awk -v m="$m" -v b="$b" 'BEGIN{printf "%d%%", m*100/b}')}" "$c" \
		"${bc:+$(awk -v c="$c" -v b="$bc" 'BEGIN{if (b > 0) printf "%.2fx", c/b}')}" "${results[$s]}"
done
