//! `demo-prepare`: makes the demo's data and job from scratch, on the testbed's services.
//!
//! Drops and recreates the database, the index and every Redis key of the demo queue, loads
//! the articles, writes the keyword files, enqueues every id and writes the job file (a
//! MigrateJob manifest with a test-only leak so the demo shows memory restarts) and an env file
//! with the connection variables for `migrate-operator local`. Running it again starts over.
//!
//! ```text
//! demo-prepare [--articles N] [--dir DIR] [--database NAME] [--queue KEY] [--index NAME]
//!              [--workers N] [--memory-limit SIZE] [--leak-bytes N] [--leak-stage STAGE]
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use migrate_crds::{MigrateJobSpec, Mode, TestOnlySpec};
use migrate_e2e::datagen::{self, DataSetSpec};
use migrate_e2e::env::{Service, TestEnv};
use migrate_e2e::{cli, search};

/// Makes the demo's data and job from scratch on the testbed's services: drops and recreates
/// the database, the index and the Redis keys of the queue, loads generated articles, writes the
/// keyword files, enqueues every id, and writes DIR/job.yaml (a MigrateJob with a test-only
/// leak, so that the demo shows memory restarts) and DIR/demo.env (the workers' connection
/// variables). Running it again starts over. The services are found through REDIS_URL,
/// MYSQL_URL, ES_URL and NLP_URL (`source .testbed/env`), with the testbed's addresses as
/// defaults.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "demo-prepare")]
struct Options {
    /// Articles to generate and enqueue (`50000` or `50,000`).
    #[arg(long, value_name = "N", default_value = "50000", value_parser = cli::count)]
    articles: u64,
    /// Folder of the job, the env file and the keyword files.
    #[arg(long, value_name = "DIR", default_value = "migrate-demo")]
    dir: PathBuf,
    /// MySQL database, dropped and recreated; must start with migrate_ (the testbed user may
    /// only create those).
    #[arg(long, value_name = "NAME", default_value = "migrate_demo", value_parser = migrate_database)]
    database: String,
    /// Redis queue key; its keys are deleted first.
    #[arg(long, value_name = "KEY", default_value = "migrate_demo")]
    queue: String,
    /// Search index, deleted and recreated.
    #[arg(long, value_name = "NAME", default_value = "migrate_demo")]
    index: String,
    /// Workers of the job (its min and max replicas).
    #[arg(long, value_name = "N", default_value = "3", value_parser = replicas)]
    workers: i32,
    /// Memory limit of each worker.
    #[arg(long, value_name = "SIZE", default_value = "192Mi")]
    memory_limit: String,
    /// Bytes each task leaks on purpose (spec.testOnly), 0 for none.
    #[arg(long, value_name = "N", default_value = "32768", value_parser = cli::number)]
    leak_bytes: u64,
    /// The stage the leak is charged to.
    #[arg(long, value_name = "STAGE", default_value = "enrich")]
    leak_stage: String,
}

fn migrate_database(name: &str) -> Result<String, String> {
    if name.starts_with("migrate_") {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "{name:?} must start with migrate_ (the testbed user may only create those)"
        ))
    }
}

fn replicas(text: &str) -> Result<i32, String> {
    i32::try_from(cli::count(text)?).map_err(|_| format!("{text:?} is too large"))
}

/// `spec` with `workers.resources.limits.memory` set (through the spec's JSON form: this crate
/// has no Kubernetes types of its own).
fn set_memory_limit(
    spec: &MigrateJobSpec,
    limit: &str,
) -> Result<MigrateJobSpec, serde_json::Error> {
    let mut value = serde_json::to_value(spec)?;
    value["workers"]["resources"] = serde_json::json!({ "limits": { "memory": limit } });
    serde_json::from_value(value)
}

async fn reset_redis(redis_url: &str, queue: &str) -> Result<u64, redis::RedisError> {
    let client = redis::Client::open(redis_url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut keys: Vec<String> = vec![queue.to_owned()];
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{queue}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let mut deleted = 0;
    for chunk in keys.chunks(500) {
        deleted += redis::cmd("DEL")
            .arg(chunk)
            .query_async::<u64>(&mut conn)
            .await?;
    }
    Ok(deleted)
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

async fn prepare(o: &Options) -> Result<(), String> {
    let started = Instant::now();
    let env = TestEnv::load();
    env.require(&[Service::Redis, Service::Mysql, Service::Es, Service::Nlp])
        .await;
    std::fs::create_dir_all(&o.dir)
        .map_err(|e| format!("cannot create {}: {e}", o.dir.display()))?;
    let dir = std::path::absolute(&o.dir).map_err(|e| format!("{}: {e}", o.dir.display()))?;

    println!(
        "demo-prepare: database {} (dropped and recreated)",
        o.database
    );
    let db_url = datagen::create_database(&env.mysql_url, &o.database).await;
    println!("demo-prepare: loading {} articles ...", o.articles);
    let data = datagen::load(
        &db_url,
        &DataSetSpec {
            articles: o.articles,
            ..DataSetSpec::default()
        },
    )
    .await;
    let keywords_dir = dir.join("keywords");
    datagen::write_keyword_files(&keywords_dir, &data);

    // The server's defaults and dynamic mapping: the documents' shape keeps the mapping small
    // (`keywords.<set>` is an array of `{keyword, count}`).
    search::create_index(&env.es_url, &o.index, serde_json::json!({})).await;
    let deleted = reset_redis(&env.redis_url, &o.queue).await.map_err(|e| {
        format!(
            "cannot reset the redis keys of {} at {}: {e}",
            o.queue, env.redis_url
        )
    })?;
    datagen::enqueue(&env.redis_url, &o.queue, &data.ids).await;

    let mut spec = datagen::pipeline_spec(&o.queue, &o.index, &env.nlp_url);
    spec.mode = Mode::Drain;
    spec.workers.min_replicas = o.workers;
    spec.workers.max_replicas = o.workers;
    spec.workers.recycle_after_tasks = None;
    // In local mode the keyword "ConfigMap" is a folder next to the job file.
    spec.keywords.config_map = Some("keywords".to_owned());
    spec.memory.min_worker_age_seconds = 5;
    // Drain at 70% of the limit: room for the RSS growth of a check interval and of a restart
    // throttled behind another one before the hard limit (92%).
    spec.memory.soft = "70%".to_owned();
    if o.leak_bytes > 0 {
        spec.test_only = Some(TestOnlySpec {
            leak_bytes_per_task: o.leak_bytes,
            leak_stage: o.leak_stage.clone(),
            no_memory_restarts: false,
        });
    }
    let spec = set_memory_limit(&spec, &o.memory_limit)
        .map_err(|e| format!("cannot set the memory limit: {e}"))?;
    migrate_crds::validate::validate(&spec).map_err(|e| format!("the demo job is invalid: {e}"))?;
    let body = migrate_crds::pipeline::to_yaml(&spec)
        .map_err(|e| format!("cannot write the job as YAML: {e}"))?;
    let indented: String = body.lines().map(|l| format!("  {l}\n")).collect();
    let job = dir.join("job.yaml");
    write(
        &job,
        &format!(
            "# The demo job, written by demo-prepare. testOnly makes every task leak on purpose so that\n\
             # memory restarts show; never set it in production.\n\
             apiVersion: migrate-operator.io/v1alpha1\nkind: MigrateJob\nmetadata:\n  name: migrate-demo\nspec:\n{indented}"
        ),
    )?;
    let env_file = dir.join("demo.env");
    write(
        &env_file,
        &format!(
            "export MIGRATE_REDIS_URL={}\nexport MIGRATE_MYSQL_URL={}\nexport MIGRATE_SEARCH_URL={}\n",
            shell_quote(&env.redis_url),
            shell_quote(&db_url),
            shell_quote(&env.es_url)
        ),
    )?;

    let blacklisted = u64::try_from(data.blacklisted_ids.len()).unwrap_or(0);
    println!(
        "demo-prepare: {} ids enqueued on {} ({deleted} old keys removed), index {} emptied",
        data.ids.len(),
        o.queue,
        o.index
    );
    println!(
        "demo-prepare: expect {} documents indexed and {blacklisted} filtered by the blacklist",
        o.articles.saturating_sub(blacklisted)
    );
    println!("demo-prepare: job {}", job.display());
    println!("demo-prepare: keywords {}", keywords_dir.display());
    println!("demo-prepare: env {}", env_file.display());
    println!(
        "demo-prepare: ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = <Options as clap::Parser>::parse();
    match prepare(&options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("demo-prepare: {message}");
            ExitCode::FAILURE
        }
    }
}
