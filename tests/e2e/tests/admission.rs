//! The corpus of MigrateJobs in `tests/e2e/corpus/`, applied to the testbed's real kube-apiserver
//! (`tests/testbed/up.sh k8s`) with the CRD these types generate:
//! - every file of `corpus/refused/` is refused at admission, and the API server's answer names
//!   the field and the offending value that the file's header announces (and never shows what
//!   the header says must stay hidden, such as a password in a URL);
//! - the same spec read as a pipeline file is refused by `migrate_crds::validate` for the same
//!   field, so a job that never went through the API server gets the same answer;
//! - every file of `corpus/accepted/` is accepted by both;
//! - the scale subresource answers for a job created with only the required fields, and a write
//!   through it (a PUT, `kubectl scale`) sets the count with `autoscaling: External` and is
//!   refused, naming the field, the value and the mode, with `autoscaling: Backlog`.
//!
//! The jobs admission accepts but that cannot run are in `corpus/reported/`: each gets a
//! Degraded condition and an Event from the running operator (`operator/tests/reported_apiserver.rs`).
//!
//! The CRD is installed under a private API group (see [`install_private_crd`]), so other test
//! runs applying their own version of the CRD to the same API server cannot change the outcome.
//! Objects are created with a server-side dry run: admission runs in full and nothing is stored.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use futures::FutureExt as _;

use std::path::{Path, PathBuf};

use k8s_openapi::api::autoscaling::v1::Scale;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use migrate_crds::MigrateJobSpec;
use migrate_e2e::env::repo_root;
use migrate_e2e::k8s::{
    admin_client, create_namespace, fresh_name, install_private_crd, kubeconfig_path,
    remove_namespace, remove_private_crd,
};
use serde_json::Value;

/// A corpus file: a MigrateJob and what its header comments expect.
struct Case {
    /// The file, for messages.
    path: PathBuf,
    /// The manifest.
    doc: Value,
    /// `# refused: <field>`: the field the API server's error names, e.g. `spec.memory.soft`.
    field: Option<String>,
    /// `# names: <text>`: text the error must contain, the offending value.
    names: Vec<String>,
    /// `# hides: <text>`: text the error must not contain, e.g. a password.
    hides: Vec<String>,
    /// `# local: <field>`: the field `validate` names, when it is not the API server's without
    /// `spec.` (the API server names a duplicate list entry, `validate` its name field).
    local: Option<String>,
}

fn corpus(folder: &str) -> Vec<Case> {
    let dir = repo_root().join("tests/e2e/corpus").join(folder);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    paths.iter().map(|p| read_case(p)).collect()
}

fn read_case(path: &Path) -> Case {
    let text = std::fs::read_to_string(path).unwrap();
    let header = |key: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix(&format!("# {key}: ")))
            .map(|v| v.trim().to_owned())
            .collect()
    };
    let doc: Value = serde_saphyr::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
    assert_eq!(doc["kind"], "MigrateJob", "{}", path.display());
    Case {
        path: path.to_owned(),
        doc,
        field: header("refused").into_iter().next(),
        names: header("names"),
        hides: header("hides"),
        local: header("local").into_iter().next(),
    }
}

/// The corpus applied to the API server: one dry-run create per file, in a fresh namespace,
/// under a private copy of the CRD. Returns each file's outcome.
async fn admit(cases: &[Case]) -> Vec<Result<(), kube::core::Status>> {
    let client = admin_client().await;
    let group = format!("{}.test.migrate-operator.io", fresh_name("corpus"));
    let resource = install_private_crd(&client, &group).await;
    let ns = fresh_name("corpus");
    create_namespace(&client, &ns).await;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
    let params = PostParams {
        dry_run: true,
        field_manager: None,
    };
    let mut outcomes = Vec::new();
    for case in cases {
        let mut doc = case.doc.clone();
        doc["apiVersion"] = Value::String(resource.api_version.clone());
        let object: DynamicObject = serde_json::from_value(doc).unwrap();
        outcomes.push(match api.create(&params, &object).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) => Err(*status),
            Err(e) => panic!(
                "{}: the API server did not answer: {e}",
                case.path.display()
            ),
        });
    }
    remove_namespace(&client, &ns).await;
    remove_private_crd(&client, &group).await;
    outcomes
}

/// The problems `migrate_crds::validate` finds in the file's spec, as `field: message`; a spec
/// that does not even deserialise gives one problem naming the parser's complaint.
fn local_problems(case: &Case) -> Vec<(String, String)> {
    match serde_json::from_value::<MigrateJobSpec>(case.doc["spec"].clone()) {
        Err(e) => vec![("(parse)".to_owned(), e.to_string())],
        Ok(spec) => match migrate_crds::validate::validate(&spec) {
            Ok(()) => vec![],
            Err(e) => e.0.into_iter().map(|p| (p.field, p.message)).collect(),
        },
    }
}

/// Each malformed MigrateJob of `corpus/refused/` is refused at admission by a cause naming the
/// field and the value its header announces, and by `validate` for the same field.
#[tokio::test]
async fn every_malformed_job_is_refused_naming_the_field_and_the_value() {
    let cases = corpus("refused");
    assert!(cases.len() >= 20, "only {} refused cases", cases.len());
    let outcomes = admit(&cases).await;
    let mut failures = Vec::new();
    for (case, outcome) in cases.iter().zip(outcomes) {
        let file = case.path.file_name().unwrap().to_string_lossy();
        let field = case
            .field
            .as_deref()
            .unwrap_or_else(|| panic!("{file} has no `# refused: <field>` line"));
        assert!(
            !case.names.is_empty(),
            "{file} has no `# names: <value>` line"
        );
        let status = match outcome {
            Ok(()) => {
                failures.push(format!("{file}: accepted by the API server"));
                continue;
            }
            Err(status) => status,
        };
        let causes = status.details.map(|d| d.causes).unwrap_or_default();
        let named = causes
            .iter()
            .any(|c| c.field == field && case.names.iter().all(|n| c.message.contains(n.as_str())));
        if !named {
            failures.push(format!(
                "{file}: no cause for {field} naming {:?}; the API server said: {}",
                case.names, status.message
            ));
        }
        for hidden in &case.hides {
            if status.message.contains(hidden.as_str()) {
                failures.push(format!(
                    "{file}: the answer shows {hidden:?}: {}",
                    status.message
                ));
            }
        }
        let local_field = case
            .local
            .as_deref()
            .unwrap_or_else(|| field.strip_prefix("spec.").unwrap_or(field));
        let local = local_problems(case);
        let found = local.iter().any(|(f, message)| {
            f == local_field && case.names.iter().all(|n| message.contains(n.as_str()))
        });
        if !found {
            failures.push(format!(
                "{file}: validate() gives no problem for {local_field} naming {:?}: {local:?}",
                case.names
            ));
        }
        for hidden in &case.hides {
            if local.iter().any(|(_, m)| m.contains(hidden.as_str())) {
                failures.push(format!("{file}: validate() shows {hidden:?}: {local:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Each job of `corpus/accepted/` (quantities written every way Kubernetes reads them) passes
/// admission and `validate`.
#[tokio::test]
async fn every_valid_job_is_accepted() {
    let cases = corpus("accepted");
    assert!(!cases.is_empty());
    let outcomes = admit(&cases).await;
    let mut failures = Vec::new();
    for (case, outcome) in cases.iter().zip(outcomes) {
        let file = case.path.file_name().unwrap().to_string_lossy();
        if let Err(status) = outcome {
            failures.push(format!("{file}: refused: {}", status.message));
        }
        let local = local_problems(case);
        if !local.is_empty() {
            failures.push(format!("{file}: validate() refused it: {local:?}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// A MigrateJob with only the required fields, plus `extra` in its spec.
fn minimal_job(name: &str, api_version: &str, extra: &Value) -> DynamicObject {
    let mut doc = serde_json::json!({
        "apiVersion": api_version,
        "kind": "MigrateJob",
        "metadata": {"name": name},
        "spec": {
            "queue": {"urlSecretRef": {"name": "migrate-redis", "key": "url"}, "key": "articles"},
            "source": {
                "urlSecretRef": {"name": "migrate-mysql", "key": "url"},
                "queries": [{"name": "article", "sql": "SELECT * FROM article WHERE id = ?", "main": true}]
            },
            "sink": {"urlSecretRef": {"name": "migrate-search", "key": "url"}, "index": "articles"},
            "workers": {"image": "ghcr.io/migrate-operator/worker:0.1.0"}
        }
    });
    if let (Some(spec), Some(extra)) = (doc["spec"].as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    serde_json::from_value(doc).unwrap()
}

/// Runs the testbed's kubectl (`KUBECTL_BIN`, built by tests/testbed/components/k8s.sh at the
/// apiserver's version) against its API server and returns its stdout, or its stderr as the
/// error.
fn kubectl(args: &[&str]) -> Result<String, String> {
    let bin = std::env::var("KUBECTL_BIN").expect(
        "KUBECTL_BIN is not set: start the testbed (tests/testbed/up.sh), which builds kubectl",
    );
    let out = std::process::Command::new(&bin)
        .args(args)
        .env("KUBECONFIG", kubeconfig_path())
        .output()
        .unwrap_or_else(|e| panic!("cannot run kubectl {bin}: {e}"));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The scale subresource answers from a job's first second, as an HPA or KEDA first reads it:
/// GET on a job created with only the required fields gives `spec.replicas` 1 (the schema's
/// default) in both autoscaling modes, also through `kubectl get --raw`. With `autoscaling:
/// External` a PUT on `/scale` and `kubectl scale` set the count; with `Backlog` (the default) a
/// write is refused with a message naming `spec.replicas`, the value and the mode to use.
#[tokio::test]
async fn the_scale_subresource_answers_from_the_first_second_in_both_modes() {
    let client = admin_client().await;
    let group = format!("{}.test.migrate-operator.io", fresh_name("scale"));
    let resource = install_private_crd(&client, &group).await;
    let ns = fresh_name("scale");
    create_namespace(&client, &ns).await;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
    let outcome = std::panic::AssertUnwindSafe(scale_checks(&api, &resource, &ns))
        .catch_unwind()
        .await;
    for name in ["backlog", "external"] {
        let _ = api.delete(name, &DeleteParams::default()).await;
    }
    remove_namespace(&client, &ns).await;
    remove_private_crd(&client, &group).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn scale_checks(api: &Api<DynamicObject>, resource: &kube::api::ApiResource, ns: &str) {
    let post = PostParams::default();
    let replicas = |scale: &Scale| scale.spec.as_ref().and_then(|s| s.replicas);
    let set = |mut scale: Scale, n: i32| {
        scale.spec.get_or_insert_with(Default::default).replicas = Some(n);
        scale
    };

    // Backlog, the default: readable at once, and a write is refused, not ignored.
    api.create(
        &post,
        &minimal_job("backlog", &resource.api_version, &serde_json::json!({})),
    )
    .await
    .unwrap();
    let scale = api.get_scale("backlog").await.unwrap();
    assert_eq!(replicas(&scale), Some(1));
    let path = format!(
        "/apis/{}/namespaces/{ns}/{}/backlog/scale",
        resource.api_version, resource.plural
    );
    let raw: Value = serde_json::from_str(&kubectl(&["get", "--raw", &path]).unwrap()).unwrap();
    assert_eq!(raw["spec"]["replicas"], 1, "{raw}");
    let refused = api
        .replace_scale("backlog", &post, &set(scale, 3))
        .await
        .expect_err("a scale write on a Backlog job is refused");
    let message = refused.to_string();
    for words in ["spec.replicas", "3", "autoscaling: External"] {
        assert!(message.contains(words), "{words:?} not in {message}");
    }
    let kind = format!("{}.{}", resource.plural, resource.group);
    let stderr = kubectl(&["scale", "--replicas=2", "-n", ns, &kind, "backlog"])
        .expect_err("kubectl scale on a Backlog job fails");
    assert!(stderr.contains("autoscaling: External"), "{stderr}");

    // External: read at once, then set by a PUT on /scale and by kubectl scale.
    let external = serde_json::json!({"autoscaling": "External"});
    api.create(
        &post,
        &minimal_job("external", &resource.api_version, &external),
    )
    .await
    .unwrap();
    let scale = api.get_scale("external").await.unwrap();
    assert_eq!(replicas(&scale), Some(1));
    let scale = api
        .replace_scale("external", &post, &set(scale, 3))
        .await
        .unwrap();
    assert_eq!(replicas(&scale), Some(3));
    assert_eq!(
        api.get("external").await.unwrap().data["spec"]["replicas"],
        3
    );
    kubectl(&["scale", "--replicas=5", "-n", ns, &kind, "external"]).unwrap();
    assert_eq!(replicas(&api.get_scale("external").await.unwrap()), Some(5));
}
