#!/usr/bin/env bash
# WASI commands: connections per second for a plain WASI command that
# answers one HTTP request and exits (a fresh instance per connection), in
# C and in Go, beside the embedded ABI handler on new connections; wrk
# -t1 -cCONNS with "Connection: close" (a new connection per request) for
# DURATION per measurement, ROUNDS interleaved rounds (order rotated), all
# servers running at once, unpinned, 2 workers each.
#
#   bench/commands.sh                 # ROUNDS=3 DURATION=5s
#   ROUNDS=5 DURATION=8s bench/commands.sh
#
# GUESTS is the folder of built guests (make guests), default out/guests;
# WCLUSTER_BIN a prebuilt binary (default: built from this tree).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-32}
WORKERS=${WORKERS:-2}
PORT_BASE=${PORT_BASE:-19400}
GUESTS=${GUESTS:-out/guests}

command -v wrk >/dev/null || { echo "bench: wrk is missing: apt-get install -y wrk" >&2; exit 3; }
for g in c-httpcmd go-httpcmd; do
	[ -f "$GUESTS/$g.wasm" ] || { echo "bench: $GUESTS/$g.wasm is missing: make guests" >&2; exit 3; }
done
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

if [ -n "${WCLUSTER_BIN:-}" ]; then
	cp "$WCLUSTER_BIN" "$out/wcluster"
else
	go build -o "$out/wcluster" ./cmd/wcluster
fi
declare -A port guest
servers=(c-command go-command abi-hello)
port[c-command]=$((PORT_BASE + 1)) guest[c-command]=$GUESTS/c-httpcmd.wasm
port[go-command]=$((PORT_BASE + 2)) guest[go-command]=$GUESTS/go-httpcmd.wasm
port[abi-hello]=$((PORT_BASE + 3)) guest[abi-hello]= # the embedded default
for name in "${servers[@]}"; do
	setsid "$out/wcluster" serve --listen "127.0.0.1:${port[$name]}" --workers "$WORKERS" \
		--cache-dir "$out/cache" ${guest[$name]} </dev/null >>"$out/$name.log" 2>&1 &
	pids+=("$!")
done
for name in "${servers[@]}"; do
	for _ in $(seq 1 600); do
		curl -s -m 2 "http://127.0.0.1:${port[$name]}/" | grep -q "hello world" && continue 2
		sleep 0.05 # poll interval, not a synchronisation
	done
	echo "bench: $name not serving" >&2
	cat "$out/$name.log" >&2
	exit 1
done

declare -A rps
echo "round server conn/s p99 load1"
for r in $(seq 1 "$ROUNDS"); do
	for i in "${!servers[@]}"; do
		name=${servers[$(((i + r) % ${#servers[@]}))]}
		res=$(wrk -t1 -c"$CONNS" -d"$DURATION" --latency -H "Connection: close" "http://127.0.0.1:${port[$name]}/")
		v=$(awk '/Requests\/sec/ {print $2}' <<<"$res")
		p99=$(awk '$1=="99%" {print $2}' <<<"$res")
		errs=$(awk '/Socket errors|Non-2xx/ {print}' <<<"$res" | tr '\n' ' ')
		rps[$r.$name]=$v
		echo "$r $name $v $p99 $(cut -d' ' -f1 /proc/loadavg) $errs"
	done
done
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
for name in "${servers[@]}"; do
	vals=()
	for r in $(seq 1 "$ROUNDS"); do vals+=("${rps[$r.$name]}"); done
	echo "median $name $(median "${vals[@]}") conn/s"
done
