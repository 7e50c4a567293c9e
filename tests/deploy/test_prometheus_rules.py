"""Rampart's alert rules and the compose stack's Prometheus config, checked by the real
promtool (Debian's prometheus package): syntax, PromQL, and the unit tests in
deploy/prometheus/rampart-alerts.test.yml."""

from __future__ import annotations

import re
import subprocess

import yaml

from conftest import ALERTS, PROM_DIR, DOCUMENTED_METRICS, require_tool

REQUIRED_ALERTS = {
    "RampartBreakerOpen",
    "RampartBreakerFlapping",
    "RampartConfigReloadRejected",
    "RampartConfigStale",
    "RampartBulkheadSaturated",
    "RampartRouteExpired",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=PROM_DIR)


def test_alert_rules_pass_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout, result.stdout


def test_alert_rules_unit_tests_pass_promtool_test_rules() -> None:
    result = promtool("test", "rules", "rampart-alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alerts_cover_breaker_reloads_bulkhead_and_expired_flags_with_unit_tests() -> None:
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    names = {r["alert"] for r in rules}
    assert names == REQUIRED_ALERTS
    tested = {t["alertname"] for case in yaml.safe_load((PROM_DIR / "rampart-alerts.test.yml").read_text())["tests"] for t in case["alert_rule_test"]}
    assert tested == REQUIRED_ALERTS, f"alerts without a unit test: {REQUIRED_ALERTS - tested}"
    for rule in rules:
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        for metric in re.findall(r"\brampart_[a-z_]+", rule["expr"]):
            assert metric in DOCUMENTED_METRICS, f"{rule['alert']} uses {metric}, which docs/metrics.md does not name"


def test_compose_prometheus_config_passes_promtool_check_config() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
