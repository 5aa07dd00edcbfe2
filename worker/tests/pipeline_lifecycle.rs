//! How a worker ends its own life, against the real testbed: recycled after its task count
//! (exit 12), drained at the soft memory level (exit 10), stopped at once at the hard level
//! (exit 11) — each without losing an id; and how a supervised worker, at the soft level, asks
//! for its restart and works on until it is granted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod pipeline_support;

use std::time::Duration;

use migrate_crds::TestOnlySpec;
use migrate_worker::exit::ExitReason;
use pipeline_support::{Job, wait_for};

/// Takes 2,000 ids of the shared data set.
async fn job(prefix: &str) -> (Job, Vec<u64>) {
    let (job, _) = Job::on_shared(prefix, 3_000).await;
    let ids = job.generated.ids[..2_000].to_vec();
    migrate_e2e::datagen::enqueue(&job.env.redis_url, &job.queue, &ids).await;
    (job, ids)
}

/// Every id is finished, waiting in the queue, or (after a hard stop) still held.
async fn assert_nothing_lost(job: &Job, ids: &[u64], worker: &str) -> (u64, u64) {
    let finished = job.stats().await.finished();
    let queued = job.llen(&job.queue).await;
    let held = job.llen(&job.keys(worker).processing).await;
    assert_eq!(
        finished + queued + held,
        ids.len() as u64,
        "{finished} finished, {queued} queued, {held} held"
    );
    (finished, held)
}

/// With `recycleAfterTasks` and no jitter, the worker finishes that many tasks (plus what was
/// in flight), hands nothing back half-done, and exits 12.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_recycles_itself_after_its_task_count() {
    let (mut job, ids) = job("recycle").await;
    job.spec.workers.recycle_after_tasks = Some(300);
    job.spec.workers.recycle_jitter_percent = 0;
    let mut worker = job.spawn("w1");
    let code = worker.exit_code(Duration::from_secs(60)).await;
    assert_eq!(
        code,
        ExitReason::Recycled.code(),
        "log:\n{}",
        worker.log_tail(30)
    );
    let (_, held) = assert_nothing_lost(&job, &ids, "w1").await;
    assert_eq!(held, 0, "a recycled worker leaves nothing held");
    // Tasks ended by this process: finished for good, or put back for a retry.
    let stats = job.stats().await;
    let ended = stats.finished() + stats.get("retried");
    let concurrency = u64::from(job.spec.workers.concurrency);
    assert!(
        (300..300 + concurrency).contains(&ended),
        "{ended} tasks ended: {stats:?}"
    );
    job.cleanup().await;
}

/// The test-only leak grows RSS past the soft threshold: the worker stops taking, finishes
/// what it holds and exits 10.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaking_worker_drains_itself_at_the_soft_memory_level() {
    let (mut job, ids) = job("soft").await;
    job.spec.workers.concurrency = 16;
    // The leak is charged as tasks end, that is when their bulk answer comes; a soft drain
    // still finishes every task the worker holds (at most concurrency + 3 x batchDocs ids),
    // and each leaks. Small batches keep that below the hard line: 64 x 4 MiB past 200 MiB.
    job.spec.sink.batch_docs = 16;
    job.spec.memory.soft = "200Mi".to_owned();
    job.spec.memory.hard = "900Mi".to_owned();
    job.spec.memory.check_interval_ms = 100;
    job.spec.test_only = Some(TestOnlySpec {
        leak_bytes_per_task: 4 << 20,
        leak_stage: "keywords".to_owned(),
        no_memory_restarts: false,
    });
    let mut worker = job.spawn("w1");
    let code = worker.exit_code(Duration::from_secs(60)).await;
    let log = worker.log_text();
    assert_eq!(
        code,
        ExitReason::MemorySoft.code(),
        "log:\n{}",
        worker.log_tail(30)
    );
    assert!(log.contains("TEST ONLY"), "the leak is announced loudly");
    let (finished, held) = assert_nothing_lost(&job, &ids, "w1").await;
    assert_eq!(held, 0, "a soft stop finishes what it holds");
    assert!(
        (10..2_000).contains(&finished),
        "{finished} tasks finished before the soft level"
    );
    job.cleanup().await;
}

/// Under a supervisor (`MIGRATE_SUPERVISED=1`) the soft level is a request, not a stop: the
/// worker says so on `/metrics`, stays ready and keeps finishing tasks; the supervisor's
/// SIGTERM (the grant) then drains it without losing an id. Without this, every leaking worker
/// would stop at once, whatever the supervisor's restart budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervised_worker_asks_at_the_soft_level_and_works_on_until_granted() {
    let (mut job, ids) = job("ask").await;
    job.spec.workers.concurrency = 4;
    job.spec.memory.soft = "200Mi".to_owned();
    job.spec.memory.hard = "900Mi".to_owned();
    job.spec.memory.check_interval_ms = 100;
    job.spec.test_only = Some(TestOnlySpec {
        leak_bytes_per_task: 1 << 20,
        leak_stage: "keywords".to_owned(),
        no_memory_restarts: false,
    });
    let mut worker = job.spawn_supervised("w1");
    let asked = wait_for("the restart request", Duration::from_secs(60), || async {
        let m = worker.metrics().await?;
        let since = m
            .get("migrate_restart_requested_timestamp_seconds")
            .copied()?;
        let done = m.get("migrate_tasks_done").copied()?;
        (since > 0.0).then_some(done)
    })
    .await;
    // Past the ask: more tasks finish, /readyz stays 200, the process stays up.
    wait_for(
        "tasks finished after the ask",
        Duration::from_secs(60),
        || async {
            let m = worker.metrics().await?;
            (m.get("migrate_tasks_done").copied()? >= asked + 30.0).then_some(())
        },
    )
    .await;
    assert_eq!(
        worker.readyz().await,
        Some(200),
        "an asking worker stays ready"
    );
    assert_eq!(worker.has_exited(), None, "log:\n{}", worker.log_tail(30));
    assert!(
        worker
            .log_text()
            .contains("asking the supervisor for a restart")
    );
    // The grant: a graceful stop, which finishes what it holds.
    worker.signal(nix::sys::signal::Signal::SIGTERM);
    let code = worker.exit_code(Duration::from_secs(60)).await;
    assert_eq!(
        code,
        ExitReason::Drained.code(),
        "log:\n{}",
        worker.log_tail(30)
    );
    let (finished, held) = assert_nothing_lost(&job, &ids, "w1").await;
    assert_eq!(held, 0, "a granted stop finishes what it holds");
    assert!(
        finished as f64 >= asked + 30.0,
        "{finished} finished, asked at {asked}"
    );
    job.cleanup().await;
}

/// A leak that jumps past the hard threshold stops the worker at once with exit 11; what it
/// held stays in its processing list for a supervisor to requeue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_above_the_hard_memory_level_stops_at_once() {
    let (mut job, ids) = job("hard").await;
    job.spec.workers.concurrency = 1;
    job.spec.memory.soft = "200Mi".to_owned();
    job.spec.memory.hard = "201Mi".to_owned();
    job.spec.memory.check_interval_ms = 100;
    // One task takes RSS from ~50 MiB past both thresholds; the leak's pages are touched one
    // by one, so a reading could land between them, hence a window of 1 MiB (~0.3 ms of
    // page faults against readings 100 ms apart).
    job.spec.test_only = Some(TestOnlySpec {
        leak_bytes_per_task: 256 << 20,
        leak_stage: "sink".to_owned(),
        no_memory_restarts: false,
    });
    let mut worker = job.spawn("w1");
    let code = worker.exit_code(Duration::from_secs(60)).await;
    assert_eq!(
        code,
        ExitReason::MemoryHard.code(),
        "log:\n{}",
        worker.log_tail(30)
    );
    let (finished, held) = assert_nothing_lost(&job, &ids, "w1").await;
    assert!(finished < 100, "{finished} tasks finished");
    let mut conn = job.redis().await;
    let requeued = migrate_worker::queue::requeue_worker(&mut conn, &job.queue, "w1")
        .await
        .unwrap();
    assert_eq!(requeued, held, "a supervisor puts the held ids back");
    assert_nothing_lost(&job, &ids, "w1").await;
    job.cleanup().await;
}
