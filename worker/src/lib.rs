//! The migrate-operator worker.
//!
//! For every task id it runs five stages, one module each, composed by [`driver`] in the order
//! the data flows:
//!
//! | stage | module | what it does |
//! |---|---|---|
//! | A | [`queue`] | takes ids from a Redis list reliably, acknowledges, dead-letters |
//! | B | [`source`] | gathers the rows of one id from MySQL into a JSON document |
//! | C | [`enrich`] | calls HTTP NLP services |
//! | D | [`keywords`] | keyword matching, black/white-list filters, counts, summary |
//! | E | [`sink`] | bulk-indexes documents into Elasticsearch/OpenSearch |
//!
//! Around them: [`memory`] (RSS, cgroup and per-stage retained bytes), [`metrics`] and
//! [`http`] (`/metrics`, `/healthz`, `/readyz`), [`config`] (pipeline file plus environment)
//! and [`exit`] (the exit codes the supervisor reads).

pub mod backoff;
pub mod config;
pub mod doc;
pub mod driver;
pub mod enrich;
pub mod exit;
pub mod http;
pub mod keywords;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod queue;
pub mod settings;
pub mod sink;
pub mod source;
pub mod stage;
pub mod task;

/// The `User-Agent` of every HTTP request the worker makes (NLP services, the search server):
/// the program's name and version, so that access logs and proxies can tell its requests apart.
pub const USER_AGENT: &str = concat!("migrate-worker/", env!("CARGO_PKG_VERSION"));
