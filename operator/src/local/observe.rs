//! Observing one worker process: its memory from `/proc` (and its cgroup when it has one of
//! its own), its readiness and task counters from its `/metrics` and `/readyz`.

use std::collections::BTreeMap;
use std::time::Duration;

use migrate_contract::memory::{FigureSource, memory_figure, read_cgroup_of, read_rss_of};
use migrate_contract::metrics::{self as names, parse_text, retained_bytes};

/// What one scrape of `/metrics` gave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scraped {
    /// `migrate_in_flight`.
    pub in_flight: Option<u64>,
    /// `migrate_tasks_done`.
    pub tasks_done: Option<u64>,
    /// `migrate_stage_retained_bytes{stage}` by stage name.
    pub retained: BTreeMap<String, i64>,
    /// `migrate_restart_requested_timestamp_seconds` above zero: the worker asks for a restart.
    pub restart_requested: bool,
}

/// Reads the values the supervisor uses from a worker's metrics text.
#[must_use]
pub fn parse_metrics(text: &str) -> Scraped {
    let values = parse_text(text);
    let count = |key: &str| {
        values
            .get(key)
            .filter(|v| v.is_finite())
            .map(|&v| if v <= 0.0 { 0 } else { to_u64(v) })
    };
    Scraped {
        in_flight: count(names::IN_FLIGHT),
        tasks_done: count(names::TASKS_DONE),
        retained: retained_bytes(&values),
        restart_requested: names::restart_requested(&values),
    }
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // finite, non-negative, saturating
fn to_u64(v: f64) -> u64 {
    v.round().min(u64::MAX as f64) as u64
}

/// The result of one round of HTTP checks of a worker: `None` where a request failed or took
/// longer than the timeout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probe {
    /// `/readyz` answered (Some(true) for 2xx, Some(false) for another status).
    pub ready: Option<bool>,
    /// `/metrics` parsed.
    pub metrics: Option<Scraped>,
}

/// Asks a worker listening on `127.0.0.1:port` for `/readyz` and `/metrics` at once. The
/// client's timeout bounds both.
pub async fn probe(client: &reqwest::Client, port: u16) -> Probe {
    let base = format!("http://127.0.0.1:{port}");
    let ready = async {
        client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .ok()
            .map(|r| r.status().is_success())
    };
    let metrics = async {
        let response = client.get(format!("{base}/metrics")).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.text().await.ok().map(|t| parse_metrics(&t))
    };
    let (ready, metrics) = tokio::join!(ready, metrics);
    Probe { ready, metrics }
}

/// The HTTP client for probes: loopback only, no proxy, every request bounded by `timeout`.
///
/// # Errors
/// When the TLS backend cannot be initialised (not expected: probes use plain HTTP).
pub fn probe_client(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(crate::USER_AGENT)
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout)
        .pool_max_idle_per_host(2)
        .build()
}

/// One memory reading of a worker process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemorySample {
    /// Resident set size from `/proc/<pid>/statm`.
    pub rss: u64,
    /// What the thresholds are compared with, the figure the worker computes for itself
    /// ([`memory_figure`]): the working set of the worker's cgroup when it is alone in it (e.g.
    /// put in a scope of its own by `systemd-run --scope`), else RSS.
    pub usage: u64,
    /// Which figure `usage` is.
    pub source: FigureSource,
    /// The `memory.max` of the worker's own cgroup, when it has one with a limit.
    pub cgroup_limit: Option<u64>,
}

/// Reads worker memory by pid, by the rule the worker applies to itself: a worker in the
/// supervisor's own cgroup shares it with the supervisor and the other workers, so only its
/// RSS is its own; a cgroup counts only when the worker is alone in it.
#[derive(Debug, Clone, Default)]
pub struct MemoryProbe;

impl MemoryProbe {
    /// A probe.
    #[must_use]
    pub fn new() -> Self {
        Self
    }

    /// Reads the memory of process `pid`; `None` when it is gone.
    #[must_use]
    pub fn read(&self, pid: u32) -> Option<MemorySample> {
        let rss = read_rss_of(pid)?;
        let cgroup = read_cgroup_of(pid);
        let figure = memory_figure(rss, cgroup.as_ref());
        Some(MemorySample {
            rss,
            usage: figure.bytes,
            source: figure.source,
            cgroup_limit: cgroup.filter(|c| c.own).and_then(|c| c.max),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_supervisor_reads_in_flight_tasks_done_and_retained_bytes_per_stage() {
        let text = r#"# HELP migrate_in_flight Tasks taken and not yet acknowledged.
# TYPE migrate_in_flight gauge
migrate_in_flight 12
migrate_tasks_done 2048
migrate_tasks_total{outcome="indexed"} 2000
migrate_stage_retained_bytes{stage="enrich"} 41943040
migrate_stage_retained_bytes{stage="queue"} -4096
migrate_stage_seconds_count{stage="enrich"} 2048
# EOF
"#;
        let s = parse_metrics(text);
        assert_eq!(s.in_flight, Some(12));
        assert_eq!(s.tasks_done, Some(2048));
        assert_eq!(
            s.retained,
            BTreeMap::from([("enrich".to_owned(), 40 << 20), ("queue".to_owned(), -4096)])
        );
    }

    #[test]
    fn missing_or_odd_values_are_absent_not_zero() {
        let s = parse_metrics("migrate_in_flight NaN\nmigrate_tasks_done -3\n");
        assert_eq!(s.in_flight, None);
        assert_eq!(s.tasks_done, Some(0));
        assert!(s.retained.is_empty());
        assert_eq!(parse_metrics(""), Scraped::default());
    }

    #[test]
    fn this_process_memory_is_its_rss_and_a_missing_process_has_none() {
        let probe = MemoryProbe::new();
        let me = probe.read(std::process::id()).unwrap();
        assert!(me.rss > 0);
        // The test runs in a cgroup shared with other processes, or in none.
        assert_eq!(
            (me.usage, me.source),
            (me.rss, FigureSource::Rss),
            "a shared cgroup is not counted"
        );
        assert_eq!(probe.read(u32::MAX), None);
    }

    #[tokio::test]
    async fn a_worker_that_does_not_answer_gives_an_empty_probe() {
        let client = probe_client(Duration::from_millis(200)).unwrap();
        // Port 1 on loopback: nothing listens there.
        assert_eq!(probe(&client, 1).await, Probe::default());
    }
}
