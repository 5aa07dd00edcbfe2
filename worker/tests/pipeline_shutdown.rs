//! SIGTERM against the real testbed: the worker stops taking, finishes and acknowledges what
//! it holds, puts nothing in doubt, and exits 0; a second worker then finishes the queue.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod pipeline_support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use migrate_crds::Mode;
use migrate_e2e::search;
use nix::sys::signal::Signal;
use pipeline_support::{Job, report, wait_for};

/// A busy worker told to stop drains: exit code 0 well within the grace period, its processing
/// list empty, every acknowledged document in the index and every other id back in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_tasks_and_exits_zero() {
    let (mut job, expected) = Job::on_shared("term", 10_000).await;
    let ids: Vec<u64> = job.generated.ids[..4_000].to_vec();
    job.spec.mode = Mode::Continuous;
    migrate_e2e::datagen::enqueue(&job.env.redis_url, &job.queue, &ids).await;

    let mut worker = job.spawn("w1");
    let processing = job.keys("w1").processing;
    wait_for(
        "800 tasks finished with more in flight",
        Duration::from_secs(90),
        || async {
            (job.stats().await.finished() >= 800 && job.llen(&processing).await > 0).then_some(())
        },
    )
    .await;
    let stopping = Instant::now();
    worker.signal(Signal::SIGTERM);
    let code = worker.exit_code(Duration::from_secs(30)).await;
    let took = stopping.elapsed();
    eprintln!("stopped {took:?} after SIGTERM");
    assert_eq!(code, 0, "log:\n{}", worker.log_tail(30));
    assert!(
        took < Duration::from_secs(18),
        "drained within the grace period, not cut by it: {took:?}"
    );
    let log = worker.log_text();
    assert!(log.contains("Stop requested"), "the signal was seen");
    assert!(
        !log.contains("Grace period over"),
        "nothing was cut off:\n{}",
        worker.log_tail(30)
    );
    assert!(
        !log.contains("Put unfinished ids back"),
        "in-flight tasks were finished, not handed back"
    );

    assert_eq!(job.llen(&processing).await, 0, "nothing left held");
    let stats = job.stats().await;
    let queued = job.llen(&job.queue).await;
    assert_eq!(
        stats.finished() + queued,
        ids.len() as u64,
        "every id finished or queued: {stats:?}, {queued} queued"
    );
    let indexed = search::ids(&job.env.es_url, &job.index).await;
    assert_eq!(
        indexed.len() as u64,
        stats.get("indexed"),
        "every indexed document was acknowledged and vice versa"
    );
    assert!(indexed.is_subset(&expected.indexed_ids));
    let mut conn = job.redis().await;
    let beat: Option<String> = redis::cmd("GET")
        .arg(&job.keys("w1").heartbeat)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        beat, None,
        "a worker that exits cleanly removes its heartbeat"
    );

    // A second worker finishes the queue: nothing was lost by the stop.
    job.spec.mode = Mode::Drain;
    let started = Instant::now();
    let mut second = job.spawn("w2");
    assert_eq!(
        second.exit_code(Duration::from_secs(90)).await,
        0,
        "log:\n{}",
        second.log_tail(30)
    );
    report(
        "remaining tasks after SIGTERM",
        queued as usize,
        started.elapsed(),
    );
    let subset: HashSet<u64> = ids.iter().copied().collect();
    let want: HashSet<u64> = expected
        .indexed_ids
        .intersection(&subset)
        .copied()
        .collect();
    let blacklisted = expected.blacklisted_ids.intersection(&subset).count() as u64;
    job.assert_index_holds(&want).await;
    let stats = job.stats().await;
    assert_eq!(stats.get("indexed"), want.len() as u64, "{stats:?}");
    assert_eq!(stats.get("filtered"), blacklisted, "{stats:?}");
    assert_eq!(stats.finished(), ids.len() as u64, "{stats:?}");
    job.cleanup().await;
}
