//! Service restarts and outages under a running worker, against the real testbed. These tests
//! stop and start shared testbed components, so they run one at a time (and in a test binary
//! of their own: cargo runs test binaries one after another). The search server's outage is
//! made with a [`Gate`] in front of the real server, which the other tests go on using.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod pipeline_support;

use std::time::{Duration, Instant};

use migrate_crds::Mode;
use nix::sys::signal::Signal;
use pipeline_support::{ComponentUpOnDrop, Gate, Job, report, testbed, wait_for};

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
    let worker = job.spawn("w1");
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
    completes_as_if_nothing_happened(job, worker, &expected, "a MySQL restart", started).await;
}

/// After an outage: the worker ends by itself (drain mode) with exit 0, no task was
/// dead-lettered or used up an attempt, and every document is indexed exactly once.
async fn completes_as_if_nothing_happened(
    job: Job,
    mut worker: pipeline_support::WorkerProcess,
    expected: &migrate_e2e::datagen::Expected,
    outage: &str,
    started: Instant,
) {
    let code = worker.exit_code(Duration::from_secs(120)).await;
    assert_eq!(code, 0, "log:\n{}", worker.log_tail(30));
    report(
        &format!("3,000 tasks + {outage}"),
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
    job.assert_exact(expected).await;
    job.cleanup().await;
}

/// The search server unreachable from the start and for a while (connections refused, then
/// cut mid-run): the batches wait for it without using up attempts (`maxAttempts: 1`, so one
/// attempt used would dead-letter the task), /readyz says not ready meanwhile, and once the
/// server is back the drain-mode run completes exactly once by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_outage_is_waited_out_without_using_attempts() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let (mut job, expected) = Job::on_shared("search", 3_000).await;
    job.spec.queue.max_attempts = 1;
    let mut gate = Gate::shut(&job.env.es_url);
    job.enqueue_all().await;
    let started = Instant::now();
    let worker = job.spawn_with_search("w1", &gate.url());
    let processing = job.keys("w1").processing;
    wait_for(
        "tasks held while the search server refuses connections",
        Duration::from_secs(30),
        || async { (job.llen(&processing).await > 0).then_some(()) },
    )
    .await;
    wait_for(
        "/readyz to fail while the search server is unreachable",
        Duration::from_secs(30),
        || async { (worker.readyz().await == Some(503)).then_some(()) },
    )
    .await;
    let stats = job.stats().await;
    assert_eq!(
        stats.get("indexed"),
        0,
        "nothing can be indexed yet: {stats:?}"
    );
    assert_eq!(stats.get("retried") + stats.get("dead"), 0, "{stats:?}");

    gate.open().await;
    wait_for("1,000 tasks finished", Duration::from_secs(60), || async {
        (job.stats().await.finished() >= 1_000).then_some(())
    })
    .await;
    // A second outage mid-run, with connections cut while bulk requests are in flight.
    gate.shut_now().await;
    wait_for("/readyz to fail again", Duration::from_secs(30), || async {
        (worker.readyz().await == Some(503)).then_some(())
    })
    .await;
    gate.open().await;
    completes_as_if_nothing_happened(job, worker, &expected, "two search outages", started).await;
}

/// SIGTERM while the search server is down: the worker waits for it only until its grace
/// period ends, then exits 0 with every task it held back in the queue, none dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_during_a_search_outage_gives_its_tasks_back() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let (mut job, _) = Job::on_shared("search_stop", 3_000).await;
    job.spec.queue.max_attempts = 1;
    job.spec.workers.termination_grace_period_seconds = 4;
    let gate = Gate::shut(&job.env.es_url);
    job.enqueue_all().await;
    let mut worker = job.spawn_with_search("w1", &gate.url());
    let processing = job.keys("w1").processing;
    let held = wait_for(
        "tasks held while the search server refuses connections",
        Duration::from_secs(30),
        || async {
            let held = job.llen(&processing).await;
            (held > 0).then_some(held)
        },
    )
    .await;
    worker.signal(Signal::SIGTERM);
    let code = worker.exit_code(Duration::from_secs(30)).await;
    assert_eq!(code, 0, "log:\n{}", worker.log_tail(30));
    assert_eq!(
        job.llen(&processing).await,
        0,
        "the processing list is given back"
    );
    let stats = job.stats().await;
    assert_eq!(stats.get("indexed"), 0, "nothing indexed: {stats:?}");
    assert_eq!(stats.get("retried"), 0, "no attempt used: {stats:?}");
    assert!(job.dead().await.is_empty(), "nothing dead-lettered");
    // Blacklisted articles end without the search server; every other id is back.
    assert_eq!(
        job.llen(&job.queue).await,
        u64::try_from(job.generated.ids.len()).unwrap() - stats.finished(),
        "every unfinished id is back in the queue ({held} were held at the signal)"
    );
    let deliveries = job.hash(&job.keys("w1").attempts).await;
    assert!(
        deliveries.is_empty(),
        "their deliveries were given back: {deliveries:?}"
    );
    job.cleanup().await;
}
