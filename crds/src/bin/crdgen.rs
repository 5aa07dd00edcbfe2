//! Prints the MigrateJob CRD as YAML: `cargo run -p migrate-crds --bin crdgen > crds/migratejob.yaml`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    print!("{}", migrate_crds::crd_yaml()?);
    Ok(())
}
