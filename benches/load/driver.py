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


def nginx_conf(workdir, port, stable_port, canary_port):
    return f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/n_body;
    proxy_temp_path {workdir}/n_proxy;
    fastcgi_temp_path {workdir}/n_fcgi;
    uwsgi_temp_path {workdir}/n_uwsgi;
    scgi_temp_path {workdir}/n_scgi;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
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


def haproxy_conf(port, stable_port, canary_port):
    return f"""
global
    nbthread 1
    maxconn 4000

defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 600s
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


def rampart_conf(port, metrics_port, stable_port, canary_port):
    return f"""version: 1
listen: 127.0.0.1:{port}
metrics_listen: 127.0.0.1:{metrics_port}
threads: 1
default_upstream: stable
upstreams:
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


def render(args, targets, results, meta):
    lines = [BEGIN, ""]
    lines.append(f"## Load benchmark: {meta['date']}")
    lines.append("")
    m = meta["machine"]
    lines.append(f"- Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']}, Linux {m['kernel']}; "
                 "shared with other work (see the load averages).")
    la = meta["load"]
    lines.append(f"- Load average (1/5/15 min) at the start: {la['start']}; at the end: {la['end']}. "
                 + ("The machine was quiet (1-min load < "
                    f"{args.max_load}) when the run started."
                    if meta["quiet"] else
                    f"**The machine never got quiet** (1-min load stayed >= {args.max_load} for "
                    f"{int(meta['waited'])} s), so the run went ahead anyway: absolute figures are "
                    "noisier than usual; ratios measured in the same interleaved run hold better."))
    lines.append(f"- Method: {args.rounds} interleaved rounds ({', '.join(t['key'] for t in targets)}, then again), "
                 f"each run {args.duration} s after a {args.warmup} s warm-up, {args.connections} connections, "
                 "wrk `-t1` with a random `x-user-id` per request. Target pinned to CPU "
                 f"{TARGET_CPU}, wrk and the upstream to CPU {LOADGEN_CPU} (`taskset`). "
                 "Figures are the medians over the rounds.")
    lines.append("- CPU per request: utime + stime of every process of the target (`/proc/PID/stat`), "
                 "after minus before the run, divided by the requests wrk completed. `CPU busy` is that "
                 "CPU time over the run's wall time (1.0 = CPU 0 saturated). RSS: the largest VmRSS "
                 "sampled once a second under load (all processes of the target); peak is VmHWM.")
    lines.append("- Versions: " + "; ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".")
    lines.append("")
    lines.append("| target | req/s | p50 ms | p99 ms | CPU µs/req | CPU busy | RSS under load MiB | peak RSS MiB | canary share | errors |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    med = {}
    for t in targets:
        runs = results[t["key"]]
        med[t["key"]] = {k: statistics.median(r[k] for r in runs)
                         for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "cpu_busy", "rss_mib", "hwm_mib")}
        d = med[t["key"]]
        errors = sum(r["errors"] for r in runs)
        share = t.get("canary_share")
        lines.append(
            f"| {t['key']}. {t['label']} | {d['rps']:,.0f} | {fmt(d['p50_ms'], 3)} | {fmt(d['p99_ms'], 3)} | "
            f"{fmt(d['cpu_us_per_req'])} | {fmt(d['cpu_busy'])} | {fmt(d['rss_mib'], 1)} | {fmt(d['hwm_mib'], 1)} | "
            f"{'—' if share is None else f'{share * 100:.1f} %'} | {errors} |")
    lines.append("")
    r = med.get("F")
    if r:
        lines.append("### Rampart against the targets of issue 7")
        lines.append("")
        lines.append("| ratio (Rampart / peer) | CPU per request | p99 latency |")
        lines.append("|---|---:|---:|")
        for key, name in (("B", "nginx"), ("C", "HAProxy"), ("D", "bare hyper"), ("E", "bare pingora")):
            if key in med:
                p = med[key]
                lines.append(f"| Rampart / {name} | {r['cpu_us_per_req'] / p['cpu_us_per_req']:.2f} | "
                             f"{r['p99_ms'] / p['p99_ms']:.2f} |")
        lines.append("")
        checks = []
        if "B" in med:
            checks.append(("CPU per request <= nginx's", r["cpu_us_per_req"] <= med["B"]["cpu_us_per_req"]))
            checks.append(("p99 <= 1.2 x nginx's", r["p99_ms"] <= 1.2 * med["B"]["p99_ms"]))
        if "C" in med:
            checks.append(("CPU per request <= HAProxy's", r["cpu_us_per_req"] <= med["C"]["cpu_us_per_req"]))
        if "D" in med:
            checks.append(("CPU per request within 10 % of bare hyper's", r["cpu_us_per_req"] <= 1.1 * med["D"]["cpu_us_per_req"]))
        checks.append(("RSS under load <= 20 MiB", r["rss_mib"] <= 20.0))
        lines.append("Targets (reported, not asserted): " + "; ".join(
            f"{name}: {'met' if ok else '**missed**'}" for name, ok in checks) + ".")
        lines.append("")
    lines.append("<details><summary>Every run (round by round)</summary>")
    lines.append("")
    lines.append("| round | target | req/s | p50 ms | p99 ms | CPU µs/req | CPU busy | RSS MiB | requests | errors |")
    lines.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i in range(args.rounds):
        for t in targets:
            runs = results[t["key"]]
            if i < len(runs):
                x = runs[i]
                lines.append(f"| {i + 1} | {t['key']}. {t['label']} | {x['rps']:,.0f} | {fmt(x['p50_ms'], 3)} | "
                             f"{fmt(x['p99_ms'], 3)} | {fmt(x['cpu_us_per_req'])} | {fmt(x['cpu_busy'])} | "
                             f"{fmt(x['rss_mib'], 1)} | {x['requests']} | {x['errors']} |")
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
    ap.add_argument("--peers-dir", default=os.path.join(ROOT, "target", "peers", "release"))
    ap.add_argument("--also-rampart", action="append", default=[], metavar="LABEL=PATH",
                    help="another rampart binary to measure in the same run (targets G, H, ...), "
                         "e.g. before=/tmp/rampart-before; for A/B checks of a change")
    args = ap.parse_args()
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
        add("F", "Rampart (threads: 1, breaker, metrics)", "rampart",
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
                      f"RSS {r['rss_mib']:.1f} MiB, errors {r['errors']}", flush=True)
        load_end = "/".join(f"{x:.2f}" for x in os.getloadavg())
        meta = {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(),
            "versions": versions(),
            "load": {"start": load_start, "end": load_end},
            "quiet": quiet,
            "waited": waited,
        }
        block, _ = render(args, targets, results, meta)
        print(block)
        if not args.no_doc:
            write_doc(args.doc, block)
            print(f"written to {args.doc}")
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)
        print(f"raw results and logs: {workdir}")
    finally:
        for p in reversed(procs):
            p.stop()


if __name__ == "__main__":
    sys.exit(main())
