//! Bulk requests fill to `sink.batchDocs` whatever `workers.concurrency` is, against the real
//! testbed (Redis, MariaDB, OpenSearch, NLP), and documents waiting in a batch, which no
//! longer hold a concurrency slot, are still held in Redis until the bulk answer: a SIGKILL
//! loses and duplicates nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod pipeline_support;

use std::time::Duration;

use migrate_crds::Mode;
use nix::sys::signal::Signal;
use pipeline_support::{Job, wait_for};

/// With 4 tasks at a time and batches of 200, a queue of 3,000 ids gives bulks of 200: the
/// mean documents per bulk, read from the worker's `/metrics`, is at least 90% of
/// `batchDocs` (only the last batch may be partial). Before batches were freed from the
/// concurrency slots, no bulk could hold more than 4 documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulks_fill_to_batch_docs_at_a_concurrency_far_below_it() {
    let (mut job, expected) = Job::on_shared("batchfill", 3_000).await;
    job.spec.mode = Mode::Continuous;
    job.spec.workers.concurrency = 4;
    job.spec.sink.batch_docs = 200;
    // Generous timers: on a loaded test machine a pause of the flow must not be what is
    // measured; the default timers are the benchmark's business.
    job.spec.sink.batch_linger_ms = 1_000;
    job.spec.sink.flush_interval_ms = 10_000;
    job.enqueue_all().await;
    let total = job.generated.ids.len() as u64;
    let mut worker = job.spawn("w1");
    wait_for("every task finished", Duration::from_secs(300), || async {
        (job.stats().await.finished() >= total).then_some(())
    })
    .await;
    let metrics = worker.metrics().await.expect("/metrics answers");
    let get = |k: &str| *metrics.get(k).unwrap_or_else(|| panic!("{k} missing"));
    let (docs, bulks) = (get("migrate_bulk_docs_sum"), get("migrate_bulk_docs_count"));
    let mean = docs / bulks;
    eprintln!(
        "{docs} documents in {bulks} bulks, mean {mean:.1}; sent by: full {}, linger {}, interval {}, idle {}",
        get(r#"migrate_bulk_requests_total{trigger="full"}"#),
        get(r#"migrate_bulk_requests_total{trigger="linger"}"#),
        get(r#"migrate_bulk_requests_total{trigger="interval"}"#),
        get(r#"migrate_bulk_requests_total{trigger="idle"}"#),
    );
    assert!(
        docs >= expected.indexed_ids.len() as f64,
        "every document that is not filtered went through a bulk: {docs}"
    );
    assert!(mean >= 0.9 * 200.0, "mean {mean:.1} documents per bulk");

    worker.signal(Signal::SIGTERM);
    assert_eq!(worker.exit_code(Duration::from_secs(30)).await, 0);
    job.assert_exact(&expected).await;
    job.cleanup().await;
}

/// A worker killed while hundreds of documents wait in its batches (more than its 4 slots:
/// they have given their slots back) held every one of them in its processing list: started
/// again under the same id it puts them back and finishes, nothing lost, nothing counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_with_documents_waiting_in_batches_loses_and_duplicates_nothing() {
    let (mut job, expected) = Job::on_shared("batchkill", 3_000).await;
    job.spec.workers.concurrency = 4;
    job.spec.sink.batch_docs = 2_000;
    job.spec.sink.batch_linger_ms = 20_000;
    job.spec.sink.flush_interval_ms = 30_000;
    job.enqueue_all().await;
    let mut first = job.spawn("w1");
    let waiting = wait_for(
        "hundreds of documents waiting in a batch",
        Duration::from_secs(120),
        || async {
            let m = first.metrics().await?;
            let held = m.get("migrate_in_flight").copied().unwrap_or(0.0);
            (held >= 300.0).then_some(held)
        },
    )
    .await;
    first.kill9().await;
    let held = job.llen(&job.keys("w1").processing).await;
    eprintln!("killed with {waiting} tasks in flight and {held} ids held");
    assert!(
        held >= 300,
        "documents in batches stay held in Redis: {held}"
    );

    // The restarted worker has the default batching, and more slots to finish sooner.
    job.spec.workers.concurrency = 32;
    let defaults = migrate_crds::pipeline::example_spec().sink;
    job.spec.sink.batch_docs = defaults.batch_docs;
    job.spec.sink.batch_linger_ms = defaults.batch_linger_ms;
    job.spec.sink.flush_interval_ms = defaults.flush_interval_ms;
    let mut second = job.spawn("w1");
    let code = second.exit_code(Duration::from_secs(300)).await;
    assert_eq!(code, 0, "log:\n{}", second.log_tail(30));
    assert!(
        second
            .log_text()
            .contains("Put back the ids a previous run"),
        "the restarted worker recovers its processing list"
    );
    job.assert_exact(&expected).await;
    assert_eq!(job.llen(&job.keys("w1").processing).await, 0);
    job.cleanup().await;
}
