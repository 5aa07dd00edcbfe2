//! Reaction of the local supervisor to a worker crossing its soft memory limit.
//!
//! Real workers on the testbed leak a fixed number of bytes per task (the test-only knob), so
//! their RSS climbs steadily through the soft limit. The workers are told a much larger limit
//! (`--worker-memory-limit`) so their own memory check never fires: only the supervisor's path
//! is measured. While the job runs, this benchmark samples every worker's RSS from
//! `/proc/<pid>/statm` every millisecond or so to find the moment it crossed the soft limit;
//! the supervisor's summary says when it sent SIGTERM and what RSS it read just before.
//!
//! Printed per restart and as mean/max:
//! - reaction: SIGTERM time minus the first sample at or above the soft limit;
//! - overshoot: RSS read by the supervisor just before the SIGTERM, minus the soft limit;
//! - growth: the worker's RSS growth rate around the crossing (overshoot ≈ growth × reaction).
//!
//! Run with `cargo bench -p migrate-operator --bench reaction` (needs `tests/testbed/up.sh
//! redis mariadb opensearch nlp`). `REACTION_ARTICLES` (default 8000) sets the job size and
//! `REACTION_INTERVAL_MS` (default 1000) the supervisor's check interval.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_precision_loss,
    missing_docs
)]

#[path = "../tests/local_support/mod.rs"]
mod local_support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use local_support::Scenario;
use migrate_contract::memory::read_rss_of;
use migrate_crds::TestOnlySpec;
use migrate_operator::local::LocalJob;

/// The supervisor's per-worker limit and thresholds: soft at 60% (~77 MiB), hard at 99%, far
/// enough apart that a worker never reaches hard before the supervisor acts on soft.
const MEMORY_LIMIT: &str = "128Mi";
const SOFT: &str = "60%";
const HARD: &str = "99%";
/// What the workers are told: their own checks stay far away.
const WORKER_LIMIT: &str = "64Gi";
const LEAK_PER_TASK: u64 = 64 * 1024;
/// Samples kept per worker (a worker lives a few seconds: ~10,000 samples at 1 ms).
const MAX_SAMPLES: usize = 200_000;

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// RSS timelines by pid: (unix µs, bytes).
type Timelines = Arc<Mutex<BTreeMap<u32, Vec<(u64, u64)>>>>;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mib(bytes: f64) -> f64 {
    bytes / f64::from(1u32 << 20)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let articles = env_number("REACTION_ARTICLES", 8_000);
    let interval_ms = env_number("REACTION_INTERVAL_MS", 1_000);
    let mut scenario = Scenario::prepare("local_bench", articles).await;
    scenario.spec.workers.min_replicas = 2;
    scenario.spec.workers.max_replicas = 2;
    scenario.spec.memory.soft = SOFT.to_owned();
    scenario.spec.memory.hard = HARD.to_owned();
    scenario.spec.memory.min_worker_age_seconds = 0;
    scenario.spec.memory.max_concurrent_restarts = 2;
    scenario.spec.memory.check_interval_ms = u32::try_from(interval_ms).unwrap();
    scenario.spec.test_only = Some(TestOnlySpec {
        leak_bytes_per_task: LEAK_PER_TASK,
        leak_stage: "enrich".into(),
        no_memory_restarts: false,
    });
    let soft = LocalJob::from_spec(
        scenario.job_path(),
        scenario.spec.clone(),
        Some(MEMORY_LIMIT),
        None,
    )
    .unwrap()
    .soft_bytes
    .unwrap();

    let run = scenario.supervise(&[
        "--memory-limit",
        MEMORY_LIMIT,
        "--worker-memory-limit",
        WORKER_LIMIT,
        "--base-port",
        "19400",
    ]);
    let timelines: Timelines = Arc::default();
    let stop = stop_flag::Flag::default();
    let sampler = {
        let timelines = Arc::clone(&timelines);
        let stop = stop.clone();
        let supervisor = run.pid;
        tokio::task::spawn_blocking(move || sample(supervisor, &timelines, &stop))
    };
    let summary = run.finish(Duration::from_secs(1_800)).await;
    stop.set();
    sampler.await.unwrap();

    let timelines = timelines.lock().unwrap();
    println!(
        "\nreaction of the local supervisor to the soft limit (interval {interval_ms} ms, soft {:.1} MiB, leak {} KiB/task, {} articles, 2 workers)",
        mib(soft as f64),
        LEAK_PER_TASK / 1024,
        articles
    );
    println!(
        "{:<10} {:>10} {:>12} {:>14} {:>12}",
        "worker", "tasks", "reaction ms", "overshoot MiB", "growth MiB/s"
    );
    let mut reactions = Vec::new();
    let mut overshoots = Vec::new();
    for e in summary
        .restart_events
        .iter()
        .filter(|e| e.reason == "memory-soft" && e.action == "drain")
    {
        let Some(line) = timelines.get(&e.pid) else {
            println!("{:<10} no samples", e.worker);
            continue;
        };
        let Some(crossing) = line.iter().position(|&(_, rss)| rss >= soft) else {
            println!(
                "{:<10} never seen above the soft limit by the sampler",
                e.worker
            );
            continue;
        };
        let crossed_at = line[crossing].0;
        let signalled_at = e.unix_ms * 1_000;
        let reaction_ms = (signalled_at as f64 - crossed_at as f64) / 1_000.0;
        let rss = e.rss_at_signal.unwrap_or_default();
        let overshoot = rss.saturating_sub(soft) as f64;
        // Growth over the second before the crossing.
        let before = line[..crossing]
            .iter()
            .rev()
            .find(|&&(t, _)| crossed_at - t >= 1_000_000)
            .copied();
        let growth = before.map_or(f64::NAN, |(t, r)| {
            let per_second =
                (line[crossing].1.saturating_sub(r)) as f64 / ((crossed_at - t) as f64 / 1e6);
            mib(per_second)
        });
        println!(
            "{:<10} {:>10} {:>12.0} {:>14.2} {:>12.1}",
            e.worker,
            e.tasks_done,
            reaction_ms,
            mib(overshoot),
            growth
        );
        reactions.push(reaction_ms);
        overshoots.push(mib(overshoot));
    }
    let stats = |v: &[f64]| {
        let n = v.len().max(1);
        let mean = v.iter().sum::<f64>() / n as f64;
        let max = v.iter().copied().fold(f64::NAN, f64::max);
        let min = v.iter().copied().fold(f64::NAN, f64::min);
        (mean, min, max)
    };
    let (rm, rmin, rmax) = stats(&reactions);
    let (om, omin, omax) = stats(&overshoots);
    println!("restarts measured: {}", reactions.len());
    println!("reaction  ms : mean {rm:.0}, min {rmin:.0}, max {rmax:.0}");
    println!("overshoot MiB: mean {om:.2}, min {omin:.2}, max {omax:.2}");
    println!(
        "restarts by reason: {:?}; throughput {:.1} docs/s; wall {:.1} s",
        summary
            .restarts
            .iter()
            .filter(|(_, n)| **n > 0)
            .collect::<BTreeMap<_, _>>(),
        summary.docs_per_second,
        summary.wall_seconds
    );
}

/// Samples every worker of `supervisor` until `stop`: worker discovery every 100 ms, RSS of
/// the known workers every millisecond.
fn sample(supervisor: u32, timelines: &Timelines, stop: &stop_flag::Flag) {
    let mut known: Vec<u32> = Vec::new();
    let mut last_scan = std::time::Instant::now() - Duration::from_secs(1);
    while !stop.is_set() {
        if last_scan.elapsed() >= Duration::from_millis(100) {
            last_scan = std::time::Instant::now();
            known = children(supervisor);
        }
        for &pid in &known {
            if let Some(rss) = read_rss_of(pid) {
                let now = unix_micros();
                let mut t = timelines.lock().unwrap();
                let line = t.entry(pid).or_default();
                if line.len() < MAX_SAMPLES {
                    line.push((now, rss));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Children of `parent` that are not zombies.
fn children(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        if fields.next().and_then(|p| p.parse::<u32>().ok()) == Some(parent) && state != Some("Z") {
            out.push(pid);
        }
    }
    out
}

/// A stop flag shared between the async side and the sampling thread.
mod stop_flag {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Debug, Clone, Default)]
    pub struct Flag(Arc<AtomicBool>);

    impl Flag {
        pub fn set(&self) {
            self.0.store(true, Ordering::Relaxed);
        }

        pub fn is_set(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
    }
}
