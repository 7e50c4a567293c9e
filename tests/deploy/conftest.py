"""Shared helpers for the deploy tests: paths, the real `rampart` binary, processes on
loopback and bounded waits.

Every wait here is a bounded poll (a deadline and a number of tries); nothing sleeps to make
time pass. Processes are started with their own PIDs kept and stopped by those PIDs only.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import pytest

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "rampart"
PROM_DIR = REPO / "deploy" / "prometheus"
GRAFANA_DIR = REPO / "deploy" / "grafana"
ALERTS = PROM_DIR / "rampart-alerts.yml"

# Every metric family docs/metrics.md names, plus what the code adds beyond it.
DOCUMENTED_METRICS = {
    "rampart_requests_total",
    "rampart_request_duration_seconds",
    "rampart_upstream_attempts_total",
    "rampart_split_ratio",
    "rampart_breaker_state",
    "rampart_breaker_transitions_total",
    "rampart_fallbacks_total",
    "rampart_bulkhead_rejections_total",
    "rampart_upstream_inflight",
    "rampart_upstream_healthy",
    "rampart_kill_active",
    "rampart_rollout_step",
    "rampart_rollout_status",
    "rampart_malformed_requests_total",
    "rampart_config_reloads_total",
    "rampart_config_last_reload_successful",
    "rampart_config_info",
    "rampart_route_expired",
    "rampart_build_info",
}

T = TypeVar("T")


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout: float,
    interval: float = 0.2,
    max_tries: int = 10_000,
) -> T:
    """Polls `probe` until it returns something truthy; at most `timeout` seconds and
    `max_tries` tries. Raises AssertionError naming `what` and the last value or error."""
    deadline = time.monotonic() + timeout
    last: object = None
    for _ in range(max_tries):
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
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


def free_port() -> int:
    """A loopback port that was free a moment ago (the OS picked it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_rampart() -> Path | None:
    """The binary under test: $RAMPART_BIN, else target/debug/rampart, else
    target/release/rampart (also under $CARGO_TARGET_DIR)."""
    env = os.environ.get("RAMPART_BIN")
    if env:
        return Path(env) if Path(env).is_file() else None
    targets = [Path(os.environ["CARGO_TARGET_DIR"])] if os.environ.get("CARGO_TARGET_DIR") else []
    targets.append(REPO / "target")
    for target in targets:
        for profile in ("debug", "release"):
            candidate = target / profile / "rampart"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
    return None


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run .ci/deploy-checks.sh (it installs it)")
    return path


@pytest.fixture(scope="session")
def rampart_bin() -> Path:
    found = find_rampart()
    if found is None:
        pytest.fail("no rampart binary: run `cargo build` (or .ci/deploy-checks.sh), or set RAMPART_BIN")
    return found


class Proc:
    """A child process with its output in files, stopped by its own PID."""

    def __init__(self, name: str, argv: list[str], workdir: Path, stdout_pipe: bool = False):
        self.name = name
        self.argv = argv
        self.stderr_path = workdir / f"{name}.stderr"
        self._stderr = open(self.stderr_path, "wb")
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else subprocess.DEVNULL,
            stderr=self._stderr,
            cwd=workdir,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def read_line(self, timeout: float) -> str:
        """The first line the process printed on stdout, within `timeout` seconds."""
        assert self.popen.stdout is not None
        ready, _, _ = select.select([self.popen.stdout], [], [], timeout)
        if not ready:
            raise AssertionError(f"{self.name} printed nothing in {timeout} s; stderr: {self.stderr_tail()}")
        return self.popen.stdout.readline().decode().strip()

    def stderr_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self._stderr.close()
        return self.popen.returncode


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Processes a test starts; all stopped at its end."""
    started: list[Proc] = []
    yield started
    for p in reversed(started):
        p.stop()


def start_demo_upstream(rampart: Path, version: str, workdir: Path) -> tuple[Proc, str]:
    """Starts `rampart demo-upstream` on an OS-picked loopback port; returns it and its
    base URL, read from the line it prints."""
    proc = Proc(
        f"upstream-{version}",
        [str(rampart), "demo-upstream", "--listen", "127.0.0.1:0", "--version-label", version],
        workdir,
        stdout_pipe=True,
    )
    line = proc.read_line(timeout=15)
    assert "listening on http://" in line, line
    return proc, line.rsplit(" ", 1)[-1]
