//! The corpus of MigrateJobs in `tests/e2e/corpus/`, applied to the testbed's real kube-apiserver
//! (`tests/testbed/up.sh k8s`) with the CRD these types generate:
//! - every file of `corpus/refused/` is refused at admission, and the API server's answer names
//!   the field and the offending value that the file's header announces (and never shows what
//!   the header says must stay hidden, such as a password in a URL);
//! - the same spec read as a pipeline file is refused by `migrate_crds::validate` for the same
//!   field, so a job that never went through the API server gets the same answer;
//! - every file of `corpus/accepted/` is accepted by both.
//!
//! The CRD is installed under a private API group (see [`install_private_crd`]), so other test
//! runs applying their own version of the CRD to the same API server cannot change the outcome.
//! Objects are created with a server-side dry run: admission runs in full and nothing is stored.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use kube::api::{Api, DynamicObject, PostParams};
use migrate_crds::MigrateJobSpec;
use migrate_e2e::env::repo_root;
use migrate_e2e::k8s::{
    admin_client, create_namespace, fresh_name, install_private_crd, remove_namespace,
    remove_private_crd,
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
