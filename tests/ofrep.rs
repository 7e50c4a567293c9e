//! OpenFeature flag evaluation (docs/ofrep.md), black-box against the real binary: the
//! OFREP shapes of single and bulk answers, answers equal to where the proxy routes the
//! same identity, the bulk ETag and 304 until a kill or a config edit, hostile bodies, the
//! metric, and `ofrep_listen` off loopback without TLS refused.
//!
//! The listener is configured on port 0 and its address read from the start-up log line,
//! so no port is guessed. Every wait is a bounded poll.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    config, find_identity, metric_sum, rename_over, run_cli, send, sha256_hex, HttpClient, Rampart,
    Resp, TempDir, Upstream,
};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const OPERATOR: &str = "operator-token-0a9b8c7d6e5f4a3b2c1d0e9f8a7b";
const KILL_REASON: &str = r#"{"reason": "INC-7 canary corrupts carts"}"#;

fn tokens_yaml() -> String {
    format!(
        "- {{name: otto, role: operator, sha256: {}}}\n",
        sha256_hex(OPERATOR.as_bytes())
    )
}

/// `checkout` (canary 30 %, an allowlist, a header override, a force header), `dark-mode`
/// (a toggle at 100 %), `beta` (a gate reached by a header), `lottery` (random bucket
/// without identity); OFREP on port 0.
fn body(stable: &Upstream, canary: &Upstream, checkout_percent: u32) -> String {
    let routes = format!(
        "
        ofrep_listen: 127.0.0.1:0
        routes:
          - name: checkout
            match: {{path_prefix: /checkout}}
            identity: [header:x-user-id]
            split:
              - {{backend: canary, percent: {checkout_percent}}}
            overrides:
              force_header: x-rampart-force
              identities: {{canary: [qa-alice]}}
              headers: [{{name: x-employee, value: \"true\", backend: canary}}]
          - name: dark-mode
            kind: toggle
            match: {{path_prefix: /dark}}
            identity: [header:x-user-id]
            split:
              - {{backend: canary, percent: 100}}
          - name: beta
            kind: gate
            match: {{path_prefix: /beta}}
            identity: [header:x-user-id]
            overrides:
              headers: [{{name: x-beta, value: \"yes\", backend: canary}}]
          - name: lottery
            match: {{path_prefix: /lottery}}
            identity: [header:x-user-id]
            missing_identity: random
            split:
              - {{backend: canary, percent: 50}}
        "
    );
    config("stable", &[stable, canary], &routes)
}

/// The OFREP listener's address, from the `ofrep_listen` field of the start-up log line
/// (polled: at most 100 tries, 5 s).
async fn ofrep_addr(rampart: &Rampart) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(5);
    for _ in 0..100 {
        let stderr = rampart.stderr();
        if let Some(at) = stderr.find("\"ofrep_listen\":\"") {
            let rest = &stderr[at + "\"ofrep_listen\":\"".len()..];
            let end = rest.find('"').unwrap();
            return rest[..end].parse().unwrap();
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no ofrep_listen in the log:\n{}", rampart.stderr());
}

async fn post(client: &HttpClient, url: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    send(client, "POST", url, headers, body.as_bytes().to_vec()).await
}

fn json_of(resp: &Resp) -> Value {
    serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): status {} {}", resp.status, resp.text()))
}

struct Flags {
    client: HttpClient,
    base: String,
}

impl Flags {
    async fn new(rampart: &Rampart) -> Flags {
        Flags {
            client: common::client(),
            base: format!(
                "http://{}/ofrep/v1/evaluate/flags",
                ofrep_addr(rampart).await
            ),
        }
    }

    async fn one(&self, key: &str, context: Value) -> Resp {
        let body = json!({ "context": context }).to_string();
        post(&self.client, &format!("{}/{key}", self.base), &[], &body).await
    }

    async fn raw(&self, key: &str, body: Vec<u8>) -> Resp {
        send(
            &self.client,
            "POST",
            &format!("{}/{key}", self.base),
            &[],
            body,
        )
        .await
    }

    async fn bulk(&self, context: Value, if_none_match: Option<&str>) -> Resp {
        let body = json!({ "context": context }).to_string();
        let headers: Vec<(&str, &str)> = if_none_match
            .map(|t| vec![("if-none-match", t)])
            .unwrap_or_default();
        post(&self.client, &self.base, &headers, &body).await
    }
}

#[tokio::test]
async fn single_and_bulk_answers_have_the_ofrep_shapes() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let rampart = Rampart::start(&body(&stable, &canary, 30)).await;
    let flags = Flags::new(&rampart).await;

    let in_split = find_identity("checkout", "u", |b| b < 3000);
    let resp = flags
        .one("checkout", json!({"targetingKey": in_split}))
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("application/json")
    );
    let v = json_of(&resp);
    assert_eq!(v["key"], "checkout");
    assert_eq!(v["value"], "canary");
    assert_eq!(v["variant"], "canary");
    assert_eq!(v["reason"], "SPLIT");
    assert_eq!(
        v["metadata"]["bucket"],
        json!(common::bucket("checkout", &in_split))
    );
    assert_eq!(v["metadata"]["rampartReason"], "split");

    let outside = find_identity("checkout", "u", |b| b >= 3000);
    let v = json_of(
        &flags
            .one("checkout", json!({"targetingKey": outside}))
            .await,
    );
    assert_eq!(
        (v["value"].clone(), v["reason"].clone()),
        (json!("stable"), json!("DEFAULT"))
    );

    // Allowlist, header override and force header are targeting matches.
    let v = json_of(
        &flags
            .one("checkout", json!({"targetingKey": "qa-alice"}))
            .await,
    );
    assert_eq!(
        (v["value"].clone(), v["reason"].clone()),
        (json!("canary"), json!("TARGETING_MATCH"))
    );
    assert_eq!(v["metadata"]["rampartReason"], "identity");
    let ctx = json!({"targetingKey": outside, "X-Employee": "true"});
    let v = json_of(&flags.one("checkout", ctx).await);
    assert_eq!(
        (v["value"].clone(), v["metadata"]["rampartReason"].clone()),
        (json!("canary"), json!("header"))
    );
    let ctx = json!({"targetingKey": in_split, "x-rampart-force": "stable"});
    let v = json_of(&flags.one("checkout", ctx).await);
    assert_eq!(
        (v["value"].clone(), v["reason"].clone()),
        (json!("stable"), json!("TARGETING_MATCH"))
    );

    // A toggle is a boolean; `.backend` gives its backend's name.
    let v = json_of(
        &flags
            .one("dark-mode", json!({"targetingKey": "anyone"}))
            .await,
    );
    assert_eq!(
        (v["value"].clone(), v["variant"].clone()),
        (json!(true), json!("canary"))
    );
    let v = json_of(
        &flags
            .one("dark-mode.backend", json!({"targetingKey": "anyone"}))
            .await,
    );
    assert_eq!(
        (v["key"].clone(), v["value"].clone()),
        (json!("dark-mode.backend"), json!("canary"))
    );

    // A gate is reached only through its header.
    let v = json_of(&flags.one("beta", json!({"targetingKey": "x"})).await);
    assert_eq!(
        (v["value"].clone(), v["reason"].clone()),
        (json!("stable"), json!("DEFAULT"))
    );
    let v = json_of(
        &flags
            .one("beta", json!({"targetingKey": "x", "x-beta": "yes"}))
            .await,
    );
    assert_eq!(
        (v["value"].clone(), v["reason"].clone()),
        (json!("canary"), json!("TARGETING_MATCH"))
    );

    // No identity: stable's share (the proxy's missing_identity: stable), or, where the
    // proxy would draw a random bucket, TARGETING_KEY_MISSING.
    let v = json_of(&flags.one("checkout", json!({})).await);
    assert_eq!(
        (v["value"].clone(), v["metadata"]["rampartReason"].clone()),
        (json!("stable"), json!("missing_identity"))
    );
    let resp = flags.one("lottery", json!({"plan": "gold"})).await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    let v = json_of(&resp);
    assert_eq!(
        (v["key"].clone(), v["errorCode"].clone()),
        (json!("lottery"), json!("TARGETING_KEY_MISSING"))
    );
    assert!(v["errorDetails"].as_str().unwrap().contains("targetingKey"));

    // An unknown flag.
    let resp = flags.one("nope", json!({"targetingKey": "x"})).await;
    assert_eq!(resp.status, 404);
    let v = json_of(&resp);
    assert_eq!(
        (v["key"].clone(), v["errorCode"].clone()),
        (json!("nope"), json!("FLAG_NOT_FOUND"))
    );

    // Bulk: every route (and the toggle's `.backend`), an ETag.
    let resp = flags.bulk(json!({"targetingKey": in_split}), None).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let etag = resp.header("etag").expect("an ETag");
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() > 10,
        "{etag}"
    );
    let v = json_of(&resp);
    let keys: Vec<&str> = v["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "checkout",
            "dark-mode",
            "dark-mode.backend",
            "beta",
            "lottery"
        ]
    );
    assert_eq!(v["flags"][0]["value"], "canary");
    assert_eq!(v["flags"][1]["value"], true);
    assert_eq!(
        v["flags"][4]["value"],
        json!(if common::bucket("lottery", &in_split) < 5000 {
            "canary"
        } else {
            "stable"
        })
    );
    let resp = flags.bulk(json!({}), None).await;
    let v = json_of(&resp);
    assert_eq!(v["flags"][4]["errorCode"], "TARGETING_KEY_MISSING");

    // Other methods and paths.
    let resp = send(&flags.client, "GET", &flags.base, &[], Vec::new()).await;
    assert_eq!(
        (resp.status, resp.header("allow").as_deref()),
        (405, Some("POST"))
    );
    let other = flags.base.replace("/ofrep/v1/evaluate/flags", "/elsewhere");
    assert_eq!(post(&flags.client, &other, &[], "{}").await.status, 404);

    let text = rampart.metrics_text().await;
    let count = |route: &str, reason: &str| {
        metric_sum(
            &text,
            "rampart_ofrep_evaluations_total",
            &[("route", route), ("reason", reason)],
        )
    };
    assert!(count("checkout", "SPLIT") >= 2.0, "{text}");
    assert!(count("checkout", "TARGETING_MATCH") >= 3.0);
    assert_eq!(count("_unknown", "FLAG_NOT_FOUND"), 1.0);
    assert!(
        !text.contains("route=\"nope\""),
        "an unknown key became a label"
    );
    assert!(count("lottery", "TARGETING_KEY_MISSING") >= 2.0);
}

#[tokio::test]
async fn answers_equal_the_backend_the_proxy_routes_each_identity_to() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let rampart = Rampart::start(&body(&stable, &canary, 37)).await;
    let flags = Flags::new(&rampart).await;
    let mut seen = std::collections::HashSet::new();
    for i in 0..400 {
        let id = format!("user-{i}");
        // Every tenth request also carries the header override, in both places.
        let employee = i % 10 == 0;
        let mut headers = vec![("x-user-id", id.as_str())];
        let mut context = json!({"targetingKey": id});
        if employee {
            headers.push(("x-employee", "true"));
            context["x-employee"] = json!("true");
        }
        let routed = rampart.get("/checkout", &headers).await;
        let proxy_backend = routed
            .echo()
            .header("x-rampart-backend")
            .map(str::to_string)
            .expect("x-rampart-backend reached the upstream");
        let v = json_of(&flags.one("checkout", context).await);
        assert_eq!(v["value"], json!(proxy_backend), "identity {id}: {v}");
        seen.insert(proxy_backend);
    }
    assert_eq!(seen.len(), 2, "both backends were exercised: {seen:?}");
}

#[tokio::test]
async fn bulk_etag_gives_304_until_a_kill_or_a_config_edit_changes_the_answers() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let (rampart, admin) = Rampart::start_admin(&body(&stable, &canary, 30), &tokens_yaml()).await;
    let flags = Flags::new(&rampart).await;
    // An identity in stable's share: a kill does not change its backend, but it changes
    // its reason and the ETag.
    let id = find_identity("checkout", "e", |b| (3000..6000).contains(&b));
    let ctx = json!({"targetingKey": id});

    let first = flags.bulk(ctx.clone(), None).await;
    let etag = first.header("etag").unwrap();
    for _ in 0..3 {
        let again = flags.bulk(ctx.clone(), Some(&etag)).await;
        assert_eq!(again.status, 304, "{}", again.text());
        assert!(again.body.is_empty());
        assert_eq!(again.header("etag").as_deref(), Some(etag.as_str()));
    }
    // Another context does not match the first context's tag.
    let other = flags
        .bulk(json!({"targetingKey": "someone-else"}), Some(&etag))
        .await;
    assert_eq!(other.status, 200);

    // An admin kill.
    let admin_client = common::client();
    let auth = format!("Bearer {OPERATOR}");
    let killed = send(
        &admin_client,
        "POST",
        &format!("http://{admin}/v1/routes/checkout/kill"),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        KILL_REASON.as_bytes().to_vec(),
    )
    .await;
    assert_eq!(killed.status, 200, "{}", killed.text());
    let after_kill = flags.bulk(ctx.clone(), Some(&etag)).await;
    assert_eq!(after_kill.status, 200, "the kill must change the ETag");
    let kill_etag = after_kill.header("etag").unwrap();
    assert_ne!(kill_etag, etag);
    let v = json_of(&after_kill);
    assert_eq!(
        (
            v["flags"][0]["value"].clone(),
            v["flags"][0]["reason"].clone()
        ),
        (json!("stable"), json!("DISABLED"))
    );
    assert_eq!(flags.bulk(ctx.clone(), Some(&kill_etag)).await.status, 304);

    // A config edit (the split to 80 %): the file is re-read within about 200 ms.
    let text = std::fs::read_to_string(&rampart.config_path).unwrap();
    rename_over(
        &rampart.config_path,
        &text.replace("percent: 30}", "percent: 80}"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = 304;
    for _ in 0..200 {
        status = flags.bulk(ctx.clone(), Some(&kill_etag)).await.status;
        if status == 200 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200, "a config edit must change the ETag");
}

#[tokio::test]
async fn hostile_bodies_get_a_clear_400_and_the_listener_keeps_serving() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let rampart = Rampart::start(&body(&stable, &canary, 30)).await;
    let flags = Flags::new(&rampart).await;
    let ok = |resp: Resp| {
        assert_eq!(resp.status, 200, "{}", resp.text());
    };

    let huge = format!(
        r#"{{"context": {{"targetingKey": "a", "pad": "{}"}}}}"#,
        "y".repeat(70_000)
    );
    let many: Vec<String> = (0..10_000).map(|i| format!("\"f{i}\":1")).collect();
    let wide = format!("{{\"context\": {{{}}}}}", many.join(","));
    let long_key = format!(
        r#"{{"context": {{"targetingKey": "{}"}}}}"#,
        "k".repeat(10_000)
    );
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "a body over 64 KiB",
            huge.into_bytes(),
            "PARSE_ERROR",
            "larger than 65536",
        ),
        ("not JSON", b"{not json".to_vec(), "PARSE_ERROR", "not JSON"),
        (
            "a JSON array",
            b"[1, 2]".to_vec(),
            "PARSE_ERROR",
            "JSON object",
        ),
        ("a context of 10,000 fields", wide.into_bytes(), "", ""),
        (
            "a 10 KB targetingKey",
            long_key.into_bytes(),
            "INVALID_CONTEXT",
            "targetingKey",
        ),
        (
            "a context that is a string",
            br#"{"context": "x"}"#.to_vec(),
            "INVALID_CONTEXT",
            "object",
        ),
        (
            "nesting 10,000 deep",
            format!("{{\"context\": {}", "[".repeat(10_000)).into_bytes(),
            "PARSE_ERROR",
            "not JSON",
        ),
    ];
    for (what, body, code, words) in cases {
        let resp = flags.raw("checkout", body.clone()).await;
        assert_eq!(resp.status, 400, "{what}: {}", resp.text());
        let v = json_of(&resp);
        assert_eq!(v["key"], "checkout", "{what}");
        if !code.is_empty() {
            assert_eq!(v["errorCode"], code, "{what}: {v}");
            assert!(
                v["errorDetails"].as_str().unwrap().contains(words),
                "{what}: {v}"
            );
        } else {
            // Over 64 KiB as well as over 1,000 fields: either refusal is clear.
            assert!(
                ["PARSE_ERROR", "INVALID_CONTEXT"].contains(&v["errorCode"].as_str().unwrap()),
                "{what}: {v}"
            );
        }
        let bulk = send(&flags.client, "POST", &flags.base, &[], body).await;
        assert_eq!(bulk.status, 400, "bulk, {what}");
        assert!(json_of(&bulk)["errorCode"].is_string(), "bulk, {what}");
        ok(flags
            .one("checkout", json!({"targetingKey": "after"}))
            .await);
    }
    // 1,000 fields are accepted.
    let fields: Vec<String> = (0..999).map(|i| format!("\"f{i}\":1")).collect();
    let body = format!(
        "{{\"context\": {{\"targetingKey\": \"a\", {}}}}}",
        fields.join(",")
    );
    ok(flags.raw("checkout", body.into_bytes()).await);
    let text = rampart.metrics_text().await;
    assert!(
        metric_sum(
            &text,
            "rampart_ofrep_evaluations_total",
            &[("route", "_bulk"), ("reason", "PARSE_ERROR")]
        ) >= 3.0
    );
}

#[test]
fn ofrep_listen_off_loopback_needs_tls() {
    let dir = TempDir::new("ofrep-check");
    let file = dir.write(
        "rampart.yaml",
        "version: 1\nofrep_listen: 0.0.0.0:8016\ndefault_upstream: stable\nupstreams:\n  stable: {url: \"http://127.0.0.1:9\"}\n",
    );
    let out = run_cli(&["check", "-c", file.to_str().unwrap()]);
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(out.all().contains("ofrep_listen"), "{}", out.all());
    assert!(out.all().contains("tls"), "{}", out.all());
    let file = dir.write(
        "loopback.yaml",
        "version: 1\nofrep_listen: 127.0.0.1:8016\ndefault_upstream: stable\nupstreams:\n  stable: {url: \"http://127.0.0.1:9\"}\n",
    );
    assert_eq!(
        run_cli(&["check", "-c", file.to_str().unwrap()]).code,
        Some(0)
    );
}

#[tokio::test]
async fn answers_follow_the_rollout_step_and_an_open_breaker() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let routes = "
        ofrep_listen: 127.0.0.1:0
        routes:
          - name: search
            match: {path_prefix: /search}
            identity: [header:x-user-id]
            split:
              - {backend: canary}
            rollout:
              steps: [20, 50]
              step_interval: 1h
            breaker:
              window: 30s
              min_requests: 1000
              max_error_rate: 0.5
              consecutive_errors: 3
              open_for: 1h
              max_open_for: 1h
        ";
    let rampart = Rampart::start(&config("stable", &[&stable, &canary], routes)).await;
    let flags = Flags::new(&rampart).await;
    // The rollout's first step (20 %) drives the split, for flags as for traffic.
    let early = find_identity("search", "r", |b| b < 2000);
    let late = find_identity("search", "r", |b| b >= 2000);
    let v = json_of(&flags.one("search", json!({"targetingKey": early})).await);
    assert_eq!(
        (v["value"].clone(), v["reason"].clone()),
        (json!("canary"), json!("SPLIT"))
    );
    let v = json_of(&flags.one("search", json!({"targetingKey": late})).await);
    assert_eq!(v["value"], "stable");
    assert_eq!(
        rampart
            .get("/search", &[("x-user-id", &early)])
            .await
            .upstream(),
        "canary"
    );

    // Three canary errors in a row open its breaker: the flag answers stable, DEFAULT.
    canary.set_status(500);
    for _ in 0..3 {
        rampart.get("/search", &[("x-user-id", &early)]).await;
    }
    let text = rampart
        .metrics_until(|t| {
            metric_sum(
                t,
                "rampart_breaker_state",
                &[
                    ("route", "search"),
                    ("backend", "canary"),
                    ("state", "open"),
                ],
            ) == 1.0
        })
        .await;
    assert_eq!(
        metric_sum(
            &text,
            "rampart_breaker_state",
            &[
                ("route", "search"),
                ("backend", "canary"),
                ("state", "open")
            ]
        ),
        1.0,
        "{text}"
    );
    let v = json_of(&flags.one("search", json!({"targetingKey": early})).await);
    assert_eq!(
        (v["value"].clone(), v["reason"].clone()),
        (json!("stable"), json!("DEFAULT"))
    );
    assert_eq!(v["metadata"]["rampartReason"], "breaker_open");
    assert_eq!(v["metadata"]["candidate"], "canary");
    assert_eq!(
        rampart
            .get("/search", &[("x-user-id", &early)])
            .await
            .upstream(),
        "stable"
    );
}

#[test]
fn an_ofrep_listen_address_in_use_exits_3() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = TempDir::new("ofrep-bind");
    let file = dir.write(
        "rampart.yaml",
        &format!(
            "version: 1\nlisten: 127.0.0.1:{}\nmetrics_listen: 127.0.0.1:{}\nofrep_listen: {}\ndefault_upstream: stable\nupstreams:\n  stable: {{url: \"http://127.0.0.1:9\"}}\n",
            common::free_port(),
            common::free_port(),
            taken.local_addr().unwrap()
        ),
    );
    let out = run_cli(&["run", "-c", file.to_str().unwrap()]);
    assert_eq!(out.code, Some(3), "{}", out.all());
    assert!(out.all().contains("ofrep_listen"), "{}", out.all());
}
