//! The command line (docs/cli.md).

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Rampart: a sidecar reverse proxy for safe rollouts.
#[derive(Debug, Parser)]
#[command(name = "rampart", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Rampart's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve: proxy traffic, expose metrics and (if configured) the admin API.
    Run {
        /// Config file [default: $RAMPART_CONFIG, then /etc/rampart/rampart.yaml]
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
    },
    /// Validate a config without serving; prints `ok: N routes, M upstreams` and warnings.
    Check {
        /// Config file to check.
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
    },
    /// Show where an identity goes on a route, and why.
    Explain {
        /// Config file.
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
        /// Route name.
        #[arg(long)]
        route: String,
        /// The identity (user id, cookie value or client IP) to bucket.
        #[arg(long)]
        identity: String,
        /// Print the admin API's explain object as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The audit log (docs/audit.md).
    Audit {
        /// What to do with it.
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// A self-contained demo: embedded stable and canary upstreams, the proxy and traffic,
    /// a canary failure caught by the breaker, then a rollout promoted and one rolled back.
    Demo {
        /// How long the first act (split and breaker) runs, in seconds.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Where the full JSON logs go: `stderr`, or a file (default: a new file in the
        /// temporary directory, named at the end). The screen shows the table and events.
        #[arg(long, value_name = "stderr|FILE")]
        logs: Option<String>,
    },
    /// What an SRE looks at in an incident: one replica from its admin API (`--admin`), or
    /// the whole fleet from Prometheus (`--prometheus --selector`). See docs/status.md.
    #[command(group(clap::ArgGroup::new("source").required(true).args(["admin", "prometheus"])))]
    Status(StatusArgs),
    /// A tiny HTTP/1.1 upstream for demos and tests: answers every path with 200 naming its
    /// version, `/healthz` 200, and fails or slows down on demand (these flags, or at run time
    /// `POST /control?fail_rate=0.5&delay_ms=200`).
    DemoUpstream {
        /// Address to listen on (port 0: the OS picks; the address is printed on stdout).
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: std::net::SocketAddr,
        /// The version this upstream names in its `x-version` header and its body.
        #[arg(long = "version-label", default_value = "v1")]
        version_label: String,
        /// Share of requests answered 500, 0.0..1.0.
        #[arg(long, default_value = "0", value_parser = crate::demo_upstream::parse_fail_rate)]
        fail_rate: f64,
        /// Milliseconds to wait before every answer.
        #[arg(long, default_value = "0", value_parser = crate::demo_upstream::parse_delay_ms)]
        delay_ms: u64,
    },
    /// Inject the Rampart sidecar into Kubernetes manifests: YAML in (files or stdin), the
    /// same objects out on stdout, warnings and skips on stderr (docs/inject.md).
    Inject {
        /// The ConfigMap (key rampart.yaml) for pods without a rampart.dev/config annotation.
        #[arg(long, value_name = "NAME")]
        config: Option<String>,
        /// The cluster's Kubernetes version (MAJOR.MINOR); 1.29-1.31 get a plain container
        /// when a named port is taken over [default: the newest]
        #[arg(long = "kube-version", value_name = "X.Y", value_parser = parse_kube_version)]
        kube_version: Option<rampart_inject::KubeVersion>,
        /// The sidecar's image, unless a pod's rampart.dev/image annotation names one.
        #[arg(long, default_value = concat!("rampart:", env!("CARGO_PKG_VERSION")))]
        image: String,
        /// Manifests to read; `-` or none: stdin.
        #[arg(value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// The mutating admission webhook: HTTPS `POST /mutate` (AdmissionReview v1), `GET
    /// /healthz`, `/readyz`, `/metrics` (docs/inject.md#the-webhook).
    Injector {
        /// Address to serve HTTPS on.
        #[arg(long, default_value = "0.0.0.0:8443")]
        listen: std::net::SocketAddr,
        /// PEM certificate chain (re-read when it changes).
        #[arg(long = "tls-cert", value_name = "FILE")]
        tls_cert: PathBuf,
        /// PEM private key (re-read when it changes).
        #[arg(long = "tls-key", value_name = "FILE")]
        tls_key: PathBuf,
        /// The cluster's Kubernetes version (MAJOR.MINOR) [default: the newest]
        #[arg(long = "kube-version", value_name = "X.Y", value_parser = parse_kube_version)]
        kube_version: Option<rampart_inject::KubeVersion>,
        /// The sidecar's image, unless a pod's rampart.dev/image annotation names one.
        #[arg(long, default_value = concat!("rampart:", env!("CARGO_PKG_VERSION")))]
        image: String,
        /// The ConfigMap for pods without a rampart.dev/config annotation (default: none,
        /// such pods are admitted unchanged).
        #[arg(long, value_name = "NAME")]
        config: Option<String>,
    },
}

fn parse_kube_version(text: &str) -> Result<rampart_inject::KubeVersion, String> {
    rampart_inject::KubeVersion::parse(text)
        .ok_or_else(|| format!("{text:?}: expected MAJOR.MINOR, e.g. 1.30"))
}

/// `rampart status` arguments.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// One replica: its admin API's base URL (`http://127.0.0.1:9901`; https when the admin
    /// API listens off loopback).
    #[arg(long, value_name = "URL")]
    pub admin: Option<String>,
    /// A file holding the admin bearer token [default: $RAMPART_ADMIN_TOKEN].
    #[arg(
        long,
        value_name = "FILE",
        requires = "admin",
        conflicts_with = "prometheus"
    )]
    pub token_file: Option<PathBuf>,
    /// A PEM CA bundle to trust besides the system roots, for an https admin API or
    /// Prometheus with a private CA.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// The fleet: the base URL of the Prometheus that scrapes the replicas.
    #[arg(long, value_name = "URL", requires = "selector")]
    pub prometheus: Option<String>,
    /// With --prometheus: the label matchers that select the replicas, e.g. '{app="shop"}'.
    #[arg(
        long,
        value_name = "SEL",
        requires = "prometheus",
        conflicts_with = "admin"
    )]
    pub selector: Option<String>,
    /// Redraw every second until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// Print the data as JSON (one document a line with --watch).
    #[arg(long)]
    pub json: bool,
}

/// `rampart audit ...` commands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the audit log's hash chain: exit 0 intact, 1 naming the first bad line.
    Verify {
        /// The audit log (state_dir/audit.jsonl).
        file: PathBuf,
        /// A hash kept elsewhere (an earlier `verify` prints the last one): the chain must
        /// contain it, so lines cut from the end are found.
        #[arg(long, value_name = "HASH")]
        head: Option<String>,
    },
}

/// Parses the process's arguments; usage errors exit 2 (clap's convention; docs/cli.md#exit-codes).
pub fn parse() -> Cli {
    Cli::parse()
}
