#!/bin/sh
# Keep-alive throughput and worker CPU per request of two wcluster binaries,
# interleaved: a listener shared by two tenants (every request for one host,
# and alternating hosts), and a listener with one default tenant (not routed).
# Each run: `wcluster serve --config` with 1 worker and the Go hello, then
# wrk -t1 -c64 -d5s. Usage: bench/routing.sh BIN_A BIN_B [ROUNDS]
# (from the repository root, after `make guests`).
set -u
A=$1 B=$2 ROUNDS=${3:-3}
G=$PWD/out/guests/go-hello.wasm
PORT=${PORT:-18931}
D=$(mktemp -d)
trap 'rm -rf $D' EXIT
tenant() { printf '[[tenant]]\nname = "%s"\nhandler = "%s"\nlisten = ["127.0.0.1:%s"]\n%s\n' "$1" "$G" "$PORT" "$2"; }
head="[cluster]
workers = 1
cache_dir = \"$D/cache\""
{ echo "$head"; tenant a 'hosts = ["a.test"]'; tenant b 'hosts = ["b.test"]'; } >$D/shared.toml
{ echo "$head"; tenant a ''; } >$D/single.toml
cat >$D/alt.lua <<'T'
local i = 0
request = function()
  i = i + 1
  if i % 2 == 0 then return wrk.format(nil, nil, {["Host"] = "a.test"}) end
  return wrk.format(nil, nil, {["Host"] = "b.test"})
end
T
cpu() { t=0; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $t; }
one() { # BIN CONFIG LABEL WRK-ARGS...
  bin=$1 cfg=$2 label=$3; shift 3
  while curl -s -o /dev/null http://127.0.0.1:$PORT/; do sleep 0.2; done
  $bin serve --config $D/$cfg >$D/serve.log 2>&1 &
  pid=$!
  for i in $(seq 200); do
    grep -q serving $D/serve.log && curl -s -o /dev/null -H "Host: a.test" http://127.0.0.1:$PORT/ && break
    sleep 0.1
  done
  pids="$pid $(pgrep -P $pid | tr '\n' ' ')"
  c0=$(cpu $pids)
  timeout 30 wrk -t1 -c64 -d5s "$@" http://127.0.0.1:$PORT/ >$D/wrk.out
  c1=$(cpu $pids)
  n=$(awk '/requests in/{print $1}' $D/wrk.out)
  rps=$(awk '/Requests\/sec/{print $2}' $D/wrk.out)
  bad=$(awk '/Non-2xx|Socket errors/' $D/wrk.out)
  echo "$label $bin req/s=$rps cpu-us/req=$(echo "scale=2; ($c1-$c0)*1000000/$(getconf CLK_TCK)/$n" | bc) load=$(cut -d' ' -f1 /proc/loadavg) $bad"
  kill $pid; wait $pid
}
for round in $(seq $ROUNDS); do
  for bin in $A $B; do
    one $bin shared.toml shared-same -H "Host: a.test"
    one $bin shared.toml shared-alternating -s $D/alt.lua
    one $bin single.toml single
  done
done
