//! The config: file format ([`raw`]), validation ([`validate`]) and model ([`Config`]).
//!
//! `text -> lenient::Tree (YAML nodes with positions) -> raw::RawConfig (serde, unknown
//! fields refused, every type error collected) -> validate -> Config`. Nothing routes by a
//! config that did not pass every check; a rejected file changes nothing, and every error
//! in it is reported at once.

pub mod error;
pub mod lenient;
mod model;
pub mod raw;
mod validate;
pub mod values;

pub use error::{ConfigError, ConfigErrors};
pub use model::*;
pub use validate::parse;
pub use values::{DurationValue, Percent};

use sha2::{Digest, Sha256};
use std::time::SystemTime;

/// Lowercase hex SHA-256 of `bytes`: the config's identity in metrics, status and audit.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for byte in digest.iter() {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl Config {
    /// Routes whose `expires` day has begun at `now` (00:00 UTC of that day).
    pub fn expired_routes(&self, now: SystemTime) -> Vec<&Route> {
        let today = crate::clock::days_since_epoch(now);
        self.routes
            .iter()
            .filter(|r| r.expires.is_some_and(|day| today >= day))
            .collect()
    }

    /// Human-readable warnings about a valid config at `now` (expired routes).
    pub fn warnings(&self, now: SystemTime) -> Vec<String> {
        self.expired_routes(now)
            .into_iter()
            .map(|r| {
                format!(
                    "route {:?} expired on {} (owner: {}): remove the flag or move its date",
                    r.name,
                    r.expires_text.as_deref().unwrap_or("?"),
                    r.owner.as_deref().unwrap_or("none")
                )
            })
            .collect()
    }
}
