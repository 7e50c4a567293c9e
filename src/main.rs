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

fn main() -> ExitCode {
    let cli = cli::parse();
    logging::init();
    rampart_proxy::tls::install_crypto_provider();
    commands::dispatch(cli)
}
