//! Poison tasks against the real testbed: a non-numeric id, a missing row, a title the NLP
//! service refuses and a document the index mapping refuses each end in the dead-letter list
//! with a reason naming its stage, while every other task completes. A 10 KB malformed id is
//! shortened in the log and its reason, and kept whole once in its dead-letter entry.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod pipeline_support;

use std::collections::HashMap;
use std::time::Duration;

use migrate_e2e::datagen::FIRST_ID;
use migrate_e2e::search;
use mysql_async::prelude::Queryable;
use pipeline_support::Job;

/// Four kinds of poison, one per stage that can refuse a task; the rest is indexed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_tasks_are_dead_lettered_at_their_stage_while_the_rest_completes() {
    let job = Job::prepare("poison", 300).await;
    let clean: Vec<u64> = job
        .generated
        .ids
        .iter()
        .copied()
        .filter(|id| !job.generated.blacklisted_ids.contains(id))
        .collect();
    let (nlp_refused, mapping_refused) = (clean[10], clean[20]);
    let missing = FIRST_ID + 1; // ids step by 3: this one has no row
    let not_a_number = "not-a-number";
    // A 10 KB malformed id: shortened in the log and the reason, kept whole in its entry.
    let huge = format!("{}x", "7".repeat(10_239));

    // `[nlp:400]` in a title makes the NLP service answer 400; an author id beyond a `short`
    // makes the index refuse that one document.
    let mut conn = mysql_async::Conn::new(mysql_async::Opts::from_url(&job.db_url).unwrap())
        .await
        .unwrap();
    conn.exec_drop(
        "UPDATE article SET title = CONCAT('[nlp:400]', title) WHERE id = ?",
        (nlp_refused,),
    )
    .await
    .unwrap();
    conn.exec_drop(
        "UPDATE article SET author_id = 99999 WHERE id = ?",
        (mapping_refused,),
    )
    .await
    .unwrap();
    let _ = conn.disconnect().await;
    job.create_index(serde_json::json!({ "author_id": { "type": "short" } }))
        .await;
    let expected = job.expected().await;

    job.enqueue_all().await;
    job.enqueue_raw(&[not_a_number, &missing.to_string(), &huge])
        .await;
    let mut worker = job.spawn("w1");
    let code = worker.exit_code(Duration::from_secs(90)).await;
    assert_eq!(code, 0, "log:\n{}", worker.log_tail(30));

    let dead: HashMap<String, _> = job
        .dead()
        .await
        .into_iter()
        .map(|d| (d.id.clone(), d))
        .collect();
    let stage_of = |id: &str| dead.get(id).map(|d| (d.stage.as_str(), d.reason.as_str()));
    let (stage, reason) = stage_of(not_a_number).expect("the non-numeric id is dead-lettered");
    assert_eq!(stage, "queue");
    assert!(
        reason.contains("not a decimal unsigned integer"),
        "{reason}"
    );
    let (stage, reason) = stage_of(&huge).expect("the 10 KB id is dead-lettered, whole");
    assert_eq!(stage, "queue");
    assert!(
        reason.len() < 200 && reason.contains("10240 bytes"),
        "{} bytes: {reason:.300}",
        reason.len()
    );
    let log = worker.log_text();
    assert!(!log.contains(&huge[..1000]), "the long id is logged whole");
    assert!(
        log.contains("10240 bytes"),
        "its shortened form is logged: {}",
        worker.log_tail(10)
    );
    assert!(
        log.contains("Drained with dead letters: 5 tasks"),
        "a drained run ends saying what it dead-lettered: {}",
        worker.log_tail(5)
    );
    assert!(
        !log.contains('\u{1b}'),
        "a log written to a file has no colour codes"
    );
    let (stage, reason) = stage_of(&missing.to_string()).expect("the missing row is dead-lettered");
    assert_eq!(stage, "source");
    assert!(reason.contains("no row"), "{reason}");
    let (stage, reason) =
        stage_of(&nlp_refused.to_string()).expect("the NLP refusal is dead-lettered");
    assert_eq!(stage, "enrich");
    assert!(reason.contains("400"), "{reason}");
    let (stage, reason) =
        stage_of(&mapping_refused.to_string()).expect("the mapping refusal is dead-lettered");
    assert_eq!(stage, "sink");
    assert!(
        reason.contains("400") && reason.contains("author_id"),
        "{reason}"
    );
    assert_eq!(
        dead.len(),
        5,
        "only the poison is dead-lettered: {:?}",
        dead.keys().collect::<Vec<_>>()
    );
    assert!(
        dead.values().all(|d| d.worker == "w1" && d.attempts == 1),
        "{dead:?}"
    );

    let mut indexed_expected = expected.indexed_ids.clone();
    indexed_expected.remove(&nlp_refused);
    indexed_expected.remove(&mapping_refused);
    let indexed = search::ids(&job.env.es_url, &job.index).await;
    assert_eq!(indexed, indexed_expected, "every other document is indexed");
    let stats = job.stats().await;
    assert_eq!(stats.get("dead"), 5, "{stats:?}");
    assert_eq!(
        stats.get("indexed"),
        indexed_expected.len() as u64,
        "{stats:?}"
    );
    assert_eq!(
        stats.get("filtered"),
        expected.blacklisted_ids.len() as u64,
        "{stats:?}"
    );
    assert_eq!(
        stats.finished(),
        job.generated.ids.len() as u64 + 3,
        "{stats:?}"
    );
    assert_eq!(job.llen(&job.keys("w1").processing).await, 0);
    job.cleanup().await;
}

/// A wrong MySQL password and a query on a missing table are the job's errors, not the tasks':
/// no task is dead-lettered or uses up an attempt, the worker says what to fix, stays up (not
/// ready), and a SIGTERM leaves every id on the queue for the fixed job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_mysql_settings_keep_every_task_instead_of_dead_lettering_the_queue() {
    for case in ["password", "table"] {
        let (mut job, _) = Job::on_shared(&format!("settings-{case}"), 3_000).await;
        let ids = job.generated.ids[..200].to_vec();
        migrate_e2e::datagen::enqueue(&job.env.redis_url, &job.queue, &ids).await;
        match case {
            "password" => {
                assert!(job.db_url.contains(":migrate@"), "{}", job.db_url);
                job.db_url = job.db_url.replacen(":migrate@", ":not-the-password@", 1);
            }
            _ => {
                let tags = job
                    .spec
                    .source
                    .queries
                    .iter_mut()
                    .find(|q| !q.main)
                    .expect("a child query");
                tags.sql = "SELECT tag FROM no_such_table WHERE article_id = ?".to_owned();
            }
        }
        let mut worker = job.spawn("w1");
        let log = pipeline_support::wait_for(
            "the worker to say what to fix",
            Duration::from_secs(60),
            || {
                let text = worker.log_text();
                async move {
                    text.contains("MySQL rejects the job's settings")
                        .then_some(text)
                }
            },
        )
        .await;
        assert!(log.contains("MIGRATE_MYSQL_URL"), "{log}");
        pipeline_support::wait_for(
            "the worker to turn not ready",
            Duration::from_secs(10),
            || {
                let probe = worker.readyz();
                async move { (probe.await != Some(200)).then_some(()) }
            },
        )
        .await;
        assert!(
            worker.has_exited().is_none(),
            "{case}: the worker keeps running"
        );
        worker.signal(nix::sys::signal::Signal::SIGTERM);
        assert_eq!(worker.exit_code(Duration::from_secs(30)).await, 0, "{case}");
        assert!(job.dead().await.is_empty(), "{case}: nothing dead-lettered");
        let stats = job.stats().await;
        assert_eq!(stats.finished(), 0, "{case}: {stats:?}");
        assert_eq!(
            stats.get("retried"),
            0,
            "{case}: no attempt used: {stats:?}"
        );
        let queued = job.llen(&job.queue).await;
        let held = job.llen(&job.keys("w1").processing).await;
        assert_eq!(queued + held, ids.len() as u64, "{case}: every id kept");
        job.cleanup().await;
    }
}
