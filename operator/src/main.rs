//! The migrate-operator binary (being written).
fn main() {}
