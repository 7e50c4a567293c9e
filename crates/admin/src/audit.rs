//! The audit log (docs/audit.md): `state_dir/audit.jsonl`, append-only JSON lines joined by
//! a SHA-256 hash chain, so that who did what, when and why can be shown later and any
//! edited, removed or reordered line is found by [`verify`].
//!
//! An entry E is compact JSON with members in the order `seq, ts, actor, action, route?,
//! reason?, detail, prev_hash`; H is the lowercase hex SHA-256 of E's bytes; the line is E
//! with its final `}` replaced by `,"hash":"H"}`, then `\n`. One writer ([`AuditLog`], a
//! mutex around the file) appends and fsyncs each line before returning, so concurrent
//! callers in one process never interleave or break the chain.
//!
//! A crash can tear the final line (a prefix without its newline). On open the writer reports
//! it, ends it with a newline and writes an `audit.torn_line` entry naming its line number,
//! chained to the last complete entry; [`verify`] accepts a torn line only when exactly that
//! acknowledgement follows it, so garbage inserted by hand is still found.

use rampart_core::clock::Clock;
use rampart_core::config::sha256_hex;
use serde::Serialize;
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Name of the audit log inside `state_dir`.
pub const AUDIT_FILE: &str = "audit.jsonl";

/// `prev_hash` of the first entry.
pub const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Action of the entry the writer adds after a torn final line it found on open.
pub const TORN_LINE_ACTION: &str = "audit.torn_line";

/// `t` as RFC 3339 UTC with milliseconds, the audit log's `ts` format (also used for the
/// times the admin API shows, so they read alike).
pub fn rfc3339_millis(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Length of `,"hash":"` + 64 hex digits + `"}`: the suffix every line ends with.
const HASH_SUFFIX_LEN: usize = 9 + 64 + 2;

/// Why the audit log could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The file could not be opened, read, written or synced.
    #[error("audit log {path}: {source}")]
    Io {
        /// The audit log's path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An entry could not be encoded as JSON (cannot happen with well-formed values).
    #[error("audit entry could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
    /// The writer's lock was poisoned by a panic in another thread.
    #[error("audit log writer lock poisoned")]
    Poisoned,
}

/// What a caller records: the writer adds `seq`, `ts`, `prev_hash` and `hash`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEntry {
    /// Who: a token's name, `anonymous`, or `system` for Rampart's own actions.
    pub actor: String,
    /// What, e.g. `route.kill`, `config.applied`, `breaker.open`.
    pub action: String,
    /// The route concerned, where one is.
    pub route: Option<String>,
    /// The operator's reason, where one was given.
    pub reason: Option<String>,
    /// Anything else worth keeping (an object).
    pub detail: Value,
}

impl NewEntry {
    /// An entry by `actor` doing `action`, with `detail` and no route or reason.
    pub fn new(actor: impl Into<String>, action: impl Into<String>, detail: Value) -> NewEntry {
        NewEntry {
            actor: actor.into(),
            action: action.into(),
            route: None,
            reason: None,
            detail,
        }
    }

    /// The same entry about `route`.
    pub fn route(mut self, route: impl Into<String>) -> NewEntry {
        self.route = Some(route.into());
        self
    }

    /// The same entry with the operator's `reason`.
    pub fn reason(mut self, reason: impl Into<String>) -> NewEntry {
        self.reason = Some(reason.into());
        self
    }
}

/// E as serialized: the struct's field order is the member order docs/audit.md fixes.
#[derive(Serialize)]
struct EntryBody<'a> {
    seq: u64,
    ts: &'a str,
    actor: &'a str,
    action: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    detail: &'a Value,
    prev_hash: &'a str,
}

/// One entry as written: its sequence number, hash and whole line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Its `seq`.
    pub seq: u64,
    /// Its hash H.
    pub hash: String,
    /// The line written, without the trailing newline.
    pub line: String,
}

/// Encodes `entry` as line number `seq` after `prev_hash` at `ts`: returns (H, line without
/// `\n`). Public so the format can be checked against the verification vector (docs/audit.md#verification-vector) byte for byte.
pub fn encode_line(
    seq: u64,
    ts: &str,
    entry: &NewEntry,
    prev_hash: &str,
) -> Result<(String, String), AuditError> {
    let body = EntryBody {
        seq,
        ts,
        actor: &entry.actor,
        action: &entry.action,
        route: entry.route.as_deref(),
        reason: entry.reason.as_deref(),
        detail: &entry.detail,
        prev_hash,
    };
    let e = serde_json::to_string(&body)?;
    let hash = sha256_hex(e.as_bytes());
    // E always ends with the `}` of the object serde_json just wrote.
    let head = e.strip_suffix('}').unwrap_or(&e);
    let line = format!("{head},\"hash\":\"{hash}\"}}");
    Ok((hash, line))
}

/// The checked content of one line: what the chain needs.
#[derive(Debug, Clone)]
struct ParsedLine {
    seq: u64,
    prev_hash: String,
    hash: String,
    action: String,
    torn_line: Option<u64>,
}

/// Why a line is not a valid entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LineFault {
    /// Not of the shape `{...,"hash":"<64 hex>"}` or E is not a JSON object with `seq`
    /// and `prev_hash`: torn by a crash, or garbled by hand.
    Unreadable(String),
    /// Readable, but its hash is not the SHA-256 of E: edited.
    HashMismatch,
}

fn is_hex64(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks one line (without its newline) against its own hash.
fn parse_line(line: &[u8]) -> Result<ParsedLine, LineFault> {
    let text =
        std::str::from_utf8(line).map_err(|_| LineFault::Unreadable("not UTF-8".to_string()))?;
    if text.len() < HASH_SUFFIX_LEN || !text.is_char_boundary(text.len() - HASH_SUFFIX_LEN) {
        return Err(LineFault::Unreadable(
            "too short to end with a hash".to_string(),
        ));
    }
    let (head, suffix) = text.split_at(text.len() - HASH_SUFFIX_LEN);
    let hash = suffix
        .strip_prefix(",\"hash\":\"")
        .and_then(|s| s.strip_suffix("\"}"))
        .filter(|h| is_hex64(h))
        .ok_or_else(|| {
            LineFault::Unreadable("does not end with ,\"hash\":\"<64 hex>\"}".to_string())
        })?;
    let e = format!("{head}}}");
    let value: Value = serde_json::from_str(&e)
        .map_err(|err| LineFault::Unreadable(format!("not a JSON object: {err}")))?;
    let seq = value
        .get("seq")
        .and_then(Value::as_u64)
        .ok_or_else(|| LineFault::Unreadable("no numeric seq".to_string()))?;
    let prev_hash = value
        .get("prev_hash")
        .and_then(Value::as_str)
        .filter(|h| is_hex64(h))
        .ok_or_else(|| LineFault::Unreadable("no prev_hash of 64 hex digits".to_string()))?
        .to_string();
    if sha256_hex(e.as_bytes()) != hash {
        return Err(LineFault::HashMismatch);
    }
    let action = value
        .get("action")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let torn_line = value
        .get("detail")
        .and_then(|d| d.get("torn_line"))
        .and_then(Value::as_u64);
    Ok(ParsedLine {
        seq,
        prev_hash,
        hash: hash.to_string(),
        action,
        torn_line,
    })
}

/// Where the chain stands: what the next entry continues from.
#[derive(Debug, Clone)]
struct ChainHead {
    seq: u64,
    hash: String,
}

impl ChainHead {
    fn start() -> ChainHead {
        ChainHead {
            seq: 0,
            hash: ZERO_HASH.to_string(),
        }
    }
}

struct Writer {
    file: File,
    head: ChainHead,
    /// Newline-terminated lines in the file.
    lines: u64,
    /// A torn line (its number) to acknowledge before the next entry.
    torn: Option<u64>,
}

/// The one writer of an audit log file. Share it in an `Arc`; [`AuditLog::append`] blocks
/// on a write and an fsync, so async callers run it on a blocking thread.
pub struct AuditLog {
    path: PathBuf,
    clock: Arc<dyn Clock>,
    writer: Mutex<Writer>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .finish()
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl AuditLog {
    /// Opens (or creates, mode 0600) `state_dir/audit.jsonl` and continues its chain: the
    /// last complete valid entry gives `seq` and `prev_hash`. A torn final line is reported
    /// (warn) and acknowledged by an `audit.torn_line` entry right away.
    pub fn open_in(state_dir: &Path, clock: Arc<dyn Clock>) -> Result<AuditLog, AuditError> {
        std::fs::create_dir_all(state_dir).map_err(io_error(state_dir))?;
        AuditLog::open(&state_dir.join(AUDIT_FILE), clock)
    }

    /// Opens (or creates) the audit log at `path`; see [`AuditLog::open_in`].
    pub fn open(path: &Path, clock: Arc<dyn Clock>) -> Result<AuditLog, AuditError> {
        use std::os::unix::fs::OpenOptionsExt;
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(io_error(path))?;
        if !existed {
            // The new file's directory entry must survive a crash too.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                if let Ok(d) = File::open(dir) {
                    let _ = d.sync_all();
                }
            }
        }
        let scan = scan(&file).map_err(io_error(path))?;
        if let Some(bad) = scan.bad_last_line {
            tracing::error!(
                file = %path.display(),
                line = bad,
                "the audit log's last line is not a valid entry (edited by hand?); appending after the last valid entry; `rampart audit verify` will name it"
            );
        }
        let torn = scan.torn;
        if let Some(n) = torn {
            tracing::warn!(
                file = %path.display(),
                line = n,
                "the audit log's final line is torn (a crash during a write); starting a new line after it"
            );
        }
        let log = AuditLog {
            path: path.to_path_buf(),
            clock,
            writer: Mutex::new(Writer {
                file,
                head: scan.head,
                lines: scan.lines,
                torn,
            }),
        };
        if torn.is_some() {
            log.with_writer(|_| Ok(()))?;
        }
        Ok(log)
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry, fsyncs it, and returns it as written. Blocks; callers on an async
    /// runtime use `spawn_blocking`.
    pub fn append(&self, entry: &NewEntry) -> Result<Written, AuditError> {
        let ts = humantime::format_rfc3339_millis(self.clock.wall()).to_string();
        self.with_writer(|w| write_entry(w, &self.path, &ts, entry))
    }

    /// Runs `f` under the writer lock after acknowledging a pending torn line.
    fn with_writer<T>(
        &self,
        f: impl FnOnce(&mut Writer) -> Result<T, AuditError>,
    ) -> Result<T, AuditError> {
        let mut w = self.writer.lock().map_err(|_| AuditError::Poisoned)?;
        if let Some(torn) = w.torn {
            let ts = humantime::format_rfc3339_millis(self.clock.wall()).to_string();
            // End the torn line so the acknowledgement starts a line of its own.
            w.file.write_all(b"\n").map_err(io_error(&self.path))?;
            w.lines += 1;
            w.torn = None;
            let ack = NewEntry::new(
                "system",
                TORN_LINE_ACTION,
                serde_json::json!({ "torn_line": torn }),
            );
            write_entry(&mut w, &self.path, &ts, &ack)?;
        }
        f(&mut w)
    }

    /// The last `limit` lines of the log (valid or not), oldest first, each parsed as JSON
    /// where it parses.
    pub fn tail(&self, limit: usize) -> Result<Vec<Value>, AuditError> {
        let file = File::open(&self.path).map_err(io_error(&self.path))?;
        let lines = tail_lines(&file, limit).map_err(io_error(&self.path))?;
        Ok(lines
            .into_iter()
            .map(|line| {
                serde_json::from_slice(&line).unwrap_or_else(
                    |_| serde_json::json!({ "unreadable": String::from_utf8_lossy(&line) }),
                )
            })
            .collect())
    }
}

fn write_entry(
    w: &mut Writer,
    path: &Path,
    ts: &str,
    entry: &NewEntry,
) -> Result<Written, AuditError> {
    let seq = w.head.seq + 1;
    let (hash, line) = encode_line(seq, ts, entry, &w.head.hash)?;
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    let before = w.file.metadata().map(|m| m.len()).ok();
    let written = w.file.write_all(&bytes).and_then(|()| w.file.sync_data());
    if let Err(e) = written {
        // Take a partial line back so the next entry does not continue it; if even that
        // fails, the next entry acknowledges it as torn.
        let rolled_back = before.is_some_and(|len| w.file.set_len(len).is_ok());
        if !rolled_back {
            w.torn = Some(w.lines + 1);
        }
        return Err(AuditError::Io {
            path: path.display().to_string(),
            source: e,
        });
    }
    w.lines += 1;
    w.head = ChainHead {
        seq,
        hash: hash.clone(),
    };
    Ok(Written { seq, hash, line })
}

/// What opening found in an existing file.
struct Scan {
    head: ChainHead,
    lines: u64,
    /// Line number of an unterminated final segment.
    torn: Option<u64>,
    /// Line number of a terminated last line that is not a valid entry.
    bad_last_line: Option<u64>,
}

fn scan(file: &File) -> std::io::Result<Scan> {
    let mut reader = BufReader::new(file);
    reader.seek(SeekFrom::Start(0))?;
    let mut head = ChainHead::start();
    let mut lines = 0u64;
    let mut torn = None;
    let mut bad_last_line = None;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        if buf.last() != Some(&b'\n') {
            torn = Some(lines + 1);
            break;
        }
        lines += 1;
        buf.pop();
        match parse_line(&buf) {
            Ok(p) => {
                head = ChainHead {
                    seq: p.seq,
                    hash: p.hash,
                };
                bad_last_line = None;
            }
            Err(_) => bad_last_line = Some(lines),
        }
    }
    Ok(Scan {
        head,
        lines,
        torn,
        bad_last_line,
    })
}

/// The last `limit` newline-terminated lines of `file`, read backwards in blocks so a long
/// log is not read whole.
fn tail_lines(file: &File, limit: usize) -> std::io::Result<Vec<Vec<u8>>> {
    const BLOCK: u64 = 64 * 1024;
    let len = file.metadata()?.len();
    let mut reader = file;
    let mut end = len;
    let mut data: Vec<u8> = Vec::new();
    // Enough blocks to hold `limit + 1` newlines (the +1 bounds the first line we keep).
    while end > 0 && data.iter().filter(|b| **b == b'\n').count() <= limit {
        let start = end.saturating_sub(BLOCK);
        let mut block = vec![0u8; usize::try_from(end - start).unwrap_or(0)];
        reader.seek(SeekFrom::Start(start))?;
        reader.read_exact(&mut block)?;
        block.extend_from_slice(&data);
        data = block;
        end = start;
    }
    // Drop an unterminated final segment (torn, or being written).
    if let Some(last_newline) = data.iter().rposition(|b| *b == b'\n') {
        data.truncate(last_newline);
    } else {
        return Ok(Vec::new());
    }
    let mut lines: Vec<Vec<u8>> = data.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
    if end > 0 && !lines.is_empty() {
        // The first piece may be the end of a line that started before what was read.
        lines.remove(0);
    }
    let skip = lines.len().saturating_sub(limit);
    Ok(lines.into_iter().skip(skip).collect())
}

/// What a successful verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Valid entries in the chain.
    pub entries: u64,
    /// Lines in the file (including torn ones).
    pub lines: u64,
    /// Hash of the last entry (64 zeros for an empty log): keep it elsewhere and pass it as
    /// `--head` later to find lines cut from the end.
    pub last_hash: String,
    /// Torn lines (crashes) that the writer acknowledged with an `audit.torn_line` entry.
    pub torn_acknowledged: Vec<u64>,
}

/// Why verification failed; `line` is always the first bad line's number (1-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The file could not be read.
    #[error("cannot read {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// The line's hash is not the SHA-256 of its entry: it was edited.
    #[error("line {line}: hash mismatch: the line was edited")]
    Edited {
        /// The line.
        line: u64,
    },
    /// The line does not follow the one before it (seq or prev_hash): a line before it was
    /// removed or the lines were reordered.
    #[error("line {line}: chain broken: expected seq {expected_seq} after hash {expected_prev}, found seq {found_seq} after {found_prev} (a line was removed, inserted or reordered)")]
    Broken {
        /// The line.
        line: u64,
        /// The seq it should have.
        expected_seq: u64,
        /// The prev_hash it should have.
        expected_prev: String,
        /// The seq it has.
        found_seq: u64,
        /// The prev_hash it has.
        found_prev: String,
    },
    /// The line is not an entry at all and no writer acknowledged it as torn.
    #[error("line {line}: not a valid audit entry ({why})")]
    Unreadable {
        /// The line.
        line: u64,
        /// What is wrong with it.
        why: String,
    },
    /// The final line is torn: a write was cut short, e.g. by a crash. The lines before it
    /// verify; the writer will acknowledge it when it next opens the log.
    #[error("line {line}: torn final line (an incomplete write, e.g. a crash); the {entries} entries before it verify")]
    TornFinalLine {
        /// The line.
        line: u64,
        /// Entries that verify before it.
        entries: u64,
    },
    /// `--head` was given but no entry has that hash: lines were cut from the end (or the
    /// hash belongs to another log).
    #[error("line {line}: missing: no entry has the head hash {head}; the chain ends at line {} (lines were cut from the end)", .line - 1)]
    HeadNotFound {
        /// The line after the last one present.
        line: u64,
        /// The hash looked for.
        head: String,
    },
}

impl VerifyError {
    /// The first bad line's number, when there is one.
    pub fn line(&self) -> Option<u64> {
        match self {
            VerifyError::Read { .. } => None,
            VerifyError::Edited { line }
            | VerifyError::Broken { line, .. }
            | VerifyError::Unreadable { line, .. }
            | VerifyError::TornFinalLine { line, .. }
            | VerifyError::HeadNotFound { line, .. } => Some(*line),
        }
    }
}

/// Verifies the audit log at `path` (docs/audit.md): every line's hash, `seq` and
/// `prev_hash`; with `head`, also that some entry has that hash (lines cut from the end).
pub fn verify(path: &Path, head: Option<&str>) -> Result<VerifyReport, VerifyError> {
    let bytes = std::fs::read(path).map_err(|e| VerifyError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    verify_bytes(&bytes, head)
}

/// [`verify`] over the file's bytes.
pub fn verify_bytes(bytes: &[u8], head: Option<&str>) -> Result<VerifyReport, VerifyError> {
    let head = head.map(|h| h.trim().to_ascii_lowercase());
    let mut chain = ChainHead::start();
    let mut entries = 0u64;
    let mut head_found = head.as_deref() == Some(ZERO_HASH);
    let mut pending_torn: Option<(u64, String)> = None;
    let mut torn_acknowledged = Vec::new();
    let mut segments: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    // A file ending in a newline splits into a last, empty piece: not a line.
    let terminated = bytes.last().is_none_or(|b| *b == b'\n');
    if terminated {
        segments.pop();
    }
    let count = segments.len() as u64;
    for (i, segment) in segments.iter().enumerate() {
        let line = i as u64 + 1;
        let is_last = line == count;
        let parsed = match parse_line(segment) {
            Ok(p) => p,
            Err(LineFault::HashMismatch) => return Err(VerifyError::Edited { line }),
            Err(LineFault::Unreadable(why)) => {
                if is_last && !terminated {
                    return Err(VerifyError::TornFinalLine { line, entries });
                }
                if let Some((first, why)) = pending_torn {
                    return Err(VerifyError::Unreadable { line: first, why });
                }
                pending_torn = Some((line, why));
                continue;
            }
        };
        if let Some((torn, why)) = pending_torn.take() {
            // Only the writer's acknowledgement, naming this torn line, may follow it.
            if parsed.action != TORN_LINE_ACTION || parsed.torn_line != Some(torn) {
                return Err(VerifyError::Unreadable { line: torn, why });
            }
            torn_acknowledged.push(torn);
        }
        if parsed.seq != chain.seq + 1 || parsed.prev_hash != chain.hash {
            return Err(VerifyError::Broken {
                line,
                expected_seq: chain.seq + 1,
                expected_prev: chain.hash,
                found_seq: parsed.seq,
                found_prev: parsed.prev_hash,
            });
        }
        if head.as_deref() == Some(parsed.hash.as_str()) {
            head_found = true;
        }
        entries += 1;
        chain = ChainHead {
            seq: parsed.seq,
            hash: parsed.hash,
        };
    }
    if let Some((line, why)) = pending_torn {
        return Err(VerifyError::Unreadable { line, why });
    }
    if let (Some(h), false) = (head, head_found) {
        return Err(VerifyError::HeadNotFound {
            line: count + 1,
            head: h,
        });
    }
    Ok(VerifyReport {
        entries,
        lines: count,
        last_hash: chain.hash,
        torn_acknowledged,
    })
}

/// Writes an audit entry to the process log as well (docs/audit.md: every entry is also
/// logged), under the `rampart::audit` target.
pub fn log_entry(entry: &NewEntry) {
    tracing::info!(
        target: "rampart::audit",
        actor = %entry.actor,
        action = %entry.action,
        route = entry.route.as_deref(),
        reason = ?entry.reason,
        detail = %entry.detail,
        "audit"
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use rampart_core::clock::ManualClock;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    const VERIFICATION_VECTOR: &str = r#"{"seq":1,"ts":"2026-03-01T10:00:00.000Z","actor":"system","action":"config.applied","detail":{"sha256":"09bfcc6a14b83e2192b8673677725c84883ee9cd0c70e45c9ec09daa8f2b2847"},"prev_hash":"0000000000000000000000000000000000000000000000000000000000000000","hash":"25e923b60c82c0bc79e6812ed4220c149603d3a0467aa7a167445e7f276d762b"}"#;

    fn vector_time() -> SystemTime {
        // 2026-03-01T10:00:00Z
        UNIX_EPOCH + Duration::from_secs(1_772_359_200)
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "rampart-audit-{tag}-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn entry(n: u32) -> NewEntry {
        NewEntry::new(
            "alice",
            "route.kill",
            serde_json::json!({ "status": 200, "n": n }),
        )
        .route("checkout")
        .reason("INC-1")
    }

    #[test]
    fn verification_vector_line_verifies() {
        let report = verify_bytes(format!("{VERIFICATION_VECTOR}\n").as_bytes(), None).unwrap();
        assert_eq!(report.entries, 1);
        assert_eq!(
            report.last_hash,
            "25e923b60c82c0bc79e6812ed4220c149603d3a0467aa7a167445e7f276d762b"
        );
    }

    #[test]
    fn writer_encodes_the_verification_vector_byte_for_byte() {
        let ts = humantime::format_rfc3339_millis(vector_time()).to_string();
        assert_eq!(ts, "2026-03-01T10:00:00.000Z");
        let e = NewEntry::new(
            "system",
            "config.applied",
            serde_json::json!({"sha256": "09bfcc6a14b83e2192b8673677725c84883ee9cd0c70e45c9ec09daa8f2b2847"}),
        );
        let (hash, line) = encode_line(1, &ts, &e, ZERO_HASH).unwrap();
        assert_eq!(line, VERIFICATION_VECTOR);
        assert_eq!(
            hash,
            "25e923b60c82c0bc79e6812ed4220c149603d3a0467aa7a167445e7f276d762b"
        );
    }

    #[test]
    fn route_and_reason_sit_between_action_and_detail() {
        let (_, line) = encode_line(3, "t", &entry(1), ZERO_HASH).unwrap();
        let order = [
            "\"seq\"",
            "\"ts\"",
            "\"actor\"",
            "\"action\"",
            "\"route\"",
            "\"reason\"",
            "\"detail\"",
            "\"prev_hash\"",
            "\"hash\"",
        ];
        let positions: Vec<usize> = order.iter().map(|k| line.find(k).unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{line}");
    }

    fn write_log(dir: &Path, n: u32) -> PathBuf {
        let clock = Arc::new(ManualClock::new(vector_time()));
        let log = AuditLog::open_in(dir, clock).unwrap();
        for i in 0..n {
            log.append(&entry(i)).unwrap();
        }
        log.path().to_path_buf()
    }

    #[test]
    fn appended_entries_chain_and_verify() {
        let dir = temp_dir("chain");
        let path = write_log(&dir, 5);
        let report = verify(&path, None).unwrap();
        assert_eq!(report.entries, 5);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with('\n'));
        assert!(text.starts_with("{\"seq\":1,"));
    }

    #[test]
    fn reopening_continues_seq_and_prev_hash() {
        let dir = temp_dir("reopen");
        let path = write_log(&dir, 2);
        write_log(&dir, 3);
        let report = verify(&path, None).unwrap();
        assert_eq!(report.entries, 5);
    }

    fn lines_of(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn rewrite(path: &Path, lines: &[String]) {
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn an_edited_line_is_named() {
        let dir = temp_dir("edit");
        let path = write_log(&dir, 4);
        let mut lines = lines_of(&path);
        lines[2] = lines[2].replace("INC-1", "INC-2");
        rewrite(&path, &lines);
        assert_eq!(verify(&path, None), Err(VerifyError::Edited { line: 3 }));
    }

    #[test]
    fn a_removed_line_is_found_at_the_line_after_the_gap() {
        let dir = temp_dir("remove");
        let path = write_log(&dir, 4);
        let mut lines = lines_of(&path);
        lines.remove(1);
        rewrite(&path, &lines);
        let err = verify(&path, None).unwrap_err();
        assert_eq!(err.line(), Some(2), "{err}");
        assert!(matches!(err, VerifyError::Broken { .. }));
    }

    #[test]
    fn reordered_lines_are_found() {
        let dir = temp_dir("reorder");
        let path = write_log(&dir, 4);
        let mut lines = lines_of(&path);
        lines.swap(1, 2);
        rewrite(&path, &lines);
        assert_eq!(verify(&path, None).unwrap_err().line(), Some(2));
    }

    #[test]
    fn lines_cut_from_the_end_are_found_only_with_head() {
        let dir = temp_dir("cut");
        let path = write_log(&dir, 4);
        let full = verify(&path, None).unwrap();
        let mut lines = lines_of(&path);
        lines.truncate(3);
        rewrite(&path, &lines);
        assert!(verify(&path, None).is_ok());
        let err = verify(&path, Some(&full.last_hash)).unwrap_err();
        assert_eq!(err.line(), Some(4), "{err}");
        // A head that is in the chain passes.
        let third = verify(&path, None).unwrap().last_hash;
        assert!(verify(&path, Some(&third)).is_ok());
    }

    #[test]
    fn a_torn_final_line_is_reported_and_the_writer_starts_a_new_line_after_it() {
        let dir = temp_dir("torn");
        let path = write_log(&dir, 3);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"seq\":4,\"ts\":\"2026-03-01T10:0");
        std::fs::write(&path, &text).unwrap();
        assert_eq!(
            verify(&path, None),
            Err(VerifyError::TornFinalLine {
                line: 4,
                entries: 3
            })
        );
        // The writer acknowledges it and carries on; the log verifies again.
        write_log(&dir, 2);
        let report = verify(&path, None).unwrap();
        assert_eq!(report.torn_acknowledged, vec![4]);
        assert_eq!(report.entries, 6);
        let lines = lines_of(&path);
        assert!(lines[4].contains(TORN_LINE_ACTION), "{}", lines[4]);
        assert!(lines[4].starts_with("{\"seq\":4,"));
    }

    #[test]
    fn an_inserted_garbage_line_is_not_taken_for_a_torn_one() {
        let dir = temp_dir("garbage");
        let path = write_log(&dir, 3);
        let mut lines = lines_of(&path);
        lines.insert(1, "{\"seq\":2,\"note\":\"nothing to see\"}".to_string());
        rewrite(&path, &lines);
        let err = verify(&path, None).unwrap_err();
        assert_eq!(err.line(), Some(2), "{err}");
    }

    #[test]
    fn concurrent_appends_never_interleave_or_break_the_chain() {
        let dir = temp_dir("concurrent");
        let clock = Arc::new(ManualClock::new(vector_time()));
        let log = Arc::new(AuditLog::open_in(&dir, clock).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    for i in 0..25 {
                        log.append(&entry(t * 100 + i)).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let report = verify(log.path(), None).unwrap();
        assert_eq!(report.entries, 200);
    }

    #[test]
    fn tail_returns_the_last_entries_oldest_first() {
        let dir = temp_dir("tail");
        let clock = Arc::new(ManualClock::new(vector_time()));
        let log = AuditLog::open_in(&dir, clock).unwrap();
        for i in 0..10 {
            log.append(&entry(i)).unwrap();
        }
        let tail = log.tail(3).unwrap();
        let seqs: Vec<u64> = tail.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, vec![8, 9, 10]);
        assert_eq!(log.tail(100).unwrap().len(), 10);
        assert!(log.tail(0).unwrap().is_empty());
    }

    #[test]
    fn an_empty_log_verifies() {
        let report = verify_bytes(b"", None).unwrap();
        assert_eq!(report.entries, 0);
        assert_eq!(report.last_hash, ZERO_HASH);
    }
}
