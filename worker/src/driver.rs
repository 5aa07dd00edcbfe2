//! The driver: composes the stages into the running worker, in the order the data flows.
//!
//! ```text
//! taker ──permit──► BLMOVE ──► task: parse id ─► source ─► enrich ─► keywords ─┐
//!   (Semaphore of workers.concurrency:                                          │ bounded mpsc
//!    a permit covers stages A–D and is                                          ▼
//!    given back when the document joins a batch)  ack / dead-letter / retry ◄── batcher: bulk send
//! ```
//!
//! - **Taking.** One taker loop takes a permit first (plus any other free ones, up to
//!   [`TAKE_BATCH`]), then as many ids as it holds permits: in one round trip when ids are
//!   waiting, by a blocking pop when the queue is empty. So at most `workers.concurrency` tasks
//!   are in stages A–D at any time.
//! - **Per task.** A bad id is dead-lettered at stage `queue`; a missing main row follows
//!   `source.onMissingRow`; a transient MySQL error (connection lost, timeout) is waited out
//!   with backoff and the same task tried again in-process, without consuming an attempt and
//!   with `/readyz` false meanwhile; any other failure asks for a retry (a new delivery) or a
//!   dead letter as the stage says. A document dropped by a black/whitelist is acknowledged as
//!   filtered.
//! - **Batching.** One batcher owns the bulk request. A document that joins it gives its
//!   permit back, so batches fill to `sink.batchDocs` or `sink.batchBytes` whatever the
//!   concurrency; its id stays unacknowledged until the bulk answer (at-least-once and the
//!   idempotent `_id` are unchanged). A batch is sent when full, when no document joined it for
//!   `sink.batchLingerMs`, when `sink.flushIntervalMs` passed since its first document, or at
//!   once when the queue ran empty and no task is left in stages A–D. A document bigger than
//!   `sink.batchBytes` goes in a request of its own. Up to [`BULKS_IN_FLIGHT`] requests are
//!   sent at once, so the index works on one batch while the next fills. What a worker holds is
//!   bounded (see [`Batcher`]): `concurrency + 3 × batchDocs` ids and `3 × batchBytes` of bulk
//!   body. Each item's result then ends its task: indexed → ack with its keyword counts,
//!   rejected → dead letter at stage `sink`, failed → retry; the acks of one response go to
//!   Redis in one script call.
//! - **Stopping.** SIGTERM, the recycle count, the soft memory level (unless supervised: then
//!   the worker asks its supervisor for a restart and works on until it is granted, see
//!   `migrate_contract::restart`), or an empty queue in drain mode stop the taking; tasks in
//!   flight finish, the last batch is sent and acknowledged, and the process exits with the matching [`ExitReason`] within
//!   `workers.terminationGracePeriodSeconds`. Past that, or at the hard memory level (at once),
//!   unfinished ids stay in the processing list; on every exit but the hard one the worker
//!   puts them back into the queue itself.
//!
//! Around the pipeline run the heartbeat, the keyword reloader, the memory watch, the readiness
//! refresher, the queue-lag sampler and the HTTP server (`/metrics`, `/healthz`, `/readyz`).

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use migrate_contract::error_chain;
use migrate_contract::keys::stat;
use migrate_contract::restart::recycle_target;
use migrate_crds::{MissingRowPolicy, Mode};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::backoff::{Retries, sleep_or_cancel};
use crate::config::WorkerConfig;
use crate::enrich::{EnrichFailure, Enricher};
use crate::exit::{ExitReason, write_termination_log};
use crate::http::{HttpState, ReadyFlag};
use crate::keywords::{Keywords, KeywordsHandle};
use crate::memory::{
    Level, MemoryLimits, MemoryWatch, enter_stage, in_stage, read_cgroup, read_rss,
};
use crate::metrics::WorkerMetrics;
use crate::queue::{Queue, Settled, Taken};
use crate::sink::{BulkBuilder, BulkRequest, ItemResult, Pushed, Sink};
use crate::source::Source;
use crate::stage::Stage;
use crate::task::{DeadLetter, Document, Outcome, TaskId, shown_id};

/// Most ids taken in one round trip (when that many permits are free).
const TAKE_BATCH: usize = 64;
/// Bulk requests in flight at once (the index works on one while the next fills).
const BULKS_IN_FLIGHT: usize = 2;
/// How often the keyword files are checked for changes.
const KEYWORDS_RELOAD_EVERY: Duration = Duration::from_secs(5);
/// How often readiness is recomputed from the connection states.
const READINESS_EVERY: Duration = Duration::from_millis(200);
/// How often the queue-lag gauge is updated.
const QUEUE_LAG_EVERY: Duration = Duration::from_secs(1);
/// Longest wait for Redis when putting leftovers back at exit.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs the worker until it drains, is told to stop, or must stop; returns why (the process
/// exit code is [`ExitReason::code`]). The reason is also written to `/dev/termination-log`.
pub async fn run(config: WorkerConfig, shutdown: CancellationToken) -> ExitReason {
    let (reason, detail) = match Worker::start(config, &shutdown).await {
        Ok(Some(worker)) => {
            let metrics = Arc::clone(&worker.shared.metrics);
            let (reason, detail) = worker.run(shutdown).await;
            // A drained run that dead-lettered anything says so at the end, with the count.
            match metrics.tasks_with(stat::DEAD) {
                dead if dead > 0 && reason == ExitReason::Drained => {
                    warn!(
                        dead,
                        "Drained with dead letters: {dead} tasks went to the dead-letter list."
                    );
                    (reason, format!("{detail}; {dead} tasks dead-lettered"))
                }
                _ => (reason, detail),
            }
        }
        Ok(None) => (
            ExitReason::Drained,
            "stopped before Redis was reachable".to_owned(),
        ),
        Err((reason, detail)) => {
            error!(reason = reason.as_str(), %detail, "Worker cannot start.");
            (reason, detail)
        }
    };
    info!(reason = reason.as_str(), code = reason.code(), %detail, "Worker exiting.");
    write_termination_log(reason, &detail);
    reason
}

/// Cancels `token` on the first SIGTERM or SIGINT.
///
/// # Errors
/// When the signal handlers cannot be installed.
pub fn cancel_on_signals(token: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(
            signal = name,
            "Stop requested: finishing the tasks in flight."
        );
        token.cancel();
    });
    Ok(())
}

/// Bytes deliberately leaked by the test-only knob, kept alive until the process exits.
static LEAKED: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// TEST ONLY: leaks `bytes` attributed to `stage`, touching every page so RSS grows.
fn leak(stage: Stage, bytes: u64) {
    let Ok(len) = usize::try_from(bytes) else {
        return;
    };
    let _stage = enter_stage(stage);
    let mut block = vec![0u8; len];
    for byte in block.iter_mut().step_by(4096) {
        *byte = 1;
    }
    // Unbounded on purpose: this knob exists to make a worker grow until it is replaced.
    LEAKED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(block);
}

/// Counts a task as in flight from the moment it is taken until it is finished (or given
/// up), and holds its concurrency permit through stages A–D: the batcher gives the permit back
/// when the document joins a bulk request ([`Slot::release_permit`]), so a document waiting
/// for its batch to fill does not keep another task from starting.
struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    shared: Arc<Shared>,
    /// Its entry in [`Shared::held`].
    ticket: u64,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, shared: &Arc<Shared>) -> Self {
        let n = shared.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        shared
            .metrics
            .set_in_flight(i64::try_from(n).unwrap_or(i64::MAX));
        let ticket = shared
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(Instant::now());
        Self {
            permit: Some(permit),
            shared: Arc::clone(shared),
            ticket,
        }
    }

    /// Frees the concurrency permit; the task stays in flight (held in Redis, counted in
    /// `migrate_in_flight`) until it is finished.
    fn release_permit(&mut self) {
        self.permit = None;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(self.ticket);
        let n = self
            .shared
            .in_flight
            .fetch_sub(1, Ordering::AcqRel)
            .saturating_sub(1);
        self.shared
            .metrics
            .set_in_flight(i64::try_from(n).unwrap_or(i64::MAX));
        self.shared.in_flight_changed.notify_one();
    }
}

/// When each task this worker holds was taken, by ticket. Tickets increase, so the first
/// entry is the oldest task. One entry per [`Slot`]: at most the bound on tasks held (see
/// [`Batcher`]).
#[derive(Debug, Default)]
struct Held {
    next: u64,
    since: BTreeMap<u64, Instant>,
}

impl Held {
    /// Records a task taken at `at`; returns its ticket.
    fn insert(&mut self, at: Instant) -> u64 {
        let ticket = self.next;
        self.next += 1;
        self.since.insert(ticket, at);
        ticket
    }

    fn remove(&mut self, ticket: u64) {
        self.since.remove(&ticket);
    }

    /// How long the oldest task held has been held at `now`; zero when none is.
    fn oldest_age(&self, now: Instant) -> Duration {
        self.since
            .first_key_value()
            .map_or(Duration::ZERO, |(_, &at)| now.saturating_duration_since(at))
    }
}

/// What every task and background loop shares.
struct Shared {
    worker_id: String,
    mode: Mode,
    drain_settle: Duration,
    grace: Duration,
    on_missing_row: MissingRowPolicy,
    leak: Option<(Stage, u64)>,
    recycle_at: Option<u64>,
    /// A supervisor grants restarts: the soft line asks for one instead of stopping.
    supervised: bool,
    /// Set once the soft line was crossed while supervised: the restart is asked for.
    asking: AtomicBool,

    queue: Queue,
    source: Source,
    enricher: Enricher,
    keywords: KeywordsHandle,
    sink: Sink,

    metrics: Arc<WorkerMetrics>,
    ready: Arc<ReadyFlag>,
    mysql_ok: AtomicBool,

    permits: Arc<Semaphore>,
    /// The last take found fewer ids than it asked for: the queue ran empty.
    queue_drained: AtomicBool,
    in_flight: AtomicUsize,
    in_flight_changed: Notify,
    /// When each task in flight was taken (for the queue-lag gauge).
    held: Mutex<Held>,
    tasks_finished: AtomicU64,

    /// Stop taking new ids (drain, recycle, memory soft, SIGTERM).
    stop_taking: CancellationToken,
    /// Stop everything now (grace period over, memory hard).
    hard_stop: CancellationToken,
    reason: Mutex<Option<(ExitReason, String)>>,
}

impl Shared {
    /// Records why the worker stops (the first reason wins, except that the hard memory level
    /// overrides everything) and stops the taking.
    fn stop(&self, reason: ExitReason, detail: String) {
        {
            let mut current = self.reason.lock().unwrap_or_else(PoisonError::into_inner);
            if current.is_none() || reason == ExitReason::MemoryHard {
                info!(reason = reason.as_str(), %detail, "Worker stopping.");
                *current = Some((reason, detail));
            }
        }
        self.stop_taking.cancel();
        if reason == ExitReason::MemoryHard {
            self.hard_stop.cancel();
        }
    }

    fn reason(&self) -> Option<(ExitReason, String)> {
        self.reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// A document on its way to the batcher, with what its acknowledgement needs.
struct BatchItem {
    raw: String,
    id: TaskId,
    doc: Document,
    counts: Vec<(String, u64)>,
    slot: Slot,
}

/// A document in the bulk request being filled.
struct Pending {
    raw: String,
    id: TaskId,
    counts: Vec<(String, u64)>,
    slot: Slot,
    pushed: Instant,
}

/// The running worker, between start-up and exit.
struct Worker {
    shared: Arc<Shared>,
    memory: MemoryWatch,
    /// Whether the soft and hard levels stop the worker (not under `testOnly.noMemoryRestarts`).
    memory_restarts: bool,
    /// Stops the background loops (the HTTP server runs from start-up on).
    background: CancellationToken,
    http: tokio::task::JoinHandle<()>,
    keywords_spec: migrate_crds::KeywordsSpec,
    keywords_dir: std::path::PathBuf,
    batch_capacity: usize,
}

type StartError = (ExitReason, String);

fn config_error(what: &str, error: &dyn StdError) -> StartError {
    (
        ExitReason::Config,
        format!("{what}: {}", error_chain(error)),
    )
}

impl Worker {
    /// Builds every stage from the configuration and connects to Redis (waiting for it with
    /// backoff). `Ok(None)` when shutdown came first.
    async fn start(
        config: WorkerConfig,
        shutdown: &CancellationToken,
    ) -> Result<Option<Self>, StartError> {
        let spec = &config.spec;
        let leak = match &spec.test_only {
            Some(t) if t.leak_bytes_per_task > 0 => {
                let stage = Stage::from_name(&t.leak_stage).ok_or_else(|| {
                    (
                        ExitReason::Config,
                        format!("testOnly.leakStage {:?} is not a stage name", t.leak_stage),
                    )
                })?;
                warn!(
                    bytes_per_task = t.leak_bytes_per_task,
                    stage = stage.as_str(),
                    "TEST ONLY: this worker leaks memory on purpose after every task (spec.testOnly). Never use this in production."
                );
                Some((stage, t.leak_bytes_per_task))
            }
            _ => None,
        };
        let memory_restarts = !spec
            .test_only
            .as_ref()
            .is_some_and(|t| t.no_memory_restarts);
        if !memory_restarts {
            warn!(
                "TEST ONLY: memory.soft and memory.hard stop nothing (spec.testOnly.noMemoryRestarts): a leak ends in the kernel's OOM killer. Never use this in production."
            );
        }
        info!(
            worker = %config.worker_id,
            queue = %spec.queue.key,
            index = %spec.sink.index,
            concurrency = spec.workers.concurrency,
            mode = ?spec.mode,
            "Worker starting."
        );

        let limits = MemoryLimits::resolve(
            spec,
            config.memory_limit_bytes,
            read_cgroup().and_then(|c| c.max),
        )
        .map_err(|e| config_error("memory limits", &e))?;
        info!(limit = ?limits.limit, source = ?limits.source, soft = ?limits.soft, hard = ?limits.hard, "Memory thresholds.");
        let memory = MemoryWatch::new(
            limits,
            Duration::from_millis(u64::from(spec.memory.check_interval_ms)),
        );

        let source =
            Source::new(&spec.source, &config.mysql_url).map_err(|e| config_error("source", &e))?;
        let enricher = Enricher::new(&spec.enrich).map_err(|e| config_error("enrich", &e))?;
        let keywords = Keywords::load(&spec.keywords, &config.keywords_dir)
            .map_err(|e| config_error("keywords", &e))?;
        let sink = Sink::new(
            &spec.sink,
            &config.search_url,
            config.search_username.as_deref(),
            config.search_password.as_deref(),
        )
        .map_err(|e| {
            let reason = if e.is_config() {
                ExitReason::Config
            } else {
                ExitReason::Fatal
            };
            (reason, format!("sink: {}", error_chain(&e)))
        })?;
        // sink.createIndex: the index exists before the first document is sent.
        match sink.prepare_index().await {
            Ok(prepared) => debug!(index = sink.index(), ?prepared, "Index prepared."),
            Err(e) => {
                let reason = if e.is_config() {
                    ExitReason::Config
                } else {
                    ExitReason::Fatal
                };
                return Err((reason, format!("sink: {}", error_chain(&e))));
            }
        }
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| {
                (
                    ExitReason::Fatal,
                    format!("cannot listen on {}: {e}", config.listen),
                )
            })?;

        // The endpoints answer from here on (/healthz while Redis is still awaited).
        let metrics = Arc::new(WorkerMetrics::new());
        metrics.set_memory(&memory.sample());
        let ready = Arc::new(ReadyFlag::new("connecting to redis"));
        let background = CancellationToken::new();
        let http_state = HttpState {
            metrics: Arc::clone(&metrics),
            ready: Arc::clone(&ready),
        };
        let http = tokio::spawn(crate::http::serve(listener, http_state, background.clone()));
        let http = tokio::spawn(async move {
            match http.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => error!(error = %error_chain(&e), "HTTP server stopped."),
                Err(e) => error!(error = %e, "HTTP server task failed."),
            }
        });
        let stop_http = |result| {
            background.cancel();
            result
        };

        let queue = match connect_queue(&config, shutdown).await {
            Ok(Some(queue)) => queue,
            other => return stop_http(other.map(|_| None)),
        };
        let mut backoff = Retries::default();
        loop {
            match queue.recover_own().await {
                Ok(0) => break,
                Ok(n) => {
                    info!(
                        ids = n,
                        "Put back the ids a previous run of this worker left in its processing list."
                    );
                    break;
                }
                Err(e) if e.is_transient() => {
                    if sleep_or_cancel(backoff.next_delay(), shutdown).await {
                        return stop_http(Ok(None));
                    }
                }
                Err(e) => return stop_http(Err((ExitReason::Fatal, error_chain(&e)))),
            }
        }

        let workers = &spec.workers;
        // The supervisor computes the same target from the same id, so it neither drains this
        // worker early nor waits for it past its count.
        let recycle_at = workers
            .recycle_after_tasks
            .map(|n| recycle_target(&config.worker_id, n, workers.recycle_jitter_percent));
        if let Some(n) = recycle_at {
            info!(
                tasks = n,
                "This worker recycles itself after this many tasks."
            );
        }
        let concurrency = usize::try_from(workers.concurrency.max(1)).unwrap_or(1);
        let grace = Duration::from_secs(
            u64::try_from(workers.termination_grace_period_seconds.max(1)).unwrap_or(1),
        );
        let shared = Arc::new(Shared {
            worker_id: config.worker_id.clone(),
            mode: spec.mode,
            drain_settle: Duration::from_secs(u64::from(workers.drain_settle_seconds)),
            // Leave room to put unfinished ids back before a supervisor's SIGKILL.
            grace: grace.saturating_sub(Duration::from_secs(2)).max(grace / 2),
            on_missing_row: spec.source.on_missing_row,
            leak,
            recycle_at,
            supervised: config.supervised,
            asking: AtomicBool::new(false),
            queue,
            source,
            enricher,
            keywords: KeywordsHandle::new(keywords),
            sink,
            metrics,
            ready,
            mysql_ok: AtomicBool::new(true),
            permits: Arc::new(Semaphore::new(concurrency)),
            queue_drained: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            in_flight_changed: Notify::new(),
            held: Mutex::new(Held::default()),
            tasks_finished: AtomicU64::new(0),
            // Not a child of `shutdown`: every stop goes through `Shared::stop`, which records why.
            stop_taking: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            reason: Mutex::new(None),
        });
        Ok(Some(Self {
            shared,
            memory,
            memory_restarts,
            background,
            http,
            keywords_spec: spec.keywords.clone(),
            keywords_dir: config.keywords_dir.clone(),
            batch_capacity: usize::try_from(spec.sink.batch_docs.max(1)).unwrap_or(1),
        }))
    }

    /// Runs the pipeline and the background loops; returns the exit reason and a detail.
    async fn run(self, shutdown: CancellationToken) -> (ExitReason, String) {
        let Worker {
            shared,
            memory,
            memory_restarts,
            background,
            http,
            keywords_spec,
            keywords_dir,
            batch_capacity,
        } = self;
        let mut loops = JoinSet::new();
        let reloader = shared.keywords.spawn_reloader(
            keywords_spec,
            keywords_dir,
            KEYWORDS_RELOAD_EVERY,
            background.clone(),
        );
        loops.spawn(watch_memory(
            Arc::clone(&shared),
            memory,
            memory_restarts,
            background.clone(),
        ));
        loops.spawn(heartbeat(Arc::clone(&shared), background.clone()));
        loops.spawn(refresh_readiness(Arc::clone(&shared), background.clone()));
        loops.spawn(sample_queue_lag(Arc::clone(&shared), background.clone()));
        loops.spawn(grace_timer(Arc::clone(&shared), background.clone()));
        {
            let shared = Arc::clone(&shared);
            let stop_taking = shared.stop_taking.clone();
            loops.spawn(async move {
                tokio::select! {
                    () = shutdown.cancelled() => shared.stop(ExitReason::Drained, "stop requested (SIGTERM or SIGINT)".to_owned()),
                    () = stop_taking.cancelled() => {}
                }
            });
        }

        // The pipeline: taker → tasks → batcher, until everything taken is finished.
        let pipeline = async {
            let (batch_tx, batch_rx) = mpsc::channel(batch_capacity);
            let mut batcher = JoinSet::new();
            let builder = in_stage(Stage::Sink, async { shared.sink.builder() }).await;
            let batcher_state = Batcher::new(Arc::clone(&shared), builder);
            batcher.spawn(batcher_state.run(batch_rx));
            let mut tasks = JoinSet::new();
            take_loop(&shared, &mut tasks, &batch_tx).await;
            drop(batch_tx);
            while let Some(joined) = tasks.join_next().await {
                log_panic(joined);
            }
            while let Some(joined) = batcher.join_next().await {
                log_panic(joined);
            }
        };
        tokio::select! {
            () = pipeline => {}
            () = shared.hard_stop.cancelled() => {
                let held = shared.in_flight();
                warn!(in_flight = held, "Stopping without finishing the tasks in flight; their ids stay in the processing list.");
            }
        }

        let (reason, detail) = shared.reason().unwrap_or((
            ExitReason::Fatal,
            "the taker stopped without a reason".to_owned(),
        ));
        if reason != ExitReason::MemoryHard {
            match tokio::time::timeout(RELEASE_TIMEOUT, shared.queue.release_own()).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => info!(ids = n, "Put unfinished ids back into the queue."),
                Ok(Err(e)) => {
                    warn!(error = %error_chain(&e), "Could not put unfinished ids back; a supervisor will.")
                }
                Err(_) => warn!("Timed out putting unfinished ids back; a supervisor will."),
            }
        }
        // The HTTP server stops last, so /metrics showed the drain.
        background.cancel();
        if reason != ExitReason::MemoryHard {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while loops.join_next().await.is_some() {}
                let _ = reloader.await;
                let _ = http.await;
            })
            .await;
        }
        let done = shared.tasks_finished.load(Ordering::Relaxed);
        (
            reason,
            format!("{detail}; {done} tasks finished by this process"),
        )
    }
}

/// Connects to Redis, waiting with backoff while it is unreachable. `Ok(None)` on shutdown.
async fn connect_queue(
    config: &WorkerConfig,
    shutdown: &CancellationToken,
) -> Result<Option<Queue>, StartError> {
    let mut backoff = Retries::default();
    loop {
        match Queue::connect(&config.redis_url, &config.spec.queue, &config.worker_id).await {
            Ok(queue) => return Ok(Some(queue)),
            Err(e) if e.is_transient() => {
                let delay = backoff.next_delay();
                if backoff.failures() == 1 || backoff.failures().is_multiple_of(10) {
                    warn!(error = %error_chain(&e), delay_ms = delay.as_millis(), "Redis unreachable; waiting.");
                }
                if sleep_or_cancel(delay, shutdown).await {
                    return Ok(None);
                }
            }
            Err(e) => return Err(config_error("queue", &e)),
        }
    }
}

fn log_panic(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined
        && e.is_panic()
    {
        error!(error = %e, "A task panicked; its id stays in the processing list.");
    }
}

/// Takes ids while allowed: permits first (at least one, plus whatever else is free, up to
/// [`TAKE_BATCH`]), then as many ids as permits, then a task for each id.
async fn take_loop(shared: &Arc<Shared>, tasks: &mut JoinSet<()>, batch: &mpsc::Sender<BatchItem>) {
    let mut idle_since: Option<Instant> = None;
    // Ids taken by this process. A worker recycling after N tasks takes no more than N: a
    // document waiting in a batch has given its permit back, so counting permits would let it
    // take up to a few batches past its count.
    let mut taken_total: u64 = 0;
    loop {
        while let Some(joined) = tasks.try_join_next() {
            log_panic(joined);
        }
        let allowed = shared
            .recycle_at
            .map_or(u64::MAX, |target| target.saturating_sub(taken_total));
        if allowed == 0 {
            // The last tasks' completion reaches the count and stops the worker.
            shared.stop_taking.cancelled().await;
            return;
        }
        let first = tokio::select! {
            biased;
            () = shared.stop_taking.cancelled() => return,
            permit = Arc::clone(&shared.permits).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let mut permits = vec![first];
        let most = usize::try_from(allowed)
            .unwrap_or(usize::MAX)
            .min(TAKE_BATCH);
        while permits.len() < most {
            match Arc::clone(&shared.permits).try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let taken = match in_stage(
            Stage::Queue,
            shared.queue.take_up_to(permits.len(), &shared.stop_taking),
        )
        .await
        {
            Ok(taken) => taken,
            Err(e) => {
                shared.stop(
                    ExitReason::Fatal,
                    format!("cannot take from the queue: {}", error_chain(&e)),
                );
                return;
            }
        };
        shared
            .queue_drained
            .store(taken.len() < permits.len(), Ordering::Release);
        if taken.is_empty() {
            drop(permits);
            if shared.mode == Mode::Drain && !shared.stop_taking.is_cancelled() {
                if shared.in_flight() > 0 {
                    idle_since = None;
                } else if idle_since.get_or_insert_with(Instant::now).elapsed()
                    >= shared.drain_settle
                {
                    shared.stop(
                        ExitReason::Drained,
                        "queue empty and nothing in flight (drain mode)".to_owned(),
                    );
                }
            }
            continue;
        }
        idle_since = None;
        taken_total += u64::try_from(taken.len()).unwrap_or(u64::MAX);
        for (taken, permit) in taken.into_iter().zip(permits) {
            let slot = Slot::new(permit, shared);
            tasks.spawn(process(Arc::clone(shared), taken, slot, batch.clone()));
        }
    }
}

/// What reading the source gave.
enum Fetched {
    Doc(Document),
    Done(Outcome),
    /// Shutdown came while waiting for MySQL: the id stays in the processing list.
    Abandoned,
}

/// One task from its id to the batcher (or to its end, when a stage finishes it early).
async fn process(shared: Arc<Shared>, taken: Taken, slot: Slot, batch: mpsc::Sender<BatchItem>) {
    if let Some(dead) = shared.queue.used_up(&taken) {
        // Its earlier deliveries never finished: the workers holding it died, or were stopped
        // gracefully each time (a give-back does not use up an attempt, so only its own count
        // stops a task that outlasts every grace period from circulating forever).
        complete(&shared, &taken.raw, Outcome::Dead(dead), slot).await;
        return;
    }
    let raw = taken.raw;
    let id = match TaskId::parse(&raw) {
        Ok(id) => id,
        Err(e) => {
            let dead = DeadLetter {
                stage: Stage::Queue,
                reason: e.to_string(),
            };
            complete(&shared, &raw, Outcome::Dead(dead), slot).await;
            return;
        }
    };

    let started = Instant::now();
    let mut doc = match fetch(&shared, &id).await {
        Fetched::Doc(doc) => doc,
        Fetched::Done(outcome) => {
            shared
                .metrics
                .observe_stage(Stage::Source, started.elapsed());
            complete(&shared, &raw, outcome, slot).await;
            return;
        }
        Fetched::Abandoned => return,
    };
    shared
        .metrics
        .observe_stage(Stage::Source, started.elapsed());

    let started = Instant::now();
    let enriched = in_stage(Stage::Enrich, shared.enricher.enrich(&mut doc)).await;
    shared
        .metrics
        .observe_stage(Stage::Enrich, started.elapsed());
    if let Err(failure) = enriched {
        let dead = DeadLetter {
            stage: Stage::Enrich,
            reason: failure.to_string(),
        };
        let outcome = match failure {
            EnrichFailure::Retry { .. } => Outcome::Retry(dead),
            EnrichFailure::DeadLetter { .. } => Outcome::Dead(dead),
        };
        complete(&shared, &raw, outcome, slot).await;
        return;
    }

    let started = Instant::now();
    let verdict = {
        let _stage = enter_stage(Stage::Keywords);
        shared.keywords.current().apply(&mut doc)
    };
    shared
        .metrics
        .observe_stage(Stage::Keywords, started.elapsed());
    if let Some(set) = verdict.dropped_by {
        drop(doc);
        complete(&shared, &raw, Outcome::Filtered { set }, slot).await;
        return;
    }

    let item = BatchItem {
        raw,
        id,
        doc,
        counts: verdict.counts,
        slot,
    };
    if batch.send(item).await.is_err() {
        // The batcher is gone (hard stop): the id stays in the processing list.
        debug!("Batcher gone; task left for redelivery.");
    }
}

/// Reads the document, waiting out transient MySQL failures without using up an attempt.
async fn fetch(shared: &Shared, id: &TaskId) -> Fetched {
    let mut backoff = Retries::default();
    loop {
        match in_stage(Stage::Source, shared.source.fetch(id)).await {
            Ok(Some(doc)) => {
                shared.mysql_ok.store(true, Ordering::Relaxed);
                return Fetched::Doc(doc);
            }
            Ok(None) => {
                shared.mysql_ok.store(true, Ordering::Relaxed);
                return Fetched::Done(match shared.on_missing_row {
                    MissingRowPolicy::Skip => Outcome::Skipped,
                    MissingRowPolicy::DeadLetter => Outcome::Dead(DeadLetter {
                        stage: Stage::Source,
                        reason: format!("the main query returned no row for task {}", id.value),
                    }),
                });
            }
            // An outage, or settings every task would fail on alike (wrong credentials,
            // database, table or query): the task waits, using up no attempt, rather than the
            // whole queue being dead-lettered one task at a time.
            Err(e) if e.is_transient() || e.is_settings() => {
                shared.mysql_ok.store(false, Ordering::Relaxed);
                if backoff.failures() == 0 {
                    if e.is_settings() {
                        error!(task_id = id.value, error = %error_chain(&e), "MySQL rejects the job's settings: fix the URL in MIGRATE_MYSQL_URL (from source.urlSecretRef) or source.queries, then restart the workers. The task waits and uses up no attempt.");
                    } else {
                        warn!(task_id = id.value, error = %error_chain(&e), "MySQL unavailable; the task waits and tries again.");
                    }
                }
                if sleep_or_cancel(backoff.next_delay(), &shared.stop_taking).await {
                    return Fetched::Abandoned;
                }
            }
            Err(e) => {
                return Fetched::Done(Outcome::Retry(DeadLetter {
                    stage: Stage::Source,
                    reason: error_chain(&e),
                }));
            }
        }
    }
}

/// Ends a task in Redis (retrying while Redis is unreachable, until the hard stop), counts it,
/// and frees its slot.
async fn complete(shared: &Shared, raw: &str, outcome: Outcome, slot: Slot) {
    complete_many(shared, vec![(raw.to_owned(), outcome, slot)]).await;
}

/// Ends many tasks in Redis in few round trips (see [`Queue::settle_many`]), counts them and
/// frees their slots.
async fn complete_many(shared: &Shared, tasks: Vec<(String, Outcome, Slot)>) {
    if tasks.is_empty() {
        return;
    }
    let started = Instant::now();
    let mut backoff = Retries::default();
    let batch: Vec<(&str, &Outcome)> = tasks
        .iter()
        .map(|(raw, outcome, _)| (raw.as_str(), outcome))
        .collect();
    let settled = loop {
        match in_stage(Stage::Queue, shared.queue.settle_many(&batch)).await {
            Ok(settled) => break Some(settled),
            Err(e) if e.is_transient() => {
                if backoff.failures() == 0 {
                    warn!(tasks = batch.len(), error = %error_chain(&e), "Cannot finish tasks in Redis; retrying.");
                }
                if sleep_or_cancel(backoff.next_delay(), &shared.hard_stop).await {
                    break None;
                }
            }
            Err(e) => {
                error!(tasks = batch.len(), error = %error_chain(&e), "Cannot finish tasks in Redis; they stay in the processing list.");
                break None;
            }
        }
    };
    drop(batch);
    let elapsed = started.elapsed();
    for (i, (raw, outcome, slot)) in tasks.into_iter().enumerate() {
        shared.metrics.observe_stage(Stage::Queue, elapsed);
        finished(
            shared,
            &raw,
            &outcome,
            settled.as_ref().and_then(|s| s.get(i).copied()),
            slot,
        );
    }
}

/// Counts one ended task, applies the test-only leak, frees the slot, and recycles the worker
/// when its count is reached.
fn finished(shared: &Shared, raw: &str, outcome: &Outcome, settled: Option<Settled>, slot: Slot) {
    let label = match (settled, outcome) {
        // Acknowledged: the outcome's own field. A retry may have been dead-lettered instead
        // (its attempts used up), so retried and dead follow what the queue did.
        (Some(Settled::Acked), _) => Some(outcome.stats_field()),
        (Some(Settled::Retried), _) => Some(stat::RETRIED),
        (Some(Settled::DeadLettered), _) => Some(stat::DEAD),
        (Some(Settled::NotHeld), _) => {
            debug!(
                task = %shown_id(raw),
                "Task no longer held by this worker (requeued elsewhere); nothing counted."
            );
            None
        }
        (None, _) => None,
    };
    if let Some(label) = label {
        shared.metrics.task(label);
    }
    if let (Some(Settled::DeadLettered), Outcome::Dead(dead) | Outcome::Retry(dead)) =
        (settled, outcome)
    {
        warn!(task = %shown_id(raw), stage = dead.stage.as_str(), reason = %dead.reason, "Task dead-lettered.");
    }
    if let Some((stage, bytes)) = shared.leak {
        leak(stage, bytes);
    }
    let done = shared.tasks_finished.fetch_add(1, Ordering::AcqRel) + 1;
    if let Some(target) = shared.recycle_at
        && done >= target
    {
        shared.stop(ExitReason::Recycled, format!("recycled after {done} tasks"));
    }
    // The slot is freed last, so that a worker reaching its recycle count stops taking before
    // the slot can admit another id: it ends at most what it holds past the count.
    drop(slot);
}

/// The outcome of one bulk item; `None` for a document never sent, whose task stays held.
fn item_outcome(result: ItemResult, counts: Vec<(String, u64)>) -> Option<Outcome> {
    match result {
        ItemResult::Indexed => Some(Outcome::Indexed { counts }),
        ItemResult::Rejected { status, reason } => Some(Outcome::Dead(DeadLetter {
            stage: Stage::Sink,
            reason: format!("index refused the document (HTTP {status}): {reason}"),
        })),
        ItemResult::Failed { reason } => Some(Outcome::Retry(DeadLetter {
            stage: Stage::Sink,
            reason,
        })),
        ItemResult::Unsent { .. } => None,
    }
}

/// The one batcher: fills the bulk request and hands it to a sender when it is full
/// (`batchDocs` or `batchBytes`), when no document joined it for `batchLingerMs`, when
/// `flushIntervalMs` passed since its first document, when the queue ran empty with no task
/// left in stages A–D, or when the worker stops. Up to [`BULKS_IN_FLIGHT`] requests are sent
/// at once, so the index works on one batch while the next one fills. A document bigger than
/// `batchBytes` is sent in a request of its own.
///
/// A document gives its concurrency permit back when it joins a batch, and its task stays
/// held (unacknowledged in Redis) until the bulk answer. What one worker holds is therefore
/// bounded: at most `workers.concurrency` tasks in stages A–D (including those waiting to be
/// handed to the batcher), plus `batchDocs` in the batch being filled, plus `batchDocs` in
/// each of the [`BULKS_IN_FLIGHT`] requests being sent: `concurrency + 3 × batchDocs` ids, and
/// `3 × batchBytes` of bulk body (a request holding one larger document counts as one of the
/// requests in flight). The batcher stops reading new documents while the batch is full and
/// every sender busy, which holds the tasks' permits and so stops the taking.
struct Batcher {
    shared: Arc<Shared>,
    builder: BulkBuilder,
    pending: Vec<Pending>,
    /// When the last document joined the batch being filled.
    last_added: Option<Instant>,
    /// Bulk requests being sent and acknowledged; each returns its document count.
    sending: JoinSet<usize>,
    /// Documents in those requests (their tasks are still in flight).
    sending_docs: usize,
}

impl Batcher {
    fn new(shared: Arc<Shared>, builder: BulkBuilder) -> Self {
        Self {
            shared,
            builder,
            pending: Vec::new(),
            last_added: None,
            sending: JoinSet::new(),
            sending_docs: 0,
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<BatchItem>) {
        let flush_interval = self.shared.sink.flush_interval();
        let linger = self.shared.sink.linger();
        let mut open = true;
        loop {
            // No timer while every sender is busy: a due batch waits for one to finish.
            let send_at = if self.sending.len() < BULKS_IN_FLIGHT {
                self.send_at(flush_interval, linger)
            } else {
                None
            };
            tokio::select! {
                biased;
                Some(joined) = self.sending.join_next(), if !self.sending.is_empty() => self.sent(joined),
                item = rx.recv(), if open => match item {
                    Some(item) => self.push(item).await,
                    None => open = false,
                },
                () = self.shared.in_flight_changed.notified() => {}
                () = sleep_until_opt(send_at) => {}
            }
            if !self.pending.is_empty()
                && self.sending.len() < BULKS_IN_FLIGHT
                && let Some(trigger) = self.trigger(open, flush_interval, linger)
            {
                self.dispatch(trigger);
            }
            if !open && self.pending.is_empty() && self.sending.is_empty() {
                return;
            }
        }
    }

    /// When the batch being filled is due by time: the linger after its last document or the
    /// flush interval after its first, whichever comes first.
    fn send_at(&self, flush_interval: Duration, linger: Duration) -> Option<tokio::time::Instant> {
        let now = tokio::time::Instant::now();
        let by_interval = self
            .builder
            .oldest_age()
            .map(|age| now + flush_interval.saturating_sub(age));
        let by_linger = self
            .last_added
            .map(|at| now + linger.saturating_sub(at.elapsed()));
        match (by_interval, by_linger) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Why the batch being filled should be sent now (the `trigger` label of
    /// `migrate_bulk_requests_total`), or `None` to keep filling it.
    fn trigger(
        &self,
        open: bool,
        flush_interval: Duration,
        linger: Duration,
    ) -> Option<&'static str> {
        if self.builder.is_full() {
            return Some("full");
        }
        if !open {
            return Some("stop");
        }
        // Tasks still in stages A–D: in flight and neither in this batch nor being sent.
        let in_stages = self
            .shared
            .in_flight()
            .saturating_sub(self.pending.len() + self.sending_docs);
        let nothing_coming = self.shared.queue_drained.load(Ordering::Acquire)
            || self.shared.stop_taking.is_cancelled();
        if in_stages == 0 && nothing_coming {
            return Some("idle");
        }
        if self
            .builder
            .oldest_age()
            .is_some_and(|age| age >= flush_interval)
        {
            return Some("interval");
        }
        if self.last_added.is_some_and(|at| at.elapsed() >= linger) {
            return Some("linger");
        }
        None
    }

    fn sent(&mut self, joined: Result<usize, tokio::task::JoinError>) {
        match joined {
            Ok(docs) => self.sending_docs = self.sending_docs.saturating_sub(docs),
            Err(e) => {
                error!(error = %e, "A bulk sender failed; its tasks stay in the processing list.");
                // Its slots were dropped with it; recount from what is still being sent.
                self.sending_docs = self
                    .shared
                    .in_flight()
                    .saturating_sub(self.pending.len())
                    .min(self.sending_docs);
            }
        }
    }

    /// Waits until fewer than [`BULKS_IN_FLIGHT`] requests are being sent.
    async fn wait_for_a_sender(&mut self) {
        while self.sending.len() >= BULKS_IN_FLIGHT {
            if let Some(joined) = self.sending.join_next().await {
                self.sent(joined);
            }
        }
    }

    /// Adds one document to the batch; when the batch has no room, sends it first (waiting for
    /// a sender when all are busy). A document bigger than a batch is sent by itself.
    async fn push(&mut self, item: BatchItem) {
        let BatchItem {
            raw,
            id,
            doc,
            counts,
            mut slot,
        } = item;
        let mut pushed = {
            let _stage = enter_stage(Stage::Sink);
            self.builder.push(id.clone(), &doc)
        };
        if matches!(pushed, Ok(Pushed::Full)) {
            self.wait_for_a_sender().await;
            self.dispatch("full");
            let _stage = enter_stage(Stage::Sink);
            pushed = self.builder.push(id.clone(), &doc);
        }
        drop(doc);
        let dead = |reason: String| {
            Outcome::Dead(DeadLetter {
                stage: Stage::Sink,
                reason,
            })
        };
        match pushed {
            Ok(Pushed::Added) => {
                slot.release_permit();
                self.pending.push(Pending {
                    raw,
                    id,
                    counts,
                    slot,
                    pushed: Instant::now(),
                });
                self.last_added = Some(Instant::now());
            }
            Ok(Pushed::Alone(request)) => {
                self.wait_for_a_sender().await;
                slot.release_permit();
                let item = Pending {
                    raw,
                    id,
                    counts,
                    slot,
                    pushed: Instant::now(),
                };
                self.spawn_send(request, vec![item], "alone");
            }
            // An empty batch refused it: it can never be sent.
            Ok(Pushed::Full) => {
                let reason = "the document does not fit in an empty bulk request".to_owned();
                complete(&self.shared, &raw, dead(reason), slot).await;
            }
            Err(e) => complete(&self.shared, &raw, dead(error_chain(&e)), slot).await,
        }
    }

    /// Hands the current batch to a sender.
    fn dispatch(&mut self, trigger: &'static str) {
        let full = std::mem::replace(&mut self.builder, self.shared.sink.builder());
        let items = std::mem::take(&mut self.pending);
        self.last_added = None;
        if items.is_empty() {
            return;
        }
        self.spawn_send(full.finish(), items, trigger);
    }

    fn spawn_send(&mut self, request: BulkRequest, items: Vec<Pending>, trigger: &'static str) {
        let docs = items.len();
        self.sending_docs += docs;
        self.shared.metrics.bulk_sent(trigger);
        let shared = Arc::clone(&self.shared);
        self.sending.spawn(async move {
            send(&shared, request, items).await;
            docs
        });
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Sends one bulk request and ends every task in it by its item's result.
///
/// While the search server is unavailable the request waits, until the hard stop (the end of
/// the grace period once draining): documents still unsent then leave their tasks in the
/// processing list, to be requeued at exit with no attempt used.
async fn send(shared: &Shared, request: BulkRequest, items: Vec<Pending>) {
    let (docs, bytes) = (request.len(), request.bytes());
    shared.metrics.observe_bulk(docs);
    let started = Instant::now();
    let results = in_stage(Stage::Sink, shared.sink.send(request, &shared.hard_stop)).await;
    debug!(
        docs,
        bytes,
        elapsed_ms = started.elapsed().as_millis(),
        "Bulk request sent."
    );
    let mut results = results.into_iter();
    let mut ended: Vec<(String, Outcome, Slot)> = Vec::with_capacity(items.len());
    for p in items {
        let result = match results.next() {
            Some((id, result)) if id == p.id => result,
            other => {
                error!(task = %p.raw, got = ?other.map(|(id, _)| id), "Bulk results out of order; the task is retried.");
                ItemResult::Failed {
                    reason: "bulk result missing for this document".to_owned(),
                }
            }
        };
        shared
            .metrics
            .observe_stage(Stage::Sink, p.pushed.elapsed());
        match item_outcome(result, p.counts) {
            // Still held in Redis; freeing the slot is all there is to do.
            None => {
                debug!(task = %p.raw, "Task left in the processing list: the search server stayed unavailable.")
            }
            Some(outcome) => ended.push((p.raw, outcome, p.slot)),
        }
    }
    complete_many(shared, ended).await;
}

/// Follows the memory readings: metrics, and the soft and hard levels (acted on unless
/// `restarts` is false, under `testOnly.noMemoryRestarts`).
async fn watch_memory(
    shared: Arc<Shared>,
    memory: MemoryWatch,
    restarts: bool,
    stop: CancellationToken,
) {
    let mut states = memory.subscribe();
    let sampler = tokio::spawn(memory.run(stop.clone()));
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            changed = states.changed() => if changed.is_err() { break },
        }
        let state = *states.borrow_and_update();
        shared.metrics.set_memory(&state);
        match state.level {
            _ if !restarts => {}
            Level::Ok => {}
            Level::Soft if shared.supervised => {
                // Keep working, and ready: the supervisor starts a replacement first and grants
                // the restart within its budget. The hard line remains this worker's own stop.
                if !shared.asking.swap(true, Ordering::AcqRel) {
                    let since = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(1, |d| d.as_secs());
                    shared.metrics.request_restart(since);
                    warn!(
                        usage = state.usage,
                        soft = ?state.soft,
                        "Memory above the soft threshold: asking the supervisor for a restart, working on until it grants one."
                    );
                }
            }
            Level::Soft => {
                if !shared.stop_taking.is_cancelled() {
                    shared.stop(
                        ExitReason::MemorySoft,
                        format!(
                            "memory {} bytes at or above the soft threshold {:?}",
                            state.usage, state.soft
                        ),
                    );
                }
            }
            Level::Hard if shared.hard_stop.is_cancelled() => {}
            Level::Hard => {
                error!(usage = state.usage, hard = ?state.hard, "Memory above the hard threshold: stopping at once.");
                shared.stop(
                    ExitReason::MemoryHard,
                    format!(
                        "memory {} bytes at or above the hard threshold {:?}",
                        state.usage, state.hard
                    ),
                );
            }
        }
    }
    let _ = sampler.await;
}

/// Writes the heartbeat every third of its TTL.
async fn heartbeat(shared: Arc<Shared>, stop: CancellationToken) {
    let every = Duration::from_secs(u64::from(shared.queue.heartbeat_ttl_seconds())) / 3;
    let mut ticks = tokio::time::interval(every.max(Duration::from_millis(500)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let pid = std::process::id();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let rss = read_rss().unwrap_or(0);
        let done = shared.tasks_finished.load(Ordering::Relaxed);
        if let Err(e) = shared.queue.heartbeat(pid, rss, done).await {
            debug!(error = %error_chain(&e), "Heartbeat not written.");
        }
    }
}

/// Keeps `/readyz` true only while Redis, MySQL and the search server answer and the worker
/// takes work.
async fn refresh_readiness(shared: Arc<Shared>, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(READINESS_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = String::from("starting");
    loop {
        let reason = if shared.stop_taking.is_cancelled() {
            "draining"
        } else if !shared.queue.is_connected() {
            "redis unreachable"
        } else if !shared.mysql_ok.load(Ordering::Relaxed) {
            "mysql unreachable"
        } else if !shared.sink.is_available() {
            "search unavailable"
        } else {
            ""
        };
        if reason != last {
            if reason.is_empty() {
                shared.ready.set_ready();
            } else {
                shared.ready.set_not_ready(reason);
            }
            debug!(worker = %shared.worker_id, ready = reason.is_empty(), reason, "Readiness changed.");
            reason.clone_into(&mut last);
        }
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
    }
}

/// Sets the queue-lag gauge every [`QUEUE_LAG_EVERY`] to the age of the oldest task this
/// worker holds (taken from the queue and not yet finished; zero when it holds none).
///
/// An id in the queue carries no enqueue time, so how long ids wait before a worker takes them
/// is not known; the age of what a worker holds is measured, and grows without bound when a
/// task is stuck.
async fn sample_queue_lag(shared: Arc<Shared>, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(QUEUE_LAG_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let age = shared
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .oldest_age(Instant::now());
        shared.metrics.set_queue_lag(age.as_secs_f64());
    }
}

/// Once the taking stops, gives the tasks in flight the grace period, then stops everything.
async fn grace_timer(shared: Arc<Shared>, stop: CancellationToken) {
    tokio::select! {
        () = stop.cancelled() => return,
        () = shared.stop_taking.cancelled() => {}
    }
    tokio::select! {
        () = stop.cancelled() => {}
        () = shared.hard_stop.cancelled() => {}
        () = tokio::time::sleep(shared.grace) => {
            warn!(grace_seconds = shared.grace.as_secs(), in_flight = shared.in_flight(), "Grace period over.");
            shared.hard_stop.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The queue lag follows the oldest task held, whatever order tasks finish in.
    #[test]
    fn the_oldest_held_task_gives_the_lag() {
        let t0 = Instant::now();
        let mut held = Held::default();
        assert_eq!(held.oldest_age(t0), Duration::ZERO, "nothing held");
        let first = held.insert(t0);
        let second = held.insert(t0 + Duration::from_secs(2));
        let third = held.insert(t0 + Duration::from_secs(3));
        let now = t0 + Duration::from_secs(10);
        assert_eq!(held.oldest_age(now), Duration::from_secs(10));
        held.remove(second);
        assert_eq!(held.oldest_age(now), Duration::from_secs(10));
        held.remove(first);
        assert_eq!(held.oldest_age(now), Duration::from_secs(7));
        held.remove(third);
        assert_eq!(held.oldest_age(now), Duration::ZERO);
        assert!(held.since.is_empty());
    }

    #[test]
    fn bulk_results_map_to_outcomes_naming_the_sink() {
        let counts = vec![("topics:a".to_owned(), 2)];
        assert_eq!(
            item_outcome(ItemResult::Indexed, counts.clone()),
            Some(Outcome::Indexed {
                counts: counts.clone()
            })
        );
        let Some(Outcome::Dead(dead)) = item_outcome(
            ItemResult::Rejected {
                status: 400,
                reason: "mapper_parsing_exception: failed".into(),
            },
            counts.clone(),
        ) else {
            panic!("a rejected item is dead-lettered")
        };
        assert_eq!(dead.stage, Stage::Sink);
        assert!(
            dead.reason.contains("400") && dead.reason.contains("mapper_parsing_exception"),
            "{}",
            dead.reason
        );
        let Some(Outcome::Retry(retry)) = item_outcome(
            ItemResult::Failed {
                reason: "503 after 5 tries".into(),
            },
            counts.clone(),
        ) else {
            panic!("a failed item is retried")
        };
        assert_eq!(retry.stage, Stage::Sink);
        assert_eq!(
            item_outcome(
                ItemResult::Unsent {
                    reason: "HTTP 503".into()
                },
                counts
            ),
            None,
            "an unsent document's task stays held"
        );
    }

    #[test]
    fn the_test_only_leak_is_charged_to_its_stage_and_kept() {
        let before = LEAKED.lock().unwrap().len();
        leak(Stage::Enrich, 10_000);
        let kept = LEAKED.lock().unwrap();
        assert_eq!(kept.len(), before + 1);
        assert_eq!(kept.last().unwrap().len(), 10_000);
        assert!(
            kept.last().unwrap().iter().step_by(4096).all(|b| *b == 1),
            "every page touched"
        );
    }
}
