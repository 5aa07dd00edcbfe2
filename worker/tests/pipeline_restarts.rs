//! Service restarts under a running worker, against the real testbed. These tests stop and
//! start shared testbed components, so they run one at a time (and in a test binary of their
//! own: cargo runs test binaries one after another).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod pipeline_support;

use std::time::{Duration, Instant};

use migrate_crds::Mode;
use nix::sys::signal::Signal;
use pipeline_support::{ComponentUpOnDrop, Job, report, testbed, wait_for};

/// Serialises the tests of this file: each takes a shared service away.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Redis restarted mid-run. The testbed's Redis keeps nothing across a restart, so the queue,
/// the processing list and the counts are gone: the worker must notice (not ready), reconnect
/// by itself, and process what is enqueued again exactly once; acknowledgements of tasks
/// taken before the restart find nothing to remove and count nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_is_survived_and_counts_stay_exact() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let (mut job, expected) = Job::on_shared("redis", 3_000).await;
    job.spec.mode = Mode::Continuous;
    job.enqueue_all().await;
    let started = Instant::now();
    let mut worker = job.spawn("w1");
    wait_for("1,000 tasks finished", Duration::from_secs(60), || async {
        (job.stats().await.finished() >= 1_000).then_some(())
    })
    .await;

    let _restore = ComponentUpOnDrop("redis");
    testbed("redis", "down").await;
    wait_for(
        "/readyz to fail while Redis is down",
        Duration::from_secs(15),
        || async { (worker.readyz().await == Some(503)).then_some(()) },
    )
    .await;
    testbed("redis", "up").await;
    wait_for(
        "/readyz to pass once Redis is back",
        Duration::from_secs(30),
        || async { (worker.readyz().await == Some(200)).then_some(()) },
    )
    .await;
    assert_eq!(worker.has_exited(), None, "the worker survives the outage");

    // Redis came back empty: enqueue everything again, as producers would.
    job.enqueue_all().await;
    let total = job.generated.ids.len() as u64;
    wait_for(
        "every task finished after the restart",
        Duration::from_secs(90),
        || async {
            (job.stats().await.finished() >= total
                && job.llen(&job.keys("w1").processing).await == 0)
                .then_some(())
        },
    )
    .await;
    worker.signal(Signal::SIGTERM);
    assert_eq!(
        worker.exit_code(Duration::from_secs(30)).await,
        0,
        "log:\n{}",
        worker.log_tail(30)
    );
    report(
        "3,000 tasks + a Redis restart",
        total as usize,
        started.elapsed(),
    );
    job.assert_exact(&expected).await;
    job.cleanup().await;
}

/// MySQL restarted mid-run: tasks wait for it without using up their attempts (nothing is
/// dead-lettered), /readyz says not ready meanwhile, and the drain-mode run completes by itself
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mysql_restart_is_waited_out_without_losing_or_failing_tasks() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let (job, expected) = Job::on_shared("mysql", 3_000).await;
    job.enqueue_all().await;
    let started = Instant::now();
    let mut worker = job.spawn("w1");
    wait_for("1,000 tasks finished", Duration::from_secs(60), || async {
        (job.stats().await.finished() >= 1_000).then_some(())
    })
    .await;

    let _restore = ComponentUpOnDrop("mariadb");
    testbed("mariadb", "down").await;
    wait_for(
        "/readyz to fail while MySQL is down",
        Duration::from_secs(15),
        || async { (worker.readyz().await == Some(503)).then_some(()) },
    )
    .await;
    testbed("mariadb", "up").await;
    let code = worker.exit_code(Duration::from_secs(120)).await;
    assert_eq!(code, 0, "log:\n{}", worker.log_tail(30));
    report(
        "3,000 tasks + a MySQL restart",
        job.generated.ids.len(),
        started.elapsed(),
    );
    let stats = job.stats().await;
    assert_eq!(stats.get("dead"), 0, "an outage kills no task: {stats:?}");
    assert_eq!(
        stats.get("retried"),
        0,
        "an outage uses up no attempt: {stats:?}"
    );
    job.assert_exact(&expected).await;
    job.cleanup().await;
}
