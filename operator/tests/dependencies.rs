//! The operator depends on the worker's contract, never on the worker.
//!
//! What the two must agree on (Redis keys and the supervisor's queue operations, environment
//! variables, exit codes, the metrics reader, memory readers) lives in `migrate-contract`. This
//! test reads the workspace's resolved dependency graph with `cargo metadata` and fails if
//! `migrate-operator` reaches `migrate-worker` through its normal dependencies, directly or
//! through any other crate. (Dev-dependencies are not followed: they never ship.)

#![allow(clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Package names reachable from `root` over normal (not dev, not build) dependency edges of
/// the resolved graph of `cargo metadata --format-version 1`, each with the package that
/// first led to it.
fn normal_dependencies(metadata: &Value, root: &str) -> BTreeMap<String, String> {
    let packages = metadata["packages"]
        .as_array()
        .expect("metadata has packages");
    let name_of: HashMap<&str, &str> = packages
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p["name"].as_str()?)))
        .collect();
    let nodes = metadata["resolve"]["nodes"]
        .as_array()
        .expect("metadata has a resolved graph");
    let edges: HashMap<&str, Vec<&str>> = nodes
        .iter()
        .filter_map(|node| {
            let id = node["id"].as_str()?;
            let normal = node["deps"]
                .as_array()?
                .iter()
                .filter(|dep| {
                    dep["dep_kinds"]
                        .as_array()
                        .is_some_and(|kinds| kinds.iter().any(|k| k["kind"].is_null()))
                })
                .filter_map(|dep| dep["pkg"].as_str())
                .collect();
            Some((id, normal))
        })
        .collect();
    let start = name_of
        .iter()
        .find(|(_, name)| **name == root)
        .map(|(id, _)| *id)
        .unwrap_or_else(|| panic!("{root} is not in the workspace"));
    let name = |id: &str| name_of.get(id).copied().unwrap_or(id).to_owned();
    let mut seen = BTreeSet::new();
    let mut reached = BTreeMap::new();
    let mut stack = vec![start];
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        for &dep in edges.get(id).into_iter().flatten() {
            reached.entry(name(dep)).or_insert_with(|| name(id));
            stack.push(dep);
        }
    }
    reached
}

/// How `root` reaches `target` in the map [`normal_dependencies`] returns: `root -> ... ->
/// target`.
fn path_to(deps: &BTreeMap<String, String>, root: &str, target: &str) -> String {
    let mut path = vec![target.to_owned()];
    let mut at = target;
    while let Some(parent) = deps.get(at).filter(|p| *p != root && path.len() < 64) {
        path.push(parent.clone());
        at = parent;
    }
    path.push(root.to_owned());
    path.reverse();
    path.join(" -> ")
}

fn workspace_metadata() -> Value {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(&manifest)
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON")
}

/// The operator's shipped dependency graph holds the contract and not the worker: a
/// `migrate-worker` dependency, even through another crate, fails here.
#[test]
fn the_operator_never_depends_on_the_worker() {
    let metadata = workspace_metadata();
    let deps = normal_dependencies(&metadata, "migrate-operator");
    assert!(
        deps.contains_key("migrate-contract") && deps.contains_key("migrate-crds"),
        "the graph walk missed the contract or the CRD crate: {:?}",
        deps.keys()
    );
    assert!(
        !deps.contains_key("migrate-worker"),
        "migrate-operator depends on migrate-worker again ({}); what both need belongs in \
         migrate-contract",
        path_to(&deps, "migrate-operator", "migrate-worker")
    );
}

/// The contract stays small: it depends on neither side it is the contract between.
#[test]
fn the_contract_depends_on_neither_the_worker_nor_the_operator() {
    let metadata = workspace_metadata();
    let deps = normal_dependencies(&metadata, "migrate-contract");
    for side in ["migrate-worker", "migrate-operator", "kube", "mysql_async"] {
        assert!(
            !deps.contains_key(side),
            "migrate-contract depends on {side} ({})",
            path_to(&deps, "migrate-contract", side)
        );
    }
}
