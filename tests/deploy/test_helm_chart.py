"""The Helm chart, rendered by the real Helm SDK (helm-python-sdk embeds Helm's Go library)
and checked three ways: every object against the Kubernetes API schema (kubernetes-validate,
offline, strict) or, for prometheus-operator's PodMonitor and PrometheusRule, against that
operator's generated models; the properties issue 6 asks of the sidecar; and the rendered
rampart.yaml against the real `rampart check`.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from conftest import ALERTS, CHART, REPO, require_tool

RELEASE = "shop"
NAMESPACE = "prod"
# The oldest Kubernetes with native sidecars on by default, and the newest the validator knows.
KUBE_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]

# The tokens file: a list of {name, role, sha256} (hashes only, never the tokens).
ADMIN_TOKENS = "- {name: ci, role: viewer, sha256: " + "ab" * 32 + "}\n"

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "plain-container": {"rampart": {"nativeSidecar": False}},
    "monitoring": {
        "metrics": {
            "podMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
            "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        }
    },
    "admin": {"rampart": {"admin": {"enabled": True, "tokensFile": ADMIN_TOKENS}}},
    "admin-existing-secret": {
        "rampart": {"admin": {"enabled": True, "existingSecret": "shop-admin-tokens"}}
    },
    "demo-example": yaml.safe_load((CHART / "examples" / "demo-values.yaml").read_text()),
}


# ---------------------------------------------------------------------------------------------
# Rendering and lookup helpers
# ---------------------------------------------------------------------------------------------


def render(chart: Path, values: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Renders like `helm template` (an install) and returns every object."""
    with helm.Chart.load(str(chart)) as c:
        manifests = c.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {})
                objects.append(doc)
    return objects


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata'].get('name') for o in found]}"
    return found[0]


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "Deployment")["spec"]["template"]["spec"]


def sidecar(spec: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The rampart container and the list it is in."""
    hits = [
        (c, where)
        for where in ("initContainers", "containers")
        for c in spec.get(where) or []
        if c["name"] == "rampart"
    ]
    assert len(hits) == 1, f"expected one rampart container, got {len(hits)}"
    return hits[0]


def rampart_config(objects: list[dict[str, Any]], configmap_name: str) -> dict[str, Any]:
    cms = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == configmap_name]
    assert len(cms) == 1, f"the pod mounts ConfigMap {configmap_name}, which the chart did not render"
    return yaml.safe_load(cms[0]["data"]["rampart.yaml"])


def mounts_of(container: dict[str, Any], volume: str) -> list[dict[str, Any]]:
    return [m for m in container.get("volumeMounts") or [] if m["name"] == volume]


def volume(spec: dict[str, Any], name: str) -> dict[str, Any]:
    vols = [v for v in spec.get("volumes") or [] if v["name"] == name]
    assert len(vols) == 1, f"volume {name} missing"
    return vols[0]


def port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def seconds(duration: str) -> float:
    total = 0.0
    for number, unit in re.findall(r"([0-9]+)(ms|s|m|h)", duration):
        total += int(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def merged_values(overrides: dict[str, Any]) -> dict[str, Any]:
    with helm.Chart.load(str(CHART)) as c:
        return c.merge_values(overrides)


# ---------------------------------------------------------------------------------------------
# Schema validation of every rendered object
# ---------------------------------------------------------------------------------------------


def validate_object(obj: dict[str, Any]) -> None:
    if obj["apiVersion"].startswith("monitoring.coreos.com/"):
        # Not a built-in kind: kubernetes-validate has no schema for it. prometheus-operator's
        # CRD models (generated from its CRD schemas) check types and patterns; the round trip
        # catches fields the CRD does not have.
        from cloudcoil.models.prometheus_operator import v1 as promop

        model = getattr(promop, obj["kind"]).model_validate(obj)
        back = model.model_dump(mode="json", by_alias=True, exclude_none=True)
        assert back == obj, f"{obj['kind']} has fields its CRD does not know:\n{back}\n!=\n{obj}"
        return
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_rendered_object_is_valid_for_kubernetes(variant: str) -> None:
    objects = render(CHART, VARIANTS[variant])
    assert objects, "the chart rendered nothing"
    for obj in objects:
        try:
            validate_object(obj)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"{variant}: {obj['kind']}/{obj['metadata'].get('name')}: {path}: {e.message}")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_chart_lints_clean_with_helm(variant: str) -> None:
    report = helm.lint(str(CHART), VARIANTS[variant], strict=True, kube_version="v1.29.0")
    assert not report["errors"], report
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert not serious, serious


# ---------------------------------------------------------------------------------------------
# The properties of the sidecar (issue 6)
# ---------------------------------------------------------------------------------------------


def test_default_sidecar_is_native_init_container_with_restart_policy_always() -> None:
    spec = pod_spec(render(CHART, {}))
    container, where = sidecar(spec)
    assert where == "initContainers"
    assert container["restartPolicy"] == "Always"


def test_plain_container_fallback_puts_rampart_beside_the_app() -> None:
    spec = pod_spec(render(CHART, VARIANTS["plain-container"]))
    container, where = sidecar(spec)
    assert where == "containers"
    assert "restartPolicy" not in container
    assert not any(c["name"] == "rampart" for c in spec.get("initContainers") or [])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_config_is_a_configmap_mounted_as_a_directory_without_subpath(variant: str) -> None:
    objects = render(CHART, VARIANTS[variant])
    spec = pod_spec(objects)
    container, _ = sidecar(spec)
    cm_volume = volume(spec, "rampart-config")
    assert "configMap" in cm_volume
    mounts = mounts_of(container, "rampart-config")
    assert len(mounts) == 1
    assert "subPath" not in mounts[0] and "subPathExpr" not in mounts[0]
    # No container anywhere in the pod mounts the config with a subPath either.
    for c in (spec.get("initContainers") or []) + spec["containers"]:
        for m in mounts_of(c, "rampart-config"):
            assert "subPath" not in m, f"{c['name']} mounts the config with subPath"
    # Rampart reads the file through the mounted directory.
    config_arg = container["args"][container["args"].index("-c") + 1]
    assert Path(config_arg).parent == Path(mounts[0]["mountPath"])
    assert Path(config_arg).name == "rampart.yaml"
    rampart_config(objects, cm_volume["configMap"]["name"])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_no_checksum_annotation_so_config_edits_hot_reload(variant: str) -> None:
    deployment = one(render(CHART, VARIANTS[variant]), "Deployment")
    for annotations in (
        deployment["metadata"].get("annotations") or {},
        deployment["spec"]["template"]["metadata"].get("annotations") or {},
    ):
        assert not [k for k in annotations if k.startswith("checksum/")], annotations


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_probes_readiness_readyz_liveness_healthz_and_a_startup_probe(variant: str) -> None:
    objects = render(CHART, VARIANTS[variant])
    container, _ = sidecar(pod_spec(objects))
    config = rampart_config(objects, one(objects, "ConfigMap")["metadata"]["name"])
    metrics_port = port_of(config["metrics_listen"])
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        port = named.get(get["port"], get["port"])
        assert port == metrics_port, f"{probe} probes port {port}, metrics listen on {metrics_port}"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_sidecar_runs_non_root_read_only_without_capabilities_and_with_seccomp(variant: str) -> None:
    spec = pod_spec(render(CHART, VARIANTS[variant]))
    container, _ = sidecar(spec)
    pod_sc = spec.get("securityContext") or {}
    sc = container["securityContext"]
    assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True
    assert sc.get("runAsUser", pod_sc.get("runAsUser", 0)) != 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert not sc["capabilities"].get("add")
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False


def test_sidecar_has_requests_and_limits() -> None:
    container, _ = sidecar(pod_spec(render(CHART, {})))
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_state_dir_is_an_empty_dir(variant: str) -> None:
    objects = render(CHART, VARIANTS[variant])
    spec = pod_spec(objects)
    container, _ = sidecar(spec)
    config = rampart_config(objects, one(objects, "ConfigMap")["metadata"]["name"])
    mounts = [m for m in container["volumeMounts"] if m["mountPath"] == config["state_dir"]]
    assert len(mounts) == 1, f"nothing mounted at state_dir {config['state_dir']}"
    assert "emptyDir" in volume(spec, mounts[0]["name"])
    assert not mounts[0].get("readOnly")


def test_admin_is_off_by_default() -> None:
    objects = render(CHART, {})
    config = rampart_config(objects, one(objects, "ConfigMap")["metadata"]["name"])
    assert "admin_listen" not in config and "admin_tokens_file" not in config
    assert not [o for o in objects if o["kind"] == "Secret"]


@pytest.mark.parametrize("variant", ["admin", "admin-existing-secret"])
def test_admin_binds_loopback_and_reads_tokens_from_a_secret(variant: str) -> None:
    objects = render(CHART, VARIANTS[variant])
    spec = pod_spec(objects)
    container, _ = sidecar(spec)
    config = rampart_config(objects, one(objects, "ConfigMap")["metadata"]["name"])
    assert config["admin_listen"].startswith("127.0.0.1:")
    tokens_file = Path(config["admin_tokens_file"])
    mounts = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == tokens_file.parent]
    assert len(mounts) == 1 and mounts[0].get("readOnly") is True
    secret_volume = volume(spec, mounts[0]["name"])["secret"]
    assert [i["path"] for i in secret_volume["items"]] == [tokens_file.name]
    # Not group- or world-writable (Rampart refuses such a tokens file).
    assert secret_volume["defaultMode"] & 0o022 == 0
    # The admin port is not published as a container port.
    assert port_of(config["admin_listen"]) not in [p["containerPort"] for p in container["ports"]]
    secrets = [o for o in objects if o["kind"] == "Secret"]
    if variant == "admin":
        assert [s["metadata"]["name"] for s in secrets] == [secret_volume["secretName"]]
        assert secrets[0]["stringData"][tokens_file.name] == ADMIN_TOKENS
    else:
        assert secrets == [] and secret_volume["secretName"] == "shop-admin-tokens"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_pod_has_prometheus_scrape_annotations_for_the_metrics_port(variant: str) -> None:
    objects = render(CHART, VARIANTS[variant])
    annotations = one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    config = rampart_config(objects, one(objects, "ConfigMap")["metadata"]["name"])
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port_of(config["metrics_listen"]))
    assert annotations["prometheus.io/path"] == "/metrics"


def test_service_targets_rampart_and_rampart_targets_the_app_on_localhost() -> None:
    objects = render(CHART, {})
    container, _ = sidecar(pod_spec(objects))
    service = one(objects, "Service")
    config = rampart_config(objects, one(objects, "ConfigMap")["metadata"]["name"])
    target = service["spec"]["ports"][0]["targetPort"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named[target] == port_of(config["listen"])
    assert config["upstreams"]["stable"]["url"].startswith("http://127.0.0.1:")
    assert service["spec"]["selector"].items() <= one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"].items()


def test_termination_grace_covers_rampart_drain() -> None:
    objects = render(CHART, {})
    config = rampart_config(objects, one(objects, "ConfigMap")["metadata"]["name"])
    drain = config["drain"]
    assert pod_spec(objects)["terminationGracePeriodSeconds"] > seconds(drain["delay"]) + seconds(drain["timeout"])


def test_podmonitor_selects_the_pods_metrics_port_and_rule_matches_deploy_rules(tmp_path: Path) -> None:
    objects = render(CHART, VARIANTS["monitoring"])
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    container, _ = sidecar(pod_spec(objects))
    monitor = one(objects, "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] in [p["name"] for p in container["ports"]]
    assert endpoint["path"] == "/metrics"
    rule = one(objects, "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]
    # The chart's copy of the rules file is the same file.
    assert (CHART / "files" / "rampart-alerts.yml").read_text() == ALERTS.read_text()
    # And what the PrometheusRule carries passes promtool as a rules file.
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run([require_tool("promtool"), "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# The rendered rampart.yaml is a config the real binary accepts
# ---------------------------------------------------------------------------------------------


def configmap_dir(root: Path, text: str) -> Path:
    """Lays `text` out as kubelet does a ConfigMap volume: ..TIMESTAMP/rampart.yaml, ..data
    pointing at it, rampart.yaml -> ..data/rampart.yaml."""
    stamp = root / "..2026_01_01_00_00_00.000000001"
    stamp.mkdir(parents=True)
    (stamp / "rampart.yaml").write_text(text)
    os.symlink(stamp.name, root / "..data")
    os.symlink("..data/rampart.yaml", root / "rampart.yaml")
    return root / "rampart.yaml"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_config_passes_rampart_check(variant: str, rampart_bin: Path, tmp_path: Path) -> None:
    objects = render(CHART, VARIANTS[variant])
    text = one(objects, "ConfigMap")["data"]["rampart.yaml"]
    if variant.startswith("admin"):
        # The tokens file is mounted from the Secret in a pod; give `check` one to look at.
        config = yaml.safe_load(text)
        tokens = tmp_path / "tokens.yaml"
        tokens.write_text(ADMIN_TOKENS)
        tokens.chmod(0o600)
        text = text.replace(config["admin_tokens_file"], str(tokens))
    path = configmap_dir(tmp_path / "config", text)
    result = subprocess.run([str(rampart_bin), "check", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok: "), result.stdout
    assert "warning" not in result.stdout, result.stdout


# ---------------------------------------------------------------------------------------------
# values.schema.json: bad values fail at render (and so at install)
# ---------------------------------------------------------------------------------------------

BAD_VALUES = {
    "native sidecar flag not a boolean": {"rampart": {"nativeSidecar": "yes"}},
    "unknown top-level key": {"rampartt": {}},
    "unknown rampart key": {"rampart": {"nativesidecar": False}},
    "listener set inside rampart.config": {"rampart": {"config": {"listen": "0.0.0.0:1"}}},
    "state_dir set inside rampart.config": {"rampart": {"config": {"state_dir": "/tmp"}}},
    "route name with spaces": {"rampart": {"config": {"routes": [{"name": "Check Out"}]}}},
    "percent over 100": {"rampart": {"config": {"routes": [{"name": "a", "split": [{"backend": "stable", "percent": 150}]}]}}},
    "duration without a unit": {"rampart": {"config": {"drain": {"delay": "5"}}}},
    "unknown upstream field": {"rampart": {"config": {"upstreams": {"stable": {"url": "http://127.0.0.1:3000", "retries": 3}}}}},
    "upstream protocol unknown": {"rampart": {"config": {"upstreams": {"stable": {"url": "http://127.0.0.1:3000", "protocol": "http3"}}}}},
    "upstream url not http": {"rampart": {"config": {"upstreams": {"stable": {"url": "127.0.0.1:3000"}}}}},
    "port out of range": {"rampart": {"ports": {"proxy": 70000}}},
    "admin on without tokens": {"rampart": {"admin": {"enabled": True}}},
    "admin off loopback without tls": {"rampart": {"admin": {"enabled": True, "address": "0.0.0.0", "tokensFile": ADMIN_TOKENS}}},
    "log format unknown": {"rampart": {"logFormat": "xml"}},
    "service type unknown": {"service": {"type": "Ingress"}},
    "podmonitor interval bad": {"metrics": {"podMonitor": {"enabled": True, "interval": "15 seconds"}}},
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_values_violating_the_schema_fail_to_render(case: str) -> None:
    with pytest.raises(helm.HelmValuesError):
        render(CHART, BAD_VALUES[case])


def test_colliding_ports_fail_to_render() -> None:
    with pytest.raises(helm.HelmError, match="must differ"):
        render(CHART, {"rampart": {"ports": {"proxy": 9090, "metrics": 9090}}})


def test_non_loopback_admin_with_tls_renders() -> None:
    values = {
        "rampart": {
            "admin": {"enabled": True, "address": "0.0.0.0", "tokensFile": ADMIN_TOKENS},
            "config": copy.deepcopy(merged_values({})["rampart"]["config"]) | {"tls": {"cert_file": "/etc/tls/tls.crt", "key_file": "/etc/tls/tls.key"}},
        }
    }
    config = rampart_config(render(CHART, values), f"{RELEASE}-rampart")
    assert config["admin_listen"] == "0.0.0.0:9901"


# ---------------------------------------------------------------------------------------------
# Another chart includes the sidecar templates
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def consumer_chart(tmp_path: Path) -> Path:
    """examples/consumer with this chart copied in as its dependency (as `helm dependency
    build` would do from a repository)."""
    parent = tmp_path / "consumer"
    shutil.copytree(CHART / "examples" / "consumer", parent)
    shutil.copytree(CHART, parent / "charts" / "rampart", ignore=shutil.ignore_patterns("examples"))
    return parent


@pytest.mark.parametrize("native", [True, False])
def test_another_chart_includes_the_sidecar_templates(consumer_chart: Path, native: bool, rampart_bin: Path, tmp_path: Path) -> None:
    values = {
        "rampart": {
            "rampart": {"nativeSidecar": native},
            "metrics": {"podMonitor": {"enabled": True}},
        }
    }
    objects = render(consumer_chart, values)
    for obj in objects:
        validate_object(obj)
    kinds = sorted(o["kind"] for o in objects)
    # The parent owns the workload; the rampart chart adds only its ConfigMap and PodMonitor.
    assert kinds == ["ConfigMap", "Deployment", "PodMonitor", "Service"], kinds
    deployment = one(objects, "Deployment")
    assert deployment["metadata"]["name"] == f"{RELEASE}-shop"
    spec = deployment["spec"]["template"]["spec"]
    container, where = sidecar(spec)
    assert where == ("initContainers" if native else "containers")
    assert (container.get("restartPolicy") == "Always") is native
    assert [c["name"] for c in spec["containers"] if c["name"] != "rampart"] == ["shop"]
    config_volume = volume(spec, "rampart-config")
    config = rampart_config(objects, config_volume["configMap"]["name"])
    assert port_of(config["listen"]) == 8000
    assert "subPath" not in mounts_of(container, "rampart-config")[0]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert one(objects, "PodMonitor")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert one(objects, "Service")["spec"]["ports"][0]["targetPort"] in [p["name"] for p in container["ports"]]
    assert container["image"] == "rampart:0.1.0"
    path = configmap_dir(tmp_path / "config", one(objects, "ConfigMap")["data"]["rampart.yaml"])
    result = subprocess.run([str(rampart_bin), "check", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_chart_appversion_matches_the_rampart_crate_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    cargo = (REPO / "Cargo.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', cargo, re.M)
    assert version is not None
    assert chart["appVersion"] == version.group(1)
