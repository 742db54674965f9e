#!/usr/bin/env bash
# TLS on loopback, wcluster beside nginx, unpinned, ROUNDS interleaved
# rounds (order rotated per round), all servers running at once, each with
# 2 workers, one RSA-2048 certificate, "hello world" answers:
#
#   wcluster   a config with a plaintext tenant and a TLS tenant, both on
#              the embedded hello handler, in one worker group
#   nginx      the same two servers (return 200), its default TLS settings
#
# Per round and server:
#   keepalive  wrk -t1 -cCONNS over TLS, keep-alive
#   newconn    the same with Connection: close (a handshake per request;
#              wrk resumes sessions where the server lets it)
#   flood      the plaintext server's p99 (wrk -t1 -c16 --latency) alone,
#              then while bench/tlsflood makes full handshakes (no
#              resumption) on 64 connections at the TLS port
# Prints raw rows, per-round ratios wcluster/nginx, the flood's p99
# loaded/unloaded per server, and medians.
#
#   bench/tls.sh                          # ROUNDS=3 DURATION=8s
#   ROUNDS=1 DURATION=3s bench/tls.sh     # quick check
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8s}
CONNS=${CONNS:-64}
PORT_BASE=${PORT_BASE:-19600}
for tool in wrk nginx openssl; do
	command -v $tool >/dev/null || { echo "bench: $tool is missing (scripts/deps.sh installs it)" >&2; exit 3; }
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

go build -o "$out/wcluster" ./cmd/wcluster
go build -o "$out/tlsflood" ./bench/tlsflood
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$out/key.pem" -out "$out/cert.pem" -days 2 \
	-subj /CN=localhost -addext subjectAltName=DNS:localhost 2>/dev/null
cp guests/embedded/hello.wasm "$out/hello.wasm"

declare -A plain tls
plain[wcluster]=$((PORT_BASE + 1)) tls[wcluster]=$((PORT_BASE + 2))
plain[nginx]=$((PORT_BASE + 3)) tls[nginx]=$((PORT_BASE + 4))
cat >"$out/wcluster.toml" <<CONF
[cluster]
workers = 2
cache_dir = "$out/cache"
[[tenant]]
name = "plain"
handler = "hello.wasm"
listen = ["127.0.0.1:${plain[wcluster]}"]
[[tenant]]
name = "secure"
handler = "hello.wasm"
listen = ["127.0.0.1:${tls[wcluster]}"]
tls = { cert = "cert.pem", key = "key.pem" }
CONF
mkdir -p "$out/nginx/logs"
cat >"$out/nginx/nginx.conf" <<CONF
worker_processes 2;
pid $out/nginx/nginx.pid;
error_log $out/nginx/logs/error.log crit;
events { worker_connections 4096; }
http {
	access_log off;
	client_body_temp_path $out/nginx; proxy_temp_path $out/nginx; fastcgi_temp_path $out/nginx;
	uwsgi_temp_path $out/nginx; scgi_temp_path $out/nginx;
	keepalive_requests 1000000;
	server {
		listen 127.0.0.1:${plain[nginx]};
		location / { default_type text/plain; return 200 "hello world\n"; }
	}
	server {
		listen 127.0.0.1:${tls[nginx]} ssl;
		ssl_certificate $out/cert.pem;
		ssl_certificate_key $out/key.pem;
		ssl_protocols TLSv1.2 TLSv1.3; # what wcluster offers (1.22 leaves 1.3 out by default)
		location / { default_type text/plain; return 200 "hello world\n"; }
	}
}
CONF
start() { # NAME CMD...
	local name=$1
	shift
	setsid "$@" </dev/null >>"$out/$name.log" 2>&1 &
	pids+=("$!")
}
start wcluster "$out/wcluster" serve --config "$out/wcluster.toml"
start nginx nginx -p "$out/nginx" -c "$out/nginx/nginx.conf" -g 'daemon off;'
servers=(wcluster nginx)
for name in "${servers[@]}"; do
	for _ in $(seq 1 600); do
		curl -sk -m 2 -o /dev/null "https://127.0.0.1:${tls[$name]}/" && curl -s -m 2 -o /dev/null "http://127.0.0.1:${plain[$name]}/" && break
		sleep 0.05 # poll interval, not a synchronisation
	done
	curl -sk -m 2 "https://127.0.0.1:${tls[$name]}/" | grep -q "hello world" || { echo "bench: $name not serving" >&2; cat "$out/$name.log" >&2; exit 1; }
done

ms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'; }
declare -A r
echo "round server mode req/s p99 load1"
for round in $(seq 1 "$ROUNDS"); do
	order=()
	for i in "${!servers[@]}"; do order+=("${servers[$(((i + round) % ${#servers[@]}))]}"); done
	for name in "${order[@]}"; do
		for mode in keepalive newconn; do
			hdr=()
			[ "$mode" = newconn ] && hdr=(-H "Connection: close")
			res=$(wrk -t1 -c"$CONNS" -d"$DURATION" --latency "${hdr[@]}" "https://127.0.0.1:${tls[$name]}/")
			v=$(awk '/Requests\/sec/ {print $2}' <<<"$res")
			r[$round.$name.$mode]=$v
			echo "$round $name $mode $v $(awk '$1=="99%" {print $2}' <<<"$res") $(cut -d' ' -f1 /proc/loadavg)"
		done
	done
	# The floods last, each after the throughput of every server: what a
	# flood leaves behind (sockets closing, backlogs) does not meet them.
	for name in "${order[@]}"; do
		res=$(wrk -t1 -c16 -d"$DURATION" --latency "http://127.0.0.1:${plain[$name]}/")
		quiet=$(ms "$(awk '$1=="99%" {print $2}' <<<"$res")")
		"$out/tlsflood" -addr "127.0.0.1:${tls[$name]}" -conns 64 -for "$(( ${DURATION%s} + 2 ))s" >"$out/flood.txt" &
		flood=$!
		sleep 1 # the flood under way before measuring (not a synchronisation)
		res=$(wrk -t1 -c16 -d"$DURATION" --latency "http://127.0.0.1:${plain[$name]}/")
		wait "$flood" || true
		loud=$(ms "$(awk '$1=="99%" {print $2}' <<<"$res")")
		r[$round.$name.flood]=$(awk -v a="$loud" -v b="$quiet" 'BEGIN {printf "%.2f", a/b}')
		echo "$round $name flood plain-p99 ${quiet}ms→${loud}ms (x${r[$round.$name.flood]}), plain $(awk '/Requests\/sec/ {print $2}' <<<"$res") req/s, $(cat "$out/flood.txt")"
		sleep 2 # let the flood's sockets close before the next measurement
	done
done
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
ka=() nc=() fw=() fn=()
echo "round keepalive-wcluster/nginx newconn-wcluster/nginx flood-p99x-wcluster flood-p99x-nginx"
for round in $(seq 1 "$ROUNDS"); do
	a=$(awk -v x="${r[$round.wcluster.keepalive]}" -v y="${r[$round.nginx.keepalive]}" 'BEGIN {printf "%.2f", x/y}')
	b=$(awk -v x="${r[$round.wcluster.newconn]}" -v y="${r[$round.nginx.newconn]}" 'BEGIN {printf "%.2f", x/y}')
	ka+=("$a") nc+=("$b") fw+=("${r[$round.wcluster.flood]}") fn+=("${r[$round.nginx.flood]}")
	echo "$round $a $b ${r[$round.wcluster.flood]} ${r[$round.nginx.flood]}"
done
echo "median keepalive $(median "${ka[@]}")x, newconn $(median "${nc[@]}")x nginx; flood p99 loaded/unloaded: wcluster $(median "${fw[@]}")x, nginx $(median "${fn[@]}")x"
