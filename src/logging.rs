//! Logs to stderr: JSON lines by default, `RAMPART_LOG_FORMAT=pretty` for humans, level
//! from `RUST_LOG` (default `info`).
//!
//! A command that owns the terminal (`rampart demo`) sends them to a file instead with
//! [`to_file`], so the screen shows only what a person reads.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Where log lines go once a command has chosen a file; `None` is stderr.
static FILE: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// Installs the global subscriber.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let pretty =
        std::env::var("RAMPART_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("pretty"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Destination);
    if pretty {
        let _ = builder.try_init();
    } else {
        let _ = builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init();
    }
}

/// Sends every later log line to `path` (created or truncated) instead of stderr.
pub fn to_file(path: &Path) -> std::io::Result<()> {
    let file = std::fs::File::create(path)?;
    if let Ok(mut slot) = FILE.lock() {
        *slot = Some(file);
    }
    Ok(())
}

/// Flushes the log file, if one is set (before its path is shown to the user).
pub fn flush() {
    if let Ok(mut slot) = FILE.lock() {
        if let Some(file) = slot.as_mut() {
            let _ = file.flush();
        }
    }
}

/// The subscriber's writer: the chosen file, else stderr.
struct Destination;

impl<'a> MakeWriter<'a> for Destination {
    type Writer = Destination;

    fn make_writer(&'a self) -> Destination {
        Destination
    }
}

impl Write for Destination {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut slot) = FILE.lock() {
            if let Some(file) = slot.as_mut() {
                // One formatted event is one call: keep lines whole.
                file.write_all(buf)?;
                return Ok(buf.len());
            }
        }
        std::io::stderr().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if let Ok(mut slot) = FILE.lock() {
            if let Some(file) = slot.as_mut() {
                return file.flush();
            }
        }
        std::io::stderr().flush()
    }
}
