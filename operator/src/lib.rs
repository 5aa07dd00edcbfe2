//! The migrate-operator supervisor.
//!
//! [`policy`] is the pure decision function shared by both backends: the Kubernetes
//! [`controller`] (worker pods) and the [`local`] supervisor (worker processes on one machine,
//! no cluster). [`leak`] names the pipeline stage whose retained memory grows.

pub mod controller;
pub mod leader;
pub mod leak;
pub mod local;
pub mod metrics;
pub mod policy;

/// The `User-Agent` of every request the operator makes (the Kubernetes API, worker `/metrics`):
/// the program's name and version, so that audit logs and API priority and fairness rules can
/// tell its requests from others'.
pub const USER_AGENT: &str = concat!("migrate-operator/", env!("CARGO_PKG_VERSION"));
