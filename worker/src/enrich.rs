//! Stage C: calling the HTTP NLP services, in configured order, for every document.
//!
//! For each endpoint the text at `inputField` (a dotted path, see [`crate::doc`]) is POSTed as
//! `{"text": ...}`; the JSON reply (or the part `responsePointer` selects) is stored at
//! `outputField`, creating the intermediate objects. A document without a string at
//! `inputField` skips that endpoint (logged at debug): not every record has every field.
//!
//! One HTTP client (rustls, keep-alive connection pool) serves every endpoint. Per endpoint:
//! - at most `maxConcurrent` calls in flight (a semaphore; waiting for a permit does not count
//!   towards the timeout);
//! - each attempt, from sending to the last byte of the reply, within `timeoutMs`;
//! - up to `retries` more attempts after a timeout, a connection error, a 5xx or a 429, with a
//!   capped, jittered exponential backoff; other 4xx replies are final at once (sending the
//!   same request again gives the same answer);
//! - a call that still fails follows `onFailure`: [`EnrichFailure::Retry`],
//!   [`EnrichFailure::DeadLetter`], or the field is left out and the next endpoint runs.
//!
//! Every failure reason names the endpoint and its URL; a rejected request's reason carries the
//! HTTP status and the first 200 characters of the reply.

use std::time::Duration;

use migrate_contract::error_chain;
use migrate_crds::{EnrichEndpoint, EnrichFailurePolicy};
use reqwest::StatusCode;
use serde_json::Value as Json;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::backoff::Backoff;
pub use crate::doc::{get_path, set_path};
use crate::task::Document;

/// Largest reply body read from an endpoint; a bigger reply is a failed call (never retried),
/// so one misbehaving service cannot make a worker hold an unbounded buffer.
pub const MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;

/// Characters of a rejected reply's body quoted in the failure reason.
const BODY_EXCERPT_CHARS: usize = 200;

/// Waits between retries of one call: 50 ms doubling up to 2 s, fully jittered.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));

/// Why the endpoints cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    /// An endpoint's URL does not parse or is not http(s).
    #[error("enrich endpoint {endpoint} has an invalid url {url:?}: {reason}")]
    Url {
        /// The endpoint's name.
        endpoint: String,
        /// The URL as configured.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An endpoint's `responsePointer` is not a JSON pointer.
    #[error(
        "enrich endpoint {endpoint} has an invalid response pointer {pointer:?}: it must be empty or start with '/'"
    )]
    Pointer {
        /// The endpoint's name.
        endpoint: String,
        /// The pointer as configured.
        pointer: String,
    },
    /// The HTTP client could not be built (e.g. no TLS roots).
    #[error("building the http client for the enrich endpoints failed")]
    Client {
        /// The client builder's error.
        #[source]
        source: reqwest::Error,
    },
}

/// A call that failed for good, and what the endpoint's `onFailure` asks for. (`SkipField`
/// failures are not returned: the field is left out and the document goes on.)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrichFailure {
    /// Put the task back for another delivery.
    #[error("enrich endpoint {endpoint} failed, the task will be retried: {reason}")]
    Retry {
        /// The endpoint's name.
        endpoint: String,
        /// What went wrong, naming the endpoint and its URL.
        reason: String,
    },
    /// Move the task to the dead-letter list.
    #[error("enrich endpoint {endpoint} failed, the task is dead-lettered: {reason}")]
    DeadLetter {
        /// The endpoint's name.
        endpoint: String,
        /// What went wrong, naming the endpoint and its URL.
        reason: String,
    },
}

impl EnrichFailure {
    /// The endpoint that failed.
    #[must_use]
    pub fn endpoint(&self) -> &str {
        match self {
            EnrichFailure::Retry { endpoint, .. } | EnrichFailure::DeadLetter { endpoint, .. } => {
                endpoint
            }
        }
    }

    /// What went wrong.
    #[must_use]
    pub fn reason(&self) -> &str {
        match self {
            EnrichFailure::Retry { reason, .. } | EnrichFailure::DeadLetter { reason, .. } => {
                reason
            }
        }
    }
}

/// One configured endpoint, ready to call.
#[derive(Debug)]
struct Endpoint {
    name: String,
    url: reqwest::Url,
    input_field: String,
    output_field: String,
    response_pointer: Option<String>,
    timeout: Duration,
    retries: u32,
    on_failure: EnrichFailurePolicy,
    permits: Semaphore,
}

/// How one attempt ended, when it did not succeed.
#[derive(Debug, PartialEq, Eq)]
enum AttemptError {
    /// Worth another attempt: a timeout, a connection error, a 5xx or a 429.
    Retriable(String),
    /// Another attempt gets the same answer: a 4xx, a reply that is not JSON...
    Final(String),
}

/// Whether a reply with this status is worth sending again: 429 (slow down) and 5xx (the
/// service failed) are; every other non-success status is the request's fault.
#[must_use]
fn is_retriable_status(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// The HTTP NLP services of a pipeline.
///
/// Share one `Enricher` (by `Arc`) between all concurrent tasks: the per-endpoint concurrency
/// bound and the connection pool only work when they are shared.
#[derive(Debug)]
pub struct Enricher {
    client: reqwest::Client,
    endpoints: Vec<Endpoint>,
}

impl Enricher {
    /// Checks the endpoints and builds the shared HTTP client.
    ///
    /// # Errors
    /// [`EnrichError::Url`] for a URL that does not parse or is not http(s),
    /// [`EnrichError::Pointer`] for a response pointer not starting with `/`,
    /// [`EnrichError::Client`] when the HTTP client cannot be built.
    pub fn new(endpoints: &[EnrichEndpoint]) -> Result<Self, EnrichError> {
        let mut prepared = Vec::with_capacity(endpoints.len());
        for spec in endpoints {
            let url = reqwest::Url::parse(&spec.url).map_err(|e| EnrichError::Url {
                endpoint: spec.name.clone(),
                url: spec.url.clone(),
                reason: e.to_string(),
            })?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(EnrichError::Url {
                    endpoint: spec.name.clone(),
                    url: spec.url.clone(),
                    reason: format!("scheme {} is not http or https", url.scheme()),
                });
            }
            let response_pointer = match spec.response_pointer.as_deref() {
                None | Some("") => None,
                Some(p) if p.starts_with('/') => Some(p.to_owned()),
                Some(p) => {
                    return Err(EnrichError::Pointer {
                        endpoint: spec.name.clone(),
                        pointer: p.to_owned(),
                    });
                }
            };
            let permits = usize::try_from(spec.max_concurrent.max(1))
                .unwrap_or(1)
                .min(Semaphore::MAX_PERMITS);
            prepared.push(Endpoint {
                name: spec.name.clone(),
                url,
                input_field: spec.input_field.clone(),
                output_field: spec.output_field.clone(),
                response_pointer,
                timeout: Duration::from_millis(u64::from(spec.timeout_ms.max(1))),
                retries: spec.retries,
                on_failure: spec.on_failure,
                permits: Semaphore::new(permits),
            });
        }
        let idle_per_host = endpoints
            .iter()
            .map(|e| usize::try_from(e.max_concurrent).unwrap_or(1))
            .max()
            .unwrap_or(1);
        let client = reqwest::Client::builder()
            .user_agent(crate::USER_AGENT)
            .pool_max_idle_per_host(idle_per_host)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_keepalive(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()
            .map_err(|source| EnrichError::Client { source })?;
        Ok(Self {
            client,
            endpoints: prepared,
        })
    }

    /// Calls every endpoint in order and stores the replies in `doc`. A later endpoint sees the
    /// fields the earlier ones stored.
    ///
    /// # Errors
    /// [`EnrichFailure`] when a call failed after its retries and the endpoint's `onFailure` is
    /// `RetryTask` or `DeadLetter`; the fields stored by earlier endpoints stay in `doc`.
    pub async fn enrich(&self, doc: &mut Document) -> Result<(), EnrichFailure> {
        for endpoint in &self.endpoints {
            let body = match get_path(doc, &endpoint.input_field) {
                Some(Json::String(text)) => request_body(text),
                Some(other) => {
                    debug!(
                        endpoint = %endpoint.name,
                        field = %endpoint.input_field,
                        found = json_kind(other),
                        "Enrich input is not a string; call skipped."
                    );
                    continue;
                }
                None => {
                    debug!(endpoint = %endpoint.name, field = %endpoint.input_field, "Enrich input is missing; call skipped.");
                    continue;
                }
            };
            match self.call(endpoint, body).await {
                Ok(reply) => set_path(doc, &endpoint.output_field, reply),
                Err(reason) => match endpoint.on_failure {
                    EnrichFailurePolicy::RetryTask => {
                        return Err(EnrichFailure::Retry {
                            endpoint: endpoint.name.clone(),
                            reason,
                        });
                    }
                    EnrichFailurePolicy::DeadLetter => {
                        return Err(EnrichFailure::DeadLetter {
                            endpoint: endpoint.name.clone(),
                            reason,
                        });
                    }
                    EnrichFailurePolicy::SkipField => {
                        warn!(endpoint = %endpoint.name, field = %endpoint.output_field, %reason, "Enrich call failed; field left out.");
                    }
                },
            }
        }
        Ok(())
    }

    /// One call with its retries: the stored value, or the reason it failed.
    async fn call(&self, endpoint: &Endpoint, body: Vec<u8>) -> Result<Json, String> {
        let attempts = endpoint.retries.saturating_add(1);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let outcome = {
                let Ok(_permit) = endpoint.permits.acquire().await else {
                    return Err(format!(
                        "endpoint {} ({}): concurrency limiter closed",
                        endpoint.name, endpoint.url
                    ));
                };
                match tokio::time::timeout(endpoint.timeout, self.attempt(endpoint, body.clone()))
                    .await
                {
                    Ok(outcome) => outcome,
                    Err(_) => Err(AttemptError::Retriable(format!(
                        "timed out after {} ms",
                        endpoint.timeout.as_millis()
                    ))),
                }
            };
            let describe =
                |what: String| format!("endpoint {} ({}): {what}", endpoint.name, endpoint.url);
            match outcome {
                Ok(reply) => return Ok(reply),
                Err(AttemptError::Final(what)) => return Err(describe(what)),
                Err(AttemptError::Retriable(what)) if attempt >= attempts => {
                    return Err(describe(format!(
                        "{what} (attempt {attempt} of {attempts})"
                    )));
                }
                Err(AttemptError::Retriable(what)) => {
                    let delay = BACKOFF.delay(attempt.saturating_sub(1), &mut rand::rng());
                    debug!(
                        endpoint = %endpoint.name,
                        attempt,
                        delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        reason = %what,
                        "Enrich call failed; retrying."
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// One POST, its reply read and selected.
    async fn attempt(&self, endpoint: &Endpoint, body: Vec<u8>) -> Result<Json, AttemptError> {
        let response = self
            .client
            .post(endpoint.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| AttemptError::Retriable(format!("request failed: {}", error_chain(&e))))?;
        let status = response.status();
        let bytes = read_limited(response).await?;
        if !status.is_success() {
            let what = format!("HTTP {status}: {}", excerpt(&bytes));
            return Err(if is_retriable_status(status) {
                AttemptError::Retriable(what)
            } else {
                AttemptError::Final(what)
            });
        }
        let reply: Json = serde_json::from_slice(&bytes).map_err(|e| {
            AttemptError::Final(format!("reply is not JSON ({e}): {}", excerpt(&bytes)))
        })?;
        match &endpoint.response_pointer {
            None => Ok(reply),
            Some(pointer) => match reply.pointer(pointer) {
                Some(selected) => Ok(selected.clone()),
                None => Err(AttemptError::Final(format!(
                    "reply has nothing at {pointer}: {}",
                    excerpt(reply.to_string().as_bytes())
                ))),
            },
        }
    }
}

/// `{"text": ...}` as bytes, built once per call and reused by its retries.
fn request_body(text: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "text": text })).unwrap_or_default()
}

/// Reads a reply body of at most [`MAX_REPLY_BYTES`].
async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, AttemptError> {
    let status = response.status();
    if response
        .content_length()
        .is_some_and(|n| n > MAX_REPLY_BYTES as u64)
    {
        return Err(AttemptError::Final(format!(
            "HTTP {status}: reply larger than {MAX_REPLY_BYTES} bytes"
        )));
    }
    let mut bytes = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if bytes.len() + chunk.len() > MAX_REPLY_BYTES {
                    return Err(AttemptError::Final(format!(
                        "HTTP {status}: reply larger than {MAX_REPLY_BYTES} bytes"
                    )));
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(bytes),
            Err(e) => {
                return Err(AttemptError::Retriable(format!(
                    "HTTP {status}: reading the reply failed: {}",
                    error_chain(&e)
                )));
            }
        }
    }
}

/// The first [`BODY_EXCERPT_CHARS`] characters of a body, for failure reasons.
fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out: String = text.chars().take(BODY_EXCERPT_CHARS).collect();
    if text.chars().nth(BODY_EXCERPT_CHARS).is_some() {
        out.push('…');
    }
    out
}

fn json_kind(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "boolean",
        Json::Number(_) => "number",
        Json::String(_) => "string",
        Json::Array(_) => "array",
        Json::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(url: &str, pointer: Option<&str>) -> EnrichEndpoint {
        EnrichEndpoint {
            name: "seg".into(),
            url: url.into(),
            input_field: "body".into(),
            output_field: "nlp.tokens".into(),
            response_pointer: pointer.map(str::to_owned),
            timeout_ms: 100,
            retries: 1,
            max_concurrent: 2,
            on_failure: EnrichFailurePolicy::RetryTask,
        }
    }

    #[test]
    fn only_429_and_5xx_are_retried() {
        for code in [429u16, 500, 502, 503, 504] {
            assert!(
                is_retriable_status(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
        for code in [400u16, 401, 403, 404, 409, 413, 422, 301] {
            assert!(
                !is_retriable_status(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
    }

    #[test]
    fn excerpts_stop_at_200_characters_not_bytes() {
        let long = "中".repeat(300);
        let e = excerpt(long.as_bytes());
        assert_eq!(e.chars().count(), 201);
        assert!(e.ends_with('…'));
        assert_eq!(excerpt(b"short"), "short");
    }

    #[test]
    fn bad_urls_and_pointers_are_configuration_errors() {
        let e = Enricher::new(&[endpoint("not a url", None)]).unwrap_err();
        assert!(matches!(e, EnrichError::Url { .. }), "{e}");
        let e = Enricher::new(&[endpoint("ftp://host/x", None)]).unwrap_err();
        assert!(e.to_string().contains("not http or https"), "{e}");
        let e = Enricher::new(&[endpoint("http://127.0.0.1:1/x", Some("tokens"))]).unwrap_err();
        assert!(matches!(e, EnrichError::Pointer { .. }), "{e}");
        assert!(Enricher::new(&[endpoint("http://127.0.0.1:1/x", Some("/tokens"))]).is_ok());
    }

    #[test]
    fn request_body_is_a_json_object_with_the_text() {
        let body = request_body("a \"quoted\" 中文");
        let parsed: Json = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed, serde_json::json!({"text": "a \"quoted\" 中文"}));
    }
}
