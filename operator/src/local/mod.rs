//! The local supervisor: worker processes on one machine, supervised by the same policy as pods.
//!
//! `migrate-operator local --job FILE` reads a MigrateJob file, starts `migrate-worker run
//! --pipeline FILE` processes (each with its own id `local-<n>`, port and log file), and every
//! `memory.checkIntervalMs` observes them — RSS from `/proc`, readiness and counters from their
//! `/metrics`, exits, the backlog in Redis — asks [`crate::policy::decide`] what to do and does
//! it: start workers, drain one (SIGTERM, SIGKILL after its grace period), kill one, requeue
//! what an exited worker held, finish a drained job. Memory restarts name the leaking stage
//! ([`crate::leak`]). A progress bar shows the run; a [`Summary`] ends it, on stdout and
//! optionally as JSON; `--plot` draws every worker's memory over time as a PNG ([`plot`]).
//! SIGINT or SIGTERM drains every worker, then the supervisor exits.
//!
//! | module | concern |
//! |---|---|
//! | `error` | why the supervisor stopped ([`LocalError`]) |
//! | [`job`] | reading and checking the job file, the policy settings, the memory numbers |
//! | `process` | spawning, signalling and reaping worker processes |
//! | `observe` | memory from `/proc`, readiness and metrics over HTTP |
//! | `supervisor` | the observe → decide → act loop |
//! | `progress` | the progress bar and a log writer that does not tear it |
//! | `summary` | what the run did, as a table and as JSON |
//! | [`plot`] | the workers' memory over time, restarts marked, as a PNG |

mod error;
pub mod job;
mod observe;
pub mod plot;
mod process;
mod progress;
mod summary;
mod supervisor;

use std::path::{Path, PathBuf};

pub use error::LocalError;
pub use job::{JobError, LocalJob};
pub use observe::{Scraped, parse_metrics};
pub use plot::{MemoryLines, PlotError, PlotOptions, RestartMark, RssSeries};
pub use process::ProcessError;
pub use progress::LogWriter;
pub use summary::{MemoryLimits, Outcome, RestartEvent, Summary, WorkerSummary};

use process::Launch;
use supervisor::Supervisor;

/// Flags of `migrate-operator local`.
#[derive(Debug, Clone, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct LocalArgs {
    /// `init`: write a commented starter job instead of running one.
    #[command(subcommand)]
    pub command: Option<LocalCommand>,
    /// The MigrateJob file: a manifest or its spec, as YAML (required to run a job).
    #[arg(long, required = true, value_name = "FILE")]
    pub job: Option<PathBuf>,
    /// The worker binary [default: migrate-worker next to this executable].
    #[arg(long, value_name = "PATH")]
    pub workers_bin: Option<PathBuf>,
    /// Memory limit of each worker, e.g. 512Mi; percentage thresholds (memory.soft,
    /// memory.hard) refer to it [default: workers.resources.limits.memory of the job].
    #[arg(long, value_name = "SIZE")]
    pub memory_limit: Option<String>,
    /// Memory limit the workers are given as MIGRATE_MEMORY_LIMIT_BYTES, which their own soft
    /// and hard checks refer to [default: --memory-limit]. A larger value leaves the soft
    /// limit to the supervisor alone (for benchmarks of the supervisor).
    #[arg(long, value_name = "SIZE")]
    pub worker_memory_limit: Option<String>,
    /// First port tried for the workers' /metrics, /healthz and /readyz; each worker takes the
    /// first free port from there.
    #[arg(long, default_value_t = 9100, value_name = "PORT")]
    pub base_port: u16,
    /// Folder of the worker logs, one file per worker process (local-<n>.log).
    #[arg(long, default_value = "migrate-local-logs", value_name = "DIR")]
    pub log_dir: PathBuf,
    /// Folder of the keyword files named by the job [default: the folder keywords.configMap
    /// names, next to the job file].
    #[arg(long, env = migrate_contract::env::KEYWORDS_DIR, value_name = "DIR")]
    pub keywords_dir: Option<PathBuf>,
    /// Redis URL of the queue, e.g. redis://127.0.0.1:6379/0; the workers get it too.
    #[arg(
        long,
        required = true,
        env = migrate_contract::env::REDIS_URL,
        hide_env_values = true,
        value_name = "URL"
    )]
    pub redis_url: Option<String>,
    /// No progress bar; the figures are logged every 10 s instead.
    #[arg(long)]
    pub no_progress: bool,
    /// Also write the summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub summary_json: Option<PathBuf>,
    /// At the end, draw every worker's memory over time as a PNG, against the limit and the
    /// soft and hard thresholds, with each restart marked by its reason.
    #[arg(long, value_name = "FILE.png")]
    pub plot: Option<PathBuf>,
    /// When the job has a test-only leak (testOnly.leakBytesPerTask), at most K live workers
    /// that are not draining run with it; the others run a copy of the job without testOnly,
    /// written to <log-dir>/job-without-leak.yaml. A leaky worker drained for memory gets a
    /// leaky replacement [default: every worker leaks].
    #[arg(long, value_name = "K")]
    pub leaky_workers: Option<usize>,
}

/// What `migrate-operator local` does besides running a job.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum LocalCommand {
    /// Write a commented starter job for one table of your own (the README's example), to
    /// edit and then run with `migrate-operator local --job FILE`.
    Init {
        /// The file to write.
        #[arg(default_value = "job.yaml", value_name = "FILE")]
        file: PathBuf,
        /// Replace the file when it exists.
        #[arg(long)]
        force: bool,
    },
}

/// The starter job `migrate-operator local init` writes: the README's hand-written job (a
/// test keeps the two the same).
pub const STARTER_JOB: &str = include_str!("starter-job.yaml");

/// Writes [`STARTER_JOB`] to `path`, never over an existing file unless `force`.
///
/// # Errors
/// [`LocalError::Init`] when the file exists (without `force`) or cannot be written.
pub fn init(path: &Path, force: bool) -> Result<(), LocalError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let written = options
        .open(path)
        .and_then(|mut file| std::io::Write::write_all(&mut file, STARTER_JOB.as_bytes()));
    written.map_err(|source| LocalError::Init {
        path: path.to_owned(),
        source,
    })
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
/// the summary on stdout, writes it as JSON and draws the memory plot when asked, and returns
/// it.
///
/// # Errors
/// [`LocalError`] when the job cannot be started or its workers refuse their configuration.
pub async fn run(args: LocalArgs) -> Result<Summary, LocalError> {
    // Optional only so that `local init` parses without them; clap requires them for a run.
    let (Some(job_path), Some(redis_url)) = (args.job.clone(), args.redis_url.clone()) else {
        return Err(LocalError::MissingFlag {
            flags: "--job and --redis-url (or MIGRATE_REDIS_URL)",
        });
    };
    let job = LocalJob::load(
        &job_path,
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
    let job_without_leak = match args.leaky_workers {
        Some(_) if supervisor::job_leaks(&job) => {
            Some(absolute(write_job_without_leak(&job_path, &args.log_dir)?))
        }
        _ => None,
    };
    let launch = Launch {
        bin,
        job: job.path.clone(),
        job_without_leak,
        leaky_workers: args.leaky_workers,
        log_dir: absolute(args.log_dir.clone()),
        keywords_dir: args
            .keywords_dir
            .clone()
            .map(absolute)
            .or_else(|| job.keywords_folder()),
        redis_url,
        memory_limit: job.worker_memory_limit,
    };
    let supervisor = Supervisor::new(job, launch, args.base_port, !args.no_progress).await?;
    let (summary, mut series) = supervisor.run().await?;
    print!("\n{}", summary.table());
    if let Some(path) = &args.plot {
        write_plot(&summary, &mut series, path)?;
    }
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

/// Writes the job file without `testOnly` to `<log_dir>/job-without-leak.yaml`, for the
/// workers that must not leak, and returns its path. The file is read again rather than the
/// checked spec written out, so that the copy differs from the job only by the leak.
fn write_job_without_leak(job: &Path, log_dir: &Path) -> Result<PathBuf, LocalError> {
    let path = log_dir.join("job-without-leak.yaml");
    let error = |source| LocalError::JobWithoutLeak {
        path: path.clone(),
        source,
    };
    let mut spec =
        migrate_crds::pipeline::load(job).map_err(|e| error(std::io::Error::other(e)))?;
    spec.test_only = None;
    let yaml =
        migrate_crds::pipeline::to_yaml(&spec).map_err(|e| error(std::io::Error::other(e)))?;
    std::fs::write(&path, yaml).map_err(error)?;
    tracing::info!(path = %path.display(), "Job without the test-only leak written.");
    Ok(path)
}

/// Marks the run's restarts on `series` and draws it to `path`.
fn write_plot(summary: &Summary, series: &mut RssSeries, path: &Path) -> Result<(), LocalError> {
    for event in &summary.restart_events {
        series.mark_restart(RestartMark {
            worker: event.worker.clone(),
            at: std::time::Duration::from_millis(event.at_ms),
            memory_bytes: event.memory_bytes,
            reason: event.reason.clone(),
        });
    }
    let options = PlotOptions {
        title: format!(
            "Worker memory — queue {}, {} restarts",
            summary.queue,
            summary.restart_events.len()
        ),
        ..PlotOptions::default()
    };
    plot::write_png(series, &options, path).map_err(|source| LocalError::Plot {
        path: path.to_owned(),
        source,
    })?;
    tracing::info!(path = %path.display(), "Memory plot written.");
    Ok(())
}

#[cfg(test)]
mod init_tests {
    use super::*;

    /// The starter job is valid once a memory limit is given (as a local run gives one), and
    /// `init` never overwrites a file unless asked to.
    #[test]
    fn init_writes_a_valid_starter_job_and_keeps_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.yaml");
        init(&path, false).unwrap();
        let spec = migrate_crds::pipeline::load(&path).unwrap();
        migrate_crds::validate::validate_with_memory_limit(&spec, Some(1 << 30)).unwrap();
        assert!(spec.sink.create_index.is_some());

        std::fs::write(&path, "mine").unwrap();
        let err = init(&path, false).unwrap_err();
        assert!(err.to_string().contains("job.yaml"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "mine");
        init(&path, true).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), STARTER_JOB);
    }

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        local: LocalArgs,
    }

    /// `local init FILE` needs none of the flags a run needs; a run still needs them.
    #[test]
    fn init_parses_without_the_flags_of_a_run() {
        use clap::Parser as _;
        let cli = Cli::try_parse_from(["local", "init", "mine.yaml"]).unwrap();
        assert!(
            matches!(&cli.local.command, Some(LocalCommand::Init { file, force: false }) if file == Path::new("mine.yaml")),
            "{cli:?}"
        );
        let cli =
            Cli::try_parse_from(["local", "--job", "j.yaml", "--redis-url", "redis://r"]).unwrap();
        assert!(cli.local.command.is_none());
        assert!(Cli::try_parse_from(["local", "--redis-url", "redis://r"]).is_err());
    }
}
