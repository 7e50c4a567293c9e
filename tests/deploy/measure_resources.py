#!/usr/bin/env python3
"""Measures `rampart run` with the example config (config/rampart.yaml): RSS and CPU idle and
under a bounded loopback load. The figures behind the chart's requests and limits
(docs/deploy.md, "Resources"). Not a test: run it by hand on a release build.

    cargo build --release
    apt-get install wrk
    python3 tests/deploy/measure_resources.py [--bin target/release/rampart] [--seconds 20]

The example config is used as it is, except that its listeners move to free loopback ports
and its two upstreams point at two `rampart demo-upstream` processes. RSS is VmRSS / VmHWM
from /proc/PID/status; CPU is utime + stime from /proc/PID/stat over each window. The load
comes from wrk (1 thread, N connections, a distinct x-user-id per request, path /checkout/cart,
so the checkout route with its 10 % canary split and breaker is exercised); every phase is
bounded by --seconds.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from conftest import REPO, Proc, free_port, start_demo_upstream, wait_for  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")

WRK_SCRIPT = """
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/checkout/cart", {["x-user-id"] = "user-" .. (counter % 100000) .. "-" .. math.random(1000000)})
end
"""


def status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in KiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: int(re.search(rf"^{k}:\s+(\d+) kB", text, re.M).group(1)) for k in ("VmRSS", "VmHWM")}  # type: ignore[union-attr]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields[0] is state (field 3); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / TICKS


def window(pid: int, seconds: float, during: Callable[[], str] | None = None) -> tuple[float, str]:
    """CPU cores used by `pid` over a window: `during()` if given (it must be bounded), else
    an idle wait of `seconds`."""
    c0, t0 = cpu_seconds(pid), time.monotonic()
    out = during() if during else (time.sleep(seconds) or "")
    c1, t1 = cpu_seconds(pid), time.monotonic()
    return (c1 - c0) / (t1 - t0), out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", default=str(REPO / "target" / "release" / "rampart"))
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", default="64,512")
    args = parser.parse_args()
    binary = Path(args.bin)
    with tempfile.TemporaryDirectory(prefix="rampart-measure-") as tmp:
        work = Path(tmp)
        procs: list[Proc] = []
        try:
            stable, stable_url = start_demo_upstream(binary, "v1", work)
            canary, canary_url = start_demo_upstream(binary, "v2", work)
            procs += [stable, canary]
            proxy, metrics = free_port(), free_port()
            text = (REPO / "config" / "rampart.yaml").read_text()
            text = text.replace("listen: 0.0.0.0:8080", f"listen: 127.0.0.1:{proxy}")
            text = text.replace("metrics_listen: 0.0.0.0:9090", f"metrics_listen: 127.0.0.1:{metrics}")
            text = text.replace("http://127.0.0.1:3000", stable_url).replace("http://127.0.0.1:3001", canary_url)
            config = work / "rampart.yaml"
            config.write_text(text)
            rampart = Proc("rampart", [str(binary), "run", "-c", str(config)], work)
            procs.append(rampart)
            import urllib.request

            wait_for(
                "readyz",
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{metrics}/readyz", timeout=2).status == 200,
                timeout=30,
            )
            pid = rampart.pid
            print(f"binary: {binary} ({binary.stat().st_size / 1e6:.1f} MB)")
            print(f"start:  RSS {status(pid)['VmRSS'] / 1024:.1f} MiB")
            cores, _ = window(pid, 10)
            print(f"idle:   RSS {status(pid)['VmRSS'] / 1024:.1f} MiB, CPU {cores * 1000:.1f} millicores over 10 s")
            script = work / "users.lua"
            script.write_text(WRK_SCRIPT)
            for conns in [int(c) for c in args.connections.split(",")]:
                def load() -> str:
                    return subprocess.run(
                        ["wrk", "-t1", f"-c{conns}", f"-d{args.seconds}s", "--timeout", "5s", "-s", str(script), f"http://127.0.0.1:{proxy}"],
                        capture_output=True, text=True, timeout=args.seconds + 30,
                    ).stdout

                cores, out = window(pid, args.seconds, load)
                rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
                lat = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", out)
                s = status(pid)
                print(
                    f"load {conns:>4} conns: {rps:,.0f} req/s, mean latency {lat.group(1) if lat else '?'}, "
                    f"CPU {cores:.2f} cores ({cores / rps * 1e6:.0f} µs CPU per request), "
                    f"RSS {s['VmRSS'] / 1024:.1f} MiB, peak {s['VmHWM'] / 1024:.1f} MiB"
                )
            cores, _ = window(pid, 10)
            print(f"after:  RSS {status(pid)['VmRSS'] / 1024:.1f} MiB, peak {status(pid)['VmHWM'] / 1024:.1f} MiB, CPU {cores * 1000:.1f} millicores idle")
        finally:
            for p in reversed(procs):
                p.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
