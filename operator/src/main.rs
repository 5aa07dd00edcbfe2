//! The migrate-operator binary: the Kubernetes controller, the local supervisor, and the CRD.

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// Supervises the workers that move MySQL rows into a search index: drains and replaces a
/// worker whose memory grows before the kernel kills it, requeues what a dead worker held, and
/// names the leaking stage. In a Kubernetes cluster (`run`) or as processes on this machine
/// (`local`).
#[derive(Debug, Parser)]
#[command(
    name = "migrate-operator",
    version,
    after_help = "Examples:
  migrate-operator crd | kubectl apply --server-side -f -
  migrate-operator run --namespace jobs
  migrate-operator local --job job.yaml --redis-url redis://127.0.0.1:6379 --plot rss.png"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the Kubernetes controller: reconcile MigrateJobs into supervised worker pods.
    ///
    /// Uses the in-cluster service account, or KUBECONFIG outside a cluster. Replicas elect a
    /// leader through a Lease; only the leader reconciles.
    Run(migrate_operator::controller::ControllerArgs),
    /// Supervise worker processes on this machine from a MigrateJob file, no cluster needed.
    ///
    /// Starts `migrate-worker run` processes as the job says, drains and replaces them by the
    /// same memory policy as the operator, shows a progress bar, and ends with a summary when
    /// the queue is drained (drain mode) or at Ctrl-C, which drains every worker first.
    ///
    /// The workers inherit this environment: set MIGRATE_MYSQL_URL and MIGRATE_SEARCH_URL (and
    /// MIGRATE_SEARCH_USERNAME, MIGRATE_SEARCH_PASSWORD if the index needs them) as for
    /// `migrate-worker run`.
    Local(migrate_operator::local::LocalArgs),
    /// Print the MigrateJob CustomResourceDefinition as YAML.
    ///
    /// Apply it with `migrate-operator crd | kubectl apply --server-side -f -`.
    Crd,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // Log lines hide the local supervisor's progress bar while they print.
        .with_writer(migrate_operator::local::LogWriter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Run(args) => migrate_operator::controller::run(args)
            .await
            .context("controller failed"),
        Command::Local(args) => match &args.command {
            Some(migrate_operator::local::LocalCommand::Init { file, force }) => {
                migrate_operator::local::init(file, *force).context("local init failed")?;
                println!(
                    "wrote {}; edit it, then run: migrate-operator local --job {}",
                    file.display(),
                    file.display()
                );
                Ok(())
            }
            None => migrate_operator::local::run(args)
                .await
                .map(|_summary| ())
                .context("local supervisor failed"),
        },
        Command::Crd => {
            print!(
                "{}",
                migrate_crds::crd_yaml().context("cannot render the CRD")?
            );
            Ok(())
        }
    }
}
