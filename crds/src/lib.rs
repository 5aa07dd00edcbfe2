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
