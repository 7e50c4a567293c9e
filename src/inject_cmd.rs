//! `rampart inject [--config NAME] [--kube-version X.Y] [FILE|-]...`: Kubernetes YAML in,
//! the same objects with the sidecar injected out, as `linkerd inject` does
//! (docs/inject.md#rampart-inject).
//!
//! Multi-document files and `List` objects are read; workload kinds are injected through
//! the pure mutation (crates/inject), every other object passes through unchanged. YAML
//! goes to stdout, one line per warning or skip to stderr. Input that is not Kubernetes
//! YAML exits 1 naming the file and line, and nothing is written to stdout.

use rampart_inject::{self as inject, Options, Outcome};
use serde_json::Value;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// One YAML document and where it starts.
struct Document {
    /// `FILE` or `-` (stdin).
    source: String,
    /// 1-based line of the document's first line in its file.
    line: usize,
    value: Value,
}

/// Why the input is not Kubernetes YAML.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}:{line}: {message}")]
struct InputError {
    source_name: String,
    line: usize,
    message: String,
}

/// Runs the command; see the module docs.
pub fn run(
    config: Option<String>,
    kube_version: Option<inject::KubeVersion>,
    image: String,
    files: Vec<PathBuf>,
) -> ExitCode {
    let options = Options {
        config,
        kube_version,
        image,
    };
    let files = if files.is_empty() {
        vec![PathBuf::from("-")]
    } else {
        files
    };
    let mut documents = Vec::new();
    for file in &files {
        match read_documents(file) {
            Ok(mut docs) => documents.append(&mut docs),
            Err(e) => {
                eprintln!("rampart inject: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let context = Context {
        config_maps: config_maps(&documents),
        services: objects_of_kind(&documents, "Service"),
    };
    let mut out = String::new();
    let mut messages = Vec::new();
    for doc in &documents {
        let value = transform(&doc.value, &options, &context, &mut messages);
        match serde_saphyr::to_string(&value) {
            Ok(text) => {
                out.push_str("---\n");
                out.push_str(&text);
                if !text.ends_with('\n') {
                    out.push('\n');
                }
            }
            Err(e) => {
                eprintln!(
                    "rampart inject: {}:{}: cannot write YAML: {e}",
                    doc.source, doc.line
                );
                return ExitCode::FAILURE;
            }
        }
    }
    let stderr = &mut std::io::stderr().lock();
    for m in messages {
        let _ = writeln!(stderr, "{m}");
    }
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn read_documents(file: &PathBuf) -> Result<Vec<Document>, InputError> {
    let name = file.display().to_string();
    let err = |line: usize, message: String| InputError {
        source_name: name.clone(),
        line,
        message,
    };
    let text = if name == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| err(0, format!("cannot read stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(file).map_err(|e| err(0, format!("cannot read: {e}")))?
    };
    let mut docs = Vec::new();
    for (line, chunk) in split_documents(&text) {
        let value: Value = match serde_saphyr::from_str(&chunk) {
            Ok(v) => v,
            Err(e) => {
                let at = e
                    .location()
                    .map(|loc| line + usize::try_from(loc.line()).unwrap_or(1).max(1) - 1)
                    .unwrap_or(line);
                let message = bare_message(&e);
                return Err(err(at, format!("not YAML: {message}")));
            }
        };
        if value.is_null() {
            continue;
        }
        check_object(&value).map_err(|m| err(line, m))?;
        docs.push(Document {
            source: name.clone(),
            line,
            value,
        });
    }
    Ok(docs)
}

/// Splits a YAML stream at `---` lines (and drops `...` end markers), keeping each
/// document's first line number. Done by hand so errors name the line in the file.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut start = 1;
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let directive_end = line == "..." || line.starts_with("... ");
        let marker = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if !(marker || directive_end) {
            current.push_str(line);
            current.push('\n');
            continue;
        }
        out.push((start, std::mem::take(&mut current)));
        // `--- {a: 1}`: a document may begin on its marker line.
        let rest = if marker { line[3..].trim() } else { "" };
        if rest.is_empty() {
            start = i + 2;
        } else {
            current.push_str(rest);
            current.push('\n');
            start = i + 1;
        }
    }
    out.push((start, current));
    out.into_iter()
        .filter(|(_, c)| {
            c.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect()
}

/// A YAML error's message without its `line L column C:` prefix (relative to the
/// document, where the caller names the line in the file).
fn bare_message(e: &serde_saphyr::Error) -> String {
    let text = e.without_snippet().to_string();
    let text = text.lines().next().unwrap_or("").to_string();
    match text.strip_prefix("line ") {
        Some(rest) => match rest.split_once(": ") {
            Some((loc, msg)) if loc.contains("column") => msg.to_string(),
            _ => text,
        },
        None => text,
    }
}

fn check_object(value: &Value) -> Result<(), String> {
    let Some(map) = value.as_object() else {
        return Err("not a Kubernetes object (expected a mapping with apiVersion and kind)".into());
    };
    for field in ["apiVersion", "kind"] {
        if !map.get(field).is_some_and(Value::is_string) {
            return Err(format!("not a Kubernetes object: no {field}"));
        }
    }
    if let Some(items) = map.get("items") {
        let items = items
            .as_array()
            .ok_or_else(|| "items: not a list".to_string())?;
        for (i, item) in items.iter().enumerate() {
            check_object(item).map_err(|m| format!("items[{i}]: {m}"))?;
        }
    }
    Ok(())
}

/// What the rest of the input says about an injected workload.
struct Context {
    /// The `rampart.yaml` of every ConfigMap in the input, by name.
    config_maps: HashMap<String, Value>,
    /// Every Service in the input, to warn about those that bypass the sidecar.
    services: Vec<Value>,
}

/// Every object of `kind` in the input, `List` items included.
fn objects_of_kind(docs: &[Document], kind: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for d in docs {
        let items = d.value.get("items").and_then(Value::as_array);
        for v in std::iter::once(&d.value).chain(items.into_iter().flatten()) {
            if v.get("kind").and_then(Value::as_str) == Some(kind) {
                out.push(v.clone());
            }
        }
    }
    out
}

/// The `rampart.yaml` of every ConfigMap in the input, by name, to check injections against.
fn config_maps(docs: &[Document]) -> HashMap<String, Value> {
    let mut out = HashMap::new();
    for v in objects_of_kind(docs, "ConfigMap") {
        let name = v.pointer("/metadata/name").and_then(Value::as_str);
        let data = v.pointer("/data/rampart.yaml").and_then(Value::as_str);
        if let (Some(name), Some(data)) = (name, data) {
            if let Ok(parsed) = serde_saphyr::from_str::<Value>(data) {
                out.insert(name.to_string(), parsed);
            }
        }
    }
    out
}

fn transform(
    value: &Value,
    options: &Options,
    context: &Context,
    messages: &mut Vec<String>,
) -> Value {
    if let Some(items) = value.get("items").and_then(Value::as_array) {
        let items: Vec<Value> = items
            .iter()
            .map(|i| transform(i, options, context, messages))
            .collect();
        let mut list = value.clone();
        list["items"] = Value::Array(items);
        return list;
    }
    let name = inject::display_name(value);
    match inject::inject_object(value, options) {
        Ok(Outcome::Injected(injected)) => {
            let how = if injected.native {
                "native sidecar"
            } else {
                "plain container"
            };
            let port = match &injected.taken_port {
                Some(p) => format!("port {p:?} taken over"),
                None => "no port taken over".into(),
            };
            let mut line = format!(
                "{name}: injected ({how}, {port}, ConfigMap {})",
                injected.config_map
            );
            let mut config_warnings = Vec::new();
            match context.config_maps.get(&injected.config_map) {
                Some(config) => config_warnings = inject::check_config(config, &injected),
                None => {
                    if let Some(url) = &injected.upstream_url {
                        line.push_str(&format!("; its default upstream must be the app at {url}"));
                    }
                }
            }
            for service in &context.services {
                config_warnings.extend(inject::check_service(service, value, &injected));
            }
            messages.push(line);
            for w in config_warnings.iter().chain(&injected.warnings) {
                messages.push(format!("{name}: warning: {w}"));
            }
            injected.object
        }
        Ok(Outcome::Skipped { reason }) => {
            messages.push(format!("{name}: skipped: {reason}"));
            value.clone()
        }
        Ok(Outcome::Unchanged) => {
            if inject::template_path(value.get("kind").and_then(Value::as_str).unwrap_or(""))
                .is_some()
            {
                messages.push(format!("{name}: unchanged: already injected"));
            }
            value.clone()
        }
        Err(e) => {
            messages.push(format!("{name}: error: {e}; left unchanged"));
            value.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_documents;

    #[test]
    fn documents_keep_their_first_line() {
        let docs = split_documents("# c\na: 1\n---\nb: 2\n\n--- \nc: 3\n...\n---\n");
        let starts: Vec<usize> = docs.iter().map(|d| d.0).collect();
        assert_eq!(starts, vec![1, 4, 7]);
    }
}
