//! Prints the MigrateJob CRD as YAML, or writes it where the repository keeps it:
//! `cargo run -p migrate-crds --bin crdgen -- --write`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

const HELP: &str = "\
Prints the MigrateJob CustomResourceDefinition, generated from the Rust types, as YAML.

Usage: crdgen [--write]

Regenerate the committed copies after changing the types in crds/src (tests fail while they
and the types disagree):
  cargo run -p migrate-crds --bin crdgen -- --write
or apply it directly:
  crdgen | kubectl apply --server-side -f -
`migrate-operator crd` prints the same YAML.

Options:
  -w, --write  Write crds/migratejob.yaml and the Helm chart's copy,
               charts/migrate-operator/crds/migratejob.yaml, instead of printing
  -h, --help   Print this help";

/// Where the repository keeps the generated CRD, relative to its root.
const COPIES: [&str; 2] = [
    "crds/migratejob.yaml",
    "charts/migrate-operator/crds/migratejob.yaml",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn main() -> ExitCode {
    let write = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("-w" | "--write") => true,
        Some("-h" | "--help") => {
            println!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("crdgen: unexpected argument {other:?} (see --help)");
            return ExitCode::from(2);
        }
    };
    let yaml = match migrate_crds::crd_yaml() {
        Ok(yaml) => yaml,
        Err(e) => {
            eprintln!("crdgen: cannot render the CRD: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !write {
        print!("{yaml}");
        return ExitCode::SUCCESS;
    }
    let root = repo_root();
    for copy in COPIES {
        let path = root.join(copy);
        if let Err(e) = std::fs::write(&path, &yaml) {
            eprintln!("crdgen: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        eprintln!("crdgen: wrote {}", path.display());
    }
    ExitCode::SUCCESS
}
