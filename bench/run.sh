#!/usr/bin/env bash
# Throughput benchmark on loopback, side by side in one run: wcluster (rr and
# shared, 2 workers, the embedded Go hello), a Node.js cluster hello (rr and
# none, 2 workers) and a plain Go net/http hello, keep-alive and one new
# connection per request. ROUNDS interleaved rounds; medians are printed with
# ratios taken within each round. Every wrk run is bounded by DURATION.
#
#   bench/run.sh                 # servers pinned to core 0, wrk to core 1
#   PIN=0 bench/run.sh           # unpinned
#   ROUNDS=5 DURATION=10s CONNS=64 bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-64}
PIN=${PIN:-1}
out=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$out"' EXIT

command -v wrk >/dev/null || { echo "bench: wrk is missing: apt-get install -y wrk" >&2; exit 3; }
go build -o "$out/wcluster" ./cmd/wcluster
go build -o "$out/nethttp" ./bench/nethttp
srv=""
[ "$PIN" = 1 ] && srv="taskset -c 0"
load() { if [ "$PIN" = 1 ]; then taskset -c 1 "$@"; else "$@"; fi; }

declare -A start=(
	[wcluster-rr]="$srv $out/wcluster serve --listen 127.0.0.1:PORT --workers 2 --sched rr --cache-dir $out/cache"
	[wcluster-shared]="$srv $out/wcluster serve --listen 127.0.0.1:PORT --workers 2 --sched shared --cache-dir $out/cache"
	[node-rr]="env NODE_CLUSTER_SCHED_POLICY=rr PORT=PORT $srv node bench/node-cluster.js"
	[node-none]="env NODE_CLUSTER_SCHED_POLICY=none PORT=PORT $srv node bench/node-cluster.js"
	[nethttp]="$srv $out/nethttp -listen 127.0.0.1:PORT"
)
names=(wcluster-rr wcluster-shared node-rr node-none nethttp)
command -v node >/dev/null || names=(wcluster-rr wcluster-shared nethttp)

port=19100
for round in $(seq 1 "$ROUNDS"); do
	for name in "${names[@]}"; do
		port=$((port + 1))
		cmd=${start[$name]//PORT/$port}
		# exec: $! is then the server itself, so the TERM below reaches it.
		eval "exec $cmd" >/dev/null 2>"$out/$name.log" &
		pid=$!
		for _ in $(seq 1 300); do
			curl -s -o /dev/null "http://127.0.0.1:$port/" && break
			sleep 0.1
		done
		for mode in keepalive close; do
			hdr=()
			[ "$mode" = close ] && hdr=(-H "Connection: close")
			load wrk -t1 -c"$CONNS" -d"$DURATION" --latency "${hdr[@]}" "http://127.0.0.1:$port/" >"$out/r.txt" 2>&1 || true
			rps=$(awk '/Requests\/sec/ {print $2}' "$out/r.txt")
			p50=$(awk '$1=="50%" {print $2}' "$out/r.txt")
			p99=$(awk '$1=="99%" {print $2}' "$out/r.txt")
			echo "$round $name $mode ${rps:-0} ${p50:-?} ${p99:-?}" >>"$out/results"
		done
		kill -TERM "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
done

echo "# $(date -u +%F) $(nproc) cores, ROUNDS=$ROUNDS DURATION=$DURATION CONNS=$CONNS PIN=$PIN"
echo
echo "| server | mode | req/s (median) | p50 | p99 | ÷ node-rr | ÷ nethttp |"
echo "|---|---|---|---|---|---|---|"
awk '
{ r[$2" "$3" "$1]=$4; p50[$2" "$3]=p50[$2" "$3]" "$5; p99[$2" "$3]=p99[$2" "$3]" "$6; names[$2]=1; modes[$3]=1; rounds[$1]=1 }
function median(a, n,   i, j, t) { for (i=1;i<=n;i++) for (j=i+1;j<=n;j++) if (a[j]<a[i]) {t=a[i];a[i]=a[j];a[j]=t}; return (n%2)? a[(n+1)/2] : (a[n/2]+a[n/2+1])/2 }
END {
  for (m in modes) for (s in names) {
    n=0; nn=0; nh=0
    for (k in rounds) { v[++n]=r[s" "m" "k]; if (r["node-rr "m" "k]>0) rn[++nn]=r[s" "m" "k]/r["node-rr "m" "k]; if (r["nethttp "m" "k]>0) rh[++nh]=r[s" "m" "k]/r["nethttp "m" "k] }
    split(p50[s" "m], a50, " "); split(p99[s" "m], a99, " ")
    printf "| %s | %s | %.0f | %s | %s | %s | %s |\n", s, m, median(v,n), a50[1], a99[1], nn? sprintf("%.2f", median(rn,nn)) : "-", nh? sprintf("%.2f", median(rh,nh)) : "-"
  }
}' "$out/results" | sort -t'|' -k3,3 -k2,2
