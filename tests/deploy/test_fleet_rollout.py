"""Fleet rollouts end to end (docs/rollout.md#fleets): two `rampart run` replicas with the same
rollout block (`started_at` and `prometheus`), scraped every second by a real Prometheus,
must walk the steps together from Prometheus's fleet-wide figures and be promoted; a third
replica started late must replay the past boundaries and land on the same status at once;
the drift query of docs/rollout.md#drift must find no drift.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from pathlib import Path

import pytest
import requests

from conftest import Proc, free_port, require_tool, start_demo_upstream, wait_for

STEP_SECONDS = 6
DELAY_SECONDS = 2

CONFIG = """\
version: 1
listen: 127.0.0.1:{proxy_port}
metrics_listen: 127.0.0.1:{metrics_port}
state_dir: {state_dir}
threads: 1
access_log: {{sample: 0}}
drain: {{delay: 0s, timeout: 2s}}
default_upstream: stable
upstreams:
  stable: {{url: "{stable}"}}
  canary: {{url: "{canary}"}}
routes:
  - name: checkout
    match: {{path_prefix: /checkout}}
    identity: [header:x-user-id]
    split: [{{backend: canary}}]
    rollout:
      steps: [10, 50, 100]
      step_interval: {step}s
      started_at: {started_at}
      min_requests: 10
      max_error_rate_increase: 0.05
      # Debug builds on a shared 2-core machine: latency is noise here, agreement is the point.
      max_latency_ratio: 20
      prometheus: {{url: "{prom}", selector: '{{job="rampart"}}', delay: {delay}s}}
"""

PROMETHEUS = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: rampart
    static_configs:
      - targets: [{targets}]
"""


def metric(metrics_url: str, name: str, labels: dict[str, str]) -> float | None:
    text = requests.get(f"{metrics_url}/metrics", timeout=5).text
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def status(metrics_url: str) -> str | None:
    for s in ("progressing", "paused", "promoted", "aborted"):
        if metric(metrics_url, "rampart_rollout_status", {"route": "checkout", "status": s}) == 1.0:
            return s
    return None


def start_replica(rampart_bin: Path, workdir: Path, name: str, ports: tuple[int, int], fmt: dict) -> Proc:
    config = workdir / f"{name}.yaml"
    config.write_text(CONFIG.format(proxy_port=ports[0], metrics_port=ports[1], state_dir=workdir / f"{name}-state", **fmt))
    proc = Proc(name, [str(rampart_bin), "run", "-c", str(config)], workdir)

    def ready() -> bool:
        assert proc.popen.poll() is None, f"{name} exited: {proc.stderr_tail()}"
        return requests.get(f"http://127.0.0.1:{ports[1]}/readyz", timeout=2).status_code == 200

    wait_for(f"{name} /readyz", ready, timeout=30)
    return proc


def test_replicas_sharing_started_at_and_prometheus_walk_the_steps_together(rampart_bin: Path, tmp_path: Path, procs: list[Proc]) -> None:
    stable, stable_url = start_demo_upstream(rampart_bin, "v1", tmp_path)
    procs.append(stable)
    canary, canary_url = start_demo_upstream(rampart_bin, "v2", tmp_path)
    procs.append(canary)
    ports = [(free_port(), free_port()) for _ in range(3)]
    targets = ", ".join(f'"127.0.0.1:{m}"' for _, m in ports)
    prom_port = free_port()
    prom_config = tmp_path / "prometheus.yml"
    prom_config.write_text(PROMETHEUS.format(targets=targets))
    prometheus = Proc(
        "prometheus",
        [
            require_tool("prometheus"),
            f"--config.file={prom_config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            "--log.level=warn",
        ],
        tmp_path,
    )
    procs.append(prometheus)
    prom = f"http://127.0.0.1:{prom_port}"
    wait_for("prometheus ready", lambda: requests.get(f"{prom}/-/ready", timeout=2).status_code == 200, timeout=60)

    start = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(seconds=4)
    fmt = dict(
        stable=stable_url,
        canary=canary_url,
        prom=prom,
        step=STEP_SECONDS,
        delay=DELAY_SECONDS,
        started_at=start.strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    replicas = [start_replica(rampart_bin, tmp_path, f"replica-{i}", ports[i], fmt) for i in range(2)]
    procs.extend(replicas)
    metrics_urls = [f"http://127.0.0.1:{m}" for _, m in ports]

    assert metric(metrics_urls[0], "rampart_split_ratio", {"route": "checkout", "backend": "canary"}) == 0.0, "nobody before started_at"

    stop = threading.Event()

    def traffic() -> None:
        session = requests.Session()
        deadline = time.monotonic() + 120
        n = 0
        while not stop.is_set() and time.monotonic() < deadline and n < 40_000:
            for p, _ in ports[:2]:
                try:
                    session.get(f"http://127.0.0.1:{p}/checkout", headers={"x-user-id": f"u{n}"}, timeout=5)
                except requests.RequestException:
                    pass
                n += 1
            stop.wait(0.01)

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        # Three verdicts: t1 (10 -> 50), t2 (50 -> 100), t3 (promoted), each at t_k + delay.
        budget = 4 + 3 * STEP_SECONDS + DELAY_SECONDS + 30
        wait_for("both replicas promoted", lambda: all(status(u) == "promoted" for u in metrics_urls[:2]), timeout=budget, interval=0.5)
    finally:
        stop.set()
        thread.join(timeout=10)
    for u in metrics_urls[:2]:
        assert metric(u, "rampart_rollout_step", {"route": "checkout"}) == 2.0
        assert metric(u, "rampart_split_ratio", {"route": "checkout", "backend": "canary"}) == 1.0

    # A replica that starts late replays t1..t3 from Prometheus and lands on the same status.
    late = start_replica(rampart_bin, tmp_path, "replica-late", ports[2], fmt)
    procs.append(late)
    wait_for("the late replica promoted", lambda: status(metrics_urls[2]) == "promoted", timeout=30, interval=0.5)
    assert re.search(r"rollout verdict", late.stderr_tail(200)), "the replayed verdicts are logged"

    # the drift query of docs/rollout.md#drift: no route with more than one distinct step across the fleet.
    def no_drift() -> bool:
        r = requests.get(
            f"{prom}/api/v1/query",
            params={"query": 'count by (route) (count_values by (route) ("step", rampart_rollout_step)) > 1'},
            timeout=5,
        ).json()
        up = requests.get(f"{prom}/api/v1/query", params={"query": 'rampart_rollout_step{route="checkout"}'}, timeout=5).json()
        return r["status"] == "success" and r["data"]["result"] == [] and len(up["data"]["result"]) == 3

    wait_for("no drift across the three replicas", no_drift, timeout=20, interval=0.5)
