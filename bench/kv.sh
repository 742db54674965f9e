#!/usr/bin/env bash
# The key-value store's cost on loopback: GET of a small key through the Go
# kv example (guests/go/kv) on the embedded store and on Redis, beside the Go
# hello example, each wcluster with 2 workers (rr), unpinned, wrk -t1
# -cCONNS keep-alive for DURATION, ROUNDS interleaved rounds (order rotated),
# all servers running at once. Prints raw rows, per-round ratios to hello,
# and their medians.
#
#   make guests && bench/kv.sh          # ROUNDS=3 DURATION=5s
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-64}
PORT_BASE=${PORT_BASE:-19800}
GUESTS=${GUESTS:-out/guests}
for tool in wrk redis-server curl; do
	command -v $tool >/dev/null || { echo "bench: $tool is missing (scripts/deps.sh installs it)" >&2; exit 3; }
done
[ -f "$GUESTS/go-kv.wasm" ] && [ -f "$GUESTS/go-hello.wasm" ] || { echo "bench: run make guests first" >&2; exit 3; }
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
start() { # NAME CMD...
	local name=$1
	shift
	setsid "$@" </dev/null >>"$out/$name.log" 2>&1 &
	pids+=("$!")
	disown "$!" # cleanup kills it: no "Killed" line from the shell
}
declare -A port path
port[hello]=$((PORT_BASE + 1)) port[kv-embedded]=$((PORT_BASE + 2)) port[kv-redis]=$((PORT_BASE + 3))
redis_port=$((PORT_BASE + 4))
path[hello]=/ path[kv-embedded]=/kv/small path[kv-redis]=/kv/small
start redis redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$out"
wc=("$out/wcluster" serve --workers 2 --cache-dir "$out/cache")
start hello "${wc[@]}" --listen "127.0.0.1:${port[hello]}" "$GUESTS/go-hello.wasm"
start kv-embedded "${wc[@]}" --listen "127.0.0.1:${port[kv-embedded]}" --kv-dir "$out/kv" "$GUESTS/go-kv.wasm"
start kv-redis "${wc[@]}" --listen "127.0.0.1:${port[kv-redis]}" --kv-redis "redis://127.0.0.1:$redis_port/0" "$GUESTS/go-kv.wasm"
servers=(hello kv-embedded kv-redis)
for name in "${servers[@]}"; do
	for _ in $(seq 1 600); do
		curl -s -m 2 -o /dev/null "http://127.0.0.1:${port[$name]}/" && break
		sleep 0.05 # poll interval, not a synchronisation
	done
done
for name in kv-embedded kv-redis; do
	curl -s -m 5 -X PUT --data-binary 'a small value' "http://127.0.0.1:${port[$name]}/kv/small" >/dev/null
	curl -s -m 5 "http://127.0.0.1:${port[$name]}/kv/small" | grep -q "a small value" || { echo "bench: $name not serving" >&2; cat "$out/$name.log" >&2; exit 1; }
done
declare -A rps
echo "round server req/s p99 load1"
for r in $(seq 1 "$ROUNDS"); do
	for i in "${!servers[@]}"; do
		name=${servers[$(((i + r) % ${#servers[@]}))]}
		res=$(wrk -t1 -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:${port[$name]}${path[$name]}")
		rps[$r.$name]=$(awk '/Requests\/sec/ {print $2}' <<<"$res")
		echo "$r $name ${rps[$r.$name]} $(awk '$1=="99%" {print $2}' <<<"$res") $(cut -d' ' -f1 /proc/loadavg)"
	done
done
ratio() { awk -v x="$1" -v y="$2" 'BEGIN {printf "%.2f", x/y}'; }
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
e=() d=()
echo "round embedded/hello redis/hello"
for r in $(seq 1 "$ROUNDS"); do
	a=$(ratio "${rps[$r.kv-embedded]}" "${rps[$r.hello]}")
	b=$(ratio "${rps[$r.kv-redis]}" "${rps[$r.hello]}")
	e+=("$a") d+=("$b")
	echo "$r $a $b"
done
echo "median GET through go-kv ÷ go-hello: embedded $(median "${e[@]}")x, redis $(median "${d[@]}")x"
