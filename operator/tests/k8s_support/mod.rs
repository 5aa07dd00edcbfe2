//! What the chart and example tests share beyond [`migrate_e2e::k8s`]: the repository's files,
//! YAML streams, and a server-side dry run of arbitrary manifests.

// Test helpers fail the test loudly on purpose.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use k8s_openapi::api::rbac::v1::PolicyRule;
use kube::Client;
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::{self, Scope};
use migrate_e2e::env::repo_root;
use migrate_e2e::k8s::{MANAGER, shipped_lease_role, shipped_role};
use serde_json::Value;

/// Reads a file of the repository as text.
pub fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The rules of `deploy/rbac/role.yaml`, the operator's least-privilege role.
pub fn shipped_rules() -> Vec<PolicyRule> {
    shipped_role().rules.expect("role.yaml has rules")
}

/// The rules of `deploy/rbac/leader-election-role.yaml`: the Lease, in the operator's namespace.
pub fn shipped_lease_rules() -> Vec<PolicyRule> {
    shipped_lease_role()
        .rules
        .expect("leader-election-role.yaml has rules")
}

/// Every document of a multi-document YAML stream, empty documents left out.
pub fn documents(yaml: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml)
        .unwrap_or_else(|e| panic!("not a YAML stream: {e}\n{yaml}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// `kind/name` of a manifest, for messages.
pub fn describe(doc: &Value) -> String {
    format!(
        "{}/{}",
        doc["kind"].as_str().unwrap_or("?"),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// Why a manifest was not validated.
#[derive(Debug)]
pub enum DryRun {
    /// The API server does not serve the kind (e.g. ServiceMonitor without its CRD).
    NotServed(String),
    /// The API server rejected the manifest.
    Rejected(String),
}

/// Validates one manifest with a server-side apply dry run (strict field validation: an unknown
/// field is an error), in `namespace` when the kind is namespaced and the manifest names none.
///
/// # Errors
/// [`DryRun`] when the kind is not served or the server rejects the manifest.
pub async fn dry_run_apply(client: &Client, namespace: &str, doc: &Value) -> Result<(), DryRun> {
    let api_version = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (resource, caps) = discovery::pinned_kind(client, &gvk)
        .await
        .map_err(|e| DryRun::NotServed(format!("{api_version} {kind}: {e}")))?;
    let api: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
        let ns = doc["metadata"]["namespace"].as_str().unwrap_or(namespace);
        Api::namespaced_with(client.clone(), ns, &resource)
    } else {
        Api::all_with(client.clone(), &resource)
    };
    let name = doc["metadata"]["name"]
        .as_str()
        .ok_or_else(|| DryRun::Rejected(format!("{} has no metadata.name", describe(doc))))?;
    let params = PatchParams::apply(MANAGER)
        .force()
        .dry_run()
        .validation_strict();
    api.patch(name, &params, &Patch::Apply(doc))
        .await
        .map(|_| ())
        .map_err(|e| DryRun::Rejected(format!("{}: {e}", describe(doc))))
}
