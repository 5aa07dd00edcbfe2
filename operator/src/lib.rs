//! The migrate-operator supervisor.
//!
//! [`policy`] is the pure decision function shared by both backends: the Kubernetes controller
//! (worker pods) and the local supervisor (worker processes on one machine).

pub mod policy;
