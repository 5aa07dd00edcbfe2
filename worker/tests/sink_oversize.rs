//! Documents larger than a batch against the real OpenSearch of the testbed (`ES_URL`): each
//! goes in a request of its own; the server indexes what it takes, and only its own refusal
//! (HTTP 413 past `http.max_content_length`, 100mb unless the testbed sets it) dead-letters a
//! document, with the server's answer. The documents batched with them are all indexed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use migrate_e2e::env::{Service, TestEnv, unique_name};
use migrate_e2e::search;
use migrate_worker::sink::{BulkRequest, ItemResult, Pushed, Sink};
use migrate_worker::task::{Document, TaskId};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// `http.max_content_length` of the server, in bytes.
async fn max_content_length(es_url: &str) -> u64 {
    let url = format!(
        "{}/_cluster/settings?include_defaults=true&flat_settings=true",
        es_url.trim_end_matches('/')
    );
    let settings: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    let value = ["persistent", "transient", "defaults"]
        .iter()
        .find_map(|scope| settings[scope]["http.max_content_length"].as_str())
        .unwrap_or("100mb")
        .to_ascii_lowercase();
    let (number, unit) = value.split_at(value.find(|c: char| c.is_ascii_alphabetic()).unwrap());
    let number: u64 = number.trim().parse().unwrap();
    let unit = match unit {
        "b" => 1,
        "kb" => 1 << 10,
        "mb" => 1 << 20,
        "gb" => 1 << 30,
        other => panic!("unit {other:?} of http.max_content_length {value:?}"),
    };
    number * unit
}

fn doc(body: String) -> Document {
    json!({"title": "t", "body": body})
        .as_object()
        .unwrap()
        .clone()
}

fn id(n: u64) -> TaskId {
    TaskId::parse(&n.to_string()).unwrap()
}

/// A 12 MB document with a 5 MiB batch limit is indexed; one past the server's
/// `http.max_content_length` is refused by the server alone (413) and comes back Rejected with
/// its answer; the small documents around them, batched together, are all indexed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_larger_than_a_batch_are_sent_alone_and_only_the_server_refuses_them() {
    let env = TestEnv::load();
    env.require(&[Service::Es]).await;
    let index = unique_name("sink-oversize").replace('_', "-");
    search::create_index(&env.es_url, &index, search::bulk_load_index(&json!({}))).await;
    let limit = max_content_length(&env.es_url).await;
    let spec: migrate_crds::SinkSpec = serde_json::from_value(json!({
        "urlSecretRef": {"name": "search", "key": "url"},
        "index": index,
        "batchBytes": 5 * 1024 * 1024,
        "retries": 1,
    }))
    .unwrap();
    let sink = Sink::new(&spec, &env.es_url, None, None)
        .unwrap()
        .with_request_timeout(std::time::Duration::from_secs(120));

    let twelve_mb = 12 * 1024 * 1024;
    let over_limit = usize::try_from(limit).unwrap() + 1024;
    let mut batch = sink.builder();
    let mut alone: Vec<BulkRequest> = Vec::new();
    for (n, size) in [
        (1, 100),
        (2, twelve_mb),
        (3, 100),
        (4, over_limit),
        (5, 100),
    ] {
        match batch.push(id(n), &doc("x".repeat(size))).unwrap() {
            Pushed::Added => {}
            Pushed::Alone(request) => alone.push(request),
            Pushed::Full => panic!("three small documents fill no batch"),
        }
    }
    assert_eq!(batch.len(), 3, "the small documents stay batched together");
    assert_eq!(
        alone.len(),
        2,
        "each large document is a request of its own"
    );

    let stop = CancellationToken::new();
    let mut results = sink.send(batch.finish(), &stop).await;
    for request in alone {
        results.extend(sink.send(request, &stop).await);
    }
    results.sort_by_key(|(id, _)| id.value);
    let outcome = |n: u64| &results[usize::try_from(n - 1).unwrap()].1;
    for n in [1, 2, 3, 5] {
        assert_eq!(
            outcome(n),
            &ItemResult::Indexed,
            "document {n}: {results:?}"
        );
    }
    match outcome(4) {
        ItemResult::Rejected { status, reason } => {
            assert_eq!(*status, 413, "{reason}");
            assert!(
                reason.contains("HTTP 413") && reason.contains("Too Large"),
                "the server's words: {reason}"
            );
        }
        other => panic!("the document over {limit} bytes: {other:?}"),
    }

    search::refresh(&env.es_url, &index).await;
    assert_eq!(
        search::ids(&env.es_url, &index).await,
        [1, 2, 3, 5].into_iter().collect(),
        "the index holds every document but the refused one"
    );
    let stored = search::get_source(&env.es_url, &index, "2").await.unwrap();
    assert_eq!(stored["body"].as_str().map(str::len), Some(twelve_mb));
    search::delete_index(&env.es_url, &index).await;
}
