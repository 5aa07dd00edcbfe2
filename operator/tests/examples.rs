//! The manifests in `examples/` stay valid: the MigrateJob parses as the worker reads it and
//! passes the operator's own checks, and the MigrateJob, its Secrets and its keyword ConfigMap
//! pass a server-side dry run against the testbed's real kube-apiserver (`tests/testbed/up.sh
//! k8s`), CEL rules of the CRD included.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod k8s_support;

use k8s_support::{DryRun, documents, dry_run_apply, read};
use migrate_crds::pipeline::from_yaml;
use migrate_e2e::k8s::{admin_client, create_namespace, fresh_name, install_crd, remove_namespace};

const MANIFESTS: [&str; 3] = [
    "examples/secrets.yaml",
    "examples/keywords-configmap.yaml",
    "examples/migratejob.yaml",
];

/// The example is a spec the worker and the operator accept, and it uses what the other
/// example files provide (the Secrets' keys and the ConfigMap's files).
#[test]
fn the_example_migrate_job_is_a_valid_spec_wired_to_the_example_secrets_and_keywords() {
    let spec = from_yaml(
        "examples/migratejob.yaml",
        &read("examples/migratejob.yaml"),
    )
    .expect("the example parses");
    migrate_crds::validate::validate(&spec).expect("the example passes the operator's checks");

    let secrets = documents(&read("examples/secrets.yaml"));
    let has_key = |name: &str, key: &str| {
        secrets.iter().any(|s| {
            s["metadata"]["name"] == name
                && s["stringData"][key].as_str().is_some_and(|v| !v.is_empty())
        })
    };
    let mut refs = vec![
        &spec.queue.url_secret_ref,
        &spec.source.url_secret_ref,
        &spec.sink.url_secret_ref,
    ];
    refs.extend(spec.sink.username_secret_ref.as_ref());
    refs.extend(spec.sink.password_secret_ref.as_ref());
    for r in refs {
        assert!(
            has_key(&r.name, &r.key),
            "examples/secrets.yaml lacks {}/{}",
            r.name,
            r.key
        );
    }

    let keywords = documents(&read("examples/keywords-configmap.yaml"));
    let config_map = keywords.first().expect("one ConfigMap");
    assert_eq!(
        config_map["metadata"]["name"].as_str(),
        spec.keywords.config_map.as_deref()
    );
    for set in &spec.keywords.sets {
        assert!(
            config_map["data"][&set.file]
                .as_str()
                .is_some_and(|v| !v.trim().is_empty()),
            "the keyword ConfigMap lacks {}",
            set.file
        );
    }
}

/// Placeholder credentials are visibly placeholders, so nobody mistakes them for real ones.
#[test]
fn the_example_secrets_hold_marked_placeholders_only() {
    let text = read("examples/secrets.yaml");
    assert!(
        text.contains("PLACEHOLDER"),
        "the file says its values are placeholders"
    );
    for doc in documents(&text) {
        for (key, value) in doc["stringData"].as_object().expect("stringData") {
            let value = value.as_str().unwrap_or_default();
            assert!(
                value.contains("CHANGE-ME") || value.contains("example.internal"),
                "{}: {key} is not a marked placeholder: {value}",
                k8s_support::describe(&doc)
            );
        }
    }
}

/// The API server accepts every example manifest (dry run, strict field validation), and
/// rejects a broken copy of the MigrateJob, so the dry run does check the CRD's rules.
#[tokio::test]
async fn the_examples_pass_a_server_side_dry_run() {
    let client = admin_client().await;
    install_crd(&client).await;
    let ns = fresh_name("examples");
    create_namespace(&client, &ns).await;

    let mut failures = Vec::new();
    for file in MANIFESTS {
        for doc in documents(&read(file)) {
            if let Err(e) = dry_run_apply(&client, &ns, &doc).await {
                failures.push(format!("{file}: {e:?}"));
            }
        }
    }

    let mut broken = documents(&read("examples/migratejob.yaml")).remove(0);
    broken["spec"]["source"]["queries"][1]["main"] = true.into();
    let rejected = dry_run_apply(&client, &ns, &broken).await;

    remove_namespace(&client, &ns).await;
    assert!(failures.is_empty(), "rejected:\n{}", failures.join("\n"));
    match rejected {
        Err(DryRun::Rejected(message)) => assert!(
            message.contains("exactly one query must have main: true"),
            "{message}"
        ),
        other => panic!("a job with two main queries was not rejected: {other:?}"),
    }
}
