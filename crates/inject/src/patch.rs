//! RFC 6902 JSON Patch between two JSON documents, for the admission webhook's answer
//! (the API server applies a patch, never a whole object).
//!
//! The diff is structural on objects (add, remove, recurse) and whole-value on arrays and
//! scalars: a changed array is replaced, which is always correct and keeps the patch small
//! enough for pod specs (a handful of operations).

use serde_json::{Map, Value};

/// The operations that turn `original` into `patched`, with paths under `/`.
pub fn diff(original: &Value, patched: &Value) -> Vec<Value> {
    let mut ops = Vec::new();
    diff_into(original, patched, "", &mut ops);
    ops
}

/// RFC 6901: `~` becomes `~0`, `/` becomes `~1` in one path segment.
pub fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn diff_into(a: &Value, b: &Value, path: &str, ops: &mut Vec<Value>) {
    if a == b {
        return;
    }
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => diff_objects(a, b, path, ops),
        _ => ops.push(op("replace", path, Some(b))),
    }
}

fn diff_objects(a: &Map<String, Value>, b: &Map<String, Value>, path: &str, ops: &mut Vec<Value>) {
    for key in a.keys() {
        if !b.contains_key(key) {
            ops.push(op("remove", &format!("{path}/{}", escape(key)), None));
        }
    }
    for (key, new) in b {
        let child = format!("{path}/{}", escape(key));
        match a.get(key) {
            None => ops.push(op("add", &child, Some(new))),
            Some(old) => diff_into(old, new, &child, ops),
        }
    }
}

fn op(name: &str, path: &str, value: Option<&Value>) -> Value {
    let mut m = Map::new();
    m.insert("op".into(), Value::String(name.into()));
    m.insert("path".into(), Value::String(path.into()));
    if let Some(v) = value {
        m.insert("value".into(), v.clone());
    }
    Value::Object(m)
}

/// Applies `ops` as produced by [`diff`] (add, remove, replace on object members and the
/// root). Used by tests to prove the patch round-trips; not a general RFC 6902 engine.
pub fn apply(doc: &Value, ops: &[Value]) -> Option<Value> {
    let mut doc = doc.clone();
    for o in ops {
        let name = o.get("op")?.as_str()?;
        let path = o.get("path")?.as_str()?;
        if path.is_empty() {
            doc = o.get("value")?.clone();
            continue;
        }
        let segments: Vec<String> = path
            .split('/')
            .skip(1)
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect();
        let (last, parents) = segments.split_last()?;
        let mut target = &mut doc;
        for s in parents {
            target = target.as_object_mut()?.get_mut(s)?;
        }
        let map = target.as_object_mut()?;
        match name {
            "add" | "replace" => {
                map.insert(last.clone(), o.get("value")?.clone());
            }
            "remove" => {
                map.remove(last)?;
            }
            _ => return None,
        }
    }
    Some(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn diff_adds_removes_and_replaces_and_applies_back() {
        let a =
            json!({"metadata": {"labels": {"a": "1", "x/y": "2"}}, "spec": {"containers": [1]}});
        let b = json!({"metadata": {"labels": {"a": "1"}, "annotations": {"p~q": "v"}}, "spec": {"containers": [1, 2]}});
        let ops = diff(&a, &b);
        assert!(ops.contains(&json!({"op": "remove", "path": "/metadata/labels/x~1y"})));
        assert!(ops.contains(
            &json!({"op": "add", "path": "/metadata/annotations", "value": {"p~q": "v"}})
        ));
        assert!(
            ops.contains(&json!({"op": "replace", "path": "/spec/containers", "value": [1, 2]}))
        );
        assert_eq!(apply(&a, &ops), Some(b));
    }

    #[test]
    fn equal_documents_give_an_empty_patch() {
        let a = json!({"a": [1, {"b": 2}]});
        assert!(diff(&a, &a).is_empty());
    }
}
