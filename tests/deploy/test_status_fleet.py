"""`rampart status --prometheus URL --selector SEL` (docs/status.md#the-fleet---prometheus) end to end: two
`rampart run` replicas scraped by a real Prometheus, one held on the first rollout step and
one moved to the second by its own verdict, one with a canary breaker open and a config
kill. The fleet view must show the drift, the open breaker on one replica of two, the kill
by source and two distinct config hashes, as text and as JSON; a selector that matches
nothing, or that Prometheus refuses, exits 1 with one line naming --selector.

Here rather than in tests/status.rs because it needs Debian's prometheus, which
.ci/deploy-checks.sh installs before it runs these tests.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import requests

from conftest import Proc, free_port, require_tool, start_demo_upstream, wait_for

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
  broken: {{url: "{broken}"}}
routes:
  - name: checkout
    match: {{path_prefix: /checkout}}
    identity: [header:x-user-id]
    split: [{{backend: canary}}]
    rollout: {{steps: [10, 50], step_interval: {step_interval}, min_requests: 5, max_error_rate_increase: 0.05, max_latency_ratio: 20}}
  - name: cart
    match: {{path_prefix: /cart}}
    identity: [header:x-user-id]
    split: [{{backend: broken, percent: 100}}]
    breaker: {{window: 10s, min_requests: 1000, max_error_rate: 0.5, consecutive_errors: 2, open_for: 5m, max_open_for: 10m}}
  - name: search
    match: {{path_prefix: /search}}
    identity: [header:x-user-id]
    split: [{{backend: canary, percent: 20}}]
{search_kill}"""

PROMETHEUS = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: rampart
    static_configs:
      - targets: [{targets}]
        labels: {{app: shop}}
"""

SELECTOR = '{app="shop"}'


def metric(metrics_port: int, name: str, labels: dict[str, str]) -> float | None:
    text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def start_replica(rampart_bin: Path, workdir: Path, name: str, ports: tuple[int, int], **fmt: str) -> Proc:
    config = workdir / f"{name}.yaml"
    config.write_text(CONFIG.format(proxy_port=ports[0], metrics_port=ports[1], state_dir=workdir / f"{name}-state", **fmt))
    proc = Proc(name, [str(rampart_bin), "run", "-c", str(config)], workdir)

    def ready() -> bool:
        assert proc.popen.poll() is None, f"{name} exited: {proc.stderr_tail()}"
        return requests.get(f"http://127.0.0.1:{ports[1]}/readyz", timeout=2).status_code == 200

    wait_for(f"{name} /readyz", ready, timeout=30)
    return proc


def status(rampart_bin: Path, prom: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(rampart_bin), "status", "--prometheus", prom, "--selector", SELECTOR, *extra],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def test_status_prometheus_shows_step_drift_open_breakers_kills_and_config_hashes(rampart_bin: Path, tmp_path: Path, procs: list[Proc]) -> None:
    upstreams = {}
    for name, extra in (("stable", []), ("canary", []), ("broken", ["--fail-rate", "1"])):
        proc, url = start_demo_upstream(rampart_bin, name, tmp_path) if not extra else start_failing_upstream(rampart_bin, name, tmp_path, extra)
        procs.append(proc)
        upstreams[name] = url
    ports = [(free_port(), free_port()) for _ in range(2)]
    prom_port = free_port()
    prom_config = tmp_path / "prometheus.yml"
    prom_config.write_text(PROMETHEUS.format(targets=", ".join(f'"127.0.0.1:{m}"' for _, m in ports)))
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

    # Replica "held": a one-hour step, so it stays on the first. Replica "moving": one-second
    # steps, moved on by its own verdicts; its search route is killed by its config.
    held = start_replica(rampart_bin, tmp_path, "held", ports[0], step_interval="1h", search_kill="", **upstreams)
    procs.append(held)
    moving = start_replica(
        rampart_bin, tmp_path, "moving", ports[1], step_interval="1s", search_kill="    killed: INC-9 fleet-wide\n", **upstreams
    )
    procs.append(moving)

    session = requests.Session()
    proxy = f"http://127.0.0.1:{ports[1][0]}"
    # The failing canary behind cart: two errors in a row open its breaker on "moving" only.
    for i in range(3):
        session.get(f"{proxy}/cart", headers={"x-user-id": f"c{i}"}, timeout=5)
    # Traffic on checkout until "moving" is on the second step (bounded).
    deadline = time.monotonic() + 60
    n = 0
    while metric(ports[1][1], "rampart_rollout_step", {"route": "checkout"}) != 1.0:
        assert time.monotonic() < deadline and n < 50_000, f"never reached step 2: {moving.stderr_tail()}"
        for _ in range(50):
            n += 1
            session.get(f"{proxy}/checkout", headers={"x-user-id": f"u{n}"}, timeout=5)
    assert metric(ports[1][1], "rampart_breaker_state", {"route": "cart", "backend": "broken", "state": "open"}) == 1.0

    def fleet_seen() -> dict | None:
        out = status(rampart_bin, prom, "--json")
        assert out.returncode == 0, out.stderr
        fleet = json.loads(out.stdout)
        routes = {r["route"]: r for r in fleet["routes"]}
        checkout, cart, search = routes.get("checkout"), routes.get("cart"), routes.get("search")
        if len(fleet["replicas"]) == 2 and checkout and checkout["drift"] and cart and cart["breakers"] and search and search["kills"]:
            return fleet
        return None

    fleet = wait_for("Prometheus to show both replicas and their differences", fleet_seen, timeout=60, interval=1)
    held_instance, moving_instance = f"127.0.0.1:{ports[0][1]}", f"127.0.0.1:{ports[1][1]}"
    routes = {r["route"]: r for r in fleet["routes"]}
    assert routes["checkout"]["steps"] == {"0": [held_instance], "1": [moving_instance]}
    assert routes["cart"]["breakers"] == [{"backend": "broken", "state": "open", "replicas": [moving_instance]}]
    assert routes["search"]["kills"] == {"config": [moving_instance]}
    assert routes["search"]["drift"] is False and routes["search"]["steps"] == {}
    assert len(fleet["config_sha256"]) == 2, fleet["config_sha256"]
    assert sorted(sum(fleet["config_sha256"].values(), [])) == sorted([held_instance, moving_instance])

    # The table: drift named on the route's rollout line, the rest counted per replica.
    out = status(rampart_bin, prom)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "\x1b" not in text, "no colour when piped"
    assert "2 replicas" in text and "2 DISTINCT CONFIGS" in text, text
    section = text[text.index("\ncheckout") :]
    rollout_line = next(line for line in section.splitlines() if line.strip().startswith("rollout"))
    assert "step 1: 1 replica" in rollout_line and "step 2: 1 replica" in rollout_line and "DRIFT" in rollout_line, text
    assert f"broken open on 1 replica [{moving_instance}] of 2" in text, text
    assert f"config: 1 replica [{moving_instance}]" in text, text

    # A selector that matches no replica, and one Prometheus refuses: one line, exit 1.
    out = subprocess.run(
        [str(rampart_bin), "status", "--prometheus", prom, "--selector", '{app="nope"}'],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 1 and len(out.stderr.splitlines()) == 1, out.stderr
    assert "check --selector" in out.stderr and "no rampart_build_info" in out.stderr, out.stderr
    out = subprocess.run(
        [str(rampart_bin), "status", "--prometheus", prom, "--selector", '{app=="shop"}'],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 1 and len(out.stderr.splitlines()) == 1, out.stderr
    assert "did not answer the query" in out.stderr and "--selector" in out.stderr, out.stderr


def start_failing_upstream(rampart: Path, version: str, workdir: Path, extra: list[str]) -> tuple[Proc, str]:
    """`rampart demo-upstream` answering every request 500."""
    proc = Proc(
        f"upstream-{version}",
        [str(rampart), "demo-upstream", "--listen", "127.0.0.1:0", "--version-label", version, *extra],
        workdir,
        stdout_pipe=True,
    )
    line = proc.read_line(timeout=15)
    assert "listening on http://" in line, line
    return proc, line.rsplit(" ", 1)[-1]
