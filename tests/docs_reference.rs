//! `docs/` is Rampart's reference, so it must not drift from the code.
//!
//! - Every field of the config file's serde model (`crates/core/src/config/raw.rs`) has a
//!   row in `docs/config.md` with its type, default and whether a reload applies it, and
//!   every value of an enum field is named in that row. The field list is not written down
//!   here: it is read from serde itself, by deserializing [`RawConfig`] from a deserializer
//!   that records the field names each struct asks for (serde derive hands its `FIELDS`
//!   to `deserialize_struct`) and the variants each enum asks for. A field added to
//!   `raw.rs` (or a block another module adds to `RawConfig`) is therefore checked without
//!   touching this file; a row naming a field the model no longer has fails too.
//! - The complete example in `docs/config.md#example` is a valid config.
//! - Every metric family the code creates has a row in `docs/metrics.md`, and every row
//!   names a family the code creates.
//! - Every `docs/PAGE.md#anchor` cited anywhere in the repository, and every link between
//!   the docs pages, lands on a heading or an explicit anchor that exists.
//!
//! - Every command and long flag `rampart --help` shows has its section in `docs/cli.md`.
//!
//! Plain `cargo test --test docs_reference` (cargo builds the binary the CLI check asks for
//! `--help`; nothing is served).

use rampart_core::config::raw::RawConfig;
use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess};
use serde::de::{Expected, Visitor};
use serde::Deserialize;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Error = de::value::Error;

// ---------------------------------------------------------------------------------------
// The config model, as serde sees it.
// ---------------------------------------------------------------------------------------

/// What the walk found: each struct ("block") by its path, with its field names, and the
/// variants of each enum-valued field.
#[derive(Default, Debug)]
struct Schema {
    /// Block path (`""` for the top level, `routes[].breaker`, `upstreams.<name>`) -> fields.
    blocks: BTreeMap<String, Vec<&'static str>>,
    /// Field path -> the enum's variants as written in YAML.
    enums: BTreeMap<String, Vec<&'static str>>,
}

/// serde-saphyr's `Spanned<T>` asks for a newtype struct of this name, then reads a map
/// whose first key is its private marker, followed by `value`, `referenced` and `defined`.
/// The walk speaks that protocol so the struct inside a `Spanned` is reached through
/// `deserialize_struct` (and its fields recorded); if serde-saphyr ever changes it, the
/// walk stops finding blocks and `the_walk_reaches_every_block` fails.
const SPANNED_NEWTYPE: &str = "__yaml_spanned";
const SPANNED_MARKER: &str = "__serde_saphyr_private_spanned";

/// A `Deserializer` that invents a minimal value for whatever type asks, recording the
/// structure on the way.
struct Walker<'a> {
    schema: &'a RefCell<Schema>,
    path: String,
    /// Inside a `Spanned` newtype: `deserialize_any` answers with the marker map.
    spanned: bool,
    depth: usize,
}

impl<'a> Walker<'a> {
    fn child(&self, path: String) -> Walker<'a> {
        Walker {
            schema: self.schema,
            path,
            spanned: false,
            depth: self.depth + 1,
        }
    }

    fn field_path(&self, field: &str) -> String {
        if self.path.is_empty() {
            field.to_string()
        } else {
            format!("{}.{field}", self.path)
        }
    }

    fn guard(&self) -> Result<(), Error> {
        if self.depth > 64 {
            return Err(de::Error::custom(format!(
                "{}: the config model nests deeper than 64 levels (a recursive type?)",
                self.path
            )));
        }
        Ok(())
    }
}

impl<'de> Deserializer<'de> for Walker<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.guard()?;
        if self.spanned {
            return visitor.visit_map(SpannedRepr {
                walker: Some(self.child(self.path.clone())),
                state: 0,
            });
        }
        // A hand-written Deserialize that takes "any": the config's own scalar types. A
        // duration wants text with a unit; everything else here (percents) takes a number.
        let expecting = format!("{}", &visitor as &dyn Expected);
        if expecting.contains("duration") {
            visitor.visit_str("1s")
        } else {
            visitor.visit_u64(1)
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_bool(false)
    }
    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_i64(1)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_i64(1)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_i64(1)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_i64(1)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u64(1)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u64(1)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u64(1)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u64(1)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_f64(0.5)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_f64(0.5)
    }
    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_char('x')
    }
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str("x")
    }
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str("x")
    }
    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_bytes(b"x")
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_bytes(b"x")
    }
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }
    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.guard()?;
        let mut inner = self.child(self.path.clone());
        inner.spanned = name == SPANNED_NEWTYPE;
        visitor.visit_newtype_struct(inner)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.guard()?;
        visitor.visit_seq(Elements {
            walker: Some(self.child(format!("{}[]", self.path))),
            left: 1,
        })
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        self.guard()?;
        let path = self.path.clone();
        visitor.visit_seq(Tuple {
            walker: self,
            path,
            left: len,
        })
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_tuple(len, visitor)
    }
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.guard()?;
        visitor.visit_map(OneEntry {
            walker: Some(self.child(format!("{}.<name>", self.path))),
            key_given: false,
        })
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.guard()?;
        self.schema
            .borrow_mut()
            .blocks
            .insert(self.path.clone(), fields.to_vec());
        visitor.visit_map(Fields {
            walker: self,
            fields,
            next: 0,
        })
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.schema
            .borrow_mut()
            .enums
            .insert(self.path.clone(), variants.to_vec());
        let first = variants.first().copied().unwrap_or("");
        visitor.visit_enum(IntoDeserializer::<Error>::into_deserializer(first))
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str("x")
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

/// A struct's fields, each with a walked value, so required fields are all present.
struct Fields<'a> {
    walker: Walker<'a>,
    fields: &'static [&'static str],
    next: usize,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.fields.get(self.next) {
            Some(field) => seed
                .deserialize(IntoDeserializer::<Error>::into_deserializer(*field))
                .map(Some),
            None => Ok(None),
        }
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let field = self.fields.get(self.next).copied().unwrap_or("");
        self.next += 1;
        let path = self.walker.field_path(field);
        seed.deserialize(self.walker.child(path))
    }
}

/// `Spanned<T>`'s own map: marker, then `value` (walked), then two source locations.
struct SpannedRepr<'a> {
    walker: Option<Walker<'a>>,
    state: u8,
}

impl<'de> MapAccess<'de> for SpannedRepr<'_> {
    type Error = Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let key = match self.state {
            0 => SPANNED_MARKER,
            1 => "value",
            2 => "referenced",
            3 => "defined",
            _ => return Ok(None),
        };
        seed.deserialize(IntoDeserializer::<Error>::into_deserializer(key))
            .map(Some)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let state = self.state;
        self.state += 1;
        match state {
            0 => seed.deserialize(IntoDeserializer::<Error>::into_deserializer(())),
            1 => match self.walker.take() {
                Some(w) => seed.deserialize(w),
                None => Err(de::Error::custom("spanned value asked twice")),
            },
            _ => seed.deserialize(de::value::MapDeserializer::<_, Error>::new(
                [("line", 1u32), ("column", 1u32)].into_iter(),
            )),
        }
    }
}

/// One element of a sequence.
struct Elements<'a> {
    walker: Option<Walker<'a>>,
    left: usize,
}

impl<'de> SeqAccess<'de> for Elements<'_> {
    type Error = Error;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        match self.walker.take() {
            Some(w) => seed.deserialize(w).map(Some),
            None => Ok(None),
        }
    }
}

/// Every element of a tuple.
struct Tuple<'a> {
    walker: Walker<'a>,
    path: String,
    left: usize,
}

impl<'de> SeqAccess<'de> for Tuple<'_> {
    type Error = Error;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(self.walker.child(format!("{}[]", self.path)))
            .map(Some)
    }
}

/// One entry of a map keyed by names (`upstreams`, `match.headers`, ...).
struct OneEntry<'a> {
    walker: Option<Walker<'a>>,
    key_given: bool,
}

impl<'de> MapAccess<'de> for OneEntry<'_> {
    type Error = Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        if self.key_given {
            return Ok(None);
        }
        self.key_given = true;
        seed.deserialize(IntoDeserializer::<Error>::into_deserializer("name"))
            .map(Some)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        match self.walker.take() {
            Some(w) => seed.deserialize(w),
            None => Err(de::Error::custom("map value asked twice")),
        }
    }
}

/// The config model's blocks and enums, from serde.
fn config_schema() -> Schema {
    let schema = RefCell::new(Schema::default());
    let walker = Walker {
        schema: &schema,
        path: String::new(),
        spanned: false,
        depth: 0,
    };
    if let Err(e) = RawConfig::deserialize(walker) {
        panic!(
            "walking the config model failed: {e}\n\
             A type in crates/core/src/config/raw.rs deserializes in a way this walk does not \
             know (tests/docs_reference.rs, `Walker`): teach it that type."
        );
    }
    schema.into_inner()
}

/// A path without its sequence and map markers: `routes[].breaker` -> `routes.breaker`.
fn plain(path: &str) -> String {
    path.replace("[]", "").replace(".<name>", "")
}

// ---------------------------------------------------------------------------------------
// docs/config.md, as tables under headings.
// ---------------------------------------------------------------------------------------

/// One row of a table in a docs page.
#[derive(Debug)]
struct Row {
    line: usize,
    /// The heading the table is under, lowercased, without backticks.
    heading: String,
    /// Header cells, lowercased.
    columns: Vec<String>,
    cells: Vec<String>,
}

impl Row {
    /// The code spans (`...`) of the first cell: the fields the row documents.
    fn names(&self) -> Vec<String> {
        self.cells
            .first()
            .map(|c| code_spans(c))
            .unwrap_or_default()
    }

    fn cell(&self, column: &str) -> Option<&str> {
        let i = self.columns.iter().position(|c| c.contains(column))?;
        self.cells.get(i).map(String::as_str)
    }
}

fn code_spans(text: &str) -> Vec<String> {
    text.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.trim().to_string())
        .collect()
}

fn split_cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|');
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    let mut cells = vec![String::new()];
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                chars.next();
                if let Some(last) = cells.last_mut() {
                    last.push('|');
                }
            }
            '|' => cells.push(String::new()),
            _ => {
                if let Some(last) = cells.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    cells.into_iter().map(|c| c.trim().to_string()).collect()
}

fn heading_text(line: &str) -> Option<(usize, String)> {
    let level = line.bytes().take_while(|b| *b == b'#').count();
    if level == 0 || level > 6 || !line[level..].starts_with(' ') {
        return None;
    }
    Some((level, line[level..].trim().to_string()))
}

/// Every table row of a markdown page, with the heading it is under.
fn table_rows(text: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut heading = String::new();
    let mut in_fence = false;
    let mut columns: Option<Vec<String>> = None;
    let mut previous_was_table = false;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        if let Some((_, text)) = heading_text(trimmed) {
            heading = text.replace('`', "").trim().to_lowercase();
            previous_was_table = false;
            columns = None;
            continue;
        }
        if !trimmed.starts_with('|') {
            previous_was_table = false;
            columns = None;
            continue;
        }
        let cells = split_cells(trimmed);
        if !previous_was_table {
            columns = Some(cells.iter().map(|c| c.to_lowercase()).collect());
            previous_was_table = true;
            continue;
        }
        if cells.iter().all(|c| c.chars().all(|ch| "-: ".contains(ch))) {
            continue;
        }
        rows.push(Row {
            line: i + 1,
            heading: heading.clone(),
            columns: columns.clone().unwrap_or_default(),
            cells,
        });
    }
    rows
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Whether a heading (lowercased, backticks gone) is the section of block `block` (plain
/// path): `Top level` for the top, else the block's path or a dotted tail of it
/// (`breaker` or `routes.breaker` for `routes.breaker`).
fn heading_is_block(heading: &str, block: &str) -> bool {
    if block.is_empty() {
        return heading == "top level";
    }
    heading == block || block.ends_with(&format!(".{heading}"))
}

/// Whether a row's code span names `field` of `block` by a dotted path: the field's whole
/// plain path, or a tail of it of two segments or more (`access_log.sample`,
/// `breaker.window`). `[]`, `.<name>`, `.NAME` and `.*` in the span are ignored.
fn span_names_path(span: &str, full: &str) -> bool {
    let span = plain(span)
        .replace(".NAME", "")
        .replace(".*", "")
        .replace(".<name>", "");
    span.contains('.') && (span == full || full.ends_with(&format!(".{span}")))
}

#[test]
fn the_walk_reaches_every_block() {
    let schema = config_schema();
    let blocks: BTreeSet<String> = schema.blocks.keys().map(|b| plain(b)).collect();
    for expected in [
        "",
        "tls",
        "drain",
        "upstreams",
        "upstreams.health_check",
        "routes",
        "routes.match",
        "routes.breaker.max_latency",
        "routes.rollout.prometheus",
    ] {
        assert!(
            blocks.contains(expected),
            "the walk of the config model did not reach block {expected:?} (found {blocks:?}): \
             serde-saphyr's Spanned protocol may have changed"
        );
    }
    assert!(schema.enums.keys().any(|f| plain(f) == "routes.kind"));
    assert!(schema.blocks.values().map(Vec::len).sum::<usize>() >= 70);
}

#[test]
fn every_config_field_is_in_the_reference() {
    let schema = config_schema();
    let text = read(&repo().join("docs/config.md"));
    let rows = table_rows(&text);
    let mut problems = Vec::new();
    for (block, fields) in &schema.blocks {
        let block_plain = plain(block);
        for field in fields {
            let full = if block_plain.is_empty() {
                field.to_string()
            } else {
                format!("{block_plain}.{field}")
            };
            let shown = if block.is_empty() {
                field.to_string()
            } else {
                format!("{block}.{field}")
            };
            let row = rows.iter().find(|r| {
                r.names().iter().any(|n| {
                    (n == field && heading_is_block(&r.heading, &block_plain))
                        || span_names_path(n, &full)
                })
            });
            let Some(row) = row else {
                let section = if block_plain.is_empty() {
                    "Top level".to_string()
                } else {
                    block_plain.rsplit('.').next().unwrap_or("").to_string()
                };
                problems.push(format!(
                    "`{shown}` is not documented: add a row `| `{field}` | type | default | reload or restart | what it does |` \
                     to the table under the heading `{section}` (or a row naming `{full}`)"
                ));
                continue;
            };
            for column in ["type", "default", "reload"] {
                match row.cell(column) {
                    None => problems.push(format!(
                        "docs/config.md:{}: the table documenting `{shown}` has no `{column}` column",
                        row.line
                    )),
                    Some("") => problems.push(format!(
                        "docs/config.md:{}: `{shown}` has an empty `{column}` cell",
                        row.line
                    )),
                    Some(c) if column == "reload" && !(c.contains("reload") || c.contains("restart")) => {
                        problems.push(format!(
                            "docs/config.md:{}: `{shown}`: the reload cell must say `reload` or `restart`, not {c:?}",
                            row.line
                        ))
                    }
                    Some(_) => {}
                }
            }
            let field_path = if block.is_empty() {
                field.to_string()
            } else {
                format!("{block}.{field}")
            };
            if let Some(variants) = schema.enums.get(&field_path) {
                let row_spans: BTreeSet<String> =
                    row.cells.iter().flat_map(|c| code_spans(c)).collect();
                for variant in variants {
                    if !row_spans.contains(*variant) {
                        problems.push(format!(
                            "docs/config.md:{}: `{shown}` can be `{variant}`, which its row does not name",
                            row.line
                        ));
                    }
                }
            }
        }
    }
    // The other way round: a row under a block's heading names a field that block has.
    for row in &rows {
        if row.columns.first().map(String::as_str) != Some("field") {
            continue;
        }
        let blocks: Vec<(&String, &Vec<&str>)> = schema
            .blocks
            .iter()
            .filter(|(b, _)| heading_is_block(&row.heading, &plain(b)))
            .collect();
        if blocks.is_empty() {
            continue;
        }
        for name in row.names() {
            if name.contains('.') {
                let known = schema.blocks.iter().any(|(b, fields)| {
                    fields.iter().any(|f| {
                        let full = if b.is_empty() {
                            f.to_string()
                        } else {
                            format!("{}.{f}", plain(b))
                        };
                        span_names_path(&name, &full)
                    })
                });
                if !known {
                    problems.push(format!(
                        "docs/config.md:{}: `{name}` is not a field of the config model",
                        row.line
                    ));
                }
            } else if !blocks
                .iter()
                .any(|(_, fields)| fields.contains(&name.as_str()))
            {
                problems.push(format!(
                    "docs/config.md:{}: `{name}` under `{}` is not a field of that block in the config model",
                    row.line, row.heading
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "docs/config.md is out of step with crates/core/src/config/raw.rs:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_documented_example_is_a_valid_config() {
    let text = read(&repo().join("docs/config.md"));
    let mut in_example = false;
    let mut yaml = None;
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some((_, h)) = heading_text(line) {
            in_example = h.eq_ignore_ascii_case("example");
            continue;
        }
        if in_example && line.trim_start().starts_with("```yaml") {
            let body: Vec<&str> = lines
                .by_ref()
                .take_while(|l| !l.trim_start().starts_with("```"))
                .collect();
            yaml = Some(body.join("\n"));
            break;
        }
    }
    let Some(yaml) = yaml else {
        panic!("docs/config.md has no `## Example` section with a ```yaml block");
    };
    if let Err(errors) = rampart_core::config::parse(&yaml) {
        panic!("the example in docs/config.md#example is not a valid config:\n{errors}");
    }
}

// ---------------------------------------------------------------------------------------
// Citations: docs/PAGE.md#anchor must exist.
// ---------------------------------------------------------------------------------------

/// Pages other branches add at the time of writing; a link to one is only checked once the
/// page exists (then like every other page). Remove a name once its page is merged.
const PAGES_FROM_OTHER_BRANCHES: &[&str] = &[];

/// GitHub's anchor for a heading: lowercase, markup and punctuation dropped (letters,
/// digits, `-` and `_` kept), spaces to `-`.
fn slug(heading: &str) -> String {
    let mut text = heading.to_string();
    // [text](link) -> text
    while let (Some(open), Some(mid)) = (text.find('['), text.find("](")) {
        let Some(close) = text[mid..].find(')').map(|c| c + mid) else {
            break;
        };
        if open > mid {
            break;
        }
        text = format!(
            "{}{}{}",
            &text[..open],
            &text[open + 1..mid],
            &text[close + 1..]
        );
    }
    text.to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a page: its headings' slugs (with GitHub's `-1`, `-2` for repeats) and
/// explicit `<a id="...">` / `<a name="...">`.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut in_fence = false;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        if let Some((_, h)) = heading_text(t) {
            let s = slug(&h);
            let n = seen.entry(s.clone()).or_insert(0);
            out.insert(if *n == 0 {
                s.clone()
            } else {
                format!("{s}-{n}")
            });
            *n += 1;
        }
        for attr in ["id=\"", "name=\""] {
            let mut rest = line;
            while let Some(i) = rest.find(attr) {
                rest = &rest[i + attr.len()..];
                if let Some(end) = rest.find('"') {
                    out.insert(rest[..end].to_string());
                }
            }
        }
    }
    out
}

/// Files that may cite the docs.
fn text_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if path.is_dir() {
            if !(name.starts_with('.')
                || name == "target"
                || name == "node_modules"
                || name == "__pycache__"
                || name == "venv")
            {
                text_files(&path, out);
            }
        } else if [
            "rs", "md", "py", "sh", "yaml", "yml", "toml", "json", "tsv", "txt",
        ]
        .iter()
        .any(|ext| name.ends_with(&format!(".{ext}")))
        {
            out.push(path);
        }
    }
}

/// `(page, anchor)` citations in `text`: `docs/PAGE.md#anchor` anywhere, and in docs pages
/// also relative links `](PAGE.md#anchor)`, `](#anchor)` and `](PAGE.md)`.
fn citations(text: &str, in_docs: Option<&str>) -> Vec<(usize, String, Option<String>)> {
    let mut out = Vec::new();
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.';
    let is_anchor = |c: char| c.is_alphanumeric() || c == '_' || c == '-';
    for (n, line) in text.lines().enumerate() {
        let mut at = 0;
        while let Some(i) = line[at..].find(".md").map(|i| i + at) {
            at = i + 3;
            let start = line[..i]
                .char_indices()
                .rev()
                .take_while(|(_, c)| is_name(*c) || *c == '/')
                .last()
                .map(|(j, _)| j)
                .unwrap_or(i);
            let path = &line[start..i + 3];
            let page = if let Some(p) = path.rsplit_once("docs/").map(|(_, p)| p) {
                p.to_string()
            } else if in_docs.is_some() && line[..start].ends_with("](") && !path.contains('/') {
                path.to_string()
            } else {
                continue;
            };
            // `PAGE.md` is how this file writes the pattern itself.
            if page.contains('/') || page.is_empty() || page == "PAGE.md" {
                continue;
            }
            let anchor = line[i + 3..]
                .strip_prefix('#')
                .map(|a| a.chars().take_while(|c| is_anchor(*c)).collect::<String>());
            out.push((n + 1, page, anchor));
        }
        if let Some(page) = in_docs {
            let mut rest = line;
            while let Some(i) = rest.find("](#") {
                rest = &rest[i + 3..];
                let anchor: String = rest.chars().take_while(|c| is_anchor(*c)).collect();
                out.push((n + 1, page.to_string(), Some(anchor)));
            }
        }
    }
    out
}

#[test]
fn every_cited_docs_anchor_exists() {
    let root = repo();
    let docs = root.join("docs");
    let mut files = Vec::new();
    text_files(&root, &mut files);
    let mut pages: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(&docs).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.ends_with(".md") {
            pages.insert(name, anchors(&read(&entry.path())));
        }
    }
    let mut problems = Vec::new();
    for file in &files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        let rel = file
            .strip_prefix(&root)
            .unwrap_or(file)
            .display()
            .to_string();
        let in_docs = rel
            .strip_prefix("docs/")
            .filter(|p| !p.contains('/'))
            .map(str::to_string);
        for (line, page, anchor) in citations(&text, in_docs.as_deref()) {
            let Some(known) = pages.get(&page) else {
                if !PAGES_FROM_OTHER_BRANCHES.contains(&page.as_str()) {
                    problems.push(format!("{rel}:{line}: docs/{page} does not exist"));
                }
                continue;
            };
            if let Some(anchor) = anchor {
                if !anchor.is_empty() && !known.contains(&anchor) {
                    problems.push(format!(
                        "{rel}:{line}: docs/{page}#{anchor}: no such heading or anchor"
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "citations of the docs that lead nowhere:\n{}",
        problems.join("\n")
    );
}

#[test]
fn slugs_follow_github() {
    assert_eq!(slug("Own responses"), "own-responses");
    assert_eq!(slug("`health_check`"), "health_check");
    assert_eq!(slug("Exit codes"), "exit-codes");
    assert_eq!(slug("Rampart's own responses"), "ramparts-own-responses");
    assert_eq!(
        slug("Fleets (`rollout.prometheus`)"),
        "fleets-rolloutprometheus"
    );
}

// ---------------------------------------------------------------------------------------
// Metrics: every family the code registers has a row in docs/metrics.md, and back.
// ---------------------------------------------------------------------------------------

fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Metric family names in the shipped code: every family is created from a string literal
/// `"rampart_..."` (`Opts::new(name, help)` in `crates/proxy/src/metrics.rs` and wherever
/// another module registers its own).
fn metric_names_in_code() -> BTreeSet<String> {
    let root = repo();
    let mut files = Vec::new();
    rust_sources(&root.join("src"), &mut files);
    for entry in std::fs::read_dir(root.join("crates"))
        .into_iter()
        .flatten()
        .flatten()
    {
        rust_sources(&entry.path().join("src"), &mut files);
    }
    let mut names = BTreeSet::new();
    for file in files {
        let text = read(&file);
        let mut rest = text.as_str();
        while let Some(i) = rest.find("\"rampart_") {
            rest = &rest[i + 1..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if rest[name.len()..].starts_with('"') {
                names.insert(name);
            }
        }
    }
    names
}

#[test]
fn every_metric_is_in_the_reference() {
    let in_code = metric_names_in_code();
    assert!(
        in_code.contains("rampart_requests_total") && in_code.len() >= 15,
        "the scan of the sources found too few metric names: {in_code:?}"
    );
    let text = read(&repo().join("docs/metrics.md"));
    let documented: BTreeSet<String> = table_rows(&text)
        .iter()
        .flat_map(Row::names)
        .filter(|n| n.starts_with("rampart_"))
        .collect();
    let missing: Vec<&String> = in_code.difference(&documented).collect();
    let stale: Vec<&String> = documented.difference(&in_code).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/metrics.md is out of step with the code: not documented {missing:?}; documented but not in the code {stale:?}"
    );
}

// ---------------------------------------------------------------------------------------
// The command line: every command and flag `--help` shows is in docs/cli.md.
// ---------------------------------------------------------------------------------------

fn help(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(args)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("rampart {args:?} --help: {e}"));
    assert!(out.status.success(), "rampart {args:?} --help failed");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The names listed under `Commands:` (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

/// The long flags under `Options:` (without `--help` and `--version`).
fn long_flags(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Options:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("--"))
                .map(|w| w.trim_end_matches(',').to_string())
        })
        .filter(|f| f != "--help" && f != "--version")
        .collect()
}

/// The text of the `docs/cli.md` section whose heading names the command (`audit verify`,
/// or one of the commands a heading such as `inject and injector` names), plus the text of
/// every docs page that section links to.
fn cli_section(cli: &str, command: &str) -> Option<String> {
    let mut section: Option<String> = None;
    for line in cli.lines() {
        if let Some((level, heading)) = heading_text(line) {
            if section.is_some() && level <= 2 {
                break;
            }
            let heading = heading.replace('`', "").to_lowercase();
            let names: Vec<&str> = heading.split(" and ").map(str::trim).collect();
            if level == 2 && names.contains(&command) {
                section = Some(String::new());
            }
            continue;
        }
        if let Some(s) = section.as_mut() {
            s.push_str(line);
            s.push('\n');
        }
    }
    let mut text = section?;
    let linked: Vec<(usize, String, Option<String>)> = citations(&text, Some("cli.md"));
    for (_, page, _) in linked {
        if page != "cli.md" {
            if let Ok(more) = std::fs::read_to_string(repo().join("docs").join(&page)) {
                text.push_str(&more);
            }
        }
    }
    Some(text)
}

#[test]
fn every_command_and_flag_is_in_the_cli_reference() {
    let cli = read(&repo().join("docs/cli.md"));
    let mut commands: Vec<Vec<String>> = subcommands(&help(&[]))
        .into_iter()
        .map(|c| vec![c])
        .collect();
    assert!(commands.len() >= 5, "rampart --help lists too few commands");
    let mut problems = Vec::new();
    let mut checked = 0;
    while let Some(path) = commands.pop() {
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        let text = help(&args);
        let nested = subcommands(&text);
        if !nested.is_empty() {
            for sub in nested {
                let mut longer = path.clone();
                longer.push(sub);
                commands.push(longer);
            }
            continue;
        }
        let name = path.join(" ");
        checked += 1;
        let Some(section) = cli_section(&cli, &name) else {
            problems.push(format!(
                "`rampart {name}` has no `## {name}` section in docs/cli.md"
            ));
            continue;
        };
        if !cli.contains(&format!("`rampart {name}")) {
            problems.push(format!(
                "`rampart {name}` is not in docs/cli.md's command list"
            ));
        }
        for flag in long_flags(&text) {
            if !section.contains(&format!("`{flag}")) && !section.contains(&format!(" {flag}")) {
                problems.push(format!(
                    "`rampart {name} {flag}` is not documented in docs/cli.md#{} (or a page it links)",
                    slug(&name)
                ));
            }
        }
    }
    assert!(checked >= 6, "only {checked} commands checked");
    assert!(
        problems.is_empty(),
        "docs/cli.md is out of step with `rampart --help`:\n{}",
        problems.join("\n")
    );
}
