//! Environment variables the supervisor sets and the worker reads (`docs/architecture.md`,
//! "Worker process contract"). The operator fills the URLs and credentials from Secrets by
//! `secretKeyRef`; the local supervisor sets them from its own flags.

/// Redis URL of the queue (required).
pub const REDIS_URL: &str = "MIGRATE_REDIS_URL";
/// MySQL URL of the source (required).
pub const MYSQL_URL: &str = "MIGRATE_MYSQL_URL";
/// Elasticsearch/OpenSearch URL of the sink (required).
pub const SEARCH_URL: &str = "MIGRATE_SEARCH_URL";
/// Basic-auth user of the search endpoint (optional, set together with [`SEARCH_PASSWORD`]).
pub const SEARCH_USERNAME: &str = "MIGRATE_SEARCH_USERNAME";
/// Basic-auth password of the search endpoint (optional, set together with
/// [`SEARCH_USERNAME`]).
pub const SEARCH_PASSWORD: &str = "MIGRATE_SEARCH_PASSWORD";
/// The worker's id in the Redis keys (default: host name and pid).
pub const WORKER_ID: &str = "MIGRATE_WORKER_ID";
/// Folder holding the keyword files the pipeline names.
pub const KEYWORDS_DIR: &str = "MIGRATE_KEYWORDS_DIR";
/// Address of the worker's `/metrics`, `/healthz` and `/readyz`.
pub const LISTEN: &str = "MIGRATE_LISTEN";
/// Memory limit the worker's soft and hard thresholds refer to, overriding its cgroup's (bytes
/// or a quantity such as `512Mi`; the local supervisor sets it).
pub const MEMORY_LIMIT_BYTES: &str = "MIGRATE_MEMORY_LIMIT_BYTES";
/// File the worker writes its exit reason to (the operator sets it to the container's
/// `terminationMessagePath`).
pub const TERMINATION_LOG: &str = "MIGRATE_TERMINATION_LOG";
/// Set (to `1`) by a supervisor: at its soft memory line the worker asks for a restart and keeps
/// working instead of draining itself (see [`crate::restart`]).
pub const SUPERVISED: &str = "MIGRATE_SUPERVISED";

/// Log format of the worker: `text` (the default; coloured only on a terminal) or `json`, one
/// object per line (the operator sets it for pods).
pub const LOG_FORMAT: &str = "MIGRATE_LOG_FORMAT";

/// Every variable above, for tests that compare them with the documentation.
pub const ALL: [&str; 12] = [
    REDIS_URL,
    MYSQL_URL,
    SEARCH_URL,
    SEARCH_USERNAME,
    SEARCH_PASSWORD,
    WORKER_ID,
    KEYWORDS_DIR,
    LISTEN,
    MEMORY_LIMIT_BYTES,
    TERMINATION_LOG,
    LOG_FORMAT,
    SUPERVISED,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variable is named on the architecture page, so the page and the code agree.
    #[test]
    fn every_variable_is_documented() {
        let doc = include_str!("../../docs/architecture.md");
        for name in ALL {
            assert!(
                doc.contains(&format!("`{name}`")),
                "{name} is not documented"
            );
        }
    }
}
