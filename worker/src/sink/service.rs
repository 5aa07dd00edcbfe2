//! Sending bulk requests, and resending what failed.
//!
//! [`Sink::send`] posts a closed batch to `/{index}/_bulk`, classifies every item with
//! [`retry`], and resends only the documents that may still succeed (429, 5xx,
//! no answer) after a capped, jittered exponential backoff, up to `SinkSpec.retries` times.
//! It never returns an error: every document gets an [`ItemResult`], in batch order.
//!
//! A server that cannot be reached, is unavailable (whole-request 429, 502, 503, 504) or
//! refuses the job's settings (401, 403, 404) is not the documents' fault: such rounds use up
//! no retry. The batch waits with the same capped backoff until the server answers or the
//! caller's stop token fires, and [`Sink::is_available`] turns false meanwhile (the worker's
//! readiness follows it). Documents still unsent at the stop come back
//! [`ItemResult::Unsent`], so their tasks stay in the processing list with no attempt used.
//!
//! The body goes out through [`Elasticsearch::send`] as one `Bytes`: the generated `Bulk`
//! builder wraps every body in an `NdBody`, which the transport copies into a fresh buffer
//! grown from 1 KiB, while a `Bytes` body is handed to the HTTP client as it is.

use std::error::Error as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use elasticsearch::auth::Credentials;
use elasticsearch::http::headers::{HeaderMap, HeaderValue, USER_AGENT};
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::http::{Method, Url};
use elasticsearch::{BulkParts, Elasticsearch};
use migrate_contract::error_chain;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::retry::{self, Backoff, ItemClass, RequestClass};
use super::{BulkBuilder, BulkRequest, ItemResult, SinkError};
use crate::backoff::sleep_or_cancel;
use crate::task::TaskId;

/// Longest a bulk request (connect, send, answer) may take before it counts as failed.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Only what the classifier reads; a 10,000-item response shrinks to a few hundred KB.
const FILTER_PATH: &str = "errors,error,items.*.status,items.*.error,items.*._id";

/// Most bytes of an error body quoted in a failure reason.
const MAX_QUOTED_BODY: usize = 512;

/// The search index the documents go to, and how batches are bounded and retried.
#[derive(Debug, Clone)]
pub struct Sink {
    client: Elasticsearch,
    /// The server URL without credentials, for messages.
    url: String,
    index: String,
    bulk_path: String,
    max_docs: usize,
    max_bytes: usize,
    flush_interval: Duration,
    linger: Duration,
    retries: u32,
    backoff: Backoff,
    timeout: Duration,
    /// False from a round that found the server unavailable until the next answer.
    available: Arc<AtomicBool>,
    /// `sink.createIndex`: the body the index is created with when it does not exist.
    create_index: Option<String>,
}

/// What [`Sink::prepare_index`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexPrepared {
    /// The job names no creation body: nothing was asked.
    NotAsked,
    /// This worker created the index.
    Created,
    /// The index was there already (made earlier, or by a worker starting at the same time).
    Existed,
}

/// The answer to one bulk attempt that reached a server willing to take it.
enum Answer {
    /// A 2xx with a JSON body: classify item by item.
    Items(serde_json::Value),
    /// The request as a whole may succeed later.
    Retry(String),
    /// The request as a whole was refused; do not retry now.
    Fail(String),
    /// The body is larger than the server takes (413), in the server's words.
    TooLarge(String),
}

/// A bulk attempt that found the server not there or refusing the job's settings: wait for
/// it, using up no retry.
struct Unavailable {
    /// What happened, for the task's reason if the wait ends unsent.
    reason: String,
    /// The settings are wrong (401, 403, 404), rather than the server down.
    settings: bool,
}

impl Sink {
    /// A sink for `spec.index` on the server at `url`, with basic auth when `username` and
    /// `password` are given (or when the URL carries them).
    ///
    /// # Errors
    /// - [`SinkError::InvalidUrl`] when `url` is not an http(s) URL;
    /// - [`SinkError::IncompleteCredentials`] when only one of `username` and `password` is
    ///   given;
    /// - [`SinkError::Client`] when the HTTP client cannot be built.
    pub fn new(
        spec: &migrate_crds::SinkSpec,
        url: &str,
        username: Option<&str>,
        password: Option<&str>,
    ) -> Result<Self, SinkError> {
        let mut parsed = Url::parse(url).map_err(|e| SinkError::InvalidUrl {
            reason: e.to_string(),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(SinkError::InvalidUrl {
                reason: format!("scheme {:?} is not http or https", parsed.scheme()),
            });
        }
        if parsed.cannot_be_a_base() || parsed.host().is_none() {
            return Err(SinkError::InvalidUrl {
                reason: "no host".to_owned(),
            });
        }
        let from_url = (!parsed.username().is_empty()).then(|| {
            (
                percent_decode(parsed.username()),
                percent_decode(parsed.password().unwrap_or("")),
            )
        });
        // Credentials never stay in the URL: it appears in messages and logs.
        let _ = parsed.set_username("");
        let _ = parsed.set_password(None);
        // Without a trailing slash, a path prefix (a proxy's `/es`) would be replaced by `_bulk`.
        if !parsed.path().ends_with('/') {
            let path = format!("{}/", parsed.path());
            parsed.set_path(&path);
        }
        let credentials = match (username, password) {
            (Some(u), Some(p)) => Some((u.to_owned(), p.to_owned())),
            (None, None) => from_url,
            _ => return Err(SinkError::IncompleteCredentials),
        };
        let shown = parsed.as_str().trim_end_matches('/').to_owned();
        // The timeout is set per request (`with_request_timeout` can change it after this).
        let mut transport =
            TransportBuilder::new(SingleNodeConnectionPool::new(parsed)).enable_meta_header(false);
        if let Some((u, p)) = credentials {
            transport = transport.auth(Credentials::Basic(u, p));
        }
        let transport = transport.build().map_err(|source| SinkError::Client {
            url: shown.clone(),
            source,
        })?;
        Ok(Self {
            client: Elasticsearch::new(transport),
            url: shown,
            index: spec.index.clone(),
            bulk_path: BulkParts::Index(&spec.index).url().into_owned(),
            max_docs: usize::try_from(spec.batch_docs).unwrap_or(usize::MAX),
            max_bytes: usize::try_from(spec.batch_bytes).unwrap_or(usize::MAX),
            flush_interval: Duration::from_millis(u64::from(spec.flush_interval_ms)),
            linger: Duration::from_millis(u64::from(spec.batch_linger_ms)),
            retries: spec.retries,
            backoff: retry::BULK_BACKOFF,
            timeout: DEFAULT_REQUEST_TIMEOUT,
            available: Arc::new(AtomicBool::new(true)),
            create_index: spec.create_index.clone(),
        })
    }

    /// Creates the index from `sink.createIndex` when it does not exist. Workers starting
    /// together may race: the server creates it once and answers the others
    /// `resource_already_exists_exception`, which is taken as success.
    ///
    /// # Errors
    /// [`SinkError::Unreachable`] when the server does not answer; [`SinkError::CreateIndex`]
    /// with the server's words when it refuses the body (a 4xx is a settings error).
    pub async fn prepare_index(&self) -> Result<IndexPrepared, SinkError> {
        let Some(text) = &self.create_index else {
            return Ok(IndexPrepared::NotAsked);
        };
        let refused = |status: u16, reason: String| SinkError::CreateIndex {
            url: self.url.clone(),
            index: self.index.clone(),
            status,
            reason,
        };
        // Checked by validation; a body that is not JSON here is refused the same way.
        let body: serde_json::Value =
            serde_json::from_str(text).map_err(|e| refused(400, format!("not JSON: {e}")))?;
        let response = self
            .client
            .indices()
            .create(elasticsearch::indices::IndicesCreateParts::Index(
                &self.index,
            ))
            .header(USER_AGENT, HeaderValue::from_static(crate::USER_AGENT))
            .request_timeout(self.timeout)
            .body(body)
            .send()
            .await
            .map_err(|source| SinkError::Unreachable {
                url: self.url.clone(),
                source,
            })?;
        let status = response.status_code().as_u16();
        if (200..300).contains(&status) {
            return Ok(IndexPrepared::Created);
        }
        let text = response.text().await.unwrap_or_default();
        let answer: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let error = &answer["error"];
        if error["type"] == "resource_already_exists_exception" {
            return Ok(IndexPrepared::Existed);
        }
        let reason = match (error["type"].as_str(), error["reason"].as_str()) {
            (Some(kind), Some(reason)) => format!("{kind}: {reason}"),
            _ => text.chars().take(MAX_QUOTED_BODY).collect(),
        };
        Err(refused(status, reason))
    }

    /// Replaces the backoff between retries (tests use short delays).
    #[must_use]
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Replaces the per-request timeout ([`DEFAULT_REQUEST_TIMEOUT`]).
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// An empty batch with this sink's bounds.
    #[must_use]
    pub fn builder(&self) -> BulkBuilder {
        BulkBuilder::new(self.max_docs, self.max_bytes)
    }

    /// Most time a document may wait in a partial batch (`SinkSpec.flush_interval_ms`).
    #[must_use]
    pub fn flush_interval(&self) -> Duration {
        self.flush_interval
    }

    /// How long a partial batch waits for its next document (`SinkSpec.batch_linger_ms`).
    #[must_use]
    pub fn linger(&self) -> Duration {
        self.linger
    }

    /// The index written to.
    #[must_use]
    pub fn index(&self) -> &str {
        &self.index
    }

    /// The server URL, without credentials.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// False while a batch waits for a server that cannot be reached, is unavailable or
    /// refuses the job's settings; true again at the next answer (shared by clones).
    #[must_use]
    pub fn is_available(&self) -> bool {
        self.available.load(Ordering::Relaxed)
    }

    /// Checks that the server answers.
    ///
    /// # Errors
    /// [`SinkError::Unreachable`] when it does not answer in time; [`SinkError::PingStatus`]
    /// when it answers with an error status (e.g. 401 for wrong credentials).
    pub async fn ping(&self) -> Result<(), SinkError> {
        let response = self
            .client
            .ping()
            .header(USER_AGENT, HeaderValue::from_static(crate::USER_AGENT))
            .request_timeout(self.timeout)
            .send()
            .await
            .map_err(|source| SinkError::Unreachable {
                url: self.url.clone(),
                source,
            })?;
        let status = response.status_code();
        if status.is_success() {
            Ok(())
        } else {
            Err(SinkError::PingStatus {
                url: self.url.clone(),
                status: status.as_u16(),
            })
        }
    }

    /// Sends a batch and resends what may still succeed; one result per document, in batch
    /// order.
    ///
    /// Documents refused for good come back [`ItemResult::Rejected`]; documents still failing
    /// after `SinkSpec.retries` retries (or refused as a whole request for their body, e.g.
    /// 400) come back [`ItemResult::Failed`]. A request the server finds too large (413) is
    /// split in halves and each half sent on its own, using up no retry; a document refused
    /// alone comes back [`ItemResult::Rejected`] with the server's answer. While the server
    /// cannot be reached, is unavailable or refuses the settings, the batch waits, using up no
    /// retry, until it answers or `stop` fires; what is still unsent then comes back
    /// [`ItemResult::Unsent`].
    pub async fn send(
        &self,
        batch: BulkRequest,
        stop: &CancellationToken,
    ) -> Vec<(TaskId, ItemResult)> {
        let n = batch.len();
        let mut results = vec![
            ItemResult::Failed {
                reason: "not sent".to_owned()
            };
            n
        ];
        // Documents sent together; a group the server finds too large comes back in two halves.
        let mut groups: Vec<Vec<usize>> = vec![(0..n).collect()];
        while let Some(group) = groups.pop() {
            if let Some((first, second)) = self.send_group(&batch, group, &mut results, stop).await
            {
                groups.push(second);
                groups.push(first);
            }
        }
        batch.into_ids().into_iter().zip(results).collect()
    }

    /// Sends the documents `pending` of `batch` together, resending what may still succeed,
    /// and writes their results; returns the two halves to send instead when the server
    /// finds the request too large.
    async fn send_group(
        &self,
        batch: &BulkRequest,
        mut pending: Vec<usize>,
        results: &mut [ItemResult],
        stop: &CancellationToken,
    ) -> Option<(Vec<usize>, Vec<usize>)> {
        let mut attempts = 0u32;
        let mut waits = 0u32;
        let mut given_up = false;
        while !pending.is_empty() {
            let body = batch.body_of(&pending);
            let bytes = body.len();
            let answer = match self.post(body).await {
                Ok(answer) => answer,
                Err(Unavailable { reason, settings }) => {
                    if waits == 0 {
                        self.note_unavailable(&reason, settings, pending.len());
                    }
                    let delay = self.backoff.delay(waits.min(16), &mut rand::rng());
                    waits += 1;
                    if sleep_or_cancel(delay, stop).await {
                        warn!(index = %self.index, docs = pending.len(), %reason, "Stopping while the search server is unavailable; the documents stay unsent and their tasks stay queued.");
                        for &i in &pending {
                            results[i] = ItemResult::Unsent {
                                reason: reason.clone(),
                            };
                        }
                        pending.clear();
                    }
                    continue;
                }
            };
            if waits > 0 || !self.is_available() {
                self.available.store(true, Ordering::Relaxed);
                info!(index = %self.index, url = %self.url, rounds = waits, "Search server answers again; sending the waiting documents.");
                waits = 0;
            }
            attempts += 1;
            match answer {
                Answer::Items(response) => {
                    let ids: Vec<String> =
                        pending.iter().map(|&i| batch.ids()[i].doc_id()).collect();
                    let classes = retry::classify_bulk_response_for_ids(&response, &ids);
                    let mut still = Vec::new();
                    for (&i, class) in pending.iter().zip(classes) {
                        results[i] = match class {
                            ItemClass::Ok => ItemResult::Indexed,
                            ItemClass::Reject { status, reason } => {
                                ItemResult::Rejected { status, reason }
                            }
                            ItemClass::Retry(reason) => {
                                still.push(i);
                                ItemResult::Failed { reason }
                            }
                        };
                    }
                    debug!(
                        index = %self.index,
                        attempt = attempts,
                        docs = pending.len(),
                        bytes,
                        retriable = still.len(),
                        "Bulk request answered."
                    );
                    pending = still;
                }
                Answer::Retry(reason) => {
                    for &i in &pending {
                        results[i] = ItemResult::Failed {
                            reason: reason.clone(),
                        };
                    }
                }
                Answer::TooLarge(reason) => {
                    if let [i] = pending[..] {
                        warn!(index = %self.index, bytes, %reason, "The search server refuses a document sent alone as too large.");
                        results[i] = ItemResult::Rejected {
                            status: 413,
                            reason: format!("{reason} (the document alone, {bytes} bytes)"),
                        };
                        return None;
                    }
                    warn!(index = %self.index, docs = pending.len(), bytes, %reason, "The search server refuses a bulk request as too large: sink.batchBytes is above its limit (http.max_content_length); sending the request in halves.");
                    let second = pending.split_off(pending.len() / 2);
                    return Some((pending, second));
                }
                Answer::Fail(reason) => {
                    warn!(index = %self.index, docs = pending.len(), %reason, "Bulk request refused; not retrying.");
                    for &i in &pending {
                        results[i] = ItemResult::Failed {
                            reason: format!("not retried: {reason}"),
                        };
                    }
                    pending.clear();
                }
            }
            if pending.is_empty() {
                break;
            }
            if attempts > self.retries {
                given_up = true;
                break;
            }
            let delay = self.backoff.delay(attempts - 1, &mut rand::rng());
            let first_reason = match &results[pending[0]] {
                ItemResult::Failed { reason } => reason.as_str(),
                _ => "",
            };
            warn!(
                index = %self.index,
                attempt = attempts,
                docs = pending.len(),
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                reason = first_reason,
                "Bulk documents failed; retrying after backoff."
            );
            tokio::time::sleep(delay).await;
        }
        if given_up {
            warn!(index = %self.index, attempts, docs = pending.len(), "Bulk documents still failing; giving up.");
            for &i in &pending {
                if let ItemResult::Failed { reason } = &mut results[i] {
                    *reason = format!("gave up after {attempts} attempts: {reason}");
                }
            }
        }
        None
    }

    /// Marks the server unavailable and says once per outage what to do about it.
    fn note_unavailable(&self, reason: &str, settings: bool, docs: usize) {
        self.available.store(false, Ordering::Relaxed);
        if settings {
            error!(index = %self.index, docs, %reason, "The search server refuses the job's settings: fix MIGRATE_SEARCH_URL, MIGRATE_SEARCH_USERNAME/MIGRATE_SEARCH_PASSWORD (from sink.urlSecretRef, sink.usernameSecretRef and sink.passwordSecretRef) or sink.index, then restart the workers. The documents wait and use up no attempt.");
        } else {
            warn!(index = %self.index, docs, %reason, "Search server unavailable; the documents wait and use up no attempt.");
        }
    }

    /// One POST of a bulk body, read into an [`Answer`], or [`Unavailable`].
    async fn post(&self, body: Bytes) -> Result<Answer, Unavailable> {
        let sent = self
            .client
            .send(
                Method::Post,
                &self.bulk_path,
                user_agent(),
                Some(&[("filter_path", FILTER_PATH)]),
                Some(body),
                Some(self.timeout),
            )
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                let reason = format!(
                    "bulk request to {} failed (check MIGRATE_SEARCH_URL): {}",
                    self.url,
                    error_chain(&e)
                );
                // Never connected: the server is down or elsewhere, not hurt by this body.
                return if is_connect_error(&e) {
                    Err(Unavailable {
                        reason,
                        settings: false,
                    })
                } else {
                    Ok(Answer::Retry(reason))
                };
            }
        };
        let response_status = response.status_code();
        let status = response_status.as_u16();
        let text = match response.bytes().await {
            Ok(b) => b,
            Err(e) => {
                return Ok(Answer::Retry(format!(
                    "reading the bulk response (HTTP {status}) failed: {}",
                    error_chain(&e)
                )));
            }
        };
        if !(200..=299).contains(&status) {
            // An empty body (OpenSearch's 413) leaves the status line as the server's words.
            let words = if text.trim_ascii().is_empty() {
                response_status.canonical_reason().unwrap_or("").to_owned()
            } else {
                quote(&text)
            };
            let reason = format!("bulk request answered HTTP {status}: {words}");
            return match retry::classify_request_status(status) {
                RequestClass::TooLarge => Ok(Answer::TooLarge(reason)),
                RequestClass::Unavailable => Err(Unavailable {
                    reason,
                    settings: false,
                }),
                RequestClass::Settings => Err(Unavailable {
                    reason,
                    settings: true,
                }),
                RequestClass::Retry => Ok(Answer::Retry(reason)),
                RequestClass::Fail => Ok(Answer::Fail(reason)),
            };
        }
        Ok(match serde_json::from_slice(&text) {
            Ok(v) => Answer::Items(v),
            Err(e) => Answer::Retry(format!(
                "bulk response (HTTP {status}) is not JSON: {e}: {}",
                quote(&text)
            )),
        })
    }
}

/// Whether the request never reached the server (refused, unresolved, connect timeout).
fn is_connect_error(e: &elasticsearch::Error) -> bool {
    let mut source = e.source();
    while let Some(cause) = source {
        if cause
            .downcast_ref::<reqwest::Error>()
            .is_some_and(reqwest::Error::is_connect)
        {
            return true;
        }
        source = cause.source();
    }
    false
}

/// The start of a response body, for a failure reason.
fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX_QUOTED_BODY)]);
    let text = text.trim();
    if body.len() > MAX_QUOTED_BODY {
        format!("{text}...")
    } else {
        text.to_owned()
    }
}

/// Decodes `%XX` escapes of a URL's user-info part.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The headers of a bulk request: the worker's `User-Agent` (the client's own default would
/// otherwise name only the library).
fn user_agent() -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(1);
    headers.insert(USER_AGENT, HeaderValue::from_static(crate::USER_AGENT));
    headers
}

#[cfg(test)]
mod tests {
    //! The failures a real server does not produce on demand (a 429 storm, a dropped
    //! connection, a 503 on every request, a stalled answer), from a scripted HTTP server.

    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// What the scripted server does with one request.
    #[derive(Clone, Debug)]
    enum Act {
        /// Answer with this status and body.
        Reply(u16, String),
        /// Close the connection without answering.
        Drop,
        /// Never answer.
        Stall,
    }

    /// One request the server received.
    #[derive(Clone, Debug)]
    struct Seen {
        target: String,
        body: String,
        user_agent: Option<String>,
    }

    #[derive(Default)]
    struct Log {
        script: Vec<Act>,
        next: usize,
        seen: Vec<Seen>,
    }

    /// An HTTP/1.1 server on 127.0.0.1:0 that plays `script` in order, repeating the last
    /// act once the script is used up.
    struct Scripted {
        url: String,
        log: Arc<Mutex<Log>>,
    }

    impl Scripted {
        async fn start(script: Vec<Act>) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let log = Arc::new(Mutex::new(Log {
                script,
                ..Log::default()
            }));
            let shared = log.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve(stream, shared.clone()));
                }
            });
            Self { url, log }
        }

        fn seen(&self) -> Vec<Seen> {
            self.log.lock().unwrap().seen.clone()
        }
    }

    async fn serve(mut stream: TcpStream, log: Arc<Mutex<Log>>) {
        let mut buf = Vec::new();
        loop {
            let Some((target, body, user_agent)) = read_request(&mut stream, &mut buf).await else {
                return;
            };
            let act = {
                let mut log = log.lock().unwrap();
                log.seen.push(Seen {
                    target,
                    body,
                    user_agent,
                });
                let i = log.next.min(log.script.len() - 1);
                log.next += 1;
                log.script[i].clone()
            };
            match act {
                Act::Reply(status, body) => {
                    let head = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    if stream.write_all(head.as_bytes()).await.is_err()
                        || stream.write_all(body.as_bytes()).await.is_err()
                    {
                        return;
                    }
                }
                Act::Drop => return,
                Act::Stall => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return;
                }
            }
        }
    }

    /// Reads one request (head and content-length body): its target, body and `User-Agent`;
    /// `None` when the peer closed.
    async fn read_request(
        stream: &mut TcpStream,
        buf: &mut Vec<u8>,
    ) -> Option<(String, String, Option<String>)> {
        let mut chunk = [0u8; 8192];
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let target = head.split_whitespace().nth(1).unwrap_or("").to_owned();
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        };
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let user_agent = header("user-agent");
        while buf.len() < head_end + length {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
        buf.drain(..head_end + length);
        Some((target, body, user_agent))
    }

    fn spec(retries: u32) -> migrate_crds::SinkSpec {
        serde_json::from_value(json!({
            "urlSecretRef": {"name": "search", "key": "url"},
            "index": "mock",
            "retries": retries,
        }))
        .unwrap()
    }

    const FAST: Backoff = Backoff {
        base: Duration::from_millis(40),
        cap: Duration::from_millis(200),
    };

    fn sink(url: &str, retries: u32) -> Sink {
        Sink::new(&spec(retries), url, None, None)
            .unwrap()
            .with_backoff(FAST)
    }

    fn batch(sink: &Sink, n: u64) -> BulkRequest {
        let mut b = sink.builder();
        for i in 1..=n {
            let doc = json!({"n": i}).as_object().unwrap().clone();
            b.push(TaskId::parse(&i.to_string()).unwrap(), &doc)
                .unwrap();
        }
        b.finish()
    }

    fn ok_items(ids: &[u64]) -> String {
        let items: Vec<_> = ids
            .iter()
            .map(|i| json!({"index": {"_id": i.to_string(), "status": 201}}))
            .collect();
        json!({"errors": false, "items": items}).to_string()
    }

    /// The ids in a bulk body, in order.
    fn body_ids(body: &str) -> Vec<String> {
        body.lines()
            .step_by(2)
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["index"]["_id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    /// A stop token that never fires.
    fn go() -> CancellationToken {
        CancellationToken::new()
    }

    /// Every request, the bulk and the ping, names the worker and its version, not only the
    /// client library.
    #[tokio::test]
    async fn requests_carry_the_worker_user_agent() {
        let server = Scripted::start(vec![Act::Reply(200, ok_items(&[1]))]).await;
        let sink = sink(&server.url, 0);
        let results = sink.send(batch(&sink, 1), &go()).await;
        assert_eq!(results.len(), 1, "{results:?}");
        sink.ping().await.unwrap();
        let seen = server.seen();
        assert_eq!(seen.len(), 2, "{seen:?}");
        for request in &seen {
            assert_eq!(
                request.user_agent.as_deref(),
                Some(concat!("migrate-worker/", env!("CARGO_PKG_VERSION"))),
                "{request:?}"
            );
        }
    }

    /// HTTP 429 on the whole request twice, then success: resent after a backoff, using
    /// up no retry (the sink has none), and every document ends indexed.
    #[tokio::test]
    async fn a_429_storm_is_retried_with_backoff_until_it_passes() {
        let too_many = Act::Reply(
            429,
            r#"{"error":{"type":"es_rejected_execution_exception","reason":"busy"},"status":429}"#
                .into(),
        );
        let server = Scripted::start(vec![
            too_many.clone(),
            too_many,
            Act::Reply(200, ok_items(&[1, 2, 3])),
        ])
        .await;
        let sink = sink(&server.url, 0);
        let results = sink.send(batch(&sink, 3), &go()).await;
        assert!(
            results.iter().all(|(_, r)| *r == ItemResult::Indexed),
            "{results:?}"
        );
        let seen = server.seen();
        assert_eq!(seen.len(), 3);
        assert!(
            seen.iter()
                .all(|s| s.target.starts_with("/mock/_bulk?filter_path=")),
            "{:?}",
            seen[0].target
        );
        assert!(seen.iter().all(|s| body_ids(&s.body) == ["1", "2", "3"]));
        // The waits are fully jittered (0 to 40 ms, then 0 to 80 ms), so they have no lower
        // bound to assert here; `backoff::tests` pins the schedule.
    }

    /// Only the items that failed with 429/503 are resent; a 400 item is rejected at once with
    /// the server's reason and never resent.
    #[tokio::test]
    async fn only_failed_items_are_resent() {
        let first = json!({"errors": true, "items": [
            {"index": {"_id": "1", "status": 201}},
            {"index": {"_id": "2", "status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "queue full"}}},
            {"index": {"_id": "3", "status": 400, "error": {"type": "mapper_parsing_exception", "reason": "failed to parse field [n]"}}},
            {"index": {"_id": "4", "status": 503, "error": {"type": "unavailable_shards_exception", "reason": "no primary"}}},
        ]})
        .to_string();
        let server = Scripted::start(vec![
            Act::Reply(200, first),
            Act::Reply(200, ok_items(&[2, 4])),
        ])
        .await;
        let sink = sink(&server.url, 3);
        let results = sink.send(batch(&sink, 4), &go()).await;
        let ids: Vec<u64> = results.iter().map(|(id, _)| id.value).collect();
        assert_eq!(ids, [1, 2, 3, 4]);
        assert_eq!(results[0].1, ItemResult::Indexed);
        assert_eq!(results[1].1, ItemResult::Indexed);
        assert_eq!(
            results[2].1,
            ItemResult::Rejected {
                status: 400,
                reason: "mapper_parsing_exception: failed to parse field [n]".into()
            }
        );
        assert_eq!(results[3].1, ItemResult::Indexed);
        let seen = server.seen();
        assert_eq!(seen.len(), 2);
        assert_eq!(body_ids(&seen[1].body), ["2", "4"]);
        assert!(seen[1].body.contains(r#"{"n":4}"#));
    }

    /// A 500 on every request: tried 1 + retries times, with backoff, then every document
    /// comes back Failed saying how often it was tried and why.
    #[tokio::test]
    async fn a_500_on_every_request_stops_at_the_retry_limit() {
        let server = Scripted::start(vec![Act::Reply(500, r#"{"error":"boom"}"#.into())]).await;
        let sink = sink(&server.url, 2);
        let results = sink.send(batch(&sink, 2), &go()).await;
        assert_eq!(server.seen().len(), 3);
        for (_, r) in &results {
            match r {
                ItemResult::Failed { reason } => {
                    assert!(reason.starts_with("gave up after 3 attempts"), "{reason}");
                    assert!(reason.contains("HTTP 500"), "{reason}");
                }
                other => panic!("expected Failed, got {other:?}"),
            }
        }
    }

    /// An item that keeps answering 429 is resent alone until the retries run out, then comes
    /// back Failed with the item's reason; its neighbour stays Indexed.
    #[tokio::test]
    async fn an_item_429_storm_gives_up_at_the_limit() {
        let busy = json!({"index": {"_id": "2", "status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "queue full"}}});
        let first =
            json!({"errors": true, "items": [{"index": {"_id": "1", "status": 201}}, busy]})
                .to_string();
        let again = json!({"errors": true, "items": [busy]}).to_string();
        let server = Scripted::start(vec![Act::Reply(200, first), Act::Reply(200, again)]).await;
        let sink = sink(&server.url, 2);
        let results = sink.send(batch(&sink, 2), &go()).await;
        assert_eq!(results[0].1, ItemResult::Indexed);
        assert!(
            matches!(&results[1].1, ItemResult::Failed { reason }
                if reason.starts_with("gave up after 3 attempts: HTTP 429 es_rejected_execution_exception: queue full")),
            "{results:?}"
        );
        let seen = server.seen();
        assert_eq!(seen.len(), 3);
        assert!(seen[1..].iter().all(|s| body_ids(&s.body) == ["2"]));
    }

    /// A connection closed without an answer is retried like any transient failure.
    #[tokio::test]
    async fn a_dropped_connection_is_retried() {
        let server = Scripted::start(vec![Act::Drop, Act::Reply(200, ok_items(&[1, 2]))]).await;
        let sink = sink(&server.url, 2);
        let results = sink.send(batch(&sink, 2), &go()).await;
        assert!(
            results.iter().all(|(_, r)| *r == ItemResult::Indexed),
            "{results:?}"
        );
        assert_eq!(server.seen().len(), 2);
    }

    /// Connections always dropped: Failed after the retries, with the client's reason.
    #[tokio::test]
    async fn connections_always_dropped_end_failed() {
        let server = Scripted::start(vec![Act::Drop]).await;
        let sink = sink(&server.url, 1);
        let results = sink.send(batch(&sink, 1), &go()).await;
        assert_eq!(server.seen().len(), 2);
        assert!(
            matches!(&results[0].1, ItemResult::Failed { reason } if reason.starts_with("gave up after 2 attempts: bulk request to")),
            "{results:?}"
        );
    }

    /// An answer slower than the request timeout counts as a failure and is retried.
    #[tokio::test]
    async fn a_stalled_answer_times_out_and_is_retried() {
        let server = Scripted::start(vec![Act::Stall, Act::Reply(200, ok_items(&[1]))]).await;
        let sink = sink(&server.url, 1).with_request_timeout(Duration::from_millis(300));
        let results = sink.send(batch(&sink, 1), &go()).await;
        assert_eq!(results[0].1, ItemResult::Indexed);
        assert_eq!(server.seen().len(), 2);
    }

    /// A 400 on the request is about its body, not about any one document: sent once, every
    /// document Failed (retried through the queue), none Rejected.
    #[tokio::test]
    async fn a_request_refused_for_its_body_is_not_retried_and_not_rejected() {
        let server = Scripted::start(vec![Act::Reply(400, r#"{"error":"bad body"}"#.into())]).await;
        let sink = sink(&server.url, 5);
        let results = sink.send(batch(&sink, 2), &go()).await;
        assert_eq!(server.seen().len(), 1);
        assert!(results
            .iter()
            .all(|(_, r)| matches!(r, ItemResult::Failed { reason } if reason.starts_with("not retried") && reason.contains("400"))));
    }

    /// A 413 splits the request in halves, using up no retry (the sink has none), and the
    /// halves the server takes are indexed.
    #[tokio::test]
    async fn a_request_too_large_is_sent_in_halves() {
        let server = Scripted::start(vec![
            Act::Reply(413, String::new()),
            Act::Reply(200, ok_items(&[1, 2])),
            Act::Reply(200, ok_items(&[3, 4])),
        ])
        .await;
        let sink = sink(&server.url, 0);
        let results = sink.send(batch(&sink, 4), &go()).await;
        assert!(
            results.iter().all(|(_, r)| *r == ItemResult::Indexed),
            "{results:?}"
        );
        let seen: Vec<Vec<String>> = server.seen().iter().map(|s| body_ids(&s.body)).collect();
        assert_eq!(
            seen,
            [vec!["1", "2", "3", "4"], vec!["1", "2"], vec!["3", "4"]]
        );
    }

    /// A document the server refuses as too large even alone is rejected with the server's
    /// answer (its status line when the body is empty, as OpenSearch sends it); the others in
    /// its batch are not lost.
    #[tokio::test]
    async fn a_document_too_large_alone_is_rejected_with_the_servers_words() {
        let server = Scripted::start(vec![
            Act::Reply(413, String::new()),
            Act::Reply(200, ok_items(&[1])),
            Act::Reply(413, String::new()),
        ])
        .await;
        let sink = sink(&server.url, 3);
        let results = sink.send(batch(&sink, 2), &go()).await;
        assert_eq!(results[0].1, ItemResult::Indexed);
        match &results[1].1 {
            ItemResult::Rejected {
                status: 413,
                reason,
            } => assert!(
                reason.contains("HTTP 413: Payload Too Large") && reason.contains("alone"),
                "{reason}"
            ),
            other => panic!("expected Rejected, got {other:?}"),
        }
        assert_eq!(server.seen().len(), 3, "no retry of a refused document");
    }

    /// Waits until `sink` reports `available`, failing after 10 s.
    async fn until_available(sink: &Sink, available: bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while sink.is_available() != available {
            assert!(
                Instant::now() < deadline,
                "availability never became {available}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Wrong credentials (401, then 403) are the job's settings, not the documents' fault: the
    /// batch waits without using up a retry (the sink has none), the sink reports itself
    /// unavailable meanwhile, and once the server accepts, every document is indexed.
    #[tokio::test]
    async fn wrong_credentials_wait_without_using_retries_until_fixed() {
        let server = Scripted::start(vec![
            Act::Reply(401, r#"{"error":"unauthorized"}"#.into()),
            Act::Reply(403, r#"{"error":"forbidden"}"#.into()),
            Act::Reply(200, ok_items(&[1, 2])),
        ])
        .await;
        let sink = sink(&server.url, 0);
        let sending = {
            let sink = sink.clone();
            tokio::spawn(async move { sink.send(batch(&sink, 2), &go()).await })
        };
        until_available(&sink, false).await;
        let results = sending.await.unwrap();
        assert!(
            results.iter().all(|(_, r)| *r == ItemResult::Indexed),
            "{results:?}"
        );
        assert_eq!(server.seen().len(), 3);
        assert!(
            sink.is_available(),
            "an answer makes the sink available again"
        );
    }

    /// A 503 on every request: the batch waits past any retry limit until the stop fires,
    /// then every document comes back Unsent (no attempt used), with the server's answer.
    #[tokio::test]
    async fn an_outage_waits_until_the_stop_and_leaves_documents_unsent() {
        let server = Scripted::start(vec![Act::Reply(503, r#"{"error":"down"}"#.into())]).await;
        let sink = sink(&server.url, 1);
        let stop = CancellationToken::new();
        let sending = {
            let (sink, stop) = (sink.clone(), stop.clone());
            tokio::spawn(async move { sink.send(batch(&sink, 2), &stop).await })
        };
        // More rounds than 1 + retries: the outage uses up no retry.
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.seen().len() < 4 {
            assert!(Instant::now() < deadline, "the batch stopped being resent");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!sink.is_available());
        stop.cancel();
        let results = sending.await.unwrap();
        for (_, r) in &results {
            assert!(
                matches!(r, ItemResult::Unsent { reason } if reason.contains("HTTP 503")),
                "{r:?}"
            );
        }
    }

    /// No server at the address at all (connection refused): the same wait, and the reason
    /// names the address and the setting to check.
    #[tokio::test]
    async fn a_refused_connection_waits_until_the_stop() {
        let url = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            format!("http://{}", listener.local_addr().unwrap())
        };
        let sink = sink(&url, 0);
        let stop = CancellationToken::new();
        let sending = {
            let (sink, stop) = (sink.clone(), stop.clone());
            tokio::spawn(async move { sink.send(batch(&sink, 1), &stop).await })
        };
        until_available(&sink, false).await;
        stop.cancel();
        let results = sending.await.unwrap();
        assert!(
            matches!(&results[0].1, ItemResult::Unsent { reason } if reason.contains(&url) && reason.contains("MIGRATE_SEARCH_URL")),
            "{results:?}"
        );
    }

    /// A 200 whose body is not JSON is retried, never taken for a success.
    #[tokio::test]
    async fn a_garbled_success_is_retried() {
        let server = Scripted::start(vec![
            Act::Reply(200, "<html>proxy</html>".into()),
            Act::Reply(200, ok_items(&[1])),
        ])
        .await;
        let sink = sink(&server.url, 1);
        let results = sink.send(batch(&sink, 1), &go()).await;
        assert_eq!(results[0].1, ItemResult::Indexed);
        assert_eq!(server.seen().len(), 2);
    }

    /// Basic auth is sent when credentials are given, and a URL path prefix is kept.
    #[tokio::test]
    async fn credentials_and_path_prefix_reach_the_server() {
        let server = Scripted::start(vec![Act::Reply(200, ok_items(&[1]))]).await;
        let url = format!("{}/proxy/es", server.url);
        let sink = Sink::new(&spec(0), &url, Some("elastic"), Some("s3cret")).unwrap();
        assert_eq!(sink.url(), url);
        let results = sink.send(batch(&sink, 1), &go()).await;
        assert_eq!(results[0].1, ItemResult::Indexed);
        assert!(
            server.seen()[0].target.starts_with("/proxy/es/mock/_bulk"),
            "{}",
            server.seen()[0].target
        );
    }

    /// Credentials in the URL are used and never shown; half a pair is a configuration error.
    #[test]
    fn url_credentials_are_hidden_and_half_pairs_refused() {
        let sink = Sink::new(
            &spec(0),
            "https://user:p%40ss@search.example:9200",
            None,
            None,
        )
        .unwrap();
        assert_eq!(sink.url(), "https://search.example:9200");
        let err = Sink::new(&spec(0), "http://h:9200", Some("u"), None).unwrap_err();
        assert!(matches!(err, SinkError::IncompleteCredentials));
        assert!(err.is_config());
        let err = Sink::new(&spec(0), "ftp://h", None, None).unwrap_err();
        assert!(err.to_string().contains("not http or https"), "{err}");
        let err = Sink::new(&spec(0), "http://user:secret@[bad", None, None).unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
        assert_eq!(percent_decode("p%40ss%zz"), "p@ss%zz");
    }

    /// Ping: ok on 200, an error naming the status otherwise, and an error without a server.
    #[tokio::test]
    async fn ping_reports_status_and_absence() {
        let ok = Scripted::start(vec![Act::Reply(200, "{}".into())]).await;
        sink(&ok.url, 0).ping().await.unwrap();
        let denied = Scripted::start(vec![Act::Reply(401, "{}".into())]).await;
        let err = sink(&denied.url, 0).ping().await.unwrap_err();
        assert!(
            matches!(err, SinkError::PingStatus { status: 401, .. }),
            "{err:?}"
        );
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let err = sink(&url, 0).ping().await.unwrap_err();
        assert!(matches!(err, SinkError::Unreachable { .. }), "{err:?}");
        assert_eq!(err.metric_label(), "unreachable");
    }

    /// The futures can be spawned on a multi-threaded runtime.
    #[test]
    fn send_and_ping_futures_are_send() {
        fn assert_send<T: Send>(_: &T) {}
        let sink = sink("http://127.0.0.1:1", 0);
        let stop = go();
        assert_send(&sink.send(sink.builder().finish(), &stop));
        assert_send(&sink.ping());
    }

    /// An empty batch sends nothing.
    #[tokio::test]
    async fn an_empty_batch_sends_nothing() {
        let server = Scripted::start(vec![Act::Reply(500, String::new())]).await;
        let sink = sink(&server.url, 3);
        assert!(sink.send(sink.builder().finish(), &go()).await.is_empty());
        assert!(server.seen().is_empty());
    }
}
