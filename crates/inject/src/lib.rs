//! Sidecar injection as one pure mutation (docs/inject.md).
//!
//! A pod template (or a whole Pod) goes in as JSON, with its owner's kind and the
//! injector's [`Options`]; out comes [`Outcome::Injected`] (the patched object and warnings
//! for the user), [`Outcome::Skipped`] (and why) or [`Outcome::Unchanged`] (the sidecar is
//! already there). `rampart inject` (manifests) and `rampart injector` (the admission
//! webhook) both call [`inject_object`]; nothing here does I/O, so every rule is unit-tested
//! without sockets. Objects are `serde_json::Value`s so fields this crate does not know pass
//! through untouched.
//!
//! What is injected is the Helm chart's sidecar (helm/rampart/templates/_helpers.tpl): the
//! same container, probes, security context, resources and volumes. Traffic reaches it by
//! named-port takeover: the sidecar declares the port name Services target, the app's port
//! keeps its number under a new name, and app probes that used the name use the number.

pub mod patch;

use serde_json::{json, Map, Value};

/// Label or annotation: `enabled` opts a pod (label) or namespace in, `disabled` opts out.
pub const ANN_INJECT: &str = "rampart.dev/inject";
/// Annotation: the ConfigMap (key `rampart.yaml`) holding the sidecar's config.
pub const ANN_CONFIG: &str = "rampart.dev/config";
/// Annotation: `"false"` asks for a plain container instead of a native sidecar.
pub const ANN_NATIVE: &str = "rampart.dev/native-sidecar";
/// Annotation: the container port name to take over (default [`DEFAULT_PORT_NAME`]).
pub const ANN_PORT_NAME: &str = "rampart.dev/port-name";
/// Annotation: the sidecar's data-plane port (default [`DEFAULT_PROXY_PORT`]).
pub const ANN_PROXY_PORT: &str = "rampart.dev/proxy-port";
/// Annotation: the sidecar's metrics/health port (default [`DEFAULT_METRICS_PORT`]).
pub const ANN_METRICS_PORT: &str = "rampart.dev/metrics-port";
/// Annotation: the sidecar's image, overriding the injector's.
pub const ANN_IMAGE: &str = "rampart.dev/image";
/// Annotation: the sidecar's CPU request.
pub const ANN_CPU_REQUEST: &str = "rampart.dev/cpu-request";
/// Annotation: the sidecar's CPU limit (`none`: no limit).
pub const ANN_CPU_LIMIT: &str = "rampart.dev/cpu-limit";
/// Annotation: the sidecar's memory request.
pub const ANN_MEMORY_REQUEST: &str = "rampart.dev/memory-request";
/// Annotation: the sidecar's memory limit.
pub const ANN_MEMORY_LIMIT: &str = "rampart.dev/memory-limit";
/// Annotation: the sidecar's `RUST_LOG`.
pub const ANN_LOG_LEVEL: &str = "rampart.dev/log-level";
/// Label set on injected pods (as the chart sets it), naming the ConfigMap; PodMonitors select it.
pub const LABEL_SIDECAR: &str = "rampart.dev/sidecar";

/// The injected container's name; its presence means "already injected".
pub const SIDECAR_NAME: &str = "rampart";
/// The ConfigMap volume's name.
pub const CONFIG_VOLUME: &str = "rampart-config";
/// The state_dir emptyDir's name.
pub const STATE_VOLUME: &str = "rampart-state";
/// Where the ConfigMap is mounted, as a directory (hot reload needs the `..data` swap).
pub const CONFIG_DIR: &str = "/etc/rampart/config";
/// The config file the sidecar runs with.
pub const CONFIG_FILE: &str = "/etc/rampart/config/rampart.yaml";
/// Where the state emptyDir is mounted; the config's `state_dir` should be this (or unset).
pub const STATE_DIR: &str = "/var/lib/rampart";
/// The port name taken over unless an annotation names another.
pub const DEFAULT_PORT_NAME: &str = "http";
/// The sidecar's data-plane port unless an annotation says otherwise (moved up past ports
/// the pod already declares).
pub const DEFAULT_PROXY_PORT: u16 = 4080;
/// The sidecar's metrics port unless an annotation says otherwise.
pub const DEFAULT_METRICS_PORT: u16 = 4090;
/// The metrics port's name (the chart's, which its PodMonitor uses).
pub const METRICS_PORT_NAME: &str = "rampart-metrics";
/// The data-plane port's name when no port is taken over (the chart's).
pub const PROXY_PORT_NAME: &str = "rampart-http";
/// Environment variable through which the sidecar's own port decides `listen`.
pub const ENV_LISTEN: &str = "RAMPART_LISTEN";
/// Environment variable through which the sidecar's own port decides `metrics_listen`.
pub const ENV_METRICS_LISTEN: &str = "RAMPART_METRICS_LISTEN";

/// Resource defaults, from the measured figures in docs/deploy.md#resources.
pub const DEFAULT_CPU_REQUEST: &str = "100m";
/// See [`DEFAULT_CPU_REQUEST`].
pub const DEFAULT_CPU_LIMIT: &str = "1";
/// See [`DEFAULT_CPU_REQUEST`].
pub const DEFAULT_MEMORY_REQUEST: &str = "32Mi";
/// See [`DEFAULT_CPU_REQUEST`].
pub const DEFAULT_MEMORY_LIMIT: &str = "128Mi";

/// A Kubernetes minor version, `1.32` and the like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KubeVersion {
    /// Major version (1).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
}

impl KubeVersion {
    /// The first version whose Services resolve a named targetPort declared by a native
    /// sidecar (kubernetes#127958, fixed by #127976 and #128850).
    pub const NAMED_PORTS_ON_NATIVE_SIDECARS: KubeVersion = KubeVersion {
        major: 1,
        minor: 32,
    };
    /// The first version with native sidecars on by default.
    pub const NATIVE_SIDECARS: KubeVersion = KubeVersion {
        major: 1,
        minor: 29,
    };

    /// Parses `1.30`, `v1.30.2`, `1.30+` or `v1.30.2-eks-1234` (what clusters report).
    pub fn parse(text: &str) -> Option<KubeVersion> {
        let t = text.trim().trim_start_matches('v');
        let mut parts = t.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor: String = parts
            .next()?
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        Some(KubeVersion {
            major,
            minor: minor.parse().ok()?,
        })
    }
}

impl std::fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// What the injector was told, beyond the pod's own annotations.
#[derive(Debug, Clone)]
pub struct Options {
    /// The ConfigMap for pods without the `rampart.dev/config` annotation.
    pub config: Option<String>,
    /// The cluster's version; `None` is the newest.
    pub kube_version: Option<KubeVersion>,
    /// The sidecar's image unless the pod's annotation names one.
    pub image: String,
}

/// What injection did to one pod template.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The sidecar was added.
    Injected(Injected),
    /// Not injected, and why (one short phrase: `hostNetwork`).
    Skipped {
        /// The reason, shown to the user.
        reason: String,
    },
    /// The sidecar is already there: nothing to do (the webhook may be called twice).
    Unchanged,
}

/// A successful injection.
#[derive(Debug, Clone, PartialEq)]
pub struct Injected {
    /// The whole object, patched.
    pub object: Value,
    /// What the user should know or change (one sentence each).
    pub warnings: Vec<String>,
    /// The ConfigMap the sidecar reads.
    pub config_map: String,
    /// Where the sidecar must send stable traffic: the app on localhost, when known.
    pub upstream_url: Option<String>,
    /// The app's port number behind `upstream_url`, when known.
    pub upstream_port: Option<u16>,
    /// The port name taken over, if any.
    pub taken_port: Option<String>,
    /// The name the sidecar's data-plane port is declared under: the taken name, else
    /// [`PROXY_PORT_NAME`]. A Service must target this name to reach Rampart.
    pub proxy_port_name: String,
    /// Every port number the pod declared before injection (the app's and its other
    /// containers'), so a config's other listeners can be checked against them.
    pub pod_ports: Vec<u16>,
    /// The sidecar's data-plane port.
    pub proxy_port: u16,
    /// The sidecar's metrics port.
    pub metrics_port: u16,
    /// Whether the sidecar is a native sidecar (else a plain container).
    pub native: bool,
}

/// Why an object could not be handled at all (the webhook admits it unchanged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// The object is not a JSON object.
    #[error("not an object")]
    NotAnObject,
    /// A field has the wrong type or is missing.
    #[error("{path}: {problem}")]
    Field {
        /// JSON path of the field.
        path: String,
        /// What is wrong with it.
        problem: &'static str,
    },
}

/// The kinds whose pod template this crate injects, and where that template is.
pub fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&[]),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => Some(&["spec", "template"]),
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// `Kind/name` for messages; a Pod with only `generateName` shows as `Pod/shop-`.
pub fn display_name(object: &Value) -> String {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("?");
    let meta = object.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .or_else(|| {
            meta.and_then(|m| m.get("generateName"))
                .and_then(Value::as_str)
        })
        .unwrap_or("");
    format!("{kind}/{name}")
}

/// Injects the sidecar into a workload object of a kind [`template_path`] knows; other
/// kinds are [`Outcome::Unchanged`]. For a Pod, the owner is its controller reference (a
/// Job's pods are Job pods).
pub fn inject_object(object: &Value, options: &Options) -> Result<Outcome, InjectError> {
    let map = object.as_object().ok_or(InjectError::NotAnObject)?;
    let kind = map.get("kind").and_then(Value::as_str).unwrap_or("");
    let Some(path) = template_path(kind) else {
        return Ok(Outcome::Unchanged);
    };
    let owner = if kind == "Pod" {
        controller_kind(object).unwrap_or("Pod")
    } else {
        kind
    };
    let mut template = object;
    let mut json_path = String::new();
    for segment in path {
        json_path.push('.');
        json_path.push_str(segment);
        template = template.get(*segment).ok_or(InjectError::Field {
            path: json_path.trim_start_matches('.').to_string(),
            problem: "missing",
        })?;
    }
    let outcome = inject_template(template, owner, options)?;
    Ok(match outcome {
        Outcome::Injected(mut injected) => {
            let mut whole = object.clone();
            let mut slot = &mut whole;
            for segment in path {
                slot = slot.get_mut(*segment).ok_or(InjectError::Field {
                    path: (*segment).to_string(),
                    problem: "missing",
                })?;
            }
            *slot = injected.object;
            injected.object = whole;
            Outcome::Injected(injected)
        }
        other => other,
    })
}

fn controller_kind(pod: &Value) -> Option<&str> {
    pod.pointer("/metadata/ownerReferences")?
        .as_array()?
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))?
        .get("kind")?
        .as_str()
}

fn string_at<'a>(meta: Option<&'a Value>, field: &str, key: &str) -> Option<&'a str> {
    meta?.get(field)?.get(key)?.as_str()
}

/// Injects the sidecar into one pod template (`{metadata, spec}`, or a whole Pod).
/// `owner_kind` decides what Jobs need: a plain sidecar container would keep them running.
pub fn inject_template(
    template: &Value,
    owner_kind: &str,
    options: &Options,
) -> Result<Outcome, InjectError> {
    if !template.is_object() {
        return Err(InjectError::NotAnObject);
    }
    let meta = template.get("metadata");
    let label = |k: &str| string_at(meta, "labels", k);
    let annotation = |k: &str| string_at(meta, "annotations", k);

    if label(ANN_INJECT) == Some("disabled") || annotation(ANN_INJECT) == Some("disabled") {
        return Ok(skipped(format!("opted out ({ANN_INJECT}: disabled)")));
    }
    let spec = template
        .get("spec")
        .and_then(Value::as_object)
        .ok_or(InjectError::Field {
            path: "spec".into(),
            problem: "missing or not an object",
        })?;
    let containers = list(spec, "containers")?;
    let init_containers = list(spec, "initContainers")?;
    if containers.is_empty() {
        return Err(InjectError::Field {
            path: "spec.containers".into(),
            problem: "no containers",
        });
    }
    if containers
        .iter()
        .chain(init_containers.iter())
        .any(|c| c.get("name").and_then(Value::as_str) == Some(SIDECAR_NAME))
    {
        return Ok(Outcome::Unchanged);
    }
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(skipped("hostNetwork".into()));
    }
    let Some(config_map) = annotation(ANN_CONFIG)
        .map(str::to_string)
        .or_else(|| options.config.clone())
    else {
        return Ok(skipped(format!(
            "no ConfigMap: annotate the pod template with {ANN_CONFIG}: NAME (or pass --config NAME)"
        )));
    };
    if !is_dns_subdomain(&config_map) {
        return Ok(skipped(format!(
            "{ANN_CONFIG}: {config_map:?} is not a ConfigMap name"
        )));
    }
    let volumes = list(spec, "volumes")?;
    for v in [CONFIG_VOLUME, STATE_VOLUME] {
        if volumes
            .iter()
            .any(|x| x.get("name").and_then(Value::as_str) == Some(v))
        {
            return Ok(skipped(format!("the pod already has a volume named {v}")));
        }
    }

    let mut warnings = Vec::new();
    let is_job = matches!(owner_kind, "Job" | "CronJob");

    // Ports declared anywhere in the pod: containers share one network namespace.
    let used: Vec<u16> = containers
        .iter()
        .chain(init_containers.iter())
        .flat_map(ports_of)
        .filter_map(|p| p.get("containerPort").and_then(Value::as_u64))
        .filter_map(|n| u16::try_from(n).ok())
        .collect();
    let port_names: Vec<String> = containers
        .iter()
        .chain(init_containers.iter())
        .flat_map(ports_of)
        .filter_map(|p| p.get("name").and_then(Value::as_str).map(str::to_string))
        .collect();

    let proxy_port = match pick_port(
        annotation(ANN_PROXY_PORT),
        ANN_PROXY_PORT,
        DEFAULT_PROXY_PORT,
        &used,
        &[],
    ) {
        Ok(p) => p,
        Err(reason) => return Ok(skipped(reason)),
    };
    let metrics_port = match pick_port(
        annotation(ANN_METRICS_PORT),
        ANN_METRICS_PORT,
        DEFAULT_METRICS_PORT,
        &used,
        &[proxy_port],
    ) {
        Ok(p) => p,
        Err(reason) => return Ok(skipped(reason)),
    };

    // Named-port takeover.
    let take_name = annotation(ANN_PORT_NAME).unwrap_or(DEFAULT_PORT_NAME);
    if !is_port_name(take_name) {
        return Ok(skipped(format!(
            "{ANN_PORT_NAME}: {take_name:?} is not a valid port name"
        )));
    }
    let owner = containers.iter().enumerate().find_map(|(i, c)| {
        ports_of(c).iter().find_map(|p| {
            let named = p.get("name").and_then(Value::as_str) == Some(take_name);
            let tcp = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP") == "TCP";
            let number = p.get("containerPort").and_then(Value::as_u64)?;
            (named && tcp).then_some((i, u16::try_from(number).ok()?))
        })
    });

    let kube = options.kube_version;
    let wants_plain = annotation(ANN_NATIVE) == Some("false");
    let old_kube = kube.is_some_and(|v| v < KubeVersion::NATIVE_SIDECARS);
    let named_port_bug =
        owner.is_some() && kube.is_some_and(|v| v < KubeVersion::NAMED_PORTS_ON_NATIVE_SIDECARS);
    let mut native = !(wants_plain || old_kube || named_port_bug);
    if !native && is_job {
        if wants_plain || old_kube {
            return Ok(skipped(format!(
                "a plain sidecar container would keep this {owner_kind} from completing (native sidecars need Kubernetes 1.29+)"
            )));
        }
        native = true;
        warnings.push(format!(
            "kept a native sidecar so the {owner_kind} can complete; on Kubernetes {} Services cannot resolve port {take_name:?} on it (kubernetes#127958, fixed in 1.32)",
            kube.map(|v| v.to_string()).unwrap_or_default()
        ));
    } else if named_port_bug && !wants_plain && !old_kube {
        // Only say so when the version alone decided it.
        warnings.push(format!(
            "plain sidecar container: on Kubernetes {} Services cannot resolve a named port on a native sidecar (kubernetes#127958, fixed in 1.32)",
            kube.map(|v| v.to_string()).unwrap_or_default()
        ));
    }

    let mut object = template.clone();
    let upstream_port;
    let proxy_port_name;
    {
        let spec_mut = object
            .get_mut("spec")
            .and_then(Value::as_object_mut)
            .ok_or(InjectError::NotAnObject)?;
        if let Some((index, number)) = owner {
            let new_name = rename_for(take_name, &port_names);
            if let Some(container) = spec_mut
                .get_mut("containers")
                .and_then(Value::as_array_mut)
                .and_then(|cs| cs.get_mut(index))
            {
                rename_port(container, take_name, &new_name);
                rewrite_probe_ports(container, take_name, number);
            }
            upstream_port = Some(number);
            proxy_port_name = take_name.to_string();
        } else {
            let first_port = containers.first().and_then(|c| {
                ports_of(c)
                    .iter()
                    .find(|p| p.get("protocol").and_then(Value::as_str).unwrap_or("TCP") == "TCP")
                    .and_then(|p| p.get("containerPort").and_then(Value::as_u64))
                    .and_then(|n| u16::try_from(n).ok())
            });
            upstream_port = first_port;
            proxy_port_name = PROXY_PORT_NAME.to_string();
            warnings.push(format!(
                "no container port named {take_name:?}: nothing routes to Rampart yet; name the app's port {take_name:?} (or set {ANN_PORT_NAME}), or point the Service's targetPort at {PROXY_PORT_NAME} ({proxy_port})"
            ));
        }

        let image = annotation(ANN_IMAGE).unwrap_or(&options.image).to_string();
        let resources = resources(&annotation, &mut warnings);
        let log_level = annotation(ANN_LOG_LEVEL).unwrap_or("info").to_string();
        let container = sidecar_container(SidecarSpec {
            image,
            native,
            proxy_port,
            proxy_port_name: &proxy_port_name,
            metrics_port,
            log_level,
            resources,
        });
        // list() above checked each of these is a list, null or absent.
        if native {
            edit_list(spec_mut, "initContainers", |l| l.insert(0, container));
        } else {
            edit_list(spec_mut, "containers", |l| l.push(container));
        }
        edit_list(spec_mut, "volumes", |l| {
            l.push(json!({"name": CONFIG_VOLUME, "configMap": {"name": config_map, "defaultMode": 0o444}}));
            l.push(json!({"name": STATE_VOLUME, "emptyDir": {"sizeLimit": "256Mi"}}));
        });
        if let Some(grace) = spec_mut
            .get("terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
        {
            if grace < 30 {
                warnings.push(format!(
                    "terminationGracePeriodSeconds is {grace}: Rampart drains for up to 25 s by default (drain.delay + drain.timeout); give the pod at least 30"
                ));
            }
        }
    }

    // Metadata: the chart's label, and scrape annotations without clobbering.
    let metadata = object
        .as_object_mut()
        .ok_or(InjectError::NotAnObject)?
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    let metadata = metadata.as_object_mut().ok_or(InjectError::Field {
        path: "metadata".into(),
        problem: "not an object",
    })?;
    let labels = object_entry(metadata, "labels")?;
    if !labels.contains_key(LABEL_SIDECAR) {
        labels.insert(LABEL_SIDECAR.into(), Value::String(config_map.clone()));
    }
    let annotations = object_entry(metadata, "annotations")?;
    for (key, value) in [
        ("prometheus.io/scrape", "true".to_string()),
        ("prometheus.io/port", metrics_port.to_string()),
        ("prometheus.io/path", "/metrics".to_string()),
    ] {
        match annotations.get(key).and_then(Value::as_str) {
            None => {
                annotations.insert(key.into(), Value::String(value));
            }
            Some(existing) if existing == value => {}
            Some(existing) => warnings.push(format!(
                "annotation {key} is already {existing:?}: kept; Rampart's metrics are on port {metrics_port} at /metrics (scrape it with a PodMonitor on port {METRICS_PORT_NAME})"
            )),
        }
    }

    Ok(Outcome::Injected(Injected {
        object,
        warnings,
        config_map,
        upstream_url: upstream_port.map(|p| format!("http://127.0.0.1:{p}")),
        upstream_port,
        taken_port: owner.map(|_| take_name.to_string()),
        proxy_port_name,
        pod_ports: used,
        proxy_port,
        metrics_port,
        native,
    }))
}

fn skipped(reason: String) -> Outcome {
    Outcome::Skipped { reason }
}

fn object_entry<'a>(
    map: &'a mut Map<String, Value>,
    key: &str,
) -> Result<&'a mut Map<String, Value>, InjectError> {
    let entry = map
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if entry.is_null() {
        *entry = Value::Object(Map::new());
    }
    entry.as_object_mut().ok_or(InjectError::Field {
        path: format!("metadata.{key}"),
        problem: "not an object",
    })
}

/// Edits the list at `key`, an empty list when absent, null or not a list.
fn edit_list(map: &mut Map<String, Value>, key: &str, edit: impl FnOnce(&mut Vec<Value>)) {
    let mut list = match map.remove(key) {
        Some(Value::Array(list)) => list,
        _ => Vec::new(),
    };
    edit(&mut list);
    map.insert(key.to_string(), Value::Array(list));
}

fn list<'a>(spec: &'a Map<String, Value>, key: &str) -> Result<&'a [Value], InjectError> {
    match spec.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(InjectError::Field {
            path: format!("spec.{key}"),
            problem: "not a list",
        }),
    }
}

fn ports_of(container: &Value) -> &[Value] {
    container
        .get("ports")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The port an annotation asks for (refused if the pod already uses it), or the default
/// moved up past the pod's own ports.
fn pick_port(
    asked: Option<&str>,
    key: &str,
    default: u16,
    used: &[u16],
    also: &[u16],
) -> Result<u16, String> {
    if let Some(text) = asked {
        let port: u16 = text
            .trim()
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{key}: {text:?} is not a port number"))?;
        if used.contains(&port) || also.contains(&port) {
            return Err(format!("{key}: port {port} is already used in the pod"));
        }
        return Ok(port);
    }
    let mut port = default;
    while used.contains(&port) || also.contains(&port) {
        port = port
            .checked_add(1)
            .ok_or_else(|| format!("{key}: no free port"))?;
    }
    Ok(port)
}

/// Kubernetes' IANA_SVC_NAME: 1-15 of `[a-z0-9-]`, a letter, no `-` at either end or twice.
pub fn is_port_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

fn is_dns_subdomain(name: &str) -> bool {
    (1..=253).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric())
}

/// The app port's new name: `app-NAME` (cut to 15 characters), unused in the pod.
fn rename_for(taken: &str, existing: &[String]) -> String {
    let fit = |s: String| -> String {
        let mut s: String = s.chars().take(15).collect();
        while s.ends_with('-') {
            s.pop();
        }
        s
    };
    let mut candidate = fit(format!("app-{taken}"));
    let mut n = 2;
    while existing.contains(&candidate) && n < 100 {
        candidate = fit(format!("app{n}-{taken}"));
        n += 1;
    }
    candidate
}

fn rename_port(container: &mut Value, from: &str, to: &str) {
    if let Some(ports) = container.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            if p.get("name").and_then(Value::as_str) == Some(from) {
                if let Some(m) = p.as_object_mut() {
                    m.insert("name".into(), Value::String(to.into()));
                }
            }
        }
    }
}

/// Probes and lifecycle hooks that named the taken port now use its number, so the
/// kubelet still reaches the app itself.
fn rewrite_probe_ports(container: &mut Value, name: &str, number: u16) {
    let mut handlers: Vec<&mut Value> = Vec::new();
    let Some(c) = container.as_object_mut() else {
        return;
    };
    for (key, value) in c.iter_mut() {
        match key.as_str() {
            "livenessProbe" | "readinessProbe" | "startupProbe" => handlers.push(value),
            "lifecycle" => {
                if let Some(l) = value.as_object_mut() {
                    handlers.extend(l.values_mut());
                }
            }
            _ => {}
        }
    }
    for handler in handlers {
        for action in ["httpGet", "tcpSocket"] {
            if let Some(port) = handler.get_mut(action).and_then(|a| a.get_mut("port")) {
                if port.as_str() == Some(name) {
                    *port = Value::from(number);
                }
            }
        }
    }
}

fn quantity_ok(q: &str) -> bool {
    let digits_end = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(digits_end);
    !number.is_empty()
        && number.parse::<f64>().is_ok()
        && [
            "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
        ]
        .contains(&suffix)
}

fn resources<'a>(
    annotation: &dyn Fn(&str) -> Option<&'a str>,
    warnings: &mut Vec<String>,
) -> Value {
    let mut pick = |key: &str, default: &str| -> Option<String> {
        match annotation(key) {
            None => Some(default.to_string()),
            Some("none") => None,
            Some(q) if quantity_ok(q) => Some(q.to_string()),
            Some(q) => {
                warnings.push(format!(
                    "{key}: {q:?} is not a Kubernetes quantity: using {default}"
                ));
                Some(default.to_string())
            }
        }
    };
    let mut requests = Map::new();
    let mut limits = Map::new();
    if let Some(v) = pick(ANN_CPU_REQUEST, DEFAULT_CPU_REQUEST) {
        requests.insert("cpu".into(), Value::String(v));
    }
    if let Some(v) = pick(ANN_MEMORY_REQUEST, DEFAULT_MEMORY_REQUEST) {
        requests.insert("memory".into(), Value::String(v));
    }
    if let Some(v) = pick(ANN_CPU_LIMIT, DEFAULT_CPU_LIMIT) {
        limits.insert("cpu".into(), Value::String(v));
    }
    if let Some(v) = pick(ANN_MEMORY_LIMIT, DEFAULT_MEMORY_LIMIT) {
        limits.insert("memory".into(), Value::String(v));
    }
    json!({"requests": requests, "limits": limits})
}

struct SidecarSpec<'a> {
    image: String,
    native: bool,
    proxy_port: u16,
    proxy_port_name: &'a str,
    metrics_port: u16,
    log_level: String,
    resources: Value,
}

/// The container, as the chart's `rampart.sidecar.container` renders it, plus the two
/// listener variables that make the declared ports the listening ones whatever the
/// ConfigMap's `listen` says.
fn sidecar_container(s: SidecarSpec<'_>) -> Value {
    let mut c = json!({
        "name": SIDECAR_NAME,
        "image": s.image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["run", "-c", CONFIG_FILE],
        "env": [
            {"name": "RUST_LOG", "value": s.log_level},
            {"name": "RAMPART_LOG_FORMAT", "value": "json"},
            {"name": ENV_LISTEN, "value": format!("0.0.0.0:{}", s.proxy_port)},
            {"name": ENV_METRICS_LISTEN, "value": format!("0.0.0.0:{}", s.metrics_port)},
        ],
        "ports": [
            {"name": s.proxy_port_name, "containerPort": s.proxy_port, "protocol": "TCP"},
            {"name": METRICS_PORT_NAME, "containerPort": s.metrics_port, "protocol": "TCP"},
        ],
        "startupProbe": {"httpGet": {"path": "/readyz", "port": METRICS_PORT_NAME},
            "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 30},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": METRICS_PORT_NAME},
            "periodSeconds": 5, "timeoutSeconds": 1, "failureThreshold": 2},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": METRICS_PORT_NAME},
            "periodSeconds": 10, "timeoutSeconds": 1, "failureThreshold": 3},
        "resources": s.resources,
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": true},
            {"name": STATE_VOLUME, "mountPath": STATE_DIR},
        ],
    });
    if s.native {
        if let Some(m) = c.as_object_mut() {
            m.insert("restartPolicy".into(), Value::String("Always".into()));
        }
    }
    c
}

/// Checks the sidecar's config (the ConfigMap's `rampart.yaml`, parsed) against what the
/// injection needs: its default upstream must be the app on localhost, and `state_dir`
/// the emptyDir (or unset). Returns what to change, one sentence each.
pub fn check_config(config: &Value, injected: &Injected) -> Vec<String> {
    let mut out = Vec::new();
    let cm = &injected.config_map;
    let default = config
        .get("default_upstream")
        .and_then(Value::as_str)
        .unwrap_or("stable");
    if let Some(want) = &injected.upstream_url {
        let url = config
            .get("upstreams")
            .and_then(|u| u.get(default))
            .and_then(|u| u.get("url"))
            .and_then(Value::as_str);
        let same = url.is_some_and(|u| {
            let u = u.trim_end_matches('/');
            u == want || u == want.replace("127.0.0.1", "localhost")
        });
        if !same {
            out.push(format!(
                "ConfigMap {cm}: upstreams.{default}.url is {}, but the app listens on {want}: set it to {want}",
                url.map(|u| format!("{u:?}")).unwrap_or_else(|| "missing".into())
            ));
        }
    }
    if let Some(dir) = config.get("state_dir").and_then(Value::as_str) {
        if dir.trim_end_matches('/') != STATE_DIR {
            out.push(format!(
                "ConfigMap {cm}: state_dir is {dir:?}, but the sidecar's writable emptyDir is {STATE_DIR}: set state_dir to {STATE_DIR} or remove it"
            ));
        }
    }
    // `listen` and `metrics_listen` are replaced by the pod spec's ports; the other
    // listeners stay the config's (loopback, for the app and for port-forwards) and share
    // the pod's network namespace with everything else.
    for field in ["admin_listen", "ofrep_listen"] {
        let Some(addr) = config.get(field).and_then(Value::as_str) else {
            continue;
        };
        let Some(port) = addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.trim().parse::<u16>().ok())
        else {
            continue;
        };
        let clash = if port == injected.proxy_port {
            Some(format!("the sidecar's data-plane port {port}"))
        } else if port == injected.metrics_port {
            Some(format!("the sidecar's metrics port {port}"))
        } else if injected.pod_ports.contains(&port) {
            Some(format!("port {port}, which the pod already declares"))
        } else {
            None
        };
        if let Some(clash) = clash {
            out.push(format!(
                "ConfigMap {cm}: {field} {addr} is {clash}: the sidecar could not bind it; pick a port the pod does not use"
            ));
        }
    }
    out
}

/// Checks a Service against an injected workload (both from the same `rampart inject`
/// input): a Service that selects the workload's pods but reaches the app's port by
/// number bypasses the sidecar, since named-port takeover only moves the port's *name*.
/// Returns what to change, one sentence each; nothing for Services that do not select
/// the pods. `workload` is the object before injection.
pub fn check_service(service: &Value, workload: &Value, injected: &Injected) -> Vec<String> {
    let mut out = Vec::new();
    if service.get("kind").and_then(Value::as_str) != Some("Service") {
        return out;
    }
    let Some(app_port) = injected.upstream_port else {
        return out;
    };
    let namespace = |v: &Value| {
        v.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    if let (Some(a), Some(b)) = (namespace(service), namespace(workload)) {
        if a != b {
            return out;
        }
    }
    let Some(selector) = service
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .filter(|s| !s.is_empty())
    else {
        return out;
    };
    let kind = workload.get("kind").and_then(Value::as_str).unwrap_or("");
    let Some(path) = template_path(kind) else {
        return out;
    };
    let mut template = workload;
    for segment in path {
        match template.get(*segment) {
            Some(t) => template = t,
            None => return out,
        }
    }
    let labels = template
        .pointer("/metadata/labels")
        .and_then(Value::as_object);
    let selects = selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v));
    if !selects {
        return out;
    }
    let name = display_name(service);
    let ports = service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    for port in ports {
        // No targetPort means the same number as `port`.
        let target = port.get("targetPort").or_else(|| port.get("port"));
        let number = target.and_then(Value::as_u64);
        if number == Some(u64::from(app_port)) {
            let label = port
                .get("name")
                .and_then(Value::as_str)
                .map(|n| format!("port {n:?}"))
                .or_else(|| port.get("port").map(|p| format!("port {p}")))
                .unwrap_or_else(|| "a port".into());
            out.push(format!(
                "{name} {label} targets the app's port by number ({app_port}), so its traffic bypasses Rampart: set its targetPort to {:?}",
                injected.proxy_port_name
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests;
