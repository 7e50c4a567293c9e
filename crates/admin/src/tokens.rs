//! Admin bearer tokens (docs/admin.md): the `admin_tokens_file` lists `{name, role,
//! sha256}`; a presented token is hashed and compared with every entry in constant time, so
//! neither the tokens nor which entry matched leak through timing, and the file holds no
//! secret worth stealing.
//!
//! The file is re-read whenever its metadata changes (checked on every use: one `stat`), and
//! refused when group- or world-writable, because whoever can write it can mint an admin.
//! A refused or invalid file means no token is accepted (fail closed) until it is fixed.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

/// Shortest token accepted when presented: docs/admin.md#tokens-and-roles asks for at least 32 random bytes, and a
/// shorter one is refused even if its hash is listed, so a weak token cannot be used.
pub const MIN_TOKEN_LEN: usize = 32;

/// What a token may do; ordered so that a higher role includes the lower ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// GET endpoints.
    Viewer,
    /// + kill, unkill, pause, resume.
    Operator,
    /// + config rollback.
    Admin,
}

impl Role {
    /// The role's name as written in the tokens file.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// The caller a valid token identifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The entry's name: the audit log's `actor`.
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// Why a tokens file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is writable by its group or by everyone.
    #[error("{path}: refused: the file is group- or world-writable (mode {mode:o}); whoever can write it can make an admin token; run `chmod 600 {path}`")]
    Writable {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The YAML does not parse as a list of `{name, role, sha256}`.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    role: Role,
    sha256: String,
}

#[derive(Debug, Clone)]
struct TokenEntry {
    name: String,
    role: Role,
    digest: [u8; 32],
}

fn decode_hex32(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let nibble = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = nibble(*pair.first()?)?;
        let lo = nibble(*pair.get(1)?)?;
        *out.get_mut(i)? = (hi << 4) | lo;
    }
    Some(out)
}

/// Parses a tokens file's text: a YAML list of `{name, role, sha256}`.
fn parse(path: &str, text: &str) -> Result<Vec<TokenEntry>, TokensError> {
    let invalid = |message: String| TokensError::Invalid {
        path: path.to_string(),
        message,
    };
    let raw: Vec<RawToken> = serde_saphyr::from_str(text).map_err(|e| {
        invalid(format!(
            "expected a YAML list of {{name, role, sha256}}: {e}"
        ))
    })?;
    let mut entries: Vec<TokenEntry> = Vec::with_capacity(raw.len());
    for (i, t) in raw.into_iter().enumerate() {
        if t.name.trim().is_empty() {
            return Err(invalid(format!("[{i}].name: empty")));
        }
        let digest = decode_hex32(t.sha256.trim()).ok_or_else(|| {
            invalid(format!(
                "[{i}].sha256: expected 64 hex digits (the SHA-256 of the token), got {:?}",
                t.sha256
            ))
        })?;
        if entries.iter().any(|e| e.name == t.name) {
            return Err(invalid(format!("[{i}].name: duplicate name {:?}", t.name)));
        }
        if entries.iter().any(|e| e.digest == digest) {
            return Err(invalid(format!(
                "[{i}].sha256: the same token is listed twice (also for another name)"
            )));
        }
        entries.push(TokenEntry {
            name: t.name,
            role: t.role,
            digest,
        });
    }
    Ok(entries)
}

/// Metadata that changes whenever the file is written, replaced or chmod-ed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mode: u32,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn stamp(meta: &std::fs::Metadata) -> FileStamp {
    use std::os::unix::fs::MetadataExt;
    FileStamp {
        dev: meta.dev(),
        ino: meta.ino(),
        len: meta.len(),
        mode: meta.mode(),
        mtime: (meta.mtime(), meta.mtime_nsec()),
        ctime: (meta.ctime(), meta.ctime_nsec()),
    }
}

struct Loaded {
    stamp: Option<FileStamp>,
    entries: Vec<TokenEntry>,
    /// The refusal in force, logged once per change of the file.
    error: Option<String>,
}

/// Outcome of checking a presented token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authn {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A token that matches no entry (or the file is refused).
    Unknown,
    /// A listed token shorter than [`MIN_TOKEN_LEN`]: refused; the entry should be replaced.
    TooShort(String),
    /// A listed token.
    Valid(Principal),
}

/// The tokens file, re-read on change.
pub struct TokenStore {
    path: Option<PathBuf>,
    loaded: Mutex<Loaded>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore")
            .field("path", &self.path)
            .finish()
    }
}

impl TokenStore {
    /// A store over `path`; `None` (no `admin_tokens_file`) accepts no token at all.
    pub fn new(path: Option<PathBuf>) -> TokenStore {
        let store = TokenStore {
            path,
            loaded: Mutex::new(Loaded {
                stamp: None,
                entries: Vec::new(),
                error: None,
            }),
        };
        if store.path.is_none() {
            tracing::warn!(
                "admin_listen is set without admin_tokens_file: every admin call answers 401"
            );
        }
        store.refresh();
        store
    }

    /// The file, if one is configured.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Re-reads the file if its metadata changed since the last look. Returns the number
    /// of entries in force.
    pub fn refresh(&self) -> usize {
        let Some(path) = &self.path else { return 0 };
        let Ok(mut loaded) = self.loaded.lock() else {
            return 0;
        };
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path);
        let now_stamp = meta.as_ref().ok().map(stamp);
        if loaded.stamp.is_some() && loaded.stamp == now_stamp {
            return loaded.entries.len();
        }
        let result = meta
            .map_err(|source| TokensError::Read {
                path: shown.clone(),
                source,
            })
            .and_then(|meta| {
                use std::os::unix::fs::PermissionsExt;
                let mode = meta.permissions().mode() & 0o7777;
                if mode & 0o022 != 0 {
                    return Err(TokensError::Writable {
                        path: shown.clone(),
                        mode,
                    });
                }
                let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
                    path: shown.clone(),
                    source,
                })?;
                parse(&shown, &text)
            });
        loaded.stamp = now_stamp;
        match result {
            Ok(entries) => {
                tracing::info!(file = %shown, tokens = entries.len(), "admin tokens loaded");
                loaded.entries = entries;
                loaded.error = None;
            }
            Err(e) => {
                let message = e.to_string();
                if loaded.error.as_deref() != Some(message.as_str()) {
                    tracing::error!(file = %shown, error = %message, "admin tokens file refused: no admin token is accepted until it is fixed");
                }
                loaded.entries = Vec::new();
                loaded.error = Some(message);
            }
        }
        loaded.entries.len()
    }

    /// Checks the value of an `Authorization` header (refreshing the file first).
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Authn {
        let Some(token) = authorization.and_then(bearer_token) else {
            return Authn::Missing;
        };
        self.refresh();
        let Ok(loaded) = self.loaded.lock() else {
            return Authn::Unknown;
        };
        let digest: [u8; 32] = Sha256::digest(token).into();
        // Every entry is compared, whatever matched before, in constant time.
        let mut found = Choice::from(0u8);
        let mut index = u32::MAX;
        for (i, entry) in loaded.entries.iter().enumerate() {
            let matches = digest.ct_eq(&entry.digest);
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            index.conditional_assign(&i, matches & !found);
            found |= matches;
        }
        if !bool::from(found) {
            return Authn::Unknown;
        }
        let Some(entry) = usize::try_from(index)
            .ok()
            .and_then(|i| loaded.entries.get(i))
        else {
            return Authn::Unknown;
        };
        if token.len() < MIN_TOKEN_LEN {
            tracing::warn!(token = %entry.name, min = MIN_TOKEN_LEN, "an admin token shorter than 32 bytes was presented and refused; replace it (head -c 32 /dev/urandom | base64)");
            return Authn::TooShort(entry.name.clone());
        }
        Authn::Valid(Principal {
            name: entry.name.clone(),
            role: entry.role,
        })
    }
}

/// The token of `Bearer TOKEN` (scheme case-insensitive, surrounding spaces ignored).
fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    let text = header.trim_ascii();
    let scheme = text.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = text.get(7..)?.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const ADMIN_TOKEN: &str = "admin-token-0123456789-0123456789-abcdef";
    const VIEWER_TOKEN: &str = "viewer-token-0123456789-0123456789-abcdef";

    fn hex(token: &str) -> String {
        rampart_core::config::sha256_hex(token.as_bytes())
    }

    fn file(tag: &str, text: &str, mode: u32) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "rampart-tokens-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens.yaml");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn tokens_yaml() -> String {
        format!(
            "- {{name: root, role: admin, sha256: {}}}\n- {{name: dash, role: viewer, sha256: {}}}\n",
            hex(ADMIN_TOKEN),
            hex(VIEWER_TOKEN)
        )
    }

    fn bearer(token: &str) -> Vec<u8> {
        format!("Bearer {token}").into_bytes()
    }

    #[test]
    fn a_listed_token_is_recognised_with_its_name_and_role() {
        let store = TokenStore::new(Some(file("ok", &tokens_yaml(), 0o600)));
        assert_eq!(
            store.authenticate(Some(&bearer(ADMIN_TOKEN))),
            Authn::Valid(Principal {
                name: "root".into(),
                role: Role::Admin
            })
        );
        assert_eq!(
            store.authenticate(Some(&bearer(VIEWER_TOKEN))),
            Authn::Valid(Principal {
                name: "dash".into(),
                role: Role::Viewer
            })
        );
        assert_eq!(
            store.authenticate(Some(b"bearer  admin-token-0123456789-0123456789-abcdef ")),
            Authn::Valid(Principal {
                name: "root".into(),
                role: Role::Admin
            })
        );
    }

    #[test]
    fn missing_malformed_and_unknown_tokens_are_refused() {
        let store = TokenStore::new(Some(file("unknown", &tokens_yaml(), 0o600)));
        assert_eq!(store.authenticate(None), Authn::Missing);
        assert_eq!(store.authenticate(Some(b"Basic abc")), Authn::Missing);
        assert_eq!(store.authenticate(Some(b"Bearer ")), Authn::Missing);
        assert_eq!(
            store.authenticate(Some(&bearer("not-a-listed-token-0123456789-0123456789"))),
            Authn::Unknown
        );
        // The hash itself is not a token.
        assert_eq!(
            store.authenticate(Some(&bearer(&hex(ADMIN_TOKEN)))),
            Authn::Unknown
        );
    }

    #[test]
    fn a_group_or_world_writable_file_is_refused() {
        for mode in [0o620, 0o602, 0o666] {
            let store = TokenStore::new(Some(file("writable", &tokens_yaml(), mode)));
            assert_eq!(
                store.authenticate(Some(&bearer(ADMIN_TOKEN))),
                Authn::Unknown,
                "mode {mode:o}"
            );
        }
        let store = TokenStore::new(Some(file("readable", &tokens_yaml(), 0o644)));
        assert!(matches!(
            store.authenticate(Some(&bearer(ADMIN_TOKEN))),
            Authn::Valid(_)
        ));
    }

    #[test]
    fn the_file_is_re_read_when_it_changes() {
        let path = file("reload", &tokens_yaml(), 0o600);
        let store = TokenStore::new(Some(path.clone()));
        assert!(matches!(
            store.authenticate(Some(&bearer(VIEWER_TOKEN))),
            Authn::Valid(_)
        ));
        // Revoke the viewer: same length of file is fine, the stamp includes ctime/inode.
        let text = format!(
            "- {{name: root, role: admin, sha256: {}}}\n",
            hex(ADMIN_TOKEN)
        );
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(
            store.authenticate(Some(&bearer(VIEWER_TOKEN))),
            Authn::Unknown
        );
        // Made writable later: refused as a whole.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(
            store.authenticate(Some(&bearer(ADMIN_TOKEN))),
            Authn::Unknown
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            store.authenticate(Some(&bearer(ADMIN_TOKEN))),
            Authn::Valid(_)
        ));
    }

    #[test]
    fn invalid_files_are_refused_as_a_whole() {
        let bad = [
            "- {name: a, role: root, sha256: 00}\n".to_string(),
            format!("- {{name: a, role: admin, sha256: {}}}\n", "zz".repeat(32)),
            format!(
                "- {{name: a, role: admin, sha256: {h}}}\n- {{name: b, role: viewer, sha256: {h}}}\n",
                h = hex(ADMIN_TOKEN)
            ),
            format!(
                "- {{name: a, role: admin, sha256: {}, extra: 1}}\n",
                hex(ADMIN_TOKEN)
            ),
        ];
        for text in bad {
            let path = file("invalid", &text, 0o600);
            let shown = path.display().to_string();
            assert!(parse(&shown, &text).is_err(), "{text}");
            let store = TokenStore::new(Some(path));
            assert_eq!(
                store.authenticate(Some(&bearer(ADMIN_TOKEN))),
                Authn::Unknown
            );
        }
    }

    #[test]
    fn a_listed_short_token_is_refused() {
        let text = format!(
            "- {{name: weak, role: admin, sha256: {}}}\n",
            hex("hunter2")
        );
        let store = TokenStore::new(Some(file("short", &text, 0o600)));
        assert_eq!(
            store.authenticate(Some(&bearer("hunter2"))),
            Authn::TooShort("weak".into())
        );
    }

    #[test]
    fn roles_are_ordered_viewer_operator_admin() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
    }
}
