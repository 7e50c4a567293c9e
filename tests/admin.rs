//! The admin API and the audit log (docs/admin.md, docs/audit.md), black-box against the real
//! binary: roles against every endpoint, the kill switch across reloads and restarts,
//! rollback and its pin, explain against documented bucketing (docs/routing.md#bucketing), and `rampart audit verify` on the
//! log the binary wrote (intact, edited, cut, and the verification vector (docs/audit.md#verification-vector) line).
//!
//! Every wait is a bounded poll (of `/v1/status`, the audit file or stderr); nothing sleeps
//! to make something happen.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    bucket, config, find_identity, run_cli, send, sha256_hex, HttpClient, Rampart, Resp, TempDir,
    Upstream,
};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ADMIN: &str = "admin-token-6f1c0b1e9d2a4c7e8b3f5a0d2e4c6b8a";
const OPERATOR: &str = "operator-token-0a9b8c7d6e5f4a3b2c1d0e9f8a7b";
const VIEWER: &str = "viewer-token-1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d";
const UNKNOWN: &str = "unknown-token-9f8e7d6c5b4a3f2e1d0c9b8a7f6e";

const REASON: &str = r#"{"reason": "INC-42 canary corrupts carts"}"#;

fn tokens_yaml() -> String {
    format!(
        "- {{name: ada, role: admin, sha256: {}}}\n- {{name: otto, role: operator, sha256: {}}}\n- {{name: vic, role: viewer, sha256: {}}}\n",
        sha256_hex(ADMIN.as_bytes()),
        sha256_hex(OPERATOR.as_bytes()),
        sha256_hex(VIEWER.as_bytes()),
    )
}

/// `checkout` splits 10 % to canary; `search` has a rollout (so pause/resume apply).
fn body(stable: &Upstream, canary: &Upstream) -> String {
    config(
        "stable",
        &[stable, canary],
        "
        routes:
          - name: checkout
            owner: team-payments
            match: {path_prefix: /checkout}
            identity: [header:x-user-id]
            split:
              - {backend: canary, percent: 10}
          - name: search
            match: {path_prefix: /search}
            identity: [header:x-user-id]
            split:
              - {backend: canary}
            rollout:
              steps: [10, 50]
              step_interval: 1h
        ",
    )
}

struct Setup {
    _stable: Upstream,
    _canary: Upstream,
    rampart: Rampart,
    admin: SocketAddr,
}

async fn setup() -> Setup {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let (rampart, admin) = Rampart::start_admin(&body(&stable, &canary), &tokens_yaml()).await;
    Setup {
        _stable: stable,
        _canary: canary,
        rampart,
        admin,
    }
}

impl Setup {
    async fn call(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> Resp {
        call(self.rampart.client(), self.admin, method, path, token, body).await
    }

    async fn status(&self) -> Value {
        let resp = self.call("GET", "/v1/status", Some(VIEWER), "").await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        json(&resp)
    }

    fn audit_path(&self) -> PathBuf {
        self.rampart.state_dir().join("audit.jsonl")
    }

    fn audit(&self) -> Vec<Value> {
        audit_entries(&self.audit_path())
    }

    /// Which upstream answers `/checkout` for `identity`.
    async fn checkout_upstream(&self, identity: &str) -> String {
        self.rampart
            .get("/checkout", &[("x-user-id", identity)])
            .await
            .upstream()
    }

    /// Rewrites the config file (atomically, like an editor or kubelet), sends SIGHUP, and
    /// waits until status shows the new file's sha256 applied.
    async fn rewrite_config(&self, from: &str, to: &str) -> String {
        let text = std::fs::read_to_string(&self.rampart.config_path).unwrap();
        assert!(text.contains(from), "{from:?} not in the config");
        let new = text.replace(from, to);
        write_atomic(&self.rampart.config_path, &new);
        let sha = sha256_hex(new.as_bytes());
        self.rampart.signal("HUP");
        self.status_until(|s| s["config"]["sha256"] == sha.as_str())
            .await;
        sha
    }

    /// Polls status until `pred` holds (at most 100 tries, 10 s); panics otherwise.
    async fn status_until(&self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut status = self.status().await;
        for _ in 0..100 {
            if pred(&status) {
                return status;
            }
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            status = self.status().await;
        }
        panic!(
            "status never matched; last:\n{status:#}\nstderr:\n{}",
            self.rampart.stderr()
        );
    }

    /// Polls the audit log until `pred` holds for its entries (bounded); returns them.
    async fn audit_until(&self, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut entries = self.audit();
        for _ in 0..100 {
            if pred(&entries) {
                return entries;
            }
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            entries = self.audit();
        }
        panic!("audit log never matched; entries:\n{entries:#?}");
    }
}

async fn call(
    client: &HttpClient,
    admin: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    send(
        client,
        method,
        &format!("http://{admin}{path}"),
        &headers,
        body.as_bytes().to_vec(),
    )
    .await
}

fn json(resp: &Resp) -> Value {
    serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): status {} {}", resp.status, resp.text()))
}

fn audit_entries(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad audit line ({e}): {l}")))
        .collect()
}

fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// An identity whose `checkout` bucket is in `range`.
fn checkout_identity(tag: &str, range: std::ops::Range<u32>) -> String {
    find_identity("checkout", tag, |b| range.contains(&b))
}

// ---------------------------------------------------------------------------------------------
// Authentication and authorisation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn each_role_against_each_endpoint_gets_401_403_400_or_its_answer() {
    let s = setup().await;
    let tokens: [(&str, Option<&str>); 5] = [
        ("none", None),
        ("unknown", Some(UNKNOWN)),
        ("viewer", Some(VIEWER)),
        ("operator", Some(OPERATOR)),
        ("admin", Some(ADMIN)),
    ];
    // (method, path, least role, status once allowed)
    let endpoints: [(&str, &str, &str, u16); 9] = [
        ("GET", "/v1/status", "viewer", 200),
        (
            "GET",
            "/v1/explain?route=checkout&identity=alice",
            "viewer",
            200,
        ),
        ("GET", "/v1/audit?limit=5", "viewer", 200),
        ("POST", "/v1/routes/checkout/kill", "operator", 200),
        ("POST", "/v1/routes/checkout/unkill", "operator", 200),
        ("POST", "/v1/routes/search/pause", "operator", 200),
        ("POST", "/v1/routes/search/resume", "operator", 200),
        ("POST", "/v1/routes/checkout/pause", "operator", 409),
        ("POST", "/v1/config/rollback", "admin", 409),
    ];
    let rank = |role: &str| {
        ["none", "unknown", "viewer", "operator", "admin"]
            .iter()
            .position(|r| *r == role)
            .unwrap()
    };
    for (method, path, least, allowed) in endpoints {
        for (who, token) in tokens {
            let resp = s.call(method, path, token, REASON).await;
            let want = if rank(who) < rank("viewer") {
                401
            } else if rank(who) < rank(least) {
                403
            } else {
                allowed
            };
            assert_eq!(resp.status, want, "{who} {method} {path}: {}", resp.text());
            let body = json(&resp);
            if want >= 400 {
                assert!(body["error"].is_string(), "{who} {method} {path}: {body}");
            }
            if want == 401 {
                assert_eq!(
                    resp.header("www-authenticate").as_deref(),
                    Some("Bearer"),
                    "{who} {method} {path}"
                );
            }
            // Without a reason, every mutating call that passed auth is a 400.
            if method == "POST" && want != 401 && want != 403 {
                for bad in [
                    "",
                    "{}",
                    r#"{"reason": ""}"#,
                    r#"{"reason": "  "}"#,
                    "not json",
                ] {
                    let resp = s.call(method, path, token, bad).await;
                    assert_eq!(resp.status, 400, "{who} {method} {path} body {bad:?}");
                    assert!(json(&resp)["error"].is_string());
                }
            }
        }
    }
    // A rollback without a previous config says so.
    let resp = s
        .call("POST", "/v1/config/rollback", Some(ADMIN), REASON)
        .await;
    assert!(json(&resp)["error"].as_str().unwrap().contains("previous"));
}

#[tokio::test]
async fn a_refused_call_is_audited_with_actor_anonymous_and_gets_no_effect() {
    let s = setup().await;
    let resp = s
        .call("POST", "/v1/routes/checkout/kill", None, REASON)
        .await;
    assert_eq!(resp.status, 401);
    let entries = s.audit();
    let refused = entries
        .iter()
        .find(|e| e["action"] == "route.kill")
        .unwrap_or_else(|| panic!("no route.kill entry: {entries:#?}"));
    assert_eq!(refused["actor"], "anonymous");
    assert_eq!(refused["route"], "checkout");
    assert_eq!(refused["detail"]["status"], 401);
    // Forbidden calls are audited under the token's name.
    let resp = s
        .call("POST", "/v1/config/rollback", Some(OPERATOR), REASON)
        .await;
    assert_eq!(resp.status, 403);
    let entries = s.audit();
    let forbidden = entries
        .iter()
        .find(|e| e["action"] == "config.rollback")
        .unwrap();
    assert_eq!(forbidden["actor"], "otto");
    assert_eq!(forbidden["detail"]["status"], 403);
    // Nothing was killed, and GETs left no entries.
    let status = s.status().await;
    assert_eq!(status["routes"][0]["killed"], false);
    assert_eq!(s.audit().len(), entries.len());
}

#[tokio::test]
async fn bodies_over_64_kib_and_reasons_over_1024_characters_are_refused_with_400() {
    let s = setup().await;
    let padded = format!(r#"{{"reason": "x", "pad": "{}"}}"#, "y".repeat(70 * 1024));
    let resp = s
        .call("POST", "/v1/routes/checkout/kill", Some(OPERATOR), &padded)
        .await;
    assert_eq!(resp.status, 400);
    assert!(json(&resp)["error"].as_str().unwrap().contains("65536"));
    let long = format!(r#"{{"reason": "{}"}}"#, "r".repeat(1025));
    let resp = s
        .call("POST", "/v1/routes/checkout/kill", Some(OPERATOR), &long)
        .await;
    assert_eq!(resp.status, 400);
    let ok = format!(r#"{{"reason": "{}"}}"#, "r".repeat(1024));
    let resp = s
        .call("POST", "/v1/routes/checkout/kill", Some(OPERATOR), &ok)
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[tokio::test]
async fn refusals_beyond_ten_a_second_are_summed_into_one_entry() {
    let s = setup().await;
    let started = std::time::SystemTime::now();
    for _ in 0..60 {
        let resp = s
            .call("POST", "/v1/routes/checkout/kill", None, REASON)
            .await;
        assert_eq!(resp.status, 401);
    }
    let seconds = started.elapsed().unwrap().as_secs() + 2;
    // Every refusal is either its own entry or counted in a summary, once the summary of
    // the last second has been written (within about a second).
    let entries = s
        .audit_until(|entries| {
            let single = entries
                .iter()
                .filter(|e| e["action"] == "route.kill")
                .count() as u64;
            let summed: u64 = entries
                .iter()
                .filter(|e| e["action"] == "admin.refusals_summarized")
                .map(|e| e["detail"]["count"].as_u64().unwrap())
                .sum();
            single + summed == 60
        })
        .await;
    let single = entries
        .iter()
        .filter(|e| e["action"] == "route.kill")
        .count() as u64;
    assert!(
        single <= 10 * seconds,
        "{single} single entries in about {seconds} s"
    );
    let summaries: Vec<&Value> = entries
        .iter()
        .filter(|e| e["action"] == "admin.refusals_summarized")
        .collect();
    assert!(!summaries.is_empty());
    assert!(summaries
        .iter()
        .all(|e| e["detail"]["by_actor"]["anonymous"].as_u64().is_some()));
}

#[tokio::test]
async fn a_group_writable_tokens_file_is_refused_and_re_read_once_fixed() {
    use std::os::unix::fs::PermissionsExt;
    let s = setup().await;
    let tokens = s.rampart.config_path.parent().unwrap().join("tokens.yaml");
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o664)).unwrap();
    let resp = s.call("GET", "/v1/status", Some(ADMIN), "").await;
    assert_eq!(resp.status, 401);
    let stderr = s.rampart.stderr();
    assert!(
        stderr.contains("group- or world-writable")
            && stderr.contains(&tokens.display().to_string()),
        "no log line naming the file:\n{stderr}"
    );
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        s.call("GET", "/v1/status", Some(ADMIN), "").await.status,
        200
    );
    // A revoked token stops working without a restart.
    let without_viewer: String = tokens_yaml()
        .lines()
        .filter(|l| !l.contains("vic"))
        .map(|l| format!("{l}\n"))
        .collect();
    let tmp = tokens.with_extension("tmp");
    std::fs::write(&tmp, without_viewer).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, &tokens).unwrap();
    assert_eq!(
        s.call("GET", "/v1/status", Some(VIEWER), "").await.status,
        401
    );
}

// ---------------------------------------------------------------------------------------------
// Kill switch, rollback, explain, status
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn kill_diverts_traffic_at_once_survives_a_reload_and_a_restart_and_unkill_restores() {
    let mut s = setup().await;
    let canary_user = checkout_identity("k", 0..1000);
    assert_eq!(s.checkout_upstream(&canary_user).await, "canary");

    let resp = s
        .call("POST", "/v1/routes/checkout/kill", Some(OPERATOR), REASON)
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    // At once: the very next request goes to stable.
    assert_eq!(s.checkout_upstream(&canary_user).await, "stable");
    let status = s.status().await;
    let route = &status["routes"][0];
    assert_eq!(route["killed"], true);
    assert_eq!(route["kills"][0]["source"], "admin");
    assert_eq!(route["kills"][0]["reason"], "INC-42 canary corrupts carts");
    assert_eq!(route["kills"][0]["actor"], "otto");
    assert_eq!(route["effective_split"]["canary"], 0.0);
    assert_eq!(route["effective_split"]["stable"], 100.0);
    assert_eq!(route["configured_split"]["canary"], 10.0);
    let metrics = s.rampart.metrics_text().await;
    assert_eq!(
        common::metric(
            &metrics,
            "rampart_kill_active",
            &[("route", "checkout"), ("source", "admin")]
        ),
        Some(1.0)
    );

    // A reload (even one that raises the canary's share) keeps the kill.
    s.rewrite_config("percent: 10", "percent: 20").await;
    assert_eq!(s.checkout_upstream(&canary_user).await, "stable");

    // A restart keeps it too (state_dir/kills.json).
    s.rampart.restart().await;
    assert_eq!(s.checkout_upstream(&canary_user).await, "stable");
    let status = s.status().await;
    assert_eq!(status["routes"][0]["kills"][0]["source"], "admin");

    let resp = s
        .call("POST", "/v1/routes/checkout/unkill", Some(OPERATOR), REASON)
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(s.checkout_upstream(&canary_user).await, "canary");
    assert_eq!(s.status().await["routes"][0]["killed"], false);

    // And unkill lasts across a restart as well.
    s.rampart.restart().await;
    assert_eq!(s.checkout_upstream(&canary_user).await, "canary");
}

#[tokio::test]
async fn an_unknown_route_is_404_and_audited_under_the_token_name() {
    let s = setup().await;
    let resp = s
        .call("POST", "/v1/routes/nope/kill", Some(OPERATOR), REASON)
        .await;
    assert_eq!(resp.status, 404);
    assert!(json(&resp)["error"].as_str().unwrap().contains("nope"));
    let audited = s.audit();
    assert!(audited.iter().any(|e| e["action"] == "route.kill"
        && e["detail"]["status"] == 404
        && e["actor"] == "otto"));
}

#[tokio::test]
async fn rollback_restores_the_previous_split_and_stays_pinned_until_the_file_changes() {
    let s = setup().await;
    // Bucket 3000..5000: stable at 10 %, canary at 50 %.
    let user = checkout_identity("rb", 3000..5000);
    assert_eq!(s.checkout_upstream(&user).await, "stable");
    let first_sha = s.status().await["config"]["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    s.rewrite_config("percent: 10", "percent: 50").await;
    assert_eq!(s.checkout_upstream(&user).await, "canary");

    let resp = s
        .call("POST", "/v1/config/rollback", Some(ADMIN), REASON)
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(s.checkout_upstream(&user).await, "stable");
    let status = s.status().await;
    assert_eq!(status["config"]["sha256"], first_sha.as_str());
    assert_eq!(status["routes"][0]["configured_split"]["canary"], 10.0);
    assert!(status["config"]["pinned"].is_object(), "{status:#}");

    // Reload checks of the unchanged file (two SIGHUPs, the second handled after the
    // first's reload finished) do not undo the rollback.
    let sighups = |text: &str| text.matches("SIGHUP: reloading the config").count();
    let before = sighups(&s.rampart.stderr());
    s.rampart.signal("HUP");
    s.rampart.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    for _ in 0..200 {
        if sighups(&s.rampart.stderr()) >= before + 2 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(sighups(&s.rampart.stderr()) >= before + 2);
    assert_eq!(s.status().await["config"]["sha256"], first_sha.as_str());
    assert_eq!(s.checkout_upstream(&user).await, "stable");

    // A real change of the file lifts the pin.
    s.rewrite_config("percent: 50", "percent: 40").await;
    assert_eq!(s.checkout_upstream(&user).await, "canary");
    let status = s.status().await;
    assert!(status["config"]["pinned"].is_null(), "{status:#}");
    let entries = s.audit();
    assert!(entries.iter().any(|e| e["action"] == "config.rollback"
        && e["actor"] == "ada"
        && e["detail"]["status"] == 200));
}

#[tokio::test]
async fn a_rollback_stays_pinned_across_a_restart_while_the_file_is_unchanged() {
    let mut s = setup().await;
    let user = checkout_identity("rr", 3000..5000);
    s.rewrite_config("percent: 10", "percent: 50").await;
    let resp = s
        .call("POST", "/v1/config/rollback", Some(ADMIN), REASON)
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(s.checkout_upstream(&user).await, "stable");
    s.rampart.restart().await;
    assert_eq!(s.checkout_upstream(&user).await, "stable");
    assert!(s.status().await["config"]["pinned"].is_object());
}

#[tokio::test]
async fn explain_agrees_with_documented_bucketing() {
    let s = setup().await;
    let resp = s
        .call(
            "GET",
            "/v1/explain?route=checkout&identity=alice",
            Some(VIEWER),
            "",
        )
        .await;
    assert_eq!(resp.status, 200);
    let v = json(&resp);
    assert_eq!(v["bucket"], 3009);
    assert_eq!(v["backend"], "stable");
    assert_eq!(v["reason"], "stable");
    assert_eq!(v["route"], "checkout");
    for id in ["bob", "user 42", "ü@x", "a+b&c=d"] {
        let encoded: String = id.bytes().map(|b| format!("%{b:02X}")).collect();
        let resp = s
            .call(
                "GET",
                &format!("/v1/explain?route=checkout&identity={encoded}"),
                Some(VIEWER),
                "",
            )
            .await;
        let v = json(&resp);
        let b = bucket("checkout", id);
        assert_eq!(v["bucket"], b, "{id}");
        assert_eq!(
            v["backend"],
            if b < 1000 { "canary" } else { "stable" },
            "{id}"
        );
    }
    // Explain sees the kill gate like real traffic does.
    let canary_user = checkout_identity("ex", 0..1000);
    s.call("POST", "/v1/routes/checkout/kill", Some(OPERATOR), REASON)
        .await;
    let v = json(
        &s.call(
            "GET",
            &format!("/v1/explain?route=checkout&identity={canary_user}"),
            Some(VIEWER),
            "",
        )
        .await,
    );
    assert_eq!(v["backend"], "stable");
    assert_eq!(v["reason"], "killed");
    assert_eq!(v["candidate"], "canary");
    let resp = s
        .call("GET", "/v1/explain?route=nope&identity=a", Some(VIEWER), "")
        .await;
    assert_eq!(resp.status, 404);
}

#[tokio::test]
async fn status_shows_config_routes_splits_breakers_health_and_kills() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let body = config(
        "stable",
        &[&stable, &canary],
        "
        routes:
          - name: checkout
            kind: canary
            owner: team-payments
            expires: 2020-01-01
            killed: INC-7 fleet-wide
            match: {path_prefix: /checkout}
            identity: [header:x-user-id]
            split:
              - {backend: canary, percent: 25}
          - name: cart
            match: {path_prefix: /cart}
            identity: [header:x-user-id]
            split:
              - {backend: canary, percent: 5}
            breaker:
              window: 10s
              min_requests: 1000
              max_error_rate: 0.5
              consecutive_errors: 2
              open_for: 30s
        ",
    );
    let (rampart, admin) = Rampart::start_admin(&body, &tokens_yaml()).await;
    let client = rampart.client();
    let get_status = || async {
        let resp = call(client, admin, "GET", "/v1/status", Some(VIEWER), "").await;
        assert_eq!(resp.status, 200);
        json(&resp)
    };
    let status = get_status().await;
    let sha = sha256_hex(&std::fs::read(&rampart.config_path).unwrap());
    assert_eq!(status["config"]["schema"], 1);
    assert_eq!(status["config"]["sha256"], sha.as_str());
    assert_eq!(
        status["config"]["source"],
        rampart.config_path.display().to_string().as_str()
    );
    let checkout = &status["routes"][0];
    assert_eq!(checkout["name"], "checkout");
    assert_eq!(checkout["kind"], "canary");
    assert_eq!(checkout["owner"], "team-payments");
    assert_eq!(checkout["expired"], true);
    assert_eq!(checkout["configured_split"]["canary"], 25.0);
    assert_eq!(checkout["effective_split"]["canary"], 0.0);
    assert_eq!(checkout["kills"][0]["source"], "config");
    assert_eq!(checkout["kills"][0]["reason"], "INC-7 fleet-wide");
    assert_eq!(checkout["paused"], false);
    assert!(checkout["rollout"].is_null());
    let cart = &status["routes"][1];
    assert_eq!(cart["effective_split"]["canary"], 5.0);
    let canary_backend = &cart["backends"][1];
    assert_eq!(canary_backend["backend"], "canary");
    assert_eq!(canary_backend["healthy"], true);
    assert_eq!(canary_backend["breaker"]["state"], "closed");
    assert!(canary_backend["breaker"]["next_probe_at"].is_null());

    // Trip the cart canary's breaker: status shows it open with its next probe, and the
    // transition is in the audit log.
    canary.set_status(500);
    let user = find_identity("cart", "br", |b| b < 500);
    for _ in 0..2 {
        rampart.get("/cart", &[("x-user-id", &user)]).await;
    }
    // The outcome is recorded as the response ends, which may be just after the client
    // has it: poll (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = get_status().await;
    for _ in 0..100 {
        if status["routes"][1]["backends"][1]["breaker"]["state"] == "open"
            || Instant::now() > deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = get_status().await;
    }
    let canary_backend = &status["routes"][1]["backends"][1];
    assert_eq!(canary_backend["breaker"]["state"], "open", "{status:#}");
    assert!(canary_backend["breaker"]["next_probe_at"].is_string());
    assert!(
        canary_backend["breaker"]["next_probe_in_ms"]
            .as_u64()
            .unwrap()
            <= 30_000
    );
    assert_eq!(status["routes"][1]["effective_split"]["canary"], 0.0);
    let audit = rampart.state_dir().join("audit.jsonl");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut found = false;
    for _ in 0..100 {
        found = audit_entries(&audit).iter().any(|e| {
            e["action"] == "breaker.open"
                && e["route"] == "cart"
                && e["detail"]["backend"] == "canary"
        });
        if found || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(found, "no breaker.open entry: {:#?}", audit_entries(&audit));
}

#[tokio::test]
async fn config_reloads_are_audited_applied_or_rejected_with_sha256_and_routes_changed() {
    let s = setup().await;
    let sha = s.rewrite_config("percent: 10", "percent: 30").await;
    let entries = s
        .audit_until(|e| e.iter().any(|x| x["detail"]["sha256"] == sha.as_str()))
        .await;
    let applied = entries
        .iter()
        .find(|e| e["action"] == "config.applied" && e["detail"]["sha256"] == sha.as_str())
        .unwrap();
    assert_eq!(applied["actor"], "system");
    assert_eq!(applied["detail"]["sha256"], sha.as_str());
    let changed = applied["detail"]["routes_changed"].as_array().unwrap();
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0]["route"], "checkout");
    assert_eq!(changed[0]["from"]["canary"], 10.0);
    assert_eq!(changed[0]["to"]["canary"], 30.0);

    // An invalid file is rejected, audited with its sha256, and changes nothing.
    let text = std::fs::read_to_string(&s.rampart.config_path).unwrap();
    let broken = text.replace("percent: 30", "percent: 300");
    write_atomic(&s.rampart.config_path, &broken);
    s.rampart.signal("HUP");
    let broken_sha = sha256_hex(broken.as_bytes());
    let entries = s
        .audit_until(|e| e.iter().any(|x| x["action"] == "config.rejected"))
        .await;
    let rejected = entries
        .iter()
        .find(|e| e["action"] == "config.rejected")
        .unwrap();
    assert_eq!(rejected["detail"]["sha256"], broken_sha.as_str());
    assert_eq!(s.status().await["config"]["sha256"], sha.as_str());
}

// ---------------------------------------------------------------------------------------------
// rampart audit verify
// ---------------------------------------------------------------------------------------------

fn verify(file: &Path, head: Option<&str>) -> common::CliOutput {
    let file = file.to_str().unwrap();
    match head {
        Some(h) => run_cli(&["audit", "verify", file, "--head", h]),
        None => run_cli(&["audit", "verify", file]),
    }
}

#[tokio::test]
async fn the_audit_log_verifies_and_fails_after_an_edit_a_removed_line_or_a_cut_tail() {
    let s = setup().await;
    for path in [
        "checkout/kill",
        "checkout/unkill",
        "search/pause",
        "search/resume",
    ] {
        let resp = s
            .call(
                "POST",
                &format!("/v1/routes/{path}"),
                Some(OPERATOR),
                REASON,
            )
            .await;
        assert_eq!(resp.status, 200, "{path}: {}", resp.text());
    }
    s.call("POST", "/v1/routes/checkout/kill", None, REASON)
        .await;
    let log = std::fs::read_to_string(s.audit_path()).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 6, "{log}");
    let scratch = TempDir::new("verify");

    let intact = scratch.write("intact.jsonl", &log);
    let out = verify(&intact, None);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let head = out.stdout.split_whitespace().last().unwrap().to_string();
    assert_eq!(head.len(), 64, "{}", out.stdout);
    assert_eq!(verify(&intact, Some(&head)).code, Some(0));

    // An edited reason on line 3.
    let mut edited: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    edited[2] = edited[2].replace("INC-42", "INC-43");
    assert_ne!(edited[2], lines[2]);
    let file = scratch.write("edited.jsonl", &(edited.join("\n") + "\n"));
    let out = verify(&file, None);
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(out.all().contains("line 3"), "{}", out.all());

    // Line 4 removed: line 4 (formerly 5) no longer follows line 3.
    let mut removed: Vec<&str> = lines.clone();
    removed.remove(3);
    let file = scratch.write("removed.jsonl", &(removed.join("\n") + "\n"));
    let out = verify(&file, None);
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(out.all().contains("line 4"), "{}", out.all());

    // Two lines swapped.
    let mut swapped: Vec<&str> = lines.clone();
    swapped.swap(1, 2);
    let file = scratch.write("swapped.jsonl", &(swapped.join("\n") + "\n"));
    let out = verify(&file, None);
    assert_eq!(out.code, Some(1));
    assert!(out.all().contains("line 2"), "{}", out.all());

    // The last line cut: found only with --head.
    let cut = &lines[..lines.len() - 1];
    let file = scratch.write("cut.jsonl", &(cut.join("\n") + "\n"));
    assert_eq!(verify(&file, None).code, Some(0));
    let out = verify(&file, Some(&head));
    assert_eq!(out.code, Some(1));
    assert!(
        out.all().contains(&format!("line {}", lines.len())),
        "{}",
        out.all()
    );

    // A torn final line is reported as such.
    let torn = format!("{}{}", log, &lines[0][..40]);
    let file = scratch.write("torn.jsonl", &torn);
    let out = verify(&file, None);
    assert_eq!(out.code, Some(1));
    assert!(out.all().contains("torn"), "{}", out.all());
}

#[tokio::test]
async fn a_torn_final_line_is_reported_and_the_restarted_writer_starts_a_new_line_after_it() {
    let mut s = setup().await;
    s.call("POST", "/v1/routes/checkout/kill", Some(OPERATOR), REASON)
        .await;
    let path = s.audit_path();
    let before = std::fs::read_to_string(&path).unwrap();
    let lines = before.lines().count();
    // A crash in the middle of a write.
    std::fs::write(&path, format!("{before}{{\"seq\":99,\"ts\":\"2026-")).unwrap();
    s.rampart.restart().await;
    assert!(
        s.rampart.stderr().contains("torn"),
        "{}",
        s.rampart.stderr()
    );
    s.call("POST", "/v1/routes/checkout/unkill", Some(OPERATOR), REASON)
        .await;
    let out = verify(&path, None);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout.contains(&format!("line {}", lines + 1)),
        "{}",
        out.stdout
    );
}

#[test]
fn the_verification_vector_line_verifies() {
    let dir = TempDir::new("vector");
    let file = dir.write(
        "audit.jsonl",
        "{\"seq\":1,\"ts\":\"2026-03-01T10:00:00.000Z\",\"actor\":\"system\",\"action\":\"config.applied\",\"detail\":{\"sha256\":\"09bfcc6a14b83e2192b8673677725c84883ee9cd0c70e45c9ec09daa8f2b2847\"},\"prev_hash\":\"0000000000000000000000000000000000000000000000000000000000000000\",\"hash\":\"25e923b60c82c0bc79e6812ed4220c149603d3a0467aa7a167445e7f276d762b\"}\n",
    );
    let out = verify(
        &file,
        Some("25e923b60c82c0bc79e6812ed4220c149603d3a0467aa7a167445e7f276d762b"),
    );
    assert_eq!(out.code, Some(0), "{}", out.all());
    // One changed byte and it fails on line 1.
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("system", "System");
    let file = dir.write("edited.jsonl", &text);
    let out = verify(&file, None);
    assert_eq!(out.code, Some(1));
    assert!(out.all().contains("line 1"), "{}", out.all());
}

#[tokio::test]
async fn every_line_the_binary_writes_has_the_documented_member_order() {
    let s = setup().await;
    s.call("POST", "/v1/routes/checkout/kill", Some(OPERATOR), REASON)
        .await;
    let log = std::fs::read_to_string(s.audit_path()).unwrap();
    for line in log.lines() {
        let keys = [
            "{\"seq\":",
            ",\"ts\":\"",
            ",\"actor\":",
            ",\"action\":",
            ",\"detail\":",
            ",\"prev_hash\":",
            ",\"hash\":",
        ];
        let positions: Vec<usize> = keys
            .iter()
            .map(|k| {
                line.find(k)
                    .unwrap_or_else(|| panic!("{k} missing in {line}"))
            })
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{line}");
        assert!(line.ends_with("\"}"));
        let v: Value = serde_json::from_str(line).unwrap();
        let ts = v["ts"].as_str().unwrap();
        assert!(ts.ends_with('Z') && ts.len() == 24, "{ts}");
    }
    let kill = log.lines().find(|l| l.contains("route.kill")).unwrap();
    let route_at = kill.find(",\"route\":").unwrap();
    let reason_at = kill.find(",\"reason\":").unwrap();
    assert!(kill.find(",\"action\":").unwrap() < route_at && route_at < reason_at);
    assert!(reason_at < kill.find(",\"detail\":").unwrap());
}

#[test]
fn an_admin_listen_address_in_use_exits_3() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = TempDir::new("admin-bind");
    let file = dir.write(
        "rampart.yaml",
        &format!(
            "version: 1\nlisten: 127.0.0.1:{}\nmetrics_listen: 127.0.0.1:{}\nadmin_listen: {}\ndefault_upstream: stable\nupstreams:\n  stable: {{url: \"http://127.0.0.1:9\"}}\n",
            common::free_port(),
            common::free_port(),
            taken.local_addr().unwrap()
        ),
    );
    let out = run_cli(&["run", "-c", file.to_str().unwrap()]);
    assert_eq!(out.code, Some(3), "{}", out.all());
    assert!(out.all().contains("admin_listen"), "{}", out.all());
}
