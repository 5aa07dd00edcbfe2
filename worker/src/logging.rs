//! Log output: plain text, coloured only when it goes to a terminal, or JSON lines for pods.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// How log lines are written (flag `--log-format`, variable `MIGRATE_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event; ANSI colours only when standard error is a terminal, so a
    /// log written to a file or a pipe reads as plain text.
    #[default]
    Text,
    /// One JSON object per line, for log collectors (what the operator sets in pods).
    Json,
}

/// Installs the global subscriber writing to standard error, filtered by `RUST_LOG` (default
/// `info`).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}
