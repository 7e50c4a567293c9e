//! Every rule of docs/inject.md, without sockets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use serde_json::json;

fn opts() -> Options {
    Options {
        config: None,
        kube_version: None,
        image: "rampart:0.1.0".into(),
    }
}

fn deployment(annotations: Value, labels: Value, spec_extra: Value) -> Value {
    let mut spec = json!({
        "containers": [{
            "name": "shop",
            "image": "shop:1",
            "ports": [{"name": "http", "containerPort": 8080}, {"name": "admin", "containerPort": 9000}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
            "livenessProbe": {"tcpSocket": {"port": "http"}},
            "startupProbe": {"httpGet": {"path": "/s", "port": "admin"}},
        }]
    });
    if let (Some(s), Some(extra)) = (spec.as_object_mut(), spec_extra.as_object()) {
        for (k, v) in extra {
            s.insert(k.clone(), v.clone());
        }
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "shop"},
        "spec": {"selector": {"matchLabels": {"app": "shop"}}, "template": {
            "metadata": {"labels": labels, "annotations": annotations},
            "spec": spec,
        }}
    })
}

fn with_config() -> Value {
    deployment(
        json!({"rampart.dev/config": "shop-rampart"}),
        json!({"app": "shop"}),
        json!({}),
    )
}

fn injected(outcome: Outcome) -> Injected {
    match outcome {
        Outcome::Injected(i) => i,
        other => panic!("expected an injection, got {other:?}"),
    }
}

fn pod_spec(obj: &Value) -> &Value {
    &obj["spec"]["template"]["spec"]
}

fn sidecar(obj: &Value) -> (&Value, &'static str) {
    for list in ["initContainers", "containers"] {
        if let Some(c) = pod_spec(obj)[list]
            .as_array()
            .and_then(|l| l.iter().find(|c| c["name"] == "rampart"))
        {
            return (c, list);
        }
    }
    panic!("no sidecar in {obj}");
}

#[test]
fn opt_out_label_or_annotation_wins_over_everything() {
    for (ann, lab) in [
        (
            json!({"rampart.dev/inject": "disabled", "rampart.dev/config": "x"}),
            json!({}),
        ),
        (
            json!({"rampart.dev/config": "x"}),
            json!({"rampart.dev/inject": "disabled"}),
        ),
    ] {
        let out = inject_object(&deployment(ann, lab, json!({})), &opts()).unwrap();
        assert!(
            matches!(out, Outcome::Skipped { ref reason } if reason.contains("opted out")),
            "{out:?}"
        );
    }
}

#[test]
fn host_network_pods_are_skipped() {
    let d = deployment(
        json!({"rampart.dev/config": "x"}),
        json!({}),
        json!({"hostNetwork": true}),
    );
    assert_eq!(
        inject_object(&d, &opts()).unwrap(),
        Outcome::Skipped {
            reason: "hostNetwork".into()
        }
    );
}

#[test]
fn a_pod_without_config_annotation_or_flag_is_skipped_and_the_flag_fills_in() {
    let d = deployment(json!({}), json!({}), json!({}));
    let out = inject_object(&d, &opts()).unwrap();
    assert!(
        matches!(out, Outcome::Skipped { ref reason } if reason.contains("rampart.dev/config"))
    );
    let o = Options {
        config: Some("fallback".into()),
        ..opts()
    };
    let i = injected(inject_object(&d, &o).unwrap());
    assert_eq!(i.config_map, "fallback");
}

#[test]
fn the_annotation_wins_over_the_flag() {
    let o = Options {
        config: Some("fallback".into()),
        ..opts()
    };
    let i = injected(inject_object(&with_config(), &o).unwrap());
    assert_eq!(i.config_map, "shop-rampart");
    let vol = pod_spec(&i.object)["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == CONFIG_VOLUME)
        .unwrap()
        .clone();
    assert_eq!(vol["configMap"]["name"], "shop-rampart");
}

#[test]
fn injecting_twice_is_unchanged() {
    let i = injected(inject_object(&with_config(), &opts()).unwrap());
    assert_eq!(
        inject_object(&i.object, &opts()).unwrap(),
        Outcome::Unchanged
    );
}

#[test]
fn native_sidecar_is_the_first_init_container_with_restart_policy_always() {
    let d = deployment(
        json!({"rampart.dev/config": "x"}),
        json!({}),
        json!({"initContainers": [{"name": "migrate", "image": "m"}]}),
    );
    let i = injected(inject_object(&d, &opts()).unwrap());
    let inits = pod_spec(&i.object)["initContainers"].as_array().unwrap();
    assert_eq!(inits[0]["name"], "rampart");
    assert_eq!(inits[0]["restartPolicy"], "Always");
    assert_eq!(inits[1]["name"], "migrate");
    assert!(i.native);
}

#[test]
fn annotation_native_sidecar_false_gives_a_plain_container() {
    let d = deployment(
        json!({"rampart.dev/config": "x", "rampart.dev/native-sidecar": "false"}),
        json!({}),
        json!({}),
    );
    let i = injected(inject_object(&d, &opts()).unwrap());
    let (c, list) = sidecar(&i.object);
    assert_eq!(list, "containers");
    assert!(c.get("restartPolicy").is_none());
    assert!(!i.native);
}

#[test]
fn kube_1_29_to_1_31_taking_over_a_named_port_gives_a_plain_container_1_32_native() {
    for (v, native) in [
        ("1.29", false),
        ("v1.31.4-eks-1", false),
        ("1.32", true),
        ("1.37", true),
    ] {
        let o = Options {
            kube_version: KubeVersion::parse(v),
            ..opts()
        };
        let i = injected(inject_object(&with_config(), &o).unwrap());
        assert_eq!(i.native, native, "{v}");
        assert_eq!(
            i.warnings.iter().any(|w| w.contains("127958")),
            !native,
            "{v}: {:?}",
            i.warnings
        );
    }
    // Without a port to take over, 1.30 keeps the native sidecar.
    let d = deployment(
        json!({"rampart.dev/config": "x", "rampart.dev/port-name": "grpc"}),
        json!({}),
        json!({}),
    );
    let o = Options {
        kube_version: KubeVersion::parse("1.30"),
        ..opts()
    };
    assert!(injected(inject_object(&d, &o).unwrap()).native);
}

#[test]
fn jobs_keep_a_native_sidecar_and_refuse_a_plain_one() {
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
        "spec": {"template": {"metadata": {"annotations": {"rampart.dev/config": "x"}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "j", "image": "j", "ports": [{"name": "http", "containerPort": 80}]}]}}}});
    let o = Options {
        kube_version: KubeVersion::parse("1.30"),
        ..opts()
    };
    let i = injected(inject_object(&job, &o).unwrap());
    assert!(i.native);
    let mut plain = job.clone();
    plain["spec"]["template"]["metadata"]["annotations"]["rampart.dev/native-sidecar"] =
        json!("false");
    assert!(matches!(
        inject_object(&plain, &opts()).unwrap(),
        Outcome::Skipped { .. }
    ));
}

#[test]
fn named_port_takeover_renames_the_app_port_and_rewrites_its_probes() {
    let i = injected(inject_object(&with_config(), &opts()).unwrap());
    let app = &pod_spec(&i.object)["containers"][0];
    assert_eq!(
        app["ports"][0],
        json!({"name": "app-http", "containerPort": 8080})
    );
    assert_eq!(app["ports"][1]["name"], "admin");
    assert_eq!(app["readinessProbe"]["httpGet"]["port"], 8080);
    assert_eq!(app["livenessProbe"]["tcpSocket"]["port"], 8080);
    assert_eq!(
        app["startupProbe"]["httpGet"]["port"], "admin",
        "other names stay"
    );
    let (c, _) = sidecar(&i.object);
    assert_eq!(c["ports"][0]["name"], "http");
    assert_eq!(c["ports"][0]["containerPort"], i.proxy_port);
    assert_ne!(i.proxy_port, 8080);
    assert_eq!(i.upstream_url.as_deref(), Some("http://127.0.0.1:8080"));
    assert_eq!(i.taken_port.as_deref(), Some("http"));
}

#[test]
fn another_port_name_can_be_taken_over_by_annotation() {
    let d = deployment(
        json!({"rampart.dev/config": "x", "rampart.dev/port-name": "admin"}),
        json!({}),
        json!({}),
    );
    let i = injected(inject_object(&d, &opts()).unwrap());
    let app = &pod_spec(&i.object)["containers"][0];
    assert_eq!(app["ports"][1]["name"], "app-admin");
    assert_eq!(app["startupProbe"]["httpGet"]["port"], 9000);
    assert_eq!(app["readinessProbe"]["httpGet"]["port"], "http");
    assert_eq!(sidecar(&i.object).0["ports"][0]["name"], "admin");
}

#[test]
fn without_the_named_port_the_sidecar_declares_rampart_http_and_warns() {
    let d = deployment(
        json!({"rampart.dev/config": "x", "rampart.dev/port-name": "web"}),
        json!({}),
        json!({}),
    );
    let i = injected(inject_object(&d, &opts()).unwrap());
    assert_eq!(sidecar(&i.object).0["ports"][0]["name"], "rampart-http");
    assert!(
        i.warnings
            .iter()
            .any(|w| w.contains("no container port named \"web\"")),
        "{:?}",
        i.warnings
    );
}

#[test]
fn sidecar_ports_never_collide_with_the_pods_ports_and_agree_with_its_env() {
    let d = deployment(
        json!({"rampart.dev/config": "x"}),
        json!({}),
        json!({"containers": [{"name": "a", "image": "a", "ports": [{"name": "http", "containerPort": 4080}, {"containerPort": 4090}, {"containerPort": 4091}]}]}),
    );
    let i = injected(inject_object(&d, &opts()).unwrap());
    assert_eq!((i.proxy_port, i.metrics_port), (4081, 4092));
    let c = sidecar(&i.object).0;
    let env: Vec<(String, String)> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().into(),
                e["value"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(env.contains(&("RAMPART_LISTEN".into(), "0.0.0.0:4081".into())));
    assert!(env.contains(&("RAMPART_METRICS_LISTEN".into(), "0.0.0.0:4092".into())));
    // An explicit port that collides is refused.
    let d = deployment(
        json!({"rampart.dev/config": "x", "rampart.dev/proxy-port": "8080"}),
        json!({}),
        json!({}),
    );
    assert!(
        matches!(inject_object(&d, &opts()).unwrap(), Outcome::Skipped { ref reason } if reason.contains("8080"))
    );
}

#[test]
fn scrape_annotations_are_added_and_existing_ones_kept_with_a_warning() {
    let i = injected(inject_object(&with_config(), &opts()).unwrap());
    let ann = &i.object["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], i.metrics_port.to_string());
    assert_eq!(ann["prometheus.io/path"], "/metrics");
    let d = deployment(
        json!({"rampart.dev/config": "x", "prometheus.io/port": "9000"}),
        json!({}),
        json!({}),
    );
    let i = injected(inject_object(&d, &opts()).unwrap());
    assert_eq!(
        i.object["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"],
        "9000"
    );
    assert!(i.warnings.iter().any(|w| w.contains("prometheus.io/port")));
}

#[test]
fn config_is_mounted_as_a_directory_and_state_dir_on_an_empty_dir() {
    let i = injected(inject_object(&with_config(), &opts()).unwrap());
    let c = sidecar(&i.object).0;
    for m in c["volumeMounts"].as_array().unwrap() {
        assert!(m.get("subPath").is_none());
    }
    assert_eq!(c["volumeMounts"][0]["mountPath"], CONFIG_DIR);
    assert_eq!(c["args"], json!(["run", "-c", CONFIG_FILE]));
    let vols = pod_spec(&i.object)["volumes"].as_array().unwrap();
    assert!(vols
        .iter()
        .any(|v| v["name"] == STATE_VOLUME && v["emptyDir"].is_object()));
    assert_eq!(c["volumeMounts"][1]["mountPath"], STATE_DIR);
}

#[test]
fn security_context_is_hardened_and_probes_are_the_charts() {
    let i = injected(inject_object(&with_config(), &opts()).unwrap());
    let c = sidecar(&i.object).0;
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "rampart-metrics"})
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "rampart-metrics"})
    );
    assert_eq!(c["startupProbe"]["httpGet"]["path"], "/readyz");
}

#[test]
fn resources_default_to_the_measured_figures_and_annotations_override() {
    let i = injected(inject_object(&with_config(), &opts()).unwrap());
    assert_eq!(
        sidecar(&i.object).0["resources"],
        json!({"requests": {"cpu": "100m", "memory": "32Mi"}, "limits": {"cpu": "1", "memory": "128Mi"}})
    );
    let d = deployment(
        json!({"rampart.dev/config": "x", "rampart.dev/cpu-limit": "none", "rampart.dev/memory-limit": "256Mi", "rampart.dev/cpu-request": "lots"}),
        json!({}),
        json!({}),
    );
    let i = injected(inject_object(&d, &opts()).unwrap());
    assert_eq!(
        sidecar(&i.object).0["resources"],
        json!({"requests": {"cpu": "100m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}})
    );
    assert!(i
        .warnings
        .iter()
        .any(|w| w.contains("rampart.dev/cpu-request")));
}

#[test]
fn image_annotation_overrides_the_injectors_image() {
    let d = deployment(
        json!({"rampart.dev/config": "x", "rampart.dev/image": "reg/rampart:2"}),
        json!({}),
        json!({}),
    );
    assert_eq!(
        sidecar(&injected(inject_object(&d, &opts()).unwrap()).object).0["image"],
        "reg/rampart:2"
    );
}

#[test]
fn pods_cronjobs_and_unknown_kinds() {
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "shop-",
        "annotations": {"rampart.dev/config": "x"}, "ownerReferences": [{"kind": "Job", "controller": true, "name": "j", "apiVersion": "batch/v1", "uid": "u"}]},
        "spec": {"containers": [{"name": "a", "image": "a"}]}});
    assert_eq!(display_name(&pod), "Pod/shop-");
    let old = Options {
        kube_version: KubeVersion::parse("1.28"),
        ..opts()
    };
    assert!(
        matches!(inject_object(&pod, &old).unwrap(), Outcome::Skipped { ref reason } if reason.contains("completing"))
    );
    assert!(injected(inject_object(&pod, &opts()).unwrap()).native);
    let cron = json!({"kind": "CronJob", "metadata": {"name": "c"}, "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {
        "metadata": {"annotations": {"rampart.dev/config": "x"}}, "spec": {"restartPolicy": "OnFailure", "containers": [{"name": "a", "image": "a"}]}}}}}});
    let i = injected(inject_object(&cron, &opts()).unwrap());
    assert_eq!(
        i.object["spec"]["jobTemplate"]["spec"]["template"]["spec"]["initContainers"][0]["name"],
        "rampart"
    );
    let svc = json!({"kind": "Service", "metadata": {"name": "s"}, "spec": {}});
    assert_eq!(inject_object(&svc, &opts()).unwrap(), Outcome::Unchanged);
}

#[test]
fn a_template_without_containers_is_an_error_not_a_panic() {
    let bad = json!({"kind": "Deployment", "metadata": {"name": "x"}, "spec": {"template": {"spec": {"containers": "nope"}}}});
    assert!(inject_object(&bad, &opts()).is_err());
    let bad = json!({"kind": "Deployment", "metadata": {"name": "x"}, "spec": {}});
    assert!(inject_object(&bad, &opts()).is_err());
}

#[test]
fn check_config_names_what_to_change() {
    let i = injected(inject_object(&with_config(), &opts()).unwrap());
    let good = json!({"upstreams": {"stable": {"url": "http://127.0.0.1:8080"}}, "state_dir": "/var/lib/rampart"});
    assert!(check_config(&good, &i).is_empty());
    let bad =
        json!({"upstreams": {"stable": {"url": "http://127.0.0.1:3000"}}, "state_dir": "/data"});
    let w = check_config(&bad, &i);
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(w[0].contains("set it to http://127.0.0.1:8080"));
}

#[test]
fn kube_versions_parse_as_clusters_report_them() {
    assert_eq!(
        KubeVersion::parse("v1.30.2-gke.100"),
        Some(KubeVersion {
            major: 1,
            minor: 30
        })
    );
    assert_eq!(
        KubeVersion::parse("1.31+"),
        Some(KubeVersion {
            major: 1,
            minor: 31
        })
    );
    assert_eq!(KubeVersion::parse("banana"), None);
}

#[test]
fn the_patch_turns_the_original_into_the_injected_object() {
    let d = with_config();
    let i = injected(inject_object(&d, &opts()).unwrap());
    let ops = patch::diff(&d, &i.object);
    assert_eq!(patch::apply(&d, &ops), Some(i.object));
}

#[test]
fn null_lists_in_the_pod_spec_are_filled_in() {
    let d = deployment(
        json!({"rampart.dev/config": "x"}),
        json!({}),
        json!({"initContainers": null, "volumes": null}),
    );
    let i = injected(inject_object(&d, &opts()).unwrap());
    assert_eq!(pod_spec(&i.object)["initContainers"][0]["name"], "rampart");
    assert_eq!(pod_spec(&i.object)["volumes"].as_array().unwrap().len(), 2);
}

#[test]
fn a_config_listener_on_a_port_the_pod_uses_is_named_with_what_to_change() {
    let i = injected(inject_object(&with_config(), &opts()).unwrap());
    let base = json!({"upstreams": {"stable": {"url": "http://127.0.0.1:8080"}}});
    let mut clash = base.clone();
    clash["ofrep_listen"] = json!("127.0.0.1:8080");
    clash["admin_listen"] = json!(format!("127.0.0.1:{}", i.metrics_port));
    let w = check_config(&clash, &i);
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].contains("admin_listen") && w[0].contains("metrics port"),
        "{w:?}"
    );
    assert!(
        w[1].contains("ofrep_listen") && w[1].contains("already declares"),
        "{w:?}"
    );
    let mut fine = base;
    fine["ofrep_listen"] = json!("127.0.0.1:8181");
    fine["admin_listen"] = json!("127.0.0.1:9901");
    assert!(check_config(&fine, &i).is_empty());
}

fn service(target_port: Option<Value>, selector: Value) -> Value {
    let mut port = json!({"name": "web", "port": 80});
    if let Some(t) = target_port {
        port["targetPort"] = t;
    }
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "shop"},
        "spec": {"selector": selector, "ports": [port]}})
}

#[test]
fn a_service_reaching_the_app_port_by_number_is_told_to_target_the_name() {
    let d = with_config();
    let i = injected(inject_object(&d, &opts()).unwrap());
    let by_number = service(Some(json!(8080)), json!({"app": "shop"}));
    let w = check_service(&by_number, &d, &i);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("Service/shop") && w[0].contains("bypasses Rampart"),
        "{w:?}"
    );
    assert!(w[0].contains("set its targetPort to \"http\""), "{w:?}");
    // No targetPort at all is the port's own number.
    let mut implicit = service(None, json!({"app": "shop"}));
    implicit["spec"]["ports"][0]["port"] = json!(8080);
    assert_eq!(check_service(&implicit, &d, &i).len(), 1);
    // By name, another number, another selector, another namespace: nothing to say.
    let by_name = service(Some(json!("http")), json!({"app": "shop"}));
    assert!(check_service(&by_name, &d, &i).is_empty());
    let other_port = service(Some(json!(9000)), json!({"app": "shop"}));
    assert!(check_service(&other_port, &d, &i).is_empty());
    let other_app = service(Some(json!(8080)), json!({"app": "cart"}));
    assert!(check_service(&other_app, &d, &i).is_empty());
    let mut elsewhere = by_number.clone();
    elsewhere["metadata"]["namespace"] = json!("prod");
    let mut d_ns = d.clone();
    d_ns["metadata"]["namespace"] = json!("staging");
    assert!(check_service(&elsewhere, &d_ns, &i).is_empty());
}

#[test]
fn without_a_taken_port_the_service_is_told_to_target_rampart_http() {
    let d = deployment(
        json!({"rampart.dev/config": "x"}),
        json!({"app": "shop"}),
        json!({"containers": [{"name": "shop", "image": "shop:1", "ports": [{"name": "web", "containerPort": 8080}]}]}),
    );
    let i = injected(inject_object(&d, &opts()).unwrap());
    let w = check_service(&service(Some(json!(8080)), json!({"app": "shop"})), &d, &i);
    assert!(w[0].contains("\"rampart-http\""), "{w:?}");
}
