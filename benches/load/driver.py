#!/usr/bin/env python3
"""Rampart's load benchmark driver (see benches/README.md; start it with benches/load/run.sh).

Starts one upstream (nginx serving a static 200 on two ports, "stable" and "canary") and six
targets, then measures them in ONE interleaved run (A, B, C, D, E, F, A, B, ...) on loopback:
the target under test pinned to CPU 0, wrk and the upstream pinned to CPU 1. Every request
carries a random `x-user-id`; every proxy sends 10 % of identities to the canary port.

Per run it reads the target's CPU time (utime + stime of every process of the target, from
/proc/PID/stat) before and after, so CPU per request holds even when wrk is the bottleneck,
and samples VmRSS during the run. The table of medians over the rounds is written to
docs/PERFORMANCE.md between the `load-bench` markers (the rest of the file is kept).

Every loop here is bounded: rounds, waits and polls all have a limit.
"""

import argparse
import datetime
import json
import os
import platform
import random
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import http.client

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CLK_TCK = os.sysconf("SC_CLK_TCK")
BEGIN = "<!-- load-bench:begin (written by benches/load/run.sh; edits inside are overwritten) -->"
END = "<!-- load-bench:end -->"

TARGET_CPU = "0"
LOADGEN_CPU = "1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def proc_table():
    """{pid: ppid} of every process now."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        table[int(entry)] = int(fields[1])
    return table


def family(pid):
    """`pid` and all its descendants (nginx's master and workers, for example)."""
    table = proc_table()
    out, todo = [], [pid]
    for _ in range(10000):
        if not todo:
            break
        p = todo.pop()
        if p in table or p == pid:
            out.append(p)
            todo.extend(c for c, parent in table.items() if parent == p)
    return out


def cpu_ticks(pids):
    """Sum of utime + stime (clock ticks) over `pids`; all threads are included."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        # After "(comm)": state is field 3, so utime (14) and stime (15) are at 11 and 12.
        total += int(fields[11]) + int(fields[12])
    return total


def memory_kib(pids):
    """(VmRSS, VmHWM) in KiB summed over `pids`."""
    rss = hwm = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                    elif line.startswith("VmHWM:"):
                        hwm += int(line.split()[1])
        except OSError:
            continue
    return rss, hwm


class Proc:
    """A process this driver started, in its own process group, stopped by its id."""

    def __init__(self, name, cmd, workdir, cpu, env=None):
        self.name = name
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.log = open(self.log_path, "wb")
        full = ["taskset", "-c", cpu] + cmd
        self.popen = subprocess.Popen(
            full,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )

    def pids(self):
        return family(self.popen.pid)

    def alive(self):
        return self.popen.poll() is None

    def stop(self):
        if self.alive():
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        self.log.close()


# ----------------------------------------------------------------------------- configs

def upstream_conf(workdir, stable_port, canary_port):
    return f"""
worker_processes 1;
daemon off;
pid {workdir}/upstream.pid;
error_log {workdir}/upstream-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/u_body;
    proxy_temp_path {workdir}/u_proxy;
    fastcgi_temp_path {workdir}/u_fcgi;
    uwsgi_temp_path {workdir}/u_uwsgi;
    scgi_temp_path {workdir}/u_scgi;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    default_type text/plain;
    server {{ listen 127.0.0.1:{stable_port}; location / {{ return 200 "stable\\n"; }} }}
    server {{ listen 127.0.0.1:{canary_port}; location / {{ return 200 "canary\\n"; }} }}
}}
"""


def nginx_conf(workdir, port, stable_port, canary_port, name="nginx", keepalive_timeout="600s",
               worker_connections=4096):
    return f"""
worker_processes 1;
daemon off;
pid {workdir}/{name}.pid;
error_log {workdir}/{name}-error.log warn;
events {{ worker_connections {worker_connections}; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/{name}_body;
    proxy_temp_path {workdir}/{name}_proxy;
    fastcgi_temp_path {workdir}/{name}_fcgi;
    uwsgi_temp_path {workdir}/{name}_uwsgi;
    scgi_temp_path {workdir}/{name}_scgi;
    keepalive_requests 100000000;
    keepalive_timeout {keepalive_timeout};
    split_clients "${{http_x_user_id}}" $pool {{
        10%   canary;
        *     stable;
    }}
    upstream stable {{
        server 127.0.0.1:{stable_port};
        keepalive 128;
        keepalive_requests 100000000;
        keepalive_timeout 600s;
    }}
    upstream canary {{
        server 127.0.0.1:{canary_port};
        keepalive 128;
        keepalive_requests 100000000;
        keepalive_timeout 600s;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://$pool;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
        }}
    }}
}}
"""


def haproxy_conf(port, stable_port, canary_port, maxconn=4000, client_timeout="30s", keepalive_timeout="600s"):
    # HAProxy wants two descriptors per connection it may hold (client and server side) and by
    # default refuses to start when it cannot raise the open-files limit that far; idle client
    # connections hold one each, so the idle benchmark runs it with `no strict-limits`.
    limits = "\n    no strict-limits" if maxconn > 4000 else ""
    return f"""
global
    nbthread 1
    maxconn {maxconn}{limits}

defaults
    mode http
    timeout connect 1s
    timeout client {client_timeout}
    timeout server 30s
    timeout http-keep-alive {keepalive_timeout}
    option http-keep-alive
    http-reuse always

frontend bench
    bind 127.0.0.1:{port}
    http-request set-var(txn.bucket) req.hdr(x-user-id),xxh32,mod(100)
    use_backend canary if {{ var(txn.bucket) -m int lt 10 }}
    default_backend stable

backend stable
    server stable 127.0.0.1:{stable_port}

backend canary
    server canary 127.0.0.1:{canary_port}
"""


# For the idle-connections benchmark: as nginx's `keepalive_timeout 300s` and HAProxy's
# `timeout http-keep-alive 300s`, an idle keep-alive connection lives 300 s (Rampart closes it
# after `keepalive_timeout`, 75 s by default), and the cap is above the largest count measured
# (by default it is (open-file limit - 128) / 2, below 10,000 with a limit of 20,000).
IDLE_LIMITS = """limits:
  max_connections: 16000
  keepalive_timeout: 300s
"""
# The same for a binary from before `keepalive_timeout`, whose `header_timeout` also closed
# idle keep-alive connections.
IDLE_LIMITS_BEFORE_KEEPALIVE = """limits:
  max_connections: 16000
  header_timeout: 300s
"""


def rampart_conf(port, metrics_port, stable_port, canary_port, limits=""):
    return f"""version: 1
listen: 127.0.0.1:{port}
metrics_listen: 127.0.0.1:{metrics_port}
threads: 1
default_upstream: stable
{limits}upstreams:
  stable:
    url: http://127.0.0.1:{stable_port}
  canary:
    url: http://127.0.0.1:{canary_port}
routes:
  - name: bench
    identity: [header:x-user-id]
    stable: stable
    split:
      - {{backend: canary, percent: 10}}
    breaker:
      window: 30s
      min_requests: 20
      max_error_rate: 0.05
      consecutive_errors: 5
      max_latency: {{quantile: 0.99, threshold: 800ms}}
      open_for: 30s
      half_open_requests: 5
"""


WRK_LUA = r"""
-- A random identity per request, in one cheap string build (wrk.format per request
-- would make the load generator the bottleneck sooner).
local prefix = "GET / HTTP/1.1\r\nHost: bench\r\nx-user-id: u"
function init(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
end
function request()
  return prefix .. math.random(1, 1000000000) .. "\r\n\r\n"
end
function done(summary, latency, requests)
  io.write(string.format(
    "JSON {\"requests\":%d,\"duration_us\":%d,\"p50_us\":%d,\"p99_us\":%d,\"mean_us\":%f," ..
    "\"status_errors\":%d,\"connect_errors\":%d,\"read_errors\":%d,\"write_errors\":%d,\"timeouts\":%d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.mean,
    summary.errors.status, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout))
end
"""


# ----------------------------------------------------------------------------- measuring

def run_wrk(port, lua, connections, seconds):
    cmd = [
        "taskset", "-c", LOADGEN_CPU, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
        "--timeout", "2s", "-s", lua, f"http://127.0.0.1:{port}/",
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def parse_wrk(output):
    for line in output.splitlines():
        if line.startswith("JSON "):
            return json.loads(line[5:])
    raise RuntimeError(f"wrk printed no summary:\n{output}")


def measure(target, lua, connections, seconds):
    pids = target["proc"].pids()
    before = cpu_ticks(pids)
    t0 = time.monotonic()
    wrk = run_wrk(target["port"], lua, connections, seconds)
    rss_samples = []
    # Sample memory under load once a second, from the second second on.
    for _ in range(int(seconds) + 30):
        try:
            wrk.wait(timeout=1.0)
            break
        except subprocess.TimeoutExpired:
            if time.monotonic() - t0 >= 1.0:
                rss_samples.append(memory_kib(target["proc"].pids())[0])
    output, _ = wrk.communicate(timeout=30)
    wall = time.monotonic() - t0
    after = cpu_ticks(target["proc"].pids())
    w = parse_wrk(output)
    requests = max(w["requests"], 1)
    cpu_s = (after - before) / CLK_TCK
    _, hwm = memory_kib(target["proc"].pids())
    return {
        "rps": w["requests"] / (w["duration_us"] / 1e6),
        "p50_ms": w["p50_us"] / 1000.0,
        "p99_ms": w["p99_us"] / 1000.0,
        "cpu_us_per_req": cpu_s * 1e6 / requests,
        "cpu_busy": cpu_s / wall,
        "rss_mib": (max(rss_samples) if rss_samples else memory_kib(target["proc"].pids())[0]) / 1024.0,
        "hwm_mib": hwm / 1024.0,
        "requests": w["requests"],
        "load1": os.getloadavg()[0],
        "errors": w["status_errors"] + w["connect_errors"] + w["read_errors"] + w["write_errors"] + w["timeouts"],
    }


def check_split(port, n=1000):
    """Sends `n` requests with random identities; returns (share of canary answers, non-200s)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    canary = bad = 0
    for _ in range(n):
        conn.request("GET", "/", headers={"x-user-id": f"u{random.randint(1, 10**9)}", "host": "bench"})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            bad += 1
        elif body.startswith(b"canary"):
            canary += 1
    conn.close()
    return canary / n, bad


# ----------------------------------------------------------------------------- connections

CONNS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conns.py")


def ss_lines(args):
    p = subprocess.run(["ss", "-Htn", *args], capture_output=True, text=True, timeout=120)
    return [line for line in p.stdout.splitlines() if line.strip()]


def server_connections(port):
    """Established connections the listener on `port` holds (its own side of each)."""
    return len(ss_lines(["state", "established", f"( sport = :{port} )"]))


def upstream_connections(pids, upstream_ports):
    """Established connections that any of `pids` holds to one of `upstream_ports`."""
    flt = "( " + " or ".join(f"dport = :{p}" for p in upstream_ports) + " )"
    wanted = set(pids)
    count = 0
    for line in ss_lines(["-p", "state", "established", flt]):
        if any(int(p) in wanted for p in re.findall(r"pid=(\d+)", line)):
            count += 1
    return count


class ConnsClient:
    """benches/load/conns.py in a process of its own, pinned beside wrk; JSON lines out."""

    def __init__(self, mode, port, count, parallel):
        cmd = ["taskset", "-c", LOADGEN_CPU, sys.executable, CONNS, mode, "--port", str(port),
               "--count", str(count), "--parallel", str(parallel)]
        self.popen = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, start_new_session=True)

    def event(self, timeout):
        ready, _, _ = select.select([self.popen.stdout], [], [], timeout)
        if not ready:
            raise RuntimeError(f"conns.py said nothing for {timeout} s")
        line = self.popen.stdout.readline()
        if not line:
            err = self.popen.stderr.read() if self.popen.poll() is not None else ""
            raise RuntimeError(f"conns.py exited early: {err.strip()[-2000:]}")
        return json.loads(line)

    def send(self, command):
        self.popen.stdin.write(command + "\n")
        self.popen.stdin.flush()

    def stop(self):
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)


def burst(target, upstream_ports, count, settle):
    """Upstream connections the target holds before, during (sampled) and after `count`
    concurrent requests, each on its own client connection."""
    pids = target["proc"].pids()
    before = upstream_connections(pids, upstream_ports)
    client = ConnsClient("burst", target["port"], count, parallel=500)
    peak = before
    try:
        for _ in range(1200):  # at most ~5 minutes of sampling
            if client.popen.poll() is not None:
                break
            peak = max(peak, upstream_connections(pids, upstream_ports))
            time.sleep(0.1)
        outcome = client.event(timeout=60)
    finally:
        client.stop()
    time.sleep(1.0)
    after_1s = upstream_connections(pids, upstream_ports)
    peak = max(peak, after_1s)
    time.sleep(max(settle - 1.0, 0))
    after_settle = upstream_connections(pids, upstream_ports)
    return {"before": before, "peak": peak, "after_1s": after_1s, "after_settle": after_settle,
            "settle_s": settle, "ok": outcome.get("ok", 0), "failed": outcome.get("failed", 0),
            "connect_errors": outcome.get("connect_errors", 0),
            "request_seconds": outcome.get("request_seconds"), "load1": os.getloadavg()[0]}


def idle_connections(spec, counts, settle, log):
    """Starts a fresh target, warms it with 1000 requests, then for each N in `counts`: opens N
    keep-alive connections that each sent one request, reads the target's RSS and how many it
    still holds, closes them all and reads the RSS again."""
    proc = spec["start"]()
    port = spec["port"]
    try:
        if not wait_port(port):
            raise RuntimeError(f"{spec['label']} did not start; see {proc.log_path}")
        _, bad = check_split(port)
        if bad:
            raise RuntimeError(f"{spec['label']} failed {bad} warm-up requests; see {proc.log_path}")
        time.sleep(settle)
        idle_kib = memory_kib(proc.pids())[0]
        out = {"key": spec["key"], "label": spec["label"], "idle_kib": idle_kib, "counts": []}
        for n in counts:
            client = ConnsClient("idle", port, n, parallel=200)
            try:
                ready = client.event(timeout=900)
                time.sleep(settle)
                held = server_connections(port)
                rss = memory_kib(proc.pids())[0]
                client.send("check")
                check = client.event(timeout=120)
                client.send("close")
                closed = client.event(timeout=300)
            finally:
                client.stop()
            for _ in range(120):  # the target lets go of them: at most ~60 s
                if server_connections(port) == 0:
                    break
                time.sleep(0.5)
            time.sleep(settle)
            after = memory_kib(proc.pids())[0]
            row = {"n": n, "opened": ready["opened"], "ok": ready["ok"], "failed": ready["failed"],
                   "open_seconds": ready["seconds"], "held": held, "client_open": check["open"],
                   "rss_kib": rss, "after_close_kib": after, "load1": os.getloadavg()[0],
                   "kib_per_conn": (rss - idle_kib) / held if held else float("nan")}
            out["counts"].append(row)
            log(f"idle {spec['key']}. {spec['label']}: {n} connections opened in {ready['seconds']} s "
                f"({ready['failed']} failed), held {held}, RSS {idle_kib / 1024:.1f} -> {rss / 1024:.1f} MiB "
                f"({row['kib_per_conn']:.2f} KiB per connection), after close {after / 1024:.1f} MiB")
        return out
    finally:
        proc.stop()


def wait_quiet(max_load, max_wait, interval):
    """Waits (bounded) until the 1-minute load average is below `max_load`."""
    start = time.monotonic()
    for _ in range(int(max_wait / interval) + 1):
        load1 = os.getloadavg()[0]
        if load1 < max_load:
            return True, time.monotonic() - start
        if time.monotonic() - start >= max_wait:
            break
        print(f"  load average {load1:.2f} >= {max_load}; waiting ({int(time.monotonic() - start)} s so far)", flush=True)
        time.sleep(interval)
    return False, time.monotonic() - start


# ----------------------------------------------------------------------------- reporting

def cmd_out(cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (p.stdout + p.stderr).strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def lock_version(lock, name):
    try:
        with open(lock) as f:
            text = f.read()
    except OSError:
        return "?"
    m = re.search(r'\[\[package\]\]\nname = "' + re.escape(name) + r'"\nversion = "([^"]+)"', text)
    return m.group(1) if m else "?"


def machine():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(), "memory": mem}


def versions():
    git = cmd_out(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    dirty = cmd_out(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"])
    lock = os.path.join(ROOT, "Cargo.lock")
    peers_lock = os.path.join(ROOT, "benches", "peers", "Cargo.lock")
    haproxy = cmd_out(["haproxy", "-v"]).splitlines()[0:1]
    wrk = cmd_out(["wrk", "-v"]).splitlines()[0:1]
    return {
        "Rampart": f"{git}{' + uncommitted changes' if dirty and dirty != '?' else ''}",
        "rustc": cmd_out(["rustc", "-V"]).replace("rustc ", ""),
        "hyper / hyper-util / tokio (Rampart)": " / ".join(
            lock_version(lock, n) for n in ("hyper", "hyper-util", "tokio")),
        "hyper / hyper-util (bare hyper)": " / ".join(
            lock_version(peers_lock, n) for n in ("hyper", "hyper-util")),
        "pingora": lock_version(peers_lock, "pingora"),
        "nginx": cmd_out(["nginx", "-v"]).replace("nginx version: nginx/", ""),
        "HAProxy": (haproxy[0].replace("HAProxy version ", "").split(" ")[0] if haproxy else "?"),
        "wrk": (wrk[0].replace("wrk ", "").split(" [")[0] if wrk else "?"),
    }


def fmt(x, digits=2):
    return f"{x:.{digits}f}"


def spread(runs, key, scale=1.0, digits=2):
    """`min-max` of `key` over the rounds (empty with one round)."""
    if len(runs) < 2:
        return ""
    lo, hi = min(r[key] for r in runs) * scale, max(r[key] for r in runs) * scale
    return f" ({lo:.{digits}f}-{hi:.{digits}f})"


def medians(runs):
    return {k: statistics.median(r[k] for r in runs)
            for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "cpu_busy", "rss_mib", "hwm_mib")}


def render(args, targets, results, low, bursts, idle, meta):
    lines = [BEGIN, ""]
    lines.append(f"## Load benchmark: {meta['date']}")
    lines.append("")
    m = meta["machine"]
    lines.append(f"- Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']}, Linux {m['kernel']}; "
                 "shared with other work (see the load averages).")
    la = meta["load"]
    lines.append(f"- Load average (1/5/15 min) at the start: {la['start']}; after the rounds: "
                 f"{la.get('rounds_end', la['end'])}; at the end: {la['end']}. "
                 + ("The machine was quiet (1-min load < "
                    f"{args.max_load}) when the run started."
                    if meta["quiet"] else
                    f"**The machine never got quiet** (1-min load stayed >= {args.max_load} for "
                    f"{int(meta['waited'])} s), so the run went ahead anyway: absolute figures are "
                    "noisier than usual; ratios measured in the same interleaved run hold better."))
    lines.append(f"- Method: {args.rounds} interleaved rounds ({', '.join(t['key'] for t in targets)}, then again), "
                 f"each run {args.duration} s after a {args.warmup} s warm-up, {args.connections} connections, "
                 "wrk `-t1` with a random `x-user-id` per request"
                 + (f"; right after each, the low-load run of the same target: 1 connection "
                    f"(`wrk -t1 -c1`, requests one after another), {args.low_load_duration} s after a "
                    f"{args.warmup} s warm-up" if args.low_load_duration else "")
                 + f". Target pinned to CPU {TARGET_CPU}, wrk, the upstream and the connection "
                 f"clients to CPU {LOADGEN_CPU} (`taskset`). Figures are the medians over the rounds; "
                 "in brackets the lowest and highest round.")
    lines.append("- CPU per request: utime + stime of every process of the target (`/proc/PID/stat`), "
                 "after minus before the run, divided by the requests wrk completed. `CPU busy` is that "
                 "CPU time over the run's wall time (1.0 = CPU 0 saturated). RSS: the largest VmRSS "
                 "sampled once a second under load (all processes of the target); peak is VmHWM.")
    lines.append("- Versions: " + "; ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".")
    lines.append("")
    lines.append(f"### {args.connections} connections")
    lines.append("")
    lines.append("| target | req/s | p50 ms | p99 ms | CPU µs/req | CPU busy | RSS under load MiB | peak RSS MiB | canary share | errors |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    med, med_low = {}, {}
    for t in targets:
        runs = results[t["key"]]
        med[t["key"]] = d = medians(runs)
        errors = sum(r["errors"] for r in runs)
        share = t.get("canary_share")
        lines.append(
            f"| {t['key']}. {t['label']} | {d['rps']:,.0f} | {fmt(d['p50_ms'], 3)} | {fmt(d['p99_ms'], 3)}{spread(runs, 'p99_ms', digits=3)} | "
            f"{fmt(d['cpu_us_per_req'])}{spread(runs, 'cpu_us_per_req')} | {fmt(d['cpu_busy'])} | {fmt(d['rss_mib'], 1)} | {fmt(d['hwm_mib'], 1)} | "
            f"{'—' if share is None else f'{share * 100:.1f} %'} | {errors} |")
    lines.append("")
    if args.low_load_duration:
        lines.append("### Low load: 1 connection, requests one after another")
        lines.append("")
        lines.append("| target | req/s | p50 µs | p99 µs | CPU µs/req | CPU busy | errors |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|")
        for t in targets:
            runs = low[t["key"]]
            if not runs:
                continue
            med_low[t["key"]] = d = medians(runs)
            lines.append(f"| {t['key']}. {t['label']} | {d['rps']:,.0f} | {d['p50_ms'] * 1000:.0f} | "
                         f"{d['p99_ms'] * 1000:.0f}{spread(runs, 'p99_ms', 1000, 0)} | "
                         f"{fmt(d['cpu_us_per_req'])}{spread(runs, 'cpu_us_per_req')} | {fmt(d['cpu_busy'])} | "
                         f"{sum(r['errors'] for r in runs)} |")
        lines.append("")
    ramparts = [t for t in targets if t["key"] >= "F"]
    if ramparts:
        lines.append("### Rampart against its peers (same run)")
        lines.append("")
        head = f"| ratio | CPU per request ({args.connections} conn.) | p99 ({args.connections} conn.) |"
        rule = "|---|---:|---:|"
        if med_low:
            head += " CPU per request (1 conn.) | p50 (1 conn.) | p99 (1 conn.) |"
            rule += "---:|---:|---:|"
        lines.append(head)
        lines.append(rule)
        for r in ramparts:
            for key, name in (("B", "nginx"), ("C", "HAProxy"), ("D", "bare hyper"), ("E", "bare pingora")):
                if key not in med:
                    continue
                a, p = med[r["key"]], med[key]
                row = (f"| {r['key']}. {r['label']} / {name} | {a['cpu_us_per_req'] / p['cpu_us_per_req']:.2f} | "
                       f"{a['p99_ms'] / p['p99_ms']:.2f} |")
                if med_low:
                    al, pl = med_low[r["key"]], med_low[key]
                    row += (f" {al['cpu_us_per_req'] / pl['cpu_us_per_req']:.2f} | {al['p50_ms'] / pl['p50_ms']:.2f} | "
                            f"{al['p99_ms'] / pl['p99_ms']:.2f} |")
                lines.append(row)
        lines.append("")
    if bursts:
        lines.append(f"### Upstream connections after a burst of {args.burst:,} concurrent requests")
        lines.append("")
        lines.append(f"{args.burst:,} client connections are opened first, then one request is sent on each "
                     "at the same moment; the count is of established connections from the target's "
                     "processes to the two upstream ports (`ss -tnp`), before, sampled during (every "
                     "~0.1 s, so a lower bound of the peak), 1 s after the last answer and "
                     f"{args.burst_settle:.0f} s after it. Configured bounds: nginx `keepalive 128` per "
                     "upstream block; Rampart's default `pool: {max_idle: 128, idle_timeout: 90s}` per "
                     "upstream; HAProxy `http-reuse always` (no idle cap set); bare hyper: hyper-util's "
                     "pool defaults (no idle cap, 90 s idle timeout). Two upstreams, so 256 is the cap.")
        lines.append("")
        lines.append(f"| target | answers 200 | failed | burst s | before | peak seen | after 1 s | "
                     f"after {args.burst_settle:.0f} s | load (1 min) |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for t in targets:
            b = bursts.get(t["key"])
            if b:
                lines.append(f"| {t['key']}. {t['label']} | {b['ok']} | {b['failed'] + b['connect_errors']} | "
                             f"{b['request_seconds']} | {b['before']} | {b['peak']} | {b['after_1s']} | "
                             f"{b['after_settle']} | {fmt(b.get('load1', float('nan')))} |")
        lines.append("")
    if idle:
        lines.append("### Idle keep-alive connections")
        lines.append("")
        lines.append("Each target is started fresh, warmed with 1,000 requests on one connection, and "
                     "its idle RSS read. Then N clients connect (at most 200 connecting at once), each "
                     "sends one request, reads the answer and stays connected; "
                     f"{args.idle_settle:.0f} s later the target's RSS (all its processes) and the "
                     "connections it still holds (`ss`) are read; then all close, and once the target "
                     f"holds none, {args.idle_settle:.0f} s later, the RSS is read again. Per connection "
                     "= (RSS at N − idle RSS) / connections held. Rampart runs with `limits: {max_connections: "
                     "16000, keepalive_timeout: 300s}` here (`header_timeout: 300s` for a binary from before "
                     "`keepalive_timeout`; a binary without the `limits` block has "
                     "neither an idle deadline nor a cap), so its idle connections live as long as "
                     "nginx's and HAProxy's. "
                     f"Open-files limit for the client and the targets: {args.fd_limit}"
                     + (f" (so {', '.join(str(n) for n in args.idle_dropped)} did not fit)"
                        if args.idle_dropped else "") + ".")
        lines.append("")
        head = "| target | idle RSS MiB |"
        rule = "|---|---:|"
        for n in args.idle_counts:
            head += f" {n:,}: held | {n:,}: RSS MiB | {n:,}: KiB per conn. | {n:,}: RSS after close MiB |"
            rule += "---:|---:|---:|---:|"
        lines.append(head + " back within 10 % of idle | load (1 min) |")
        lines.append(rule + "---|---:|")
        for it in idle:
            row = f"| {it['key']}. {it['label']} | {it['idle_kib'] / 1024:.1f} |"
            for c in it["counts"]:
                # Fewer held than opened: the target closed some before the reading (its RSS
                # may still count them), so the quotient is not a per-connection cost.
                per = (f"{c['kib_per_conn']:.2f}" if c["held"] >= 0.99 * c["n"]
                       else f"({c['kib_per_conn']:.2f}: only {c['held']:,} of {c['n']:,} held)")
                row += (f" {c['held']:,} | {c['rss_kib'] / 1024:.1f} | {per} | "
                        f"{c['after_close_kib'] / 1024:.1f} |")
            last = it["counts"][-1] if it["counts"] else None
            back = last and last["after_close_kib"] <= 1.1 * it["idle_kib"]
            row += (f" {'yes' if back else '**no**'} ({last['after_close_kib'] / it['idle_kib']:.2f}x) |"
                    if last else " — |")
            row += " " + " / ".join(fmt(c.get("load1", float("nan"))) for c in it["counts"]) + " |"
            lines.append(row)
        lines.append("")
    r = med.get("F")
    if r:
        checks = []
        if "B" in med:
            checks.append(("CPU per request <= nginx's", r["cpu_us_per_req"] <= med["B"]["cpu_us_per_req"]))
            checks.append(("p99 <= nginx's", r["p99_ms"] <= med["B"]["p99_ms"]))
        if "C" in med:
            checks.append(("CPU per request <= HAProxy's", r["cpu_us_per_req"] <= med["C"]["cpu_us_per_req"]))
        if "F" in med_low and "B" in med_low:
            checks.append(("1 connection: CPU per request <= nginx's",
                           med_low["F"]["cpu_us_per_req"] <= med_low["B"]["cpu_us_per_req"]))
            checks.append(("1 connection: p99 <= nginx's", med_low["F"]["p99_ms"] <= med_low["B"]["p99_ms"]))
        for it in idle:
            if it["key"] != "F" or not it["counts"]:
                continue
            worst = max(c["kib_per_conn"] if c["held"] >= 0.99 * c["n"] else float("inf")
                        for c in it["counts"])
            checks.append(("RSS per idle connection <= 4 KiB", worst <= 4.0))
            big = [c for c in it["counts"] if c["n"] >= 10000]
            if big:
                checks.append(("10,000 idle connections in under 64 MiB", big[0]["rss_kib"] < 64 * 1024))
            checks.append(("RSS back within 10 % of idle after close",
                           it["counts"][-1]["after_close_kib"] <= 1.1 * it["idle_kib"]))
        if "F" in bursts:
            checks.append((f"upstream connections after the burst <= 256 (128 per upstream)",
                           bursts["F"]["after_1s"] <= 256))
        lines.append("Targets of issue 15 (reported, not asserted), for F: " + "; ".join(
            f"{name}: {'met' if ok else '**missed**'}" for name, ok in checks) + ".")
        lines.append("")
    lines.append("<details><summary>Every run (round by round)</summary>")
    lines.append("")
    lines.append("| round | target | connections | req/s | p50 ms | p99 ms | CPU µs/req | CPU busy | RSS MiB | requests | errors | load (1 min) |")
    lines.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i in range(args.rounds):
        for t in targets:
            for conns, runs in ((args.connections, results[t["key"]]), (1, low.get(t["key"], []))):
                if i < len(runs):
                    x = runs[i]
                    lines.append(f"| {i + 1} | {t['key']}. {t['label']} | {conns} | {x['rps']:,.0f} | "
                                 f"{fmt(x['p50_ms'], 3)} | {fmt(x['p99_ms'], 3)} | {fmt(x['cpu_us_per_req'])} | "
                                 f"{fmt(x['cpu_busy'])} | {fmt(x['rss_mib'], 1)} | {x['requests']} | {x['errors']} | "
                                 f"{fmt(x.get('load1', float('nan')))} |")
    lines.append("")
    lines.append("</details>")
    lines.append("")
    lines.append(END)
    return "\n".join(lines), med


def write_doc(path, block):
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        text = ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + block + tail
    else:
        if not text:
            text = "# Rampart performance\n\n"
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)


# ----------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds of each measured run")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load before each run")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--skip", default="", help="comma-separated target keys to leave out, e.g. E")
    ap.add_argument("--max-load", type=float, default=1.0, help="wait until the 1-min load average is below this")
    ap.add_argument("--max-wait", type=int, default=900, help="longest wait for a quiet machine, seconds")
    ap.add_argument("--wait-interval", type=int, default=30)
    ap.add_argument("--doc", default=os.path.join(ROOT, "docs", "PERFORMANCE.md"))
    ap.add_argument("--no-doc", action="store_true", help="print the table, do not write the doc")
    ap.add_argument("--rampart", default=os.path.join(ROOT, "target", "release", "rampart"))
    ap.add_argument("--rampart-label", default="Rampart (threads: 1, breaker, metrics)",
                    help="how the tables name --rampart (run.sh names its profile-guided build)")
    ap.add_argument("--peers-dir", default=os.path.join(ROOT, "target", "peers", "release"))
    ap.add_argument("--also-rampart", action="append", default=[], metavar="LABEL=PATH",
                    help="another rampart binary to measure in the same run (targets G, H, ...), "
                         "e.g. before=/tmp/rampart-before; for A/B checks of a change")
    ap.add_argument("--low-load-duration", type=int, default=None,
                    help="seconds of each 1-connection run (default: --duration); 0 leaves the row out")
    ap.add_argument("--burst", type=int, default=2000,
                    help="concurrent requests of the upstream-connections burst; 0 leaves it out")
    ap.add_argument("--burst-settle", type=float, default=5.0,
                    help="seconds after the burst of the second upstream-connections count")
    ap.add_argument("--idle", default="1000,10000",
                    help="idle keep-alive connection counts for the idle-connections benchmark "
                         "(comma-separated); empty leaves it out")
    ap.add_argument("--idle-settle", type=float, default=2.0,
                    help="seconds to let the target settle before each RSS reading")
    args = ap.parse_args()
    if args.low_load_duration is None:
        args.low_load_duration = args.duration
    if not 0 <= args.low_load_duration <= 600 or not 0 <= args.burst <= 10000:
        ap.error("low-load-duration 0..600 s, burst 0..10000")
    try:
        args.idle_counts = [int(x) for x in args.idle.split(",") if x.strip()]
    except ValueError:
        ap.error("--idle takes comma-separated counts, e.g. 1000,10000")
    # Idle connections need a descriptor each, in the client and in the target: raise the soft
    # limit to the hard one (children inherit it) and measure only what fits.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    fitting = [n for n in args.idle_counts if 1 <= n <= fd_limit - 500]
    args.idle_dropped = [n for n in args.idle_counts if n not in fitting]
    if args.idle_dropped:
        largest = max(fd_limit - 500, 0) // 1000 * 1000
        if largest and largest not in fitting:
            fitting.append(largest)
        print(f"open-files limit {fd_limit}: idle counts {args.idle_dropped} do not fit; measuring {fitting}",
              flush=True)
    args.idle_counts = fitting
    args.fd_limit = fd_limit
    if not 1 <= args.rounds <= 50 or not 1 <= args.duration <= 600 or not 1 <= args.connections <= 4000:
        ap.error("rounds 1..50, duration 1..600 s, connections 1..4000")
    if (os.cpu_count() or 1) < 2:
        ap.error("needs at least 2 CPUs (target on CPU 0, load generator on CPU 1)")
    skip = {s.strip().upper() for s in args.skip.split(",") if s.strip()}

    workdir = tempfile.mkdtemp(prefix="rampart-load-")
    lua = os.path.join(workdir, "ids.lua")
    with open(lua, "w") as f:
        f.write(WRK_LUA)
    stable_port, canary_port = free_port(), free_port()
    procs = []
    try:
        path = os.path.join(workdir, "upstream.conf")
        with open(path, "w") as f:
            f.write(upstream_conf(workdir, stable_port, canary_port))
        upstream = Proc("upstream", ["nginx", "-p", workdir, "-c", path], workdir, LOADGEN_CPU)
        procs.append(upstream)
        if not (wait_port(stable_port) and wait_port(canary_port)):
            raise RuntimeError(f"the upstream did not start; see {upstream.log_path}")

        targets = []

        def add(key, label, name, cmd, port, env=None):
            if key in skip:
                return
            proc = Proc(name, cmd, workdir, TARGET_CPU, env)
            procs.append(proc)
            targets.append({"key": key, "label": label, "proc": proc, "port": port})

        if "A" not in skip:
            # The upstream itself, on CPU 1 beside wrk: the floor of what any proxy adds to.
            targets.append({"key": "A", "label": "upstream directly (nginx static 200)",
                            "proc": upstream, "port": stable_port})
        port = free_port()
        path = os.path.join(workdir, "nginx.conf")
        with open(path, "w") as f:
            f.write(nginx_conf(workdir, port, stable_port, canary_port))
        add("B", "nginx split_clients 10 %", "nginx", ["nginx", "-p", workdir, "-c", path], port)
        port = free_port()
        path = os.path.join(workdir, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(haproxy_conf(port, stable_port, canary_port))
        add("C", "HAProxy xxh32 split 10 %", "haproxy", ["haproxy", "-db", "-f", path], port)
        port = free_port()
        add("D", "bare hyper proxy", "bare-hyper",
            [os.path.join(args.peers_dir, "bare-hyper"), f"127.0.0.1:{port}",
             f"127.0.0.1:{stable_port}", f"127.0.0.1:{canary_port}"], port)
        port = free_port()
        add("E", "bare pingora proxy", "bare-pingora",
            [os.path.join(args.peers_dir, "bare-pingora"), f"127.0.0.1:{port}",
             f"127.0.0.1:{stable_port}", f"127.0.0.1:{canary_port}"], port)
        port = free_port()
        path = os.path.join(workdir, "rampart.yaml")
        with open(path, "w") as f:
            f.write(rampart_conf(port, free_port(), stable_port, canary_port))
        env = dict(os.environ, RUST_LOG="info")
        add("F", args.rampart_label, "rampart",
            [args.rampart, "run", "-c", path], port, env)

        for i, extra in enumerate(args.also_rampart):
            label, _, binary = extra.partition("=")
            if not binary:
                ap.error("--also-rampart takes LABEL=PATH")
            port = free_port()
            path = os.path.join(workdir, f"rampart-{i}.yaml")
            with open(path, "w") as f:
                f.write(rampart_conf(port, free_port(), stable_port, canary_port))
            add(chr(ord("G") + i), f"Rampart {label}", f"rampart-{i}", [binary, "run", "-c", path], port, env)

        # The idle-connections benchmark runs fresh processes (started one at a time, after the
        # rounds) so that "idle" and "after close" compare the same process's memory.
        idle_specs = []

        def idle_spec(key, label, name, cmd_for_port, env=None):
            port = free_port()

            def start():
                proc = Proc(name, cmd_for_port(port), workdir, TARGET_CPU, env)
                procs.append(proc)
                return proc

            idle_specs.append({"key": key, "label": label, "port": port, "start": start})

        def nginx_idle(port):
            path = os.path.join(workdir, "nginx-idle.conf")
            with open(path, "w") as f:
                f.write(nginx_conf(workdir, port, stable_port, canary_port, name="nginx-idle",
                                   keepalive_timeout="300s", worker_connections=16384))
            return ["nginx", "-p", workdir, "-c", path]

        def haproxy_idle(port):
            path = os.path.join(workdir, "haproxy-idle.cfg")
            with open(path, "w") as f:
                f.write(haproxy_conf(port, stable_port, canary_port, maxconn=12000,
                                     client_timeout="300s", keepalive_timeout="300s"))
            return ["haproxy", "-db", "-f", path]

        def rampart_idle(binary, i):
            def cmd(port):
                path = os.path.join(workdir, f"rampart-idle-{i}.yaml")
                # An older binary refuses a field it does not know: before `keepalive_timeout`
                # give it `header_timeout`, before the `limits` block (no idle deadline nor
                # cap) nothing.
                for limits in (IDLE_LIMITS, IDLE_LIMITS_BEFORE_KEEPALIVE, ""):
                    with open(path, "w") as f:
                        f.write(rampart_conf(port, free_port(), stable_port, canary_port, limits))
                    if subprocess.run([binary, "check", "-c", path], capture_output=True,
                                      timeout=60).returncode == 0:
                        break
                return [binary, "run", "-c", path]
            return cmd

        idle_spec("B", "nginx (keepalive_timeout 300s)", "nginx-idle", nginx_idle)
        idle_spec("C", "HAProxy (timeout http-keep-alive 300s)", "haproxy-idle", haproxy_idle)
        idle_spec("F", "Rampart", "rampart-idle", rampart_idle(args.rampart, "f"), env)
        for i, extra in enumerate(args.also_rampart):
            label, _, binary = extra.partition("=")
            idle_spec(chr(ord("G") + i), f"Rampart {label}", f"rampart-idle-{i}", rampart_idle(binary, i), env)

        for t in targets:
            if not wait_port(t["port"]):
                raise RuntimeError(f"{t['label']} did not start; see {t['proc'].log_path}")
        for t in targets:
            share, bad = check_split(t["port"])
            t["canary_share"] = None if t["key"] == "A" else share
            print(f"{t['key']}. {t['label']}: port {t['port']}, canary share {share * 100:.1f} %, non-200 {bad}", flush=True)
            if bad or (t["key"] != "A" and not 0.06 <= share <= 0.14):
                raise RuntimeError(f"{t['label']} does not split 10 % or fails requests; see {t['proc'].log_path}")

        print(f"waiting for a quiet machine (1-min load < {args.max_load}, at most {args.max_wait} s)", flush=True)
        quiet, waited = wait_quiet(args.max_load, args.max_wait, args.wait_interval)
        load_start = "/".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"starting: load {load_start}{'' if quiet else ' (never got quiet: running anyway)'}", flush=True)
        results = {t["key"]: [] for t in targets}
        low = {t["key"]: [] for t in targets}
        for rnd in range(args.rounds):
            for t in targets:
                if not t["proc"].alive():
                    raise RuntimeError(f"{t['label']} exited; see {t['proc'].log_path}")
                warm = run_wrk(t["port"], lua, args.connections, args.warmup)
                warm.communicate(timeout=args.warmup + 60)
                r = measure(t, lua, args.connections, args.duration)
                results[t["key"]].append(r)
                print(f"round {rnd + 1} {t['key']}. {t['label']}: {r['rps']:,.0f} req/s, p50 {r['p50_ms']:.3f} ms, "
                      f"p99 {r['p99_ms']:.3f} ms, {r['cpu_us_per_req']:.2f} us CPU/req (busy {r['cpu_busy']:.2f}), "
                      f"RSS {r['rss_mib']:.1f} MiB, errors {r['errors']}, load {r['load1']:.2f}", flush=True)
                if args.low_load_duration:
                    # Low load: one connection, each request sent when the previous answer came.
                    warm = run_wrk(t["port"], lua, 1, args.warmup)
                    warm.communicate(timeout=args.warmup + 60)
                    r = measure(t, lua, 1, args.low_load_duration)
                    low[t["key"]].append(r)
                    print(f"round {rnd + 1} {t['key']}. 1 connection: {r['rps']:,.0f} req/s, "
                          f"p50 {r['p50_ms'] * 1000:.0f} us, p99 {r['p99_ms'] * 1000:.0f} us, "
                          f"{r['cpu_us_per_req']:.2f} us CPU/req (busy {r['cpu_busy']:.2f}), errors {r['errors']}, "
                          f"load {r['load1']:.2f}",
                          flush=True)
        load_rounds_end = "/".join(f"{x:.2f}" for x in os.getloadavg())
        bursts = {}
        if args.burst:
            for t in targets:
                if t["key"] == "A":
                    continue
                b = burst(t, (stable_port, canary_port), args.burst, args.burst_settle)
                bursts[t["key"]] = b
                print(f"burst {t['key']}. {t['label']}: {args.burst} concurrent requests ({b['ok']} ok, "
                      f"{b['failed']} failed, {b['connect_errors']} connect errors) in {b['request_seconds']} s; "
                      f"upstream connections before {b['before']}, peak seen {b['peak']}, after 1 s "
                      f"{b['after_1s']}, after {b['settle_s']:.0f} s {b['after_settle']}", flush=True)
        idle = []
        if args.idle_counts:
            for spec in idle_specs:
                if spec["key"] in skip:
                    continue
                idle.append(idle_connections(spec, args.idle_counts, args.idle_settle,
                                             lambda m: print(m, flush=True)))
        load_end = "/".join(f"{x:.2f}" for x in os.getloadavg())
        meta = {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(),
            "versions": versions(),
            "load": {"start": load_start, "rounds_end": load_rounds_end, "end": load_end},
            "quiet": quiet,
            "waited": waited,
        }
        block, _ = render(args, targets, results, low, bursts, idle, meta)
        print(block)
        if not args.no_doc:
            write_doc(args.doc, block)
            print(f"written to {args.doc}")
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump({"meta": meta, "results": results, "low_load": low, "bursts": bursts, "idle": idle},
                      f, indent=1)
        print(f"raw results and logs: {workdir}")
    finally:
        for p in reversed(procs):
            p.stop()


if __name__ == "__main__":
    sys.exit(main())
