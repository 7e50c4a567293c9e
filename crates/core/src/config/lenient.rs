//! Every type error of a config file in one run.
//!
//! serde stops at the first error: a derived struct that meets a bad field gives up, and
//! everything after it goes unseen. So the file is read in two steps:
//!
//! 1. serde-saphyr parses the text into a [`Tree`] of nodes, each with its position and its
//!    field path (`routes[0].split[1].percent`). This step keeps serde-saphyr's protections:
//!    a syntax error, a duplicate key or an alias bomb stops here, as the only error.
//! 2. The raw structs ([`super::raw`]) are deserialized from the tree by [`NodeDe`], a serde
//!    `Deserializer` that does not stop:
//!    - an unknown field (any struct: the field list comes from serde) is reported and
//!      skipped;
//!    - a value of the wrong shape (a string where a number goes, a list for a mapping, a
//!      name that is not one of an enum's values) is reported and read as a placeholder;
//!    - an error a value type raises itself (a bad duration or percent), or a missing
//!      required field, aborts the pass; the node is then marked bad and the pass re-run,
//!      until a pass succeeds. A bad node reads as a placeholder in later passes: `None` for
//!      an `Option`, zero, `""`, an empty list or mapping, an enum's first value, or a
//!      struct whose every field is a placeholder.
//!
//! Nothing here knows a field of the config: a field added to a raw struct the ordinary way
//! (`pub name: Option<Spanned<T>>`) gets all of this. The paths of the bad nodes are
//! returned, so the semantic checks' errors about placeholders (an `""` upstream name that
//! does not exist, a `0` that must be above zero) are not reported on top of the type error.

use super::error::ConfigError;
use serde::de::{
    self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};
use serde::Deserialize;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;

/// Where a node is in the file: 1-based line and column, 0 when unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Location {
    line: u64,
    column: u64,
}

impl Location {
    /// The position of a value the file did not contain (a default).
    pub const UNKNOWN: Location = Location { line: 0, column: 0 };

    /// 1-based line, 0 when unknown.
    pub fn line(&self) -> u64 {
        self.line
    }

    /// 1-based column, 0 when unknown.
    pub fn column(&self) -> u64 {
        self.column
    }
}

/// A value with the position it was written at, so a semantic check can point at it.
///
/// Read from a config [`Tree`] it carries the node's position; read by any other
/// deserializer it carries [`Location::UNKNOWN`].
#[derive(Debug, Clone, PartialEq)]
pub struct Spanned<T> {
    /// The value.
    pub value: T,
    /// Where the value is written (for an alias: where the alias is used).
    pub referenced: Location,
}

/// The newtype name by which [`NodeDe`] recognizes a [`Spanned`].
const SPANNED: &str = "__rampart_spanned";

/// The bytes a placeholder gives to `deserialize_any`: value types that read their own text
/// (durations, percents) accept them as their zero, so one bad value does not cost its
/// neighbours their checks.
pub(crate) const PLACEHOLDER: &[u8] = b"\0rampart-placeholder";

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SpannedVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for SpannedVisitor<T> {
            type Value = Spanned<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value")
            }
            fn visit_newtype_struct<D: Deserializer<'de>>(
                self,
                deserializer: D,
            ) -> Result<Self::Value, D::Error> {
                T::deserialize(deserializer).map(|value| Spanned {
                    value,
                    referenced: Location::UNKNOWN,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                // NodeDe's shape: line, column, value, in this order.
                let line = map.next_entry::<String, u64>()?.map(|(_, v)| v);
                let column = map.next_entry::<String, u64>()?.map(|(_, v)| v);
                let value = match map.next_key::<String>()? {
                    Some(_) => map.next_value::<T>()?,
                    None => return Err(de::Error::missing_field("value")),
                };
                Ok(Spanned {
                    value,
                    referenced: Location {
                        line: line.unwrap_or(0),
                        column: column.unwrap_or(0),
                    },
                })
            }
        }
        deserializer.deserialize_newtype_struct(SPANNED, SpannedVisitor(std::marker::PhantomData))
    }
}

type NodeId = usize;

#[derive(Debug)]
enum Kind {
    Null,
    /// A plain scalar that YAML resolves to a boolean, with its source text.
    Bool(bool, String),
    U64(u64, String),
    I64(i64, String),
    F64(f64, String),
    Str(String),
    Seq(Vec<NodeId>),
    /// Entries as (key node, value node).
    Map(Vec<(NodeId, NodeId)>),
}

#[derive(Debug)]
struct Node {
    at: Location,
    parent: Option<NodeId>,
    /// The user's field path, e.g. `routes[0].split[1].percent` (`""` for the document).
    path: String,
    kind: Kind,
}

/// A parsed YAML document: every node with its position and field path.
#[derive(Debug)]
pub struct Tree {
    nodes: Vec<Node>,
}

/// What serde-saphyr gives while the tree is built.
enum Raw {
    Null,
    Bool(bool),
    U64(u64),
    I64(i64),
    F64(f64),
    Str(String),
    Seq(Vec<serde_saphyr::Spanned<Raw>>),
    Map(Vec<(serde_saphyr::Spanned<Raw>, serde_saphyr::Spanned<Raw>)>),
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RawVisitor;
        impl<'de> Visitor<'de> for RawVisitor {
            type Value = Raw;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E>(self) -> Result<Raw, E> {
                Ok(Raw::Null)
            }
            fn visit_none<E>(self) -> Result<Raw, E> {
                Ok(Raw::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
                Raw::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
                Ok(Raw::Bool(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Raw, E> {
                Ok(Raw::U64(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
                Ok(Raw::I64(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Raw, E> {
                Ok(Raw::F64(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
                Ok(Raw::Str(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Raw, E> {
                Ok(Raw::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Raw::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key()? {
                    let value = map.next_value()?;
                    entries.push((key, value));
                }
                Ok(Raw::Map(entries))
            }
        }
        deserializer.deserialize_any(RawVisitor)
    }
}

impl Tree {
    /// Parses `text` with serde-saphyr (syntax, duplicate keys, alias budget).
    pub fn parse(text: &str) -> Result<Tree, ConfigError> {
        let root: serde_saphyr::Spanned<Raw> = serde_saphyr::from_str(text).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            ConfigError {
                line,
                column,
                path: String::new(),
                message: strip_position(&e.without_snippet().to_string()),
            }
        })?;
        let mut tree = Tree { nodes: Vec::new() };
        tree.add(text, root, None, String::new());
        Ok(tree)
    }

    fn add(
        &mut self,
        text: &str,
        raw: serde_saphyr::Spanned<Raw>,
        parent: Option<NodeId>,
        path: String,
    ) -> NodeId {
        let id = self.nodes.len();
        // The source text of a plain scalar YAML resolved to a non-string (`yes`, `007`,
        // `1e3`): a string field gets what the user wrote.
        let source = || {
            let span = raw.defined.span();
            span.byte_offset()
                .zip(span.byte_len())
                .and_then(|(o, l)| text.get(o as usize..(o + l) as usize))
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        let at = Location {
            line: raw.referenced.line(),
            column: raw.referenced.column(),
        };
        let (kind, children) = match raw.value {
            Raw::Null => (Kind::Null, None),
            Raw::Bool(b) => (Kind::Bool(b, source()), None),
            Raw::U64(v) => (Kind::U64(v, source()), None),
            Raw::I64(v) => (Kind::I64(v, source()), None),
            Raw::F64(v) => (Kind::F64(v, source()), None),
            Raw::Str(s) => (Kind::Str(s), None),
            Raw::Seq(items) => (Kind::Seq(Vec::new()), Some(Err(items))),
            Raw::Map(entries) => (Kind::Map(Vec::new()), Some(Ok(entries))),
        };
        self.nodes.push(Node {
            at,
            parent,
            path: path.clone(),
            kind,
        });
        match children {
            None => {}
            Some(Err(items)) => {
                let ids: Vec<NodeId> = items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| self.add(text, item, Some(id), format!("{path}[{i}]")))
                    .collect();
                self.nodes[id].kind = Kind::Seq(ids);
            }
            Some(Ok(entries)) => {
                let mut ids = Vec::new();
                for (key, value) in entries {
                    let key_id = self.add(text, key, Some(id), path.clone());
                    let name = self.text(key_id).unwrap_or("?").to_string();
                    let entry_path = if path.is_empty() {
                        name
                    } else {
                        format!("{path}.{name}")
                    };
                    self.nodes[key_id].path = entry_path.clone();
                    let value_id = self.add(text, value, Some(id), entry_path);
                    ids.push((key_id, value_id));
                }
                self.nodes[id].kind = Kind::Map(ids);
            }
        }
        id
    }

    /// A scalar's text as a string field reads it.
    fn text(&self, id: NodeId) -> Option<&str> {
        match &self.nodes[id].kind {
            Kind::Str(s) => Some(s),
            Kind::Bool(_, s) | Kind::U64(_, s) | Kind::I64(_, s) | Kind::F64(_, s) => Some(s),
            _ => None,
        }
    }

    /// How a node is named in "expected X, found Y".
    fn describe(&self, id: NodeId) -> String {
        match &self.nodes[id].kind {
            Kind::Null => "an empty value".to_string(),
            Kind::Seq(_) => "a list".to_string(),
            Kind::Map(_) => "a mapping".to_string(),
            _ => format!("{:?}", self.text(id).unwrap_or_default()),
        }
    }
}

/// Drops saphyr's own position text (`line N column M:` before, `at line N, column M`
/// after): the position is rendered separately.
fn strip_position(message: &str) -> String {
    let mut first = message.lines().next().unwrap_or(message).trim();
    if let Some(rest) = first.strip_prefix("error: ") {
        first = rest;
    }
    if let Some(rest) = first.strip_prefix("line ") {
        if let Some((_, after)) = rest.split_once(": ") {
            if rest.contains("column") {
                first = after;
            }
        }
    }
    match first.rfind(" at line ") {
        Some(i) => first[..i].to_string(),
        None => first.to_string(),
    }
}

/// What the passes have learnt about the tree.
#[derive(Default)]
struct State {
    /// Nodes read as placeholders.
    bad: HashSet<NodeId>,
    /// Required fields absent from a mapping: read as placeholders.
    missing: HashMap<NodeId, Vec<&'static str>>,
    errors: Vec<ConfigError>,
    reported: HashSet<(NodeId, String)>,
    /// Paths whose semantic errors would be about placeholders.
    quiet: Vec<String>,
}

impl State {
    fn report(&mut self, tree: &Tree, id: NodeId, path: &str, message: String) {
        if self.reported.insert((id, message.clone())) {
            let at = tree.nodes[id].at;
            self.errors.push(ConfigError {
                line: at.line,
                column: at.column,
                path: path.to_string(),
                message,
            });
        }
    }

    fn quiet(&mut self, path: &str) {
        if !self.quiet.iter().any(|q| q == path) {
            self.quiet.push(path.to_string());
        }
    }
}

/// Where an error that aborted a pass came from.
#[derive(Debug, Clone)]
enum Origin {
    /// A node of the file.
    Node(NodeId),
    /// A placeholder standing in for a field of this node.
    Placeholder(NodeId),
}

/// The error of a pass: what serde said and which node it was about.
#[derive(Debug)]
pub struct DeError {
    message: String,
    missing: Option<&'static str>,
    origin: Option<Origin>,
}

impl DeError {
    fn from(mut self, origin: Origin) -> Self {
        if self.origin.is_none() {
            self.origin = Some(origin);
        }
        self
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            message: msg.to_string(),
            missing: None,
            origin: None,
        }
    }

    fn missing_field(field: &'static str) -> Self {
        DeError {
            message: format!("missing field `{field}`"),
            missing: Some(field),
            origin: None,
        }
    }
}

/// The result of reading a config file leniently.
pub struct Lenient<T> {
    /// The raw config, with placeholders where values were bad; `None` when the text is not
    /// YAML (or the errors could not be stepped over).
    pub value: Option<T>,
    /// Every syntax, unknown-field and type error, each with its position and path.
    pub errors: Vec<ConfigError>,
    /// Paths of the values read as placeholders: a semantic error at or under one of them
    /// is a consequence of an error already reported.
    pub quiet: Vec<String>,
}

impl<T> Lenient<T> {
    /// Whether a semantic error at `path` is about a placeholder.
    pub fn is_quiet(&self, path: &str) -> bool {
        self.quiet.iter().any(|q| {
            q.is_empty()
                || path
                    .strip_prefix(q.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })
    }
}

/// Passes at most: each marks one more node bad, so this only bounds pathological files.
const MAX_PASSES: usize = 500;

/// Reads `text` as a `T`, collecting every error instead of stopping at the first.
pub fn deserialize<T: de::DeserializeOwned>(text: &str) -> Lenient<T> {
    let tree = match Tree::parse(text) {
        Ok(tree) => tree,
        Err(e) => {
            return Lenient {
                value: None,
                errors: vec![e],
                quiet: Vec::new(),
            }
        }
    };
    let state = RefCell::new(State::default());
    let mut value = None;
    for _ in 0..MAX_PASSES {
        let de = NodeDe {
            tree: &tree,
            state: &state,
            target: Target::Node(0),
        };
        match T::deserialize(de) {
            Ok(v) => {
                value = Some(v);
                break;
            }
            Err(e) => {
                if !state.borrow_mut().step_over(&tree, e) {
                    break;
                }
            }
        }
    }
    let state = state.into_inner();
    let mut errors = state.errors;
    if value.is_none() && errors.is_empty() {
        errors.push(ConfigError {
            line: 0,
            column: 0,
            path: String::new(),
            message: "too many errors to read this file; fix the ones above".to_string(),
        });
    }
    Lenient {
        value,
        errors,
        quiet: state.quiet,
    }
}

impl State {
    /// Records the error that aborted a pass and marks its node so the next pass gets
    /// further; false when nothing is left to mark.
    fn step_over(&mut self, tree: &Tree, e: DeError) -> bool {
        match e.origin {
            Some(Origin::Node(id)) if !self.bad.contains(&id) => {
                let path = tree.nodes[id].path.clone();
                if let Some(field) = e.missing {
                    let fields = self.missing.entry(id).or_default();
                    if !fields.contains(&field) {
                        fields.push(field);
                        let message = e.message;
                        self.report(tree, id, &path, message);
                        self.quiet(&join(&path, field));
                        return true;
                    }
                }
                self.report(tree, id, &path, e.message);
                self.bad.insert(id);
                self.quiet(&path);
                true
            }
            // A placeholder the type would not take, or a node already bad: the error is a
            // consequence of one reported; mark the nearest enclosing node that is not bad.
            Some(Origin::Node(id)) | Some(Origin::Placeholder(id)) => {
                let mut at = Some(id);
                while let Some(id) = at {
                    if !self.bad.contains(&id) {
                        self.bad.insert(id);
                        let path = tree.nodes[id].path.clone();
                        self.quiet(&path);
                        return true;
                    }
                    at = tree.nodes[id].parent;
                }
                false
            }
            None => false,
        }
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

#[derive(Clone, Copy)]
enum Target {
    Node(NodeId),
    /// A placeholder for a bad node or a missing field of this node.
    Placeholder(NodeId),
}

/// A serde `Deserializer` over one node of a [`Tree`] that reports and steps over errors.
pub struct NodeDe<'a> {
    tree: &'a Tree,
    state: &'a RefCell<State>,
    target: Target,
}

impl<'a> NodeDe<'a> {
    fn at(&self, target: Target) -> NodeDe<'a> {
        NodeDe {
            tree: self.tree,
            state: self.state,
            target,
        }
    }

    fn origin(&self) -> Origin {
        match self.target {
            Target::Node(id) => Origin::Node(id),
            Target::Placeholder(id) => Origin::Placeholder(id),
        }
    }

    /// The node, or `None` for a placeholder (a bad node reads as one).
    fn node(&self) -> Option<NodeId> {
        match self.target {
            Target::Node(id) if !self.state.borrow().bad.contains(&id) => Some(id),
            _ => None,
        }
    }

    fn kind(&self, id: NodeId) -> &'a Kind {
        &self.tree.nodes[id].kind
    }

    /// Reports `message` at this node, marks it bad, and returns its placeholder.
    fn wrong(&self, id: NodeId, message: String) -> NodeDe<'a> {
        let mut state = self.state.borrow_mut();
        let path = self.tree.nodes[id].path.clone();
        state.report(self.tree, id, &path, message);
        state.bad.insert(id);
        state.quiet(&path);
        self.at(Target::Placeholder(id))
    }

    fn expected(&self, id: NodeId, what: &str) -> NodeDe<'a> {
        self.wrong(
            id,
            format!("expected {what}, found {}", self.tree.describe(id)),
        )
    }

    fn tag<T>(&self, result: Result<T, DeError>) -> Result<T, DeError> {
        result.map_err(|e| e.from(self.origin()))
    }

    /// An integer of type `T`, or a report and the placeholder.
    fn integer<T, V>(
        self,
        what: &str,
        visit: impl FnOnce(T) -> Result<V, DeError>,
        zero: T,
    ) -> Result<V, DeError>
    where
        T: TryFrom<i128> + Copy,
    {
        let Some(id) = self.node() else {
            return visit(zero);
        };
        let value: Option<i128> = match self.kind(id) {
            Kind::U64(v, _) => Some(i128::from(*v)),
            Kind::I64(v, _) => Some(i128::from(*v)),
            Kind::Str(s) => s.trim().parse::<i128>().ok(),
            Kind::F64(_, s) => s.parse::<i128>().ok(),
            _ => None,
        };
        let result = match value {
            Some(v) => match T::try_from(v) {
                Ok(t) => visit(t),
                Err(_) => {
                    self.wrong(id, format!("{v} is out of range for {what}"));
                    visit(zero)
                }
            },
            None => {
                self.expected(id, what);
                visit(zero)
            }
        };
        self.tag(result)
    }
}

macro_rules! integers {
    ($($method:ident $ty:ty => $visit:ident, $what:expr;)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            self.integer::<$ty, V::Value>($what, |v| visitor.$visit(v), 0)
        }
    )*};
}

impl<'de, 'a> Deserializer<'de> for NodeDe<'a> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let Some(id) = self.node() else {
            return self.tag(visitor.visit_bytes(PLACEHOLDER));
        };
        let result = match self.kind(id) {
            Kind::Null => visitor.visit_unit(),
            Kind::Bool(b, _) => visitor.visit_bool(*b),
            Kind::U64(v, _) => visitor.visit_u64(*v),
            Kind::I64(v, _) => visitor.visit_i64(*v),
            Kind::F64(v, _) => visitor.visit_f64(*v),
            Kind::Str(s) => visitor.visit_str(s),
            Kind::Seq(_) => return self.deserialize_seq(visitor),
            Kind::Map(_) => return self.deserialize_map(visitor),
        };
        self.tag(result)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let Some(id) = self.node() else {
            return self.tag(visitor.visit_bool(false));
        };
        let value = match self.kind(id) {
            Kind::Bool(b, _) => Some(*b),
            Kind::Str(s) if s == "true" => Some(true),
            Kind::Str(s) if s == "false" => Some(false),
            _ => None,
        };
        let result = match value {
            Some(b) => visitor.visit_bool(b),
            None => {
                self.expected(id, "true or false");
                visitor.visit_bool(false)
            }
        };
        self.tag(result)
    }

    integers! {
        deserialize_i8 i8 => visit_i8, "a whole number from -128 to 127";
        deserialize_i16 i16 => visit_i16, "a whole number from -32768 to 32767";
        deserialize_i32 i32 => visit_i32, "a whole number (32 bits)";
        deserialize_i64 i64 => visit_i64, "a whole number (64 bits)";
        deserialize_u8 u8 => visit_u8, "a whole number from 0 to 255";
        deserialize_u16 u16 => visit_u16, "a whole number from 0 to 65535";
        deserialize_u32 u32 => visit_u32, "a whole number from 0 to 4294967295";
        deserialize_u64 u64 => visit_u64, "a whole number from 0 to 2^64-1";
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let Some(id) = self.node() else {
            return self.tag(visitor.visit_f64(0.0));
        };
        let value = match self.kind(id) {
            Kind::F64(v, _) => Some(*v),
            Kind::U64(v, _) => Some(*v as f64),
            Kind::I64(v, _) => Some(*v as f64),
            Kind::Str(s) => s.trim().parse::<f64>().ok().filter(|v| v.is_finite()),
            _ => None,
        };
        let result = match value {
            Some(v) => visitor.visit_f64(v),
            None => {
                self.expected(id, "a number");
                visitor.visit_f64(0.0)
            }
        };
        self.tag(result)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let Some(id) = self.node() else {
            return self.tag(visitor.visit_str(""));
        };
        let result = match self.tree.text(id) {
            Some(s) => visitor.visit_str(s),
            None => {
                self.expected(id, "a string");
                visitor.visit_str("")
            }
        };
        self.tag(result)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = match self.node() {
            None => visitor.visit_none(),
            Some(id) if matches!(self.kind(id), Kind::Null) => visitor.visit_none(),
            Some(_) => {
                let origin = self.origin();
                return visitor.visit_some(self).map_err(|e| e.from(origin));
            }
        };
        self.tag(result)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if let Some(id) = self.node() {
            if !matches!(self.kind(id), Kind::Null) {
                self.expected(id, "an empty value");
            }
        }
        self.tag(visitor.visit_unit())
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let origin = self.origin();
        if name == SPANNED {
            let at = match self.target {
                Target::Node(id) | Target::Placeholder(id) => self.tree.nodes[id].at,
            };
            return visitor
                .visit_map(SpanAccess {
                    at,
                    step: 0,
                    value: Some(self),
                })
                .map_err(|e| e.from(origin));
        }
        visitor
            .visit_newtype_struct(self)
            .map_err(|e| e.from(origin))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let items: &[NodeId] = match self.node() {
            None => &[],
            Some(id) => match self.kind(id) {
                Kind::Seq(items) => items,
                Kind::Null => &[],
                _ => {
                    self.expected(id, "a list");
                    &[]
                }
            },
        };
        let result = visitor.visit_seq(Items {
            de: self.at(self.target),
            items: items.iter(),
        });
        self.tag(result)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.mapping(None, visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.mapping(Some(fields), visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let first = variants.first().copied().unwrap_or_default();
        let Some(id) = self.node() else {
            return self.tag(visitor.visit_enum(first.into_deserializer()));
        };
        let result = match self.tree.text(id) {
            Some(s) if variants.contains(&s) => visitor.visit_enum(s.into_deserializer()),
            _ => {
                self.wrong(
                    id,
                    format!(
                        "unknown value {}: expected one of {}",
                        self.tree.describe(id),
                        variants.join(", ")
                    ),
                );
                visitor.visit_enum(first.into_deserializer())
            }
        };
        self.tag(result)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.tag(visitor.visit_unit())
    }
}

impl<'a> NodeDe<'a> {
    /// A mapping; with `fields` (a struct), unknown keys are reported and skipped, and
    /// required fields known to be missing are given placeholders.
    fn mapping<'de, V: Visitor<'de>>(
        self,
        fields: Option<&'static [&'static str]>,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let mut entries: Vec<(Key<'a>, Target)> = Vec::new();
        match (self.node(), self.target) {
            (Some(id), _) => {
                match self.kind(id) {
                    Kind::Map(pairs) => {
                        for (key, value) in pairs {
                            let name = self.tree.text(*key).unwrap_or("?");
                            if let Some(fields) = fields {
                                if !fields.contains(&name) {
                                    let mut state = self.state.borrow_mut();
                                    let path = self.tree.nodes[*key].path.clone();
                                    state.report(
                                        self.tree,
                                        *key,
                                        &path,
                                        unknown_field(name, fields),
                                    );
                                    continue;
                                }
                            }
                            entries.push((Key::Node(*key), Target::Node(*value)));
                        }
                    }
                    Kind::Null => {}
                    _ => {
                        let placeholder = self.expected(id, "a mapping");
                        return placeholder.mapping(fields, visitor);
                    }
                }
                let missing = self.state.borrow().missing.get(&id).cloned();
                for field in missing.into_iter().flatten() {
                    entries.push((Key::Name(field), Target::Placeholder(id)));
                }
            }
            (None, Target::Node(id) | Target::Placeholder(id)) => {
                for field in fields.into_iter().flatten() {
                    entries.push((Key::Name(field), Target::Placeholder(id)));
                }
            }
        }
        let result = visitor.visit_map(Entries {
            de: self.at(self.target),
            entries: entries.into_iter(),
            value: None,
        });
        self.tag(result)
    }
}

fn unknown_field(name: &str, fields: &[&str]) -> String {
    let close = fields
        .iter()
        .map(|f| (edit_distance(name, f), *f))
        .filter(|(d, f)| *d <= 2 && *d < f.len())
        .min();
    match close {
        Some((_, f)) => format!("unknown field {name:?}; did you mean {f:?}?"),
        None => format!(
            "unknown field {name:?}; expected one of: {}",
            fields.join(", ")
        ),
    }
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

enum Key<'a> {
    Node(NodeId),
    Name(&'a str),
}

struct Entries<'a, I> {
    de: NodeDe<'a>,
    entries: I,
    value: Option<Target>,
}

impl<'de, 'a, I: Iterator<Item = (Key<'a>, Target)>> MapAccess<'de> for Entries<'a, I> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some(value);
        match key {
            Key::Node(id) => seed.deserialize(self.de.at(Target::Node(id))).map(Some),
            Key::Name(name) => seed
                .deserialize(de::value::StrDeserializer::<DeError>::new(name))
                .map(Some),
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, DeError> {
        let target = self.value.take().unwrap_or(self.de.target);
        seed.deserialize(self.de.at(target))
    }
}

struct Items<'a, I> {
    de: NodeDe<'a>,
    items: I,
}

impl<'de, 'a, 'i, I: Iterator<Item = &'i NodeId>> SeqAccess<'de> for Items<'a, I> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.items.next() {
            Some(id) => seed.deserialize(self.de.at(Target::Node(*id))).map(Some),
            None => Ok(None),
        }
    }
}

/// The map a [`Spanned`] reads: `line`, `column`, then `value` from the node.
struct SpanAccess<'a> {
    at: Location,
    step: u8,
    value: Option<NodeDe<'a>>,
}

impl<'de, 'a> MapAccess<'de> for SpanAccess<'a> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let key = match self.step {
            0 => "line",
            1 => "column",
            2 => "value",
            _ => return Ok(None),
        };
        seed.deserialize(de::value::StrDeserializer::<DeError>::new(key))
            .map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, DeError> {
        self.step += 1;
        match self.step {
            1 => seed.deserialize(self.at.line.into_deserializer()),
            2 => seed.deserialize(self.at.column.into_deserializer()),
            _ => match self.value.take() {
                Some(de) => seed.deserialize(de),
                None => Err(de::Error::custom("value read twice")),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        name: Spanned<String>,
        count: Option<u32>,
        items: Option<Vec<Spanned<Item>>>,
        mode: Option<Mode>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Item {
        id: u32,
        label: Option<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "lowercase")]
    enum Mode {
        Fast,
        Safe,
    }

    fn errors(text: &str) -> Vec<String> {
        let mut errors = deserialize::<Doc>(text).errors;
        errors.sort_by_key(|e| (e.line, e.column));
        errors
            .iter()
            .map(|e| e.to_string().trim().to_string())
            .collect()
    }

    #[test]
    fn a_good_document_reads_with_positions() {
        let out = deserialize::<Doc>(
            "name: x\nitems:\n  - {id: 1}\n  - id: 2\n    label: yes\nmode: safe\n",
        );
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let doc = out.value.unwrap_or_else(|| panic!("no value"));
        assert_eq!(doc.name.value, "x");
        assert_eq!(
            (doc.name.referenced.line(), doc.name.referenced.column()),
            (1, 7)
        );
        let items = doc.items.unwrap_or_default();
        assert_eq!(items[1].referenced.line(), 4);
        assert_eq!((items[0].value.id, items[1].value.id), (1, 2));
        assert_eq!(doc.count, None);
        // A plain `yes` is a boolean to YAML; a string field gets the text written.
        assert_eq!(items[1].value.label.as_deref(), Some("yes"));
        assert_eq!(doc.mode, Some(Mode::Safe));
    }

    #[test]
    fn every_type_and_unknown_field_error_is_reported_with_position_and_path() {
        let got = errors("name: x\ncount: lots\nitems:\n  - {id: one, labl: red}\n  - {id: 2}\n  - {label: z}\nmode: slow\nextra: 1\n");
        assert_eq!(
            got,
            [
                "2:8: count: expected a whole number from 0 to 4294967295, found \"lots\"",
                "4:10: items[0].id: expected a whole number from 0 to 4294967295, found \"one\"",
                "4:15: items[0].labl: unknown field \"labl\"; did you mean \"label\"?",
                "6:5: items[2]: missing field `id`",
                "7:7: mode: unknown value \"slow\": expected one of fast, safe",
                "8:1: extra: unknown field \"extra\"; expected one of: name, count, items, mode",
            ]
        );
    }

    #[test]
    fn placeholders_are_reported_as_quiet_paths() {
        let out = deserialize::<Doc>("name: [a]\ncount: 3\n");
        assert_eq!(out.errors.len(), 1, "{:?}", out.errors);
        assert!(out.is_quiet("name"));
        assert!(!out.is_quiet("count"));
        assert!(!out.is_quiet("names"));
    }

    #[test]
    fn syntax_errors_and_duplicate_keys_stop_at_the_parse() {
        let out = deserialize::<Doc>("name: x\nname: y\n");
        assert_eq!(out.errors.len(), 1);
        assert_eq!(out.errors[0].line, 2);
        assert!(
            out.errors[0].message.contains("duplicate"),
            "{:?}",
            out.errors
        );
        let out = deserialize::<Doc>("name: [x\n");
        assert!(out.value.is_none());
        assert_eq!(out.errors.len(), 1);
    }

    #[test]
    fn alias_expansion_stays_bounded() {
        let mut text = String::from("name: x\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..6 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let out = deserialize::<Doc>(&text);
        assert!(out.value.is_none());
        assert_eq!(out.errors.len(), 1, "{:?}", out.errors);
        assert!(out.errors[0].message.contains("budget"), "{:?}", out.errors);
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("retries", "retires"), 2);
        assert_eq!(edit_distance("step", "steps"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
