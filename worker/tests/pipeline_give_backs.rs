//! Give-backs against the real testbed: a task that always outlasts the grace period is put
//! back by every worker stopped gracefully while it holds it, and, once it has been given back
//! more than `queue.maxGiveBacks` times, the next take dead-letters it with its reason, instead
//! of it circulating forever; every other task is indexed once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod pipeline_support;

use std::time::{Duration, Instant};

use migrate_crds::Mode;
use migrate_e2e::search;
use mysql_async::prelude::Queryable;
use nix::sys::signal::Signal;
use pipeline_support::{Job, wait_for};

/// Give-backs allowed in this test (the default is 10; 2 keeps the test short).
const MAX_GIVE_BACKS: u32 = 2;

/// One article's title carries `[nlp:slow]`, so the NLP service answers it only after 5 s
/// (`NLP_SLOW_MS`), longer than the workers' 1 s grace period. Each worker is stopped with
/// SIGTERM while it holds that task: it gives it back, with its delivery given back too, and
/// the id goes back to the queue. After `MAX_GIVE_BACKS + 1` give-backs the next worker's take
/// dead-letters it at stage `queue`, naming the count and the setting, and both its counts are
/// deleted. The other articles are indexed, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_outlasts_every_grace_period_is_dead_lettered_after_max_give_backs() {
    let mut job = Job::prepare("giveback", 40).await;
    let before = job.expected().await;
    let slow = *before
        .indexed_ids
        .iter()
        .min()
        .expect("an article that is indexed");
    let mut conn = mysql_async::Conn::new(mysql_async::Opts::from_url(&job.db_url).unwrap())
        .await
        .unwrap();
    conn.exec_drop(
        "UPDATE article SET title = CONCAT('[nlp:slow] ', title) WHERE id = ?",
        (slow,),
    )
    .await
    .unwrap();
    let _ = conn.disconnect().await;
    let expected = job.expected().await;
    assert!(
        expected.indexed_ids.contains(&slow),
        "the slow article is not filtered"
    );
    let mut others = expected.indexed_ids.clone();
    others.remove(&slow);

    job.spec.mode = Mode::Continuous;
    job.spec.queue.max_give_backs = MAX_GIVE_BACKS;
    job.spec.workers.termination_grace_period_seconds = 1;
    for endpoint in &mut job.spec.enrich {
        // Longer than the slow answer: the task is never failed by a timeout, only cut by the
        // grace period.
        endpoint.timeout_ms = 60_000;
    }
    job.enqueue_all().await;
    let total = u64::try_from(job.generated.ids.len()).unwrap();
    let slow_id = slow.to_string();
    let givebacks_key = job.keys("w").givebacks;

    for round in 0..=MAX_GIVE_BACKS {
        let worker_id = format!("w{round}");
        let started = Instant::now();
        let mut worker = job.spawn(&worker_id);
        let processing = job.keys(&worker_id).processing;
        wait_for(
            "the slow task held with every other task finished",
            Duration::from_secs(60),
            || async {
                let held = job.llen(&processing).await > 0;
                (held && job.stats().await.finished() == total - 1).then_some(())
            },
        )
        .await;
        worker.signal(Signal::SIGTERM);
        let code = worker.exit_code(Duration::from_secs(30)).await;
        assert_eq!(code, 0, "log:\n{}", worker.log_tail(30));
        let log = worker.log_text();
        assert!(
            log.contains("Grace period over") && log.contains("Put unfinished ids back"),
            "the grace period cut the slow task: {}",
            worker.log_tail(10)
        );
        let queued: Vec<String> = redis::cmd("LRANGE")
            .arg(&job.queue)
            .arg(0)
            .arg(-1)
            .query_async(&mut job.redis().await)
            .await
            .unwrap();
        assert_eq!(queued, vec![slow_id.clone()], "given back to the queue");
        let given_back = job.hash(&givebacks_key).await;
        assert_eq!(
            given_back.get(&slow_id).copied(),
            Some(u64::from(round) + 1),
            "each graceful stop counts one give-back: {given_back:?}"
        );
        assert!(job.dead().await.is_empty(), "not dead-lettered yet");
        eprintln!("round {round}: given back after {:?}", started.elapsed());
    }

    // One give-back more than allowed: the next take dead-letters it.
    let started = Instant::now();
    let mut worker = job.spawn("w-last");
    let dead = wait_for(
        "the slow task dead-lettered",
        Duration::from_secs(60),
        || async { job.dead().await.into_iter().next() },
    )
    .await;
    eprintln!("dead-lettered {:?} after the last start", started.elapsed());
    worker.signal(Signal::SIGTERM);
    let code = worker.exit_code(Duration::from_secs(30)).await;
    assert_eq!(code, 0, "log:\n{}", worker.log_tail(30));

    assert_eq!(dead.id, slow_id, "the entry keeps the id for replay");
    assert_eq!(dead.stage, "queue");
    assert_eq!(dead.worker, "w-last");
    let count = MAX_GIVE_BACKS + 1;
    assert!(
        dead.reason.contains(&format!(
            "given back {count} times, more than maxGiveBacks {MAX_GIVE_BACKS}"
        )),
        "{}",
        dead.reason
    );
    assert_eq!(dead.attempts, 1, "give-backs used up no delivery attempt");
    assert_eq!(
        job.dead().await.len(),
        1,
        "only the slow task is dead-lettered"
    );
    assert_eq!(job.llen(&job.queue).await, 0, "nothing circulates any more");
    assert!(
        job.hash(&givebacks_key).await.is_empty(),
        "its give-back count is deleted"
    );
    assert!(
        job.hash(&job.keys("w").attempts).await.is_empty(),
        "every delivery count is deleted"
    );

    let stats = job.stats().await;
    assert_eq!(
        stats.get("indexed"),
        others.len() as u64,
        "each indexed once: {stats:?}"
    );
    assert_eq!(stats.get("dead"), 1, "{stats:?}");
    assert_eq!(stats.finished(), total, "{stats:?}");
    assert_eq!(search::ids(&job.env.es_url, &job.index).await, others);
    job.cleanup().await;
}
