//! The local supervisor: worker processes on one machine, supervised by the same policy as pods.
//!
//! `migrate-operator local --job FILE` reads a MigrateJob file, starts `migrate-worker run
//! --pipeline FILE` processes (each with its own id `local-<n>`, port and log file), and every
//! `memory.checkIntervalMs` observes them — RSS from `/proc`, readiness and counters from their
//! `/metrics`, exits, the backlog in Redis — asks [`crate::policy::decide`] what to do and does
//! it: start workers, drain one (SIGTERM, SIGKILL after its grace period), kill one, requeue
//! what an exited worker held, finish a drained job. Memory restarts name the leaking stage
//! ([`crate::leak`]). A progress bar shows the run; a [`Summary`] ends it, on stdout and
//! optionally as JSON. SIGINT or SIGTERM drains every worker, then the supervisor exits.
//!
//! | module | concern |
//! |---|---|
//! | [`job`] | reading and checking the job file, the policy settings, the memory numbers |
//! | `process` | spawning, signalling and reaping worker processes |
//! | `observe` | memory from `/proc`, readiness and metrics over HTTP |
//! | `supervisor` | the observe → decide → act loop |
//! | `progress` | the progress bar and a log writer that does not tear it |
//! | `summary` | what the run did, as a table and as JSON |

pub mod job;
mod observe;
mod process;
mod progress;
mod summary;
mod supervisor;

use std::path::PathBuf;

pub use job::{JobError, LocalJob};
pub use observe::{Scraped, parse_metrics};
pub use process::ProcessError;
pub use progress::LogWriter;
pub use summary::{MemoryLimits, Outcome, RestartEvent, Summary, WorkerSummary};

use process::Launch;
use supervisor::Supervisor;

/// Flags of `migrate-operator local`.
#[derive(Debug, Clone, clap::Args)]
pub struct LocalArgs {
    /// The MigrateJob file: a manifest or its spec, as YAML.
    #[arg(long, value_name = "FILE")]
    pub job: PathBuf,
    /// The worker binary [default: migrate-worker next to this executable].
    #[arg(long, value_name = "PATH")]
    pub workers_bin: Option<PathBuf>,
    /// Memory limit of each worker, which percentage thresholds refer to, e.g. 512Mi
    /// [default: workers.resources.limits.memory of the job].
    #[arg(long, value_name = "SIZE")]
    pub memory_limit: Option<String>,
    /// Memory limit the workers are told (MIGRATE_MEMORY_LIMIT_BYTES; their own soft and hard
    /// checks refer to it) [default: --memory-limit]. A larger value leaves the reaction to
    /// the soft limit to the supervisor alone, as benchmarks of the supervisor need.
    #[arg(long, value_name = "SIZE")]
    pub worker_memory_limit: Option<String>,
    /// First port tried for the workers' /metrics, /healthz and /readyz.
    #[arg(long, default_value_t = 9100, value_name = "PORT")]
    pub base_port: u16,
    /// Folder of the worker log files, one per worker (`local-<n>.log`).
    #[arg(long, default_value = "migrate-local-logs", value_name = "DIR")]
    pub log_dir: PathBuf,
    /// Folder of the keyword files named by the job [default: keywords.configMap when it names
    /// a folder next to the job file].
    #[arg(long, env = "MIGRATE_KEYWORDS_DIR", value_name = "DIR")]
    pub keywords_dir: Option<PathBuf>,
    /// Redis URL of the queue; the workers get it too.
    #[arg(
        long,
        env = "MIGRATE_REDIS_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub redis_url: String,
    /// No progress bar (figures are logged every 10 s instead).
    #[arg(long)]
    pub no_progress: bool,
    /// Also write the summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub summary_json: Option<PathBuf>,
}

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
    #[error("cannot connect to redis at {url}")]
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
    /// The summary cannot be written.
    #[error("cannot write the summary to {path}")]
    Summary {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
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
            LocalError::Summary { .. } => "summary",
        }
    }
}

/// The default worker binary: `migrate-worker` next to the running executable.
#[must_use]
pub fn default_workers_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("migrate-worker")))
        .unwrap_or_else(|| PathBuf::from("migrate-worker"))
}

/// Runs the local supervisor until the job completes (drain mode) or a signal arrives; prints
/// the summary on stdout, writes it as JSON when asked, and returns it.
///
/// # Errors
/// [`LocalError`] when the job cannot be started or its workers refuse their configuration.
pub async fn run(args: LocalArgs) -> Result<Summary, LocalError> {
    let job = LocalJob::load(
        &args.job,
        args.memory_limit.as_deref(),
        args.worker_memory_limit.as_deref(),
    )
    .map_err(LocalError::Job)?;
    let bin = args.workers_bin.clone().unwrap_or_else(default_workers_bin);
    if !bin.is_file() {
        return Err(LocalError::WorkerBinary { path: bin });
    }
    std::fs::create_dir_all(&args.log_dir).map_err(|source| LocalError::LogDir {
        path: args.log_dir.clone(),
        source,
    })?;
    let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
    let launch = Launch {
        bin,
        job: job.path.clone(),
        log_dir: absolute(args.log_dir.clone()),
        keywords_dir: args
            .keywords_dir
            .clone()
            .map(absolute)
            .or_else(|| job.keywords_folder()),
        redis_url: args.redis_url.clone(),
        memory_limit: job.worker_memory_limit,
    };
    let supervisor = Supervisor::new(job, launch, args.base_port, !args.no_progress).await?;
    let summary = supervisor.run().await?;
    print!("\n{}", summary.table());
    if let Some(path) = &args.summary_json {
        let write = |source| LocalError::Summary {
            path: path.clone(),
            source,
        };
        let json =
            serde_json::to_string_pretty(&summary).map_err(|e| write(std::io::Error::other(e)))?;
        std::fs::write(path, json + "\n").map_err(write)?;
    }
    Ok(summary)
}
