#!/usr/bin/env python3
"""The training load of Rampart's profile-guided build (benches/pgo/build.sh, docs/PERFORMANCE.md).

Runs an instrumented `rampart` binary the way a sidecar is used, so that the compiler learns
which code is hot: two `rampart demo-upstream`s (stable and canary) behind Rampart with a
10 % canary split, a breaker and metrics, then, for `--seconds`:

- HTTP/1.1 keep-alive clients on several threads: GETs with random identities (most of the
  load), HEADs, POSTs with a sized and with a chunked body, new connections, metrics scrapes;
- HTTP/2 with prior knowledge and, when `openssl` can make a certificate, TLS (HTTP/1.1 from
  here, HTTP/2 through `curl` when it is installed);
- a few refused requests (a malformed head, a request smuggling attempt).

Every process is stopped with SIGTERM, so that the instrumented binaries write their
profiles (to the directory `-Cprofile-generate` named). Needs Python 3 only; curl and
openssl widen the coverage when present. Every loop and wait here is bounded.
"""

import argparse
import http.client
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "load"))
from driver import free_port, wait_port  # noqa: E402  (the load bench's own helpers)


def config(port, metrics_port, stable, canary, tls=None):
    tls_line = f"tls: {{cert_file: {tls[0]}, key_file: {tls[1]}}}\n" if tls else ""
    return f"""version: 1
listen: 127.0.0.1:{port}
metrics_listen: 127.0.0.1:{metrics_port}
{tls_line}threads: 1
default_upstream: stable
drain: {{delay: 0s, timeout: 5s}}
upstreams:
  stable:
    url: http://127.0.0.1:{stable}
  canary:
    url: http://127.0.0.1:{canary}
routes:
  - name: train
    identity: [header:x-user-id, cookie:uid]
    stable: stable
    split:
      - {{backend: canary, percent: 10}}
    breaker:
      window: 30s
      min_requests: 20
      max_error_rate: 0.5
      consecutive_errors: 50
      max_latency: {{quantile: 0.99, threshold: 800ms}}
      open_for: 5s
      half_open_requests: 5
"""


class Counts:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = 0
        self.failed = 0

    def add(self, ok, failed):
        with self.lock:
            self.ok += ok
            self.failed += failed


def http1_client(make_conn, until, counts, seed):
    """One keep-alive client: mostly GETs, some HEADs and POSTs, a new connection now and then."""
    rng = random.Random(seed)
    ok = failed = 0
    conn = make_conn()
    while time.monotonic() < until:
        headers = {"x-user-id": f"u{rng.randrange(10**9)}", "host": "train"}
        pick = rng.random()
        try:
            if pick < 0.85:
                conn.request("GET", f"/items/{rng.randrange(1000)}?q=1", headers=headers)
            elif pick < 0.90:
                conn.request("HEAD", "/", headers=headers)
            elif pick < 0.95:
                conn.request("POST", "/orders", body=b"x" * rng.randrange(1, 4096), headers=headers)
            else:
                body = iter([b"part-one", b"part-two" * rng.randrange(1, 64)])
                conn.request("POST", "/upload", body=body, headers=headers, encode_chunked=True)
            response = conn.getresponse()
            response.read()
            ok += 1
            if rng.random() < 0.01:
                conn.close()
                conn = make_conn()
        except (OSError, http.client.HTTPException):
            failed += 1
            conn.close()
            conn = make_conn()
    conn.close()
    counts.add(ok, failed)


def refused_requests(port):
    """Heads Rampart refuses: they never reach an upstream."""
    for raw in (
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
    ):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(raw)
                s.recv(4096)
        except OSError:
            pass


def scrape(port, times):
    for _ in range(times):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/metrics")
            conn.getresponse().read()
            conn.close()
        except (OSError, http.client.HTTPException):
            pass


def curl_batch(args, url, n):
    """`n` requests over one curl process (one connection, HTTP/2 multiplexed when asked)."""
    curl = shutil.which("curl")
    if not curl:
        return 0
    cmd = [curl, "-s", "-o", "/dev/null", "-H", "x-user-id: u7", *args] + [url] * n
    try:
        subprocess.run(cmd, timeout=120, check=False, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return 0
    return n


def self_signed(workdir):
    openssl = shutil.which("openssl")
    if not openssl:
        return None
    cert, key = os.path.join(workdir, "tls.crt"), os.path.join(workdir, "tls.key")
    made = subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=False)
    return (cert, key) if made.returncode == 0 else None


def stop(procs):
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rampart", required=True, help="the instrumented rampart binary")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args()

    workdir = tempfile.mkdtemp(prefix="rampart-pgo-")
    procs = []
    try:
        stable, canary = free_port(), free_port()
        for port, label in ((stable, "v1"), (canary, "v2")):
            procs.append(subprocess.Popen(
                [args.rampart, "demo-upstream", "--listen", f"127.0.0.1:{port}",
                 "--version-label", label],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        if not (wait_port(stable) and wait_port(canary)):
            sys.exit("pgo training: the demo upstreams did not start")

        tls = self_signed(workdir)
        targets = [("plain", None)] + ([("tls", tls)] if tls else [])
        ports = {}
        for name, cert in targets:
            port, metrics_port = free_port(), free_port()
            path = os.path.join(workdir, f"{name}.yaml")
            with open(path, "w") as f:
                f.write(config(port, metrics_port, stable, canary, cert))
            log = open(os.path.join(workdir, f"{name}.log"), "w")
            procs.append(subprocess.Popen([args.rampart, "run", "-c", path],
                                          stdout=log, stderr=subprocess.STDOUT))
            if not wait_port(port):
                sys.exit(f"pgo training: rampart ({name}) did not start; see {log.name}")
            ports[name] = (port, metrics_port)

        plain, plain_metrics = ports["plain"]
        until = time.monotonic() + args.seconds
        counts = Counts()
        threads = []
        for i in range(args.clients):
            def make(port=plain):
                return http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            threads.append(threading.Thread(target=http1_client, args=(make, until, counts, i)))
        if "tls" in ports:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            tls_port = ports["tls"][0]

            def make_tls():
                return http.client.HTTPSConnection("127.0.0.1", tls_port, timeout=10,
                                                   context=context)
            threads.append(threading.Thread(target=http1_client,
                                            args=(make_tls, until, counts, 1000)))
        for t in threads:
            t.start()
        extra = 0
        rounds = 0
        # Bounded: one round takes at least a curl batch; never more rounds than seconds x 10.
        while time.monotonic() < until and rounds < int(args.seconds * 10):
            rounds += 1
            extra += curl_batch(["--http2-prior-knowledge"], f"http://127.0.0.1:{plain}/h2", 200)
            if "tls" in ports:
                tls_port = ports["tls"][0]
                extra += curl_batch(["-k", "--http2", "--resolve", f"localhost:{tls_port}:127.0.0.1"],
                                    f"https://localhost:{tls_port}/h2", 100)
            refused_requests(plain)
            scrape(plain_metrics, 5)
            if not shutil.which("curl"):
                time.sleep(0.5)
        for t in threads:
            t.join(timeout=args.seconds + 60)
        print(f"pgo training: {counts.ok} HTTP/1.1 requests answered, {counts.failed} failed, "
              f"{extra} more through curl (HTTP/2{', TLS' if tls else ''}), "
              f"{rounds} rounds of refused heads and scrapes")
        if counts.ok == 0:
            sys.exit("pgo training: no request was answered")
    finally:
        stop(procs)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
