//! A hand-written job (the README's) with one mistake at a time, run by the worker binary
//! against the testbed: each is refused with exit code 78 and a message naming the field (or
//! variable) and the value, and nothing is lost: the queue holds the same ids and the
//! dead-letter list stays empty.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Stdio;
use std::time::Duration;

use migrate_e2e::env::{Service, TestEnv, repo_root, unique_name};
use tokio::process::Command;

/// The README's job, with its queue and index made fresh.
fn readme_job(queue: &str, index: &str) -> String {
    let job =
        std::fs::read_to_string(repo_root().join("operator/src/local/starter-job.yaml")).unwrap();
    job.replace("key: products:ids", &format!("key: {queue}"))
        .replace("index: products\n", &format!("index: {index}\n"))
}

async fn llen(redis: &mut redis::aio::MultiplexedConnection, key: &str) -> u64 {
    redis::cmd("LLEN")
        .arg(key)
        .query_async(redis)
        .await
        .unwrap()
}

/// Each mistake: what is changed in the job (or the environment), and the words the refusal
/// must contain (the field or variable, and the value).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_mistake_is_named_with_its_value_and_nothing_is_lost() {
    let env = TestEnv::load();
    env.require(&[Service::Redis, Service::Mysql, Service::Es])
        .await;
    let name = unique_name("migrate_bad");
    let queue = format!("test:{name}");
    let index = name.replace('_', "-");
    let client = redis::Client::open(env.redis_url.as_str()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("LPUSH")
        .arg(&queue)
        .arg(&[1, 2, 3])
        .query_async(&mut redis)
        .await
        .unwrap();
    let good = readme_job(&queue, &index);
    let cases: [(&str, String, Option<&str>, &[&str]); 4] = [
        (
            "a percentage threshold without any memory limit",
            format!("{good}  memory:\n    soft: \"80%\"\n"),
            None,
            &["memory.soft", "\"80%\"", "is a percentage"],
        ),
        (
            "a memory limit that is not a size",
            good.clone(),
            Some("lots"),
            &["MIGRATE_MEMORY_LIMIT_BYTES", "\"lots\""],
        ),
        (
            "an index body that is not JSON",
            good.replace(
                "{\"mappings\": {\"properties\": {\"name\": {\"type\": \"text\"}, \"price\": {\"type\": \"double\"}}}}",
                "mappings: none",
            ),
            Some("1Gi"),
            &["sink.createIndex", "is not JSON"],
        ),
        (
            "a mapping the search server refuses",
            good.replace("\"double\"", "\"no-such-type\""),
            Some("1Gi"),
            &["sink.createIndex", "no-such-type", "HTTP 400"],
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (what, job, limit, words) in cases {
        if limit.is_none()
            && migrate_worker::memory::read_cgroup()
                .and_then(|c| c.max)
                .is_some()
        {
            // A cgroup limit is a limit the percentage refers to: no mistake on this machine.
            eprintln!("{what}: skipped, this process's cgroup has a memory limit");
            continue;
        }
        let path = dir.path().join("job.yaml");
        std::fs::write(&path, &job).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_migrate-worker"));
        command
            .arg("run")
            .arg("--pipeline")
            .arg(&path)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("MIGRATE_REDIS_URL", &env.redis_url)
            .env("MIGRATE_MYSQL_URL", &env.mysql_url)
            .env("MIGRATE_SEARCH_URL", &env.es_url)
            .env("MIGRATE_LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(limit) = limit {
            command.env("MIGRATE_MEMORY_LIMIT_BYTES", limit);
        }
        let output = tokio::time::timeout(Duration::from_secs(60), command.output())
            .await
            .unwrap_or_else(|_| panic!("{what}: the worker did not stop within 60 s"))
            .unwrap();
        let said = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(78), "{what}:\n{said}");
        for word in words {
            assert!(
                said.contains(word),
                "{what}: {word:?} missing from:\n{said}"
            );
        }
        assert_eq!(
            llen(&mut redis, &queue).await,
            3,
            "{what}: the queue is intact"
        );
        assert_eq!(
            llen(&mut redis, &format!("{queue}:dead")).await,
            0,
            "{what}: nothing dead-lettered"
        );
    }
    // The job without a mistake is accepted by `check` with the same limit.
    std::fs::write(dir.path().join("job.yaml"), &good).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_migrate-worker"))
        .args(["check", "--pipeline"])
        .arg(dir.path().join("job.yaml"))
        .env_clear()
        .env("MIGRATE_MEMORY_LIMIT_BYTES", "1Gi")
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{said}");
    assert!(
        said.contains("memory limit") && said.contains("(environment)"),
        "{said}"
    );

    migrate_e2e::redis::drop_keys(&queue).await;
}
