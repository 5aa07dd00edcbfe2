//! The two ways of making the worker and operator images agree: `worker/Dockerfile` and
//! `operator/Dockerfile` (for users with a registry and a base image) and
//! `tests/testbed/images/build.sh` (the archives the testbed's node imports, made from local
//! files only). Both must start the same program, with the same default arguments, as the same
//! user: a pod spec written against one image then runs the other unchanged.
//!
//! No service is needed: the archives are built from a stand-in binary (`/bin/true`, any
//! dynamically linked x86_64 program does), since what is compared is the image's config and
//! where the binary lies in its layer, not the binary itself.

// A test fails loudly, naming what went wrong.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use migrate_e2e::env::repo_root;
use serde_json::Value;

/// What a Dockerfile's final stage says about how the image starts.
#[derive(Debug, PartialEq, Eq)]
struct Start {
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    user: String,
}

/// Reads the last `FROM` stage of a Dockerfile: its `USER`, `ENTRYPOINT` and `CMD` (exec form
/// only, the form both Dockerfiles use; a shell form would start `/bin/sh`, which the
/// distroless base does not have).
fn dockerfile_start(path: &Path) -> Start {
    let text = std::fs::read_to_string(path).unwrap();
    let last_stage = text
        .rsplit_once("\nFROM ")
        .map(|(_, stage)| stage)
        .unwrap_or_else(|| panic!("{} has no FROM line", path.display()));
    let instruction = |name: &str| -> Option<String> {
        last_stage
            .lines()
            .rev()
            .filter_map(|l| l.trim().strip_prefix(name))
            .find_map(|rest| rest.strip_prefix(' '))
            .map(|v| v.trim().to_owned())
    };
    let exec_form = |name: &str| -> Vec<String> {
        let value = instruction(name)
            .unwrap_or_else(|| panic!("{}: no {name} in the final stage", path.display()));
        serde_json::from_str(&value).unwrap_or_else(|e| {
            panic!(
                "{}: {name} {value} is not the exec (JSON array) form: {e}",
                path.display()
            )
        })
    };
    Start {
        entrypoint: exec_form("ENTRYPOINT"),
        cmd: exec_form("CMD"),
        user: instruction("USER")
            .unwrap_or_else(|| panic!("{}: no USER in the final stage", path.display())),
    }
}

/// `tar -xOf archive member`: one member's bytes.
fn tar_member(archive: &Path, member: &str) -> Vec<u8> {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(archive)
        .arg(member)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tar -xOf {} {member}: {}",
        archive.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Builds `kind`'s archive with build.sh and returns its config's `config` object and the
/// names in its one layer.
fn built_image(kind: &str, dir: &Path) -> (Value, Vec<String>) {
    let out = Command::new("bash")
        .arg(repo_root().join("tests/testbed/images/build.sh"))
        .arg(kind)
        .arg(dir)
        .arg("/bin/true")
        // lib.sh keeps its logs and locks under TESTBED_DIR: a throw-away one, so the test
        // touches no running testbed.
        .env("TESTBED_DIR", dir.join("testbed"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build.sh {kind} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let archive = dir.join(format!("migrate-{kind}.tar"));
    let manifest: Value = serde_json::from_slice(&tar_member(&archive, "manifest.json")).unwrap();
    let config_name = manifest[0]["Config"].as_str().unwrap();
    let layer_name = manifest[0]["Layers"][0].as_str().unwrap();
    let config: Value = serde_json::from_slice(&tar_member(&archive, config_name)).unwrap();
    let layer = dir.join(format!("{kind}-layer.tar"));
    std::fs::write(&layer, tar_member(&archive, layer_name)).unwrap();
    let listing = Command::new("tar").arg("-tf").arg(&layer).output().unwrap();
    assert!(listing.status.success());
    let names = String::from_utf8(listing.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim_start_matches("./").to_owned())
        .collect();
    (config["config"].clone(), names)
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Both paths give `kind`'s image the same entrypoint, default arguments and user, and the
/// entrypoint is the binary in the archive's layer.
fn both_paths_agree(kind: &str) {
    let dockerfile = dockerfile_start(&repo_root().join(kind).join("Dockerfile"));
    let dir = tempfile::tempdir().unwrap();
    let (config, layer) = built_image(kind, dir.path());
    let archive = Start {
        entrypoint: strings(&config["Entrypoint"]),
        cmd: strings(&config["Cmd"]),
        user: config["User"].as_str().unwrap_or_default().to_owned(),
    };
    println!("{kind}: Dockerfile {dockerfile:?}, archive {archive:?}");
    assert_eq!(
        archive, dockerfile,
        "build.sh's {kind} image must start like {kind}/Dockerfile's"
    );
    let binary = dockerfile.entrypoint[0].trim_start_matches('/');
    assert!(
        layer.iter().any(|n| n == binary),
        "the archive's layer holds the entrypoint {binary}: {layer:?}"
    );
    assert!(
        layer.iter().any(|n| n == "etc/passwd"),
        "a passwd file names the user: {layer:?}"
    );
}

/// The worker image: `/usr/local/bin/migrate-worker run --pipeline /etc/migrate/pipeline.yaml`
/// as 65532 on both paths.
#[test]
fn the_worker_image_starts_the_same_from_the_dockerfile_and_the_archive() {
    both_paths_agree("worker");
}

/// The operator image: `/usr/local/bin/migrate-operator run` as 65532 on both paths.
#[test]
fn the_operator_image_starts_the_same_from_the_dockerfile_and_the_archive() {
    both_paths_agree("operator");
}
