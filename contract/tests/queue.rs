//! The supervisor's queue operations against a real Redis (the testbed's, `REDIS_URL`, default
//! `redis://127.0.0.1:6390`), on keys written the way the worker writes them. Each test uses a
//! fresh queue key, so they run in parallel.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use migrate_contract::Keys;
use migrate_contract::queue::{
    Backlog, DeadEntry, Heartbeat, backlog, dead_letters, live_workers, requeue, requeue_worker,
    worker_beats,
};
use redis::aio::MultiplexedConnection;

// The test kit's Redis helpers, included by path: the kit depends on this crate, so this crate
// cannot depend on the kit.
#[path = "../../tests/e2e/src/redis.rs"]
mod redis_support;

use redis_support::{connect, drop_keys};

fn fresh_key(name: &str) -> String {
    redis_support::fresh_key("contract", name)
}

/// Puts `ids` in `worker`'s processing list as taking does (newest on the left), counts one
/// delivery each and lists the worker.
async fn hold(conn: &mut MultiplexedConnection, keys: &Keys, ids: &[&str]) {
    for id in ids {
        redis::pipe()
            .cmd("LPUSH")
            .arg(&keys.processing)
            .arg(*id)
            .ignore()
            .cmd("HINCRBY")
            .arg(&keys.attempts)
            .arg(*id)
            .arg(1)
            .ignore()
            .cmd("SADD")
            .arg(&keys.workers)
            .arg(&keys.worker)
            .ignore()
            .query_async::<()>(conn)
            .await
            .unwrap();
    }
}

async fn list(conn: &mut MultiplexedConnection, key: &str) -> Vec<String> {
    redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .unwrap()
}

async fn attempts(conn: &mut MultiplexedConnection, keys: &Keys, id: &str) -> Option<u64> {
    redis::cmd("HGET")
        .arg(&keys.attempts)
        .arg(id)
        .query_async(conn)
        .await
        .unwrap()
}

/// A dead worker's ids go back to be taken first, oldest first, with their deliveries still
/// counted; requeueing again changes nothing.
#[tokio::test]
async fn requeueing_a_dead_worker_twice_is_harmless() {
    let mut conn = connect().await;
    let q = fresh_key("requeue");
    let keys = Keys::new(&q, "w");
    redis::cmd("LPUSH")
        .arg(&q)
        .arg("9")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    hold(&mut conn, &keys, &["1", "2", "3"]).await;
    assert_eq!(
        backlog(&mut conn, &q).await.unwrap(),
        Backlog {
            queued: 1,
            in_flight: 3
        }
    );
    assert_eq!(requeue_worker(&mut conn, &q, "w").await.unwrap(), 3);
    assert_eq!(requeue_worker(&mut conn, &q, "w").await.unwrap(), 0);
    assert_eq!(list(&mut conn, &q).await, ["9", "3", "2", "1"]);
    assert_eq!(attempts(&mut conn, &keys, "1").await, Some(1));
    let backlog_now = backlog(&mut conn, &q).await.unwrap();
    assert_eq!(
        backlog_now,
        Backlog {
            queued: 4,
            in_flight: 0
        }
    );
    assert_eq!(backlog_now.total(), 4);
    assert!(worker_beats(&mut conn, &q).await.unwrap().is_empty());
    drop_keys(&q).await;
}

/// A worker's own graceful release gives its ids' deliveries back; a delivery count that
/// reaches zero is removed rather than left at 0.
#[tokio::test]
async fn a_release_gives_deliveries_back() {
    let mut conn = connect().await;
    let q = fresh_key("release");
    let keys = Keys::new(&q, "w");
    hold(&mut conn, &keys, &["1", "2"]).await;
    hold(&mut conn, &Keys::new(&q, "other"), &["2"]).await;
    redis::cmd("LREM")
        .arg(Keys::processing_of(&q, "other"))
        .arg(1)
        .arg("2")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    assert_eq!(requeue(&mut conn, &keys, true).await.unwrap(), 2);
    assert_eq!(attempts(&mut conn, &keys, "1").await, None);
    assert_eq!(attempts(&mut conn, &keys, "2").await, Some(1));
    assert_eq!(list(&mut conn, &q).await, ["2", "1"]);
    drop_keys(&q).await;
}

/// Heartbeats are read as the worker writes them; an expired one marks its worker dead and a
/// malformed one still counts as alive.
#[tokio::test]
async fn heartbeats_tell_live_workers_from_dead_ones() {
    let mut conn = connect().await;
    let q = fresh_key("beats");
    let beat = Heartbeat {
        pid: 42,
        rss: 1024,
        tasks_done: 7,
        at: "2026-01-01T00:00:00.000Z".to_owned(),
    };
    let mut pipe = redis::pipe();
    pipe.cmd("SADD")
        .arg(Keys::new(&q, "").workers)
        .arg(&["alive", "dead", "odd"])
        .ignore()
        .cmd("SET")
        .arg(Keys::heartbeat_of(&q, "alive"))
        .arg(serde_json::to_string(&beat).unwrap())
        .arg("EX")
        .arg(30)
        .ignore()
        .cmd("SET")
        .arg(Keys::heartbeat_of(&q, "odd"))
        .arg("not json")
        .arg("EX")
        .arg(30)
        .ignore();
    pipe.query_async::<()>(&mut conn).await.unwrap();
    let beats = worker_beats(&mut conn, &q).await.unwrap();
    let names: Vec<_> = beats
        .iter()
        .map(|b| (b.worker.as_str(), b.heartbeat.is_some()))
        .collect();
    assert_eq!(names, [("alive", true), ("dead", false), ("odd", true)]);
    assert_eq!(beats[0].heartbeat.as_ref(), Some(&beat));
    let live = live_workers(&mut conn, &q).await.unwrap();
    assert_eq!(live.len(), 2);
    assert_eq!(live[0], ("alive".to_owned(), beat));
    drop_keys(&q).await;
}

/// Dead letters come back newest first in the documented shape; an entry of another shape is
/// a decode error naming the key.
#[tokio::test]
async fn dead_letters_are_read_newest_first() {
    let mut conn = connect().await;
    let q = fresh_key("dead");
    let keys = Keys::new(&q, "w");
    for id in ["1", "2"] {
        let entry = DeadEntry {
            id: id.to_owned(),
            stage: "sink".to_owned(),
            reason: "mapper_parsing_exception".to_owned(),
            attempts: 1,
            at: "2026-01-01T00:00:00.000Z".to_owned(),
            worker: "w".to_owned(),
        };
        redis::cmd("LPUSH")
            .arg(&keys.dead)
            .arg(serde_json::to_string(&entry).unwrap())
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
    let dead = dead_letters(&mut conn, &q, 10).await.unwrap();
    let ids: Vec<_> = dead.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["2", "1"]);
    assert_eq!(dead_letters(&mut conn, &q, 1).await.unwrap().len(), 1);
    assert!(dead_letters(&mut conn, &q, 0).await.unwrap().is_empty());
    redis::cmd("LPUSH")
        .arg(&keys.dead)
        .arg("{}")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let err = dead_letters(&mut conn, &q, 10).await.unwrap_err();
    assert_eq!(err.metric_label(), "decode");
    assert!(err.to_string().contains(&keys.dead), "{err}");
    drop_keys(&q).await;
}
