//! The hand-written job of README.md ("A job for your own tables"), taken from between its
//! `readme-job` markers and run by the worker binary against the testbed, on a `products`
//! table of its own: the index is created with the snippet's mapping and holds every
//! product, nothing is dead-lettered and the queue ends empty. Only the queue key and the
//! index name are made fresh, so that runs in parallel do not share them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Stdio;
use std::time::Duration;

use migrate_e2e::env::{Service, TestEnv, repo_root, unique_name};
use migrate_e2e::{datagen, search};
use mysql_async::prelude::Queryable;
use tokio::process::Command;

const PRODUCTS: u64 = 40;

/// The YAML between the README's `readme-job` markers, without its code fence.
fn readme_job() -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let start = readme
        .find("<!-- readme-job:start -->")
        .expect("README.md has a readme-job:start marker");
    let end = readme
        .find("<!-- readme-job:end -->")
        .expect("README.md has a readme-job:end marker");
    let block = &readme[start..end];
    let body = block
        .split_once("```yaml\n")
        .and_then(|(_, rest)| rest.rsplit_once("```"))
        .map(|(yaml, _)| yaml)
        .expect("a yaml code block between the markers");
    body.to_owned()
}

/// The README's job runs as written: index created from `sink.createIndex`, every product in
/// it, no dead letter, queue empty, exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_job_runs_against_the_testbed() {
    let env = TestEnv::load();
    env.require(&[Service::Redis, Service::Mysql, Service::Es])
        .await;
    let name = unique_name("migrate_readme");
    let db_url = datagen::create_database(&env.mysql_url, &name).await;
    let mut conn = mysql_async::Conn::new(mysql_async::Opts::from_url(&db_url).unwrap())
        .await
        .unwrap();
    conn.query_drop(
        "CREATE TABLE products (id BIGINT PRIMARY KEY, name VARCHAR(200), description TEXT, price DOUBLE)",
    )
    .await
    .unwrap();
    for id in 1..=PRODUCTS {
        conn.exec_drop(
            "INSERT INTO products VALUES (?, ?, ?, ?)",
            (id, format!("product {id}"), "made by hand", 1.5 * id as f64),
        )
        .await
        .unwrap();
    }
    let _ = conn.disconnect().await;

    let job = readme_job();
    let starter =
        std::fs::read_to_string(repo_root().join("operator/src/local/starter-job.yaml")).unwrap();
    assert_eq!(
        job, starter,
        "`migrate-operator local init` writes the README's job (operator/src/local/starter-job.yaml)"
    );
    assert!(
        job.contains("key: products:ids") && job.contains("index: products\n"),
        "{job}"
    );
    let queue = format!("test:{name}");
    let index = name.replace('_', "-");
    let job = job
        .replace("key: products:ids", &format!("key: {queue}"))
        .replace("index: products\n", &format!("index: {index}\n"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("products.yaml");
    std::fs::write(&path, &job).unwrap();

    let client = redis::Client::open(env.redis_url.as_str()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let ids: Vec<u64> = (1..=PRODUCTS).collect();
    let _: () = redis::cmd("LPUSH")
        .arg(&queue)
        .arg(&ids)
        .query_async(&mut redis)
        .await
        .unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log_path = dir.path().join("worker.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_migrate-worker"))
        .arg("run")
        .arg("--pipeline")
        .arg(&path)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("MIGRATE_REDIS_URL", &env.redis_url)
        .env("MIGRATE_MYSQL_URL", &db_url)
        .env("MIGRATE_SEARCH_URL", &env.es_url)
        .env("MIGRATE_MEMORY_LIMIT_BYTES", "1Gi")
        .env("MIGRATE_LISTEN", format!("127.0.0.1:{port}"))
        .env("MIGRATE_WORKER_ID", "readme-1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let status = match tokio::time::timeout(Duration::from_secs(120), child.wait()).await {
        Ok(status) => status.unwrap(),
        Err(_) => panic!(
            "the worker did not drain the queue within 2 minutes; log:\n{}",
            read_log()
        ),
    };
    let log = read_log();
    assert_eq!(status.code(), Some(0), "log:\n{log}");

    let indexed = search::ids(&env.es_url, &index).await;
    assert_eq!(indexed.len() as u64, PRODUCTS, "log:\n{log}");
    let mapping: serde_json::Value = reqwest::get(format!("{}/{index}/_mapping", env.es_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        mapping[&index]["mappings"]["properties"]["price"]["type"], "double",
        "the index was created from sink.createIndex: {mapping}"
    );
    let dead: u64 = redis::cmd("LLEN")
        .arg(format!("{queue}:dead"))
        .query_async(&mut redis)
        .await
        .unwrap();
    let left: u64 = redis::cmd("LLEN")
        .arg(&queue)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!((dead, left), (0, 0), "nothing dead-lettered, nothing left");

    search::delete_index(&env.es_url, &index).await;
    migrate_e2e::redis::drop_keys(&queue).await;
    let mut conn = mysql_async::Conn::new(mysql_async::Opts::from_url(&db_url).unwrap())
        .await
        .unwrap();
    conn.query_drop(format!("DROP DATABASE `{name}`"))
        .await
        .unwrap();
    let _ = conn.disconnect().await;
}
