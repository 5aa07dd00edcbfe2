//! Helpers for tests against the testbed's kube-apiserver (`tests/testbed/up.sh k8s`): clients
//! from the testbed's kubeconfig, the committed MigrateJob CRD, throw-away namespaces, a
//! ServiceAccount token bound to exactly `deploy/rbac/role.yaml` (so a permission missing from
//! the shipped role fails the test), and polling with a deadline.
//!
//! The testbed has no namespace controller and no garbage collector: [`remove_namespace`]
//! finalizes the namespace by hand, and a test removes what it created in it first
//! ([`remove_jobs`], [`remove_pods`], [`remove_operator_binding`]). The `remove_*` functions
//! ignore errors, so that cleaning up after a failure never hides the failure; every other
//! function fails the calling test with a message naming its input.
//!
//! ```no_run
//! # async fn demo() {
//! use migrate_e2e::k8s;
//! let admin = k8s::admin_client().await;
//! k8s::install_crd(&admin).await;
//! let ns = k8s::fresh_name("demo");
//! k8s::create_namespace(&admin, &ns).await;
//! let token = k8s::operator_token(&admin, &ns).await;
//! let operator = k8s::client(k8s::with_token(&k8s::admin_config().await, &token));
//! // ... the test, with `operator` holding the shipped role's permissions only ...
//! k8s::remove_operator_binding(&admin, &ns).await;
//! k8s::remove_namespace(&admin, &ns).await;
//! # drop(operator);
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, CustomResourceExt, ResourceExt};
use migrate_crds::{MigrateJob, MigrateJobSpec};
use serde_json::json;

use crate::env::{Service, TestEnv, repo_root, unique_name};
use crate::{chain, fail};

/// Field manager of the tests' server-side applies (the CRD, the shipped role).
pub const MANAGER: &str = "migrate-e2e";

/// How long a wait on the API server may take unless a test says otherwise.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// How often [`eventually`] probes.
pub const POLL_EVERY: Duration = Duration::from_millis(200);

/// The ServiceAccount [`operator_token`] creates (the name the chart and `deploy/` use).
pub const OPERATOR_ACCOUNT: &str = "migrate-operator";

/// The committed CRD, relative to the repository root.
const CRD_FILE: &str = "crds/migratejob.yaml";

/// The operator's least-privilege role, relative to the repository root.
const ROLE_FILE: &str = "deploy/rbac/role.yaml";

/// The operator's leader-election Role (the Lease in its own namespace), relative to the
/// repository root.
const LEASE_ROLE_FILE: &str = "deploy/rbac/leader-election-role.yaml";

/// Lifetime of the token [`operator_token`] requests.
const TOKEN_SECONDS: i64 = 3600;

/// Why a Kubernetes helper failed.
#[derive(Debug, thiserror::Error)]
enum K8sError {
    /// The kubeconfig file cannot be read or parsed.
    #[error("cannot read kubeconfig {path}")]
    ReadKubeconfig {
        /// The file.
        path: PathBuf,
        /// The reader's error.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// The kubeconfig does not make a client configuration.
    #[error("bad kubeconfig {path}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// The loader's error.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// A repository file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A repository file is not the YAML object expected.
    #[error("{path} is not a {kind}")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// The kind expected.
        kind: &'static str,
        /// The parser's error.
        #[source]
        source: serde_saphyr::Error,
    },
    /// A request to the API server failed.
    #[error("{what} failed")]
    Api {
        /// What was asked, naming the object.
        what: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
}

/// Fails the calling test with `error` and its sources.
#[track_caller]
fn or_fail<T>(result: Result<T, K8sError>) -> T {
    result.unwrap_or_else(|e| fail(chain(&e)))
}

/// Wraps a client error as [`K8sError::Api`] naming `what`.
fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> K8sError {
    let what = what.into();
    move |source| K8sError::Api { what, source }
}

/// Builds an object from JSON; only used on literals this module writes.
#[track_caller]
fn object<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value)
        .unwrap_or_else(|e| fail(format!("a literal object does not deserialize: {e}")))
}

/// The testbed's kubeconfig file ([`TestEnv::kubeconfig`]).
///
/// Fails the test when none is known, pointing at `tests/testbed/up.sh k8s`.
#[must_use]
pub fn kubeconfig_path() -> PathBuf {
    TestEnv::load().kubeconfig.unwrap_or_else(|| {
        fail("no KUBECONFIG and no .testbed/env naming one: run tests/testbed/up.sh k8s")
    })
}

/// Reads and parses the kubeconfig file at `path`.
#[must_use]
pub fn read_kubeconfig(path: &Path) -> Kubeconfig {
    or_fail(
        Kubeconfig::read_from(path).map_err(|source| K8sError::ReadKubeconfig {
            path: path.to_path_buf(),
            source,
        }),
    )
}

/// The client configuration of the kubeconfig file at `path` (its current context).
pub async fn config_from(path: &Path) -> kube::Config {
    let config =
        kube::Config::from_custom_kubeconfig(read_kubeconfig(path), &KubeConfigOptions::default())
            .await
            .map_err(|source| K8sError::Kubeconfig {
                path: path.to_path_buf(),
                source,
            });
    or_fail(config)
}

/// A client for `config`.
#[must_use]
pub fn client(config: kube::Config) -> Client {
    Client::try_from(config)
        .unwrap_or_else(|e| fail(format!("cannot build a client from the configuration: {e}")))
}

/// A client for the kubeconfig file at `path`.
pub async fn client_from(path: &Path) -> Client {
    client(config_from(path).await)
}

/// The testbed's admin configuration, after checking that the API server answers
/// ([`TestEnv::require`]); fails the test otherwise.
pub async fn admin_config() -> kube::Config {
    TestEnv::load().require(&[Service::Kubernetes]).await;
    config_from(&kubeconfig_path()).await
}

/// A client with the testbed's admin credentials (see [`admin_config`]).
pub async fn admin_client() -> Client {
    client(admin_config().await)
}

/// A client for the testbed node's cluster (`NODE_KUBECONFIG`), after checking its API server
/// answers ([`TestEnv::require`]); fails the test otherwise.
pub async fn node_client() -> Client {
    let env = TestEnv::load();
    env.require(&[Service::Node]).await;
    let Some(path) = env.node_kubeconfig else {
        unreachable!("require(Node) fails the test when no NODE_KUBECONFIG is known")
    };
    client_from(&path).await
}

/// `config` authenticating with the bearer `token` instead of its own credentials.
#[must_use]
pub fn with_token(config: &kube::Config, token: &str) -> kube::Config {
    let mut config = config.clone();
    config.auth_info = object(json!({ "token": token }));
    config
}

/// A fresh name usable as a namespace (a DNS label) starting with `prefix`.
#[must_use]
pub fn fresh_name(prefix: &str) -> String {
    let mut name = unique_name(prefix).replace('_', "-").to_lowercase();
    name.truncate(63);
    name.trim_end_matches('-').to_owned()
}

/// Creates namespace `name`.
pub async fn create_namespace(client: &Client, name: &str) {
    let namespace: Namespace = object(json!({"metadata": {"name": name}}));
    or_fail(
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .map_err(api(format!("creating namespace {name}"))),
    );
}

/// Deletes namespace `name` and empties its finalizers: the testbed has no namespace
/// controller, so a deleted namespace would otherwise stay Terminating forever. Errors are
/// ignored.
pub async fn remove_namespace(client: &Client, name: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces.delete(name, &DeleteParams::default()).await;
    let body: Namespace = object(json!({"metadata": {"name": name}, "spec": {"finalizers": []}}));
    let _ = namespaces
        .replace_subresource("finalize", name, &PostParams::default(), &body)
        .await;
}

/// Deletes every pod of namespace `ns` at once (no grace period). Errors are ignored.
pub async fn remove_pods(client: &Client, ns: &str) {
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    let _ = Api::<Pod>::namespaced(client.clone(), ns)
        .delete_collection(&params, &ListParams::default())
        .await;
}

/// Deletes what a controller test leaves in namespace `ns`: its MigrateJobs, their pods, and
/// the ConfigMaps and PodDisruptionBudgets the operator made for them. Errors are ignored.
pub async fn remove_job_objects(client: &Client, ns: &str) {
    remove_jobs(client, ns).await;
    remove_pods(client, ns).await;
    let _ = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
    let _ = Api::<PodDisruptionBudget>::namespaced(client.clone(), ns)
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
}

/// Creates MigrateJob `name` with `spec` in namespace `ns` and returns it as the API server
/// stored it (defaults applied).
pub async fn create_job(client: &Client, ns: &str, name: &str, spec: MigrateJobSpec) -> MigrateJob {
    let mut job = MigrateJob::new(name, spec);
    job.metadata.namespace = Some(ns.to_owned());
    or_fail(
        Api::<MigrateJob>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &job)
            .await
            .map_err(api(format!("creating MigrateJob {ns}/{name}"))),
    )
}

/// Creates the Secret `migrate-redis` in namespace `ns` holding `url` under key `url`, as the
/// example spec's `queue.urlSecretRef` names it.
pub async fn create_redis_secret(client: &Client, ns: &str, url: &str) {
    create_url_secret(client, ns, "migrate-redis", url).await;
}

/// Creates the Secret `name` in namespace `ns` holding `url` under key `url`, the shape of the
/// example spec's `urlSecretRef`s (`migrate-redis`, `migrate-mysql`, `migrate-search`).
pub async fn create_url_secret(client: &Client, ns: &str, name: &str, url: &str) {
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            ..kube::api::ObjectMeta::default()
        },
        string_data: Some([("url".to_owned(), url.to_owned())].into()),
        ..Secret::default()
    };
    or_fail(
        Api::<Secret>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &secret)
            .await
            .map_err(api(format!("creating the Secret {ns}/{name}"))),
    );
}

/// Creates every object besides the Redis Secret that the example spec names, as the operator
/// checks before it starts a worker: the Secrets `migrate-mysql` and `migrate-search` (key
/// `url`, holding URLs no test connects to) and the ConfigMap `migrate-keywords` with one word
/// in each keyword file. For tests where no worker runs.
pub async fn create_example_references(client: &Client, ns: &str) {
    create_url_secret(
        client,
        ns,
        "migrate-mysql",
        "mysql://user:pass@mysql:3306/db",
    )
    .await;
    create_url_secret(client, ns, "migrate-search", "http://search:9200").await;
    let data = [crate::datagen::TOPICS_FILE, crate::datagen::BLACKLIST_FILE]
        .iter()
        .map(|f| ((*f).to_owned(), "word\n".to_owned()))
        .collect();
    let config_map = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("migrate-keywords".to_owned()),
            ..kube::api::ObjectMeta::default()
        },
        data: Some(data),
        ..ConfigMap::default()
    };
    or_fail(
        Api::<ConfigMap>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &config_map)
            .await
            .map_err(api(format!("creating the keyword ConfigMap in {ns}"))),
    );
}

/// Creates the ConfigMap `migrate-keywords` in namespace `ns` from the keyword files
/// [`crate::datagen::write_keyword_files`] wrote into `dir`, as the example spec's
/// `keywords.configMap` names it.
pub async fn create_keyword_config_map(client: &Client, ns: &str, dir: &Path) {
    let data = [crate::datagen::TOPICS_FILE, crate::datagen::BLACKLIST_FILE]
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(dir.join(f))
                .unwrap_or_else(|e| fail(format!("reading {}: {e}", dir.join(f).display())));
            ((*f).to_owned(), text)
        })
        .collect();
    let config_map = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("migrate-keywords".to_owned()),
            ..kube::api::ObjectMeta::default()
        },
        data: Some(data),
        ..ConfigMap::default()
    };
    or_fail(
        Api::<ConfigMap>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &config_map)
            .await
            .map_err(api(format!("creating the keyword ConfigMap in {ns}"))),
    );
}

/// The Events (`events.k8s.io/v1`) of namespace `ns` about the object named `name`.
pub async fn events_about(client: &Client, ns: &str, name: &str) -> Vec<Event> {
    let events = or_fail(
        Api::<Event>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await
            .map_err(api(format!("listing the Events of namespace {ns}"))),
    );
    events
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect()
}

/// Deletes every MigrateJob of namespace `ns`, first dropping their finalizers so that no
/// operator has to run for them to go. Errors are ignored.
pub async fn remove_jobs(client: &Client, ns: &str) {
    let jobs: Api<MigrateJob> = Api::namespaced(client.clone(), ns);
    let found = jobs
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    for job in found {
        let name = job.name_any();
        let _ = jobs
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
            )
            .await;
        let _ = jobs.delete(&name, &DeleteParams::default()).await;
    }
}

/// Reads the repository file `relative` and parses it as a `kind`.
fn repo_yaml<T: serde::de::DeserializeOwned>(relative: &str, kind: &'static str) -> T {
    let path = repo_root().join(relative);
    let text = or_fail(
        std::fs::read_to_string(&path).map_err(|source| K8sError::Read {
            path: path.clone(),
            source,
        }),
    );
    or_fail(serde_saphyr::from_str(&text).map_err(|source| K8sError::Yaml { path, kind, source }))
}

/// Applies the committed CRD (`crds/migratejob.yaml`, exactly the file users apply) and waits
/// up to [`DEADLINE`] until the API server serves it.
pub async fn install_crd(client: &Client) {
    let crd: CustomResourceDefinition = repo_yaml(CRD_FILE, "CustomResourceDefinition");
    apply_crd(client, &crd, MigrateJob::crd_name(), CRD_FILE).await;
}

/// Applies `crd` (server-side, forced) and waits until it is established.
async fn apply_crd(client: &Client, crd: &CustomResourceDefinition, name: &str, what: &str) {
    let api_crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    or_fail(
        api_crds
            .patch(
                name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(crd),
            )
            .await
            .map_err(api(format!("applying {what}"))),
    );
    match tokio::time::timeout(
        DEADLINE,
        await_condition(api_crds, name, conditions::is_crd_established()),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => fail(format!("watching CRD {name}: {e}")),
        Err(_) => fail(format!("CRD {name} not established within {DEADLINE:?}")),
    }
}

/// Applies the MigrateJob CRD generated by the Rust types this test was built with, renamed to
/// the API group `group` (e.g. `corpus-1a2b.test.migrate-operator.io`), waits until it is served
/// and returns the resource to address its objects with. A schema test uses a group of its own
/// so that it sees exactly these types' schema and CEL rules, even while another test run on
/// the same API server applies a different version of `migratejobs.migrate-operator.io`.
/// Remove it with [`remove_private_crd`].
pub async fn install_private_crd(client: &Client, group: &str) -> ApiResource {
    let mut crd = MigrateJob::crd();
    let name = format!("{}.{group}", crd.spec.names.plural);
    crd.metadata.name = Some(name.clone());
    crd.spec.group = group.to_owned();
    apply_crd(
        client,
        &crd,
        &name,
        &format!("the MigrateJob CRD as {name}"),
    )
    .await;
    let version = &crd.spec.versions[0].name;
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, version, &crd.spec.names.kind),
        &crd.spec.names.plural,
    )
}

/// Deletes the CRD [`install_private_crd`] applied for `group`, with its objects. Errors are
/// ignored.
pub async fn remove_private_crd(client: &Client, group: &str) {
    let name = format!("{}.{group}", MigrateJob::crd().spec.names.plural);
    let _ = Api::<CustomResourceDefinition>::all(client.clone())
        .delete(&name, &DeleteParams::default())
        .await;
}

/// The testbed has no kubelet, so no metrics-server: this serves its API's URLs instead, as a
/// CustomResourceDefinition of the same group, version, kind and plural
/// (`/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods`), whose objects tests write as
/// metrics-server would. The group is a protected one, hence the "unapproved" annotation the
/// API server asks of such CRDs. Idempotent.
pub async fn install_pod_metrics_api(client: &Client) {
    let crd: CustomResourceDefinition = object(serde_json::json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {
                "name": "pods.metrics.k8s.io",
                "annotations": {
                    "api-approved.kubernetes.io": "unapproved, a test stand-in for metrics-server"
                }
            },
            "spec": {
                "group": "metrics.k8s.io",
                "scope": "Namespaced",
                "names": {"plural": "pods", "singular": "podmetrics", "kind": "PodMetrics", "listKind": "PodMetricsList"},
                "versions": [{
                    "name": "v1beta1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": true
                    }}
                }]
            }
    }));
    apply_crd(
        client,
        &crd,
        "pods.metrics.k8s.io",
        "the PodMetrics stand-in",
    )
    .await;
}

/// The operator's least-privilege role, `deploy/rbac/role.yaml`.
#[must_use]
pub fn shipped_role() -> ClusterRole {
    repo_yaml(ROLE_FILE, "ClusterRole")
}

/// The operator's leader-election Role, `deploy/rbac/leader-election-role.yaml`.
#[must_use]
pub fn shipped_lease_role() -> Role {
    repo_yaml(LEASE_ROLE_FILE, "Role")
}

/// The ClusterRoleBinding [`operator_token`] creates for namespace `ns`.
#[must_use]
pub fn operator_binding(ns: &str) -> String {
    format!("{ns}-operator")
}

/// Gives the operator of namespace `ns` exactly the shipped roles and returns its token: applies
/// [`shipped_role`], creates the ServiceAccount [`OPERATOR_ACCOUNT`] in `ns` (which must
/// exist), binds the role to it ([`operator_binding`]), creates [`shipped_lease_role`] in `ns`
/// bound to it there (the Lease is allowed in its own namespace only), and mints a one-hour
/// token for it with the TokenRequest API. A client using the token ([`with_token`]) fails
/// wherever the roles lack a permission.
pub async fn operator_token(admin: &Client, ns: &str) -> String {
    let role = shipped_role();
    let role_name = role.name_any();
    or_fail(
        Api::<ClusterRole>::all(admin.clone())
            .patch(
                &role_name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&role),
            )
            .await
            .map_err(api(format!("applying ClusterRole {role_name}"))),
    );
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    let account: ServiceAccount = object(json!({"metadata": {"name": OPERATOR_ACCOUNT}}));
    or_fail(
        accounts
            .create(&PostParams::default(), &account)
            .await
            .map_err(api(format!(
                "creating ServiceAccount {ns}/{OPERATOR_ACCOUNT}"
            ))),
    );
    let binding_name = operator_binding(ns);
    let binding: ClusterRoleBinding = object(json!({
        "metadata": {"name": binding_name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
        "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_ACCOUNT, "namespace": ns}]
    }));
    or_fail(
        Api::<ClusterRoleBinding>::all(admin.clone())
            .create(&PostParams::default(), &binding)
            .await
            .map_err(api(format!("creating ClusterRoleBinding {binding_name}"))),
    );
    let mut lease_role = shipped_lease_role();
    lease_role.metadata.namespace = Some(ns.to_owned());
    let lease_role_name = lease_role.name_any();
    or_fail(
        Api::<Role>::namespaced(admin.clone(), ns)
            .create(&PostParams::default(), &lease_role)
            .await
            .map_err(api(format!("creating Role {ns}/{lease_role_name}"))),
    );
    let lease_binding: RoleBinding = object(json!({
        "metadata": {"name": lease_role_name, "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": lease_role_name},
        "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_ACCOUNT, "namespace": ns}]
    }));
    or_fail(
        Api::<RoleBinding>::namespaced(admin.clone(), ns)
            .create(&PostParams::default(), &lease_binding)
            .await
            .map_err(api(format!("creating RoleBinding {ns}/{lease_role_name}"))),
    );
    let request = TokenRequest {
        metadata: Default::default(),
        spec: TokenRequestSpec {
            expiration_seconds: Some(TOKEN_SECONDS),
            ..TokenRequestSpec::default()
        },
        status: None,
    };
    let minted = or_fail(
        accounts
            .create_token_request(OPERATOR_ACCOUNT, &PostParams::default(), &request)
            .await
            .map_err(api(format!("TokenRequest for {ns}/{OPERATOR_ACCOUNT}"))),
    );
    minted.status.map_or_else(
        || {
            fail(format!(
                "TokenRequest for {ns}/{OPERATOR_ACCOUNT} returned no token"
            ))
        },
        |s| s.token,
    )
}

/// Creates the ServiceAccount of [`operator_token`] in namespace `ns` (which must exist) and
/// returns a kubeconfig (JSON) for the cluster of `kc` carrying that account's token, with
/// `ns` as its namespace: what an operator running outside the cluster is given.
pub async fn operator_kubeconfig(admin: &Client, kc: &Kubeconfig, ns: &str) -> String {
    let token = operator_token(admin, ns).await;
    let cluster = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .unwrap_or_else(|| fail("the kubeconfig names no cluster"));
    let server = cluster
        .server
        .unwrap_or_else(|| fail("the kubeconfig's cluster has no server"));
    let mut cluster_json = json!({ "server": server });
    if let Some(data) = cluster.certificate_authority_data {
        cluster_json["certificate-authority-data"] = json!(data);
    }
    if let Some(path) = cluster.certificate_authority {
        cluster_json["certificate-authority"] = json!(path);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "testbed", "cluster": cluster_json}],
        "users": [{"name": "migrate-operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "testbed", "user": "migrate-operator", "namespace": ns}}],
        "current-context": "operator"
    })
    .to_string()
}

/// Deletes the ClusterRoleBinding [`operator_token`] created for `ns` (cluster-scoped, so it
/// does not go with the namespace). Errors are ignored.
pub async fn remove_operator_binding(client: &Client, ns: &str) {
    let _ = Api::<ClusterRoleBinding>::all(client.clone())
        .delete(&operator_binding(ns), &DeleteParams::default())
        .await;
}

/// Calls `probe` every [`POLL_EVERY`] until it returns `Some`, and returns that value; fails the
/// test, naming `what`, once `limit` has passed without one.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if start.elapsed() >= limit {
            fail(format!("timed out after {limit:?} waiting for {what}"));
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}
