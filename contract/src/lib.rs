//! What the migrate-operator supervisor (the operator, or `migrate-operator local`) and its
//! workers must agree on, and nothing else: the operator depends on this crate, never on the
//! worker.
//!
//! | module | the contract |
//! |---|---|
//! | [`keys`] | the Redis key layout of a job ([`Keys`]) |
//! | [`queue`] | what a supervisor does on those keys: requeue a dead worker's ids, backlog, heartbeats, dead letters (Lua scripts under `src/lua/`) |
//! | [`env`] | environment variables the supervisor sets and the worker reads |
//! | [`exit`] | worker exit codes ([`exit::ExitReason`]), restart reasons and the one classifier between them |
//! | [`metrics`] | the reader of a worker's `/metrics` text and the names read from it |
//! | [`restart`] | a supervised worker's restart ask at its soft line, and each worker's jittered recycle target |
//! | [`memory`] | RSS and cgroup memory readers, for a worker's own figures and a supervisor's view of its children |
//! | [`error`] | the one-line error chain used in logs and messages |
//!
//! `docs/architecture.md` describes each of these contracts; code that changes one changes the
//! page in the same commit.

pub mod env;
pub mod error;
pub mod exit;
pub mod keys;
pub mod memory;
pub mod metrics;
pub mod queue;
pub mod restart;

pub use error::error_chain;
pub use keys::Keys;
