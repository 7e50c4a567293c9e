//! Sidecar injection, black-box (docs/inject.md): `rampart inject` on realistic manifests,
//! the injected sidecar started exactly as its pod spec says, and `rampart injector` over
//! real HTTPS with AdmissionReviews as the API server sends them.
//!
//! Certificates are made here with rcgen; everything listens on 127.0.0.1 ports the OS
//! picked. Every wait is a bounded poll.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::{dedent, free_port, TempDir, Upstream, IO_TIMEOUT, RAMPART};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

// ---------------------------------------------------------------------------------------------
// `rampart inject`
// ---------------------------------------------------------------------------------------------

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn inject(args: &[&str], stdin: &str) -> Run {
    let mut child = Command::new(RAMPART)
        .arg("inject")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml)
        .unwrap()
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

fn pod_spec(obj: &Value) -> &Value {
    match obj["kind"].as_str().unwrap() {
        "Pod" => &obj["spec"],
        "CronJob" => &obj["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        _ => &obj["spec"]["template"]["spec"],
    }
}

fn sidecar(obj: &Value) -> Option<(&Value, &'static str)> {
    for list in ["initContainers", "containers"] {
        if let Some(c) = pod_spec(obj)[list]
            .as_array()
            .and_then(|l| l.iter().find(|c| c["name"] == "rampart"))
        {
            return Some((c, list));
        }
    }
    None
}

fn shop(app_port: u16, extra_annotations: &str) -> String {
    dedent(&format!(
        r#"
        apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: shop
          namespace: prod
        spec:
          replicas: 3
          selector:
            matchLabels: {{app: shop}}
          template:
            metadata:
              labels: {{app: shop}}
              annotations:
                rampart.dev/config: shop-rampart
                {extra_annotations}
            spec:
              containers:
                - name: shop
                  image: registry.example/shop:1.4.2
                  ports:
                    - {{name: http, containerPort: {app_port}}}
                    - {{name: grpc, containerPort: 9000}}
                  readinessProbe:
                    httpGet: {{path: /ready, port: http}}
                  livenessProbe:
                    tcpSocket: {{port: http}}
                  startupProbe:
                    grpc: {{port: 9000}}
        "#
    ))
}

const SERVICE_AND_CONFIGMAP: &str = r#"
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
"#;

#[test]
fn a_deployment_with_named_ports_gets_a_native_sidecar_that_takes_over_http_and_its_probes_use_the_number(
) {
    let input = format!("{}---{SERVICE_AND_CONFIGMAP}", shop(8080, ""));
    let run = inject(&[], &input);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = docs(&run.stdout);
    assert_eq!(out.len(), 3);
    let deploy = &out[0];
    let (c, list) = sidecar(deploy).unwrap();
    assert_eq!(list, "initContainers");
    assert_eq!(pod_spec(deploy)["initContainers"][0]["name"], "rampart");
    assert_eq!(c["restartPolicy"], "Always");
    assert_eq!(c["ports"][0]["name"], "http");
    let app = &pod_spec(deploy)["containers"][0];
    assert_eq!(app["ports"][0]["name"], "app-http");
    assert_eq!(app["ports"][0]["containerPort"], 8080);
    assert_eq!(app["readinessProbe"]["httpGet"]["port"], 8080);
    assert_eq!(app["livenessProbe"]["tcpSocket"]["port"], 8080);
    // The Service and the ConfigMap pass through unchanged.
    let input_docs = docs(&input);
    assert_eq!(out[1], input_docs[1]);
    assert_eq!(out[2], input_docs[2]);
    // The ConfigMap in the input agrees: no warning about it; one line for the object.
    assert!(
        run.stderr
            .contains("Deployment/shop: injected (native sidecar, port \"http\" taken over"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);
}

#[test]
fn injecting_the_output_again_changes_nothing() {
    let input = format!("{}---{SERVICE_AND_CONFIGMAP}", shop(8080, ""));
    let once = inject(&[], &input);
    let twice = inject(&[], &once.stdout);
    assert_eq!(twice.code, 0);
    assert_eq!(twice.stdout, once.stdout);
    assert!(twice
        .stderr
        .contains("Deployment/shop: unchanged: already injected"));
}

#[test]
fn a_configmap_that_disagrees_is_named_with_what_to_change() {
    let input = format!("{}---{SERVICE_AND_CONFIGMAP}", shop(3000, ""));
    let run = inject(&[], &input);
    assert_eq!(run.code, 0);
    assert!(
        run.stderr.contains("Deployment/shop: warning: ConfigMap shop-rampart: upstreams.stable.url is \"http://127.0.0.1:8080\", but the app listens on http://127.0.0.1:3000: set it to http://127.0.0.1:3000"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_service_with_a_numeric_target_port_is_warned_about_and_passes_through() {
    let input = format!(
        "{}---{}",
        shop(8080, ""),
        SERVICE_AND_CONFIGMAP.replace("targetPort: http", "targetPort: 8080")
    );
    let run = inject(&[], &input);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("Deployment/shop: warning: Service/shop port \"http\" targets the app's port by number (8080), so its traffic bypasses Rampart: set its targetPort to \"http\""),
        "{}",
        run.stderr
    );
    assert_eq!(docs(&run.stdout)[1], docs(&input)[1]);
}

#[test]
fn statefulset_cronjob_pod_and_a_list_are_injected_and_other_kinds_pass_through() {
    let input = dedent(
        r#"
        apiVersion: v1
        kind: List
        items:
          - apiVersion: apps/v1
            kind: StatefulSet
            metadata: {name: db}
            spec:
              serviceName: db
              selector: {matchLabels: {app: db}}
              template:
                metadata: {labels: {app: db}}
                spec:
                  containers: [{name: db, image: db, ports: [{name: http, containerPort: 5000}]}]
          - apiVersion: v1
            kind: Secret
            metadata: {name: s}
            stringData: {a: b}
        ---
        apiVersion: batch/v1
        kind: CronJob
        metadata: {name: report}
        spec:
          schedule: "0 * * * *"
          jobTemplate:
            spec:
              template:
                spec:
                  restartPolicy: Never
                  containers: [{name: report, image: report}]
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: one}
        spec:
          containers: [{name: one, image: one}]
        "#,
    );
    let run = inject(&["--config", "shared", "--kube-version", "1.30"], &input);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = docs(&run.stdout);
    let items = out[0]["items"].as_array().unwrap();
    // 1.30 with a named port taken over: a plain container (kubernetes#127958).
    let (_, list) = sidecar(&items[0]).unwrap();
    assert_eq!(list, "containers");
    assert!(
        run.stderr
            .contains("StatefulSet/db: warning: plain sidecar container"),
        "{}",
        run.stderr
    );
    assert_eq!(items[1], docs(&input)[0]["items"][1]);
    // A CronJob without a port to take over keeps the native sidecar so its Jobs finish.
    let (_, list) = sidecar(&out[1]).unwrap();
    assert_eq!(list, "initContainers");
    let (c, _) = sidecar(&out[2]).unwrap();
    assert_eq!(c["ports"][0]["name"], "rampart-http");
    let vol = pod_spec(&out[2])["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "rampart-config")
        .unwrap()
        .clone();
    assert_eq!(vol["configMap"]["name"], "shared");
}

#[test]
fn opted_out_host_network_and_unconfigured_pods_are_skipped_with_one_line_each() {
    let input = dedent(
        r#"
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: quiet}
        spec:
          selector: {matchLabels: {app: quiet}}
          template:
            metadata:
              labels: {app: quiet, rampart.dev/inject: disabled}
              annotations: {rampart.dev/config: x}
            spec: {containers: [{name: a, image: a}]}
        ---
        apiVersion: apps/v1
        kind: DaemonSet
        metadata: {name: node}
        spec:
          selector: {matchLabels: {app: node}}
          template:
            metadata: {labels: {app: node}, annotations: {rampart.dev/config: x}}
            spec: {hostNetwork: true, containers: [{name: a, image: a}]}
        ---
        apiVersion: apps/v1
        kind: ReplicaSet
        metadata: {name: bare}
        spec:
          selector: {matchLabels: {app: bare}}
          template:
            metadata: {labels: {app: bare}}
            spec: {containers: [{name: a, image: a}]}
        "#,
    );
    let run = inject(&[], &input);
    assert_eq!(run.code, 0);
    assert_eq!(docs(&run.stdout), docs(&input));
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(
        lines[0],
        "Deployment/quiet: skipped: opted out (rampart.dev/inject: disabled)"
    );
    assert_eq!(lines[1], "DaemonSet/node: skipped: hostNetwork");
    assert!(
        lines[2].starts_with("ReplicaSet/bare: skipped: no ConfigMap"),
        "{}",
        lines[2]
    );
}

#[test]
fn a_listener_from_the_sidecars_env_that_collides_with_the_configs_is_refused_at_load() {
    let dir = TempDir::new("inject-env");
    let config = dir.write(
        "rampart.yaml",
        "version: 1\nlisten: 127.0.0.1:18080\nmetrics_listen: 127.0.0.1:19090\nofrep_listen: 127.0.0.1:8181\nupstreams:\n  stable: {url: \"http://127.0.0.1:8080\"}\nroutes: []\n",
    );
    let check = |listen: &str| {
        Command::new(RAMPART)
            .args(["check", "-c"])
            .arg(&config)
            .env("RAMPART_LISTEN", listen)
            .env("RAMPART_METRICS_LISTEN", "0.0.0.0:4090")
            .output()
            .unwrap()
    };
    let out = check("0.0.0.0:8181");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("RAMPART_LISTEN=0.0.0.0:8181: collides with ofrep_listen 127.0.0.1:8181"),
        "{stderr}"
    );
    let out = check("0.0.0.0:4090");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("collides with metrics_listen"));
    let out = check("0.0.0.0:4080");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn input_that_is_not_kubernetes_yaml_exits_1_naming_the_file_and_line() {
    let dir = TempDir::new("inject-bad");
    let good = dir.write(
        "good.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n",
    );
    let bad = dir.write(
        "bad.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n# comment\nhello: world\n",
    );
    let broken = dir.write("broken.yaml", "apiVersion: v1\nkind: [\n");
    let run = inject(&[good.to_str().unwrap(), bad.to_str().unwrap()], "");
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.is_empty(),
        "nothing is written when the input is refused"
    );
    assert!(
        run.stderr
            .contains(&format!("{}:5: not a Kubernetes object", bad.display())),
        "{}",
        run.stderr
    );
    let run = inject(&[broken.to_str().unwrap()], "");
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains(&format!("{}:2: not YAML", broken.display())),
        "{}",
        run.stderr
    );
    let run = inject(&[], "just a string\n");
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("-:1:"), "{}", run.stderr);
    // Usage errors are 2, as everywhere.
    assert_eq!(inject(&["--kube-version", "banana"], "").code, 2);
}

/// The sidecar exactly as the injected pod spec says: its args and env, the ConfigMap's
/// directory and the state emptyDir mapped to temp dirs. The declared ports must be the
/// ones it listens on, whatever the ConfigMap's `listen` says, and the taken-over port must
/// reach the app on its own port number.
#[tokio::test]
async fn the_injected_sidecar_started_as_its_pod_manifest_says_listens_on_the_declared_ports() {
    let app = Upstream::start("app").await;
    let app_port: u16 = app
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let (proxy_port, metrics_port) = (free_port(), free_port());
    let annotations = format!(
        "rampart.dev/proxy-port: \"{proxy_port}\"\n                rampart.dev/metrics-port: \"{metrics_port}\""
    );
    let cm = SERVICE_AND_CONFIGMAP.replace(
        "http://127.0.0.1:8080",
        &format!("http://127.0.0.1:{app_port}"),
    );
    let run = inject(&[], &format!("{}---{cm}", shop(app_port, &annotations)));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);
    let out = docs(&run.stdout);
    let (c, _) = sidecar(&out[0]).unwrap();

    // The pod's volumes, mapped: config dir (a ConfigMap-style ..data layout), state dir.
    let dir = TempDir::new("inject-sidecar");
    let config_dir = dir.path().join("config");
    let state_dir = dir.path().join("state");
    std::fs::create_dir_all(config_dir.join("..2026_01")).unwrap();
    std::fs::create_dir_all(&state_dir).unwrap();
    let rampart_yaml = out[2]["data"]["rampart.yaml"]
        .as_str()
        .unwrap()
        .replace("/var/lib/rampart", state_dir.to_str().unwrap());
    std::fs::write(config_dir.join("..2026_01/rampart.yaml"), rampart_yaml).unwrap();
    std::os::unix::fs::symlink("..2026_01", config_dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/rampart.yaml", config_dir.join("rampart.yaml")).unwrap();
    let map = |s: &str| -> String {
        let mut s = s.to_string();
        for m in c["volumeMounts"].as_array().unwrap() {
            let to = if m["name"] == "rampart-config" {
                &config_dir
            } else {
                &state_dir
            };
            s = s.replace(m["mountPath"].as_str().unwrap(), to.to_str().unwrap());
        }
        s
    };
    assert!(
        c.get("command").is_none(),
        "the image's entrypoint is the binary"
    );
    let args: Vec<String> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| map(a.as_str().unwrap()))
        .collect();
    let mut cmd = Command::new(RAMPART);
    cmd.args(&args)
        .env_clear()
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for e in c["env"].as_array().unwrap() {
        cmd.env(e["name"].as_str().unwrap(), e["value"].as_str().unwrap());
    }
    let mut child = ChildGuard(cmd.spawn().unwrap());

    let declared: Vec<(String, u16)> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["containerPort"].as_u64().unwrap() as u16,
            )
        })
        .collect();
    assert_eq!(
        declared,
        vec![
            ("http".into(), proxy_port),
            ("rampart-metrics".into(), metrics_port)
        ]
    );
    // The probes, as the kubelet sends them, on the declared metrics port.
    let client = common::client();
    let readyz = format!(
        "http://127.0.0.1:{metrics_port}{}",
        c["readinessProbe"]["httpGet"]["path"].as_str().unwrap()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = common::try_get(&client, &readyz, &[]).await {
            if r.status == 200 {
                break;
            }
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("the sidecar exited with {status}");
        }
        assert!(
            Instant::now() < deadline,
            "the sidecar never got ready on the declared port"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let healthz = common::get(
        &client,
        &format!("http://127.0.0.1:{metrics_port}/healthz"),
        &[],
    )
    .await;
    assert_eq!(healthz.status, 200);
    // The taken-over port reaches the app on its own number.
    let r = common::get(&client, &format!("http://127.0.0.1:{proxy_port}/cart"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(app.hits(), 1);
    let _ = child.0.kill();
}

struct ChildGuard(Child);
impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// `rampart injector`: certificates and an HTTPS client
// ---------------------------------------------------------------------------------------------

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "injector-ca");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A serving certificate for the webhook Service's name; returns (cert PEM, key PEM, DER).
    fn issue(&self) -> (String, String, CertificateDer<'static>) {
        let mut params =
            CertificateParams::new(vec!["rampart-injector.rampart.svc".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "rampart-injector.rampart.svc");
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().clone())
    }

    fn connector(&self) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }
}

struct Injector {
    child: Child,
    addr: SocketAddr,
    ca: Ca,
    dir: TempDir,
}

impl Injector {
    async fn start(extra: &[&str]) -> Injector {
        let ca = Ca::new();
        let dir = TempDir::new("injector");
        let (cert, key, _) = ca.issue();
        dir.write("tls.crt", &cert);
        dir.write("tls.key", &key);
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(RAMPART)
            .args(["injector", "--listen", &addr.to_string()])
            .arg("--tls-cert")
            .arg(dir.path().join("tls.crt"))
            .arg("--tls-key")
            .arg(dir.path().join("tls.key"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let injector = Injector {
            child,
            addr,
            ca,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = injector.request("GET", "/readyz", Vec::new()).await {
                return injector;
            }
            assert!(
                Instant::now() < deadline,
                "the injector never answered /readyz"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn connect(&self) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let name = ServerName::try_from("rampart-injector.rampart.svc").unwrap();
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| e.to_string())?;
        // As Go's net/http (the API server) does: no Nagle delay on small writes.
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        self.ca
            .connector()
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())
    }

    /// One request on a fresh HTTPS connection: (status, body).
    async fn request(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>), String> {
        let fut = async {
            let tls = self.connect().await?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let req = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header("host", "rampart-injector.rampart.svc")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, bytes.to_vec()))
        };
        tokio::time::timeout(IO_TIMEOUT, fut)
            .await
            .map_err(|_| "timed out".to_string())?
    }

    async fn review(&self, review: &Value) -> Value {
        let (status, body) = self
            .request("POST", "/mutate", review.to_string().into_bytes())
            .await
            .unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    async fn metrics(&self) -> String {
        String::from_utf8(self.request("GET", "/metrics", Vec::new()).await.unwrap().1).unwrap()
    }

    fn stop(mut self) -> i32 {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "the injector did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An AdmissionReview as the API server sends it for `kubectl create --dry-run=server` of
/// a ReplicaSet's pod: CREATE, generateName and no name, dryRun true.
fn pod_review(uid: &str, annotations: Value, labels: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "prod",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller", "groups": ["system:serviceaccounts"]},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "generateName": "shop-7d9c6b8f5-",
                    "namespace": "prod",
                    "labels": labels,
                    "annotations": annotations,
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "shop-7d9c6b8f5",
                        "uid": "0b7e2d6e-2f7c-4b55-9a59-3c8a4e3e0a11", "controller": true, "blockOwnerDeletion": true}]
                },
                "spec": {
                    "containers": [{
                        "name": "shop", "image": "shop:1",
                        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http", "scheme": "HTTP"}},
                        "resources": {}, "terminationMessagePath": "/dev/termination-log",
                        "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"
                    }],
                    "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
                    "serviceAccountName": "default", "securityContext": {}, "schedulerName": "default-scheduler",
                    "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority", "priority": 0
                },
                "status": {}
            },
            "oldObject": null,
            "dryRun": true,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions", "dryRun": ["All"]}
        }
    })
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let mut out = Vec::new();
    for chunk in text.as_bytes().chunks(4) {
        let data: Vec<u8> = chunk.iter().copied().filter(|c| *c != b'=').collect();
        let mut n = 0u32;
        for (i, c) in data.iter().enumerate() {
            n |= value(*c) << (18 - 6 * i);
        }
        for i in 0..data.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

#[tokio::test]
async fn webhook_patches_a_dry_run_pod_create_with_generate_name_and_the_patch_applies() {
    let injector = Injector::start(&[]).await;
    let review = pod_review(
        "705ab4f5-6393-11e8-b7cc-42010a800002",
        json!({"rampart.dev/config": "shop-rampart"}),
        json!({"app": "shop"}),
    );
    let answer = injector.review(&review).await;
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = &answer["response"];
    assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let patch: Vec<Value> =
        serde_json::from_slice(&base64_decode(response["patch"].as_str().unwrap())).unwrap();
    let pod = &review["request"]["object"];
    let patched = rampart_inject::patch::apply(pod, &patch).expect("the patch applies");
    let (c, list) = sidecar(&patched).unwrap();
    assert_eq!(list, "initContainers");
    assert_eq!(c["ports"][0]["name"], "http");
    assert_eq!(
        patched["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"],
        8080
    );
    assert!(patched["metadata"].get("name").is_none());
    // Called again (reinvocationPolicy: IfNeeded) on its own output: no patch.
    let mut again = review.clone();
    again["request"]["object"] = patched;
    let answer = injector.review(&again).await;
    assert!(answer["response"].get("patch").is_none(), "{answer}");
    let metrics = injector.metrics().await;
    assert!(
        metrics.contains("rampart_injector_admissions_total{result=\"injected\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rampart_injector_admissions_total{result=\"skipped\"} 1"),
        "{metrics}"
    );
    assert_eq!(injector.stop(), 0);
}

#[tokio::test]
async fn webhook_admits_opted_out_and_unpatchable_pods_unchanged() {
    let injector = Injector::start(&["--kube-version", "1.31"]).await;
    let review = pod_review(
        "u1",
        json!({"rampart.dev/config": "x"}),
        json!({"rampart.dev/inject": "disabled"}),
    );
    let answer = injector.review(&review).await;
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none());
    let mut review = pod_review("u2", json!({"rampart.dev/config": "x"}), json!({}));
    review["request"]["object"]["spec"]["containers"] = json!("not a list");
    let answer = injector.review(&review).await;
    assert_eq!(answer["response"]["uid"], "u2");
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none());
    let warning = answer["response"]["warnings"][0].as_str().unwrap();
    assert!(
        warning.starts_with("rampart: not injected: spec.containers"),
        "{warning}"
    );
    // 1.31 taking over a named port: a plain container, and the user is told why.
    let answer = injector
        .review(&pod_review(
            "u3",
            json!({"rampart.dev/config": "x"}),
            json!({}),
        ))
        .await;
    let warnings = answer["response"]["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("kubernetes#127958")),
        "{warnings:?}"
    );
    let metrics = injector.metrics().await;
    assert!(
        metrics.contains("rampart_injector_admissions_total{result=\"error\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn webhook_answers_garbage_wrong_api_version_and_huge_bodies_clearly() {
    let injector = Injector::start(&[]).await;
    let (status, body) = injector
        .request("POST", "/mutate", b"{not json".to_vec())
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("not JSON"));
    let mut review = pod_review("u", json!({}), json!({}));
    review["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let (status, body) = injector
        .request("POST", "/mutate", review.to_string().into_bytes())
        .await
        .unwrap();
    assert_eq!(status, 400);
    let text = String::from_utf8_lossy(&body).to_string();
    assert!(
        text.contains("admission.k8s.io/v1beta1") && text.contains("admissionReviewVersions"),
        "{text}"
    );
    let huge = vec![b' '; 10 * 1024 * 1024];
    let (status, body) = injector.request("POST", "/mutate", huge).await.unwrap();
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    let (status, _) = injector
        .request("GET", "/healthz", Vec::new())
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, _) = injector
        .request("GET", "/mutate", Vec::new())
        .await
        .unwrap();
    assert_eq!(status, 405);
}

#[tokio::test]
async fn a_certificate_rotated_on_disk_is_served_without_a_restart() {
    let injector = Injector::start(&[]).await;
    let first = injector
        .connect()
        .await
        .unwrap()
        .get_ref()
        .1
        .peer_certificates()
        .unwrap()[0]
        .clone();
    let (cert, key, der) = injector.ca.issue();
    assert_ne!(der, first);
    // As cert-manager's kubelet-synced Secret volume would: new files renamed into place.
    let dir = injector.dir.path();
    write_atomically(dir, "tls.key", &key);
    write_atomically(dir, "tls.crt", &cert);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let served = injector
            .connect()
            .await
            .unwrap()
            .get_ref()
            .1
            .peer_certificates()
            .unwrap()[0]
            .clone();
        if served == der {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        injector
            .request("GET", "/healthz", Vec::new())
            .await
            .unwrap()
            .0,
        200
    );
}

fn write_atomically(dir: &Path, name: &str, contents: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

#[tokio::test]
async fn the_injector_exits_3_when_it_cannot_bind() {
    let injector = Injector::start(&[]).await;
    let out = Command::new(RAMPART)
        .args(["injector", "--listen", &injector.addr.to_string()])
        .arg("--tls-cert")
        .arg(injector.dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(injector.dir.path().join("tls.key"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
