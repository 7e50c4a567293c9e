#!/usr/bin/env python3
"""Per-connection memory of the data plane: idle keep-alive and half-open HTTP/1.1.

Starts each given `rampart` binary (and a `rampart demo-upstream` behind it) on loopback,
opens N client connections of one kind, and reads the proxy's VmRSS from /proc: before,
with the connections open, and after they closed. Prints one line per binary and kind.
Reporting only; nothing is asserted (see benches/README.md).

    python3 benches/conn_memory.py [--connections 3000] BINARY [BINARY ...]

Kinds:
  keepalive  one complete GET answered, then the connection is kept open and idle
  halfopen   a request head without its final CRLF (the server waits for the rest)
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

CONFIG = """version: 1
listen: 127.0.0.1:{port}
metrics_listen: 127.0.0.1:{metrics}
threads: 1
access_log: {{sample: 0}}
upstreams:
  stable: {{url: "http://127.0.0.1:{upstream}"}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait_port(port: int, limit: float = 20.0) -> None:
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} never opened")


def settle(pid: int, seconds: float = 1.5) -> int:
    """RSS once it stops moving (bounded)."""
    last = rss_kib(pid)
    deadline = time.time() + seconds * 4
    while time.time() < deadline:
        time.sleep(seconds / 3)
        now = rss_kib(pid)
        if abs(now - last) < 64:
            return now
        last = now
    return last


def warm(port: int, rounds: int = 200) -> None:
    """Some traffic first, so lazily built pools and buffers are not counted per connection."""
    for _ in range(rounds):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            while s.recv(65536):
                pass


def open_connections(port: int, kind: str, n: int) -> list:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if kind == "keepalive":
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            got = b""
            while b"\r\n\r\n" not in got:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            head, _, body = got.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            while len(body) < length:
                chunk = s.recv(65536)
                if not chunk:
                    break
                body += chunk
        else:
            s.sendall(b"GET /half HTTP/1.1\r\nHost: x\r\nUser-Agent: probe\r\nAccept: */*\r\n")
        socks.append(s)
    return socks


def measure(binary: str, kind: str, n: int) -> dict:
    tmp = tempfile.mkdtemp(prefix="rampart-mem-")
    upstream_port, port, metrics = free_port(), free_port(), free_port()
    cfg = os.path.join(tmp, "rampart.yaml")
    with open(cfg, "w") as f:
        f.write(CONFIG.format(port=port, metrics=metrics, upstream=upstream_port))
    env = dict(os.environ, RUST_LOG="warn")
    up = subprocess.Popen([binary, "demo-upstream", "--listen", f"127.0.0.1:{upstream_port}"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    proxy = subprocess.Popen([binary, "run", "-c", cfg], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=env)
    try:
        wait_port(upstream_port)
        wait_port(port)
        warm(port)
        before = settle(proxy.pid)
        start = time.time()
        socks = open_connections(port, kind, n)
        opened_in = time.time() - start
        time.sleep(0.5)
        held = settle(proxy.pid)
        for s in socks:
            s.close()
        time.sleep(1.0)
        after = settle(proxy.pid, 2.0)
        return {
            "before_kib": before,
            "held_kib": held,
            "after_kib": after,
            "per_conn_bytes": (held - before) * 1024 / n,
            "after_over_before": after / before if before else 0.0,
            "opened_in_s": opened_in,
        }
    finally:
        for p in (proxy, up):
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=3000)
    ap.add_argument("--kinds", default="keepalive,halfopen")
    ap.add_argument("binaries", nargs="+")
    args = ap.parse_args()
    print(f"{'binary':40} {'kind':10} {'before':>9} {'held':>9} {'after':>9} {'per conn':>10} {'after/before':>12}")
    for kind in args.kinds.split(","):
        for binary in args.binaries:
            r = measure(binary, kind, args.connections)
            print(f"{binary:40} {kind:10} {r['before_kib']:>6} KiB {r['held_kib']:>6} KiB "
                  f"{r['after_kib']:>6} KiB {r['per_conn_bytes']:>8.0f} B {r['after_over_before']:>11.2f}x",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
