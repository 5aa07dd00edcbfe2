//! `testbed-nlp`: the testbed's NLP service (see the library docs for the endpoints and the
//! failure-injection markers).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use migrate_testbed_nlp::{Config, Nlp};

/// Chinese segmentation and sentiment over HTTP, for tests and benchmarks.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "NLP_LISTEN", default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Largest request body in bytes; larger ones get 413.
    #[arg(long, default_value_t = 1024 * 1024)]
    max_body_bytes: usize,
    /// Requests in flight at once; more get 503 at once.
    #[arg(long, default_value_t = 1_024)]
    max_in_flight: usize,
    /// Long texts (over 4 KiB) segmented at once; 0 means one per CPU.
    #[arg(long, default_value_t = 0)]
    max_concurrency: usize,
    /// Milliseconds a text containing `[nlp:slow]` waits before its answer.
    #[arg(long, default_value_t = 5_000)]
    slow_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        // The testbed appends the output to a log file: colour codes only on a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let mut config = Config {
        max_body_bytes: args.max_body_bytes,
        max_in_flight: args.max_in_flight,
        slow: Duration::from_millis(args.slow_ms),
        ..Config::default()
    };
    if args.max_concurrency > 0 {
        config.max_concurrency = args.max_concurrency;
    }

    let started = Instant::now();
    let jieba = tokio::task::spawn_blocking(jieba_rs::Jieba::new)
        .await
        .context("loading the jieba dictionary failed")?;
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Dictionary loaded."
    );

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(listen = %args.listen, ?config, "Serving /segment, /score and /healthz.");
    let router = Nlp::new(Arc::new(jieba), config).router();
    migrate_testbed_nlp::serve(listener, router, shutdown_signal())
        .await
        .context("serving failed")?;
    tracing::info!("Stopped.");
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("Shutdown signal received; finishing requests in flight.");
}
