//! Dotted paths into a document: `title`, `nlp.segments`, `comments.body`.

use std::ops::ControlFlow;

use serde_json::{Map, Value};

use crate::task::Document;

/// A dotted path split into its segments once, when the spec is compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldPath(Vec<String>);

impl FieldPath {
    /// Splits `path` at dots; `None` when it or one of its segments is empty.
    pub(crate) fn parse(path: &str) -> Option<Self> {
        let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
        if segments.iter().any(String::is_empty) {
            None
        } else {
            Some(Self(segments))
        }
    }

    /// Calls `f` with every string the path reaches: a string value, the strings of an array
    /// (arrays of arrays too), and through arrays of objects on the way (`comments.body` reads
    /// the `body` of every element of `comments`). Anything else is ignored.
    pub(crate) fn for_each_str<'a, F>(&self, doc: &'a Document, f: &mut F) -> ControlFlow<()>
    where
        F: FnMut(&'a str) -> ControlFlow<()>,
    {
        match self.0.split_first() {
            Some((first, rest)) => doc
                .get(first)
                .map_or(ControlFlow::Continue(()), |v| visit(v, rest, f)),
            None => ControlFlow::Continue(()),
        }
    }

    /// The string at the path, through objects only.
    pub(crate) fn get_str<'a>(&self, doc: &'a Document) -> Option<&'a str> {
        let (first, rest) = self.0.split_first()?;
        let mut value = doc.get(first)?;
        for segment in rest {
            value = value.as_object()?.get(segment)?;
        }
        value.as_str()
    }

    /// Stores `value` at the path, creating objects on the way. A value in the way that is not
    /// an object is replaced by one: the configured output path wins over whatever was there.
    pub(crate) fn insert(&self, doc: &mut Document, value: Value) {
        let Some((last, parents)) = self.0.split_last() else {
            return;
        };
        let mut map = doc;
        for segment in parents {
            let Some(next) = object_entry(map, segment) else {
                return;
            };
            map = next;
        }
        map.insert(last.clone(), value);
    }
}

/// The object under `key`, created (or replacing a non-object) when needed. Always `Some`;
/// the `Option` only spares a panic path.
pub(crate) fn object_entry<'m>(
    map: &'m mut Map<String, Value>,
    key: &str,
) -> Option<&'m mut Map<String, Value>> {
    let entry = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    entry.as_object_mut()
}

fn visit<'a, F>(value: &'a Value, rest: &[String], f: &mut F) -> ControlFlow<()>
where
    F: FnMut(&'a str) -> ControlFlow<()>,
{
    match (value, rest.split_first()) {
        (Value::String(s), None) => f(s),
        (Value::Array(items), _) => {
            for item in items {
                visit(item, rest, f)?;
            }
            ControlFlow::Continue(())
        }
        (Value::Object(map), Some((first, rest))) => map
            .get(first)
            .map_or(ControlFlow::Continue(()), |v| visit(v, rest, f)),
        _ => ControlFlow::Continue(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn doc(value: Value) -> Document {
        match value {
            Value::Object(map) => map,
            _ => panic!("test documents are objects"),
        }
    }

    fn strings(path: &str, d: &Document) -> Vec<String> {
        let mut out = Vec::new();
        let _ = FieldPath::parse(path).unwrap().for_each_str(d, &mut |s| {
            out.push(s.to_owned());
            ControlFlow::Continue(())
        });
        out
    }

    #[test]
    fn paths_reach_strings_nested_objects_and_arrays() {
        let d = doc(json!({
            "title": "t",
            "nlp": {"segments": ["a", "b", 3, ["c"]], "lang": {"code": "zh"}},
            "comments": [{"body": "x"}, {"body": "y"}, {"other": "z"}, "w"],
            "n": 5,
        }));
        let cases: &[(&str, &[&str])] = &[
            ("title", &["t"]),
            ("nlp.segments", &["a", "b", "c"]),
            ("nlp.lang.code", &["zh"]),
            ("comments.body", &["x", "y"]),
            ("n", &[]),
            ("missing", &[]),
            ("title.deeper", &[]),
        ];
        for (path, want) in cases {
            assert_eq!(strings(path, &d), *want, "path {path}");
        }
    }

    #[test]
    fn empty_segments_are_not_paths() {
        for bad in ["", ".", "a.", ".a", "a..b"] {
            assert!(FieldPath::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn insert_creates_objects_and_replaces_what_is_in_the_way() {
        let mut d = doc(json!({"a": 1, "keep": true}));
        FieldPath::parse("x.y.z")
            .unwrap()
            .insert(&mut d, json!("v"));
        FieldPath::parse("a.b").unwrap().insert(&mut d, json!(2));
        assert_eq!(
            Value::Object(d.clone()),
            json!({"a": {"b": 2}, "keep": true, "x": {"y": {"z": "v"}}})
        );
        assert_eq!(FieldPath::parse("x.y.z").unwrap().get_str(&d), Some("v"));
        assert_eq!(FieldPath::parse("a.b").unwrap().get_str(&d), None);
    }
}
