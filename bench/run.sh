#!/usr/bin/env bash
# Throughput benchmark on loopback, side by side in one run, ROUNDS
# interleaved rounds, wrk -t1 -cCONNS for DURATION per measurement:
#
#   wcluster-rr          wcluster serve (embedded default handler), --sched rr, 2 workers
#   wcluster-shared      the same, --sched shared
#   wcluster-reuseport   (not run by default) the same, --sched reuseport
#   wcluster-chello-rr, wcluster-wathello-rr
#                        (not run by default) wcluster-rr serving guests/c's and
#                        guests/wat's hello (from `make guests`, GUESTS=DIR
#                        to look elsewhere than out/guests): the same answers
#                        as the default handler, without a Go runtime inside
#   wcluster-gohello-rr  wcluster serve guests/go/hello (built here), --sched rr, 2 workers
#   node-rr, node-none   bench/node-cluster.js, 2 workers, SCHED_RR / SCHED_NONE
#   nethttp              bench/nethttp, single-process Go net/http
#   nginx                nginx (Debian's nginx-light), WORKERS worker processes,
#                        return 200 "hello world\n", keep-alive requests unlimited;
#                        skipped with a message when nginx is not installed
#   wcluster-rr-t0       (not run by default) wcluster-rr with --timeout 0:
#                        no termination checks in the guest
#   gobare               (not run by default) bench/bare, WORKERS processes with
#                        GOMAXPROCS=1 on one port (SO_REUSEPORT): wcluster's worker
#                        structure without wasm, the ceiling of its design
#   gouring              (not run by default) bench/uring, WORKERS processes with
#                        GOMAXPROCS=1 on one port (SO_REUSEPORT): the same answers
#                        from one io_uring per process (a batch of receives and
#                        sends per io_uring_enter), the ceiling of that design
#   wcluster-rr-p2       (not run by default) wcluster-rr with --worker-procs 2:
#                        each worker runs Go code on 2 threads (the default,
#                        auto, shares the cores among the workers: 1 each
#                        with 2 workers on 2 cores)
#
# WC_ARGS adds flags to every wcluster server (e.g. WC_ARGS="--instances 8").
#
# in two views: "unpinned" (nothing pinned) and "pinned" (every server
# process on core 0 with taskset, wrk on core 1), and two modes: keep-alive,
# and a new connection per request (-H 'Connection: close'). Within a view
# all servers run at once; each round measures every server in turn (order
# rotated per round), one mode after the other. It prints the raw rows as
# they come, the per-round ratios (each server ÷ node-rr and ÷ nethttp, both
# measured in the same round, view and mode), and the medians of those
# ratios.
#
#   bench/run.sh                                    # ROUNDS=5 DURATION=10s
#   ROUNDS=1 DURATION=2s bench/run.sh               # quick check
#   VIEWS=pinned MODES=keepalive bench/run.sh
#   SERVERS="wcluster-rr nethttp" bench/run.sh
#   WCLUSTER_BIN=/path/wcluster bench/run.sh        # a prebuilt binary
#   RAW=/tmp/rows.txt bench/run.sh                  # also keep the raw rows
#   CHARTS= bench/run.sh                            # no SVG charts (default: bench/charts/)
#
# Every server runs in its own session (setsid) and is stopped, with all of
# its children, after its measurements and on any exit (trap).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-1s}
CONNS=${CONNS:-64}
WORKERS=${WORKERS:-2}
VIEWS=${VIEWS:-unpinned pinned}
MODES=${MODES:-keepalive close}
SERVERS=${SERVERS:-wcluster-rr wcluster-shared wcluster-gohello-rr node-rr node-none nethttp nginx}
PORT_BASE=${PORT_BASE:-19100}
READY_TIMEOUT=${READY_TIMEOUT:-60} # seconds a server may take to answer
SERVER_CORE=${SERVER_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}

command -v wrk >/dev/null || { echo "bench: wrk is missing: apt-get install -y wrk" >&2; exit 3; }
command -v curl >/dev/null || { echo "bench: curl is missing" >&2; exit 3; }
if ! command -v node >/dev/null; then
	echo "bench: node is missing: the node-* rows are skipped" >&2
	SERVERS=$(tr ' ' '\n' <<<"$SERVERS" | grep -v '^node-' | tr '\n' ' ')
fi

if ! command -v nginx >/dev/null && [[ " $SERVERS " == *" nginx "* ]]; then
	echo "bench: nginx is missing (apt-get install -y nginx-light): the nginx rows are skipped" >&2
	SERVERS=$(tr ' ' '\n' <<<"$SERVERS" | grep -v '^nginx$' | tr '\n' ' ')
fi

out=$(mktemp -d)
pids=() # session leaders of the servers still running
cleanup() {
	local p
	for p in "${pids[@]}"; do
		kill -KILL -- "-$p" 2>/dev/null || true
	done
	rm -rf "$out"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -n "${WCLUSTER_BIN:-}" ]; then
	cp "$WCLUSTER_BIN" "$out/wcluster"
else
	go build -o "$out/wcluster" ./cmd/wcluster
fi
go build -o "$out/nethttp" ./bench/nethttp
go build -o "$out/bare" ./bench/bare
go build -o "$out/uring" ./bench/uring
GOOS=wasip1 GOARCH=wasm go build -trimpath -buildvcs=false -ldflags='-s -w' -buildmode=c-shared \
	-o "$out/go-hello.wasm" ./guests/go/hello
mkdir -p "$out/cache" # shared by every wcluster start: only the first compiles

log() { echo "bench: $*" >&2; }

# port_free PORT: nothing listens on it.
port_free() { ! ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

port=$PORT_BASE
next_port() {
	port=$((port + 1))
	while ! port_free "$port"; do port=$((port + 1)); done
}

# start_server NAME VIEW PORT: starts it in its own session and sets $srv_pid.
# setsid, env and taskset all exec, so $! is the server process itself (the
# leader of its session: stop_server kills the session).
start_server() {
	local name=$1 view=$2 p=$3 pin=() cmd=()
	[ "$view" = pinned ] && pin=(taskset -c "$SERVER_CORE")
	local wc=("$out/wcluster" serve --listen "127.0.0.1:$p" --workers "$WORKERS" --cache-dir "$out/cache")
	# shellcheck disable=SC2206 # WC_ARGS is split on purpose
	[ -n "${WC_ARGS:-}" ] && wc+=($WC_ARGS)
	case $name in
	wcluster-rr) cmd=("${wc[@]}" --sched rr) ;;
	wcluster-shared) cmd=("${wc[@]}" --sched shared) ;;
	wcluster-reuseport) cmd=("${wc[@]}" --sched reuseport) ;;
	wcluster-gohello-rr) cmd=("${wc[@]}" --sched rr "$out/go-hello.wasm") ;;
	wcluster-chello-rr | wcluster-wathello-rr)
		local g=${name#wcluster-} && g=${g%-rr} && g=${GUESTS:-out/guests}/${g%hello}-hello.wasm
		[ -f "$g" ] || { log "$g is missing: make guests (or GUESTS=DIR)"; exit 3; }
		cmd=("${wc[@]}" --sched rr "$g")
		;;
	wcluster-rr-t0) cmd=("${wc[@]}" --sched rr --timeout 0) ;; # no termination checks compiled in
	wcluster-rr-p2) cmd=("${wc[@]}" --sched rr --worker-procs 2) ;;
	gobare | gouring)
		local b=$out/bare
		[ "$name" = gouring ] && b=$out/uring
		cmd=(sh -c 'for i in $(seq "$1"); do GOMAXPROCS=1 "$2" -listen "127.0.0.1:$3" & done; wait' sh "$WORKERS" "$b" "$p")
		;;
	node-rr | node-none) cmd=(env PORT="$p" WORKERS="$WORKERS" NODE_CLUSTER_SCHED_POLICY="${name#node-}" node bench/node-cluster.js) ;;
	nethttp) cmd=("$out/nethttp" -listen "127.0.0.1:$p") ;;
	nginx)
		local d=$out/nginx-$p
		mkdir -p "$d/logs"
		cat >"$d/nginx.conf" <<CONF
worker_processes $WORKERS;
pid $d/nginx.pid;
error_log $d/logs/error.log crit;
events { worker_connections 4096; }
http {
	access_log off;
	keepalive_requests 1000000000;
	client_body_temp_path $d; proxy_temp_path $d; fastcgi_temp_path $d;
	uwsgi_temp_path $d; scgi_temp_path $d;
	server {
		listen 127.0.0.1:$p;
		location / { return 200 "hello world\n"; }
	}
}
CONF
		echo "serving (nginx)" >"$out/$name.log" # nginx says nothing when it starts
		cmd=(nginx -p "$d" -c "$d/nginx.conf" -g 'daemon off;')
		;;
	*) echo "bench: unknown server $name" >&2; exit 2 ;;
	esac
	setsid "${pin[@]}" "${cmd[@]}" </dev/null >>"$out/$name.log" 2>&1 &
	srv_pid=$!
	pids+=("$srv_pid")
}

# wait_ready PID PORT LOG: polls until the process has logged that it serves
# and answers a request, at most READY_TIMEOUT seconds.
wait_ready() {
	local pid=$1 p=$2 logf=$3 deadline=$((SECONDS + READY_TIMEOUT))
	while [ "$SECONDS" -lt "$deadline" ]; do
		kill -0 "$pid" 2>/dev/null || return 1
		if grep -q "serving" "$logf" 2>/dev/null &&
			curl -s -m 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$p/" | grep -q 200; then
			return 0
		fi
		sleep 0.05 # poll interval, not a synchronisation
	done
	return 1
}

# stop_server PID: SIGTERM to the server, at most 15 s to exit, then
# SIGKILL to its whole session.
stop_server() {
	local pid=$1 i
	kill -TERM "$pid" 2>/dev/null || true
	for i in $(seq 1 300); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	kill -KILL -- "-$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	local keep=() q
	for q in "${pids[@]}"; do [ "$q" = "$pid" ] || keep+=("$q"); done
	pids=("${keep[@]+"${keep[@]}"}")
}

# cpu_ticks SID: the CPU time (user + system, clock ticks) used so far by
# the live processes of session SID: a server's master and workers.
cpu_ticks() {
	local t=0 p v
	for p in $(ps -e -o pid=,sid= | awk -v s="$1" '$2 == s {print $1}'); do
		v=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null) && t=$((t + v))
	done
	echo "$t"
}

# measure VIEW MODE PORT SID: one wrk run; prints "rps p50 p99 errors"
# and, last, requests per CPU-second of the server's processes (session
# SID) during the run, kernel time spent on its behalf included.
measure() {
	local view=$1 mode=$2 p=$3 sid=$4 hdr=() pin=() c0 c1
	[ "$mode" = close ] && hdr=(-H "Connection: close")
	[ "$view" = pinned ] && pin=(taskset -c "$LOAD_CORE")
	c0=$(cpu_ticks "$sid")
	local s0 s1
	s0=$(head -1 /proc/stat)
	"${pin[@]}" wrk -t1 -c"$CONNS" -d"$DURATION" --latency "${hdr[@]}" "http://127.0.0.1:$p/" >"$out/wrk.txt" 2>&1 || true
	s1=$(head -1 /proc/stat)
	c1=$(cpu_ticks "$sid")
	awk -v ticks=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" -v d="$DURATION" -v s0="$s0" -v s1="$s1" '
	/Requests\/sec/ { rps = $2 }
	$1 == "50%" { p50 = $2 }
	$1 == "99%" { p99 = $2 }
	/Socket errors/ { gsub(/,/, ""); err += $4 + $6 + $8 + $10 }
	/Non-2xx/ { err += $NF }
	END {
		secs = d + 0; if (d ~ /m$/) secs *= 60
		# Steal by the hypervisor over the run, in % of all CPU time: a
		# busy host under this VM shows here, not in the load average.
		split(s0, a, " "); split(s1, b, " "); tot = 0
		for (i = 2; i <= 9; i++) tot += b[i] - a[i]
		printf "%s %s %s %d %s %s\n", rps ? rps : 0, p50 ? p50 : "?", p99 ? p99 : "?", err,
			(rps && ticks > 0) ? sprintf("%.0f", rps * secs / (ticks / hz)) : "-", (tot > 0) ? sprintf("%.0f%%", 100 * (b[9] - a[9]) / tot) : "-"
	}
	' "$out/wrk.txt"
}

rows=$out/rows
: >"$rows"
read -r -a names <<<"$SERVERS"
log "$(nproc) cores; ROUNDS=$ROUNDS DURATION=$DURATION CONNS=$CONNS WORKERS=$WORKERS VIEWS='$VIEWS' MODES='$MODES'"
echo "# raw rows: view round server mode req/s p50 p99 errors load1 (the machine's 1-min load average after the run) req/cpu-s (requests per CPU-second of the server's processes) steal (the hypervisor's share of all CPU time during the run)"
n=${#names[@]}
declare -A ports spid
for view in $VIEWS; do
	# Every server of the view runs for all its rounds (idle but for its
	# own measurements), so one round's measurements are minutes apart at
	# most and the ratios compare servers under the same conditions.
	for name in "${names[@]}"; do
		next_port
		ports[$name]=$port
		start_server "$name" "$view" "$port"
		spid[$name]=$srv_pid
	done
	for name in "${names[@]}"; do
		if ! wait_ready "${spid[$name]}" "${ports[$name]}" "$out/$name.log"; then
			log "$name did not answer on port ${ports[$name]} within ${READY_TIMEOUT}s; its log:"
			tail -20 "$out/$name.log" >&2 || true
			stop_server "${spid[$name]}"
			spid[$name]=""
			continue
		fi
		# Warm up (JITs, instance pools, TCP) before measuring.
		if [ "$WARMUP" != 0 ]; then
			wrk -t1 -c"$CONNS" -d"$WARMUP" "http://127.0.0.1:${ports[$name]}/" >/dev/null 2>&1 || true
		fi
	done
	for round in $(seq 1 "$ROUNDS"); do
		for mode in $MODES; do
			# Rotate the order every round so no server always runs first or last.
			for ((i = 0; i < n; i++)); do
				name=${names[$(((i + round - 1) % n))]}
				if [ -z "${spid[$name]}" ] || ! kill -0 "${spid[$name]}" 2>/dev/null; then
					if [ -n "${spid[$name]}" ]; then
						log "$name (pid ${spid[$name]}) has exited; the end of its log:"
						tail -20 "$out/$name.log" >&2 || true
						wait "${spid[$name]}" 2>/dev/null && st=0 || st=$?
						log "$name exit status $st"
						spid[$name]=""
					fi
					echo "$view $round $name $mode 0 ? ? -1 - - -" | tee -a "$rows"
					continue
				fi
				r=$(measure "$view" "$mode" "${ports[$name]}" "${spid[$name]}")
				# (load1 goes before the CPU and steal figures: the rows'
				# columns 1-9 are as they were)
				read -r rps p50 p99 errs cpus steal <<<"$r"
				echo "$view $round $name $mode $rps $p50 $p99 $errs $(cut -d' ' -f1 /proc/loadavg) $cpus $steal" | tee -a "$rows"
			done
		done
	done
	for name in "${names[@]}"; do
		if [ -n "${spid[$name]}" ]; then stop_server "${spid[$name]}"; fi
	done
done

if [ -n "${RAW:-}" ]; then cp "$rows" "$RAW"; fi
# Charts of the medians (bench/chart, a module of its own): CHARTS= skips.
CHARTS=${CHARTS-bench/charts}
if [ -n "$CHARTS" ]; then
	mkdir -p "$CHARTS"
	(cd bench/chart && go run . -rows "$rows" -out "$OLDPWD/$CHARTS" \
		-title "$(date -u '+%F') $(git rev-parse --short HEAD 2>/dev/null)") >&2 || log "charts not drawn"
fi

echo
echo "# $(date -u '+%F %H:%M UTC'), $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(uname -r)"
echo "# ROUNDS=$ROUNDS DURATION=$DURATION CONNS=$CONNS WORKERS=$WORKERS, wrk -t1 -c$CONNS; pinned: servers on core $SERVER_CORE, wrk on core $LOAD_CORE"
awk '
function us(s,   v) { # wrk latency text to microseconds
	if (s == "?") return -1
	v = s + 0
	if (s ~ /us$/) return v
	if (s ~ /ms$/) return v * 1000
	if (s ~ /s$/) return v * 1000000
	return v
}
function median(a, n,   i, j, t) {
	for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j+1] = a[j]; a[j+1] = t }
	return (n % 2) ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
}
function get(v, r, s, m) { return ((v, r, s, m) in rps) ? rps[v, r, s, m] : 0 } # never creates an entry
function fmtus(v) { return v < 0 ? "?" : (v >= 1000 ? sprintf("%.2fms", v/1000) : sprintf("%.0fus", v)) }
{
	view = $1; round = $2; s = $3; m = $4
	# A failed measurement (0 req/s) is left out of every median.
	if ($5 > 0) { rps[view, round, s, m] = $5; p50[view, round, s, m] = us($6); p99[view, round, s, m] = us($7) }
	if ($5 > 0 && $10 > 0) cpu[view, round, s, m] = $10
	else failed[view, s, m]++
	if (!(view in seenv)) { seenv[view] = 1; views[++nv] = view }
	if (!(s in seens)) { seens[s] = 1; srv[++ns] = s }
	if (!(m in seenm)) { seenm[m] = 1; modes[++nm] = m }
	if (!(round in seenr)) { seenr[round] = 1; rounds[++nr] = round }
}
END {
	print ""
	print "# per-round ratios (same round, same view): server ÷ node-rr, server ÷ nethttp, server ÷ nginx"
	for (vi = 1; vi <= nv; vi++) for (mi = 1; mi <= nm; mi++) for (si = 1; si <= ns; si++) {
		v = views[vi]; m = modes[mi]; s = srv[si]
		if (s ~ /^(node-rr|nethttp|nginx)$/) continue
		line = sprintf("%-8s %-9s %-20s", v, m, s)
		for (ri = 1; ri <= nr; ri++) {
			r = rounds[ri]; xv = get(v, r, s, m); a = get(v, r, "node-rr", m); b = get(v, r, "nethttp", m); c = get(v, r, "nginx", m)
			line = line sprintf("  r%s: %s/%s/%s", r, (xv > 0 && a > 0) ? sprintf("%.2f", xv/a) : "-", (xv > 0 && b > 0) ? sprintf("%.2f", xv/b) : "-", (xv > 0 && c > 0) ? sprintf("%.2f", xv/c) : "-")
		}
		print line
	}
	print ""
	print "| view | mode | server | req/s (median) | p50 (median) | p99 (median) | ÷ node-rr (median of rounds) | ÷ nethttp (median of rounds) | ÷ nginx (median of rounds) | req per CPU-second (median) | its ÷ nginx (median of rounds) | p99 ÷ nginx (median of rounds) |"
	print "|---|---|---|---|---|---|---|---|---|---|---|---|"
	for (vi = 1; vi <= nv; vi++) for (mi = 1; mi <= nm; mi++) for (si = 1; si <= ns; si++) {
		v = views[vi]; m = modes[mi]; s = srv[si]
		n = 0; na = 0; nb = 0; nc = 0; n50 = 0; n99 = 0; ncp = 0; ncc = 0; npc = 0
		delete x; delete ra; delete rb; delete rc; delete l50; delete l99; delete cp; delete cc; delete pc
		for (ri = 1; ri <= nr; ri++) {
			r = rounds[ri]
			if (!((v, r, s, m) in rps)) continue
			val = rps[v, r, s, m]; x[++n] = val
			if (p50[v, r, s, m] >= 0) l50[++n50] = p50[v, r, s, m]
			if (p99[v, r, s, m] >= 0) l99[++n99] = p99[v, r, s, m]
			a = get(v, r, "node-rr", m); b = get(v, r, "nethttp", m); c = get(v, r, "nginx", m)
			if (val > 0 && a > 0) ra[++na] = val / a
			if (val > 0 && b > 0) rb[++nb] = val / b
			if (val > 0 && c > 0) rc[++nc] = val / c
			if ((v, r, s, m) in cpu) {
				cp[++ncp] = cpu[v, r, s, m]
				if ((v, r, "nginx", m) in cpu) cc[++ncc] = cpu[v, r, s, m] / cpu[v, r, "nginx", m]
			}
			if (p99[v, r, s, m] > 0 && ((v, r, "nginx", m) in p99) && p99[v, r, "nginx", m] > 0) pc[++npc] = p99[v, r, s, m] / p99[v, r, "nginx", m]
		}
		if (!n && !((v, s, m) in failed)) continue
		if (!n) { printf "| %s | %s | %s | failed | | | | | | | | |\n", v, m, s; continue }
		med[v, m, s, "a"] = na ? median(ra, na) : -1
		med[v, m, s, "b"] = nb ? median(rb, nb) : -1
		med[v, m, s, "c"] = nc ? median(rc, nc) : -1
		med[v, m, s, "cpu"] = ncc ? median(cc, ncc) : -1
		med[v, m, s, "p99"] = npc ? median(pc, npc) : -1
		printf "| %s | %s | %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s |\n", v, m, s, median(x, n),
			n50 ? fmtus(median(l50, n50)) : "?", n99 ? fmtus(median(l99, n99)) : "?",
			na ? sprintf("%.2f", med[v, m, s, "a"]) : "-", nb ? sprintf("%.2f", med[v, m, s, "b"]) : "-",
			nc ? sprintf("%.2f", med[v, m, s, "c"]) : "-", ncp ? sprintf("%.0f", median(cp, ncp)) : "-",
			ncc ? sprintf("%.2f", med[v, m, s, "cpu"]) : "-", npc ? sprintf("%.2f", median(pc, npc)) : "-"
	}
	print ""
	print "# targets of issues 6 and 19 (medians of the per-round ratios)"
	nt = split("keepalive wcluster-rr a 2.0|keepalive wcluster-shared a 2.0|keepalive wcluster-rr b 1.3|keepalive wcluster-shared b 1.3|keepalive wcluster-gohello-rr b 1.0|close wcluster-rr a 4.0|close wcluster-rr b 1.0|keepalive wcluster-rr c 1.0|close wcluster-rr c 0.8|keepalive wcluster-rr cpu 0.9|keepalive wcluster-rr p99 1.5", t, "|")
	for (vi = 1; vi <= nv; vi++) for (i = 1; i <= nt; i++) {
		split(t[i], f, " "); v = views[vi]
		if (!((v, f[1], f[2], f[3]) in med)) continue
		got = med[v, f[1], f[2], f[3]]
		what = f[3] == "a" ? "÷ node-rr" : (f[3] == "b" ? "÷ nethttp" : (f[3] == "c" ? "÷ nginx" : (f[3] == "cpu" ? "req/CPU-s ÷ nginx" : "p99 ÷ nginx")))
		le = f[3] == "p99" # lower is better: a ceiling
		printf "%-8s %-9s %-20s %-17s %6s  target %s %s  %s\n", v, f[1], f[2], what,
			got < 0 ? "-" : sprintf("%.2f", got), le ? "≤" : "≥", f[4], got < 0 ? "no data" : ((le ? got <= f[4] : got >= f[4]) ? "met" : "MISSED")
	}
}' "$rows"
