//! The worker's HTTP endpoints, on one port: `/metrics`, `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::metrics::{CONTENT_TYPE, WorkerMetrics};

/// Longest reason kept by [`ReadyFlag`], in bytes.
pub const MAX_REASON_BYTES: usize = 256;

/// Why the HTTP server stopped.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Serving on the listener failed.
    #[error("http server on {addr:?} failed")]
    Serve {
        /// The listener's address, when known.
        addr: Option<SocketAddr>,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Whether the worker takes work, and why not: what `/readyz` answers.
#[derive(Debug)]
pub struct ReadyFlag {
    ready: AtomicBool,
    reason: Mutex<String>,
}

impl Default for ReadyFlag {
    fn default() -> Self {
        Self::new("starting")
    }
}

impl ReadyFlag {
    /// A flag that is not ready, for `reason`.
    #[must_use]
    pub fn new(reason: &str) -> Self {
        Self {
            ready: AtomicBool::new(false),
            reason: Mutex::new(bounded(reason)),
        }
    }

    /// Marks the worker ready.
    pub fn set_ready(&self) {
        self.reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.ready.store(true, Ordering::Release);
    }

    /// Marks the worker not ready, for `reason` (cut to [`MAX_REASON_BYTES`]).
    pub fn set_not_ready(&self, reason: &str) {
        self.ready.store(false, Ordering::Release);
        *self.reason.lock().unwrap_or_else(PoisonError::into_inner) = bounded(reason);
    }

    /// Whether the worker is ready.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Why the worker is not ready (empty when it is).
    #[must_use]
    pub fn reason(&self) -> String {
        self.reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// `reason` cut to at most [`MAX_REASON_BYTES`] on a character boundary.
fn bounded(reason: &str) -> String {
    let mut end = reason.len().min(MAX_REASON_BYTES);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// The metrics `/metrics` encodes.
    pub metrics: Arc<WorkerMetrics>,
    /// The flag `/readyz` reports.
    pub ready: Arc<ReadyFlag>,
}

/// The routes, for serving or for embedding in another router.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serves the endpoints on `listener` until `shutdown` is cancelled, then finishes the requests
/// in progress and returns.
///
/// # Errors
/// [`HttpError::Serve`] when accepting or serving fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    shutdown: CancellationToken,
) -> Result<(), HttpError> {
    let addr = listener.local_addr().ok();
    tracing::info!(?addr, "Serving /metrics, /healthz and /readyz.");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(|source| HttpError::Serve { addr, source })
}

async fn metrics(State(state): State<HttpState>) -> Response {
    // Two small procfs/sysfs reads: cheap enough to do on the runtime thread.
    state.metrics.refresh_memory();
    state.metrics.refresh_retained();
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        state.metrics.encode(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<HttpState>) -> Response {
    if state.ready.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        let reason = state.ready.reason();
        let body = if reason.is_empty() {
            "not ready".to_owned()
        } else {
            format!("not ready: {reason}")
        };
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn start() -> (
        String,
        HttpState,
        CancellationToken,
        tokio::task::JoinHandle<Result<(), HttpError>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = HttpState {
            metrics: Arc::new(WorkerMetrics::new()),
            ready: Arc::new(ReadyFlag::new("connecting to redis")),
        };
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, state.clone(), shutdown.clone()));
        (base, state, shutdown, server)
    }

    #[tokio::test]
    async fn healthz_answers_ok_and_readyz_follows_the_flag() {
        let (base, state, shutdown, server) = start().await;
        let client = reqwest::Client::new();

        let health = client.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200);
        assert_eq!(health.text().await.unwrap(), "ok");

        let not_ready = client.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(not_ready.status(), 503);
        assert_eq!(
            not_ready.text().await.unwrap(),
            "not ready: connecting to redis"
        );

        state.ready.set_ready();
        let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 200);

        state
            .ready
            .set_not_ready("draining: memory above the soft limit");
        let draining = client.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(draining.status(), 503);
        assert!(draining.text().await.unwrap().contains("draining"));

        shutdown.cancel();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn metrics_are_openmetrics_with_fresh_memory_readings() {
        let (base, state, shutdown, server) = start().await;
        state.metrics.task("indexed");
        let response = reqwest::get(format!("{base}/metrics")).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()[reqwest::header::CONTENT_TYPE],
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        let values = crate::metrics::parse_text(&response.text().await.unwrap());
        assert_eq!(values[r#"migrate_tasks_total{outcome="indexed"}"#], 1.0);
        assert!(values["migrate_process_resident_memory_bytes"] > 0.0);
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn the_server_stops_when_shutdown_is_cancelled() {
        let (base, _state, shutdown, server) = start().await;
        shutdown.cancel();
        server.await.unwrap().unwrap();
        assert!(reqwest::get(format!("{base}/healthz")).await.is_err());
    }

    #[test]
    fn reasons_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_REASON_BYTES);
        let flag = ReadyFlag::new(&long);
        let reason = flag.reason();
        assert!(reason.len() <= MAX_REASON_BYTES);
        assert_eq!(reason.len(), MAX_REASON_BYTES);
        assert!(reason.chars().all(|c| c == 'é'));
        assert!(!flag.is_ready());
    }
}
