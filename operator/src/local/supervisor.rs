//! The supervision loop: observe every worker, ask the policy, carry out its actions.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use migrate_contract::keys::stat;
use migrate_contract::queue;
use nix::sys::signal::Signal;
use redis::aio::ConnectionManager;
use tracing::{debug, error, info, warn};

use super::error::LocalError;
use super::job::LocalJob;
use super::observe::{MemoryProbe, probe, probe_client};
use super::plot::{MemoryLines, RssSeries};
use super::process::{Launch, WorkerProcess, cgroup_oom_kills, free_port};
use super::progress::{Figures, Progress};
use super::summary::{self, MemoryLimits, Outcome, RestartEvent, Summary, WorkerSummary};
use crate::leak::{LeakThreshold, RetainedSample, attribute};
use crate::policy::{
    self, Action, Backlog, ExitStatus, MemoryReading, Observations, PolicyState, Report,
    RestartReason, WorkerState,
};

/// Workers in a row crashing before they are ready that stop the supervisor: restarting
/// them once a second would not help.
const CRASH_LOOP: u32 = 5;

/// Longest time one probe request of a worker may take.
const MAX_PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// What the supervisor knows of one worker process.
#[derive(Debug)]
struct Tracked {
    process: WorkerProcess,
    started: Duration,
    /// Draining or being killed: why, since when, and whether SIGKILL was sent.
    draining: Option<(RestartReason, Duration, bool)>,
    /// The reason it was asked to stop for, if it was.
    asked: Option<RestartReason>,
    exit: Option<ExitStatus>,
    ended: Option<Duration>,
    ever_ready: bool,
    /// When it was first seen ready.
    ready_at: Option<Duration>,
    ready: bool,
    in_flight: u64,
    tasks_done: u64,
    /// It asks for a restart (crossed its soft line; see `migrate_contract::restart`).
    asks_restart: bool,
    memory: Option<(u64, Option<u64>, Duration)>,
    peak_rss: u64,
    first_retained: Option<RetainedSample>,
    latest_retained: Option<RetainedSample>,
    /// Its restart reason (if any) was counted.
    counted: Option<Option<RestartReason>>,
    /// An event was recorded for it (by a drain or kill).
    has_event: bool,
    /// Asked to stop because the supervisor itself is stopping (not a restart).
    stopping: bool,
}

impl Tracked {
    fn alive(&self) -> bool {
        self.exit.is_none()
    }

    fn policy_view(&self, now: Duration) -> policy::Worker {
        let state = match (&self.exit, self.draining) {
            (Some(status), _) => WorkerState::Exited {
                status: status.clone(),
                asked: self.asked,
            },
            (None, Some((reason, _, _))) => WorkerState::Draining(reason),
            (None, None) if self.ever_ready => WorkerState::Running,
            (None, None) => WorkerState::Starting,
        };
        policy::Worker {
            name: self.process.id.clone(),
            state,
            age: now.saturating_sub(self.started),
            ready: self.ready,
            in_flight: self.in_flight,
            tasks_done: self.tasks_done,
            memory: self
                .memory
                .map(|(usage_bytes, limit_bytes, at)| MemoryReading {
                    usage_bytes,
                    limit_bytes,
                    age: now.saturating_sub(at),
                }),
            outdated: false,
            asks_restart: self.asks_restart,
        }
    }

    fn leak(&self, threshold: &LeakThreshold) -> Option<crate::leak::LeakReport> {
        attribute(
            self.first_retained.as_ref()?,
            self.latest_retained.as_ref()?,
            threshold,
        )
    }

    fn summary(&self, reason: Option<RestartReason>) -> WorkerSummary {
        WorkerSummary {
            id: self.process.id.clone(),
            pid: self.process.pid,
            port: self.process.port,
            log: self.process.log.display().to_string(),
            started_ms: millis(self.started),
            ready_ms: self.ready_at.map(millis),
            stop_ms: self.draining.map(|(_, since, _)| millis(since)),
            ended_ms: self.ended.map(millis),
            tasks_done: self.tasks_done,
            peak_rss_bytes: self.peak_rss,
            exit_code: self.exit.as_ref().and_then(|e| e.code),
            exit_signal: self.exit.as_ref().and_then(|e| e.signal),
            reason: reason.map(|r| r.as_str().to_owned()),
            leaky: self.process.leaky,
        }
    }
}

/// What a round decided about the run.
enum Flow {
    Continue,
    Complete,
}

/// The local supervisor of one job.
pub struct Supervisor {
    job: LocalJob,
    launch: Launch,
    base_port: u16,
    redis: ConnectionManager,
    http: reqwest::Client,
    memory: MemoryProbe,
    clock: Instant,
    workers: Vec<Tracked>,
    finished: Vec<WorkerSummary>,
    next_worker: u64,
    policy: PolicyState,
    restarts: BTreeMap<RestartReason, u64>,
    events: Vec<RestartEvent>,
    requeued: u64,
    recovered: u64,
    reports: BTreeSet<String>,
    reported: Vec<String>,
    throttled: BTreeSet<String>,
    leak_threshold: LeakThreshold,
    oom_kills: Option<u64>,
    stats: BTreeMap<String, u64>,
    stats_at_start: u64,
    progress: Progress,
    config_error_log: Option<PathBuf>,
    /// Workers in a row that crashed before they were ready, and the log of the last one.
    early_crashes: u32,
    crash_log: Option<PathBuf>,
    /// Every worker's memory over time, for the plot (bounded storage).
    rss: RssSeries,
}

impl Supervisor {
    /// A supervisor for `job`, connected to Redis; no worker is started yet.
    ///
    /// # Errors
    /// [`LocalError::Redis`] when Redis cannot be reached.
    pub async fn new(
        job: LocalJob,
        launch: Launch,
        base_port: u16,
        show_progress: bool,
    ) -> Result<Self, LocalError> {
        let url = launch.redis_url.clone();
        let redis_error = |source| LocalError::Redis {
            url: queue::redact_url(&url),
            source,
        };
        let client = redis::Client::open(url.as_str()).map_err(redis_error)?;
        let redis = tokio::time::timeout(Duration::from_secs(10), client.get_connection_manager())
            .await
            .map_err(|_| {
                redis_error(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "no connection within 10 s",
                )))
            })?
            .map_err(redis_error)?;
        let timeout = (job.check_interval / 2).min(MAX_PROBE_TIMEOUT);
        let http = probe_client(timeout).map_err(LocalError::Http)?;
        let rss = RssSeries::new(MemoryLines {
            limit_bytes: job.memory_limit,
            soft_bytes: job.soft_bytes,
            hard_bytes: job.hard_bytes,
        });
        Ok(Self {
            job,
            launch,
            base_port,
            redis,
            http,
            memory: MemoryProbe::new(),
            clock: Instant::now(),
            workers: Vec::new(),
            finished: Vec::new(),
            next_worker: 1,
            policy: PolicyState::default(),
            restarts: BTreeMap::new(),
            events: Vec::new(),
            requeued: 0,
            recovered: 0,
            reports: BTreeSet::new(),
            reported: Vec::new(),
            throttled: BTreeSet::new(),
            leak_threshold: LeakThreshold::default(),
            oom_kills: cgroup_oom_kills(),
            stats: BTreeMap::new(),
            stats_at_start: 0,
            progress: Progress::new(show_progress),
            config_error_log: None,
            early_crashes: 0,
            crash_log: None,
            rss,
        })
    }

    fn queue_key(&self) -> &str {
        &self.job.spec.queue.key
    }

    /// Supervises until the job completes (drain mode) or SIGINT/SIGTERM arrives, then stops
    /// every worker gracefully and returns what happened, with every worker's memory over time.
    ///
    /// # Errors
    /// [`LocalError`] when a worker cannot be started, the workers' configuration is wrong, or
    /// the signals cannot be watched.
    pub async fn run(mut self) -> Result<(Summary, RssSeries), LocalError> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt()).map_err(LocalError::Signals)?;
        let mut terminate = signal(SignalKind::terminate()).map_err(LocalError::Signals)?;
        self.recover_dead_workers().await;
        self.read_stats().await;
        self.stats_at_start = self.done();
        info!(
            queue = %self.queue_key(),
            soft_bytes = ?self.job.soft_bytes,
            hard_bytes = ?self.job.hard_bytes,
            interval_ms = u64::try_from(self.job.check_interval.as_millis()).unwrap_or(u64::MAX),
            "Supervising local workers."
        );
        let mut ticks = tokio::time::interval(self.job.check_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let outcome = loop {
            tokio::select! {
                biased;
                _ = interrupt.recv() => break Outcome::Interrupted,
                _ = terminate.recv() => break Outcome::Interrupted,
                _ = ticks.tick() => {}
            }
            match self.round().await {
                Ok(Flow::Continue) => {}
                Ok(Flow::Complete) => break Outcome::Complete,
                Err(e) => {
                    self.stop_all(&mut interrupt, &mut terminate).await;
                    self.progress.finish();
                    return Err(e);
                }
            }
        };
        if outcome == Outcome::Interrupted {
            info!("Signal received: draining every worker.");
        } else {
            info!("The queue is drained: stopping the workers.");
        }
        self.stop_all(&mut interrupt, &mut terminate).await;
        self.read_stats().await;
        self.progress.finish();
        let summary = self.summary(outcome);
        Ok((summary, self.rss))
    }

    /// Requeues the processing lists of workers of an earlier run whose heartbeat expired.
    async fn recover_dead_workers(&mut self) {
        let key = self.job.spec.queue.key.clone();
        let beats = match queue::worker_beats(&mut self.redis, &key).await {
            Ok(beats) => beats,
            Err(error) => {
                warn!(%error, "Cannot list the workers of an earlier run.");
                return;
            }
        };
        for beat in beats.into_iter().filter(|b| b.heartbeat.is_none()) {
            match queue::requeue_worker(&mut self.redis, &key, &beat.worker).await {
                Ok(ids) => {
                    self.recovered += ids;
                    if ids > 0 {
                        info!(worker = %beat.worker, ids, "Requeued what a dead worker of an earlier run held.");
                    }
                }
                Err(error) => {
                    warn!(worker = %beat.worker, %error, "Cannot requeue a dead worker's ids.")
                }
            }
        }
    }

    /// One observe-decide-act round.
    async fn round(&mut self) -> Result<Flow, LocalError> {
        self.collect_exits();
        self.probe_workers().await;
        let now = self.clock.elapsed();
        self.read_memory(now);
        self.record_rss(now);
        let backlog = self.read_backlog().await;
        let observations = Observations {
            workers: self.workers.iter().map(|w| w.policy_view(now)).collect(),
            backlog,
            now,
        };
        let decision = policy::decide(&self.job.settings, &observations, &self.policy);
        self.policy = decision.state;
        let mut flow = Flow::Continue;
        let mut reports = Vec::new();
        // Workers this round stops no longer count as leaky, whatever the order of the
        // actions: a leaky worker drained for memory gets a leaky replacement.
        let leaving: HashSet<String> = decision
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Drain { worker, .. } | Action::Kill { worker, .. } => Some(worker.clone()),
                _ => None,
            })
            .collect();
        for action in decision.actions {
            match action {
                Action::Start { count } => {
                    for _ in 0..count {
                        self.start_worker(now, &leaving)?;
                    }
                }
                Action::Drain {
                    worker,
                    reason,
                    memory_bytes,
                } => {
                    self.stop_worker(&worker, reason, memory_bytes, Signal::SIGTERM, now);
                }
                Action::Kill {
                    worker,
                    reason,
                    memory_bytes,
                } => {
                    self.stop_worker(&worker, reason, memory_bytes, Signal::SIGKILL, now);
                }
                Action::Reap { worker, reason } => self.reap(&worker, reason, now).await,
                Action::Complete => flow = Flow::Complete,
                Action::Report(report) => reports.push(report),
            }
        }
        self.report(&reports);
        self.escalate(now);
        if self.policy.config_error && self.workers.is_empty() {
            return Err(LocalError::WorkerConfig {
                log: self.config_error_log.clone().unwrap_or_default(),
            });
        }
        if self.early_crashes >= CRASH_LOOP {
            return Err(LocalError::CrashLoop {
                workers: self.early_crashes,
                log: self.crash_log.clone().unwrap_or_default(),
            });
        }
        self.read_stats().await;
        self.show_progress(now, backlog);
        Ok(flow)
    }

    /// Notes every worker process that exited since the last round.
    fn collect_exits(&mut self) {
        let now = self.clock.elapsed();
        let oom_kills = cgroup_oom_kills();
        let oom_rose = matches!((self.oom_kills, oom_kills), (Some(a), Some(b)) if b > a);
        self.oom_kills = oom_kills;
        for w in self.workers.iter_mut().filter(|w| w.alive()) {
            if let Some(mut status) = w.process.try_exit() {
                // A SIGKILL we did not send, while the kernel counted an OOM kill in our
                // cgroup: the OOM killer.
                status.oom_killed = oom_rose && status.signal == Some(9) && w.asked.is_none();
                info!(
                    worker = %w.process.id,
                    pid = w.process.pid,
                    code = ?status.code,
                    signal = ?status.signal,
                    oom_killed = status.oom_killed,
                    "Worker exited."
                );
                w.exit = Some(status);
                w.ended = Some(now);
            }
        }
    }

    /// Asks every live worker for readiness and metrics at once.
    async fn probe_workers(&mut self) {
        let probes = self
            .workers
            .iter()
            .filter(|w| w.alive())
            .map(|w| (w.process.id.clone(), w.process.port))
            .collect::<Vec<_>>();
        let results =
            futures::future::join_all(probes.iter().map(|(_, port)| probe(&self.http, *port)))
                .await;
        for ((id, _), result) in probes.into_iter().zip(results) {
            let Some(w) = self.workers.iter_mut().find(|w| w.process.id == id) else {
                continue;
            };
            if let Some(ready) = result.ready {
                w.ready = ready;
                w.ever_ready |= ready;
                if ready && w.ready_at.is_none() {
                    w.ready_at = Some(self.clock.elapsed());
                }
            } else {
                w.ready = false;
            }
            // A failed scrape leaves the last values.
            if let Some(m) = result.metrics {
                if let Some(n) = m.in_flight {
                    w.in_flight = n;
                }
                if let Some(n) = m.tasks_done {
                    w.tasks_done = n;
                }
                w.asks_restart = m.restart_requested;
                if !m.retained.is_empty() {
                    let sample = RetainedSample {
                        tasks_done: w.tasks_done,
                        retained: m.retained,
                    };
                    if w.first_retained.is_none() {
                        w.first_retained = Some(sample.clone());
                    }
                    w.latest_retained = Some(sample);
                }
            }
        }
    }

    /// Reads every live worker's memory from `/proc`; a failed read keeps the last reading,
    /// which then ages.
    fn read_memory(&mut self, now: Duration) {
        for w in self.workers.iter_mut().filter(|w| w.alive()) {
            if let Some(m) = self.memory.read(w.process.pid) {
                w.memory = Some((m.usage, m.cgroup_limit, now));
                w.peak_rss = w.peak_rss.max(m.rss);
            }
        }
    }

    /// Adds the readings taken at `now` to the memory series.
    fn record_rss(&mut self, now: Duration) {
        let fresh = self.workers.iter().filter(|w| w.alive()).filter_map(|w| {
            let (usage, _, at) = w.memory?;
            (at == now).then_some((w.process.id.as_str(), usage))
        });
        self.rss.record(now, fresh);
    }

    async fn read_backlog(&mut self) -> Option<Backlog> {
        let key = self.job.spec.queue.key.clone();
        let read = tokio::time::timeout(
            self.job.check_interval,
            queue::backlog(&mut self.redis, &key),
        )
        .await;
        match read {
            Ok(Ok(b)) => Some(b),
            Ok(Err(error)) => {
                debug!(%error, "Cannot read the backlog.");
                None
            }
            Err(_) => None,
        }
    }

    /// Starts the next worker, with the job's test-only leak while fewer than
    /// `--leaky-workers` live workers that stay (not draining, not in `leaving`) leak.
    fn start_worker(&mut self, now: Duration, leaving: &HashSet<String>) -> Result<(), LocalError> {
        let id = format!("local-{}", self.next_worker);
        self.next_worker += 1;
        let taken: HashSet<u16> = self.workers.iter().map(|w| w.process.port).collect();
        let port = free_port(self.base_port, &taken).ok_or_else(|| {
            LocalError::Process(super::process::ProcessError::NoPort {
                worker: id.clone(),
                from: self.base_port,
            })
        })?;
        let staying_leaky = self
            .workers
            .iter()
            .filter(|w| w.process.leaky && w.alive() && w.draining.is_none())
            .filter(|w| !leaving.contains(&w.process.id))
            .count();
        let leaky = next_worker_leaks(
            job_leaks(&self.job),
            self.launch.leaky_workers,
            staying_leaky,
        );
        let process =
            WorkerProcess::spawn(&self.launch, &id, port, leaky).map_err(LocalError::Process)?;
        info!(worker = %id, pid = process.pid, port, leaky, log = %process.log.display(), "Worker started.");
        self.workers.push(Tracked {
            process,
            started: now,
            draining: None,
            asked: None,
            exit: None,
            ended: None,
            ever_ready: false,
            ready_at: None,
            ready: false,
            in_flight: 0,
            tasks_done: 0,
            asks_restart: false,
            memory: None,
            peak_rss: 0,
            first_retained: None,
            latest_retained: None,
            counted: None,
            has_event: false,
            stopping: false,
        });
        Ok(())
    }

    /// Drains (SIGTERM) or kills (SIGKILL) a worker for `reason`, and records the restart.
    fn stop_worker(
        &mut self,
        id: &str,
        reason: RestartReason,
        memory_bytes: Option<u64>,
        signal: Signal,
        now: Duration,
    ) {
        let Some(w) = self
            .workers
            .iter_mut()
            .find(|w| w.process.id == id && w.alive())
        else {
            return;
        };
        let rss_at_signal = self.memory.read(w.process.pid).map(|m| m.rss);
        if let Err(error) = w.process.signal(signal) {
            error!(worker = %id, %error, "Cannot signal a worker.");
            return;
        }
        let unix_ms = unix_millis();
        w.draining = Some((reason, now, signal == Signal::SIGKILL));
        w.asked = Some(reason);
        let memory_reason = matches!(
            reason,
            RestartReason::MemorySoft | RestartReason::MemoryHard
        );
        let leak = if memory_reason {
            w.leak(&self.leak_threshold)
        } else {
            None
        };
        let action = if signal == Signal::SIGKILL {
            "kill"
        } else {
            "drain"
        };
        let leak_message = leak
            .as_ref()
            .map_or("no stage stands out", |l| l.message.as_str());
        if memory_reason {
            warn!(
                worker = %id,
                pid = w.process.pid,
                reason = reason.as_str(),
                memory_bytes = ?memory_bytes,
                rss_at_signal = ?rss_at_signal,
                soft_bytes = ?self.job.soft_bytes,
                "Worker {action} for memory: {leak_message}."
            );
        } else {
            info!(worker = %id, pid = w.process.pid, reason = reason.as_str(), "Worker {action}.");
        }
        w.has_event = true;
        self.events.push(RestartEvent {
            worker: id.to_owned(),
            pid: w.process.pid,
            reason: reason.as_str().to_owned(),
            action: action.to_owned(),
            at_ms: millis(now),
            unix_ms,
            memory_bytes,
            rss_at_signal,
            tasks_done: w.tasks_done,
            leak,
        });
    }

    /// Forgets an exited worker: counts its reason once, requeues what it held. A failed
    /// requeue leaves it for the next round (the count is not repeated).
    async fn reap(&mut self, id: &str, reason: Option<RestartReason>, now: Duration) {
        let Some(index) = self.workers.iter().position(|w| w.process.id == id) else {
            return;
        };
        let key = self.job.spec.queue.key.clone();
        let w = &mut self.workers[index];
        if w.counted.is_none() {
            w.counted = Some(reason);
            if let Some(r) = reason {
                *self.restarts.entry(r).or_insert(0) += 1;
                if !w.has_event {
                    w.has_event = true;
                    let memory = matches!(
                        r,
                        RestartReason::MemorySoft
                            | RestartReason::MemoryHard
                            | RestartReason::OomKilled
                    );
                    let leak = if memory {
                        w.leak(&self.leak_threshold)
                    } else {
                        None
                    };
                    let status = w.exit.clone().unwrap_or_default();
                    let leak_message = leak
                        .as_ref()
                        .map_or("no stage stands out", |l| l.message.as_str());
                    warn!(
                        worker = %id,
                        reason = r.as_str(),
                        code = ?status.code,
                        signal = ?status.signal,
                        "Worker ended on its own: {leak_message}."
                    );
                    let at = w.ended.unwrap_or(now);
                    self.events.push(RestartEvent {
                        worker: id.to_owned(),
                        pid: w.process.pid,
                        reason: r.as_str().to_owned(),
                        action: "exit".to_owned(),
                        at_ms: millis(at),
                        unix_ms: unix_millis(),
                        memory_bytes: w.memory.map(|m| m.0),
                        rss_at_signal: None,
                        tasks_done: w.tasks_done,
                        leak,
                    });
                }
            }
            if w.exit
                .as_ref()
                .is_some_and(|e| e.code == Some(policy::ExitReason::Config.code()))
            {
                error!(worker = %id, log = %w.process.log.display(), "Worker refused its configuration (exit 78); see its log.");
                self.config_error_log = Some(w.process.log.clone());
            }
            if reason == Some(RestartReason::Crashed) && !w.ever_ready {
                self.early_crashes += 1;
                self.crash_log = Some(w.process.log.clone());
                warn!(worker = %id, log = %w.process.log.display(), "Worker crashed before it was ready; see its log.");
            } else if w.ever_ready {
                self.early_crashes = 0;
            }
        }
        match queue::requeue_worker(&mut self.redis, &key, id).await {
            Ok(ids) => {
                self.requeued += ids;
                if ids > 0 {
                    info!(worker = %id, ids, "Requeued what an exited worker held.");
                }
                let w = self.workers.remove(index);
                let counted = w.counted.flatten();
                self.finished.push(w.summary(counted));
            }
            Err(error) => {
                warn!(worker = %id, %error, "Cannot requeue an exited worker's ids; retrying next round.")
            }
        }
    }

    /// Logs each report once while it holds, and keeps it for the summary.
    fn report(&mut self, reports: &[Report]) {
        let current: BTreeSet<String> = reports.iter().map(describe).collect();
        for text in current.difference(&self.reports) {
            warn!("{text}");
        }
        for report in reports {
            // Throttling is one line in the summary, naming every worker that waited.
            if let Report::RestartsThrottled { waiting } = report {
                self.throttled.extend(waiting.iter().cloned());
                continue;
            }
            let text = describe(report);
            if !self.reported.contains(&text) {
                self.reported.push(text);
            }
        }
        self.reports = current;
    }

    /// The reports for the summary: each condition once, throttling as one line.
    fn reported(&self) -> Vec<String> {
        let mut out = self.reported.clone();
        if !self.throttled.is_empty() {
            let mut waited: Vec<&String> = self.throttled.iter().collect();
            waited.sort_by_key(|w| worker_number(w));
            let names: Vec<&str> = waited.iter().map(|w| w.as_str()).collect();
            out.push(format!(
                "Restarts were throttled by memory.maxConcurrentRestarts; workers that waited: {}.",
                names.join(", ")
            ));
        }
        out
    }

    /// Kills draining workers that outlived their grace period.
    fn escalate(&mut self, now: Duration) {
        for w in self.workers.iter_mut().filter(|w| w.alive()) {
            if let Some((reason, since, false)) = w.draining
                && now.saturating_sub(since) > self.job.kill_after
            {
                warn!(worker = %w.process.id, pid = w.process.pid, "Worker still running after its grace period: killing it.");
                if w.process.signal(Signal::SIGKILL).is_ok() {
                    w.draining = Some((reason, since, true));
                }
            }
        }
    }

    /// Stops every live worker: SIGTERM, then SIGKILL after the grace period (or at a second
    /// signal); waits for each, and requeues what each held.
    async fn stop_all(
        &mut self,
        interrupt: &mut tokio::signal::unix::Signal,
        terminate: &mut tokio::signal::unix::Signal,
    ) {
        // A last look, so that the summary has every worker's latest counters and memory.
        self.collect_exits();
        self.probe_workers().await;
        let now = self.clock.elapsed();
        self.read_memory(now);
        self.record_rss(now);
        for w in self
            .workers
            .iter_mut()
            .filter(|w| w.alive() && w.draining.is_none())
        {
            if w.process.signal(Signal::SIGTERM).is_ok() {
                w.stopping = true;
            }
        }
        let deadline = tokio::time::Instant::now() + self.job.kill_after;
        let mut forced = false;
        for index in 0..self.workers.len() {
            if !self.workers[index].alive() {
                continue;
            }
            let status = loop {
                let w = &mut self.workers[index];
                tokio::select! {
                    status = w.process.wait() => break status,
                    () = tokio::time::sleep_until(deadline), if !forced => {
                        warn!("Workers still running after their grace period: killing them.");
                        forced = true;
                    }
                    _ = interrupt.recv(), if !forced => {
                        warn!("Second signal: killing the workers.");
                        forced = true;
                    }
                    _ = terminate.recv(), if !forced => {
                        forced = true;
                    }
                }
                if forced {
                    for other in self.workers.iter().filter(|w| w.alive()) {
                        let _ = other.process.signal(Signal::SIGKILL);
                    }
                }
            };
            let w = &mut self.workers[index];
            w.exit = Some(status);
            w.ended = Some(self.clock.elapsed());
        }
        // Reap: a worker that ended as asked finished normally; anything else is counted.
        let ids: Vec<(String, Option<RestartReason>)> = self
            .workers
            .iter()
            .map(|w| {
                let status = w.exit.clone().unwrap_or_default();
                // Ended by the signal we sent to stop it: not a restart.
                let by_our_signal = w.stopping && matches!(status.signal, Some(9 | 15));
                let reason = if by_our_signal {
                    None
                } else {
                    policy::classify_exit(&status, w.asked)
                };
                (w.process.id.clone(), reason)
            })
            .collect();
        let now = self.clock.elapsed();
        for (id, reason) in ids {
            self.reap(&id, reason, now).await;
        }
    }

    async fn read_stats(&mut self) {
        let key = format!("{}:stats", self.queue_key());
        let read = tokio::time::timeout(
            Duration::from_secs(2),
            redis::cmd("HGETALL")
                .arg(&key)
                .query_async::<BTreeMap<String, u64>>(&mut self.redis),
        )
        .await;
        if let Ok(Ok(stats)) = read {
            self.stats = stats;
        }
    }

    fn stat(&self, field: &str) -> u64 {
        self.stats.get(field).copied().unwrap_or(0)
    }

    /// Tasks finished: indexed, filtered, skipped and dead.
    fn done(&self) -> u64 {
        stat::FINISHED.iter().map(|f| self.stat(f)).sum()
    }

    fn show_progress(&mut self, now: Duration, backlog: Option<Backlog>) {
        let live: Vec<&Tracked> = self.workers.iter().filter(|w| w.alive()).collect();
        let figures = Figures {
            done: self.done(),
            backlog: backlog.map(Backlog::total),
            ready: live.iter().filter(|w| w.ready).count(),
            workers: live.len(),
            restarts: self
                .restarts
                .iter()
                .filter(|&(_, &n)| n > 0)
                .map(|(r, n)| format!("{} {n}", r.as_str()))
                .collect(),
        };
        self.progress.update(now, &figures);
    }

    fn summary(&self, outcome: Outcome) -> Summary {
        let wall = self.clock.elapsed().as_secs_f64();
        #[allow(clippy::cast_precision_loss)] // display only
        let finished = self.done().saturating_sub(self.stats_at_start) as f64;
        let mut workers = self.finished.clone();
        workers.extend(self.workers.iter().map(|w| w.summary(w.counted.flatten())));
        workers.sort_by_key(|w| (w.started_ms, worker_number(&w.id)));
        Summary {
            outcome,
            queue: self.job.spec.queue.key.clone(),
            index: self.job.spec.sink.index.clone(),
            indexed: self.stat(stat::INDEXED),
            filtered: self.stat(stat::FILTERED),
            skipped: self.stat(stat::SKIPPED),
            dead: self.stat(stat::DEAD),
            retried: self.stat(stat::RETRIED),
            requeued_ids: self.requeued,
            recovered_ids: self.recovered,
            restarts: summary::restart_counts(&self.restarts),
            leaking_stage: summary::leaking_stage(&self.events),
            restart_events: self.events.clone(),
            docs_per_second: if wall > 0.0 { finished / wall } else { 0.0 },
            wall_seconds: wall,
            memory: MemoryLimits {
                limit_bytes: self.job.memory_limit,
                soft_bytes: self.job.soft_bytes,
                hard_bytes: self.job.hard_bytes,
                worker_limit_bytes: self.job.worker_memory_limit,
            },
            workers,
            reports: self.reported(),
        }
    }
}

/// A report as one line, without the parts that change every round (ages, usages), so that
/// the same condition is logged once.
fn describe(report: &Report) -> String {
    match report {
        Report::AllOverSoftLimit { workers } => format!(
            "All {workers} workers are above the soft memory limit: the limit is probably too low for the workload; restarting them one budget at a time."
        ),
        Report::RestartsThrottled { waiting } => {
            format!(
                "Restarts throttled by memory.maxConcurrentRestarts; waiting: {}.",
                waiting.join(", ")
            )
        }
        Report::AwaitingReplacement { waiting } => format!(
            "Working on until a replacement is ready: {}.",
            waiting.join(", ")
        ),
        Report::StaleReading { worker, .. } => {
            format!("Memory reading of {worker} is stale; not acting on it.")
        }
        Report::MissingReading { worker } => format!("No memory reading from {worker}."),
        Report::OomKilled { worker, .. } => format!(
            "{worker} was killed by the kernel's OOM killer: raise the memory limit or lower memory.soft."
        ),
        Report::ConfigError { worker } => {
            format!("{worker} exited with a configuration error (78): no new workers start.")
        }
        Report::BacklogUnknown => "The queue cannot be read; keeping the worker count.".to_owned(),
    }
}

/// Whether the job makes its workers leak on purpose (`testOnly.leakBytesPerTask`).
pub(super) fn job_leaks(job: &LocalJob) -> bool {
    job.spec
        .test_only
        .as_ref()
        .is_some_and(|t| t.leak_bytes_per_task > 0)
}

/// Whether a worker started now runs the job's test-only leak: never when the job has none;
/// always without a `limit` (`--leaky-workers`); else only while fewer than `limit` live
/// workers that are staying (not draining) leak, so a leaky worker drained for memory gets a
/// leaky replacement and the others keep running without the leak.
fn next_worker_leaks(job_leaks: bool, limit: Option<usize>, staying_leaky: usize) -> bool {
    job_leaks && limit.is_none_or(|k| staying_leaky < k)
}

fn worker_number(id: &str) -> u64 {
    id.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A condition that holds over several rounds is one line, however its age changes, so it
    /// is logged once.
    #[test]
    fn a_report_reads_the_same_while_only_its_age_changes() {
        let at = |secs| {
            describe(&Report::StaleReading {
                worker: "local-3".into(),
                age: Duration::from_secs(secs),
            })
        };
        assert_eq!(at(11), at(12));
        let oom = |usage| {
            describe(&Report::OomKilled {
                worker: "local-1".into(),
                last_usage_bytes: usage,
            })
        };
        assert_eq!(oom(Some(1)), oom(Some(2)));
        assert_ne!(at(11), oom(None));
    }

    /// `--leaky-workers 1` with three workers: the first leaks, the next two do not; the
    /// leaky one's replacement (started while it drains) leaks again, a calm one's does not.
    #[test]
    fn at_most_the_asked_number_of_staying_workers_leak() {
        let one = Some(1);
        assert!(next_worker_leaks(true, one, 0), "the first worker leaks");
        assert!(!next_worker_leaks(true, one, 1), "the second does not");
        assert!(!next_worker_leaks(true, one, 1), "nor the third");
        assert!(
            next_worker_leaks(true, one, 0),
            "the replacement of the drained leaky worker leaks"
        );
        assert!(next_worker_leaks(true, Some(2), 1));
        assert!(!next_worker_leaks(true, Some(0), 0), "zero: none leaks");
        assert!(
            next_worker_leaks(true, None, 7),
            "no limit: every worker leaks"
        );
        assert!(
            !next_worker_leaks(false, None, 0),
            "a job without a leak has no leaky worker"
        );
    }

    #[test]
    fn workers_sort_by_their_number() {
        assert_eq!(worker_number("local-12"), 12);
        assert_eq!(worker_number("odd"), 0);
    }
}
