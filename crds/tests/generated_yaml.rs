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
        "workers.minReplicas must be less than or equal to workers.maxReplicas",
        "memory.soft must be lower than memory.hard",
        "memory.soft in percent must be between 1% and 100%",
        "exactly one query must have main: true",
        "sql must not be empty",
        "memory.staleAfterSeconds must be at least 30 with memory.source PodMetrics",
        "batchLingerMs must be less than flushIntervalMs, or it never takes effect",
    ] {
        assert!(yaml.contains(message), "missing CEL message {message:?}");
    }
}

/// Every field of the schema carries a description (what `kubectl explain` shows).
#[test]
fn every_schema_field_is_documented() {
    use kube::CustomResourceExt;
    let crd = migrate_crds::MigrateJob::crd();
    let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("schema as JSON");
    let mut undocumented = Vec::new();
    walk(&schema["openAPIV3Schema"], "", &mut undocumented);
    assert!(
        undocumented.is_empty(),
        "fields without a description: {undocumented:?}"
    );
}

fn walk(node: &serde_json::Value, path: &str, undocumented: &mut Vec<String>) {
    if let Some(props) = node.get("properties").and_then(|p| p.as_object()) {
        for (name, child) in props {
            let here = format!("{path}.{name}");
            // metadata, apiVersion and kind are Kubernetes' own.
            if path.is_empty() && ["metadata", "apiVersion", "kind"].contains(&name.as_str()) {
                continue;
            }
            if child.get("description").is_none() {
                undocumented.push(here.clone());
            }
            walk(child, &here, undocumented);
        }
    }
    if let Some(items) = node.get("items") {
        walk(items, &format!("{path}[]"), undocumented);
    }
}
