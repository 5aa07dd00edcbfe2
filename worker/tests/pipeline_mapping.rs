//! The document shape against a real index: `keywords.<set>` is an array of
//! `{"keyword", "count"}` objects, so an index left to dynamic mapping (no template, default
//! field limit of 1,000) takes a data set whose documents hit thousands of distinct keywords.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod pipeline_support;

use std::time::{Duration, Instant};

use migrate_e2e::search;
use pipeline_support::{Job, report};
use serde_json::Value;

/// Field limit of an index whose settings do not name one (`index.mapping.total_fields.limit`).
const DEFAULT_FIELD_LIMIT: usize = 1_000;

/// Mapped leaf fields under `properties` (multi-fields such as `.keyword` count too, as they
/// do for the index's limit).
fn leaf_fields(properties: &serde_json::Map<String, Value>) -> usize {
    properties
        .values()
        .map(|field| {
            let inner = field
                .get("properties")
                .and_then(Value::as_object)
                .map_or(1, leaf_fields);
            let multi = field
                .get("fields")
                .and_then(Value::as_object)
                .map_or(0, serde_json::Map::len);
            inner + multi
        })
        .sum()
}

/// 3,000 articles whose documents hit far more than 1,000 distinct keywords all land in an
/// index created with no mapping at all, and the mapping stays a handful of fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_with_default_dynamic_mapping_takes_thousands_of_distinct_keywords() {
    let (job, expected) = Job::on_shared("mapping", 3_000).await;
    assert!(
        expected.counts.len() > DEFAULT_FIELD_LIMIT,
        "the data set must hit more distinct keywords ({}) than the field limit",
        expected.counts.len()
    );
    // No settings, no mappings: what an index gets when nobody prepared it.
    search::delete_index(&job.env.es_url, &job.index).await;
    let url = format!("{}/{}", job.env.es_url, job.index);
    let response = reqwest::Client::new().put(&url).send().await.unwrap();
    assert!(
        response.status().is_success(),
        "PUT {url}: {}",
        response.text().await.unwrap_or_default()
    );
    job.enqueue_all().await;

    let started = Instant::now();
    let mut worker = job.spawn("w1");
    let code = worker.exit_code(Duration::from_secs(150)).await;
    assert_eq!(code, 0, "log:\n{}", worker.log_tail(30));
    report(
        "3,000 tasks into a dynamically mapped index",
        job.generated.ids.len(),
        started.elapsed(),
    );

    assert!(
        job.dead().await.is_empty(),
        "no document may be rejected: {:?}",
        job.dead().await.first()
    );
    job.assert_exact(&expected).await;
    job.assert_documents_shaped_right(&expected, 8).await;

    let mapping: Value = reqwest::get(format!("{url}/_mapping"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let properties = mapping[&job.index]["mappings"]["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("no properties in {mapping}"));
    let topics = properties["keywords"]["properties"]["topics"]["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("no keywords.topics in {mapping}"));
    let mut names: Vec<&str> = topics.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["count", "keyword"], "keywords.topics mapping");
    let fields = leaf_fields(properties);
    eprintln!(
        "{} distinct keywords hit; the mapping holds {fields} fields",
        expected.counts.len()
    );
    assert!(fields < 100, "the mapping holds {fields} fields: {mapping}");
    job.cleanup().await;
}
