//! The `MigrateJob` custom resource of migrate-operator.
//!
//! The Rust types here are the single source of the API: the CRD YAML in `crds/` (and its copy
//! in the Helm chart) is generated from them (`cargo run -p migrate-crds --bin crdgen --
//! --write`), the operator reconciles them, and the worker reads its pipeline file through
//! them, so the custom resource and the worker cannot disagree.
//!
//! ```
//! use kube::CustomResourceExt;
//! let crd = migrate_crds::MigrateJob::crd();
//! assert_eq!(crd.spec.names.short_names, Some(vec!["mj".to_owned()]));
//! ```

pub mod memory;
pub mod pipeline;
pub mod quantity;
pub mod spec;
pub mod status;
pub mod validate;

pub use spec::*;
pub use status::*;

use kube::CustomResourceExt;

/// Joins the lines of every description in `schema` into paragraphs: `///` comments are wrapped
/// at 100 columns, and schemars keeps each line break, so `kubectl explain` would wrap them a
/// second time, raggedly. A blank line (a paragraph break) is kept.
pub fn join_doc_lines(schema: &mut schemars::Schema) {
    fn walk(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(text)) = map.get_mut("description") {
                    *text = join_lines(text);
                }
                map.values_mut().for_each(walk);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    if let Some(map) = schema.as_object_mut() {
        map.values_mut().for_each(walk);
        if let Some(serde_json::Value::String(text)) = map.get_mut("description") {
            *text = join_lines(text);
        }
    }
}

/// `text` with the lines of each paragraph joined by a space; paragraphs stay apart.
fn join_lines(text: &str) -> String {
    text.split("\n\n")
        .map(|paragraph| {
            paragraph
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// The CRD as YAML, exactly as committed in `crds/migratejob.yaml`.
///
/// # Errors
/// If the CRD cannot be serialised (not expected for a derived CRD).
pub fn crd_yaml() -> Result<String, serde_saphyr::ser_error::Error> {
    let body = serde_saphyr::to_string(&MigrateJob::crd())?;
    Ok(format!(
        "# Generated from the Rust types in crds/src by `cargo run -p migrate-crds --bin crdgen -- --write`.\n# Do not edit by hand: a test fails when this file and the types disagree.\n{body}"
    ))
}
