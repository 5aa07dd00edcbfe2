//! Why the local supervisor stopped.

use std::path::PathBuf;

use super::job::JobError;
use super::plot::PlotError;
use super::process::ProcessError;

/// Why the local supervisor stopped.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The job file cannot be supervised.
    #[error("cannot use the job file")]
    Job(#[source] JobError),
    /// The worker binary does not exist.
    #[error(
        "worker binary {path} not found (build it with `cargo build -p migrate-worker` or pass --workers-bin)"
    )]
    WorkerBinary {
        /// The path looked at.
        path: PathBuf,
    },
    /// The log folder cannot be created.
    #[error("cannot create the log folder {path}")]
    LogDir {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Redis cannot be reached.
    #[error("cannot connect to redis at {url}; check --redis-url or MIGRATE_REDIS_URL")]
    Redis {
        /// The URL, password redacted.
        url: String,
        /// Why.
        #[source]
        source: redis::RedisError,
    },
    /// The HTTP client for probes cannot be built.
    #[error("cannot build the HTTP client for worker probes")]
    Http(#[source] reqwest::Error),
    /// SIGINT/SIGTERM cannot be watched.
    #[error("cannot watch SIGINT and SIGTERM")]
    Signals(#[source] std::io::Error),
    /// A worker process cannot be started.
    #[error("cannot manage a worker process")]
    Process(#[source] ProcessError),
    /// The workers refuse the configuration; restarting them will not help.
    #[error("the workers refuse their configuration (exit 78); see {log}")]
    WorkerConfig {
        /// The log of the worker that refused.
        log: PathBuf,
    },
    /// Workers keep crashing before they become ready.
    #[error("{workers} workers in a row crashed before they were ready; see {log}")]
    CrashLoop {
        /// How many.
        workers: u32,
        /// The log of the last one.
        log: PathBuf,
    },
    /// The copy of the job without its test-only leak cannot be written.
    #[error("cannot write the job without its test-only leak to {path}")]
    JobWithoutLeak {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The summary cannot be written.
    #[error("cannot write the summary to {path}")]
    Summary {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A flag a run needs is missing.
    #[error("{flags} must be given to run a job")]
    MissingFlag {
        /// The flags.
        flags: &'static str,
    },
    /// The starter job cannot be written (`migrate-operator local init`).
    #[error("cannot write the starter job to {path}")]
    Init {
        /// The file.
        path: PathBuf,
        /// Why (`AlreadyExists` when the file is there and `--force` is not given).
        #[source]
        source: std::io::Error,
    },
    /// The memory plot cannot be written.
    #[error("cannot write the memory plot to {path}")]
    Plot {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: PlotError,
    },
}

impl LocalError {
    /// A short stable name for logs.
    #[must_use]
    pub const fn metric_label(&self) -> &'static str {
        match self {
            LocalError::Job(_) => "job",
            LocalError::WorkerBinary { .. } => "worker-binary",
            LocalError::LogDir { .. } => "log-dir",
            LocalError::Redis { .. } => "redis",
            LocalError::Http(_) => "http",
            LocalError::Signals(_) => "signals",
            LocalError::Process(_) => "process",
            LocalError::WorkerConfig { .. } => "worker-config",
            LocalError::CrashLoop { .. } => "crash-loop",
            LocalError::JobWithoutLeak { .. } => "job-without-leak",
            LocalError::Summary { .. } => "summary",
            LocalError::Plot { .. } => "plot",
            LocalError::Init { .. } => "init",
            LocalError::MissingFlag { .. } => "missing-flag",
        }
    }
}
