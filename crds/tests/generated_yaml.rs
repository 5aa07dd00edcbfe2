//! The committed CRD YAML is exactly what the Rust types generate.

/// Locks in that `crds/migratejob.yaml` was regenerated after every change to the types.
#[test]
fn committed_crd_yaml_matches_the_types() {
    let generated = migrate_crds::crd_yaml().expect("the CRD serialises");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/migratejob.yaml");
    let committed = std::fs::read_to_string(path).expect("crds/migratejob.yaml exists");
    similar_asserts::assert_eq!(
        committed,
        generated,
        "crds/migratejob.yaml is stale: run `cargo run -p migrate-crds --bin crdgen -- --write`"
    );
}

/// Locks in the API's shape that users and tools depend on: names, scope, subresources,
/// printer columns and the CEL rules with their messages.
#[test]
fn crd_snapshot_of_the_api_surface() {
    use kube::CustomResourceExt;
    let crd = migrate_crds::MigrateJob::crd();
    assert_eq!(crd.spec.group, "migrate-operator.io");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.kind, "MigrateJob");
    assert_eq!(crd.spec.names.plural, "migratejobs");
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["mj".to_owned()][..])
    );
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    let sub = version.subresources.as_ref().expect("subresources");
    assert!(sub.status.is_some());
    let scale = sub.scale.as_ref().expect("scale subresource");
    assert_eq!(scale.spec_replicas_path, ".spec.replicas");
    assert_eq!(scale.status_replicas_path, ".status.replicas");
    assert_eq!(
        scale.label_selector_path.as_deref(),
        Some(".status.selector")
    );
    // The scale subresource's spec path always exists (an HPA's or KEDA's first GET of /scale
    // fails on a job without it), and who sets it is an explicit mode.
    let schema = serde_json::to_value(&version.schema).expect("schema as JSON");
    let spec = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"];
    assert_eq!(spec["replicas"]["default"], 1);
    assert_eq!(spec["autoscaling"]["default"], "Backlog");
    assert_eq!(
        spec["autoscaling"]["enum"],
        serde_json::json!(["Backlog", "External"])
    );
    let columns: Vec<&str> = version
        .additional_printer_columns
        .as_ref()
        .expect("printer columns")
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        columns,
        [
            "Phase",
            "Workers",
            "Backlog",
            "Processed",
            "Restarts",
            "Age"
        ]
    );

    let yaml = migrate_crds::crd_yaml().expect("the CRD serialises");
    for message in [
        "must be less than or equal to workers.maxReplicas",
        "must be lower than memory.hard",
        "is not a whole percentage between 1% and 100%",
        "has no unit, so it would mean",
        "is not a whole number of bytes",
        "is below 1Mi",
        "exactly one query must have main: true",
        "sql is blank",
        "must be at least 30 with memory.source PodMetrics",
        "carries credentials (user:password@)",
        "is an absolute path",
        "is not a Kubernetes quantity",
        "so it would never send a batch",
        "must be between 1 and 1000",
    ] {
        assert!(yaml.contains(message), "missing CEL message {message:?}");
    }
}

/// Every property of the schema carries a description (what `kubectl explain` shows), and no
/// description breaks a line inside a paragraph (`kubectl explain` wraps paragraphs itself, so a
/// hard break from a wrapped `///` comment leaves ragged lines). Paragraph breaks stay.
#[test]
fn every_schema_field_is_documented_in_whole_paragraphs() {
    use kube::CustomResourceExt;
    let crd = migrate_crds::MigrateJob::crd();
    let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("schema as JSON");
    let mut problems = Vec::new();
    walk(&schema["openAPIV3Schema"], "", &mut problems);
    assert!(problems.is_empty(), "{problems:#?}");

    // The check itself finds both faults.
    let faulty = serde_json::json!({"properties": {
        "a": {"type": "string"},
        "b": {"description": "one line\nbroken", "type": "string"},
        "c": {"description": "one paragraph.\n\nAnother.", "type": "string"},
    }});
    let mut found = Vec::new();
    walk(&faulty, "", &mut found);
    assert_eq!(
        found,
        [
            ".a has no description",
            ".b has a line break inside a paragraph: \"one line\\nbroken\""
        ]
    );
}

fn walk(node: &serde_json::Value, path: &str, problems: &mut Vec<String>) {
    if let Some(props) = node.get("properties").and_then(|p| p.as_object()) {
        for (name, child) in props {
            let here = format!("{path}.{name}");
            // metadata, apiVersion and kind are Kubernetes' own.
            if path.is_empty() && ["metadata", "apiVersion", "kind"].contains(&name.as_str()) {
                continue;
            }
            match child.get("description").and_then(|d| d.as_str()) {
                None | Some("") => problems.push(format!("{here} has no description")),
                Some(text) => {
                    if text.split("\n\n").any(|paragraph| paragraph.contains('\n')) {
                        problems.push(format!(
                            "{here} has a line break inside a paragraph: {text:?}"
                        ));
                    }
                }
            }
            walk(child, &here, problems);
        }
    }
    if let Some(items) = node.get("items") {
        walk(items, &format!("{path}[]"), problems);
    }
    if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
        walk(values, &format!("{path}{{}}"), problems);
    }
}
