#!/usr/bin/env bash
# http-wasm on a shared listener (issues 15, 21): the router example of the
# http-wasm module as tenant web.test beside an ABI tenant (c-hello,
# abi.test) on one port, wcluster with 2 workers; wrk -t1 -cCONNS keep-alive
# for DURATION with "Host: web.test", then with the requests alternating
# hosts (a Lua script), ROUNDS interleaved rounds. With BASE=COMMIT the build
# of that commit runs beside (before keep-alive there, every http-wasm answer
# closed the connection).
#
#   GUESTS=out/guests BASE=17c3e6e ROUNDS=3 bench/httpwasm-shared.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-64}
PORT_BASE=${PORT_BASE:-19400}
GUESTS=${GUESTS:-out/guests}

command -v wrk >/dev/null || { echo "bench: wrk is missing: apt-get install -y wrk" >&2; exit 3; }
[ -f "$GUESTS/c-hello.wasm" ] || { echo "bench: $GUESTS/c-hello.wasm missing: make guests" >&2; exit 3; }
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
builds=(wcluster)
if [ -n "${BASE:-}" ]; then
	mkdir -p "$out/base"
	git archive "$BASE" | tar -x -C "$out/base"
	(cd "$out/base" && go build -o "$out/wcluster-base" ./cmd/wcluster)
	builds+=(wcluster-base)
fi
example=$(go list -m -f '{{.Dir}}' github.com/http-wasm/http-wasm-host-go)/examples/router.wasm
hello=$(realpath "$GUESTS/c-hello.wasm")
cat >"$out/alternate.lua" <<'LUA'
local n = 0
request = function()
	n = n + 1
	local host = (n % 2 == 0) and "web.test" or "abi.test"
	return wrk.format("GET", "/", {Host = host})
end
LUA

declare -A port
i=0
for b in "${builds[@]}"; do
	i=$((i + 1))
	port[$b]=$((PORT_BASE + i))
	cat >"$out/$b.toml" <<TOML
[cluster]
workers = 2
cache_dir = "$out/cache-$b"

[[tenant]]
name = "web"
handler = "$example"
listen = ["127.0.0.1:${port[$b]}"]
hosts = ["web.test"]

[[tenant]]
name = "abi"
handler = "$hello"
listen = ["127.0.0.1:${port[$b]}"]
hosts = ["abi.test"]
TOML
	setsid "$out/$b" serve --config "$out/$b.toml" </dev/null >>"$out/$b.log" 2>&1 &
	pids+=("$!")
done
for b in "${builds[@]}"; do
	for _ in $(seq 1 600); do
		curl -s -m 2 -o /dev/null -H "Host: web.test" "http://127.0.0.1:${port[$b]}/" && break
		sleep 0.1 # poll interval, not a synchronisation
	done
	curl -s -m 2 -H "Host: web.test" "http://127.0.0.1:${port[$b]}/" | grep -q 'hello world' || { echo "bench: $b not serving" >&2; cat "$out/$b.log" >&2; exit 1; }
done

echo "round build load req/s p99 non2xx load1"
for r in $(seq 1 "$ROUNDS"); do
	for i in "${!builds[@]}"; do
		b=${builds[$(((i + r) % ${#builds[@]}))]}
		for load in web alternate; do
			if [ $load = web ]; then
				res=$(wrk -t1 -c"$CONNS" -d"$DURATION" --latency -H "Host: web.test" "http://127.0.0.1:${port[$b]}/")
			else
				res=$(wrk -t1 -c"$CONNS" -d"$DURATION" --latency -s "$out/alternate.lua" "http://127.0.0.1:${port[$b]}/")
			fi
			echo "$r $b $load $(awk '/Requests\/sec/ {print $2}' <<<"$res") $(awk '$1=="99%" {print $2}' <<<"$res") $(awk '/Non-2xx/ {n = $5} END {print n + 0}' <<<"$res") $(cut -d' ' -f1 /proc/loadavg)"
		done
	done
done
