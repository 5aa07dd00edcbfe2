//! Stage E: bulk-indexing documents into Elasticsearch, OpenSearch or a compatible server.
//!
//! Three parts, as in Vector's `sinks/elasticsearch`:
//! - [`request_builder`]: a [`BulkBuilder`] serialises each document into the NDJSON body as
//!   it is pushed (so the JSON tree can be freed at once) and enforces the batch bounds
//!   (`batch_docs`, `batch_bytes`);
//! - [`service`]: the [`Sink`] sends a closed [`BulkRequest`] and resends what failed;
//! - [`retry`]: the pure classifier that reads every item of a bulk response.
//!
//! The document `_id` is the task id, and the action is `index`, so a replayed task overwrites
//! its document instead of adding a second one.
//!
//! ```no_run
//! # async fn demo(spec: &migrate_crds::SinkSpec, doc: &migrate_worker::task::Document)
//! #     -> Result<(), migrate_worker::sink::SinkError> {
//! use migrate_worker::sink::{ItemResult, Pushed, Sink};
//! use migrate_worker::task::TaskId;
//!
//! let sink = Sink::new(spec, "http://127.0.0.1:9200", None, None)?;
//! let mut batch = sink.builder();
//! let Ok(id) = TaskId::parse("42") else { return Ok(()) };
//! match batch.push(id, doc)? {
//!     Pushed::Added => {}
//!     Pushed::Full => { /* send `batch`, start a new one, push again */ }
//!     Pushed::Alone(_request) => { /* bigger than `batch_bytes`: send it by itself */ }
//! }
//! let stop = tokio_util::sync::CancellationToken::new();
//! for (id, result) in sink.send(batch.finish(), &stop).await {
//!     match result {
//!         ItemResult::Indexed => { /* acknowledge */ }
//!         ItemResult::Rejected { reason, .. } => { /* dead-letter with the reason */ }
//!         ItemResult::Failed { .. } => { /* retry through the queue */ }
//!         ItemResult::Unsent { .. } => { /* keep holding: the server was unavailable */ }
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Memory: a batch holds at most `batch_bytes` of body (its buffer grows by doubling, so up to
//! about twice that is reserved), or one document when that document alone is larger, plus,
//! while a retry is in flight, a copy of the documents being resent. Responses are filtered server-side (`filter_path`) to the fields the
//! classifier reads, so a 10,000-item response stays small.

pub mod request_builder;
pub mod retry;
pub mod service;

pub use request_builder::{BulkBuilder, BulkRequest, Pushed};
pub use service::{IndexPrepared, Sink};

use crate::task::TaskId;

/// What became of one document sent to the sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemResult {
    /// Written to the index.
    Indexed,
    /// Refused by the server for a reason that retrying will not change (a 4xx such as
    /// `mapper_parsing_exception`): dead-letter it with the reason.
    Rejected {
        /// The item's HTTP status.
        status: u16,
        /// The server's error type and reason text.
        reason: String,
    },
    /// Still failing after every retry (429, 5xx, no answer): leave the task for redelivery.
    Failed {
        /// The last failure, with the number of attempts.
        reason: String,
    },
    /// Not sent because the server stayed unavailable (or refused the settings) until the
    /// stop: the task stays in the processing list, and no attempt is used.
    Unsent {
        /// Why the server could not take it.
        reason: String,
    },
}

/// Errors of the sink.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The URL does not parse (the URL itself is not repeated: it may hold a password).
    #[error("sink url is not a valid http(s) URL: {reason}")]
    InvalidUrl {
        /// What is wrong with it.
        reason: String,
    },
    /// A user name without a password, or the other way round.
    #[error("sink credentials are incomplete: a user name and a password must be given together")]
    IncompleteCredentials,
    /// The HTTP client could not be built.
    #[error("failed to build the http client for sink {url}")]
    Client {
        /// The server URL, without credentials.
        url: String,
        /// The cause.
        #[source]
        source: elasticsearch::http::transport::BuildError,
    },
    /// A document could not be written as JSON.
    #[error("failed to serialise document {id}")]
    Serialize {
        /// The task.
        id: TaskId,
        /// The cause.
        #[source]
        source: elasticsearch::Error,
    },
    /// The server did not answer.
    #[error(
        "search server {url} did not answer; check MIGRATE_SEARCH_URL (from sink.urlSecretRef)"
    )]
    Unreachable {
        /// The server URL, without credentials.
        url: String,
        /// The cause.
        #[source]
        source: elasticsearch::Error,
    },
    /// The server answered the ping with an error status.
    #[error("search server {url} answered the ping with HTTP {status}")]
    PingStatus {
        /// The server URL, without credentials.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The index creation request (`sink.createIndex`) was refused.
    #[error(
        "search server {url} refused to create index {index} from sink.createIndex (HTTP {status}): {reason}"
    )]
    CreateIndex {
        /// The server URL, without credentials.
        url: String,
        /// The index.
        index: String,
        /// The HTTP status.
        status: u16,
        /// The server's words.
        reason: String,
    },
}

impl SinkError {
    /// A short stable name for metrics and events.
    #[must_use]
    pub const fn metric_label(&self) -> &'static str {
        match self {
            SinkError::InvalidUrl { .. } => "invalid-url",
            SinkError::IncompleteCredentials => "incomplete-credentials",
            SinkError::Client { .. } => "client",
            SinkError::Serialize { .. } => "serialize",
            SinkError::Unreachable { .. } => "unreachable",
            SinkError::PingStatus { .. } => "ping-status",
            SinkError::CreateIndex { .. } => "create-index",
        }
    }

    /// Whether the error is in the configuration (restarting will not fix it).
    #[must_use]
    pub const fn is_config(&self) -> bool {
        matches!(
            self,
            SinkError::InvalidUrl { .. }
                | SinkError::IncompleteCredentials
                | SinkError::Client { .. }
                | SinkError::CreateIndex {
                    status: 400..=499,
                    ..
                }
        )
    }
}
