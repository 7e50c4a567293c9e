//! `rampart status`: what an SRE types during an incident (see `docs/status.md`).
//!
//! `--admin URL` reads one replica's `GET /v1/status` into the same types the replica
//! serialised ([`rampart_admin::status::Status`]) and draws a table per route: kind, owner,
//! configured and effective split, breakers with their cause and next probe, health, kills,
//! and the rollout with its last verdict. `--prometheus URL --selector SEL` reads only the
//! metrics every replica exports, through instant queries, and shows the fleet: replicas
//! per rollout step (drift), open breakers, kills by source, distinct config hashes.
//!
//! Colours only on a terminal and without `NO_COLOR`; `--watch` redraws every second,
//! `--json` prints the data itself. Every failure is one line naming what to check, exit 1.

use crate::cli::StatusArgs;
use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use rampart_admin::status::{
    BackendStatus, BreakerState, BreakerStatus, KillSource, RolloutPhase, RolloutStatus,
    RouteStatus, SideFigures, Status,
};
use rampart_runtime::fleet::{self, FleetError, PromClient, Sample};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest one request to the admin API or Prometheus may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// How often `--watch` redraws.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// Exit code when the admin API or Prometheus cannot be read.
const EXIT_UNAVAILABLE: u8 = 1;
/// The environment variable holding the admin token when `--token-file` is not given.
pub const TOKEN_ENV: &str = "RAMPART_ADMIN_TOKEN";

/// The fleet as Prometheus sees it: what `status --prometheus --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetStatus {
    /// The Prometheus queried.
    pub prometheus: String,
    /// The label matchers that selected the replicas.
    pub selector: String,
    /// Every replica found (its `instance` label), from `rampart_build_info`.
    pub replicas: Vec<String>,
    /// Replicas by Rampart version.
    pub versions: BTreeMap<String, Vec<String>>,
    /// Replicas by the sha256 of the config they serve (`rampart_config_info`): more than
    /// one key means the replicas do not serve the same config.
    pub config_sha256: BTreeMap<String, Vec<String>>,
    /// Every route any replica serves.
    pub routes: Vec<FleetRoute>,
}

/// One route across the fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetRoute {
    /// The route's name.
    pub route: String,
    /// Replicas by rollout step index (`rampart_rollout_step`, 0-based); empty without a
    /// rollout.
    pub steps: BTreeMap<u64, Vec<String>>,
    /// Whether the replicas are on more than one step.
    pub drift: bool,
    /// Replicas by rollout status (`rampart_rollout_status`).
    pub rollout_status: BTreeMap<String, Vec<String>>,
    /// Breakers not closed, by backend and state.
    pub breakers: Vec<FleetBreaker>,
    /// Replicas with a kill in force, by source (`config`, `admin`).
    pub kills: BTreeMap<String, Vec<String>>,
}

/// Replicas whose breaker for one backend of a route is in one state (open or half-open).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetBreaker {
    /// The backend.
    pub backend: String,
    /// `open` or `half_open`.
    pub state: String,
    /// The replicas.
    pub replicas: Vec<String>,
}

/// Where `status` reads from.
enum Source {
    Admin { base: String, token: Option<String> },
    Fleet { base: String, selector: String },
}

/// Runs `rampart status`; exit 0, or 1 when the admin API or Prometheus cannot be read.
pub fn run(args: &StatusArgs) -> ExitCode {
    let runtime = match crate::commands::tokio_runtime(1) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rampart status: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    runtime.block_on(run_async(args))
}

async fn run_async(args: &StatusArgs) -> ExitCode {
    let source = match source(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rampart status: {e:#}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let client = match fleet::client_with(args.ca_file.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rampart status: cannot use --ca-file: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let terminal = std::io::stdout().is_terminal();
    let style = Style {
        color: terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
    };
    let mut first = true;
    loop {
        let frame = match frame(&client, &source, args.json, style).await {
            Ok(text) => text,
            Err(e) if first || !args.watch => {
                eprintln!("rampart status: {e:#}");
                return ExitCode::from(EXIT_UNAVAILABLE);
            }
            // While watching, a replica restarting is part of the incident: say so, retry.
            Err(e) => format!(
                "{}\n",
                style.red(&format!("rampart status: {e:#} (retrying every second)"))
            ),
        };
        let mut out = std::io::stdout().lock();
        let written = if args.watch && terminal && !args.json {
            // Home and clear, then the frame: the table is redrawn in place.
            write!(out, "\x1b[H\x1b[2J{frame}")
        } else if args.watch && !args.json && !first {
            write!(out, "\n{frame}")
        } else {
            write!(out, "{frame}")
        };
        if written.and_then(|()| out.flush()).is_err() {
            // stdout closed (`| head`): nothing more to show.
            return ExitCode::SUCCESS;
        }
        drop(out);
        if !args.watch {
            return ExitCode::SUCCESS;
        }
        first = false;
        tokio::time::sleep(WATCH_EVERY).await;
    }
}

fn source(args: &StatusArgs) -> anyhow::Result<Source> {
    if let Some(url) = &args.admin {
        let token = match &args.token_file {
            Some(file) => Some(
                std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read --token-file {}", file.display()))?
                    .trim()
                    .to_string(),
            ),
            None => std::env::var(TOKEN_ENV)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
        };
        return Ok(Source::Admin {
            base: base_url(url),
            token,
        });
    }
    match (&args.prometheus, &args.selector) {
        (Some(url), Some(selector)) => Ok(Source::Fleet {
            base: base_url(url),
            selector: selector.clone(),
        }),
        _ => bail!("give --admin URL, or --prometheus URL --selector SEL"),
    }
}

/// `host:port` becomes `http://host:port`; a trailing slash goes.
fn base_url(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}

async fn frame(
    client: &PromClient,
    source: &Source,
    json: bool,
    style: Style,
) -> anyhow::Result<String> {
    let now = SystemTime::now();
    match source {
        Source::Admin { base, token } => {
            let status = fetch_admin(client, base, token.as_deref()).await?;
            if json {
                Ok(format!("{}\n", serde_json::to_string(&status)?))
            } else {
                Ok(render_admin(base, &status, now, style))
            }
        }
        Source::Fleet { base, selector } => {
            let fleet = fetch_fleet(client, base, selector, now).await?;
            if json {
                Ok(format!("{}\n", serde_json::to_string(&fleet)?))
            } else {
                Ok(render_fleet(&fleet, style))
            }
        }
    }
}

/// The error and its causes on one line.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// Reads one replica's status document.
pub async fn fetch_admin(
    client: &PromClient,
    base: &str,
    token: Option<&str>,
) -> anyhow::Result<Status> {
    let url = format!("{base}/v1/status");
    let mut request = http::Request::get(&url);
    if let Some(token) = token {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| anyhow!("bad admin URL {base:?}: {e}; give it as http://HOST:PORT"))?;
    let unreachable = |why: String| {
        anyhow!(
            "cannot reach the admin API at {base} ({why}): check the address, that the replica runs with admin_listen there, and https:// (with --ca-file for a private CA) when it listens off loopback"
        )
    };
    let response = tokio::time::timeout(TIMEOUT, client.request(request))
        .await
        .map_err(|_| unreachable(format!("no answer in {} s", TIMEOUT.as_secs())))?
        .map_err(|e| {
            let why = causes(&e);
            if why.contains("certificate") {
                anyhow!(
                    "the admin API at {base} presented a certificate that is not trusted here ({why}): give --ca-file with the CA that signed the replica's tls.cert_file, and use the name or address the certificate is for"
                )
            } else {
                unreachable(why)
            }
        })?;
    let code = response.status();
    let body = tokio::time::timeout(TIMEOUT, response.into_body().collect())
        .await
        .map_err(|_| unreachable("the answer did not complete".into()))?
        .map_err(|e| unreachable(causes(&e)))?
        .to_bytes();
    let token_hint = format!("--token-file FILE or ${TOKEN_ENV}");
    match code.as_u16() {
        200 => {}
        401 if token.is_none() => bail!(
            "the admin API at {base} needs a token (401): give {token_hint}"
        ),
        401 => bail!(
            "the admin API at {base} refused the token (401): check {token_hint}, and that the token's sha256 is listed in that replica's admin_tokens_file"
        ),
        403 => bail!(
            "the admin API at {base} refused the token's role (403): status needs a viewer token or better in admin_tokens_file"
        ),
        404 => bail!(
            "{base} has no /v1/status (404): check that the URL is the replica's admin_listen, not its listen or metrics_listen"
        ),
        _ => bail!(
            "the admin API at {base} answered HTTP {code}: {}",
            String::from_utf8_lossy(&body).trim()
        ),
    }
    serde_json::from_slice(&body).map_err(|e| {
        anyhow!("{base}/v1/status is not a Rampart status document ({e}): check that the URL is a Rampart admin_listen")
    })
}

/// Runs one instant query; Prometheus's failures become lines naming what to check.
async fn query(
    client: &PromClient,
    base: &str,
    promql: &str,
    at: SystemTime,
) -> anyhow::Result<Vec<Sample>> {
    fleet::instant_vector(client, base, promql, at)
        .await
        .map_err(|e| match e {
            FleetError::Unreachable(why) => anyhow!(
                "cannot reach Prometheus at {base} ({why}): check --prometheus (its base URL, e.g. http://prometheus:9090)"
            ),
            FleetError::Bad(why) => anyhow!(
                "Prometheus at {base} did not answer the query {promql} ({why}): check --prometheus and --selector (label matchers such as '{{app=\"shop\"}}')"
            ),
        })
}

/// The replica a sample comes from: its `instance` label (Prometheus adds it to every
/// scraped series), else its labels.
fn replica(sample: &Sample) -> String {
    sample
        .labels
        .get("instance")
        .or_else(|| sample.labels.get("pod"))
        .cloned()
        .unwrap_or_else(|| {
            sample
                .labels
                .iter()
                .filter(|(k, _)| k.as_str() != "__name__")
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
}

fn label_of<'a>(sample: &'a Sample, name: &str) -> &'a str {
    sample.labels.get(name).map(String::as_str).unwrap_or("")
}

/// Reads the fleet from Prometheus: instant queries at `at` over the selected replicas.
pub async fn fetch_fleet(
    client: &PromClient,
    base: &str,
    selector: &str,
    at: SystemTime,
) -> anyhow::Result<FleetStatus> {
    let sel = |extra: &[(&str, &str)]| fleet::matchers(selector, extra);
    let build = query(client, base, &format!("rampart_build_info{}", sel(&[])), at).await?;
    if build.is_empty() {
        bail!(
            "Prometheus at {base} has no rampart_build_info{} series: check --selector, and that Prometheus scrapes the replicas' metrics_listen",
            sel(&[])
        );
    }
    let mut replicas = BTreeSet::new();
    let mut versions: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in &build {
        replicas.insert(replica(s));
        versions
            .entry(label_of(s, "version").to_string())
            .or_default()
            .push(replica(s));
    }
    let mut config_sha256: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in query(
        client,
        base,
        &format!("rampart_config_info{}", sel(&[])),
        at,
    )
    .await?
    {
        config_sha256
            .entry(label_of(&s, "sha256").to_string())
            .or_default()
            .push(replica(&s));
    }
    let mut found: Vec<FleetRoute> = Vec::new();
    let split = query(
        client,
        base,
        &format!("rampart_split_ratio{}", sel(&[])),
        at,
    )
    .await?;
    let steps = query(
        client,
        base,
        &format!("rampart_rollout_step{}", sel(&[])),
        at,
    )
    .await?;
    let phases = query(
        client,
        base,
        &format!("rampart_rollout_status{} == 1", sel(&[])),
        at,
    )
    .await?;
    let breakers = query(
        client,
        base,
        &format!("rampart_breaker_state{} == 1", sel(&[])),
        at,
    )
    .await?;
    let breakers: Vec<Sample> = breakers
        .into_iter()
        .filter(|s| label_of(s, "state") != "closed")
        .collect();
    let kills = query(
        client,
        base,
        &format!("rampart_kill_active{} == 1", sel(&[])),
        at,
    )
    .await?;
    let mut names: BTreeSet<String> = BTreeSet::new();
    for s in split
        .iter()
        .chain(&steps)
        .chain(&phases)
        .chain(&breakers)
        .chain(&kills)
    {
        let name = label_of(s, "route");
        if !name.is_empty() && name != "_default" {
            names.insert(name.to_string());
        }
    }
    for name in &names {
        let mut r = FleetRoute {
            route: name.clone(),
            steps: BTreeMap::new(),
            drift: false,
            rollout_status: BTreeMap::new(),
            breakers: Vec::new(),
            kills: BTreeMap::new(),
        };
        for s in steps.iter().filter(|s| label_of(s, "route") == name) {
            if s.value.is_finite() && s.value >= 0.0 {
                r.steps
                    .entry(s.value.round() as u64)
                    .or_default()
                    .push(replica(s));
            }
        }
        r.drift = r.steps.len() > 1;
        for s in phases.iter().filter(|s| label_of(s, "route") == name) {
            r.rollout_status
                .entry(label_of(s, "status").to_string())
                .or_default()
                .push(replica(s));
        }
        let mut open: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for s in breakers.iter().filter(|s| label_of(s, "route") == name) {
            open.entry((
                label_of(s, "backend").to_string(),
                label_of(s, "state").to_string(),
            ))
            .or_default()
            .push(replica(s));
        }
        r.breakers = open
            .into_iter()
            .map(|((backend, state), replicas)| FleetBreaker {
                backend,
                state,
                replicas,
            })
            .collect();
        for s in kills.iter().filter(|s| label_of(s, "route") == name) {
            r.kills
                .entry(label_of(s, "source").to_string())
                .or_default()
                .push(replica(s));
        }
        found.push(r);
    }
    let sort = |m: &mut BTreeMap<_, Vec<String>>| m.values_mut().for_each(|v| v.sort());
    let mut fleet = FleetStatus {
        prometheus: base.to_string(),
        selector: selector.to_string(),
        replicas: replicas.into_iter().collect(),
        versions,
        config_sha256,
        routes: found,
    };
    sort(&mut fleet.versions);
    sort(&mut fleet.config_sha256);
    for r in &mut fleet.routes {
        r.steps.values_mut().for_each(|v| v.sort());
        sort(&mut r.rollout_status);
        sort(&mut r.kills);
        r.breakers.iter_mut().for_each(|b| b.replicas.sort());
    }
    Ok(fleet)
}

// ---------------------------------------------------------------------------------------
// Drawing
// ---------------------------------------------------------------------------------------

/// ANSI colours, or none.
#[derive(Debug, Clone, Copy)]
struct Style {
    color: bool,
}

impl Style {
    fn paint(self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
    fn red(self, text: &str) -> String {
        self.paint("1;31", text)
    }
    fn green(self, text: &str) -> String {
        self.paint("32", text)
    }
    fn yellow(self, text: &str) -> String {
        self.paint("33", text)
    }
    fn bold(self, text: &str) -> String {
        self.paint("1", text)
    }
    fn dim(self, text: &str) -> String {
        self.paint("2", text)
    }
}

/// `10.5` as `10.5 %`, `10.0` as `10 %`.
fn pct(x: f64) -> String {
    if (x - x.round()).abs() < 1e-9 {
        format!("{} %", x.round())
    } else {
        format!("{x:.2} %")
    }
}

/// A duration as `45s`, `4m05s`, `2h03m`.
fn span(ms: u64) -> String {
    let s = ms.div_ceil(1000);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// `2026-12-06T16:40:28.123Z` as `16:40:28Z`.
fn clock(rfc3339: &str) -> String {
    rfc3339
        .split_once('T')
        .map(|(_, t)| format!("{}Z", t.get(..8).unwrap_or(t)))
        .unwrap_or_else(|| rfc3339.to_string())
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn side(s: &SideFigures) -> String {
    let p99 = s
        .p99_ms
        .map(|ms| format!(", p99 {ms:.1} ms"))
        .unwrap_or_default();
    format!(
        "{} req, {} errors ({:.2} %){p99}",
        s.requests,
        s.errors,
        s.error_rate * 100.0
    )
}

/// Why a breaker is in its state, from its last transition into it.
fn breaker_cause(b: &BreakerStatus) -> Option<String> {
    let t = b.last_transition.as_ref().filter(|t| t.to == b.state)?;
    let w = &t.window;
    let why = match t.cause.as_str() {
        "consecutive_errors" => format!("{} errors in a row", w.consecutive_errors),
        "error_rate" => format!(
            "error rate {:.1} % ({}/{} in the window)",
            w.error_rate * 100.0,
            w.errors,
            w.requests
        ),
        "latency" => format!("{} of {} slow in the window", w.slow, w.requests),
        "open_interval_ended" => "open interval ended, probing".to_string(),
        "probe_failed" => "a probe failed".to_string(),
        "probes_passed" => "every probe passed".to_string(),
        other => other.to_string(),
    };
    Some(format!("{why}, since {}", clock(&t.at)))
}

fn breaker_cell(b: Option<&BreakerStatus>, style: Style) -> String {
    let Some(b) = b else {
        return style.dim("-");
    };
    let state = match b.state {
        BreakerState::Closed => style.green("closed"),
        BreakerState::Open => style.red("OPEN"),
        BreakerState::HalfOpen => style.yellow("half-open"),
    };
    let mut cell = state;
    if let Some(cause) = breaker_cause(b) {
        let _ = write!(cell, ": {cause}");
    }
    if let (Some(at), Some(in_ms)) = (&b.next_probe_at, b.next_probe_in_ms) {
        let _ = write!(cell, "; next probe {} (in {})", clock(at), span(in_ms));
    }
    cell
}

fn backend_row(
    route: &RouteStatus,
    b: &BackendStatus,
    widths: (usize, usize),
    style: Style,
) -> String {
    let configured = route
        .configured_split
        .get(&b.backend)
        .map(|x| pct(*x))
        .unwrap_or_else(|| "-".into());
    let effective_value = route.effective_split.get(&b.backend).copied();
    let effective = effective_value.map(pct).unwrap_or_else(|| "-".into());
    let moved = effective_value.is_some()
        && route.configured_split.get(&b.backend).copied() != effective_value;
    let effective = format!("{effective:>10}");
    let effective = if moved {
        style.yellow(&effective)
    } else {
        effective
    };
    let health = if b.healthy {
        style.green(&format!("{:<9}", "healthy"))
    } else {
        style.red(&format!("{:<9}", "UNHEALTHY"))
    };
    let name = if b.stable && b.backend != "stable" {
        format!("{} (stable)", b.backend)
    } else {
        b.backend.clone()
    };
    format!(
        "  {name:<w$}  {configured:>10}  {effective}  {health}  {:>8}  {}\n",
        b.inflight.map(|n| n.to_string()).unwrap_or_default(),
        breaker_cell(b.breaker.as_ref(), style),
        w = widths.0.max(widths.1),
    )
}

/// The indent of a continuation line under [`label`].
const MORE: &str = "            ";

/// A line's label, indented and padded so the values line up.
fn label(name: &str) -> String {
    format!("  {name:<10}")
}

fn phase(p: RolloutPhase, style: Style) -> String {
    match p {
        RolloutPhase::Progressing => style.green(p.as_str()),
        RolloutPhase::Promoted => style.green(p.as_str()),
        RolloutPhase::Paused => style.yellow(p.as_str()),
        RolloutPhase::Aborted => style.red(p.as_str()),
    }
}

fn verdict(v: &str, style: Style) -> String {
    match v {
        "pass" => style.green(v),
        "inconclusive" => style.yellow(v),
        _ => style.red(v),
    }
}

fn rollout_lines(r: &RolloutStatus, now: SystemTime, style: Style) -> String {
    let mut out = String::new();
    let next = match (&r.next_decision_at, r.status) {
        (Some(at), RolloutPhase::Progressing) => format!(
            "; next decision {} (in {})",
            clock(at),
            span(r.next_decision_ms.saturating_sub(millis(now)))
        ),
        _ => String::new(),
    };
    let fleet = if r.fleet {
        " (fleet verdicts from Prometheus)"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "{}step {}/{} at {} %, {}{next}{fleet}",
        label("rollout"),
        r.step + 1,
        r.steps.len(),
        r.current_percent,
        phase(r.status, style),
    );
    match &r.last_analysis {
        Some(a) => {
            let at = a.at.as_deref().map(clock).unwrap_or_default();
            let _ = writeln!(
                out,
                "{MORE}last verdict {} at {at} on step {}: canary {}; stable {}{}",
                verdict(&a.verdict, style),
                a.step + 1,
                side(&a.canary),
                side(&a.stable),
                if a.breaker_opened {
                    "; the canary's breaker opened"
                } else {
                    ""
                }
            );
        }
        None => {
            let _ = writeln!(out, "{MORE}last verdict: none yet");
        }
    }
    let _ = writeln!(
        out,
        "{MORE}this step: canary {}; stable {}",
        side(&r.this_step.canary),
        side(&r.this_step.stable)
    );
    out
}

/// One replica's status as text: a header, then a table per route.
fn render_admin(base: &str, status: &Status, now: SystemTime, style: Style) -> String {
    let mut out = String::new();
    let c = &status.config;
    let _ = writeln!(
        out,
        "{} {base}   config {} (schema {}) from {}",
        style.bold("replica"),
        short(&c.sha256),
        c.schema,
        c.source.as_deref().unwrap_or(&c.file)
    );
    let reload = match &c.last_reload {
        Some(r) => {
            let result = match r.result {
                rampart_admin::status::ReloadResult::Applied => style.green("applied"),
                rampart_admin::status::ReloadResult::Rejected => style.red("REJECTED"),
            };
            format!(
                "last reload {result} {} ({})",
                clock(&r.at),
                short(&r.sha256)
            )
        }
        None => "no reload since start".to_string(),
    };
    let pin = match &c.pinned {
        Some(p) => style.yellow(&format!(
            "rollback pinned to {} by {} ({:?}) until the file changes",
            short(&p.config_sha256),
            p.actor,
            p.reason
        )),
        None => "no rollback pin".to_string(),
    };
    let _ = writeln!(out, "        {reload}; {pin}");
    for route in &status.routes {
        out.push('\n');
        let mut head = format!("{}  {}", style.bold(&route.name), route.kind);
        if let Some(owner) = &route.owner {
            let _ = write!(head, "  owner {owner}");
        }
        if let Some(expires) = &route.expires {
            let _ = write!(head, "  expires {expires}");
            if route.expired {
                head.push(' ');
                head.push_str(&style.yellow("(expired)"));
            }
        }
        if route.killed {
            head.push_str("  ");
            head.push_str(&style.red("KILLED"));
        }
        let _ = writeln!(out, "{head}");
        let width = route
            .backends
            .iter()
            .map(|b| {
                b.backend.len()
                    + if b.stable && b.backend != "stable" {
                        9
                    } else {
                        0
                    }
            })
            .max()
            .unwrap_or(7);
        let _ = writeln!(
            out,
            "{}",
            style.dim(&format!(
                "  {:<w$}  {:>10}  {:>10}  {:<9}  {:>8}  breaker",
                "backend",
                "configured",
                "effective",
                "health",
                "inflight",
                w = width.max(7)
            ))
        );
        for b in &route.backends {
            out.push_str(&backend_row(route, b, (width, 7), style));
        }
        for (i, k) in route.kills.iter().enumerate() {
            let mut line = format!(
                "{}{}: {:?}",
                if i == 0 {
                    label("kills")
                } else {
                    MORE.to_string()
                },
                k.source.as_str(),
                k.reason.as_deref().unwrap_or("")
            );
            if k.source == KillSource::Admin {
                let _ = write!(
                    line,
                    " by {} at {}",
                    k.actor.as_deref().unwrap_or("?"),
                    k.at.as_deref().unwrap_or("?")
                );
            }
            let _ = writeln!(out, "{}", style.red(&line));
        }
        if let Some(p) = &route.pause {
            let _ = writeln!(
                out,
                "{}",
                style.yellow(&format!(
                    "{}by {}: {:?} at {}",
                    label("paused"),
                    p.actor,
                    p.reason,
                    p.at
                ))
            );
        }
        if let Some(r) = &route.rollout {
            out.push_str(&rollout_lines(r, now, style));
        }
    }
    if !status.dormant_admin_kills.is_empty() {
        let names: Vec<&str> = status
            .dormant_admin_kills
            .keys()
            .map(String::as_str)
            .collect();
        let _ = writeln!(
            out,
            "\nadmin kills kept for routes not in the config: {}",
            names.join(", ")
        );
    }
    out
}

fn replicas_text(replicas: &[String]) -> String {
    let n = replicas.len();
    format!(
        "{n} {} [{}]",
        if n == 1 { "replica" } else { "replicas" },
        replicas.join(", ")
    )
}

/// The fleet as text: replicas, config hashes, then per route steps, breakers and kills.
fn render_fleet(f: &FleetStatus, style: Style) -> String {
    let mut out = String::new();
    let versions: Vec<String> = f
        .versions
        .iter()
        .map(|(v, r)| format!("{v} ×{}", r.len()))
        .collect();
    let _ = writeln!(
        out,
        "{} {} via {}   {} replicas, version {}",
        style.bold("fleet"),
        f.selector,
        f.prometheus,
        f.replicas.len(),
        versions.join(", ")
    );
    let shas: Vec<String> = f
        .config_sha256
        .iter()
        .map(|(sha, r)| format!("{} on {}", short(sha), replicas_text(r)))
        .collect();
    let line = format!("config sha256: {}", shas.join("; "));
    if f.config_sha256.len() > 1 {
        let _ = writeln!(
            out,
            "{}",
            style.red(&format!(
                "{line}  ({} DISTINCT CONFIGS)",
                f.config_sha256.len()
            ))
        );
    } else {
        let _ = writeln!(out, "{line}");
    }
    for r in &f.routes {
        out.push('\n');
        let _ = writeln!(out, "{}", style.bold(&r.route));
        if r.steps.is_empty() {
            let _ = writeln!(out, "{}none", label("rollout"));
        } else {
            let steps: Vec<String> = r
                .steps
                .iter()
                .map(|(step, replicas)| format!("step {}: {}", step + 1, replicas_text(replicas)))
                .collect();
            let text = format!("{}{}", label("rollout"), steps.join("; "));
            if r.drift {
                let _ = writeln!(out, "{}", style.red(&format!("{text}  DRIFT")));
            } else {
                let _ = writeln!(out, "{text}");
            }
            let phases: Vec<String> = r
                .rollout_status
                .iter()
                .map(|(p, replicas)| format!("{p} ×{}", replicas.len()))
                .collect();
            let _ = writeln!(out, "{}{}", label("status"), phases.join(", "));
        }
        if r.breakers.is_empty() {
            let _ = writeln!(out, "{}{}", label("breakers"), style.green("all closed"));
        }
        for (i, b) in r.breakers.iter().enumerate() {
            let head = if i == 0 {
                label("breakers")
            } else {
                MORE.to_string()
            };
            let text = format!(
                "{head}{} {} on {} of {}",
                b.backend,
                b.state,
                replicas_text(&b.replicas),
                f.replicas.len()
            );
            let _ = writeln!(
                out,
                "{}",
                if b.state == "open" {
                    style.red(&text)
                } else {
                    style.yellow(&text)
                }
            );
        }
        if r.kills.is_empty() {
            let _ = writeln!(out, "{}none", label("kills"));
        }
        for (i, (source, replicas)) in r.kills.iter().enumerate() {
            let head = if i == 0 {
                label("kills")
            } else {
                MORE.to_string()
            };
            let _ = writeln!(
                out,
                "{}",
                style.red(&format!("{head}{source}: {}", replicas_text(replicas)))
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_percents_read_like_a_person_writes_them() {
        assert_eq!(span(0), "0s");
        assert_eq!(span(28_001), "29s");
        assert_eq!(span(245_000), "4m05s");
        assert_eq!(span(7_380_000), "2h03m");
        assert_eq!(pct(10.0), "10 %");
        assert_eq!(pct(12.5), "12.50 %");
        assert_eq!(clock("2026-12-06T16:40:28.123Z"), "16:40:28Z");
        assert_eq!(base_url("127.0.0.1:9901/"), "http://127.0.0.1:9901");
        assert_eq!(base_url("https://a:1"), "https://a:1");
    }

    #[test]
    fn no_colour_means_no_escape_codes() {
        let plain = Style { color: false };
        assert_eq!(plain.red("x"), "x");
        assert!(Style { color: true }.red("x").contains("\x1b["));
    }
}
