//! The worker binary against the real testbed (Redis, MariaDB, OpenSearch, NLP): every
//! document indexed exactly once with the right fields, keyword counts exact, also across a
//! SIGKILL in the middle of the run.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod pipeline_support;

use std::time::{Duration, Instant};

use pipeline_support::{Job, report, wait_for};

/// 10,000 tasks in drain mode: the worker exits 0 by itself, every non-blacklisted article is
/// indexed once with its fields, the keyword counts equal the oracle's and the stats add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_tasks_are_indexed_exactly_once_with_exact_counts() {
    let (job, expected) = Job::on_shared("once", 10_000).await;
    job.enqueue_all().await;

    let started = Instant::now();
    let mut worker = job.spawn("w1");
    let code = worker.exit_code(Duration::from_secs(150)).await;
    let elapsed = started.elapsed();
    assert_eq!(
        code,
        0,
        "drain mode ends with exit code 0; log:\n{}",
        worker.log_tail(30)
    );
    report("10,000 tasks, one worker", job.generated.ids.len(), elapsed);

    job.assert_exact(&expected).await;
    job.assert_documents_shaped_right(&expected, 12).await;
    let stats = job.stats().await;
    assert_eq!(stats.get("dead"), 0, "{stats:?}");
    assert_eq!(job.llen(&job.keys("w1").processing).await, 0);
    assert_eq!(job.llen(&job.queue).await, 0);
    assert!(
        job.hash(&job.keys("w1").attempts).await.is_empty(),
        "acknowledged tasks forget their attempts"
    );
    job.cleanup().await;
}

/// A worker killed with SIGKILL in the middle of the run and started again under the same id
/// puts its previous life's ids back and finishes: nothing lost, nothing counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_loses_and_duplicates_nothing() {
    let (job, expected) = Job::on_shared("kill", 10_000).await;
    job.enqueue_all().await;

    let started = Instant::now();
    let mut first = job.spawn("w1");
    let at_kill = wait_for("3,000 tasks finished", Duration::from_secs(120), || async {
        let done = job.stats().await.finished();
        (done >= 3_000).then_some(done)
    })
    .await;
    first.kill9().await;
    let held = job.llen(&job.keys("w1").processing).await;
    eprintln!("killed with {at_kill} tasks finished and {held} ids held");
    assert!(held > 0, "a busy worker holds ids when it is killed");

    let mut second = job.spawn("w1");
    let code = second.exit_code(Duration::from_secs(150)).await;
    assert_eq!(code, 0, "log:\n{}", second.log_tail(30));
    report(
        "10,000 tasks across a SIGKILL",
        job.generated.ids.len(),
        started.elapsed(),
    );
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
