"""End to end on loopback: the real `rampart run` in front of two real `rampart demo-upstream`
processes, scraped every second by a real Prometheus (Debian's package) that has Rampart's
alert rules loaded.

The canary is made to fail through its control endpoint while traffic flows through Rampart;
Prometheus must then show `rampart_breaker_state{state="open"} == 1` for it and fire
RampartBreakerOpen. Healing the canary must close the breaker again, without a restart.
Along the way: `promtool check metrics` on Rampart's live /metrics, and every query of the
Grafana dashboard against the live Prometheus.

The tests in this module share one stack and run in file order.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from conftest import ALERTS, GRAFANA_DIR, Proc, free_port, require_tool, start_demo_upstream, wait_for

ROUTE = "checkout"
# Bounds of the traffic generator: it stops at whichever comes first.
TRAFFIC_MAX_REQUESTS = 20_000
TRAFFIC_MAX_SECONDS = 300
TRAFFIC_PAUSE = 0.02  # pacing between requests: about 40 requests a second

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
    kind: canary
    owner: team-ci
    match: {{path_prefix: /checkout}}
    identity: [header:x-user-id]
    stable: stable
    split: [{{backend: canary, percent: 50}}]
    # Short windows so the test sees the breaker open and close within seconds.
    breaker:
      window: 5s
      min_requests: 5
      max_error_rate: 0.5
      consecutive_errors: 5
      open_for: 2s
      max_open_for: 8s
      half_open_requests: 3
"""

PROMETHEUS = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - {rules}
scrape_configs:
  - job_name: rampart
    static_configs:
      - targets: ["127.0.0.1:{metrics_port}"]
"""


class Traffic:
    """Sends requests with distinct user ids through Rampart from a thread, bounded in count
    and time, tallying (status, x-version) pairs."""

    def __init__(self, base: str):
        self.base = base
        self.tally: Counter[tuple[int, str]] = Counter()
        self.errors = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.run, name="traffic", daemon=True)

    def run(self) -> None:
        session = requests.Session()
        deadline = time.monotonic() + TRAFFIC_MAX_SECONDS
        for n in range(TRAFFIC_MAX_REQUESTS):
            if self.stop.is_set() or time.monotonic() > deadline:
                break
            try:
                r = session.get(f"{self.base}/checkout/cart", headers={"x-user-id": f"user-{n % 997}"}, timeout=5)
                with self.lock:
                    self.tally[(r.status_code, r.headers.get("x-version", "-"))] += 1
            except requests.RequestException:
                with self.lock:
                    self.errors += 1
            self.stop.wait(TRAFFIC_PAUSE)

    def snapshot(self) -> Counter[tuple[int, str]]:
        with self.lock:
            return Counter(self.tally)


class Stack:
    def __init__(self, workdir: Path, rampart_bin: Path):
        self.workdir = workdir
        self.rampart_bin = rampart_bin
        self.procs: list[Proc] = []
        self.traffic: Traffic | None = None

    # -- start ---------------------------------------------------------------------------
    def start(self) -> None:
        stable, self.stable_url = start_demo_upstream(self.rampart_bin, "v1", self.workdir)
        self.procs.append(stable)
        canary, self.canary_url = start_demo_upstream(self.rampart_bin, "v2", self.workdir)
        self.procs.append(canary)
        self.start_rampart()
        self.start_prometheus()
        self.traffic = Traffic(self.proxy_url)
        self.traffic.thread.start()

    def start_rampart(self) -> None:
        # A port picked free can be taken before rampart binds it: try again (exit 3 = bind).
        for attempt in range(3):
            self.proxy_port, self.metrics_port = free_port(), free_port()
            config = self.workdir / "rampart.yaml"
            config.write_text(
                CONFIG.format(
                    proxy_port=self.proxy_port,
                    metrics_port=self.metrics_port,
                    state_dir=self.workdir / "state",
                    stable=self.stable_url,
                    canary=self.canary_url,
                )
            )
            proc = Proc(f"rampart-{attempt}", [str(self.rampart_bin), "run", "-c", str(config)], self.workdir)
            self.proxy_url = f"http://127.0.0.1:{self.proxy_port}"
            self.metrics_url = f"http://127.0.0.1:{self.metrics_port}"

            def ready() -> bool | None:
                if proc.popen.poll() is not None:
                    return None
                return requests.get(f"{self.metrics_url}/readyz", timeout=2).status_code == 200

            try:
                wait_for("rampart /readyz", lambda: ready() or proc.popen.poll() is not None, timeout=30)
            finally:
                self.procs.append(proc)
            if proc.popen.poll() is None:
                self.rampart = proc
                return
            if proc.popen.returncode != 3:
                pytest.fail(f"rampart exited {proc.popen.returncode}: {proc.stderr_tail()}")
        pytest.fail("rampart could not bind its listeners in 3 tries")

    def start_prometheus(self) -> None:
        binary = require_tool("prometheus")
        for attempt in range(3):
            port = free_port()
            config = self.workdir / "prometheus.yml"
            config.write_text(PROMETHEUS.format(rules=ALERTS, metrics_port=self.metrics_port))
            proc = Proc(
                f"prometheus-{attempt}",
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.workdir / f'tsdb-{attempt}'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                self.workdir,
            )
            self.procs.append(proc)
            self.prom_url = f"http://127.0.0.1:{port}"

            def ready() -> bool:
                if proc.popen.poll() is not None:
                    return True
                return requests.get(f"{self.prom_url}/-/ready", timeout=2).status_code == 200

            wait_for("prometheus /-/ready", ready, timeout=60)
            if proc.popen.poll() is None:
                return
        pytest.fail(f"prometheus did not start: {self.procs[-1].stderr_tail()}")

    # -- use -----------------------------------------------------------------------------
    def query(self, promql: str) -> list[dict[str, Any]]:
        r = requests.get(f"{self.prom_url}/api/v1/query", params={"query": promql}, timeout=5)
        body = r.json()
        assert body["status"] == "success", f"{promql}: {body}"
        return list(body["data"]["result"])

    def canary_control(self, **params: Any) -> dict[str, Any]:
        r = requests.post(f"{self.canary_url}/control", params=params, timeout=5)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def metrics_text(self) -> str:
        r = requests.get(f"{self.metrics_url}/metrics", timeout=5)
        assert r.status_code == 200
        return r.text

    def stop(self) -> None:
        if self.traffic is not None:
            self.traffic.stop.set()
            self.traffic.thread.join(timeout=10)
        for proc in reversed(self.procs):
            proc.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, rampart_bin: Path) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("e2e"), rampart_bin)
    try:
        s.start()
        yield s
    finally:
        s.stop()
        if s.traffic is not None:
            print(f"traffic: {dict(s.traffic.snapshot())}, transport errors: {s.traffic.errors}")


def promtool_check_metrics(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)


def test_live_metrics_pass_promtool_check_metrics(stack: Stack) -> None:
    # With traffic through both backends, so histograms and labelled counters are populated.
    wait_for(
        "requests answered by both backends",
        lambda: {v for (status, v) in stack.traffic.snapshot() if status == 200} >= {"v1", "v2"},  # type: ignore[union-attr]
        timeout=30,
    )
    text = stack.metrics_text()
    for family in ("rampart_requests_total", "rampart_request_duration_seconds_bucket", "rampart_split_ratio", "rampart_breaker_state"):
        assert family in text, f"{family} missing from /metrics"
    result = promtool_check_metrics(text)
    assert result.returncode == 0, f"promtool check metrics:\n{result.stdout}{result.stderr}"
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr


def test_prometheus_scrapes_rampart_with_the_alert_rules_loaded(stack: Stack) -> None:
    wait_for("up == 1", lambda: [r for r in stack.query('up{job="rampart"}') if r["value"][1] == "1"], timeout=30)
    rules = requests.get(f"{stack.prom_url}/api/v1/rules", timeout=5).json()["data"]["groups"]
    loaded = {r["name"]: r for g in rules for r in g["rules"]}
    for name in ("RampartBreakerOpen", "RampartBreakerFlapping", "RampartConfigReloadRejected", "RampartConfigStale", "RampartBulkheadSaturated", "RampartRouteExpired"):
        assert name in loaded, f"{name} not loaded"
        assert loaded[name]["health"] in ("ok", "unknown"), loaded[name]


def test_dashboard_queries_run_against_live_prometheus(stack: Stack) -> None:
    wait_for(
        "canary requests in Prometheus",
        lambda: stack.query(f'sum(rampart_requests_total{{route="{ROUTE}",backend="canary"}}) > 0'),
        timeout=30,
    )
    # rate() needs two samples: wait for a few scrapes of traffic.
    wait_for(
        "a request rate for the canary",
        lambda: stack.query(f'sum(rate(rampart_requests_total{{route="{ROUTE}",backend="canary"}}[10s])) > 0'),
        timeout=30,
    )
    dashboard = json.loads((GRAFANA_DIR / "dashboards" / "rampart.json").read_text())
    must_have_data = {"Effective split", "Breaker state", "Requests/s by backend", "Error ratio by backend", "Latency by backend (time to response headers)", "Replicas serving", "Config versions"}
    seen = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$route", ROUTE).replace("$instance", ".*").replace("$__rate_interval", "10s")
            result = stack.query(expr)
            if panel["title"] in must_have_data:
                assert result, f"panel {panel['title']!r}: no data for {expr}"
                seen.add(panel["title"])
    assert seen == must_have_data
    split = stack.query(f'avg by (backend) (rampart_split_ratio{{route="{ROUTE}"}})')
    ratios = {r["metric"]["backend"]: float(r["value"][1]) for r in split}
    assert ratios.get("canary") == pytest.approx(0.5), ratios
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            metric = var["query"]["query"].split("(")[1].split(",")[0].strip()
            label = var["query"]["query"].split(",")[1].strip(" )")
            values = requests.get(f"{stack.prom_url}/api/v1/label/{label}/values", params={"match[]": metric}, timeout=5).json()["data"]
            assert values, f"dashboard variable {var['name']} has no values"


def firing(stack: Stack, alertname: str) -> list[dict[str, Any]]:
    alerts = requests.get(f"{stack.prom_url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    return [
        a for a in alerts
        if a["labels"].get("alertname") == alertname
        and a["state"] == "firing"
        and a["labels"].get("route") == ROUTE
        and a["labels"].get("backend") == "canary"
    ]


def test_failing_canary_opens_the_breaker_and_fires_the_alert(stack: Stack) -> None:
    assert not stack.query(f'rampart_breaker_state{{route="{ROUTE}",backend="canary",state="open"}} == 1'), "breaker open before any failure"
    assert stack.canary_control(fail_rate=1.0)["fail_rate"] == 1.0
    open_series = wait_for(
        'rampart_breaker_state{state="open"} == 1 for the canary',
        lambda: stack.query(f'rampart_breaker_state{{route="{ROUTE}",backend="canary",state="open"}} == 1'),
        timeout=90,
        interval=0.5,
    )
    assert open_series[0]["metric"]["job"] == "rampart"
    alert = wait_for("RampartBreakerOpen firing", lambda: firing(stack, "RampartBreakerOpen"), timeout=90, interval=0.5)
    assert alert[0]["labels"]["severity"] == "warning"
    assert stack.query(f'rampart_breaker_transitions_total{{route="{ROUTE}",backend="canary",to="open"}} >= 1')
    # While open, the canary's users are served by stable: 200 from v1 keeps coming.
    before = stack.traffic.snapshot()[(200, "v1")]  # type: ignore[union-attr]
    wait_for("stable answering", lambda: stack.traffic.snapshot()[(200, "v1")] > before + 20, timeout=30)  # type: ignore[union-attr]


def test_healed_canary_closes_the_breaker_without_a_restart(stack: Stack) -> None:
    if not stack.query(f'rampart_breaker_transitions_total{{route="{ROUTE}",backend="canary",to="open"}} >= 1'):
        pytest.skip("the breaker never opened (see the previous test)")
    assert stack.canary_control(fail_rate=0.0)["fail_rate"] == 0.0
    wait_for(
        'rampart_breaker_state{state="closed"} == 1 for the canary',
        lambda: stack.query(f'rampart_breaker_state{{route="{ROUTE}",backend="canary",state="closed"}} == 1'),
        timeout=60,
        interval=0.5,
    )
    before = stack.traffic.snapshot()[(200, "v2")]  # type: ignore[union-attr]
    wait_for("the canary answering again", lambda: stack.traffic.snapshot()[(200, "v2")] > before + 10, timeout=30)  # type: ignore[union-attr]
    # The same rampart process served throughout.
    assert stack.rampart.popen.poll() is None
