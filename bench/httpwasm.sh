#!/usr/bin/env bash
# http-wasm throughput on loopback, unpinned, wrk -t1 -cCONNS keep-alive for
# DURATION per measurement, ROUNDS interleaved rounds (order rotated per
# round), all servers running at once:
#
#   wcluster-router   wcluster serve EXAMPLE.wasm, 2 workers (rr)
#   ref-router        the same guest on http-wasm-host-go's net/http middleware,
#                     one process (bench/httpwasmref, its own module)
#   nethttp           bench/nethttp: plain Go net/http hello, no wasm
#   wcluster-base     with BASE=COMMIT: wcluster as built from that commit,
#                     the same way (a before/after view within each round)
#
# EXAMPLE is the router example of the http-wasm module ("hello world" for
# any path not under /host). Prints raw rows, per-round ratios of
# wcluster-router to the others, and their medians.
#
#   bench/httpwasm.sh                     # ROUNDS=3 DURATION=5s
#   ROUNDS=1 DURATION=2s bench/httpwasm.sh
#   BASE=17c3e6e ROUNDS=5 bench/httpwasm.sh   # also against an older build
#
# GUEST=FILE.wasm serves another guest instead of the router example (Go
# reactors get their _initialize called on the reference host too), with
# GUEST_CONFIG (its get_config), TARGET (the request path, default /) and
# EXPECT (what a ready server's answer contains, default "hello world"):
#   GUEST=out/guests/go-waf.wasm GUEST_CONFIG=terminal EXPECT=passed \
#     TARGET='/search?q=wasm+cluster&page=2' bench/httpwasm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-64}
WORKERS=${WORKERS:-2}
PORT_BASE=${PORT_BASE:-19300}

command -v wrk >/dev/null || { echo "bench: wrk is missing: apt-get install -y wrk" >&2; exit 3; }
out=$(mktemp -d)
pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
	# Reaped here, quietly: bash would otherwise report each as "Killed".
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$out"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

go build -o "$out/wcluster" ./cmd/wcluster
go build -o "$out/nethttp" ./bench/nethttp
(cd bench/httpwasmref && go build -o "$out/httpwasmref" .)
if [ -n "${BASE:-}" ]; then
	mkdir -p "$out/base"
	git archive "$BASE" | tar -x -C "$out/base"
	(cd "$out/base" && go build -o "$out/wcluster-base" ./cmd/wcluster)
fi
example=${GUEST:-$(go list -m -f '{{.Dir}}' github.com/http-wasm/http-wasm-host-go)/examples/router.wasm}
GUEST_CONFIG=${GUEST_CONFIG:-}
TARGET=${TARGET:-/}
EXPECT=${EXPECT:-hello world}

start() { # NAME PORT CMD...
	local name=$1
	shift 2
	setsid "$@" </dev/null >>"$out/$name.log" 2>&1 &
	pids+=("$!")
}
declare -A port
port[wcluster-router]=$((PORT_BASE + 1))
port[ref-router]=$((PORT_BASE + 2))
port[nethttp]=$((PORT_BASE + 3))
port[wcluster-base]=$((PORT_BASE + 4))
start wcluster-router "${port[wcluster-router]}" "$out/wcluster" serve --listen "127.0.0.1:${port[wcluster-router]}" \
	--workers "$WORKERS" --cache-dir "$out/cache" ${GUEST_CONFIG:+--guest-config "$GUEST_CONFIG"} "$example"
start ref-router "${port[ref-router]}" "$out/httpwasmref" -listen "127.0.0.1:${port[ref-router]}" -guest "$example" \
	-initialize -guest-config "$GUEST_CONFIG"
start nethttp "${port[nethttp]}" "$out/nethttp" -listen "127.0.0.1:${port[nethttp]}"
servers=(wcluster-router ref-router nethttp)
if [ -n "${BASE:-}" ]; then
	start wcluster-base "${port[wcluster-base]}" "$out/wcluster-base" serve --listen "127.0.0.1:${port[wcluster-base]}" \
		--workers "$WORKERS" --cache-dir "$out/cache-base" ${GUEST_CONFIG:+--guest-config "$GUEST_CONFIG"} "$example"
	servers+=(wcluster-base)
fi
for name in "${servers[@]}"; do
	for _ in $(seq 1 600); do
		curl -s -m 2 -o /dev/null "http://127.0.0.1:${port[$name]}$TARGET" && break
		sleep 0.05 # poll interval, not a synchronisation
	done
	[ "$name" = nethttp ] || curl -s -m 2 "http://127.0.0.1:${port[$name]}$TARGET" | grep -q "$EXPECT" || { echo "bench: $name not serving" >&2; cat "$out/$name.log" >&2; exit 1; }
done

declare -A rps
echo "round server req/s p99 load1"
for r in $(seq 1 "$ROUNDS"); do
	for i in "${!servers[@]}"; do
		name=${servers[$(((i + r) % ${#servers[@]}))]}
		res=$(wrk -t1 -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:${port[$name]}$TARGET")
		v=$(awk '/Requests\/sec/ {print $2}' <<<"$res")
		p99=$(awk '$1=="99%" {print $2}' <<<"$res")
		rps[$r.$name]=$v
		echo "$r $name $v $p99 $(cut -d' ' -f1 /proc/loadavg)"
	done
done
echo "round wcluster/ref wcluster/nethttp${BASE:+ wcluster/base base/ref}"
ratios_ref=() ratios_net=() ratios_base=() ratios_bref=()
ratio() { awk -v x="$1" -v y="$2" 'BEGIN {printf "%.2f", x/y}'; }
for r in $(seq 1 "$ROUNDS"); do
	a=$(ratio "${rps[$r.wcluster-router]}" "${rps[$r.ref-router]}")
	b=$(ratio "${rps[$r.wcluster-router]}" "${rps[$r.nethttp]}")
	ratios_ref+=("$a") ratios_net+=("$b")
	if [ -n "${BASE:-}" ]; then
		c=$(ratio "${rps[$r.wcluster-router]}" "${rps[$r.wcluster-base]}")
		d=$(ratio "${rps[$r.wcluster-base]}" "${rps[$r.ref-router]}")
		ratios_base+=("$c") ratios_bref+=("$d")
		echo "$r $a $b $c $d"
	else
		echo "$r $a $b"
	fi
done
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
echo "median wcluster/ref $(median "${ratios_ref[@]}")x, wcluster/nethttp $(median "${ratios_net[@]}")x"
if [ -n "${BASE:-}" ]; then
	echo "median wcluster/base $(median "${ratios_base[@]}")x, base/ref $(median "${ratios_bref[@]}")x"
fi
