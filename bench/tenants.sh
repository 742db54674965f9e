#!/bin/bash
# Many tenants (issue 17): start time, worker RSS and memory per idle tenant
# with 10,000 tenants sharing one handler; routing cost with 10 against
# 10,000 tenants (wrk -t1 -c64 against one host, interleaved rounds);
# the first request of a cold tenant; 200 tenants with 200 distinct
# handlers (one guest, each copy with a custom section of its own).
# Every tenant has its own host name (tN.test) on one port.
#   bench/tenants.sh            (from the repository root, after `make guests`)
# N, ROUNDS, RROUNDS (of routing), DURATION, PORT, BIN, SHARED (the shared handler), DISTINCT (the
# guest copied for the distinct handlers) change the defaults.
set -u
N=${N:-10000} ROUNDS=${ROUNDS:-3} RROUNDS=${RROUNDS:-5} DURATION=${DURATION:-5s} PORT=${PORT:-18941}
SHARED=${SHARED:-$PWD/out/guests/go-probe.wasm}
HELLO=${HELLO:-$PWD/out/guests/go-hello.wasm}
DISTINCT=${DISTINCT:-$PWD/out/guests/rust-hello.wasm}
D=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf $D' EXIT
BIN=${BIN:-$D/wcluster}
[ -x "$BIN" ] || go build -o "$BIN" ./cmd/wcluster || exit 1
go build -o $D/gen ./bench/tenants || exit 1
load() { cut -d' ' -f1 /proc/loadavg; }
rss() { awk '/VmRSS/{print $2}' /proc/$1/status; } # KiB
master() { pgrep -P "$1"; } # PID is timeout's
workers() { pgrep -P "$(master $1)" | tr '\n' ' '; }
gen() { # N HANDLER WORKERS OUT [ARGS]
	$D/gen -n "$1" -handler "$2" -workers "$3" -listen 127.0.0.1:$PORT -cache-dir $D/cache -o "$D/$4" "${@:5}"
}

# serve CONFIG [FLAGS]: starts wcluster, waits (at most 300 s) until t1.test
# answers 200; sets PID and STARTED (seconds from launch to that answer).
serve() {
	cfg=$1
	shift
	while curl -s -o /dev/null -m 2 http://127.0.0.1:$PORT/; do sleep 0.2; done
	t0=$(date +%s.%N)
	timeout 600 "$BIN" serve --config "$D/$cfg" "$@" >$D/serve.log 2>&1 &
	PID=$!
	for _ in $(seq 3000); do
		[ "$(curl -s -o /dev/null -m 5 -w '%{http_code}' -H 'Host: t1.test' http://127.0.0.1:$PORT/)" = 200 ] && break
		kill -0 $PID 2>/dev/null || { echo "serve $cfg exited:"; tail -5 $D/serve.log; return 1; }
		sleep 0.1
	done
	STARTED=$(echo "$(date +%s.%N) - $t0" | bc)
}
stop() { kill $PID; wait $PID 2>/dev/null; }
cpu() { t=0; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $t; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "# $(date -u '+%F %H:%M UTC'), commit $(git rev-parse --short HEAD), $(nproc) CPUs"

echo "## start time, worker RSS, memory per idle tenant: $N and 100 tenants sharing $(basename $SHARED), 2 workers"
gen $N "$SHARED" 2 many.toml
gen 100 "$SHARED" 2 few.toml
"$BIN" check --config $D/many.toml >/dev/null || exit 1 # fills the compilation cache
for round in $(seq $ROUNDS); do
	for cfg in few.toml many.toml; do
		serve $cfg || exit 1
		sleep 3 # settled: the first heartbeats, the first request's instance
		ws=$(workers $PID)
		r=""
		for w in $ws; do r="$r $(rss $w)"; done
		echo "start $cfg round $round: answering after ${STARTED}s, worker RSS KiB:$r, master $(rss $(master $PID)) KiB, load $(load)"
		stop
	done
done | tee $D/start.txt
awk -v n=$N '/start few/{for(i=9;i<=NF&&$i!="master";i++) if($i+0>0){f+=$i;fc++}} /start many/{for(i=9;i<=NF&&$i!="master";i++) if($i+0>0){m+=$i;mc++}}
	END {printf "memory per idle tenant per worker: %.1f KiB ((mean worker RSS with %d tenants - with 100) / %d)\n", (m/mc-f/fc)/(n-100), n, n-100}' $D/start.txt

echo "## routing: 10 against $N tenants sharing $(basename $HELLO), 1 worker, wrk -t1 -c64 -d$DURATION against t1.test"
gen 10 "$HELLO" 1 r10.toml
gen $N "$HELLO" 1 rmany.toml
"$BIN" check --config $D/r10.toml >/dev/null || exit 1
for round in $(seq $RROUNDS); do
	for cfg in r10.toml rmany.toml; do
		serve $cfg --instances-min 0 || exit 1
		timeout 10 wrk -t1 -c64 -d1s -H 'Host: t1.test' http://127.0.0.1:$PORT/ >/dev/null # warm: the instances
		procs="$(master $PID) $(workers $PID)"
		c0=$(cpu $procs)
		timeout 60 wrk -t1 -c64 -d$DURATION -H 'Host: t1.test' http://127.0.0.1:$PORT/ >$D/wrk.out
		c1=$(cpu $procs)
		n=$(awk '/requests in/{print $1}' $D/wrk.out)
		rps=$(awk '/Requests\/sec/{print $2}' $D/wrk.out)
		bad=$(awk '/Non-2xx|Socket errors/' $D/wrk.out)
		echo "routing $cfg round $round: req/s $rps cpu-us/req $(echo "scale=2; ($c1-$c0)*1000000/$(getconf CLK_TCK)/$n" | bc) load $(load) $bad"
		stop
	done
done | tee $D/routing.txt
few=$(awk '/routing r10.toml/{print $6}' $D/routing.txt | median)
many=$(awk '/routing rmany.toml/{print $6}' $D/routing.txt | median)
fewcpu=$(awk '/routing r10.toml/{print $8}' $D/routing.txt | median)
manycpu=$(awk '/routing rmany.toml/{print $8}' $D/routing.txt | median)
echo "routing medians: 10 tenants $few req/s $fewcpu cpu-us/req, $N tenants $many req/s $manycpu cpu-us/req; $N ÷ 10: req/s $(echo "scale=3; $many/$few" | bc), cpu/req $(echo "scale=3; $manycpu/$fewcpu" | bc)"

echo "## first request of a cold tenant ($N tenants sharing $(basename $SHARED), 1 worker): 20 tenants, each its first request then its second"
gen $N "$SHARED" 1 cold.toml
serve cold.toml || exit 1
for i in $(shuf -i 2-$((N - 1)) -n 20); do
	c=$(curl -s -o /dev/null -m 30 -w '%{time_total}' -H "Host: t$i.test" http://127.0.0.1:$PORT/)
	w=$(curl -s -o /dev/null -m 30 -w '%{time_total}' -H "Host: t$i.test" http://127.0.0.1:$PORT/)
	echo "$c $w"
done >$D/cold.txt
stop
echo "cold first request: median $(cut -d' ' -f1 $D/cold.txt | median) s, max $(cut -d' ' -f1 $D/cold.txt | sort -n | tail -1) s; the same tenant's second request: median $(cut -d' ' -f2 $D/cold.txt | median) s (curl time_total, a new connection each; load $(load))"

echo "## 200 tenants, 200 distinct handlers (copies of $(basename $DISTINCT)), against 200 sharing one; 2 workers"
mkdir -p $D/distinct
$D/gen -n 200 -handler "$DISTINCT" -distinct 200 -workers 2 -listen 127.0.0.1:$PORT -cache-dir $D/cache -o $D/distinct/d200.toml
gen 200 "$DISTINCT" 2 s200.toml
for cfg in distinct/d200.toml distinct/d200.toml s200.toml; do # the first distinct start compiles (cold cache)
	serve $cfg || exit 1
	sleep 3
	r=""
	for w in $(workers $PID); do r="$r $(rss $w)"; done
	echo "start $cfg: answering after ${STARTED}s, worker RSS KiB:$r, load $(load)"
	stop
done
