//! Stage C against HTTP servers: a small axum server started inside each test on
//! 127.0.0.1:0 (so it can fail on purpose: 5xx then success, 429, slow replies, 4xx, non-JSON),
//! and the testbed's real NLP service.

// Test helpers outside #[test] functions may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use migrate_crds::{EnrichEndpoint, EnrichFailurePolicy};
use migrate_worker::enrich::{EnrichFailure, Enricher};
use migrate_worker::task::Document;
use serde_json::{Value, json};

/// What the mock server saw.
#[derive(Default)]
struct Seen {
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// `/flaky` answers 503 to this many calls before succeeding.
    failures_before_success: AtomicUsize,
}

type Shared = Arc<Seen>;

/// `{"tokens": <whitespace-split text>, "upper": <text in upper case>}`.
fn segment(body: &Value) -> Value {
    let text = body["text"].as_str().unwrap_or_default();
    json!({"tokens": text.split_whitespace().collect::<Vec<_>>(), "upper": text.to_uppercase()})
}

async fn echo(State(seen): State<Shared>, Json(body): Json<Value>) -> Json<Value> {
    seen.calls.fetch_add(1, Ordering::SeqCst);
    Json(segment(&body))
}

async fn flaky(State(seen): State<Shared>, Json(body): Json<Value>) -> Response {
    let call = seen.calls.fetch_add(1, Ordering::SeqCst);
    if call < seen.failures_before_success.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "overloaded, try later").into_response()
    } else {
        Json(segment(&body)).into_response()
    }
}

async fn throttled(State(seen): State<Shared>) -> Response {
    seen.calls.fetch_add(1, Ordering::SeqCst);
    (StatusCode::TOO_MANY_REQUESTS, "slow down").into_response()
}

async fn rejects(State(seen): State<Shared>) -> Response {
    seen.calls.fetch_add(1, Ordering::SeqCst);
    let body = format!("invalid input: {}", "x".repeat(500));
    (StatusCode::UNPROCESSABLE_ENTITY, body).into_response()
}

async fn slow(State(seen): State<Shared>, Json(body): Json<Value>) -> Json<Value> {
    seen.calls.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(5)).await;
    Json(segment(&body))
}

async fn not_json(State(seen): State<Shared>) -> &'static str {
    seen.calls.fetch_add(1, Ordering::SeqCst);
    "hello, not json"
}

async fn gate(State(seen): State<Shared>, Json(body): Json<Value>) -> Json<Value> {
    seen.calls.fetch_add(1, Ordering::SeqCst);
    let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    seen.max_in_flight.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(30)).await;
    seen.in_flight.fetch_sub(1, Ordering::SeqCst);
    Json(segment(&body))
}

/// Starts the mock server; returns its base URL and what it sees.
async fn mock() -> (String, Shared) {
    let seen: Shared = Arc::default();
    let app = Router::new()
        .route("/echo", post(echo))
        .route("/flaky", post(flaky))
        .route("/throttled", post(throttled))
        .route("/rejects", post(rejects))
        .route("/slow", post(slow))
        .route("/not-json", post(not_json))
        .route("/gate", post(gate))
        .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

fn endpoint(name: &str, url: String) -> EnrichEndpoint {
    EnrichEndpoint {
        name: name.to_owned(),
        url,
        input_field: "body".into(),
        output_field: "nlp.segments".into(),
        response_pointer: None,
        timeout_ms: 2_000,
        retries: 2,
        max_concurrent: 4,
        on_failure: EnrichFailurePolicy::RetryTask,
    }
}

fn doc(value: Value) -> Document {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

/// Locks in storage: the whole reply at a dotted path (intermediate objects created), a
/// pointer-selected part, and endpoints run in order so a later one reads an earlier output.
#[tokio::test]
async fn replies_are_stored_at_dotted_paths_in_endpoint_order() {
    let (base, seen) = mock().await;
    let mut second = endpoint("upper-tokens", format!("{base}/echo"));
    second.input_field = "nlp.segments.upper".into();
    second.output_field = "derived.tokens".into();
    second.response_pointer = Some("/tokens".into());
    let enricher = Enricher::new(&[endpoint("segment", format!("{base}/echo")), second]).unwrap();

    let mut d = doc(json!({"id": 1, "body": "hello big world"}));
    enricher.enrich(&mut d).await.unwrap();

    assert_eq!(
        Value::Object(d),
        json!({
            "id": 1,
            "body": "hello big world",
            "nlp": {"segments": {"tokens": ["hello", "big", "world"], "upper": "HELLO BIG WORLD"}},
            "derived": {"tokens": ["HELLO", "BIG", "WORLD"]}
        })
    );
    assert_eq!(seen.calls.load(Ordering::SeqCst), 2);
}

/// Locks in that a missing or non-string input skips the call without an error.
#[tokio::test]
async fn a_missing_or_non_string_input_skips_the_call() {
    let (base, seen) = mock().await;
    let enricher = Enricher::new(&[endpoint("segment", format!("{base}/echo"))]).unwrap();
    for original in [
        json!({"id": 1}),
        json!({"id": 2, "body": 42}),
        json!({"id": 3, "body": null}),
    ] {
        let mut d = doc(original.clone());
        enricher.enrich(&mut d).await.unwrap();
        assert_eq!(Value::Object(d), original);
    }
    assert_eq!(seen.calls.load(Ordering::SeqCst), 0);
}

/// Locks in retries of 5xx replies until one succeeds.
#[tokio::test]
async fn server_errors_are_retried_until_a_call_succeeds() {
    let (base, seen) = mock().await;
    seen.failures_before_success.store(2, Ordering::SeqCst);
    let enricher = Enricher::new(&[endpoint("segment", format!("{base}/flaky"))]).unwrap();
    let mut d = doc(json!({"body": "a b"}));
    enricher.enrich(&mut d).await.unwrap();
    assert_eq!(d["nlp"]["segments"]["tokens"], json!(["a", "b"]));
    assert_eq!(seen.calls.load(Ordering::SeqCst), 3);
}

/// Locks in the `onFailure` policies once the retries are used up: RetryTask and DeadLetter
/// return their failure naming the endpoint, the URL and the status; SkipField leaves the
/// field out and goes on to the next endpoint.
#[tokio::test]
async fn after_the_last_retry_the_on_failure_policy_decides() {
    let (base, seen) = mock().await;
    seen.failures_before_success
        .store(usize::MAX, Ordering::SeqCst);
    let url = format!("{base}/flaky");

    let retry = Enricher::new(&[endpoint("segment", url.clone())]).unwrap();
    let failure = retry
        .enrich(&mut doc(json!({"body": "a"})))
        .await
        .unwrap_err();
    let EnrichFailure::Retry {
        endpoint: name,
        reason,
    } = &failure
    else {
        panic!("{failure:?}")
    };
    assert_eq!(name, "segment");
    assert!(
        reason.contains("segment") && reason.contains(&url),
        "{reason}"
    );
    assert!(
        reason.contains("503")
            && reason.contains("overloaded")
            && reason.contains("attempt 3 of 3"),
        "{reason}"
    );
    assert_eq!(seen.calls.load(Ordering::SeqCst), 3);

    let mut dead = endpoint("segment", url.clone());
    dead.on_failure = EnrichFailurePolicy::DeadLetter;
    dead.retries = 0;
    let failure = Enricher::new(&[dead])
        .unwrap()
        .enrich(&mut doc(json!({"body": "a"})))
        .await
        .unwrap_err();
    assert!(
        matches!(&failure, EnrichFailure::DeadLetter { endpoint, .. } if endpoint == "segment"),
        "{failure:?}"
    );
    assert_eq!(seen.calls.load(Ordering::SeqCst), 4);

    let mut skip = endpoint("segment", url);
    skip.on_failure = EnrichFailurePolicy::SkipField;
    skip.retries = 1;
    let mut next = endpoint("after", format!("{base}/echo"));
    next.output_field = "after".into();
    next.response_pointer = Some("/tokens".into());
    let mut d = doc(json!({"body": "a"}));
    Enricher::new(&[skip, next])
        .unwrap()
        .enrich(&mut d)
        .await
        .unwrap();
    assert_eq!(Value::Object(d), json!({"body": "a", "after": ["a"]}));
}

/// Locks in that a 4xx other than 429 is not retried and its reason quotes the status and the
/// first 200 characters of the body.
#[tokio::test]
async fn a_4xx_reply_is_not_retried_and_its_reason_quotes_the_body() {
    let (base, seen) = mock().await;
    let mut e = endpoint("segment", format!("{base}/rejects"));
    e.retries = 5;
    let failure = Enricher::new(&[e])
        .unwrap()
        .enrich(&mut doc(json!({"body": "a"})))
        .await
        .unwrap_err();
    assert_eq!(seen.calls.load(Ordering::SeqCst), 1);
    let reason = failure.reason();
    assert!(
        reason.contains("422") && reason.contains(&format!("{base}/rejects")),
        "{reason}"
    );
    let quoted = reason
        .split_once("invalid input: ")
        .map(|(_, rest)| rest)
        .unwrap();
    assert_eq!(
        quoted,
        format!("{}…", "x".repeat(200 - "invalid input: ".len()))
    );
}

/// Locks in that 429 is retried like a 5xx.
#[tokio::test]
async fn too_many_requests_is_retried() {
    let (base, seen) = mock().await;
    let mut e = endpoint("segment", format!("{base}/throttled"));
    e.retries = 1;
    let failure = Enricher::new(&[e])
        .unwrap()
        .enrich(&mut doc(json!({"body": "a"})))
        .await
        .unwrap_err();
    assert!(failure.reason().contains("429"), "{failure}");
    assert_eq!(seen.calls.load(Ordering::SeqCst), 2);
}

/// Locks in the per-call timeout: a reply slower than `timeoutMs` is abandoned and retried,
/// well before the server would have answered.
#[tokio::test]
async fn a_slow_reply_times_out_and_is_retried() {
    let (base, seen) = mock().await;
    let mut e = endpoint("segment", format!("{base}/slow"));
    e.timeout_ms = 100;
    e.retries = 1;
    let started = Instant::now();
    let failure = Enricher::new(&[e])
        .unwrap()
        .enrich(&mut doc(json!({"body": "a"})))
        .await
        .unwrap_err();
    assert!(
        failure.reason().contains("timed out after 100 ms"),
        "{failure}"
    );
    assert_eq!(seen.calls.load(Ordering::SeqCst), 2);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited for the server: {:?}",
        started.elapsed()
    );
}

/// Locks in that a refused connection is retried and then reported with its cause.
#[tokio::test]
async fn a_refused_connection_is_retried_then_reported() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/segment", listener.local_addr().unwrap());
    drop(listener);
    let mut e = endpoint("segment", url.clone());
    e.retries = 1;
    let failure = Enricher::new(&[e])
        .unwrap()
        .enrich(&mut doc(json!({"body": "a"})))
        .await
        .unwrap_err();
    let reason = failure.reason();
    assert!(
        reason.contains(&url)
            && reason.contains("request failed")
            && reason.contains("attempt 2 of 2"),
        "{reason}"
    );
}

/// Locks in that a successful reply that is not JSON, or lacks the pointer's target, fails at
/// once without retries.
#[tokio::test]
async fn a_reply_that_is_not_json_or_lacks_the_pointer_fails_without_retry() {
    let (base, seen) = mock().await;
    let failure = Enricher::new(&[endpoint("segment", format!("{base}/not-json"))])
        .unwrap()
        .enrich(&mut doc(json!({"body": "a"})))
        .await
        .unwrap_err();
    assert!(
        failure.reason().contains("not JSON") && failure.reason().contains("hello, not json"),
        "{failure}"
    );
    assert_eq!(seen.calls.load(Ordering::SeqCst), 1);

    let mut e = endpoint("segment", format!("{base}/echo"));
    e.response_pointer = Some("/entities".into());
    let failure = Enricher::new(&[e])
        .unwrap()
        .enrich(&mut doc(json!({"body": "a"})))
        .await
        .unwrap_err();
    assert!(
        failure.reason().contains("nothing at /entities"),
        "{failure}"
    );
    assert_eq!(seen.calls.load(Ordering::SeqCst), 2);
}

/// Locks in the per-endpoint concurrency bound: 24 documents enriched at once never put more
/// than `maxConcurrent` calls in flight at the server.
#[tokio::test]
async fn calls_in_flight_never_exceed_max_concurrent() {
    let (base, seen) = mock().await;
    let mut e = endpoint("segment", format!("{base}/gate"));
    e.max_concurrent = 3;
    let enricher = Arc::new(Enricher::new(&[e]).unwrap());
    let mut set = tokio::task::JoinSet::new();
    for n in 0..24 {
        let enricher = Arc::clone(&enricher);
        set.spawn(async move {
            let mut d = doc(json!({"body": format!("doc {n}")}));
            enricher.enrich(&mut d).await.map(|()| d)
        });
    }
    while let Some(joined) = set.join_next().await {
        let d = joined.unwrap().unwrap();
        assert_eq!(d["nlp"]["segments"]["tokens"][0], json!("doc"));
    }
    assert_eq!(seen.calls.load(Ordering::SeqCst), 24);
    assert_eq!(seen.max_in_flight.load(Ordering::SeqCst), 3);
}

/// Locks in the contract with the testbed's real NLP service (`POST /segment {"text"}` ->
/// `{"tokens": [...]}`): Chinese text comes back segmented and is stored at the output path.
///
/// Needs `tests/testbed/up.sh nlp`; `NLP_URL` defaults to the testbed address.
#[tokio::test]
async fn the_real_nlp_service_segments_text() {
    let base = std::env::var("NLP_URL").unwrap_or_else(|_| "http://127.0.0.1:8090".to_owned());
    let mut e = endpoint("segment", format!("{base}/segment"));
    e.response_pointer = Some("/tokens".into());
    e.output_field = "nlp.tokens".into();
    let enricher = Enricher::new(&[e]).unwrap();
    let text = "我们在北京学习自然语言处理";
    let mut d = doc(json!({"body": text}));
    enricher.enrich(&mut d).await.unwrap();
    let tokens: Vec<&str> = d["nlp"]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(tokens.len() > 1, "{tokens:?}");
    assert!(
        tokens.iter().all(|t| !t.is_empty() && text.contains(t)),
        "{tokens:?}"
    );
}
