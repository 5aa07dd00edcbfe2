//! The sink against real search servers: OpenSearch 3.8, noida-db (answers as Elasticsearch
//! 8.15) and osmem-server (answers as OpenSearch 3.8), the same test body for each.
//!
//! Start them with `tests/testbed/up.sh opensearch noida osmem`; addresses come from
//! `ES_URL`, `NOIDA_URL` and `OSMEM_URL` (loopback defaults). A server that does not answer
//! fails the test: these tests are never skipped. Each test writes to its own fresh index and
//! deletes it afterwards, so they run in parallel.

// Test helpers outside #[test] functions may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use migrate_worker::sink::retry::Backoff;
use migrate_worker::sink::{ItemResult, Pushed, Sink};
use migrate_worker::task::{Document, TaskId};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// One engine under test, and what it is known to support.
struct Engine {
    name: &'static str,
    env: &'static str,
    default_url: &'static str,
    /// Whether the engine enforces field types from an explicit mapping.
    typed_mappings: bool,
    /// Whether the engine refuses an upper-case index name per item.
    checks_index_names: bool,
    /// Whether a bulk into a closed index fails per item (true) or as a whole request.
    closed_index_per_item: bool,
}

impl Engine {
    fn url(&self) -> String {
        std::env::var(self.env).unwrap_or_else(|_| self.default_url.to_owned())
    }
}

const OPENSEARCH: Engine = Engine {
    name: "opensearch",
    env: "ES_URL",
    default_url: "http://127.0.0.1:9250",
    typed_mappings: true,
    checks_index_names: true,
    closed_index_per_item: true,
};
const NOIDA: Engine = Engine {
    name: "noida",
    env: "NOIDA_URL",
    default_url: "http://127.0.0.1:9252",
    typed_mappings: true,
    // noida-db 0.2.3 creates `BadIndex` and indexes into it.
    checks_index_names: false,
    // noida-db 0.2.3 answers HTTP 400 to the whole request.
    closed_index_per_item: false,
};
const OSMEM: Engine = Engine {
    name: "osmem",
    env: "OSMEM_URL",
    default_url: "http://127.0.0.1:9251",
    typed_mappings: true,
    checks_index_names: true,
    closed_index_per_item: true,
};

/// A plain HTTP client for checking what the sink wrote.
struct Check {
    http: reqwest::Client,
    url: String,
    index: String,
}

impl Check {
    /// Fails with the testbed command when the engine does not answer.
    async fn new(engine: &Engine, test: &str) -> Self {
        let url = engine.url().trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let answer = http.get(format!("{url}/")).send().await;
        assert!(
            answer.as_ref().is_ok_and(|r| r.status().is_success()),
            "{} does not answer at {url} ({}={url}): {answer:?}\n\
             start it with: tests/testbed/up.sh opensearch noida osmem",
            engine.name,
            engine.env,
        );
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let index =
            format!("sink-{test}-{}-{}-{nanos}", engine.name, std::process::id()).replace('_', "-");
        Self { http, url, index }
    }

    async fn put_index(&self, body: Value) {
        let r = self
            .http
            .put(format!("{}/{}", self.url, self.index))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert!(
            status.is_success(),
            "creating index {} failed: {status} {text}",
            self.index
        );
    }

    async fn count(&self) -> u64 {
        let r = self
            .http
            .post(format!("{}/{}/_refresh", self.url, self.index))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "refresh failed: {}", r.status());
        let v: Value = self
            .http
            .get(format!("{}/{}/_count", self.url, self.index))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["count"]
            .as_u64()
            .unwrap_or_else(|| panic!("no count in {v}"))
    }

    async fn get(&self, id: u64) -> Value {
        let v: Value = self
            .http
            .get(format!("{}/{}/_doc/{id}", self.url, self.index))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["found"], json!(true), "document {id} not found: {v}");
        v["_source"].clone()
    }

    async fn delete_index(&self) {
        let _ = self
            .http
            .delete(format!("{}/{}", self.url, self.index))
            .send()
            .await;
    }

    fn sink(&self, batch_docs: u32, batch_bytes: u64) -> Sink {
        self.sink_for(&self.index, batch_docs, batch_bytes)
    }

    fn sink_for(&self, index: &str, batch_docs: u32, batch_bytes: u64) -> Sink {
        let spec = serde_json::from_value(json!({
            "urlSecretRef": {"name": "search", "key": "url"},
            "index": index,
            "batchDocs": batch_docs,
            "batchBytes": batch_bytes,
            "retries": 2,
        }))
        .unwrap();
        Sink::new(&spec, &self.url, None, None)
            .unwrap()
            .with_backoff(Backoff {
                base: Duration::from_millis(20),
                cap: Duration::from_millis(100),
            })
    }

    async fn post(&self, path: &str, body: Value) {
        let r = self
            .http
            .post(format!("{}/{}/{path}", self.url, self.index))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert!(
            status.is_success(),
            "POST {path} on {} failed: {status} {text}",
            self.index
        );
    }
}

/// A stop for one send: a server still unavailable after a minute leaves the documents
/// unsent, which the test then reports, instead of waiting for ever.
fn within_a_minute() -> CancellationToken {
    let stop = CancellationToken::new();
    let timer = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        timer.cancel();
    });
    stop
}

fn id(n: u64) -> TaskId {
    TaskId::parse(&n.to_string()).unwrap()
}

fn doc(v: Value) -> Document {
    v.as_object().unwrap().clone()
}

/// Pushes every document into one batch (asserting it fits) and sends it.
async fn send_all(sink: &Sink, docs: &[(u64, Document)]) -> Vec<(TaskId, ItemResult)> {
    let mut b = sink.builder();
    for (n, d) in docs {
        assert_eq!(
            b.push(id(*n), d).unwrap(),
            Pushed::Added,
            "document {n} did not fit"
        );
    }
    sink.send(b.finish(), &within_a_minute()).await
}

/// Documents are written under their task id and read back; sending the same ids again
/// overwrites them: the count does not grow and the content is the new one.
async fn replay_overwrites_instead_of_duplicating(engine: &Engine) {
    let check = Check::new(engine, "replay").await;
    let sink = check.sink(100, 1 << 20);
    sink.ping().await.unwrap();
    let first: Vec<(u64, Document)> = (1..=5)
        .map(|n| {
            (
                n,
                doc(json!({"title": format!("doc {n}"), "n": n, "tags": ["a", "b"]})),
            )
        })
        .collect();
    let results = send_all(&sink, &first).await;
    assert_eq!(
        results.iter().map(|(id, _)| id.value).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert!(
        results.iter().all(|(_, r)| *r == ItemResult::Indexed),
        "{}: {results:?}",
        engine.name
    );
    assert_eq!(check.count().await, 5, "{}", engine.name);
    assert_eq!(
        check.get(3).await,
        json!({"title": "doc 3", "n": 3, "tags": ["a", "b"]})
    );

    let replay: Vec<(u64, Document)> = (1..=5)
        .map(|n| (n, doc(json!({"title": format!("again {n}"), "n": n}))))
        .collect();
    let results = send_all(&sink, &replay).await;
    assert!(
        results.iter().all(|(_, r)| *r == ItemResult::Indexed),
        "{}: {results:?}",
        engine.name
    );
    assert_eq!(
        check.count().await,
        5,
        "{}: the replay added documents",
        engine.name
    );
    assert_eq!(check.get(3).await, json!({"title": "again 3", "n": 3}));
    check.delete_index().await;
}

/// With a mapping where `n` is an integer, a document with a string there is Rejected with a
/// reason naming the field, while its neighbours are Indexed.
async fn typed_mapping_rejects_only_the_bad_document(engine: &Engine) {
    let check = Check::new(engine, "mapping").await;
    check
        .put_index(json!({"mappings": {"properties": {"n": {"type": "integer"}}}}))
        .await;
    let sink = check.sink(100, 1 << 20);
    let docs = vec![
        (1, doc(json!({"n": 1}))),
        (2, doc(json!({"n": "abc"}))),
        (3, doc(json!({"n": 3}))),
    ];
    let results = send_all(&sink, &docs).await;
    if !engine.typed_mappings {
        eprintln!(
            "{}: does NOT enforce mapped field types; a string in an integer field is accepted",
            engine.name
        );
        assert!(
            results.iter().all(|(_, r)| *r == ItemResult::Indexed),
            "{}: {results:?}",
            engine.name
        );
        check.delete_index().await;
        return;
    }
    assert_eq!(results[0].1, ItemResult::Indexed, "{}", engine.name);
    assert_eq!(results[2].1, ItemResult::Indexed, "{}", engine.name);
    match &results[1].1 {
        ItemResult::Rejected { status, reason } => {
            eprintln!("{}: rejected with {status}: {reason}", engine.name);
            assert_eq!(*status, 400, "{}", engine.name);
            assert!(
                reason.contains("[n]"),
                "{}: reason does not name the field: {reason}",
                engine.name
            );
            assert!(reason.contains("integer"), "{}: {reason}", engine.name);
        }
        other => panic!("{}: expected Rejected, got {other:?}", engine.name),
    }
    assert_eq!(check.count().await, 2, "{}", engine.name);
    check.delete_index().await;
}

/// `dynamic: strict` refuses a document with an unmapped field, per item.
async fn strict_dynamic_mapping_rejects_unknown_fields(engine: &Engine) {
    let check = Check::new(engine, "strict").await;
    check
        .put_index(
            json!({"mappings": {"dynamic": "strict", "properties": {"n": {"type": "integer"}}}}),
        )
        .await;
    let sink = check.sink(100, 1 << 20);
    let results = send_all(
        &sink,
        &[
            (1, doc(json!({"n": 1}))),
            (2, doc(json!({"n": 2, "other": "x"}))),
        ],
    )
    .await;
    assert_eq!(results[0].1, ItemResult::Indexed, "{}", engine.name);
    match &results[1].1 {
        ItemResult::Rejected {
            status: 400,
            reason,
        } => {
            eprintln!("{}: strict mapping: {reason}", engine.name);
            assert!(
                reason.contains("strict_dynamic_mapping_exception") && reason.contains("[other]"),
                "{reason}"
            );
        }
        other => panic!("{}: expected Rejected, got {other:?}", engine.name),
    }
    check.delete_index().await;
}

/// A write-blocked index is not the documents' fault: they come back Failed (left for
/// redelivery) after the retries, with the server's reason, never Rejected.
async fn write_blocked_index_fails_for_redelivery(engine: &Engine) {
    let check = Check::new(engine, "blocked").await;
    check.put_index(json!({})).await;
    let r = check
        .http
        .put(format!("{}/{}/_settings", check.url, check.index))
        .json(&json!({"index.blocks.write": true}))
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "{}: blocking writes failed: {}",
        engine.name,
        r.status()
    );
    let sink = check.sink(10, 1 << 20);
    let results = send_all(&sink, &[(1, doc(json!({"n": 1})))]).await;
    match &results[0].1 {
        ItemResult::Failed { reason } => {
            eprintln!("{}: write block: {reason}", engine.name);
            assert!(
                reason.starts_with("gave up after 3 attempts"),
                "{}: {reason}",
                engine.name
            );
            assert!(
                reason.contains("cluster_block_exception"),
                "{}: {reason}",
                engine.name
            );
        }
        other => panic!("{}: expected Failed, got {other:?}", engine.name),
    }
    let _ = check
        .http
        .put(format!("{}/{}/_settings", check.url, check.index))
        .json(&json!({"index.blocks.write": false}))
        .send()
        .await;
    check.delete_index().await;
}

/// A closed index fails the documents for redelivery, whether the engine says so per item
/// (retried, then Failed) or for the whole request (a 400, Failed at once).
async fn closed_index_fails_for_redelivery(engine: &Engine) {
    let check = Check::new(engine, "closed").await;
    check.put_index(json!({})).await;
    check.post("_close", json!({})).await;
    let sink = check.sink(10, 1 << 20);
    let results = send_all(
        &sink,
        &[(1, doc(json!({"n": 1}))), (2, doc(json!({"n": 2})))],
    )
    .await;
    for (id, result) in &results {
        let ItemResult::Failed { reason } = result else {
            panic!(
                "{}: document {id}: expected Failed, got {result:?}",
                engine.name
            );
        };
        assert!(
            reason.contains("index_closed_exception"),
            "{}: {reason}",
            engine.name
        );
        if engine.closed_index_per_item {
            assert!(
                reason.starts_with("gave up after 3 attempts: HTTP 400"),
                "{}: {reason}",
                engine.name
            );
        } else {
            eprintln!(
                "{}: a closed index fails the whole request: {reason}",
                engine.name
            );
            assert!(
                reason.starts_with("not retried: bulk request answered HTTP 400"),
                "{}: {reason}",
                engine.name
            );
        }
    }
    check.delete_index().await;
}

/// An index name the engine refuses (upper case) is refused per item, not per request.
async fn invalid_index_name_is_rejected_per_item(engine: &Engine) {
    let check = Check::new(engine, "badname").await;
    let bad = format!("Bad-{}", check.index);
    let sink = check.sink_for(&bad, 10, 1 << 20);
    let results = send_all(&sink, &[(1, doc(json!({"n": 1})))]).await;
    if engine.checks_index_names {
        assert!(
            matches!(&results[0].1, ItemResult::Rejected { status: 400, reason } if reason.contains("invalid_index_name_exception")),
            "{}: {results:?}",
            engine.name
        );
    } else {
        eprintln!(
            "{}: does NOT check index names; {bad} was created and written",
            engine.name
        );
        assert_eq!(results[0].1, ItemResult::Indexed, "{}", engine.name);
        let _ = check
            .http
            .delete(format!("{}/{bad}", check.url))
            .send()
            .await;
    }
}

/// Throughput of a 500-document bulk of ~6 KB documents (printed, not asserted), and every
/// document lands. A one-document bulk first creates the index and opens the connection, so
/// the timed runs measure indexing only; three runs with fresh ids each.
async fn bulk_of_500_docs_of_6kb(engine: &Engine) {
    const RUNS: u64 = 3;
    let check = Check::new(engine, "throughput").await;
    let sink = check.sink(500, 10 << 20);
    let warm = send_all(&sink, &[(0, doc(json!({"title": "warm-up"})))]).await;
    assert_eq!(warm[0].1, ItemResult::Indexed, "{}", engine.name);
    let words = [
        "migrate", "search", "keyword", "operator", "worker", "queue", "bulk", "index",
    ];
    let mut timings = Vec::new();
    for run in 0..RUNS {
        let mut b = sink.builder();
        for n in run * 500 + 1..=run * 500 + 500 {
            let text: Vec<&str> = (0..1000)
                .map(|i| words[(i + n as usize) % words.len()])
                .collect();
            let d = doc(
                json!({"title": format!("document {n}"), "n": n, "body": &text.join(" ")[..5900]}),
            );
            assert_eq!(b.push(id(n), &d).unwrap(), Pushed::Added);
        }
        let bytes = b.bytes();
        let request = b.finish();
        let started = Instant::now();
        let results = sink.send(request, &within_a_minute()).await;
        let elapsed = started.elapsed();
        let failed: Vec<_> = results
            .iter()
            .filter(|(_, r)| *r != ItemResult::Indexed)
            .collect();
        assert!(
            failed.is_empty(),
            "{}: {} not indexed, first {:?}",
            engine.name,
            failed.len(),
            failed.first()
        );
        timings.push((bytes, elapsed));
    }
    for (run, (bytes, elapsed)) in timings.iter().enumerate() {
        let secs = elapsed.as_secs_f64();
        println!(
            "throughput {} run {run}: 500 docs, {bytes} bytes in {:.1} ms = {:.0} docs/s, {:.1} MB/s",
            engine.name,
            secs * 1e3,
            500.0 / secs,
            *bytes as f64 / 1e6 / secs
        );
    }
    assert_eq!(check.count().await, RUNS * 500 + 1, "{}", engine.name);
    check.delete_index().await;
}

macro_rules! engine_tests {
    ($module:ident, $engine:expr) => {
        mod $module {
            use super::*;

            #[tokio::test]
            async fn replay_overwrites_instead_of_duplicating() {
                super::replay_overwrites_instead_of_duplicating(&$engine).await;
            }

            #[tokio::test]
            async fn typed_mapping_rejects_only_the_bad_document() {
                super::typed_mapping_rejects_only_the_bad_document(&$engine).await;
            }

            #[tokio::test]
            async fn strict_dynamic_mapping_rejects_unknown_fields() {
                super::strict_dynamic_mapping_rejects_unknown_fields(&$engine).await;
            }

            #[tokio::test]
            async fn write_blocked_index_fails_for_redelivery() {
                super::write_blocked_index_fails_for_redelivery(&$engine).await;
            }

            #[tokio::test]
            async fn closed_index_fails_for_redelivery() {
                super::closed_index_fails_for_redelivery(&$engine).await;
            }

            #[tokio::test]
            async fn invalid_index_name_is_rejected_per_item() {
                super::invalid_index_name_is_rejected_per_item(&$engine).await;
            }

            #[tokio::test]
            async fn bulk_of_500_docs_of_6kb() {
                super::bulk_of_500_docs_of_6kb(&$engine).await;
            }
        }
    };
}

engine_tests!(opensearch, OPENSEARCH);
engine_tests!(noida, NOIDA);
engine_tests!(osmem, OSMEM);
