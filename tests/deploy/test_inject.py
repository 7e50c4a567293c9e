"""Sidecar injection against the real tools (docs/inject.md): the output of `rampart inject`
and the webhook's patches (applied with the `jsonpatch` library) validated strictly with
kubernetes-validate against Kubernetes 1.29 and the newest schema it has; the injector's
chart rendered by the Helm SDK and validated the same way; and the chart-sidecar checks of
test_helm_chart.py passed by an app injected with `rampart inject`.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonpatch
import kubernetes_validate
import pytest
import yaml

from conftest import REPO, Proc, free_port, wait_for

INJECTOR_CHART = REPO / "helm" / "rampart-injector"
KUBE_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
RELEASE = "mesh"
NAMESPACE = "rampart"

APP = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: shop, namespace: prod}
spec:
  replicas: 3
  selector: {matchLabels: {app: shop}}
  template:
    metadata:
      labels: {app: shop}
      annotations: {rampart.dev/config: shop-rampart}
    spec:
      automountServiceAccountToken: false
      securityContext:
        runAsNonRoot: true
        runAsUser: 10001
        seccompProfile: {type: RuntimeDefault}
      containers:
        - name: shop
          image: registry.example/shop:1.4.2
          ports:
            - {name: http, containerPort: 8080}
            - {name: metrics, containerPort: 9100}
          readinessProbe: {httpGet: {path: /ready, port: http}}
          livenessProbe: {tcpSocket: {port: http}}
---
apiVersion: v1
kind: Service
metadata: {name: shop, namespace: prod}
spec:
  selector: {app: shop}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: shop-rampart, namespace: prod}
data:
  rampart.yaml: |
    version: 1
    listen: 0.0.0.0:8080
    metrics_listen: 0.0.0.0:9090
    state_dir: /var/lib/rampart
    upstreams:
      stable: {url: "http://127.0.0.1:8080"}
    routes: []
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: prod}
spec:
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}, annotations: {rampart.dev/config: db-rampart}}
    spec:
      containers: [{name: db, image: db:1, ports: [{name: http, containerPort: 5000}]}]
  volumeClaimTemplates:
    - metadata: {name: data}
      spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: report, namespace: prod}
spec:
  schedule: "0 * * * *"
  jobTemplate:
    spec:
      template:
        metadata: {annotations: {rampart.dev/config: report-rampart}}
        spec:
          restartPolicy: Never
          containers: [{name: report, image: report:1}]
---
apiVersion: v1
kind: List
items:
  - apiVersion: apps/v1
    kind: DaemonSet
    metadata: {name: agent, namespace: prod}
    spec:
      selector: {matchLabels: {app: agent}}
      template:
        metadata: {labels: {app: agent}, annotations: {rampart.dev/config: agent-rampart}}
        spec: {containers: [{name: agent, image: agent:1, ports: [{name: http, containerPort: 7000}]}]}
"""


def run_inject(rampart: Path, text: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(rampart), "inject", *args, "-"], input=text, capture_output=True, text=True, timeout=60
    )


def objects_of(docs: list[Any]) -> list[dict[str, Any]]:
    out = []
    for d in docs:
        if not d:
            continue
        if d.get("kind") == "List":
            out.extend(d["items"])
        else:
            out.append(d)
    return out


def validate(obj: dict[str, Any]) -> None:
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"{version}: {obj['kind']}/{obj['metadata'].get('name')}: {path}: {e.message}")


def pod_template(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "Pod":
        return obj
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]
    return obj["spec"]["template"]


def sidecar(spec: dict[str, Any]) -> tuple[dict[str, Any], str]:
    hits = [
        (c, where)
        for where in ("initContainers", "containers")
        for c in spec.get(where) or []
        if c["name"] == "rampart"
    ]
    assert len(hits) == 1, f"expected one rampart container, got {len(hits)}"
    return hits[0]


# ---------------------------------------------------------------------------------------------
# rampart inject
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kube", ["1.29", "1.31", "1.32", None])
def test_inject_output_validates_strictly_and_injecting_again_changes_nothing(
    rampart_bin: Path, kube: str | None
) -> None:
    args = ["--kube-version", kube] if kube else []
    first = run_inject(rampart_bin, APP, *args)
    assert first.returncode == 0, first.stderr
    objects = objects_of(list(yaml.safe_load_all(first.stdout)))
    kinds = [o["kind"] for o in objects]
    assert kinds == ["Deployment", "Service", "ConfigMap", "StatefulSet", "CronJob", "DaemonSet"], kinds
    for obj in objects:
        validate(obj)
    injected = [o for o in objects if o["kind"] not in ("Service", "ConfigMap")]
    for obj in injected:
        container, where = sidecar(pod_template(obj)["spec"])
        old = kube in ("1.29", "1.31")
        takes_port = obj["kind"] != "CronJob"
        expected = "containers" if (old and takes_port) else "initContainers"
        assert where == expected, (kube, obj["kind"], where)
    second = run_inject(rampart_bin, first.stdout, *args)
    assert second.returncode == 0
    assert second.stdout == first.stdout


def test_opted_out_and_host_network_objects_come_out_unchanged(rampart_bin: Path) -> None:
    text = APP.replace("annotations: {rampart.dev/config: shop-rampart}",
                       "annotations: {rampart.dev/config: shop-rampart, rampart.dev/inject: disabled}")
    text = text.replace("spec: {containers: [{name: agent", "spec: {hostNetwork: true, containers: [{name: agent")
    run = run_inject(rampart_bin, text)
    assert run.returncode == 0
    before = objects_of(list(yaml.safe_load_all(text)))
    after = objects_of(list(yaml.safe_load_all(run.stdout)))
    assert after[0] == before[0]
    assert after[5] == before[5]
    assert "Deployment/shop: skipped: opted out (rampart.dev/inject: disabled)" in run.stderr.splitlines()
    assert "DaemonSet/agent: skipped: hostNetwork" in run.stderr.splitlines()


# The chart's sidecar checks (test_helm_chart.py), on an app injected by `rampart inject`.


def injected_app(rampart: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    run = run_inject(rampart, APP)
    assert run.returncode == 0, run.stderr
    objects = objects_of(list(yaml.safe_load_all(run.stdout)))
    deployment = objects[0]
    config_map = objects[2]
    spec = deployment["spec"]["template"]["spec"]
    return deployment, spec, yaml.safe_load(config_map["data"]["rampart.yaml"])


def effective_listen(container: dict[str, Any], config: dict[str, Any], env_name: str, field: str) -> int:
    """The port the sidecar listens on: its env override, else the config's field."""
    env = {e["name"]: e["value"] for e in container.get("env") or []}
    addr = env.get(env_name, config[field])
    return int(addr.rsplit(":", 1)[1])


def test_injected_config_is_a_configmap_mounted_as_a_directory_without_subpath(rampart_bin: Path) -> None:
    _, spec, _ = injected_app(rampart_bin)
    container, _ = sidecar(spec)
    volumes = [v for v in spec["volumes"] if v["name"] == "rampart-config"]
    assert len(volumes) == 1 and volumes[0]["configMap"]["name"] == "shop-rampart"
    mounts = [m for m in container["volumeMounts"] if m["name"] == "rampart-config"]
    assert len(mounts) == 1
    assert "subPath" not in mounts[0] and "subPathExpr" not in mounts[0]
    config_arg = container["args"][container["args"].index("-c") + 1]
    assert Path(config_arg).parent == Path(mounts[0]["mountPath"])
    assert Path(config_arg).name == "rampart.yaml"
    state = [v for v in spec["volumes"] if v["name"] == "rampart-state"]
    assert "emptyDir" in state[0]


def test_injected_probes_readiness_readyz_liveness_healthz_on_the_port_it_listens_on(rampart_bin: Path) -> None:
    _, spec, config = injected_app(rampart_bin)
    container, _ = sidecar(spec)
    metrics_port = effective_listen(container, config, "RAMPART_METRICS_LISTEN", "metrics_listen")
    proxy_port = effective_listen(container, config, "RAMPART_LISTEN", "listen")
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert named.get(get["port"], get["port"]) == metrics_port
    # The taken-over name points at the port the data plane listens on, never the app's.
    assert named["http"] == proxy_port
    app_ports = {p["containerPort"] for c in spec["containers"] if c["name"] != "rampart" for p in c.get("ports", [])}
    assert proxy_port not in app_ports and metrics_port not in app_ports


def test_injected_sidecar_runs_non_root_read_only_without_capabilities_and_with_seccomp(rampart_bin: Path) -> None:
    _, spec, _ = injected_app(rampart_bin)
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
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"]


def test_injected_scrape_annotations_point_at_the_metrics_port(rampart_bin: Path) -> None:
    deployment, spec, config = injected_app(rampart_bin)
    container, _ = sidecar(spec)
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == effective_listen(
        container, config, "RAMPART_METRICS_LISTEN", "metrics_listen"
    )


def test_injected_config_passes_rampart_check_with_the_sidecars_env(rampart_bin: Path, tmp_path: Path) -> None:
    _, spec, _ = injected_app(rampart_bin)
    container, _ = sidecar(spec)
    run = run_inject(rampart_bin, APP)
    config_text = objects_of(list(yaml.safe_load_all(run.stdout)))[2]["data"]["rampart.yaml"]
    data = tmp_path / "..2026_01"
    data.mkdir()
    (data / "rampart.yaml").write_text(config_text.replace("/var/lib/rampart", str(tmp_path / "state")))
    (tmp_path / "..data").symlink_to("..2026_01")
    (tmp_path / "rampart.yaml").symlink_to("..data/rampart.yaml")
    env = {**os.environ, **{e["name"]: e["value"] for e in container["env"]}}
    check = subprocess.run(
        [str(rampart_bin), "check", "-c", str(tmp_path / "rampart.yaml")], capture_output=True, text=True, env=env
    )
    assert check.returncode == 0, check.stderr
    assert "warning" not in check.stdout, check.stdout


# ---------------------------------------------------------------------------------------------
# The injector chart
# ---------------------------------------------------------------------------------------------


def render_injector(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(str(INJECTOR_CHART)) as c:
        manifests = c.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    out = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        out.extend(d for d in yaml.safe_load_all(text) if d)
    return out


@pytest.mark.parametrize("values", [{}, {"tls": {"mode": "certManager"}}, {"kubeVersion": "1.30", "replicaCount": 3}])
def test_injector_chart_objects_validate_and_the_webhook_is_safe(values: dict[str, Any]) -> None:
    objects = render_injector(values)
    kinds = sorted(o["kind"] for o in objects)
    cert_manager = values.get("tls", {}).get("mode") == "certManager"
    expected = ["Deployment", "MutatingWebhookConfiguration", "PodDisruptionBudget", "Service", "ServiceAccount"]
    expected += ["Certificate", "Issuer"] if cert_manager else ["Secret"]
    assert kinds == sorted(expected), kinds
    for obj in objects:
        if obj["apiVersion"].startswith("cert-manager.io/"):
            continue  # not a built-in kind: checked by shape below
        validate(obj)
    hook = next(o for o in objects if o["kind"] == "MutatingWebhookConfiguration")
    assert [w["name"] for w in hook["webhooks"]] == ["namespaces.inject.rampart.dev", "pods.inject.rampart.dev"]
    for w in hook["webhooks"]:
        assert w["failurePolicy"] == "Ignore"
        assert w["sideEffects"] == "None"
        assert w["timeoutSeconds"] <= 5
        assert w["reinvocationPolicy"] == "IfNeeded"
        assert w["admissionReviewVersions"] == ["v1"]
        assert w["clientConfig"]["service"]["path"] == "/mutate"
        exprs = w["namespaceSelector"]["matchExpressions"]
        name_expr = [e for e in exprs if e["key"] == "kubernetes.io/metadata.name"]
        assert name_expr == [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", NAMESPACE]}]
        assert w["rules"] == [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}]
    ns_hook, pod_hook = hook["webhooks"]
    assert {"key": "rampart.dev/inject", "operator": "In", "values": ["enabled"]} in ns_hook["namespaceSelector"]["matchExpressions"]
    assert ns_hook["objectSelector"]["matchExpressions"] == [{"key": "rampart.dev/inject", "operator": "NotIn", "values": ["disabled"]}]
    assert pod_hook["objectSelector"]["matchExpressions"] == [{"key": "rampart.dev/inject", "operator": "In", "values": ["enabled"]}]
    if cert_manager:
        assert hook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/{RELEASE}-rampart-injector"
        cert = next(o for o in objects if o["kind"] == "Certificate")
        assert f"{RELEASE}-rampart-injector.{NAMESPACE}.svc" in cert["spec"]["dnsNames"]
    else:
        secret = next(o for o in objects if o["kind"] == "Secret")
        for w in hook["webhooks"]:
            assert w["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    # No RBAC at all, and no API token in the injector's pods.
    assert not [o for o in objects if o["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")]
    sa = next(o for o in objects if o["kind"] == "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == values.get("replicaCount", 2)
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    kube = args[args.index("--kube-version") + 1]
    assert kube == values.get("kubeVersion", kube)
    assert kube.lstrip("v").split(".")[0] == "1"
    assert deployment["spec"]["template"]["metadata"]["labels"]["rampart.dev/inject"] == "disabled"


def test_injector_chart_lints_clean() -> None:
    report = helm.lint(str(INJECTOR_CHART), {}, strict=True, kube_version="v1.29.0")
    assert not report["errors"], report
    assert not [m for m in report["messages"] if m["severity"] >= 2], report


def test_injector_chart_refuses_a_timeout_over_5_seconds() -> None:
    with pytest.raises(Exception, match="timeoutSeconds"):
        render_injector({"webhook": {"timeoutSeconds": 10}})


# ---------------------------------------------------------------------------------------------
# The webhook, with the chart's generated certificate, patches applied by `jsonpatch`
# ---------------------------------------------------------------------------------------------


def pod_review(uid: str, annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "prod",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "dryRun": True,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions", "dryRun": ["All"]},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "generateName": "shop-7d9c6b8f5-",
                    "namespace": "prod",
                    "labels": {"app": "shop"},
                    "annotations": annotations,
                },
                "spec": {
                    "containers": [
                        {
                            "name": "shop",
                            "image": "shop:1",
                            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
                        }
                    ],
                    "restartPolicy": "Always",
                },
            },
        },
    }


@pytest.fixture
def injector(rampart_bin: Path, tmp_path: Path, procs: list[Proc]) -> tuple[int, ssl.SSLContext]:
    secret = next(o for o in render_injector({}) if o["kind"] == "Secret")
    for key in ("tls.crt", "tls.key", "ca.crt"):
        (tmp_path / key).write_bytes(base64.b64decode(secret["data"][key]))
    port = free_port()
    proc = Proc(
        "injector",
        [str(rampart_bin), "injector", "--listen", f"127.0.0.1:{port}",
         "--tls-cert", str(tmp_path / "tls.crt"), "--tls-key", str(tmp_path / "tls.key"), "--kube-version", "1.30"],
        tmp_path,
    )
    procs.append(proc)
    # The API server verifies the chain against caBundle; the name is the Service's, which
    # 127.0.0.1 is not, so only the hostname check is off here.
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    context.check_hostname = False

    def ready() -> bool:
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
        conn.request("GET", "/readyz")
        return conn.getresponse().status == 200

    wait_for("the injector's /readyz", ready, timeout=20)
    return port, context


def post(port: int, context: ssl.SSLContext, body: bytes) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    conn.request("POST", "/mutate", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, resp.read()


@pytest.mark.parametrize("annotations", [{"rampart.dev/config": "shop-rampart"},
                                         {"rampart.dev/config": "shop-rampart", "rampart.dev/native-sidecar": "false"}])
def test_webhook_patch_applied_by_jsonpatch_gives_a_valid_pod(
    injector: tuple[int, ssl.SSLContext], annotations: dict[str, str]
) -> None:
    port, context = injector
    review = pod_review("3a4b5c6d-0000-4000-8000-000000000001", annotations)
    status, body = post(port, context, json.dumps(review).encode())
    assert status == 200, body
    answer = json.loads(body)
    response = answer["response"]
    assert response["uid"] == review["request"]["uid"]
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    patch = jsonpatch.JsonPatch(json.loads(base64.b64decode(response["patch"])))
    pod = patch.apply(review["request"]["object"])
    validate(pod)
    container, where = sidecar(pod["spec"])
    # --kube-version 1.30 and a named port taken over: a plain container either way.
    assert where == "containers"
    assert any("127958" in w for w in response.get("warnings", [])) or annotations.get("rampart.dev/native-sidecar") == "false"
    assert pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] == 8080
    assert "name" not in pod["metadata"]


def test_webhook_refuses_garbage_and_the_wrong_api_version_clearly(injector: tuple[int, ssl.SSLContext]) -> None:
    port, context = injector
    status, body = post(port, context, b"\x00garbage")
    assert status == 400 and b"not JSON" in body
    review = pod_review("u", {})
    review["apiVersion"] = "admission.k8s.io/v1beta1"
    status, body = post(port, context, json.dumps(review).encode())
    assert status == 400 and b"admission.k8s.io/v1beta1" in body
