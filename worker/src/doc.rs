//! Dotted paths into a [`Document`]: `body`, `nlp.segments`, `author.name`.
//!
//! A path is split at every `.`; each segment is an object key. While reading, a segment that
//! meets an array is read as a zero-based index (`comments.0.text`), so the first element of a
//! `Many` query can be addressed; writing only ever creates objects.

use serde_json::{Map, Value};

use crate::task::Document;

/// The value at `dotted` in `doc`, or `None` when any segment is missing (or indexes past the
/// end of an array, or meets a scalar).
///
/// ```
/// # use migrate_worker::doc::get_path;
/// let doc = serde_json::json!({"author": {"name": "Ada"}, "tags": ["a", "b"]});
/// let doc = doc.as_object().unwrap();
/// assert_eq!(get_path(doc, "author.name"), Some(&serde_json::json!("Ada")));
/// assert_eq!(get_path(doc, "tags.1"), Some(&serde_json::json!("b")));
/// assert_eq!(get_path(doc, "author.age"), None);
/// ```
#[must_use]
pub fn get_path<'a>(doc: &'a Document, dotted: &str) -> Option<&'a Value> {
    let mut segments = dotted.split('.');
    let first = segments.next()?;
    let mut current = doc.get(first)?;
    for segment in segments {
        current = match current {
            Value::Object(map) => map.get(segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

/// Stores `value` at `dotted` in `doc`, creating the intermediate objects that are missing.
///
/// An intermediate segment that holds something other than an object (a string, an array,
/// null) is replaced by an object: the path the configuration names wins over whatever was
/// there, because the alternative, silently not storing the value, loses the newer data.
///
/// ```
/// # use migrate_worker::doc::set_path;
/// let mut doc = serde_json::Map::new();
/// set_path(&mut doc, "nlp.segments", serde_json::json!(["a"]));
/// assert_eq!(serde_json::Value::Object(doc), serde_json::json!({"nlp": {"segments": ["a"]}}));
/// ```
pub fn set_path(doc: &mut Document, dotted: &str, value: Value) {
    let (parents, last) = match dotted.rsplit_once('.') {
        Some((parents, last)) => (Some(parents), last),
        None => (None, dotted),
    };
    let mut target: &mut Map<String, Value> = doc;
    if let Some(parents) = parents {
        for segment in parents.split('.') {
            let slot = target
                .entry(segment.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            target = match slot {
                Value::Object(map) => map,
                // Made an object just above.
                _ => return,
            };
        }
    }
    target.insert(last.to_owned(), value);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn doc(value: Value) -> Document {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn get_path_reads_nested_objects_and_array_indexes() {
        let d = doc(
            json!({"a": {"b": {"c": 1}}, "list": [{"x": "first"}, {"x": "second"}], "s": "text"}),
        );
        assert_eq!(get_path(&d, "a.b.c"), Some(&json!(1)));
        assert_eq!(get_path(&d, "a.b"), Some(&json!({"c": 1})));
        assert_eq!(get_path(&d, "list.1.x"), Some(&json!("second")));
        assert_eq!(get_path(&d, "s"), Some(&json!("text")));
    }

    #[test]
    fn get_path_is_none_for_missing_segments_scalars_and_bad_indexes() {
        let d = doc(json!({"a": {"b": 1}, "list": [1], "s": "text"}));
        for missing in [
            "", "z", "a.z", "a.b.c", "s.x", "list.1", "list.x", "list.-1", "a.",
        ] {
            assert_eq!(get_path(&d, missing), None, "{missing}");
        }
    }

    #[test]
    fn set_path_creates_intermediate_objects_and_keeps_siblings() {
        let mut d = doc(json!({"nlp": {"lang": "zh"}}));
        set_path(&mut d, "nlp.segments.tokens", json!(["a", "b"]));
        set_path(&mut d, "top", json!(1));
        assert_eq!(
            Value::Object(d),
            json!({"nlp": {"lang": "zh", "segments": {"tokens": ["a", "b"]}}, "top": 1})
        );
    }

    #[test]
    fn set_path_replaces_a_scalar_in_the_way_and_overwrites_the_leaf() {
        let mut d = doc(json!({"nlp": "old", "leaf": {"deep": true}}));
        set_path(&mut d, "nlp.tokens", json!([1]));
        set_path(&mut d, "leaf", json!(null));
        assert_eq!(
            Value::Object(d),
            json!({"nlp": {"tokens": [1]}, "leaf": null})
        );
    }

    #[test]
    fn set_then_get_round_trips() {
        let mut d = Document::new();
        set_path(&mut d, "a.b.c", json!("v"));
        assert_eq!(get_path(&d, "a.b.c"), Some(&json!("v")));
    }
}
