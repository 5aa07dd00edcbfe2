//! The Helm chart `charts/migrate-operator`, with the testbed's helm (`tests/testbed/up.sh helm`,
//! built from its Go module) and real kube-apiserver (`tests/testbed/up.sh k8s`):
//! - the chart's copies of the CRD and of the RBAC role are byte-identical to the sources;
//! - `helm lint --strict` and `helm template` are clean for the default values, for a values file
//!   setting every option (`ci/all-values.yaml`) and for `examples/values-production.yaml`;
//! - everything rendered passes a server-side dry run with strict field validation;
//! - install, upgrade (values that change the Deployment and switch RBAC from cluster-wide to one
//!   namespace) and uninstall work against the API server, and the installed roles carry exactly
//!   the rules of `deploy/rbac/role.yaml`;
//! - in both modes the operator may touch Leases in its own namespace only, as the API server's
//!   authorizer answers (SubjectAccessReview, positive and negative);
//! - wrong values are rejected with a message naming them.
//!
//! The testbed has no kubelet and no controllers: pods never run (so nothing waits for them) and
//! namespaces never finish deleting (each test uses fresh names and finalizes its namespaces).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod k8s_support;

use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::Output;

use futures::FutureExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::Value;

use k8s_support::{
    DryRun, describe, documents, dry_run_apply, read, shipped_lease_rules, shipped_rules,
};
use migrate_e2e::env::repo_root;
use migrate_e2e::k8s::{
    admin_client, create_namespace, fresh_name, install_crd, kubeconfig_path, remove_namespace,
};

/// The chart, relative to the repository root.
const CHART: &str = "charts/migrate-operator";
/// The values file that sets every option.
const ALL_VALUES: &str = "charts/migrate-operator/ci/all-values.yaml";
/// The example values file users start from.
const EXAMPLE_VALUES: &str = "examples/values-production.yaml";

// --- the chart's copies of generated and shared files ------------------------------------

/// The chart installs the CRD from its own `crds/` folder; it must be the generated one.
#[test]
fn the_chart_crd_is_the_generated_crd() {
    assert!(
        read("crds/migratejob.yaml") == read("charts/migrate-operator/crds/migratejob.yaml"),
        "charts/migrate-operator/crds/migratejob.yaml differs from crds/migratejob.yaml: \
         run `cargo run -p migrate-crds --bin crdgen -- --write`"
    );
}

/// The chart's RBAC rules come from `files/rbac-role.yaml`, a copy of `deploy/rbac/role.yaml`
/// (the role the controller's API-server tests run under).
#[test]
fn the_chart_rbac_file_is_deploy_rbac_role_yaml() {
    assert!(
        read("deploy/rbac/role.yaml") == read("charts/migrate-operator/files/rbac-role.yaml"),
        "charts/migrate-operator/files/rbac-role.yaml differs from deploy/rbac/role.yaml: \
         run `cp deploy/rbac/role.yaml charts/migrate-operator/files/rbac-role.yaml`"
    );
}

/// The chart's leader-election rules come from `files/rbac-leader-election.yaml`, a copy of
/// `deploy/rbac/leader-election-role.yaml`.
#[test]
fn the_chart_lease_rbac_file_is_deploy_rbac_leader_election_role_yaml() {
    assert!(
        read("deploy/rbac/leader-election-role.yaml")
            == read("charts/migrate-operator/files/rbac-leader-election.yaml"),
        "charts/migrate-operator/files/rbac-leader-election.yaml differs from \
         deploy/rbac/leader-election-role.yaml: run `cp deploy/rbac/leader-election-role.yaml \
         charts/migrate-operator/files/rbac-leader-election.yaml`"
    );
}

/// No cluster-wide rule touches Leases: the operator's Lease is granted by a Role in its own
/// namespace only, so it cannot take over another component's Lease (kube-system's included).
#[test]
fn the_shipped_cluster_role_grants_no_lease() {
    let leases: Vec<PolicyRule> = shipped_rules()
        .into_iter()
        .filter(|r| {
            r.api_groups
                .as_deref()
                .is_some_and(|g| g.contains(&"coordination.k8s.io".to_owned()))
        })
        .collect();
    assert!(leases.is_empty(), "{leases:?}");
    assert!(
        shipped_lease_rules().iter().all(|r| r.api_groups.as_deref()
            == Some(&["coordination.k8s.io".to_owned()][..])
            && r.resources.as_deref() == Some(&["leases".to_owned()][..])),
        "{:?}",
        shipped_lease_rules()
    );
}

/// `appVersion` is the workspace version, so the default image tag is the released binary.
#[test]
fn the_chart_app_version_is_the_workspace_version() {
    let chart: Value = serde_saphyr::from_str(&read("charts/migrate-operator/Chart.yaml")).unwrap();
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION"))
    );
}

/// Every key of values.yaml is declared by the schema, and every object of the schema refuses
/// unknown keys (maps of labels and annotations excepted: their keys are free).
#[test]
fn the_schema_declares_every_value_and_refuses_unknown_keys() {
    let schema: Value = serde_json::from_str(&read("charts/migrate-operator/values.schema.json"))
        .expect("values.schema.json is JSON");
    let values: Value =
        serde_saphyr::from_str(&read("charts/migrate-operator/values.yaml")).unwrap();
    let all: Value = serde_saphyr::from_str(&read(ALL_VALUES)).unwrap();

    let mut undeclared = Vec::new();
    for (file, doc) in [("values.yaml", &values), ("ci/all-values.yaml", &all)] {
        undeclared_keys(&schema, doc, file, &mut undeclared);
    }
    assert!(
        undeclared.is_empty(),
        "keys missing from the schema: {undeclared:?}"
    );

    let mut open = Vec::new();
    open_objects(&schema, "", &mut open);
    assert!(
        open.is_empty(),
        "schema objects accepting any key: {open:?}"
    );

    // ci/all-values.yaml sets every option of values.yaml.
    let mut unset = Vec::new();
    missing_keys(&values, &all, "", &mut unset);
    assert!(
        unset.is_empty(),
        "options not set by ci/all-values.yaml: {unset:?}"
    );
}

/// The values table of the chart's README names every value of values.yaml (a row may stand
/// for a whole group, e.g. `resources`), and only values that exist.
#[test]
fn the_readme_values_table_documents_every_value() {
    let values: Value =
        serde_saphyr::from_str(&read("charts/migrate-operator/values.yaml")).unwrap();
    let readme = read("charts/migrate-operator/README.md");
    let rows: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(key, _)| key.to_owned()))
        .collect();
    let mut leaves = Vec::new();
    leaf_paths(&values, "", &mut leaves);
    let undocumented: Vec<&String> = leaves
        .iter()
        .filter(|leaf| {
            !rows
                .iter()
                .any(|row| *leaf == row || leaf.starts_with(&format!("{row}.")))
        })
        .collect();
    assert!(
        undocumented.is_empty(),
        "values missing from the README table: {undocumented:?}"
    );
    let unknown: Vec<&String> = rows
        .iter()
        .filter(|row| {
            !leaves
                .iter()
                .any(|leaf| leaf == *row || leaf.starts_with(&format!("{row}.")))
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "README rows naming no value: {unknown:?}"
    );
}

fn leaf_paths(doc: &Value, path: &str, out: &mut Vec<String>) {
    match doc.as_object() {
        Some(map) if !map.is_empty() => {
            for (key, value) in map {
                let here = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                leaf_paths(value, &here, out);
            }
        }
        _ => out.push(path.to_owned()),
    }
}

fn undeclared_keys(schema: &Value, doc: &Value, path: &str, out: &mut Vec<String>) {
    let Some(map) = doc.as_object() else { return };
    if !schema["properties"].is_object() && !schema["additionalProperties"].is_boolean() {
        // A Kubernetes object passed through as is (affinity terms): the API server checks it.
        return;
    }
    for (key, value) in map {
        let here = format!("{path}.{key}");
        match schema["properties"].get(key) {
            Some(sub) => undeclared_keys(sub, value, &here, out),
            None if schema["additionalProperties"].is_object() => {}
            None => out.push(here),
        }
    }
}

fn open_objects(schema: &Value, path: &str, out: &mut Vec<String>) {
    if let Some(props) = schema["properties"].as_object() {
        if schema["additionalProperties"] != Value::Bool(false) {
            out.push(path.to_owned());
        }
        for (key, sub) in props {
            open_objects(sub, &format!("{path}.{key}"), out);
        }
    }
    if schema["items"].is_object() {
        open_objects(&schema["items"], &format!("{path}[]"), out);
    }
}

fn missing_keys(defaults: &Value, all: &Value, path: &str, out: &mut Vec<String>) {
    let Some(map) = defaults.as_object() else {
        return;
    };
    for (key, value) in map {
        let here = format!("{path}.{key}");
        match all.get(key) {
            None => out.push(here),
            Some(set) if value.is_object() && !value.as_object().unwrap().is_empty() => {
                missing_keys(value, set, &here, out);
            }
            Some(_) => {}
        }
    }
}

// --- helm ---------------------------------------------------------------------------------

/// The testbed's helm, run with its own empty config, cache and data folders.
struct Helm {
    bin: PathBuf,
    home: tempfile::TempDir,
}

impl Helm {
    /// `HELM_BIN` from the environment or the testbed's env file; fails the test naming the
    /// command that builds it when there is none.
    fn new() -> Self {
        let from_file = || {
            let dir = std::env::var_os("TESTBED_DIR")
                .map_or_else(|| repo_root().join(".testbed"), PathBuf::from);
            std::fs::read_to_string(dir.join("env"))
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix("HELM_BIN=").map(|v| v.trim().to_owned()))
        };
        let bin = std::env::var("HELM_BIN")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .or_else(from_file)
            .map(PathBuf::from)
            .filter(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "no helm binary: HELM_BIN is not set and .testbed/env names none that exists; \
                     run `tests/testbed/up.sh helm` (builds helm from its Go module) from the \
                     repository root"
                )
            });
        Self {
            bin,
            home: tempfile::tempdir().unwrap(),
        }
    }

    /// Runs helm from the repository root against the testbed's API server.
    async fn run(&self, args: &[&str]) -> Output {
        let home = self.home.path();
        let mut command = tokio::process::Command::new(&self.bin);
        command
            .args(args)
            .current_dir(repo_root())
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .env_remove("HELM_NAMESPACE")
            .env_remove("HELM_KUBECONTEXT");
        if args
            .first()
            .is_some_and(|a| !matches!(*a, "lint" | "template"))
        {
            command.env("KUBECONFIG", kubeconfig_path());
        }
        command
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()))
    }

    /// Runs helm and returns its stdout; fails the test with its output when it fails.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "helm {} failed ({}):\n{}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs helm, expects it to fail, and returns its stderr.
    async fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            !out.status.success(),
            "helm {} succeeded but should have failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    /// The manifests `helm template` renders, parsed.
    async fn template(&self, release: &str, namespace: &str, extra: &[&str]) -> Vec<Value> {
        let mut args = vec!["template", release, CHART, "--namespace", namespace];
        args.extend_from_slice(extra);
        documents(&self.ok(&args).await)
    }
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn only<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = find(docs, kind);
    assert_eq!(found.len(), 1, "expected one {kind}, got {}", found.len());
    found[0]
}

fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter()
        .map(|d| d["kind"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn rules_of(doc: &Value) -> Vec<PolicyRule> {
    serde_json::from_value(doc["rules"].clone()).expect("rules are PolicyRules")
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

/// `helm lint --strict` reports no warning or error for any of the three values sets.
#[tokio::test]
async fn helm_lint_is_clean_for_default_example_and_every_option_values() {
    let helm = Helm::new();
    for extra in [vec![], vec!["-f", ALL_VALUES], vec!["-f", EXAMPLE_VALUES]] {
        let mut args = vec!["lint", "--strict", CHART];
        args.extend_from_slice(&extra);
        let out = helm.ok(&args).await;
        assert!(
            !out.contains("[WARNING]") && !out.contains("[ERROR]"),
            "helm lint {extra:?}:\n{out}"
        );
        assert!(out.contains("0 chart(s) failed"), "{out}");
    }
}

/// Default values: a cluster-wide operator with two leader-electing, locked-down replicas; the
/// Lease is granted by a Role in the release namespace, not by the ClusterRole.
#[tokio::test]
async fn default_values_render_a_cluster_wide_operator_with_leader_election() {
    let helm = Helm::new();
    let docs = helm.template("mo", "ops", &[]).await;
    assert_eq!(
        kinds(&docs),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
        .map(String::from)
        .into(),
    );
    assert_eq!(rules_of(only(&docs, "ClusterRole")), shipped_rules());
    let binding = only(&docs, "ClusterRoleBinding");
    assert_eq!(
        binding["roleRef"]["name"],
        only(&docs, "ClusterRole")["metadata"]["name"]
    );
    assert_eq!(
        binding["subjects"][0]["name"],
        only(&docs, "ServiceAccount")["metadata"]["name"]
    );
    assert_eq!(binding["subjects"][0]["namespace"], "ops");
    let lease_role = only(&docs, "Role");
    assert_eq!(lease_role["metadata"]["namespace"], "ops");
    assert_eq!(rules_of(lease_role), shipped_lease_rules());
    let lease_binding = only(&docs, "RoleBinding");
    assert_eq!(lease_binding["metadata"]["namespace"], "ops");
    assert_eq!(lease_binding["roleRef"]["kind"], "Role");
    assert_eq!(
        lease_binding["roleRef"]["name"],
        lease_role["metadata"]["name"]
    );
    assert_eq!(
        lease_binding["subjects"][0]["name"],
        only(&docs, "ServiceAccount")["metadata"]["name"]
    );

    let deployment = only(&docs, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(args[0], "run");
    assert!(args.contains(&"--listen=0.0.0.0:8080"), "{args:?}");
    assert!(
        args.iter().any(|a| a.starts_with("--lease-name=")),
        "{args:?}"
    );
    assert!(!args.contains(&"--no-leader-election"), "{args:?}");
    assert_eq!(
        env_value(container, "POD_NAME").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        env_value(container, "POD_NAMESPACE").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert!(env_value(container, "MIGRATE_OPERATOR_WATCH_NAMESPACE").is_none());
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(container["resources"]["requests"]["memory"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());
    assert_eq!(
        container["image"],
        format!(
            "ghcr.io/migrate-operator/operator:{}",
            env!("CARGO_PKG_VERSION")
        )
    );
    let security = &container["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"][0], "ALL");
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );

    // The selector must never match the worker pods the operator creates.
    let selector = &deployment["spec"]["selector"]["matchLabels"];
    assert_eq!(selector["app.kubernetes.io/name"], "migrate-operator");
    assert_eq!(only(&docs, "Service")["spec"]["selector"], *selector);
    assert_eq!(
        only(&docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        *selector
    );
}

/// Every option set: one watched namespace (a Role there with exactly the shipped rules, and a
/// Lease-only Role in the release namespace), ServiceMonitor, the workers' PodMonitor,
/// NetworkPolicy, pinned digest, and the Grafana ConfigMap holding every file of dashboards/
/// (none while the folder is empty).
#[tokio::test]
async fn every_option_renders_namespaced_rbac_and_the_optional_objects() {
    let helm = Helm::new();
    let docs = helm.template("mo", "ops", &["-f", ALL_VALUES]).await;
    assert!(find(&docs, "ClusterRole").is_empty() && find(&docs, "ClusterRoleBinding").is_empty());
    let roles = find(&docs, "Role");
    assert_eq!(roles.len(), 2, "a Role for the jobs and one for the Lease");
    let jobs_role = roles
        .iter()
        .find(|r| r["metadata"]["namespace"] == "migrate-jobs")
        .unwrap();
    assert_eq!(rules_of(jobs_role), shipped_rules());
    let lease_role = roles
        .iter()
        .find(|r| r["metadata"]["namespace"] == "ops")
        .unwrap();
    assert_eq!(rules_of(lease_role), shipped_lease_rules());
    assert_eq!(find(&docs, "RoleBinding").len(), 2);

    let deployment = only(&docs, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 3);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        env_value(container, "MIGRATE_OPERATOR_WATCH_NAMESPACE").unwrap()["value"],
        "migrate-jobs"
    );
    assert!(
        container["image"]
            .as_str()
            .unwrap()
            .ends_with("@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
    );
    assert_eq!(container["ports"][0]["containerPort"], 9090);
    assert_eq!(
        only(&docs, "ServiceMonitor")["spec"]["endpoints"][0]["interval"],
        "15s"
    );
    // The workers' PodMonitor selects exactly the labels the operator gives worker pods, in
    // the watched namespace, on the container port it names.
    let pod_monitor = only(&docs, "PodMonitor");
    let worker_labels = migrate_operator::controller::build::labels("any");
    for (key, value) in pod_monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(
            worker_labels.get(key).map(String::as_str),
            value.as_str(),
            "worker pods carry {key}"
        );
    }
    assert_eq!(
        pod_monitor["spec"]["namespaceSelector"]["matchNames"][0],
        "migrate-jobs"
    );
    let endpoint = &pod_monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], "metrics");
    assert_eq!(endpoint["interval"], "10s");
    assert_eq!(
        only(&docs, "NetworkPolicy")["spec"]["policyTypes"][1],
        "Egress"
    );
    assert_eq!(
        only(&docs, "PodDisruptionBudget")["spec"]["maxUnavailable"],
        "50%"
    );

    let mut dashboards: Vec<String> = std::fs::read_dir(repo_root().join(CHART).join("dashboards"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".json"))
                .collect()
        })
        .unwrap_or_default();
    dashboards.sort();
    let config_maps = find(&docs, "ConfigMap");
    if dashboards.is_empty() {
        assert!(config_maps.is_empty(), "no dashboards, no ConfigMap");
    } else {
        let cm = only(&docs, "ConfigMap");
        assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
        assert_eq!(cm["metadata"]["namespace"], "monitoring");
        let keys: Vec<String> = cm["data"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, dashboards);
        for key in &keys {
            let text = cm["data"][key].as_str().unwrap();
            serde_json::from_str::<Value>(text)
                .unwrap_or_else(|e| panic!("dashboard {key} is not JSON after rendering: {e}"));
        }
    }
}

/// What the chart renders (CRD included) is accepted by the real API server with strict field
/// validation; only kinds the testbed does not serve (the Prometheus Operator CRDs) are left out.
#[tokio::test]
async fn rendered_manifests_pass_a_server_side_dry_run() {
    let helm = Helm::new();
    let client = admin_client().await;
    install_crd(&client).await;
    let ns = fresh_name("chart-dry");
    let jobs_ns = fresh_name("chart-dry-jobs");
    let dash_ns = fresh_name("chart-dry-dash");
    for n in [&ns, &jobs_ns, &dash_ns] {
        create_namespace(&client, n).await;
    }
    let watch = format!("watchNamespace={jobs_ns}");
    let dash = format!("grafanaDashboard.namespace={dash_ns}");
    let sets: [Vec<&str>; 3] = [
        vec!["--include-crds"],
        vec![
            "--include-crds",
            "-f",
            ALL_VALUES,
            "--set",
            &watch,
            "--set",
            &dash,
        ],
        vec!["--include-crds", "-f", EXAMPLE_VALUES, "--set", &dash],
    ];
    let mut failures = Vec::new();
    let mut not_served = BTreeSet::new();
    let mut checked = 0;
    for extra in &sets {
        for doc in helm.template("dry", &ns, extra).await {
            match dry_run_apply(&client, &ns, &doc).await {
                Ok(()) => checked += 1,
                Err(DryRun::NotServed(_)) => {
                    not_served.insert(
                        doc["apiVersion"].as_str().unwrap_or_default().to_owned()
                            + " "
                            + &describe(&doc),
                    );
                }
                Err(DryRun::Rejected(e)) => failures.push(format!("{extra:?}: {e}")),
            }
        }
    }
    for n in [&ns, &jobs_ns, &dash_ns] {
        remove_namespace(&client, n).await;
    }
    assert!(
        failures.is_empty(),
        "rejected by the API server:\n{}",
        failures.join("\n")
    );
    assert!(
        not_served.iter().all(
            |d| d.starts_with("monitoring.coreos.com/v1 ServiceMonitor/")
                || d.starts_with("monitoring.coreos.com/v1 PodMonitor/")
        ),
        "kinds the API server does not serve: {not_served:?}"
    );
    assert!(checked >= 20, "only {checked} manifests were checked");
}

async fn get<K>(api: &Api<K>, name: &str) -> Option<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name)
        .await
        .unwrap_or_else(|e| panic!("cannot get {name}: {e}"))
}

/// Install, upgrade and uninstall against the API server. The upgrade changes the replica count
/// and confines the operator to one namespace, which swaps the ClusterRole for Roles; each role
/// the chart creates carries exactly the rules of `deploy/rbac/role.yaml`.
#[tokio::test]
async fn install_upgrade_and_uninstall_against_the_api_server() {
    let helm = Helm::new();
    let client = admin_client().await;
    let ns = fresh_name("chart-rel");
    let jobs_ns = fresh_name("chart-rel-jobs");
    create_namespace(&client, &ns).await;
    create_namespace(&client, &jobs_ns).await;
    let release = fresh_name("rel");
    // Clean up (release, ClusterRole, namespaces) whether the steps pass, fail or panic.
    let outcome = AssertUnwindSafe(install_upgrade_uninstall(
        &helm, &client, &release, &ns, &jobs_ns,
    ))
    .catch_unwind()
    .await;
    let _ = helm.run(&["uninstall", &release, "--namespace", &ns]).await;
    remove_namespace(&client, &ns).await;
    remove_namespace(&client, &jobs_ns).await;
    match outcome {
        Ok(result) => result.unwrap_or_else(|e| panic!("{e}")),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

async fn install_upgrade_uninstall(
    helm: &Helm,
    client: &Client,
    release: &str,
    ns: &str,
    jobs_ns: &str,
) -> Result<(), String> {
    let full = format!("{release}-migrate-operator");
    let cluster_name = format!("{ns}-{full}");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
    let cluster_bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let roles: Api<Role> = Api::namespaced(client.clone(), jobs_ns);
    let lease_roles: Api<Role> = Api::namespaced(client.clone(), ns);

    let notes = helm
        .ok(&["install", release, CHART, "--namespace", ns])
        .await;
    assert!(
        notes.contains("kubectl") && notes.contains("get mj -w"),
        "{notes}"
    );
    let deployment = get(&deployments, &full)
        .await
        .ok_or("no Deployment after install")?;
    assert_eq!(deployment.spec.as_ref().and_then(|s| s.replicas), Some(2));
    assert!(
        get(
            &Api::<ServiceAccount>::namespaced(client.clone(), ns),
            &full
        )
        .await
        .is_some()
    );
    assert!(
        get(
            &Api::<Service>::namespaced(client.clone(), ns),
            &format!("{full}-metrics")
        )
        .await
        .is_some()
    );
    assert!(
        get(
            &Api::<PodDisruptionBudget>::namespaced(client.clone(), ns),
            &full
        )
        .await
        .is_some()
    );
    let cluster_role = get(&cluster_roles, &cluster_name)
        .await
        .ok_or("no ClusterRole after install")?;
    assert!(
        get(&lease_roles, &format!("{full}-leader-election"))
            .await
            .is_some(),
        "no Lease Role after install"
    );
    assert_eq!(cluster_role.rules.unwrap_or_default(), shipped_rules());
    let binding = get(&cluster_bindings, &cluster_name)
        .await
        .ok_or("no ClusterRoleBinding")?;
    let subject = &binding.subjects.unwrap_or_default()[0];
    assert_eq!(
        (subject.name.as_str(), subject.namespace.as_deref()),
        (full.as_str(), Some(ns))
    );

    // The sample job of the NOTES is a valid MigrateJob.
    let sample = sample_job(&helm.ok(&["get", "notes", release, "--namespace", ns]).await);
    install_crd(client).await;
    dry_run_apply(client, jobs_ns, &sample)
        .await
        .map_err(|e| format!("the NOTES' sample MigrateJob is invalid: {e:?}"))?;

    helm.ok(&[
        "upgrade",
        release,
        CHART,
        "--namespace",
        ns,
        "--reuse-values",
        "--set",
        "replicaCount=3",
        "--set",
        &format!("watchNamespace={jobs_ns}"),
    ])
    .await;
    let deployment = get(&deployments, &full)
        .await
        .ok_or("no Deployment after upgrade")?;
    let spec = deployment.spec.unwrap();
    assert_eq!(spec.replicas, Some(3));
    let env = spec.template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap_or_default();
    let watch = env
        .iter()
        .find(|e| e.name == "MIGRATE_OPERATOR_WATCH_NAMESPACE");
    assert_eq!(watch.and_then(|e| e.value.as_deref()), Some(jobs_ns));
    assert!(
        get(&cluster_roles, &cluster_name).await.is_none(),
        "the ClusterRole is gone"
    );
    assert!(
        get(&cluster_bindings, &cluster_name).await.is_none(),
        "the ClusterRoleBinding is gone"
    );
    let role = get(&roles, &full)
        .await
        .ok_or("no Role in the watched namespace")?;
    assert_eq!(role.rules.unwrap_or_default(), shipped_rules());
    assert!(
        get(
            &Api::<RoleBinding>::namespaced(client.clone(), jobs_ns),
            &full
        )
        .await
        .is_some()
    );
    let lease_role = get(&lease_roles, &format!("{full}-leader-election"))
        .await
        .ok_or("no Lease Role")?;
    assert!(
        lease_role
            .rules
            .unwrap_or_default()
            .iter()
            .all(|r| { r.api_groups.as_deref() == Some(&["coordination.k8s.io".to_owned()][..]) })
    );
    let status = helm
        .ok(&["status", release, "--namespace", ns, "-o", "json"])
        .await;
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["version"], 2);
    assert_eq!(status["info"]["status"], "deployed");

    helm.ok(&["uninstall", release, "--namespace", ns]).await;
    assert!(
        get(&deployments, &full).await.is_none(),
        "the Deployment is gone"
    );
    assert!(get(&roles, &full).await.is_none(), "the Role is gone");
    assert!(
        get(&lease_roles, &format!("{full}-leader-election"))
            .await
            .is_none()
    );
    let listed = helm.ok(&["list", "--namespace", ns, "-q"]).await;
    assert!(!listed.contains(release), "{listed}");
    Ok(())
}

/// The MigrateJob between `cat <<'YAML'` and `YAML` in the NOTES, unindented.
fn sample_job(notes: &str) -> Value {
    let start = notes.find("<<'YAML'").expect("a sample job in the NOTES");
    let body = &notes[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    let end = body.find("\n   YAML").expect("the end of the sample job");
    let yaml: String = body[..end]
        .lines()
        .map(|l| l.strip_prefix("   ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let job: Value = serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert_eq!(job["kind"], "MigrateJob");
    job
}

/// A negative replica count, an unknown key (at the top and nested) and replicas without leader
/// election are refused by `helm template` and by `helm install`, naming the value.
#[tokio::test]
async fn wrong_values_are_rejected_with_a_message_naming_them() {
    let helm = Helm::new();
    let cases: [(&str, &[&str]); 5] = [
        ("replicaCount=-1", &["replicaCount", "minimum"]),
        ("replicaCont=2", &["replicaCont", "additional propert"]),
        (
            "metrics.serviceMonitor.intervall=1m",
            &["intervall", "additional propert"],
        ),
        (
            "image.pullPolicy=Sometimes",
            &["pullPolicy", "must be one of"],
        ),
        (
            "leaderElection.enabled=false",
            &["replicaCount", "leaderElection.enabled"],
        ),
    ];
    for (set, expected) in cases {
        let stderr = helm.fails(&["template", "bad", CHART, "--set", set]).await;
        for word in expected {
            assert!(
                stderr.contains(word),
                "--set {set}: {word:?} not in:\n{stderr}"
            );
        }
    }

    let client = admin_client().await;
    let ns = fresh_name("chart-bad");
    create_namespace(&client, &ns).await;
    let release = fresh_name("bad");
    let stderr = helm
        .fails(&[
            "install",
            &release,
            CHART,
            "--namespace",
            &ns,
            "--set",
            "replicaCount=-1",
        ])
        .await;
    let listed = helm.ok(&["list", "--namespace", &ns, "-q", "--all"]).await;
    remove_namespace(&client, &ns).await;
    assert!(
        stderr.contains("replicaCount") && stderr.contains("minimum"),
        "{stderr}"
    );
    assert!(
        !listed.contains(&release),
        "a rejected install left a release: {listed}"
    );
}

/// Whether the real API server lets `user` (a ServiceAccount of `account_ns`) do `verb` on
/// `resource` of `group` in `namespace`: the question `kubectl auth can-i --as` asks, as a
/// SubjectAccessReview.
async fn can(
    client: &Client,
    (user, account_ns): (&str, &str),
    verb: &str,
    (group, resource): (&str, &str),
    namespace: &str,
) -> bool {
    let review: SubjectAccessReview = serde_json::from_value(serde_json::json!({
        "spec": {
            "user": user,
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{account_ns}"), "system:authenticated"],
            "resourceAttributes": {"verb": verb, "group": group, "resource": resource, "namespace": namespace}
        }
    }))
    .unwrap();
    let answer = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap_or_else(|e| panic!("SubjectAccessReview for {user}: {e}"));
    answer.status.expect("a SubjectAccessReview status").allowed
}

/// The operator may get, create and update Leases in its own namespace and in no other, in both
/// chart modes, as the real API server's authorizer answers: cluster-wide (the default) and
/// confined to a watched namespace. Its job rules still reach the namespaces it watches, which
/// shows the account is bound at all.
#[tokio::test]
async fn leases_are_granted_only_in_the_operator_namespace_in_both_modes() {
    let helm = Helm::new();
    let client = admin_client().await;
    let ns = fresh_name("chart-lease");
    let jobs_ns = fresh_name("chart-lease-jobs");
    let other = fresh_name("chart-lease-other");
    for n in [&ns, &jobs_ns, &other] {
        create_namespace(&client, n).await;
    }
    let release = fresh_name("lease");
    let outcome = AssertUnwindSafe(lease_checks(
        &helm, &client, &release, &ns, &jobs_ns, &other,
    ))
    .catch_unwind()
    .await;
    let _ = helm.run(&["uninstall", &release, "--namespace", &ns]).await;
    for n in [&ns, &jobs_ns, &other] {
        remove_namespace(&client, n).await;
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn lease_checks(
    helm: &Helm,
    client: &Client,
    release: &str,
    ns: &str,
    jobs_ns: &str,
    other: &str,
) {
    let user = format!("system:serviceaccount:{ns}:{release}-migrate-operator");
    let account = (user.as_str(), ns);
    let leases = ("coordination.k8s.io", "leases");
    let jobs = ("migrate-operator.io", "migratejobs");
    let assert_leases_only_in_own_namespace = |mode: &'static str| async move {
        for verb in ["get", "create", "update"] {
            assert!(
                can(client, account, verb, leases, ns).await,
                "{mode}: cannot {verb} leases in its own namespace {ns}"
            );
            for elsewhere in ["kube-system", jobs_ns, other] {
                assert!(
                    !can(client, account, verb, leases, elsewhere).await,
                    "{mode}: may {verb} leases in {elsewhere}"
                );
            }
        }
        assert!(
            !can(client, account, "delete", leases, ns).await,
            "{mode}: may delete its Lease"
        );
    };

    helm.ok(&["install", release, CHART, "--namespace", ns, "--skip-crds"])
        .await;
    assert_leases_only_in_own_namespace("cluster-wide").await;
    assert!(
        can(client, account, "list", jobs, other).await,
        "cluster-wide: cannot list MigrateJobs in {other}"
    );

    let watch = format!("watchNamespace={jobs_ns}");
    helm.ok(&[
        "upgrade",
        release,
        CHART,
        "--namespace",
        ns,
        "--skip-crds",
        "--reuse-values",
        "--set",
        &watch,
    ])
    .await;
    assert_leases_only_in_own_namespace("one namespace").await;
    assert!(
        can(client, account, "list", jobs, jobs_ns).await,
        "one namespace: cannot list MigrateJobs in {jobs_ns}"
    );
    assert!(
        !can(client, account, "list", jobs, other).await,
        "one namespace: may list MigrateJobs in {other}"
    );
}
