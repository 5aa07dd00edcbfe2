//! Stage A against a real Redis (the testbed's, `REDIS_URL`, default `redis://127.0.0.1:6390`):
//! taking, acknowledging, retrying, dead-lettering and requeueing, exactly once under replay.
//! Each test uses a fresh queue key, so they run in parallel.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use migrate_crds::{QueueSpec, SecretKeyRef};
use migrate_worker::queue::{
    Backlog, Keys, Queue, Settled, Taken, backlog, dead_letters, live_workers, requeue_worker,
    worker_beats,
};
use migrate_worker::stage::Stage;
use migrate_worker::task::{DeadLetter, Outcome};
use tokio_util::sync::CancellationToken;

use migrate_e2e::redis::{drop_keys, redis_url};

fn fresh_key(name: &str) -> String {
    migrate_e2e::redis::fresh_key("queue", name)
}

fn spec(key: &str, max_attempts: u32) -> QueueSpec {
    QueueSpec {
        url_secret_ref: SecretKeyRef {
            name: "r".into(),
            key: "url".into(),
        },
        key: key.to_owned(),
        max_attempts,
        max_give_backs: 2,
        heartbeat_ttl_seconds: 15,
    }
}

async fn queue(key: &str, worker: &str, max_attempts: u32) -> Queue {
    Queue::connect(&redis_url(), &spec(key, max_attempts), worker)
        .await
        .unwrap()
}

async fn push(q: &Queue, ids: &[&str]) {
    let mut conn = q.connection();
    for id in ids {
        redis::cmd("LPUSH")
            .arg(&q.keys().queue)
            .arg(*id)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
}

async fn hash(q: &Queue, key: &str) -> BTreeMap<String, u64> {
    let mut conn = q.connection();
    redis::cmd("HGETALL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

async fn list(q: &Queue, key: &str) -> Vec<String> {
    let mut conn = q.connection();
    redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap()
}

async fn take_one(q: &Queue) -> Taken {
    q.take(&CancellationToken::new()).await.unwrap().unwrap()
}

fn indexed(pairs: &[(&str, u64)]) -> Outcome {
    Outcome::Indexed {
        counts: pairs.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect(),
    }
}

fn failure(stage: Stage, reason: &str) -> DeadLetter {
    DeadLetter {
        stage,
        reason: reason.to_owned(),
    }
}

#[test]
fn keys_follow_the_documented_layout() {
    let k = Keys::new("jobs", "w-1");
    assert_eq!(k.processing, "jobs:processing:w-1");
    assert_eq!(k.heartbeat, "jobs:heartbeat:w-1");
    assert_eq!(k.workers, "jobs:workers");
    assert_eq!(k.givebacks, "jobs:givebacks");
    assert_eq!(k.attempts, "jobs:attempts");
    assert_eq!(k.dead, "jobs:dead");
    assert_eq!(k.counts, "jobs:counts");
    assert_eq!(k.stats, "jobs:stats");
}

/// Acknowledging twice, or acknowledging a task that a supervisor already requeued and
/// another worker finished, applies the counts exactly once.
#[tokio::test]
async fn ack_is_idempotent_and_counts_once_under_replay() {
    let key = fresh_key("ack");
    let a = queue(&key, "a", 3).await;
    let b = queue(&key, "b", 3).await;
    push(&a, &["1", "2"]).await;

    let t1 = take_one(&a).await;
    assert_eq!(
        t1,
        Taken {
            raw: "1".into(),
            attempts: 1,
            given_back: 0
        }
    );
    let outcome = indexed(&[("topics:rust", 2), ("topics:redis", 1)]);
    assert!(a.finish(&t1.raw, &outcome).await.unwrap());
    assert!(
        !a.finish(&t1.raw, &outcome).await.unwrap(),
        "second ack must change nothing"
    );

    // Worker a takes 2 and "dies"; a supervisor requeues it; b takes and acks it; then a
    // comes back and acks late.
    let t2 = take_one(&a).await;
    let mut conn = a.connection();
    assert_eq!(requeue_worker(&mut conn, &key, "a").await.unwrap(), 1);
    let replay = take_one(&b).await;
    assert_eq!(
        replay,
        Taken {
            raw: "2".into(),
            attempts: 2,
            given_back: 0
        }
    );
    assert_eq!(
        b.settle(&replay.raw, &outcome).await.unwrap(),
        Settled::Acked
    );
    assert_eq!(a.settle(&t2.raw, &outcome).await.unwrap(), Settled::NotHeld);

    let counts = hash(&a, &a.keys().counts).await;
    assert_eq!(counts.get("topics:rust"), Some(&4));
    assert_eq!(counts.get("topics:redis"), Some(&2));
    let stats = hash(&a, &a.keys().stats).await;
    assert_eq!(stats.get("indexed"), Some(&2));
    assert!(
        hash(&a, &a.keys().attempts).await.is_empty(),
        "acks forget the attempts"
    );
    assert!(list(&a, &a.keys().processing).await.is_empty());
    assert!(list(&b, &b.keys().processing).await.is_empty());
    drop_keys(&key).await;
}

/// Many tasks taken in one round trip are moved and counted like single takes, never more
/// than asked, and the rest stays queued in order.
#[tokio::test]
async fn take_up_to_moves_at_most_n_ids_oldest_first() {
    let key = fresh_key("take-many");
    let q = queue(&key, "w", 3).await;
    push(&q, &["1", "2", "3", "4", "5"]).await;
    let cancel = CancellationToken::new();
    let taken = q.take_up_to(3, &cancel).await.unwrap();
    let ids: Vec<_> = taken.iter().map(|t| (t.raw.as_str(), t.attempts)).collect();
    assert_eq!(ids, vec![("1", 1), ("2", 1), ("3", 1)]);
    assert_eq!(q.held().await.unwrap(), 3);
    assert_eq!(list(&q, &key).await, vec!["5", "4"]);
    let rest = q.take_up_to(10, &cancel).await.unwrap();
    assert_eq!(rest.len(), 2);
    let mut conn = q.connection();
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(&q.keys().workers)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(members, vec!["w".to_owned()]);
    assert!(
        q.take_up_to(10, &cancel).await.unwrap().is_empty(),
        "an empty queue gives nothing after the block timeout"
    );
    drop_keys(&key).await;
}

/// Acknowledging many tasks in one script counts each once, in order, and a replay of the
/// same batch changes nothing; dead letters in the batch go to the dead list.
#[tokio::test]
async fn settle_many_counts_each_task_once() {
    let key = fresh_key("settle-many");
    let q = queue(&key, "w", 3).await;
    push(&q, &["1", "2", "3", "4"]).await;
    let taken = q.take_up_to(4, &CancellationToken::new()).await.unwrap();
    assert_eq!(taken.len(), 4);
    let a = indexed(&[("topics:a", 2), ("topics:b", 1)]);
    let b = indexed(&[("topics:a", 5), ("topics:zero", 0)]);
    let filtered = Outcome::Filtered {
        set: "blocked".into(),
    };
    let dead = Outcome::Dead(failure(Stage::Sink, "mapper_parsing_exception"));
    let batch = [("1", &a), ("2", &dead), ("3", &b), ("4", &filtered)];
    let first = q.settle_many(&batch).await.unwrap();
    assert_eq!(
        first,
        vec![
            Settled::Acked,
            Settled::DeadLettered,
            Settled::Acked,
            Settled::Acked
        ]
    );
    assert_eq!(
        q.settle_many(&batch).await.unwrap(),
        vec![Settled::NotHeld; 4]
    );
    let counts = hash(&q, &q.keys().counts).await;
    assert_eq!(
        counts,
        BTreeMap::from([("topics:a".into(), 7), ("topics:b".into(), 1)])
    );
    let stats = hash(&q, &q.keys().stats).await;
    assert_eq!(
        stats,
        BTreeMap::from([
            ("indexed".into(), 2),
            ("filtered".into(), 1),
            ("dead".into(), 1)
        ])
    );
    assert_eq!(q.held().await.unwrap(), 0);
    drop_keys(&key).await;
}

/// Filtered and skipped tasks are acknowledged under their own stats field.
#[tokio::test]
async fn filtered_and_skipped_are_acknowledged_without_counts() {
    let key = fresh_key("filtered");
    let q = queue(&key, "w", 3).await;
    push(&q, &["1", "2"]).await;
    let t = take_one(&q).await;
    assert!(
        q.finish(
            &t.raw,
            &Outcome::Filtered {
                set: "blocked".into()
            }
        )
        .await
        .unwrap()
    );
    let t = take_one(&q).await;
    assert!(q.finish(&t.raw, &Outcome::Skipped).await.unwrap());
    let stats = hash(&q, &q.keys().stats).await;
    assert_eq!(
        stats,
        BTreeMap::from([("filtered".into(), 1), ("skipped".into(), 1)])
    );
    assert!(hash(&q, &q.keys().counts).await.is_empty());
    drop_keys(&key).await;
}

/// A task that keeps failing is retried until its attempts are used up, then dead-lettered
/// with the last reason.
#[tokio::test]
async fn retry_moves_to_dead_after_max_attempts() {
    let key = fresh_key("retry");
    let q = queue(&key, "w", 2).await;
    push(&q, &["7", "8"]).await;

    let first = take_one(&q).await;
    assert_eq!(first.raw, "7");
    let outcome = Outcome::Retry(failure(Stage::Enrich, "nlp answered 503"));
    assert_eq!(
        q.settle(&first.raw, &outcome).await.unwrap(),
        Settled::Retried
    );
    let second = take_one(&q).await;
    assert_eq!(
        second,
        Taken {
            raw: "7".into(),
            attempts: 2,
            given_back: 0
        },
        "a retried id is taken next"
    );
    let last = Outcome::Retry(failure(Stage::Source, "query timed out"));
    assert_eq!(
        q.settle(&second.raw, &last).await.unwrap(),
        Settled::DeadLettered
    );

    let mut conn = q.connection();
    let dead = dead_letters(&mut conn, &key, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, "7");
    assert_eq!(dead[0].stage, "source");
    assert_eq!(dead[0].reason, "query timed out");
    assert_eq!(dead[0].attempts, 2);
    assert_eq!(dead[0].worker, "w");
    assert!(!dead[0].at.is_empty());
    let stats = hash(&q, &q.keys().stats).await;
    assert_eq!(
        stats,
        BTreeMap::from([("dead".into(), 1), ("retried".into(), 1)])
    );
    assert_eq!(list(&q, &key).await, vec!["8".to_owned()]);
    assert!(hash(&q, &q.keys().attempts).await.is_empty());
    drop_keys(&key).await;
}

/// A dead outcome goes to the dead-letter list at once, newest first.
#[tokio::test]
async fn dead_outcomes_are_listed_newest_first() {
    let key = fresh_key("dead");
    let q = queue(&key, "w", 3).await;
    push(&q, &["x1", "5"]).await;
    let t = take_one(&q).await;
    let bad = Outcome::Dead(failure(
        Stage::Queue,
        "task id \"x1\" is not a decimal unsigned integer",
    ));
    assert!(q.finish(&t.raw, &bad).await.unwrap());
    assert!(!q.finish(&t.raw, &bad).await.unwrap());
    let t = take_one(&q).await;
    assert!(
        q.finish(
            &t.raw,
            &Outcome::Dead(failure(Stage::Sink, "mapper_parsing_exception"))
        )
        .await
        .unwrap()
    );
    let mut conn = q.connection();
    let dead = dead_letters(&mut conn, &key, 10).await.unwrap();
    let ids: Vec<_> = dead
        .iter()
        .map(|d| (d.id.as_str(), d.stage.as_str()))
        .collect();
    assert_eq!(ids, vec![("5", "sink"), ("x1", "queue")]);
    assert_eq!(dead_letters(&mut conn, &key, 1).await.unwrap().len(), 1);
    drop_keys(&key).await;
}

/// Requeueing a worker's processing list puts the ids back to be taken first, oldest
/// first; doing it again changes nothing.
#[tokio::test]
async fn requeue_twice_is_harmless() {
    let key = fresh_key("requeue");
    let q = queue(&key, "w", 3).await;
    push(&q, &["1", "2", "3", "4"]).await;
    for _ in 0..3 {
        take_one(&q).await;
    }
    let mut conn = q.connection();
    assert_eq!(
        backlog(&mut conn, &key).await.unwrap(),
        Backlog {
            queued: 1,
            in_flight: 3
        }
    );
    assert_eq!(requeue_worker(&mut conn, &key, "w").await.unwrap(), 3);
    assert_eq!(requeue_worker(&mut conn, &key, "w").await.unwrap(), 0);
    assert_eq!(list(&q, &key).await, vec!["4", "3", "2", "1"]);
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(&q.keys().workers)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(members.is_empty());
    assert_eq!(
        backlog(&mut conn, &key).await.unwrap(),
        Backlog {
            queued: 4,
            in_flight: 0
        }
    );
    assert_eq!(
        take_one(&q).await.raw,
        "1",
        "the oldest requeued id is taken first"
    );
    drop_keys(&key).await;
}

/// A worker restarting under the same id gets its previous life's ids back in the queue.
#[tokio::test]
async fn recover_own_returns_leftovers_and_registers_again() {
    let key = fresh_key("recover");
    let q = queue(&key, "w", 3).await;
    push(&q, &["1", "2"]).await;
    take_one(&q).await;
    let again = queue(&key, "w", 3).await;
    assert_eq!(again.recover_own().await.unwrap(), 1);
    assert_eq!(again.held().await.unwrap(), 0);
    let mut conn = again.connection();
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(&again.keys().workers)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(members, vec!["w".to_owned()]);
    assert_eq!(
        again.backlog().await.unwrap(),
        Backlog {
            queued: 2,
            in_flight: 0
        }
    );
    drop_keys(&key).await;
}

/// Two workers taking at the same time never receive the same id, and together take all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_takes_by_two_workers_never_share_an_id() {
    let key = fresh_key("concurrent");
    let a = std::sync::Arc::new(queue(&key, "a", 3).await);
    let b = std::sync::Arc::new(queue(&key, "b", 3).await);
    let ids: Vec<String> = (0..300).map(|i| i.to_string()).collect();
    let mut conn = a.connection();
    redis::cmd("LPUSH")
        .arg(&key)
        .arg(&ids)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();

    // One worker takes one id at a time (BLMOVE), the other up to 7 (the script).
    let drain = |q: std::sync::Arc<Queue>, at_once: usize| {
        tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let taken = q
                    .take_up_to(at_once, &CancellationToken::new())
                    .await
                    .unwrap();
                if taken.is_empty() {
                    return got;
                }
                got.extend(taken.into_iter().map(|t| t.raw));
            }
        })
    };
    let (ga, gb) = tokio::join!(drain(a.clone(), 1), drain(b.clone(), 7));
    let (ga, gb) = (ga.unwrap(), gb.unwrap());
    let sa: HashSet<_> = ga.iter().cloned().collect();
    let sb: HashSet<_> = gb.iter().cloned().collect();
    assert_eq!(sa.len(), ga.len(), "a took an id twice");
    assert_eq!(sb.len(), gb.len(), "b took an id twice");
    assert!(sa.is_disjoint(&sb), "an id was taken by both workers");
    assert_eq!(sa.len() + sb.len(), ids.len());
    assert_eq!(a.held().await.unwrap() + b.held().await.unwrap(), 300);
    drop_keys(&key).await;
}

/// Shutdown interrupts a blocking pop at once, and an id pushed afterwards is not moved
/// into the stopped worker's processing list.
#[tokio::test]
async fn shutdown_wins_over_a_blocking_pop() {
    let key = fresh_key("cancel");
    let worker = format!("w-{}", key.rsplit(':').next().unwrap_or_default());
    let q = std::sync::Arc::new(queue(&key, &worker, 3).await);
    let cancel = CancellationToken::new();
    let waiting = {
        let (q, cancel) = (q.clone(), cancel.clone());
        tokio::spawn(async move {
            // Keep popping like the taker loop does until cancelled.
            loop {
                match q.take(&cancel).await.unwrap() {
                    None if cancel.is_cancelled() => return None,
                    None => {}
                    some => return some,
                }
            }
        })
    };
    // Wait until the pop is blocked on the server.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut conn = q.connection();
    loop {
        let blocked: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut conn)
            .await
            .unwrap();
        if blocked
            .lines()
            .any(|l| l.contains(&format!("name=migrate-take:{worker} ")) && l.contains("flags=b "))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the pop never blocked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    cancel.cancel();
    assert_eq!(waiting.await.unwrap(), None);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "cancel took {:?}",
        started.elapsed()
    );
    push(&q, &["9"]).await;
    assert_eq!(q.held().await.unwrap(), 0);
    assert_eq!(list(&q, &key).await, vec!["9".to_owned()]);
    drop_keys(&key).await;
}

/// A graceful release gives back the deliveries of the ids it returns; a supervisor's
/// requeue of a dead worker keeps them counted.
#[tokio::test]
async fn a_release_gives_back_deliveries_and_a_requeue_keeps_them() {
    let key = fresh_key("release");
    let q = queue(&key, "w", 3).await;
    push(&q, &["1", "2"]).await;
    let first = take_one(&q).await;
    let second = take_one(&q).await;
    assert_eq!((first.attempts, second.attempts), (1, 1));
    assert_eq!(q.release_own().await.unwrap(), 2);
    let again = take_one(&q).await;
    assert_eq!(again.raw, first.raw, "the oldest id is taken first again");
    assert_eq!(again.attempts, 1, "the released delivery was given back");
    let mut conn = q.connection();
    assert_eq!(requeue_worker(&mut conn, &key, "w").await.unwrap(), 1);
    let third = take_one(&q).await;
    assert_eq!(third.raw, first.raw);
    assert_eq!(third.attempts, 2, "a requeue keeps the delivery counted");
    drop_keys(&key).await;
}

/// Each graceful release counts a give-back of the ids it returns (the delivery itself is
/// given back), and the id still goes back to the queue each time; the take after more than
/// `queue.maxGiveBacks` (2 here) give-backs finds the id used up, with a reason naming the count
/// and the setting, and dead-lettering it keeps the id for replay and deletes its counts.
#[tokio::test]
async fn an_id_given_back_more_than_max_give_backs_is_dead_lettered_with_its_count() {
    let key = fresh_key("giveback-dead");
    let q = queue(&key, "w", 3).await;
    assert_eq!(q.max_give_backs(), 2);
    push(&q, &["5"]).await;
    for given_back in 0..=2 {
        let taken = take_one(&q).await;
        assert_eq!(
            taken,
            Taken {
                raw: "5".into(),
                attempts: 1,
                given_back
            }
        );
        assert!(
            q.used_up(&taken).is_none(),
            "{given_back} give-backs are allowed"
        );
        assert_eq!(q.release_own().await.unwrap(), 1);
        assert_eq!(list(&q, &key).await, vec!["5"], "given back to the queue");
    }
    assert_eq!(
        hash(&q, &q.keys().givebacks).await,
        BTreeMap::from([("5".into(), 3)])
    );

    let taken = take_one(&q).await;
    assert_eq!((taken.attempts, taken.given_back), (1, 3));
    let dead = q
        .used_up(&taken)
        .expect("a fourth delivery after three give-backs is refused");
    assert_eq!(dead.stage, Stage::Queue);
    assert!(
        dead.reason.contains("given back 3 times") && dead.reason.contains("maxGiveBacks 2"),
        "{}",
        dead.reason
    );
    assert_eq!(
        q.settle(&taken.raw, &Outcome::Dead(dead.clone()))
            .await
            .unwrap(),
        Settled::DeadLettered
    );
    let mut conn = q.connection();
    let entries = dead_letters(&mut conn, &key, 10).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        (
            entries[0].id.as_str(),
            entries[0].stage.as_str(),
            entries[0].reason.as_str()
        ),
        ("5", "queue", dead.reason.as_str())
    );
    assert!(list(&q, &key).await.is_empty(), "not queued again");
    assert_eq!(q.held().await.unwrap(), 0);
    assert!(hash(&q, &q.keys().givebacks).await.is_empty());
    assert!(hash(&q, &q.keys().attempts).await.is_empty());
    drop_keys(&key).await;
}

/// Acknowledging ids (one, or many in one script) deletes their give-back counts, so
/// `{q}:givebacks` holds only ids still in flight; a take of many reads the counts too.
#[tokio::test]
async fn an_ack_clears_the_give_back_count() {
    let key = fresh_key("giveback-ack");
    let q = queue(&key, "w", 3).await;
    let cancel = CancellationToken::new();
    push(&q, &["1", "2", "3"]).await;
    let taken = q.take_up_to(3, &cancel).await.unwrap();
    assert_eq!(taken.len(), 3);
    assert_eq!(q.release_own().await.unwrap(), 3);
    let again = q.take_up_to(3, &cancel).await.unwrap();
    let seen: Vec<_> = again
        .iter()
        .map(|t| (t.raw.as_str(), t.attempts, t.given_back))
        .collect();
    assert_eq!(seen, vec![("1", 1, 1), ("2", 1, 1), ("3", 1, 1)]);
    assert_eq!(
        hash(&q, &q.keys().givebacks).await,
        BTreeMap::from([("1".into(), 1), ("2".into(), 1), ("3".into(), 1)])
    );

    let done = indexed(&[]);
    assert!(q.finish("1", &done).await.unwrap(), "one ack");
    assert_eq!(
        hash(&q, &q.keys().givebacks).await,
        BTreeMap::from([("2".into(), 1), ("3".into(), 1)])
    );
    let settled = q.settle_many(&[("2", &done), ("3", &done)]).await.unwrap();
    assert_eq!(settled, vec![Settled::Acked, Settled::Acked], "many acks");
    assert!(hash(&q, &q.keys().givebacks).await.is_empty());
    assert!(hash(&q, &q.keys().attempts).await.is_empty());
    drop_keys(&key).await;
}

/// Heartbeats carry the documented fields and list the worker as live.
#[tokio::test]
async fn heartbeats_make_a_worker_live() {
    let key = fresh_key("beat");
    let q = queue(&key, "w", 3).await;
    let mut conn = q.connection();
    assert!(live_workers(&mut conn, &key).await.unwrap().is_empty());
    q.heartbeat(42, 1024, 7).await.unwrap();
    let live = live_workers(&mut conn, &key).await.unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].0, "w");
    assert_eq!(
        (live[0].1.pid, live[0].1.rss, live[0].1.tasks_done),
        (42, 1024, 7)
    );
    let ttl: i64 = redis::cmd("TTL")
        .arg(&q.keys().heartbeat)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((1..=15).contains(&ttl), "ttl {ttl}");
    q.release_own().await.unwrap();
    let beats = worker_beats(&mut conn, &key).await.unwrap();
    assert!(
        beats.is_empty(),
        "a released worker is no longer listed: {beats:?}"
    );
    drop_keys(&key).await;
}

/// An unreachable Redis is a transient connect error that names the URL without its
/// password.
#[tokio::test]
async fn an_unreachable_redis_is_a_transient_error_without_the_password() {
    let err = Queue::connect("redis://:hunter2@127.0.0.1:1/0", &spec("k", 3), "w")
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("127.0.0.1:1") && !text.contains("hunter2"),
        "{text}"
    );
    assert!(
        text.contains("MIGRATE_REDIS_URL"),
        "the message names the setting to change: {text}"
    );
}
