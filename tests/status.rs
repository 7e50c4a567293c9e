//! `rampart status --admin` (docs/status.md), black-box: the real binary serving a real
//! admin API with an open breaker, an admin kill and a rollout paused mid-way, read by the
//! real `rampart status` as a table and as JSON; `--watch`, colours only on a terminal
//! (`NO_COLOR` honoured), an https admin API read with `--ca-file`; and its one-line
//! failures (a refused or missing token, an unreachable address, a Prometheus that is not
//! there, usage errors exit 2). The fleet view
//! against a real Prometheus is tests/deploy/test_status_fleet.py (it needs Debian's
//! prometheus, which .ci/deploy-checks.sh installs).
//!
//! Every wait is a bounded poll; nothing sleeps to make something happen.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    config, find_identity, free_port, run_to_exit, send, sha256_hex, CliOutput, Rampart, TempDir,
    Upstream,
};
use rampart_admin::status::{BreakerState, KillSource, RolloutPhase, Status};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const OPERATOR: &str = "status-operator-token-5d2e8f1a3c7b9e0d4f6a2c8e";
const VIEWER: &str = "status-viewer-token-8a1c3e5f7b9d2f4a6c8e0b2d4f";
const WRONG: &str = "status-wrong-token-0f9e8d7c6b5a4f3e2d1c0b9a8f";
const KILL_REASON: &str = "INC-42 canary corrupts carts";

fn tokens_yaml() -> String {
    format!(
        "- {{name: otto, role: operator, sha256: {}}}\n- {{name: vic, role: viewer, sha256: {}}}\n",
        sha256_hex(OPERATOR.as_bytes()),
        sha256_hex(VIEWER.as_bytes()),
    )
}

/// Runs `rampart ARGS...` with `env` (and no inherited `RAMPART_ADMIN_TOKEN` or `NO_COLOR`),
/// stdout piped; at most 15 s.
fn rampart_cli(args: &[&str], env: &[(&str, &str)]) -> CliOutput {
    let mut command = Command::new(common::RAMPART);
    command
        .args(args)
        .env_remove("RAMPART_ADMIN_TOKEN")
        .env_remove("NO_COLOR");
    for (k, v) in env {
        command.env(k, v);
    }
    run_to_exit(&mut command, Duration::from_secs(15))
}

async fn admin_call(rampart: &Rampart, admin: SocketAddr, method: &str, path: &str) -> u16 {
    send(
        rampart.client(),
        method,
        &format!("http://{admin}{path}"),
        &[
            ("authorization", &format!("Bearer {OPERATOR}")),
            ("content-type", "application/json"),
        ],
        format!(r#"{{"reason": "{KILL_REASON}"}}"#).into_bytes(),
    )
    .await
    .status
}

async fn get_status(rampart: &Rampart, admin: SocketAddr) -> Status {
    let resp = send(
        rampart.client(),
        "GET",
        &format!("http://{admin}/v1/status"),
        &[("authorization", &format!("Bearer {VIEWER}"))],
        Vec::new(),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    serde_json::from_slice(&resp.body).expect("the status document reads as the typed Status")
}

/// Polls status until `pred` holds (at most 200 tries, 20 s); panics with the last one.
async fn status_until(
    rampart: &Rampart,
    admin: SocketAddr,
    pred: impl Fn(&Status) -> bool,
) -> Status {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = get_status(rampart, admin).await;
    for _ in 0..200 {
        if pred(&status) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = get_status(rampart, admin).await;
    }
    assert!(
        pred(&status),
        "status never matched: {status:#?}\nstderr:\n{}",
        rampart.stderr()
    );
    status
}

/// `checkout` splits 10 % to canary (killed by an operator below); `cart` sends 5 % to a
/// canary that fails (its breaker opens after 2 errors in a row); `search` rolls out
/// 10 -> 50 -> 100 % every 2 s and is paused by an operator once on its second step.
fn body(stable: &Upstream, canary: &Upstream, broken: &Upstream) -> String {
    config(
        "stable",
        &[stable, canary, broken],
        "
        routes:
          - name: checkout
            kind: canary
            owner: team-payments
            match: {path_prefix: /checkout}
            identity: [header:x-user-id]
            split:
              - {backend: canary, percent: 10}
          - name: cart
            match: {path_prefix: /cart}
            identity: [header:x-user-id]
            split:
              - {backend: broken, percent: 5}
            breaker:
              window: 10s
              min_requests: 1000
              max_error_rate: 0.5
              consecutive_errors: 2
              open_for: 60s
          - name: search
            match: {path_prefix: /search}
            identity: [header:x-user-id]
            split:
              - {backend: canary}
            rollout: {steps: [10, 50, 100], step_interval: 2s, min_requests: 5, max_error_rate_increase: 0.05, max_latency_ratio: 1000}
        ",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_admin_shows_an_open_breaker_an_admin_kill_and_a_rollout_mid_way_as_a_table_and_as_json(
) {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let broken = Upstream::start("broken").await;
    let (rampart, admin) =
        Rampart::start_admin(&body(&stable, &canary, &broken), &tokens_yaml()).await;

    // The cart canary fails: two errors in a row open its breaker.
    broken.set_status(500);
    let user = find_identity("cart", "br", |b| b < 500);
    for _ in 0..3 {
        rampart.get("/cart", &[("x-user-id", &user)]).await;
    }
    // An operator kills checkout.
    assert_eq!(
        admin_call(&rampart, admin, "POST", "/v1/routes/checkout/kill").await,
        200
    );
    // Traffic on search until its rollout is on the second step, then an operator pauses it.
    let mut n = 0u32;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = get_status(&rampart, admin).await;
        let step = status
            .route("search")
            .unwrap()
            .rollout
            .as_ref()
            .unwrap()
            .step;
        if step >= 1 || Instant::now() > deadline {
            break;
        }
        for _ in 0..20 {
            n += 1;
            rampart
                .get("/search", &[("x-user-id", &format!("u{n}"))])
                .await;
        }
    }
    assert_eq!(
        admin_call(&rampart, admin, "POST", "/v1/routes/search/pause").await,
        200
    );
    let expected = status_until(&rampart, admin, |s| {
        let cart = s.route("cart").unwrap();
        cart.backends[1].breaker.as_ref().unwrap().state == BreakerState::Open
            && s.route("search").unwrap().rollout.as_ref().unwrap().status == RolloutPhase::Paused
    })
    .await;
    let rollout = expected.route("search").unwrap().rollout.clone().unwrap();
    assert_eq!(rollout.step, 1, "paused on the second step: {rollout:#?}");
    let verdict = rollout
        .last_analysis
        .clone()
        .expect("a verdict moved it to step 2");
    assert_eq!(verdict.verdict, "pass");

    let dir = TempDir::new("status-token");
    let token_file = dir.write("token", &format!("{VIEWER}\n"));
    let url = format!("http://{admin}");

    // The table.
    let out = rampart_cli(
        &[
            "status",
            "--admin",
            &url,
            "--token-file",
            token_file.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    let table = &out.stdout;
    assert!(!table.contains('\x1b'), "no colour when piped:\n{table}");
    assert!(table.contains(&expected.config.sha256[..12]), "{table}");
    let section = |route: &str| -> String {
        let start = table
            .lines()
            .position(|l| l.starts_with(route))
            .unwrap_or_else(|| panic!("no section for {route}:\n{table}"));
        table
            .lines()
            .skip(start)
            .take_while(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let checkout = section("checkout");
    assert!(
        checkout.contains("canary") && checkout.contains("team-payments"),
        "{checkout}"
    );
    assert!(checkout.contains("KILLED"), "{checkout}");
    assert!(
        checkout.contains(&format!("admin: {KILL_REASON:?} by otto")),
        "the kill with its source, reason and actor:\n{checkout}"
    );
    let canary_row = checkout
        .lines()
        .find(|l| l.trim_start().starts_with("canary "))
        .unwrap();
    assert!(
        canary_row.contains("10 %") && canary_row.contains("0 %"),
        "configured 10 %, effective 0 %: {canary_row}"
    );
    let cart = section("cart");
    let broken_row = cart
        .lines()
        .find(|l| l.trim_start().starts_with("broken"))
        .unwrap();
    assert!(broken_row.contains("OPEN"), "{cart}");
    assert!(
        broken_row.contains("errors in a row"),
        "the breaker's cause: {broken_row}"
    );
    assert!(broken_row.contains("next probe"), "{broken_row}");
    assert!(broken_row.contains("healthy"), "{broken_row}");
    let search = section("search");
    assert!(search.contains("step 2/3 at 50 %"), "{search}");
    assert!(search.contains("paused"), "{search}");
    assert!(search.contains("last verdict pass"), "{search}");
    assert!(
        search.contains(&format!("canary {} req", verdict.canary.requests)),
        "the verdict's figures:\n{search}"
    );

    // The same data as JSON, through RAMPART_ADMIN_TOKEN this time: it reads into the same
    // typed Status and agrees with the admin API.
    let out = rampart_cli(
        &["status", "--admin", &url, "--json"],
        &[("RAMPART_ADMIN_TOKEN", VIEWER)],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let printed: Status = serde_json::from_str(&out.stdout).expect("--json prints a Status");
    assert_eq!(printed.config, expected.config);
    assert_eq!(
        printed.routes.iter().map(|r| &r.name).collect::<Vec<_>>(),
        ["checkout", "cart", "search"]
    );
    let kills = &printed.route("checkout").unwrap().kills;
    assert_eq!(kills.len(), 1);
    assert_eq!(kills[0].source, KillSource::Admin);
    assert_eq!(kills[0].reason.as_deref(), Some(KILL_REASON));
    assert_eq!(kills[0].actor.as_deref(), Some("otto"));
    let breaker = printed.route("cart").unwrap().backends[1]
        .breaker
        .clone()
        .unwrap();
    assert_eq!(breaker.state, BreakerState::Open);
    let cause = breaker
        .last_transition
        .expect("the transition that opened it");
    assert_eq!(cause.cause, "consecutive_errors");
    assert_eq!(cause.to, BreakerState::Open);
    assert_eq!(
        printed.route("cart").unwrap().effective_split["broken"],
        0.0
    );
    let printed_rollout = printed.route("search").unwrap().rollout.clone().unwrap();
    assert_eq!(printed_rollout.step, rollout.step);
    assert_eq!(printed_rollout.status, RolloutPhase::Paused);
    assert_eq!(printed_rollout.last_analysis, rollout.last_analysis);
    assert_eq!(printed_rollout.steps, ["10", "50", "100"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_token_exits_1_with_one_line_naming_the_token() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let broken = Upstream::start("broken").await;
    let (_rampart, admin) =
        Rampart::start_admin(&body(&stable, &canary, &broken), &tokens_yaml()).await;
    let url = format!("http://{admin}");
    let dir = TempDir::new("status-wrong");
    let wrong = dir.write("token", WRONG);

    let out = rampart_cli(
        &[
            "status",
            "--admin",
            &url,
            "--token-file",
            wrong.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert_eq!(out.stderr.lines().count(), 1, "one line: {}", out.stderr);
    assert!(
        out.stderr.contains("refused the token (401)"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("--token-file"), "{}", out.stderr);

    let out = rampart_cli(&["status", "--admin", &url], &[]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("needs a token (401)"), "{}", out.stderr);
    assert!(out.stderr.contains("RAMPART_ADMIN_TOKEN"), "{}", out.stderr);

    let missing = dir.path().join("no-such-token");
    let out = rampart_cli(
        &[
            "status",
            "--admin",
            &url,
            "--token-file",
            missing.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("cannot read --token-file"),
        "{}",
        out.stderr
    );
}

#[test]
fn an_unreachable_admin_address_exits_1_naming_the_address() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let out = rampart_cli(
        &["status", "--admin", &url],
        &[("RAMPART_ADMIN_TOKEN", VIEWER)],
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("cannot reach the admin API at {url}")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("admin_listen"),
        "what to check: {}",
        out.stderr
    );
}

#[test]
fn an_unreachable_prometheus_exits_1_naming_it() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let out = rampart_cli(
        &[
            "status",
            "--prometheus",
            &url,
            "--selector",
            r#"{app="shop"}"#,
        ],
        &[],
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("cannot reach Prometheus at {url}")),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("--prometheus"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_not_prometheus_exits_1_naming_the_query_and_the_selector() {
    let not_prometheus = Upstream::start("not-prometheus").await;
    let out = rampart_cli(
        &[
            "status",
            "--prometheus",
            &not_prometheus.url(),
            "--selector",
            r#"{app="shop"}"#,
        ],
        &[],
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("did not answer the query"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("--selector"), "{}", out.stderr);
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["status"][..],
        &[
            "status",
            "--admin",
            "http://127.0.0.1:1",
            "--prometheus",
            "http://127.0.0.1:2",
            "--selector",
            "{}",
        ],
        &["status", "--prometheus", "http://127.0.0.1:2"],
        &[
            "status",
            "--admin",
            "http://127.0.0.1:1",
            "--selector",
            "{}",
        ],
    ] {
        let out = rampart_cli(args, &[]);
        assert_eq!(out.code, Some(2), "{args:?}: {}", out.stderr);
    }
}

#[test]
fn help_names_both_views() {
    let out = rampart_cli(&["status", "--help"], &[]);
    assert_eq!(out.code, Some(0));
    for flag in [
        "--admin",
        "--token-file",
        "--ca-file",
        "--prometheus",
        "--selector",
        "--watch",
        "--json",
    ] {
        assert!(out.stdout.contains(flag), "{flag} missing:\n{}", out.stdout);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_with_json_prints_one_status_document_a_second_until_stopped() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let broken = Upstream::start("broken").await;
    let (_rampart, admin) =
        Rampart::start_admin(&body(&stable, &canary, &broken), &tokens_yaml()).await;
    let mut child = Command::new(common::RAMPART)
        .args([
            "status",
            "--admin",
            &format!("http://{admin}"),
            "--watch",
            "--json",
        ])
        .env("RAMPART_ADMIN_TOKEN", VIEWER)
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn rampart");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().take(3) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut documents = Vec::new();
    for _ in 0..3 {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(line)) => documents.push(line),
            _ => break,
        }
    }
    let still_running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(documents.len(), 3, "three redraws: {documents:?}");
    assert!(still_running, "--watch keeps going until stopped");
    for line in &documents {
        let status: Status = serde_json::from_str(line).expect("each line is a Status");
        assert_eq!(status.routes.len(), 3);
    }
}

/// A test certificate authority and a server certificate it signed, as PEM files.
struct Pki {
    ca_file: std::path::PathBuf,
    cert_file: std::path::PathBuf,
    key_file: std::path::PathBuf,
}

fn pki(dir: &TempDir) -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "status test CA");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca = params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(params, ca_key);
    let leaf_params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    Pki {
        ca_file: dir.write("ca.pem", &ca.pem()),
        cert_file: dir.write("tls.crt", &leaf.pem()),
        key_file: dir.write("tls.key", &leaf_key.serialize_pem()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_api_off_loopback_is_read_over_https_with_the_private_ca_given_by_ca_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("status-tls");
    let pki = pki(&dir);
    let tokens = dir.write("tokens.yaml", &tokens_yaml());
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    let stable = Upstream::start("stable").await;
    let port = free_port();
    let body = format!(
        "tls: {{cert_file: {}, key_file: {}}}\nadmin_listen: 0.0.0.0:{port}\nadmin_tokens_file: {}\n{}",
        pki.cert_file.display(),
        pki.key_file.display(),
        tokens.display(),
        config("stable", &[&stable], "routes: []\n")
    );
    let _rampart = Rampart::start(&body).await;
    let token = [("RAMPART_ADMIN_TOKEN", VIEWER)];
    let https = format!("https://127.0.0.1:{port}");

    let out = rampart_cli(
        &[
            "status",
            "--admin",
            &https,
            "--ca-file",
            pki.ca_file.to_str().unwrap(),
            "--json",
        ],
        &token,
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let status: Status = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(status.upstreams[0].name, "stable");

    // Without the CA the certificate is not trusted; over plain HTTP nothing answers.
    for args in [
        vec!["status", "--admin", https.as_str()],
        vec!["status", "--admin", &format!("http://127.0.0.1:{port}")],
    ] {
        let out = rampart_cli(&args, &token);
        assert_eq!(out.code, Some(1), "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
        assert!(
            out.stderr.contains("--ca-file"),
            "what to check: {}",
            out.stderr
        );
    }
}

/// Runs `command` under a pseudo-terminal (util-linux `script`, in every Debian), so the
/// program's stdout is a terminal; returns what it printed.
fn on_a_terminal(command: &str, env: &[(&str, &str)]) -> String {
    let mut c = Command::new("script");
    c.args(["-qec", command, "/dev/null"])
        .env_remove("NO_COLOR")
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c
        .output()
        .expect("util-linux `script` is needed to give the command a terminal");
    assert!(out.status.success(), "{command}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colours_only_on_a_terminal_and_never_with_no_color() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let broken = Upstream::start("broken").await;
    let (_rampart, admin) =
        Rampart::start_admin(&body(&stable, &canary, &broken), &tokens_yaml()).await;
    let command = format!("{} status --admin http://{admin}", common::RAMPART);
    let coloured = on_a_terminal(&command, &[("RAMPART_ADMIN_TOKEN", VIEWER)]);
    assert!(
        coloured.contains("\x1b[1m"),
        "bold names on a terminal: {coloured:?}"
    );
    assert!(coloured.contains("checkout"));
    let plain = on_a_terminal(
        &command,
        &[("RAMPART_ADMIN_TOKEN", VIEWER), ("NO_COLOR", "1")],
    );
    assert!(!plain.contains('\x1b'), "NO_COLOR: {plain:?}");
    assert!(plain.contains("checkout"));
}
