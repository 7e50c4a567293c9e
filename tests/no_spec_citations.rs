//! The repository cites its own reference, `docs/`, and nothing users do not have.
//!
//! Rampart was first built against a product contract kept outside the repository. Its
//! content now lives in `docs/` (see `docs/README.md`), so no file may cite that document:
//! not by its name in capitals (alone, as a file name, or inside an identifier such as
//! `X_VECTOR` prefixed with it), nor in snake_case identifiers and test names built from
//! it in lower case. Kubernetes' own `spec` (a pod's `spec:`, `pod_spec`, `spec_mut`) is not
//! a citation and stays allowed.

use std::path::{Path, PathBuf};

/// The document's name, spelled so this file does not cite it.
fn name() -> String {
    concat!("SP", "EC").to_string()
}

/// A lower-case snake_case identifier cites the document when the word sits beside one of
/// these (`x_time`, `the_x_vector`, `from_x_hold` with x the word); Kubernetes' own `spec`
/// (`pod_spec`, `spec_mut`, `spec_extra`) does not.
const CITING_SEGMENTS: &[&str] = &[
    "the",
    "from",
    "with",
    "vector",
    "vectors",
    "time",
    "golden",
    "bucketing",
    "member",
    "metric",
    "metrics",
    "section",
    "says",
    "contract",
    "only",
];

fn text_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let file = entry.file_name().to_string_lossy().to_string();
        if path.is_dir() {
            let skip = file.starts_with('.')
                || ["target", "node_modules", "__pycache__", "venv"].contains(&file.as_str());
            if !skip {
                text_files(&path, out);
            }
        } else if [
            "rs",
            "md",
            "py",
            "sh",
            "yaml",
            "yml",
            "toml",
            "json",
            "tsv",
            "txt",
            "tpl",
            "cfg",
            "ini",
            "html",
            "Dockerfile",
        ]
        .iter()
        .any(|ext| file.ends_with(&format!(".{ext}")) || file == *ext)
            || ["run", "Makefile", "Containerfile"].contains(&file.as_str())
        {
            out.push(path);
        }
    }
}

/// Occurrences in one line: the capitalised name bounded by non-letters, and snake_case
/// identifiers (in code) with the lower-case word as one of their segments.
fn offences(line: &str, code: bool) -> Vec<String> {
    let word = name();
    let mut found = Vec::new();
    let bytes = line.as_bytes();
    let mut at = 0;
    while let Some(i) = line[at..].find(&word).map(|i| i + at) {
        let before = i.checked_sub(1).map(|j| bytes[j]);
        let after = bytes.get(i + word.len()).copied();
        at = i + word.len();
        if before.is_some_and(|b| b.is_ascii_alphabetic())
            || after.is_some_and(|b| b.is_ascii_alphabetic())
        {
            continue;
        }
        found.push(line[i.saturating_sub(20)..(i + 24).min(line.len())].to_string());
    }
    if code {
        let lower = word.to_lowercase();
        for ident in line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if ident.contains(&word) {
                continue; // counted above
            }
            let segments: Vec<String> = ident
                .split('_')
                .filter(|s| !s.is_empty())
                .map(str::to_ascii_lowercase)
                .collect();
            let cites = segments.iter().enumerate().any(|(i, s)| {
                *s == lower
                    && segments[i.saturating_sub(1)..(i + 2).min(segments.len())]
                        .iter()
                        .any(|n| CITING_SEGMENTS.contains(&n.as_str()))
            });
            if cites {
                found.push(ident.to_string());
            }
        }
    }
    found
}

#[test]
fn nothing_cites_the_old_contract() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    text_files(&root, &mut files);
    let mut problems = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let rel = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        let code = rel.ends_with(".rs") || rel.ends_with(".py");
        for (n, line) in text.lines().enumerate() {
            for what in offences(line, code) {
                problems.push(format!("{rel}:{}: {what}", n + 1));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} citation(s) of a document users do not have; cite docs/PAGE.md#anchor instead:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn the_check_finds_what_it_should_and_nothing_else() {
    let w = name();
    assert_eq!(offences(&format!("see {w} section 6"), false).len(), 1);
    assert_eq!(offences(&format!("the {w}.md file"), false).len(), 1);
    assert_eq!(offences(&format!("const {w}_VECTOR: &str"), true).len(), 1);
    let lower = w.to_lowercase();
    assert_eq!(
        offences(&format!("fn the_{lower}_vector_line_verifies()"), true).len(),
        1
    );
    for fine in [
        "INSPECT SPECIAL SPECTRUM",
        "spec:",
        "  spec:\n    containers:",
        "let pod_spec = &pod[\"spec\"];",
        "let spec_mut = object.get_mut(\"spec\");",
        "fn deployment(spec_extra: Value)",
        "the compose-spec JSON schema",
        "respect the specified order",
    ] {
        assert!(offences(fine, true).is_empty(), "{fine:?}");
    }
}
