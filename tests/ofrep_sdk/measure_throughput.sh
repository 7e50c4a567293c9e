#!/usr/bin/env bash
# Measures (never asserts) what one core sustains: OFREP single-flag evaluations per second
# over HTTP/1.1 keep-alive, against the proxy's own requests per second, in the same run
# (docs/ofrep.md#cost). Not run by pytest or CI.
#
# Rampart (release, threads: 1) is pinned to CPU 0; wrk (one thread, 64 keep-alive
# connections, a fresh random identity per request) and the nginx upstream to CPU 1. Besides
# wrk's req/s it reports Rampart's CPU time per request (utime + stime from /proc, after
# minus before), so the per-core figure holds even when CPU 1 is the bottleneck.
#
#   tests/ofrep_sdk/measure_throughput.sh [ROUNDS] [SECONDS]
# Needs: wrk and nginx (apt-get install wrk nginx-light), a release build
# (cargo build --release --bin rampart), 2 CPUs. RAMPART_BIN overrides the binary.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
seconds=${2:-10}
bin=${RAMPART_BIN:-${CARGO_TARGET_DIR:-target}/release/rampart}
work=$(mktemp -d /tmp/rampart-ofrep-measure.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up_s=$(port); up_c=$(port); listen=$(port); metrics=$(port); ofrep=$(port)

mkdir -p "$work/nginx"
cat > "$work/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/nginx/b; proxy_temp_path $work/nginx/p;
    fastcgi_temp_path $work/nginx/f; uwsgi_temp_path $work/nginx/u; scgi_temp_path $work/nginx/s;
    keepalive_requests 100000000; keepalive_timeout 600s; default_type text/plain;
    server { listen 127.0.0.1:$up_s; location / { return 200 "stable\n"; } }
    server { listen 127.0.0.1:$up_c; location / { return 200 "canary\n"; } }
}
CONF
taskset -c 1 nginx -c "$work/nginx.conf" -p "$work" 2>/dev/null &
pids+=($!)

cat > "$work/rampart.yaml" <<CONF
version: 1
listen: 127.0.0.1:$listen
metrics_listen: 127.0.0.1:$metrics
ofrep_listen: 127.0.0.1:$ofrep
threads: 1
default_upstream: stable
upstreams:
  stable: {url: "http://127.0.0.1:$up_s"}
  canary: {url: "http://127.0.0.1:$up_c"}
routes:
  - name: checkout
    match: {path_prefix: /checkout}
    identity: [header:x-user-id]
    split: [{backend: canary, percent: 10}]
    overrides:
      identities: {canary: [qa-alice]}
      headers: [{name: x-employee, value: "true", backend: canary}]
    breaker: {window: 30s, min_requests: 20, max_error_rate: 0.05}
CONF
taskset -c 0 "$bin" run -c "$work/rampart.yaml" 2>"$work/rampart.log" &
rpid=$!
pids+=($rpid)
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$metrics/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fs -XPOST "http://127.0.0.1:$ofrep/ofrep/v1/evaluate/flags/checkout" -d '{"context":{"targetingKey":"probe"}}' >/dev/null

cat > "$work/proxy.lua" <<'LUA'
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/checkout", {["x-user-id"] = "u" .. math.random(1, 100000000)})
end
LUA
cat > "$work/ofrep.lua" <<'LUA'
math.randomseed(os.time() + 1)
request = function()
  local body = '{"context":{"targetingKey":"u' .. math.random(1, 100000000) .. '"}}'
  return wrk.format("POST", "/ofrep/v1/evaluate/flags/checkout",
    {["content-type"] = "application/json"}, body)
end
LUA

cpu_ticks() { awk '{print $14 + $15}' "/proc/$rpid/stat"; }
tck=$(getconf CLK_TCK)
run() { # name url script
    taskset -c 1 wrk -t1 -c64 -d2s -s "$work/$3" "$2" >/dev/null
    local before after out reqs rps
    before=$(cpu_ticks)
    out=$(taskset -c 1 wrk -t1 -c64 -d"${seconds}s" --latency -s "$work/$3" "$2")
    after=$(cpu_ticks)
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
    errs=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
    python3 -c "
ticks = $after - $before; reqs = $reqs
cpu_us = ticks / $tck / reqs * 1e6
print(f'$1: {float($rps):9.0f} req/s (wrk)   p99 $p99   Rampart CPU {cpu_us:6.2f} us/req -> {1e6/cpu_us:8.0f} req/s per core   non-2xx ${errs:-0}')"
}
load=$(cut -d' ' -f1-3 /proc/loadavg)
echo "load average at start: $load"
for r in $(seq "$rounds"); do
    echo "-- round $r"
    run proxy "http://127.0.0.1:$listen" proxy.lua
    run ofrep "http://127.0.0.1:$ofrep" ofrep.lua
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
