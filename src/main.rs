//! `rampart`: the sidecar's binary. Parses the command line (docs/cli.md) and hands each
//! command to its module; only this crate uses `anyhow` and talks to the terminal.

#![forbid(unsafe_code)]

mod cli;
mod commands;
mod demo;
mod demo_ramp;
mod demo_story;
mod demo_upstream;
mod inject_cmd;
mod injector;
mod logging;
mod status;

use std::process::ExitCode;

/// jemalloc instead of glibc's malloc, because it gives the memory of closed connections back
/// to the system: a background thread purges freed pages after about a second (the options
/// are compiled in, see `.cargo/config.toml`), where glibc keeps the heap resident at its
/// peak (docs/decisions.md).
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = cli::parse();
    logging::init();
    rampart_proxy::tls::install_crypto_provider();
    commands::dispatch(cli)
}
