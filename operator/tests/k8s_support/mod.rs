//! What the chart and example tests share: the repository's paths, the testbed's admin client,
//! throw-away namespaces, the CRD, and a server-side dry run of arbitrary manifests.

// Test helpers fail the test loudly on purpose.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::discovery::{self, Scope};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, CustomResourceExt};
use migrate_crds::MigrateJob;
use migrate_e2e::env::{Service, TestEnv, unique_name};
use serde_json::{Value, json};

/// Field manager of the tests' writes (and of their dry runs).
pub const MANAGER: &str = "migrate-operator-chart-tests";

/// How long a wait on the API server may take.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("operator/ has a parent")
        .to_path_buf()
}

/// Reads a file of the repository as text.
pub fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The rules of `deploy/rbac/role.yaml`, the operator's least-privilege role.
pub fn shipped_rules() -> Vec<PolicyRule> {
    let role: ClusterRole =
        serde_saphyr::from_str(&read("deploy/rbac/role.yaml")).expect("role.yaml is a ClusterRole");
    role.rules.expect("role.yaml has rules")
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

/// The testbed's admin client (`tests/testbed/up.sh k8s`); fails the test when the API server
/// does not answer.
pub async fn admin_client() -> Client {
    let env = TestEnv::load();
    env.require(&[Service::Kubernetes]).await;
    let path = env
        .kubeconfig
        .expect("a kubeconfig: run tests/testbed/up.sh k8s");
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("readable kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("valid kubeconfig");
    Client::try_from(config).expect("admin client")
}

/// The kubeconfig file of the testbed (for helm).
pub fn kubeconfig_path() -> PathBuf {
    TestEnv::load()
        .kubeconfig
        .expect("a kubeconfig: run tests/testbed/up.sh k8s")
}

/// A fresh namespace name (DNS label) starting with `prefix`.
pub fn fresh_name(prefix: &str) -> String {
    let mut name = unique_name(prefix).replace('_', "-").to_lowercase();
    name.truncate(63);
    name.trim_end_matches('-').to_owned()
}

/// Creates namespace `name`.
pub async fn create_namespace(client: &Client, name: &str) {
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot create namespace {name}: {e}"));
}

/// Deletes namespace `name` and empties its finalizers: the testbed has no namespace
/// controller, so a deleted namespace would otherwise stay Terminating forever.
pub async fn remove_namespace(client: &Client, name: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces.delete(name, &Default::default()).await;
    let body: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"finalizers": []}}))
            .unwrap();
    let _ = namespaces
        .replace_subresource("finalize", name, &PostParams::default(), &body)
        .await;
}

/// Applies `crds/migratejob.yaml` and waits until the CRD is established.
pub async fn install_crd(client: &Client) {
    let crd: CustomResourceDefinition =
        serde_saphyr::from_str(&read("crds/migratejob.yaml")).expect("a CRD");
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = MigrateJob::crd_name();
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply CRD");
    tokio::time::timeout(
        DEADLINE,
        await_condition(api, name, conditions::is_crd_established()),
    )
    .await
    .expect("CRD established")
    .expect("watch CRD");
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
