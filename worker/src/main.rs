//! `migrate-worker`: the worker binary. Parses flags, sets up logging and runs the driver.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use migrate_worker::config::{
    CheckArgs, RunArgs, WorkerConfig, load_pipeline_with_memory_limit, parse_memory_limit,
};
use migrate_worker::driver;
use migrate_worker::exit::{ExitReason, write_termination_log};
use migrate_worker::logging::{self, LogFormat};
use migrate_worker::memory::read_cgroup;
use migrate_worker::settings;
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOC: migrate_worker::memory::CountingAlloc = migrate_worker::memory::CountingAlloc;

/// Takes ids from a Redis list, builds each document from MySQL, enriches it over HTTP,
/// matches keywords and bulk-indexes it into Elasticsearch/OpenSearch: at least once, with
/// its memory watched.
#[derive(Debug, Parser)]
#[command(
    name = "migrate-worker",
    version,
    after_help = "Connection strings come from the environment (MIGRATE_REDIS_URL, MIGRATE_MYSQL_URL,
MIGRATE_SEARCH_URL); see `migrate-worker run --help`. Usually started by migrate-operator, in a
pod or by `migrate-operator local`."
)]
struct Cli {
    /// Log format: text (coloured only on a terminal) or json (one object per line).
    #[arg(
        long,
        global = true,
        env = migrate_contract::env::LOG_FORMAT,
        value_enum,
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up: the size of the larger variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the pipeline until the queue is drained (drain mode) or a signal stops it.
    ///
    /// Exit codes: 0 drained or stopped by SIGTERM/SIGINT, 10 over the soft memory limit, 11
    /// over the hard memory limit, 12 recycled after workers.recycleAfterTasks, 78
    /// configuration error (restarting will not help), 1 anything else.
    Run(RunArgs),
    /// Check a pipeline file and print every problem, or the settings it resolves to (each
    /// with its source: spec, default, environment or cgroup) and any combination that cannot
    /// take effect (exit 0 when valid, 78 when not).
    Check(CheckArgs),
}

fn check(args: &CheckArgs) -> i32 {
    let pipeline = &args.pipeline;
    let loaded = parse_memory_limit(args.memory_limit_bytes.as_deref()).and_then(|limit| {
        let cgroup_max = read_cgroup().and_then(|c| c.max);
        load_pipeline_with_memory_limit(pipeline, limit.or(cgroup_max))
            .map(|spec| (spec, limit, cgroup_max))
    });
    let (spec, limit, cgroup_max) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{}: {e}", pipeline.display());
            for problem in e.problems() {
                eprintln!("  - {problem}");
            }
            return ExitReason::Config.code();
        }
    };
    println!(
        "{}: valid (queue {}, index {})",
        pipeline.display(),
        spec.queue.key,
        spec.sink.index
    );
    let given = std::fs::read_to_string(pipeline)
        .map(|text| settings::given_fields(&text))
        .unwrap_or_default();
    match settings::resolve(&spec, &given, limit, cgroup_max) {
        Ok(resolved) => {
            print!("settings (each with its source):\n{resolved}");
            0
        }
        Err(e) => {
            eprintln!(
                "{}: {}",
                pipeline.display(),
                migrate_contract::error::error_chain(&e)
            );
            ExitReason::Config.code()
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<i32> {
    let config = match WorkerConfig::from_args(args) {
        Ok(config) => config,
        Err(e) => {
            let problems = e.problems();
            eprintln!("configuration error: {e}");
            if problems != [e.to_string()] {
                for problem in &problems {
                    eprintln!("  - {problem}");
                }
            }
            tracing::error!(problems = ?problems, "Configuration error.");
            write_termination_log(ExitReason::Config, &problems.join("; "));
            return Ok(ExitReason::Config.code());
        }
    };
    // The settings are logged once, and what cannot take effect is said, not ignored.
    let given = std::fs::read_to_string(&config.pipeline_path)
        .map(|text| settings::given_fields(&text))
        .unwrap_or_default();
    let cgroup_max = read_cgroup().and_then(|c| c.max);
    if let Ok(resolved) =
        settings::resolve(&config.spec, &given, config.memory_limit_bytes, cgroup_max)
    {
        for s in &resolved.settings {
            tracing::debug!(setting = %s.name, value = %s.value, source = s.source.as_str(), "Setting.");
        }
        for warning in &resolved.warnings {
            tracing::warn!(%warning, "Setting without effect.");
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let reason = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        driver::cancel_on_signals(shutdown.clone())
            .context("cannot install the signal handlers")?;
        anyhow::Ok(driver::run(config, shutdown).await)
    })?;
    // Tasks still running (after a hard stop) are not waited for.
    runtime.shutdown_background();
    Ok(reason.code())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let code = match cli.command {
        Command::Check(args) => Ok(check(&args)),
        Command::Run(args) => run(args),
    };
    let code = code.unwrap_or_else(|e| {
        eprintln!("migrate-worker: {e:#}");
        ExitReason::Fatal.code()
    });
    std::process::exit(code)
}
