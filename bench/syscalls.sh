#!/usr/bin/env bash
# System calls per keep-alive request in a wcluster worker (and its master).
#
# Starts `wcluster serve --workers 1` (the embedded hello, or HANDLER), finds
# the worker's pid with `wcluster status --json`, and runs, side by side over
# the same bounded wrk run (keep-alive, -c CONNS, -d DURATION):
#   - strace -c -f -p WORKER   (every thread; counts by system call)
#   - strace -c -f -p MASTER   (rr: a keep-alive request should cost it none)
# then prints each system call's count divided by wrk's request count.
# strace slows the worker a lot (ptrace stops at every call), which changes
# how often the netpoller finds work already there; PERF=1 adds a second
# run counting raw_syscalls:sys_enter with perf (cheap) for the total.
#
#   bench/syscalls.sh                       # embedded hello, rr
#   SCHED=shared DURATION=5s CONNS=1 bench/syscalls.sh out/guests/wat-hello.wasm
#   MODE=close bench/syscalls.sh            # a new connection per request
#   WCLUSTER_BIN=/tmp/wcluster PERF=1 bench/syscalls.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5s}
CONNS=${CONNS:-8}
MODE=${MODE:-keepalive} # or close: a new connection per request
hdr=()
[ "$MODE" = close ] && hdr=(-H "Connection: close")
SCHED=${SCHED:-rr}
PERF=${PERF:-0}
HANDLER=${1:-}

for tool in wrk strace curl jq; do
	command -v "$tool" >/dev/null || { echo "syscalls: $tool is missing" >&2; exit 3; }
done

out=$(mktemp -d)
srv=""
cleanup() {
	[ -n "$srv" ] && kill -KILL -- "-$srv" 2>/dev/null
	rm -rf "$out"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -n "${WCLUSTER_BIN:-}" ]; then
	cp "$WCLUSTER_BIN" "$out/wcluster"
else
	go build -o "$out/wcluster" ./cmd/wcluster
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
args=(serve --listen "127.0.0.1:$port" --workers 1 --sched "$SCHED" --cache-dir "$out/cache" --control "$out/ctl.sock")
[ -n "$HANDLER" ] && args+=("$HANDLER")
setsid "$out/wcluster" "${args[@]}" </dev/null >"$out/server.log" 2>&1 &
srv=$!

deadline=$((SECONDS + 60))
until grep -q serving "$out/server.log" && curl -s -m 2 -o /dev/null "http://127.0.0.1:$port/"; do
	kill -0 "$srv" 2>/dev/null || { cat "$out/server.log" >&2; exit 1; }
	[ "$SECONDS" -lt "$deadline" ] || { echo "syscalls: server not ready in 60s" >&2; cat "$out/server.log" >&2; exit 1; }
	sleep 0.05 # poll interval
done
status=$("$out/wcluster" status --control "$out/ctl.sock" --json)
master=$(jq -r .pid <<<"$status")
worker=$(jq -r '.workers[0].pid' <<<"$status")
echo "# wcluster serve --workers 1 --sched $SCHED ${HANDLER:-(embedded hello)}: master $master, worker $worker ($(ls /proc/"$worker"/task | wc -l) threads)"
echo "# wrk -t1 -c$CONNS -d$DURATION $MODE, under strace -c -f"

# Warm the pool, then trace one bounded run.
wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:$port/" >/dev/null

strace -c -f -p "$worker" -o "$out/worker.strace" &
sw=$!
strace -c -f -p "$master" -o "$out/master.strace" &
sm=$!
for _ in $(seq 1 100); do
	# Bounded wait for both tracers to attach (the traced show a TracerPid).
	tw=$(awk '/TracerPid/ {print $2}' "/proc/$worker/status")
	tm=$(awk '/TracerPid/ {print $2}' "/proc/$master/status")
	[ "$tw" != 0 ] && [ "$tm" != 0 ] && break
	sleep 0.05
done
wrk -t1 -c"$CONNS" -d"$DURATION" "${hdr[@]}" "http://127.0.0.1:$port/" >"$out/wrk.txt"
kill -INT "$sw" "$sm"
wait "$sw" "$sm" 2>/dev/null || true
reqs=$(awk '/requests in/ {print $1}' "$out/wrk.txt")
rps=$(awk '/Requests\/sec/ {print $2}' "$out/wrk.txt")
echo "# $reqs requests ($rps req/s under strace)"

report() { # FILE LABEL
	awk -v reqs="$reqs" -v who="$2" '
	$1 ~ /^-+$/ { table = !table; next }
	table && NF >= 5 {
		name = $NF; calls = $4; errs = (NF == 6) ? $5 : 0
		printf "%-8s %-16s %10d calls %8d errors  %7.3f per request\n", who, name, calls, errs, calls / reqs
		total += calls
	}
	END { printf "%-8s %-16s %10d calls %8s         %7.3f per request\n", who, "TOTAL", total, "", total / reqs }
	' "$1"
}
echo
report "$out/worker.strace" worker
echo
report "$out/master.strace" master

if [ "$PERF" = 1 ] && command -v perf >/dev/null; then
	echo
	echo "# perf stat over a second wrk run (tracepoints, no ptrace: the worker runs at full speed)"
	events=raw_syscalls:sys_enter
	for sc in read write recvfrom sendmsg recvmsg accept4 close fcntl epoll_pwait epoll_ctl futex nanosleep sched_yield; do
		events+=",syscalls:sys_enter_$sc"
	done
	perf stat -e "$events" -p "$worker" -o "$out/perf.txt" &
	sp=$!
	perf stat -e "$events" -p "$master" -o "$out/perf-master.txt" &
	spm=$!
	for _ in $(seq 1 40); do [ -s "$out/perf.txt" ] && [ -s "$out/perf-master.txt" ] && break; sleep 0.05; done
	wrk -t1 -c"$CONNS" -d"$DURATION" "${hdr[@]}" "http://127.0.0.1:$port/" >"$out/wrk2.txt"
	kill -INT "$sp" "$spm"
	wait "$sp" "$spm" 2>/dev/null || true
	reqs2=$(awk '/requests in/ {print $1}' "$out/wrk2.txt")
	rps2=$(awk '/Requests\/sec/ {print $2}' "$out/wrk2.txt")
	echo "# $reqs2 requests ($rps2 req/s)"
	awk -v r="$reqs2" '
	/sys_enter/ { gsub(/,/, "", $1); name = $2; sub(/.*sys_enter_?/, "", name); if (name == "") name = "TOTAL (all)"
		printf "worker   %-16s %10d calls           %7.3f per request\n", name, $1, $1 / r }' "$out/perf.txt"
	awk -v r="$reqs2" '
	/sys_enter/ { gsub(/,/, "", $1); name = $2; sub(/.*sys_enter_?/, "", name); if (name == "") name = "TOTAL (all)"
		if ($1 > 0) printf "master   %-16s %10d calls           %7.3f per request\n", name, $1, $1 / r }' "$out/perf-master.txt"
fi

kill -TERM "$srv" 2>/dev/null || true
for _ in $(seq 1 200); do kill -0 "$srv" 2>/dev/null || break; sleep 0.05; done
