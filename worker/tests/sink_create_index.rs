//! `sink.createIndex` against the real OpenSearch of the testbed (`ES_URL`, loopback default):
//! workers starting together create the index once with the job's mapping, the others find it
//! there, and a body the server refuses is a settings error in the server's words.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{SystemTime, UNIX_EPOCH};

use migrate_worker::sink::{IndexPrepared, Sink, SinkError};
use serde_json::{Value, json};

fn es_url() -> String {
    std::env::var("ES_URL").unwrap_or_else(|_| "http://127.0.0.1:9250".to_owned())
}

fn fresh_index(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

fn sink(index: &str, body: &str) -> Sink {
    let spec: migrate_crds::SinkSpec = serde_json::from_value(json!({
        "urlSecretRef": {"name": "search", "key": "url"},
        "index": index,
        "createIndex": body,
    }))
    .unwrap();
    Sink::new(&spec, &es_url(), None, None).unwrap()
}

/// Four workers start at once: one creates the index with the job's mapping, the other three
/// accept "already exists"; a fifth, later, finds it and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_workers_create_the_index_once_with_the_jobs_mapping() {
    let index = fresh_index("create-race");
    let body = json!({
        "settings": {"number_of_shards": 1, "number_of_replicas": 0},
        "mappings": {"properties": {"keywords": {"type": "keyword"}, "author_id": {"type": "short"}}}
    })
    .to_string();
    let sinks: Vec<Sink> = (0..4).map(|_| sink(&index, &body)).collect();
    let results = futures::future::join_all(sinks.iter().map(Sink::prepare_index)).await;
    let results: Vec<IndexPrepared> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        results
            .iter()
            .filter(|r| **r == IndexPrepared::Created)
            .count(),
        1,
        "{results:?}"
    );
    assert_eq!(
        results
            .iter()
            .filter(|r| **r == IndexPrepared::Existed)
            .count(),
        3,
        "{results:?}"
    );
    assert_eq!(
        sink(&index, "{}").prepare_index().await.unwrap(),
        IndexPrepared::Existed
    );

    let http = reqwest::Client::new();
    let mapping: Value = http
        .get(format!("{}/{index}/_mapping", es_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let properties = &mapping[&index]["mappings"]["properties"];
    assert_eq!(properties["author_id"]["type"], "short", "{mapping}");
    assert_eq!(properties["keywords"]["type"], "keyword", "{mapping}");
    http.delete(format!("{}/{index}", es_url()))
        .send()
        .await
        .unwrap();
}

/// A mapping the server cannot take stops the worker as a settings error naming the field
/// and quoting the server; no index is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_the_server_refuses_is_a_settings_error_in_its_words() {
    let index = fresh_index("create-bad");
    let body = json!({"mappings": {"properties": {"title": {"type": "no-such-type"}}}}).to_string();
    let err = sink(&index, &body).prepare_index().await.unwrap_err();
    assert!(err.is_config(), "{err:?}");
    assert!(
        matches!(err, SinkError::CreateIndex { status: 400, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("sink.createIndex") && text.contains("no-such-type"),
        "{text}"
    );
    let status = reqwest::Client::new()
        .head(format!("{}/{index}", es_url()))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404, "no index is left behind");
}
