"""The Grafana dashboard and provisioning files, statically: the panels issue 6 asks for,
queries that name only documented metrics (docs/metrics.md) and the dashboard's variables, and provisioning that
points where docker-compose.yml mounts the files. (The queries themselves run against a
live Prometheus in test_e2e_prometheus.py.)"""

from __future__ import annotations

import json
import re
from typing import Any, Iterator

import yaml

from conftest import GRAFANA_DIR, REPO, DOCUMENTED_METRICS

DASHBOARD = GRAFANA_DIR / "dashboards" / "rampart.json"


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def exprs(panel: dict[str, Any]) -> list[str]:
    return [t["expr"] for t in panel.get("targets", [])]


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def test_dashboard_has_the_panels_per_route() -> None:
    dashboard = load()
    repeated = [p for p in dashboard["panels"] if p["type"] == "row" and p.get("repeat") == "route"]
    assert len(repeated) == 1, "one row repeated per route"
    everything = "\n".join(e for p in panels(dashboard) for e in exprs(p))
    assert "rampart_split_ratio" in everything
    assert re.search(r"sum by \(backend\) \(rate\(rampart_requests_total\{", everything)
    assert re.search(r'code_class=~"5xx\|error"', everything), "error ratio per backend"
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (backend, le) (rate(rampart_request_duration_seconds_bucket" in everything
    breaker = [p for p in panels(dashboard) if "rampart_breaker_state" in "".join(exprs(p))]
    assert breaker and breaker[0]["type"] == "state-timeline"


def test_dashboard_queries_use_only_documented_metrics_and_defined_variables() -> None:
    dashboard = load()
    variables = {v["name"] for v in dashboard["templating"]["list"]} | {"__rate_interval", "__interval", "__range"}
    ids = set()
    for panel in panels(dashboard):
        assert panel["id"] not in ids, f"duplicate panel id {panel['id']}"
        ids.add(panel["id"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        for expr in exprs(panel):
            for metric in re.findall(r"\brampart_[a-z_]+", expr):
                family = re.sub(r"_(bucket|sum|count)$", "", metric)
                assert family in DOCUMENTED_METRICS, f"{panel['title']}: {metric} is not a documented metric"
            for var in re.findall(r"\$\{?(\w+)", expr):
                assert var in variables, f"{panel['title']}: ${var} is not a dashboard variable"
            assert expr.count("(") == expr.count(")"), f"{panel['title']}: unbalanced parentheses"


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus() -> None:
    provider = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "rampart.yml").read_text())
    datasource = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    grafana_volumes = compose["services"]["grafana"]["volumes"]
    path = provider["providers"][0]["options"]["path"]
    assert f"./deploy/grafana/dashboards:{path}:ro" in grafana_volumes
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana_volumes
    ds = datasource["datasources"][0]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    default_ds = [v for v in load()["templating"]["list"] if v["name"] == "datasource"][0]
    assert default_ds["query"] == "prometheus"
