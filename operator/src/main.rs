//! The migrate-operator binary: the Kubernetes controller, the local supervisor, and the CRD.

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// Supervises migrate-operator workers: in a Kubernetes cluster (`run`) or as processes on this
/// machine (`local`).
#[derive(Debug, Parser)]
#[command(name = "migrate-operator", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the Kubernetes controller (reconciles MigrateJobs into worker pods).
    Run(migrate_operator::controller::ControllerArgs),
    /// Supervise worker processes on this machine from a MigrateJob file, no cluster needed.
    Local(migrate_operator::local::LocalArgs),
    /// Print the MigrateJob CustomResourceDefinition as YAML.
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
        Command::Local(args) => migrate_operator::local::run(args)
            .await
            .map(|_summary| ())
            .context("local supervisor failed"),
        Command::Crd => {
            print!(
                "{}",
                migrate_crds::crd_yaml().context("cannot render the CRD")?
            );
            Ok(())
        }
    }
}
