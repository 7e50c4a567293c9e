#!/usr/bin/env bash
# Load benchmark of Rampart's downstream protocols, same run, same machine:
#   plaintext HTTP/1.1, HTTPS HTTP/1.1 and HTTP/2 over TLS (ALPN h2), each through a
#   release-built Rampart to one local HTTP/1.1 upstream (nginx returning a fixed 200),
#   plus nginx direct as the ceiling of this machine.
#
# Needs: wrk, h2load (Debian nghttp2-client), nginx (nginx-light), openssl.
#   apt-get install -y wrk nghttp2-client nginx-light
# Usage: benches/load_protocols.sh [RAMPART_BINARY] [DURATION_SECONDS] [CONNECTIONS]
# wrk gives p99 itself; for h2load, p99 is computed from its per-request log.
set -euo pipefail

BIN=${1:-target/release/rampart}
DUR=${2:-10}
CONNS=${3:-50}
WORK=$(mktemp -d /tmp/rampart-bench.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # bounded: 100 x 0.1 s
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
    echo "port $1 never opened" >&2; exit 1
}
p99_of_h2load_log() { # columns: start(us) status duration(us)
    sort -n -k3 "$1" | awk '{d[NR]=$3} END {i=int(NR*0.99); if (i<1) i=1; printf "%.2fms", d[i]/1000}'
}

UP=$(free_port); PLAIN=$(free_port); TLS=$(free_port); M1=$(free_port); M2=$(free_port)

mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $WORK/nginx;
    proxy_temp_path $WORK/nginx;
    fastcgi_temp_path $WORK/nginx;
    uwsgi_temp_path $WORK/nginx;
    scgi_temp_path $WORK/nginx;
    server { listen 127.0.0.1:$UP; location / { return 200 "ok\n"; } }
}
EOF
nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
PIDS+=($!)

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>/dev/null

for mode in plain tls; do
    if [ $mode = plain ]; then port=$PLAIN; mport=$M1; tls=""; else port=$TLS; mport=$M2; tls="tls: {cert_file: $WORK/tls.crt, key_file: $WORK/tls.key}"; fi
    cat >"$WORK/$mode.yaml" <<EOF
version: 1
listen: 127.0.0.1:$port
metrics_listen: 127.0.0.1:$mport
$tls
access_log: {sample: 0}
default_upstream: stable
upstreams:
  stable: {url: http://127.0.0.1:$UP}
  canary: {url: http://127.0.0.1:$UP}
routes:   # a real decision per request: match, identity (absent -> stable), split
  - name: bench
    identity: [header:x-user-id]
    split: [{backend: canary, percent: 10}]
EOF
    RUST_LOG=warn "$BIN" run -c "$WORK/$mode.yaml" 2>"$WORK/$mode.log" &
    PIDS+=($!)
done
wait_port "$UP"; wait_port "$PLAIN"; wait_port "$TLS"

echo "# $(nproc) cores, ${DUR}s per run, $CONNS connections; upstream nginx (1 worker) HTTP/1.1"
wrk_row() { # name url
    out=$(wrk -t1 -c"$CONNS" -d"${DUR}s" --latency "$2")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    errs=$(grep -E 'Non-2xx|Socket errors' <<<"$out" | tr '\n' ' ' || true)
    printf "%-46s %10s req/s  p99 %8s  %s\n" "$1" "$rps" "$p99" "$errs"
}
h2load_row() { # name log-name h2load-args...
    local name=$1 log="$WORK/$2.log"; shift 2
    out=$(h2load -D "$DUR" --log-file="$log" "$@" 2>&1)
    rps=$(awk '/^finished in/ {gsub(",","",$4); print $4}' <<<"$out")
    fails=$(awk '/^requests:/ {print $8, $9, $10, $11}' <<<"$out")
    printf "%-46s %10s req/s  p99 %8s  %s\n" "$name" "$rps" "$(p99_of_h2load_log "$log")" "$fails"
}

wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$PLAIN/" >/dev/null # warm-up
wrk_row "wrk    nginx direct, HTTP/1.1"              "http://127.0.0.1:$UP/"
wrk_row "wrk    rampart plaintext HTTP/1.1"          "http://127.0.0.1:$PLAIN/"
wrk_row "wrk    rampart HTTPS HTTP/1.1"              "https://localhost:$TLS/"
h2load_row "h2load rampart plaintext HTTP/1.1"       h1plain -t1 -c"$CONNS" --h1 "http://127.0.0.1:$PLAIN/"
h2load_row "h2load rampart HTTPS HTTP/1.1"           h1tls   -t1 -c"$CONNS" --h1 "https://localhost:$TLS/"
h2load_row "h2load rampart h2 TLS, 1 stream/conn"    h2tls1  -t1 -c"$CONNS" -m1 "https://localhost:$TLS/"
h2load_row "h2load rampart h2 TLS, 4 conns x $((CONNS / 4)) streams" h2tlsm -t1 -c4 -m$((CONNS / 4)) "https://localhost:$TLS/"
h2load_row "h2load rampart h2c, 1 stream/conn"       h2c1    -t1 -c"$CONNS" -m1 "http://127.0.0.1:$PLAIN/"
