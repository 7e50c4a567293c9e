"""A real `rampart run` on loopback for the OpenFeature SDK tests: two Python upstreams that
echo the `x-rampart-backend` header the proxy sent them, the proxy, its admin API and its
OFREP listener (docs/ofrep.md).

Every wait is a bounded poll. The process is started here and stopped by its own PID.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
OPERATOR = "operator-token-ofrep-sdk-0123456789abcdef"

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.02) -> T:
    """Polls `probe` until it returns something truthy, for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    for _ in range(100_000):
        try:
            value = probe()
            if value:
                return value
            last = value
        except Exception as e:  # noqa: BLE001 - reported below
            last = e
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = json.dumps(
            {"upstream": self.server.name, "backend": self.headers.get("x-rampart-backend")}
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def start_upstream(name: str) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    server.name = name  # type: ignore[attr-defined]
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


ROUTES = """
routes:
  - name: checkout
    match: {{path_prefix: /checkout}}
    identity: [header:x-user-id]
    split:
      - {{backend: canary, percent: {percent}}}
    overrides:
      identities: {{canary: [qa-alice]}}
  - name: dark-mode
    kind: toggle
    match: {{path_prefix: /dark}}
    identity: [header:x-user-id]
    split:
      - {{backend: canary, percent: 100}}
"""


@dataclass
class Rampart:
    """A running `rampart run` and how to reach it."""

    proc: subprocess.Popen
    dir: Path
    config_path: Path
    head: str
    proxy: str
    admin: str
    ofrep: str
    session: requests.Session

    def routed_backend(self, identity: str) -> str:
        """The backend the proxy sends `identity`'s request on /checkout to, as the upstream
        saw it in `x-rampart-backend`."""
        r = self.session.get(f"{self.proxy}/checkout", headers={"x-user-id": identity}, timeout=10)
        r.raise_for_status()
        return r.json()["backend"]

    def write_config(self, percent: int) -> None:
        """Replaces the config file atomically (temp file, rename) with a new percent."""
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(self.head + ROUTES.format(percent=percent))
        os.replace(tmp, self.config_path)

    def admin_post(self, path: str, reason: str) -> requests.Response:
        return self.session.post(
            f"{self.admin}{path}",
            headers={"authorization": f"Bearer {OPERATOR}"},
            json={"reason": reason},
            timeout=10,
        )

    def stderr(self) -> str:
        return (self.dir / "stderr.log").read_text(errors="replace")


def rampart_bin() -> str:
    binary = os.environ.get("RAMPART_BIN")
    if not binary:
        pytest.skip("RAMPART_BIN is not set: run through .ci/ofrep-sdk.sh")
    return binary


@pytest.fixture
def rampart() -> Iterator[Rampart]:
    binary = rampart_bin()
    stable = start_upstream("stable")
    canary = start_upstream("canary")
    tmp = Path(tempfile.mkdtemp(prefix="rampart-ofrep-sdk-"))
    tokens = tmp / "tokens.yaml"
    tokens.write_text(
        f"- {{name: otto, role: operator, sha256: {hashlib.sha256(OPERATOR.encode()).hexdigest()}}}\n"
    )
    tokens.chmod(0o600)
    listen, metrics, admin = free_port(), free_port(), free_port()
    head = (
        "version: 1\n"
        f"listen: 127.0.0.1:{listen}\n"
        f"metrics_listen: 127.0.0.1:{metrics}\n"
        f"admin_listen: 127.0.0.1:{admin}\n"
        f"admin_tokens_file: {tokens}\n"
        "ofrep_listen: 127.0.0.1:0\n"
        f"state_dir: {tmp / 'state'}\n"
        "drain: {delay: 0s, timeout: 1s}\n"
        "default_upstream: stable\n"
        "upstreams:\n"
        f"  stable: {{url: 'http://127.0.0.1:{stable.server_address[1]}'}}\n"
        f"  canary: {{url: 'http://127.0.0.1:{canary.server_address[1]}'}}\n"
    )
    config_path = tmp / "rampart.yaml"
    config_path.write_text(head + ROUTES.format(percent=30))
    stderr = open(tmp / "stderr.log", "wb")
    proc = subprocess.Popen(
        [binary, "run", "-c", str(config_path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        env={k: v for k, v in os.environ.items() if k not in ("RAMPART_CONFIG", "RAMPART_LOG_FORMAT")},
    )
    session = requests.Session()
    try:
        wait_for(
            "/readyz",
            lambda: proc.poll() is None
            and session.get(f"http://127.0.0.1:{metrics}/readyz", timeout=1).status_code == 200,
            timeout=15,
        )

        def ofrep_addr() -> str | None:
            for line in (tmp / "stderr.log").read_text(errors="replace").splitlines():
                if '"ofrep_listen"' in line:
                    return json.loads(line)["ofrep_listen"]
            return None

        addr = wait_for("the ofrep_listen log line", ofrep_addr, timeout=5)
        yield Rampart(
            proc=proc,
            dir=tmp,
            config_path=config_path,
            head=head,
            proxy=f"http://127.0.0.1:{listen}",
            admin=f"http://127.0.0.1:{admin}",
            ofrep=f"http://{addr}",
            session=session,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        stderr.close()
        stable.shutdown()
        canary.shutdown()
