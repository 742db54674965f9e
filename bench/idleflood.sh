#!/usr/bin/env bash
# The idle-connection flood of issue 13, item 1: 10,000 idle plus 1,000
# trickling connections (bench/idleflood) while a normal client is served,
# against `wcluster serve` (default flags, the embedded hello) and, if
# installed, nginx (2 workers, `return 200`, its default timeouts).
#
#   bench/idleflood.sh                 # both
#   TARGETS=wcluster IDLE=300 TRICKLE=200 bench/idleflood.sh
set -euo pipefail
cd "$(dirname "$0")/.."
IDLE=${IDLE:-10000}
TRICKLE=${TRICKLE:-1000}
REQUESTS=${REQUESTS:-3000}
TARGETS=${TARGETS:-wcluster nginx}
PORT=${PORT:-18090}
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
ulimit -n "$(ulimit -Hn)" # the servers and the flood hold 11,000 sockets each
go build -o "$tmp/wcluster" ./cmd/wcluster
go build -o "$tmp/idleflood" ./bench/idleflood

for target in $TARGETS; do
	case $target in
	wcluster)
		"$tmp/wcluster" serve --listen "127.0.0.1:$PORT" --workers 2 >"$tmp/wcluster.log" 2>&1 &
		;;
	nginx)
		command -v nginx >/dev/null || { echo "idleflood: nginx is not installed; skipped" >&2; continue; }
		mkdir -p "$tmp/nginx/logs"
		cat >"$tmp/nginx/nginx.conf" <<CONF
worker_processes 2;
worker_rlimit_nofile 20000;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/logs/error.log warn;
events { worker_connections 20000; }
http {
	access_log off;
	client_body_temp_path $tmp/nginx; proxy_temp_path $tmp/nginx; fastcgi_temp_path $tmp/nginx;
	uwsgi_temp_path $tmp/nginx; scgi_temp_path $tmp/nginx;
	server {
		listen 127.0.0.1:$PORT;
		location / { default_type text/plain; return 200 "hello world\n"; }
	}
}
CONF
		nginx -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -g 'daemon off;' &
		;;
	*)
		echo "idleflood: unknown target $target" >&2
		exit 2
		;;
	esac
	server=$!
	echo "== $target: $IDLE idle + $TRICKLE trickling connections"
	"$tmp/idleflood" -addr "127.0.0.1:$PORT" -idle "$IDLE" -trickle "$TRICKLE" -requests "$REQUESTS"
	kill "$server"
	wait "$server" 2>/dev/null || true
	PORT=$((PORT + 1))
done
