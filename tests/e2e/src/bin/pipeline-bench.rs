//! `pipeline-bench`: the whole pipeline (Redis → MySQL → NLP → keywords → bulk index) against
//! the testbed's real services, with the release worker binary, for several worker counts.
//!
//! For each worker count: a fresh database loaded with the generated articles, a fresh queue
//! key and a fresh index; every id enqueued; `N` `migrate-worker` processes (found next to this
//! binary) started in drain mode and sampled until the queue is worked off: resident memory
//! (`/proc/<pid>/status`), CPU time (`utime + stime` of `/proc/<pid>/stat`) and the workers'
//! `/metrics` (per-stage retained bytes, stage latency sums). Then the index must hold exactly
//! the expected number of documents and the stats must add up, else it fails loudly.
//!
//! ```text
//! cargo build --release -p migrate-worker
//! cargo run --release -p migrate-e2e --bin pipeline-bench -- --articles 100000 --workers 1,2
//! ```
//!
//! Flags: `--articles N` (100,000), `--workers LIST` (`1,2`), `--concurrency N` (tasks in
//! flight per worker, 64; MySQL pool and NLP calls scale with it), `--linger MS`
//! (`sink.batchLingerMs`), `--timeout SECONDS` (3,600 per run), `--worker-bin PATH`, `--keep`
//! (leave the database, index and keys behind).
//!
//! Figures (see [`Run::table`]): docs/s from the first id enqueued-and-taken to the last task
//! finished; worker CPU seconds per 1,000 documents (all workers together); stage D MB/s = the
//! articles' title and body bytes (2^20 bytes per MB) over the time the workers spent in stage D
//! (`migrate_stage_seconds_sum{stage="keywords"}`, wall time of the matching code, which the
//! worker runs without awaiting); peak and final RSS per worker; retained bytes per stage at the
//! end; documents per bulk (mean of `migrate_bulk_docs`) and what sent the bulks
//! (`migrate_bulk_requests_total{trigger}`). The index is created like the tests' (one shard, no
//! replica, no refresh while loading, long texts stored but not indexed), so the figures are the
//! worker's, not the full-text analysis of a 2-core search node.
//!
//! Memory of the bench itself is bounded: the ids of one data set (8 bytes each) and one
//! reading per worker; samples are folded into peaks and last values as they come.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use migrate_crds::Mode;
use migrate_e2e::datagen::{self, DataSetSpec};
use migrate_e2e::env::{Service, TestEnv, unique_name};
use migrate_e2e::{cli, search};
use mysql_async::prelude::Queryable;
use tokio::process::{Child, Command};

/// How often processes and metrics are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// How often `/metrics` is scraped (every few samples: a scrape costs the worker a little).
const SCRAPE_EVERY: Duration = Duration::from_secs(2);
/// How often a progress line is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(15);
/// Memory limit the workers' thresholds refer to: high, so no memory restart disturbs a run.
const WORKER_MEMORY_LIMIT: &str = "8Gi";
/// Stage names, in pipeline order, as in the worker's metric labels.
const STAGES: [&str; 5] = ["queue", "source", "enrich", "keywords", "sink"];

/// Runs the whole pipeline (Redis, MySQL, NLP, keywords, bulk index) against the testbed's
/// real services with the release worker, for each worker count, and prints docs/s, CPU per
/// 1,000 documents, stage D MB/s, RSS and retained bytes per stage. Build the worker first:
/// `cargo build --release -p migrate-worker`.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "pipeline-bench")]
struct Options {
    /// Articles to generate (`100000` or `100,000`).
    #[arg(long, value_name = "N", default_value = "100000", value_parser = cli::count)]
    articles: u64,
    /// Worker counts to run, one run each.
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "1,2", value_parser = worker_count)]
    workers: Vec<usize>,
    /// Tasks in flight per worker (the MySQL pool and NLP calls scale with it).
    #[arg(long, value_name = "N", default_value = "64", value_parser = concurrency)]
    concurrency: u32,
    /// `sink.batchLingerMs` of the workers [default: the spec's default].
    #[arg(long, value_name = "MS", value_parser = concurrency)]
    linger: Option<u32>,
    /// Seconds one run may take.
    #[arg(long = "timeout", value_name = "SECONDS", default_value = "3600", value_parser = seconds)]
    timeout: Duration,
    /// The `migrate-worker` binary [default: the one next to this binary].
    #[arg(long, value_name = "PATH")]
    worker_bin: Option<PathBuf>,
    /// Leave the database, index and Redis keys behind.
    #[arg(long)]
    keep: bool,
}

fn worker_count(text: &str) -> Result<usize, String> {
    usize::try_from(cli::count(text.trim())?).map_err(|_| format!("{text:?} is too large"))
}

fn concurrency(text: &str) -> Result<u32, String> {
    u32::try_from(cli::count(text)?).map_err(|_| format!("{text:?} is too large"))
}

fn seconds(text: &str) -> Result<Duration, String> {
    cli::count(text).map(Duration::from_secs)
}

/// The `migrate-worker` binary next to this one (same profile), or the one given.
fn worker_bin(given: Option<&Path>) -> Result<PathBuf, String> {
    let bin = match given {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this binary's folder: {e}"))?
            .with_file_name("migrate-worker"),
    };
    if !bin.is_file() {
        return Err(format!(
            "{} is missing: run `cargo build --release -p migrate-worker` first",
            bin.display()
        ));
    }
    if bin.components().any(|c| c.as_os_str() == "debug") {
        eprintln!(
            "pipeline-bench: warning: {} is a debug build; the figures will mean little",
            bin.display()
        );
    }
    Ok(bin)
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`, 100 when unknown).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// `utime + stime` of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: count fields after it.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ... utime(14) stime(15), so indexes 11 and 12 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident memory of a process in bytes (`VmRSS`).
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Busy and total jiffies of all CPUs (`/proc/stat`), for the host's load during a run.
fn host_cpu() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().sum();
    // idle + iowait
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// The first three fields of `/proc/loadavg`.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Reads the Prometheus text format into `name{labels}` → value (the worker writes no
/// timestamps or exemplars, and no spaces inside labels).
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(k, v)| v.parse::<f64>().ok().map(|v| (k.to_owned(), v)))
        .collect()
}

/// A worker process and what was measured of it.
struct Worker {
    id: String,
    child: Child,
    pid: u32,
    port: u16,
    log: PathBuf,
    peak_rss: u64,
    last_rss: u64,
    cpu_ticks: u64,
    metrics: BTreeMap<String, f64>,
    exit: Option<i32>,
}

impl Worker {
    fn sample(&mut self) {
        if self.exit.is_some() {
            return;
        }
        if let Some(rss) = rss_bytes(self.pid) {
            self.peak_rss = self.peak_rss.max(rss);
            self.last_rss = rss;
        }
        if let Some(ticks) = cpu_ticks(self.pid) {
            self.cpu_ticks = ticks;
        }
    }

    async fn scrape(&mut self, http: &reqwest::Client) {
        if self.exit.is_some() {
            return;
        }
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        if let Ok(response) = http.get(url).send().await
            && let Ok(text) = response.text().await
        {
            self.metrics = parse_metrics(&text);
        }
    }

    fn metric(&self, key: &str) -> f64 {
        self.metrics.get(key).copied().unwrap_or(0.0)
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// The figures of one run.
struct Run {
    workers: Vec<Worker>,
    articles: u64,
    text_bytes: u64,
    elapsed: Duration,
    ticks_per_second: f64,
    host_busy: f64,
    load_before: String,
    load_after: String,
    concurrency: u32,
}

/// Bytes to MB of 2^20 bytes (as the keywords benchmark counts them).
fn mb(bytes: f64) -> f64 {
    bytes / 1_048_576.0
}

impl Run {
    fn cpu_seconds(&self) -> f64 {
        self.workers
            .iter()
            .map(|w| w.cpu_ticks as f64 / self.ticks_per_second)
            .sum()
    }

    fn stage_sum(&self, stage: &str, what: &str) -> f64 {
        let key = format!("migrate_stage_seconds_{what}{{stage=\"{stage}\"}}");
        self.workers.iter().map(|w| w.metric(&key)).sum()
    }

    fn docs_per_second(&self) -> f64 {
        self.articles as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn stage_d_mb_per_second(&self) -> f64 {
        mb(self.text_bytes as f64) / self.stage_sum("keywords", "sum").max(1e-9)
    }

    /// The run's table: one summary line, then one line per worker.
    fn table(&self) -> String {
        let n = self.workers.len();
        let mut out = format!(
            "\n== {n} worker(s), {} articles ({:.0} MB of title+body), concurrency {} per worker\n",
            self.articles,
            mb(self.text_bytes as f64),
            self.concurrency
        );
        out.push_str(&format!(
            "load average before {} / after {}; host CPU busy {:.0}% of 2 cores over the run\n",
            self.load_before,
            self.load_after,
            self.host_busy * 100.0
        ));
        out.push_str(&format!(
            "{:>8} {:>9} {:>8} {:>16} {:>12}\n",
            "seconds", "docs/s", "CPU s", "CPU s/1000 docs", "stage D MB/s"
        ));
        out.push_str(&format!(
            "{:>8.1} {:>9.0} {:>8.1} {:>16.2} {:>12.0}\n",
            self.elapsed.as_secs_f64(),
            self.docs_per_second(),
            self.cpu_seconds(),
            self.cpu_seconds() * 1_000.0 / self.articles as f64,
            self.stage_d_mb_per_second()
        ));
        let count = self.stage_sum("keywords", "count").max(1.0);
        out.push_str("mean ms per task by stage:");
        for stage in STAGES {
            let c = self.stage_sum(stage, "count").max(1.0);
            out.push_str(&format!(
                " {stage} {:.2}",
                self.stage_sum(stage, "sum") * 1_000.0 / c
            ));
        }
        out.push_str(&format!(" ({count:.0} tasks through stage D)\n"));
        let metric = |key: &str| -> f64 { self.workers.iter().map(|w| w.metric(key)).sum() };
        let bulks = metric("migrate_bulk_docs_count");
        out.push_str(&format!(
            "documents per bulk: mean {:.1} over {bulks:.0} bulks (at the last scrape); sent by:",
            metric("migrate_bulk_docs_sum") / bulks.max(1.0)
        ));
        for trigger in ["full", "linger", "interval", "idle", "stop", "alone"] {
            let key = format!("migrate_bulk_requests_total{{trigger=\"{trigger}\"}}");
            out.push_str(&format!(" {trigger} {:.0}", metric(&key)));
        }
        out.push('\n');
        out.push_str(&format!(
            "{:<10} {:>6} {:>11} {:>12} {:>7}  retained MB at the end ({})\n",
            "worker",
            "tasks",
            "peak RSS MB",
            "final RSS MB",
            "CPU s",
            STAGES.join(" / ")
        ));
        for w in &self.workers {
            let retained: Vec<String> = STAGES
                .iter()
                .map(|s| {
                    format!(
                        "{:.1}",
                        mb(w.metric(&format!("migrate_stage_retained_bytes{{stage=\"{s}\"}}")))
                    )
                })
                .collect();
            out.push_str(&format!(
                "{:<10} {:>6.0} {:>11.0} {:>12.0} {:>7.1}  {}\n",
                w.id,
                w.metric("migrate_tasks_done"),
                mb(w.peak_rss as f64),
                mb(w.last_rss as f64),
                w.cpu_ticks as f64 / self.ticks_per_second,
                retained.join(" / ")
            ));
        }
        out
    }

    /// One Markdown row for the README.
    fn markdown_row(&self) -> String {
        let peak: Vec<String> = self
            .workers
            .iter()
            .map(|w| format!("{:.0}", mb(w.peak_rss as f64)))
            .collect();
        let last: Vec<String> = self
            .workers
            .iter()
            .map(|w| format!("{:.0}", mb(w.last_rss as f64)))
            .collect();
        format!(
            "| {} | {} | {:.0} | {:.2} | {:.0} | {} | {} | {} |",
            self.workers.len(),
            self.articles,
            self.docs_per_second(),
            self.cpu_seconds() * 1_000.0 / self.articles as f64,
            self.stage_d_mb_per_second(),
            peak.join(", "),
            last.join(", "),
            self.load_before,
        )
    }
}

/// A free TCP port on loopback.
fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot bind a loopback port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("cannot read a bound port: {e}"))
}

async fn redis_conn(url: &str) -> Result<redis::aio::MultiplexedConnection, String> {
    redis::Client::open(url)
        .map_err(|e| format!("bad redis url {url}: {e}"))?
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("cannot connect to redis at {url}: {e}"))
}

async fn stats(
    conn: &mut redis::aio::MultiplexedConnection,
    queue: &str,
) -> Result<BTreeMap<String, u64>, String> {
    redis::cmd("HGETALL")
        .arg(format!("{queue}:stats"))
        .query_async(conn)
        .await
        .map_err(|e| format!("HGETALL {queue}:stats: {e}"))
}

fn finished(stats: &BTreeMap<String, u64>) -> u64 {
    ["indexed", "filtered", "skipped", "dead"]
        .iter()
        .map(|k| stats.get(*k).copied().unwrap_or(0))
        .sum()
}

/// Deletes the queue key and every `{queue}:*` key.
async fn delete_keys(conn: &mut redis::aio::MultiplexedConnection, queue: &str) {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{queue}*"))
        .query_async(conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(conn).await;
    }
}

/// Title and body bytes of every article in the database.
async fn text_bytes(db_url: &str) -> Result<u64, String> {
    let opts = mysql_async::Opts::from_url(db_url).map_err(|e| format!("{db_url}: {e}"))?;
    let mut conn = mysql_async::Conn::new(opts)
        .await
        .map_err(|e| format!("cannot connect to {db_url}: {e}"))?;
    let sum: Option<u64> = conn
        .query_first("SELECT CAST(SUM(LENGTH(title) + LENGTH(body)) AS UNSIGNED) FROM article")
        .await
        .map_err(|e| format!("SUM(LENGTH(...)) on {db_url}: {e}"))?;
    let _ = conn.disconnect().await;
    Ok(sum.unwrap_or(0))
}

/// One run with `n` workers on a fresh data set, queue and index, which are removed again
/// afterwards whatever happened (unless `--keep`): a 100,000-article run holds about 0.7 GB in
/// MariaDB and 0.5 GB in the index.
async fn run_once(
    env: &TestEnv,
    o: &Options,
    bin: &Path,
    n: usize,
    dir: &Path,
) -> Result<Run, String> {
    let name = unique_name(&format!("migrate_bench_w{n}"));
    let queue = format!("bench:{name}");
    let index = name.replace('_', "-");
    let result = measure(env, o, bin, n, dir, &name, &queue, &index).await;
    if o.keep {
        eprintln!("pipeline-bench: kept database {name}, index {index}, queue {queue}");
    } else {
        search::delete_index(&env.es_url, &index).await;
        if let Ok(mut conn) = redis_conn(&env.redis_url).await {
            delete_keys(&mut conn, &queue).await;
        }
        datagen::drop_database(&env.mysql_url, &name).await;
    }
    result
}

/// [`run_once`] up to its clean-up: load, run, measure, check.
#[allow(clippy::too_many_arguments)]
async fn measure(
    env: &TestEnv,
    o: &Options,
    bin: &Path,
    n: usize,
    dir: &Path,
    name: &str,
    queue: &str,
    index: &str,
) -> Result<Run, String> {
    let started = Instant::now();
    eprintln!(
        "pipeline-bench: {n} worker(s): loading {} articles into {name} ...",
        o.articles
    );
    let db_url = datagen::create_database(&env.mysql_url, name).await;
    let generated = datagen::load(
        &db_url,
        &DataSetSpec {
            articles: o.articles,
            ..DataSetSpec::default()
        },
    )
    .await;
    let text_bytes = text_bytes(&db_url).await?;
    let keywords_dir = dir.join(format!("keywords-{n}"));
    datagen::write_keyword_files(&keywords_dir, &generated);
    search::create_index(
        &env.es_url,
        index,
        search::bulk_load_index(&serde_json::json!({})),
    )
    .await;
    let mut conn = redis_conn(&env.redis_url).await?;
    delete_keys(&mut conn, queue).await;
    datagen::enqueue(&env.redis_url, queue, &generated.ids).await;
    eprintln!(
        "pipeline-bench: {n} worker(s): data ready in {:.1} s; starting the workers",
        started.elapsed().as_secs_f64()
    );

    let mut spec = datagen::pipeline_spec(queue, index, &env.nlp_url);
    spec.mode = Mode::Drain;
    spec.workers.recycle_after_tasks = None;
    spec.workers.concurrency = o.concurrency;
    spec.workers.drain_settle_seconds = 3;
    if let Some(linger) = o.linger {
        spec.sink.batch_linger_ms = linger;
    }
    spec.source.pool_max = (o.concurrency / 4).clamp(4, 32);
    for endpoint in &mut spec.enrich {
        endpoint.max_concurrent = (o.concurrency / 2).clamp(4, 64);
    }
    let pipeline = dir.join(format!("pipeline-{n}.yaml"));
    let yaml = migrate_crds::pipeline::to_yaml(&spec).map_err(|e| format!("the spec: {e}"))?;
    std::fs::write(&pipeline, yaml)
        .map_err(|e| format!("cannot write {}: {e}", pipeline.display()))?;

    let load_before = load_average();
    let host_before = host_cpu();
    let run_started = Instant::now();
    let mut workers = Vec::with_capacity(n);
    for i in 1..=n {
        let id = format!("bench-w{i}");
        let port = free_port()?;
        let log = dir.join(format!("{name}-{id}.log"));
        let log_file =
            std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new(bin)
            .arg("run")
            .arg("--pipeline")
            .arg(&pipeline)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn,migrate_worker=info")
            .env("MIGRATE_REDIS_URL", &env.redis_url)
            .env("MIGRATE_MYSQL_URL", &db_url)
            .env("MIGRATE_SEARCH_URL", &env.es_url)
            .env("MIGRATE_WORKER_ID", &id)
            .env("MIGRATE_KEYWORDS_DIR", &keywords_dir)
            .env("MIGRATE_LISTEN", format!("127.0.0.1:{port}"))
            .env("MIGRATE_MEMORY_LIMIT_BYTES", WORKER_MEMORY_LIMIT)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| format!("{id} exited at once; see {}", log.display()))?;
        workers.push(Worker {
            id,
            child,
            pid,
            port,
            log,
            peak_rss: 0,
            last_rss: 0,
            cpu_ticks: 0,
            metrics: BTreeMap::new(),
            exit: None,
        });
    }

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| format!("an HTTP client: {e}"))?;
    let mut last_scrape = Instant::now();
    let mut last_progress = Instant::now();
    let mut ticks = tokio::time::interval(SAMPLE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let elapsed = loop {
        ticks.tick().await;
        for w in &mut workers {
            w.sample();
        }
        let done = finished(&stats(&mut conn, queue).await?);
        if done >= o.articles {
            let elapsed = run_started.elapsed();
            // Last readings while the workers wait out their drain settle time.
            for w in &mut workers {
                w.sample();
                w.scrape(&http).await;
            }
            break elapsed;
        }
        if last_scrape.elapsed() >= SCRAPE_EVERY {
            for w in &mut workers {
                w.scrape(&http).await;
            }
            last_scrape = Instant::now();
        }
        for w in &mut workers {
            if w.exit.is_none()
                && let Ok(Some(status)) = w.child.try_wait()
            {
                w.exit = Some(status.code().unwrap_or(-1));
            }
        }
        if workers.iter().all(|w| w.exit.is_some()) {
            let tails: Vec<String> = workers
                .iter()
                .map(|w| format!("--- {} exited {:?}:\n{}", w.id, w.exit, w.log_tail(20)))
                .collect();
            return Err(format!(
                "every worker exited with {done} of {} tasks finished\n{}",
                o.articles,
                tails.join("\n")
            ));
        }
        if run_started.elapsed() > o.timeout {
            return Err(format!(
                "{done} of {} tasks finished after {:?}: timed out",
                o.articles, o.timeout
            ));
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            let secs = run_started.elapsed().as_secs_f64();
            eprintln!(
                "pipeline-bench: {n} worker(s): {done}/{} after {secs:.0} s ({:.0} docs/s), load {}",
                o.articles,
                done as f64 / secs.max(1e-9),
                load_average()
            );
            last_progress = Instant::now();
        }
    };
    let load_after = load_average();
    let host_busy = match (host_before, host_cpu()) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => (b1 - b0) as f64 / (t1 - t0) as f64,
        _ => 0.0,
    };

    for w in &mut workers {
        let status = tokio::time::timeout(Duration::from_secs(60), w.child.wait()).await;
        w.exit = Some(match status {
            Ok(Ok(s)) => s.code().unwrap_or(-1),
            _ => {
                let _ = w.child.start_kill();
                -1
            }
        });
    }
    let run = Run {
        workers,
        articles: o.articles,
        text_bytes,
        elapsed,
        ticks_per_second: clock_ticks(),
        host_busy,
        load_before,
        load_after,
        concurrency: o.concurrency,
    };
    println!("{}", run.table());

    // The checks: exactly the expected documents, stats that add up, clean exits.
    search::refresh(&env.es_url, index).await;
    let count = search::count(&env.es_url, index).await;
    let blacklisted = u64::try_from(generated.blacklisted_ids.len()).unwrap_or(u64::MAX);
    let want = o.articles - blacklisted;
    let stats = stats(&mut conn, queue).await?;
    let get = |k: &str| stats.get(k).copied().unwrap_or(0);
    let mut problems = Vec::new();
    if count != want {
        problems.push(format!(
            "the index holds {count} documents, expected exactly {want}"
        ));
    }
    if (get("indexed"), get("filtered"), get("dead")) != (want, blacklisted, 0) {
        problems.push(format!(
            "stats {stats:?}: expected indexed {want}, filtered {blacklisted}, dead 0"
        ));
    }
    for w in &run.workers {
        if w.exit != Some(0) {
            problems.push(format!(
                "{} exited with {:?}:\n{}",
                w.id,
                w.exit,
                w.log_tail(20)
            ));
        }
    }
    if problems.is_empty() {
        println!(
            "check: the index holds exactly {count} documents ({blacklisted} filtered), stats add up, every worker exited 0"
        );
        Ok(run)
    } else {
        Err(format!("CHECK FAILED:\n{}", problems.join("\n")))
    }
}

async fn bench(o: &Options) -> Result<(), String> {
    let bin = worker_bin(o.worker_bin.as_deref())?;
    let env = TestEnv::load();
    env.require(&[Service::Redis, Service::Mysql, Service::Es, Service::Nlp])
        .await;
    let dir = std::env::temp_dir().join(unique_name("pipeline-bench"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    eprintln!(
        "pipeline-bench: worker {}; files and logs in {}",
        bin.display(),
        dir.display()
    );
    let mut rows = Vec::new();
    for &n in &o.workers {
        let run = run_once(&env, o, &bin, n, &dir).await?;
        rows.push(run.markdown_row());
    }
    println!(
        "\n| workers | articles | docs/s | CPU s per 1,000 docs | stage D MB/s | peak RSS MB per worker | final RSS MB per worker | load average at start |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    if !o.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = <Options as clap::Parser>::parse();
    match bench(&options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("pipeline-bench: {message}");
            ExitCode::FAILURE
        }
    }
}
