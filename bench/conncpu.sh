#!/usr/bin/env bash
# CPU per connection, A against B: two wcluster servers (two binaries, or
# one binary with two sets of flags) started one at a time, alternately,
# PAIRS times (the order swapped every other pair); each measured with wrk
# -t1 -cCONNS for DURATION, a new connection per request (MODE=close) or
# kept alive (MODE=keepalive). Per run it prints req/s and the CPU time
# (utime+stime, from /proc) of the master and of the workers per request;
# then the medians of each side. For changes too small to see in req/s on
# a shared machine: CPU per request moves less with the load around it.
#
#   A=/tmp/wcluster-before B=/tmp/wcluster-after bench/conncpu.sh
#   ARGS_A="--defer-accept off" bench/conncpu.sh     # one binary, two flag sets
#   PAIRS=8 MODE=keepalive bench/conncpu.sh
#
# A and B default to a binary built from this tree; ARGS_A, ARGS_B add
# flags to `wcluster serve` (the embedded handler, WORKERS workers).
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${PAIRS:-4}
DURATION=${DURATION:-5}
CONNS=${CONNS:-64}
WORKERS=${WORKERS:-2}
MODE=${MODE:-close}
PORT=${PORT:-19480}

command -v wrk >/dev/null || { echo "bench: wrk is missing: apt-get install -y wrk" >&2; exit 3; }
out=$(mktemp -d)
srv=
cleanup() {
	[ -n "$srv" ] && kill -KILL -- "-$srv" 2>/dev/null || true
	rm -rf "$out"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "${A:-}" ] || [ -z "${B:-}" ]; then
	go build -o "$out/wcluster" ./cmd/wcluster
fi
A=${A:-$out/wcluster}
B=${B:-$out/wcluster}
hz=$(getconf CLK_TCK)
header=()
[ "$MODE" = close ] && header=(-H 'Connection: close')

# ticks PID...: utime+stime of the processes, in clock ticks.
ticks() {
	local t=0 p
	for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
	echo "$t"
}

# measure SIDE BIN ARGS: one run; prints "SIDE req/s master_us workers_us".
measure() {
	local side=$1 bin=$2 args=$3
	# shellcheck disable=SC2086 # ARGS_A and ARGS_B are flag lists
	setsid "$bin" serve --listen "127.0.0.1:$PORT" --workers "$WORKERS" --cache-dir "$out/cache" $args \
		</dev/null >"$out/server.log" 2>&1 &
	srv=$!
	for _ in $(seq 1 600); do
		curl -s -m 2 "http://127.0.0.1:$PORT/" | grep -q "hello world" && break
		sleep 0.05 # poll interval, not a synchronisation
	done
	curl -s -m 2 "http://127.0.0.1:$PORT/" | grep -q "hello world" || { cat "$out/server.log" >&2; exit 1; }
	local workers m0 w0 rps m1 w1
	workers=$(pgrep -P "$srv" | tr '\n' ' ')
	m0=$(ticks "$srv")
	# shellcheck disable=SC2086
	w0=$(ticks $workers)
	rps=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" "${header[@]}" "http://127.0.0.1:$PORT/" | awk '/Requests\/sec/ {print $2}')
	m1=$(ticks "$srv")
	# shellcheck disable=SC2086
	w1=$(ticks $workers)
	kill -TERM "$srv"
	wait "$srv" 2>/dev/null || true
	srv=
	awk -v s="$side" -v r="$rps" -v m=$((m1 - m0)) -v w=$((w1 - w0)) -v hz="$hz" -v d="$DURATION" \
		'BEGIN { n = r * d; printf "%s %.0f %.2f %.2f\n", s, r, m * 1e6 / hz / n, w * 1e6 / hz / n }'
}

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores; MODE=$MODE PAIRS=$PAIRS DURATION=${DURATION}s CONNS=$CONNS WORKERS=$WORKERS"
echo "# A: $A ${ARGS_A:-}"
echo "# B: $B ${ARGS_B:-}"
echo "# side req/s master_us_per_req workers_us_per_req"
for i in $(seq 1 "$PAIRS"); do
	if [ $((i % 2)) = 1 ]; then
		measure A "$A" "${ARGS_A:-}"
		measure B "$B" "${ARGS_B:-}"
	else
		measure B "$B" "${ARGS_B:-}"
		measure A "$A" "${ARGS_A:-}"
	fi
done | tee "$out/rows"
for side in A B; do
	awk -v s="$side" '$1 == s { r[++n] = $2; m[n] = $3; w[n] = $4 }
		function median(a, n,   i, j, t) {
			for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
			return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
		}
		END { printf "median %s: req/s %.0f, master %.2f us/req, workers %.2f us/req\n", s, median(r, n), median(m, n), median(w, n) }' "$out/rows"
done
