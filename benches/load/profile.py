#!/usr/bin/env python3
"""Counts the instructions one proxied request costs, with valgrind's callgrind (repeatable,
unlike timings on a shared machine), and lists where they go.

Starts the upstream (nginx, as the load bench does), then the target under callgrind:
`rampart` (the bench config: threads 1, a 10 % split, a breaker, metrics) or `bare-hyper`.
Sends a warm-up, zeroes the counters, sends exactly N requests with random identities over
one keep-alive connection, dumps the counters, and prints instructions per request and the
top functions (inclusive and exclusive) from callgrind_annotate.

    python3 benches/load/profile.py [--target rampart|bare-hyper] [--requests 20000]

Needs valgrind (apt-get install valgrind) and the release binaries run.sh builds.
"""

import argparse
import http.client
import os
import random
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
import driver  # noqa: E402


def send(port, n):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    bad = 0
    for _ in range(n):
        conn.request("GET", "/", headers={"x-user-id": f"u{random.randint(1, 10**9)}", "host": "bench"})
        response = conn.getresponse()
        response.read()
        bad += response.status != 200
    conn.close()
    return bad


def exclusive_costs(path):
    """{(function, object): exclusive instructions} read straight from a callgrind dump.

    callgrind_annotate splits a function into one row per source file its inlined code came
    from (and, for a dump taken while the program runs, lists frames on the stack with their
    inclusive cost as exclusive), so the rows are summed here by function instead: every cost
    line counts for the function it sits under, except the line after `calls=`, which is the
    callee's inclusive cost. The sum over all functions equals the dump's total."""
    tables = {"fn": {}, "ob": {}}
    positions = 1
    fn = ob = "?"
    costs = {}
    after_call = False

    def resolve(kind, value):
        value = value.strip()
        m = re.match(r"^\((\d+)\)\s*(.*)$", value)
        if not m:
            return value
        if m.group(2):
            tables[kind][m.group(1)] = m.group(2)
        return tables[kind].get(m.group(1), value)

    with open(path) as f:
        for line in f:
            c = line[:1]
            if c.isdigit() or c in "+-*":
                if after_call:
                    after_call = False
                    continue
                parts = line.split()
                if len(parts) > positions:
                    key = (fn, ob)
                    costs[key] = costs.get(key, 0) + int(parts[positions])
            elif line.startswith("fn="):
                fn = resolve("fn", line[3:])
            elif line.startswith("cfn="):
                resolve("fn", line[4:])
            elif line.startswith("ob="):
                ob = resolve("ob", line[3:])
            elif line.startswith("cob="):
                resolve("ob", line[4:])
            elif line.startswith("calls="):
                after_call = True
            elif line.startswith("positions:"):
                positions = len(line.split()[1:])
    return costs


def latest_dump(workdir):
    """The newest numbered callgrind dump (callgrind.out.1, .2, ...) in `workdir`."""
    dumps = [f for f in os.listdir(workdir) if re.fullmatch(r"callgrind\.out\.\d+", f)]
    if not dumps:
        raise RuntimeError(f"no callgrind dump in {workdir}")
    return os.path.join(workdir, max(dumps, key=lambda f: int(f.rsplit(".", 1)[1])))


def dump_total(path):
    with open(path) as f:
        text = f.read()
    m = re.search(r"^summary:\s+(\d+)", text, re.M) or re.search(r"^totals:\s+(\d+)", text, re.M)
    return int(m.group(1)) if m else 0


def callgrind_control(args, pid):
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", choices=["rampart", "bare-hyper"], default="rampart")
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--warmup", type=int, default=2000)
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--idle-seconds", type=float, default=10.0,
                    help="seconds without requests to measure the background rate (0: skip)")
    ap.add_argument("--width", type=int, default=200, help="longest function name printed")
    ap.add_argument("--rampart", default=os.path.join(driver.ROOT, "target", "release", "rampart"))
    ap.add_argument("--peers-dir", default=os.path.join(driver.ROOT, "target", "peers", "release"))
    args = ap.parse_args()
    if not 1 <= args.requests <= 1_000_000:
        ap.error("requests 1..1000000")

    workdir = tempfile.mkdtemp(prefix="rampart-profile-")
    stable_port, canary_port = driver.free_port(), driver.free_port()
    procs = []
    try:
        path = os.path.join(workdir, "upstream.conf")
        with open(path, "w") as f:
            f.write(driver.upstream_conf(workdir, stable_port, canary_port))
        procs.append(driver.Proc("upstream", ["nginx", "-p", workdir, "-c", path], workdir, driver.LOADGEN_CPU))
        port = driver.free_port()
        if args.target == "rampart":
            conf = os.path.join(workdir, "rampart.yaml")
            with open(conf, "w") as f:
                f.write(driver.rampart_conf(port, driver.free_port(), stable_port, canary_port))
            cmd = [args.rampart, "run", "-c", conf]
        else:
            cmd = [os.path.join(args.peers_dir, "bare-hyper"), f"127.0.0.1:{port}",
                   f"127.0.0.1:{stable_port}", f"127.0.0.1:{canary_port}"]
        out = os.path.join(workdir, "callgrind.out")
        target = driver.Proc(
            "target",
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd],
            workdir,
            driver.TARGET_CPU,
        )
        procs.append(target)
        if not driver.wait_port(port, timeout=120):
            raise RuntimeError(f"the target did not start; see {target.log_path}")
        send(port, args.warmup)
        # Background work (timers: rollout ticks, the periodic config check, metrics) runs per
        # second of wall time, and a run under callgrind takes 30-120 s depending on the
        # machine's load: measure its rate with no requests, then take it out.
        idle_rate = 0.0
        if args.idle_seconds > 0:
            callgrind_control(["--zero"], target.popen.pid)
            t0 = time.monotonic()
            time.sleep(args.idle_seconds)
            callgrind_control(["--dump=idle"], target.popen.pid)
            idle_rate = dump_total(latest_dump(workdir)) / (time.monotonic() - t0)
        callgrind_control(["--zero"], target.popen.pid)
        t0 = time.monotonic()
        bad = send(port, args.requests)
        elapsed = time.monotonic() - t0
        callgrind_control(["--dump=measured"], target.popen.pid)
        time.sleep(1)
        dump = latest_dump(workdir)
        total = dump_total(dump)
        print(f"{args.target}: {args.requests} requests ({bad} not 200) in {elapsed:.1f} s under callgrind")
        print(f"instructions per request: {total / args.requests:,.0f} (all instructions of the process "
              "while the requests ran, divided by the requests)")
        if args.idle_seconds > 0:
            background = idle_rate * elapsed
            print(f"background with no requests: {idle_rate:,.0f} instructions/s over {args.idle_seconds} s, "
                  f"i.e. {background / args.requests:,.0f} per request over this run's {elapsed:.1f} s")
            print(f"instructions per request without the background: "
                  f"{(total - background) / args.requests:,.0f}")
        costs = exclusive_costs(dump)
        counted = sum(costs.values())
        print(f"\n--- top functions, exclusive, summed over inlined source files "
              f"(instructions per request, share of the total, function [object]); "
              f"{100.0 * counted / total if total else 0:.1f} % of the total accounted ---")
        for (func, obj), count in sorted(costs.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"{count / args.requests:>9,.0f}  {100.0 * count / total if total else 0:5.2f} %  "
                  f"{func[:args.width]} [{os.path.basename(obj)}]")
        # Inclusive: from callgrind_annotate, one row per function (its largest per-file row:
        # a function's inlined code is split by source file), leaving out the frames every
        # request runs under (main, the runtime's block_on: >= 95 % of the total).
        print("\n--- top functions, inclusive, below the runtime's own frames "
              "(instructions per request, share of the total, function) ---")
        ann = subprocess.run(
            ["callgrind_annotate", "--inclusive=yes", "--threshold=100", dump],
            capture_output=True, text=True, timeout=300,
        ).stdout
        best = {}
        for line in ann.splitlines():
            m = re.match(r"^\s*([\d,]+) \(\s*([\d.]+)%\)\s+(.*)$", line)
            if not m or m.group(3).startswith("PROGRAM TOTALS"):
                continue
            count = int(m.group(1).replace(",", ""))
            fm = re.match(r"^[^:\[]*?:(.*?)(?:\s+\[[^\]]*\])?$", m.group(3))
            func = re.sub(r"\s+\([\d,]+x\)$", "", fm.group(1) if fm else m.group(3))
            best[func] = max(best.get(func, 0), count)
        shown = 0
        for func, count in sorted(best.items(), key=lambda kv: -kv[1]):
            if total and count >= 0.95 * total:
                continue
            print(f"{count / args.requests:>9,.0f}  {100.0 * count / total if total else 0:5.2f} %  {func[:args.width]}")
            shown += 1
            if shown >= args.top:
                break
        print(f"\ndump: {dump}")
    finally:
        for p in reversed(procs):
            p.stop()


if __name__ == "__main__":
    sys.exit(main())
