//! Stage A: the Redis queue, taken reliably and acknowledged exactly once.
//!
//! Producers `LPUSH` ids into the list `{q}`. A worker moves one id at a time into its own
//! processing list with `BLMOVE {q} {q}:processing:{worker} RIGHT LEFT`, so an id is always in
//! exactly one list: waiting, or held by one worker. Everything that ends a task is one Lua
//! script that first `LREM`s the id from the processing list and changes nothing else unless
//! that removed it, so a task replayed after its worker died (or acknowledged twice) is counted
//! once:
//!
//! | script | after the `LREM` |
//! |---|---|
//! | ack (one task, or many in one call) | `HINCRBY {q}:counts` per keyword, `HINCRBY {q}:stats <outcome>`, `HDEL {q}:attempts {q}:givebacks` |
//! | dead-letter | `LPUSH {q}:dead <json>`, `HINCRBY {q}:stats dead`, `HDEL {q}:attempts {q}:givebacks` |
//! | retry | `RPUSH {q}` (taken next) and `HINCRBY {q}:stats retried`, or dead-letter once the attempts are used up |
//! | requeue | (of a whole worker) `RPUSH {q}` every id, `DEL` the list, `SREM {q}:workers` |
//! | release | (a worker's own, at a graceful exit) as requeue, `HINCRBY {q}:attempts -1` and `HINCRBY {q}:givebacks +1` per id |
//!
//! Taking counts the delivery (`HINCRBY {q}:attempts`), reads the id's give-backs
//! (`HGET {q}:givebacks`) and lists the worker in `{q}:workers`. The driver dead-letters an id
//! delivered more than `queue.maxAttempts` times ([`too_many_deliveries`]) or given back more
//! than `queue.maxGiveBacks` times ([`too_many_give_backs`]). Both hashes hold only ids in
//! flight: finishing an id, either way, deletes its fields.
//! When ids are waiting and several slots are free, [`Queue::take_up_to`] moves up to n of them
//! with one script (`LMOVE` each, the same direction as `BLMOVE`), so a busy worker does not pay
//! two round trips per id.
//!
//! The scripts are Lua files under `src/lua/`. The key layout ([`Keys`]), the requeue script
//! and what a supervisor reads ([`backlog`], [`worker_beats`], [`dead_letters`]) belong to the
//! contract between worker and supervisor, `migrate-contract`, and are re-exported here.
//!
//! Connections: commands share one [`ConnectionManager`] (multiplexed, reconnects by itself);
//! the blocking `BLMOVE` runs on a dedicated connection so it never delays an acknowledgement.
//! Connection errors are retried with a capped, fully jittered [`Backoff`](crate::backoff::Backoff) and make
//! [`Queue::is_connected`] false until the next success.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use migrate_contract::queue::{command_error, requeue};
use migrate_crds::QueueSpec;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, RedisError, Script};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::backoff::{Retries, sleep_or_cancel};
use crate::stage::Stage;
use crate::task::{DeadLetter, Outcome};

pub use migrate_contract::Keys;
pub use migrate_contract::queue::{
    Backlog, DeadEntry, Heartbeat, QueueError, WorkerBeat, backlog, dead_letters, live_workers,
    redact_url, requeue_worker, worker_beats,
};

/// How long one `BLMOVE` blocks before it returns empty-handed (so an idle worker notices an
/// empty queue about once a second, which drain mode needs).
pub const BLOCK_TIMEOUT: Duration = Duration::from_secs(1);

/// Most acknowledgements applied by one script call (bounds how long Redis is busy with it).
pub const ACK_CHUNK: usize = 64;

/// Pause between two `CLIENT UNBLOCK`s while a cancelled pop has not answered yet.
const UNBLOCK_RETRY: Duration = Duration::from_millis(20);

/// Extra time the client waits for a reply beyond the server-side block timeout.
const REPLY_MARGIN: Duration = Duration::from_secs(5);

/// One id taken from the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    /// The entry exactly as it was in the list (what acknowledging removes).
    pub raw: String,
    /// Deliveries of this id so far, this one included.
    pub attempts: u64,
    /// Times a worker gave this id back at a graceful exit (`{q}:givebacks`).
    pub given_back: u64,
}

/// What finishing a task did in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The id was no longer in this worker's processing list (already finished, or requeued
    /// by a supervisor): nothing was changed.
    NotHeld,
    /// Acknowledged; counts and stats applied.
    Acked,
    /// Put back at the head of the queue for another delivery.
    Retried,
    /// Moved to the dead-letter list.
    DeadLettered,
}

impl Settled {
    /// Whether the script changed anything.
    #[must_use]
    pub const fn applied(self) -> bool {
        !matches!(self, Settled::NotHeld)
    }
}

// The worker's own scripts, one file each under `lua/` (their KEYS and ARGV are listed at the
// top of each file). `dead.lua` and `retry.lua` share the dead-letter step of `dead_letter.lua`.
// The supervisor's requeue script is in `migrate-contract`.
static ACK: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/ack.lua")));
static DEAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/dead_letter.lua"),
        include_str!("lua/dead.lua")
    ))
});
static RETRY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/dead_letter.lua"),
        include_str!("lua/retry.lua")
    ))
});
static ACK_MANY: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/ack_many.lua")));
static TAKE_MANY: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/take_many.lua")));

/// The dedicated connection for `BLMOVE`, with its server-side client id (to unblock it).
struct Blocking {
    conn: MultiplexedConnection,
    client_id: i64,
}

/// One worker's handle on the queue.
pub struct Queue {
    keys: Keys,
    url: String,
    client: Client,
    manager: ConnectionManager,
    blocking: Mutex<Option<Blocking>>,
    connected: AtomicBool,
    max_attempts: u32,
    max_give_backs: u32,
    heartbeat_ttl: u32,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("keys", &self.keys)
            .field("url", &self.url)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl Queue {
    /// Connects to Redis for queue `spec.key` as worker `worker_id` and checks the connection
    /// with a `PING`.
    ///
    /// # Errors
    /// [`QueueError::Url`] for a malformed URL, [`QueueError::Connect`] when Redis does not
    /// answer (transient: try again later).
    pub async fn connect(url: &str, spec: &QueueSpec, worker_id: &str) -> Result<Self, QueueError> {
        let redacted = redact_url(url);
        let client = Client::open(url).map_err(|source| QueueError::Url {
            url: redacted.clone(),
            source,
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(5));
        let manager =
            ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(|source| {
                QueueError::Connect {
                    url: redacted.clone(),
                    source,
                }
            })?;
        let queue = Self {
            keys: Keys::new(&spec.key, worker_id),
            url: redacted,
            client,
            manager,
            blocking: Mutex::new(None),
            connected: AtomicBool::new(false),
            max_attempts: spec.max_attempts.max(1),
            max_give_backs: spec.max_give_backs,
            heartbeat_ttl: spec.heartbeat_ttl_seconds.max(1),
        };
        let mut conn = queue.manager.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(|source| QueueError::Connect {
                url: queue.url.clone(),
                source,
            })?;
        queue.connected.store(true, Ordering::Relaxed);
        Ok(queue)
    }

    /// The keys this handle works on.
    #[must_use]
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Deliveries of one id before it is dead-lettered.
    #[must_use]
    pub const fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Why `taken` is dead-lettered instead of processed: delivered more than
    /// `queue.maxAttempts` times ([`too_many_deliveries`]), or given back more than
    /// `queue.maxGiveBacks` times ([`too_many_give_backs`]). `None`: process it.
    #[must_use]
    pub fn used_up(&self, taken: &Taken) -> Option<DeadLetter> {
        if taken.attempts > u64::from(self.max_attempts) {
            Some(too_many_deliveries(taken.attempts, self.max_attempts))
        } else if taken.given_back > u64::from(self.max_give_backs) {
            Some(too_many_give_backs(taken.given_back, self.max_give_backs))
        } else {
            None
        }
    }

    /// Graceful give-backs of one id before its next take dead-letters it.
    #[must_use]
    pub const fn max_give_backs(&self) -> u32 {
        self.max_give_backs
    }

    /// The heartbeat TTL in seconds (beat every third of it).
    #[must_use]
    pub const fn heartbeat_ttl_seconds(&self) -> u32 {
        self.heartbeat_ttl
    }

    /// Whether the last Redis operation succeeded (false while reconnecting).
    #[must_use]
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn set_connected(&self, up: bool) {
        let was = self.connected.swap(up, Ordering::Relaxed);
        if was != up {
            if up {
                tracing::info!(url = %self.url, "Redis connection restored.");
            } else {
                warn!(url = %self.url, "Redis connection lost; retrying with backoff.");
            }
        }
    }

    /// A clone of the shared command connection (for supervisors' free functions and tests).
    #[must_use]
    pub fn connection(&self) -> ConnectionManager {
        self.manager.clone()
    }

    fn note<T>(&self, result: Result<T, QueueError>) -> Result<T, QueueError> {
        match &result {
            Ok(_) => self.set_connected(true),
            Err(e) if e.is_transient() => self.set_connected(false),
            Err(_) => {}
        }
        result
    }

    /// Requeues this worker's own processing list (a previous life's leftovers) and registers
    /// the worker in `{q}:workers` again. Returns the ids requeued.
    ///
    /// # Errors
    /// [`QueueError::Command`] when Redis fails.
    pub async fn recover_own(&self) -> Result<u64, QueueError> {
        let mut conn = self.manager.clone();
        let result = async {
            let moved = requeue_worker(&mut conn, &self.keys.queue, &self.keys.worker).await?;
            self.register(&mut conn).await?;
            Ok(moved)
        }
        .await;
        self.note(result)
    }

    /// Requeues what is left in this worker's processing list before the process exits, and
    /// gives back those ids' deliveries (they did not fail here), counting a give-back of each
    /// in `{q}:givebacks` instead (bounded by `queue.maxGiveBacks`). Call it only when no task of
    /// this process can still be acknowledged, and not when a task may be to blame for the
    /// exit (the hard memory limit): then leave the ids to the supervisor's requeue, which
    /// keeps the delivery counted.
    ///
    /// # Errors
    /// [`QueueError::Command`] when Redis fails (the ids then wait for a supervisor).
    pub async fn release_own(&self) -> Result<u64, QueueError> {
        let mut conn = self.manager.clone();
        let result = async {
            let moved = requeue(&mut conn, &self.keys, true).await?;
            redis::cmd("DEL")
                .arg(&self.keys.heartbeat)
                .query_async::<()>(&mut conn)
                .await
                .map_err(command_error("DEL", &self.keys.heartbeat))?;
            Ok(moved)
        }
        .await;
        self.note(result)
    }

    async fn register(&self, conn: &mut ConnectionManager) -> Result<(), QueueError> {
        redis::cmd("SADD")
            .arg(&self.keys.workers)
            .arg(&self.keys.worker)
            .query_async::<()>(conn)
            .await
            .map_err(command_error("SADD", &self.keys.workers))
    }

    /// Takes the next id: blocks up to [`BLOCK_TIMEOUT`] for one, moving it atomically into
    /// this worker's processing list, then counts the delivery. Returns `None` when the queue
    /// stayed empty or `cancel` fired. Shutdown wins over the blocking pop: a pop interrupted
    /// by `cancel` is unblocked on the server at once (`CLIENT UNBLOCK`), and an id it moved
    /// just before is still returned, so it is processed instead of waiting in the processing
    /// list.
    ///
    /// Connection errors are retried here with backoff (and make [`Queue::is_connected`]
    /// false); an id already moved is never dropped.
    ///
    /// # Errors
    /// Only errors that waiting cannot fix (e.g. the queue key holds a non-list).
    pub async fn take(&self, cancel: &CancellationToken) -> Result<Option<Taken>, QueueError> {
        let mut backoff = Retries::default();
        let raw = loop {
            if cancel.is_cancelled() {
                return Ok(None);
            }
            match self.pop(cancel).await {
                Ok(Some(raw)) => break raw,
                Ok(None) => return Ok(None),
                Err(e) if e.is_transient() => {
                    self.set_connected(false);
                    let delay = backoff.next_delay();
                    debug!(error = %e, delay_ms = delay.as_millis(), "Blocking pop failed; backing off.");
                    if sleep_or_cancel(delay, cancel).await {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(e),
            }
        };
        // The id is in our processing list now. Counting the delivery must not lose it: retry
        // until it works or shutdown (then the id waits in the processing list).
        backoff.reset();
        loop {
            match self.note(self.count_delivery(&raw).await) {
                Ok((attempts, given_back)) => {
                    return Ok(Some(Taken {
                        raw,
                        attempts,
                        given_back,
                    }));
                }
                Err(e) if e.is_transient() => {
                    let delay = backoff.next_delay();
                    debug!(error = %e, delay_ms = delay.as_millis(), "Counting a delivery failed; backing off.");
                    if sleep_or_cancel(delay, cancel).await {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes up to `max` ids: first without blocking, as many as are waiting (one script:
    /// each id moved `RIGHT -> LEFT` into the processing list and its delivery counted); when
    /// none is waiting, blocks for one as [`Queue::take`] does. Empty when the queue stayed
    /// empty or `cancel` fired.
    ///
    /// # Errors
    /// As [`Queue::take`].
    pub async fn take_up_to(
        &self,
        max: usize,
        cancel: &CancellationToken,
    ) -> Result<Vec<Taken>, QueueError> {
        if max > 1 {
            let mut backoff = Retries::default();
            loop {
                if cancel.is_cancelled() {
                    return Ok(Vec::new());
                }
                match self.note(self.take_waiting(max).await) {
                    Ok(taken) if !taken.is_empty() => return Ok(taken),
                    Ok(_) => break,
                    Err(e) if e.is_transient() => {
                        let delay = backoff.next_delay();
                        debug!(error = %e, delay_ms = delay.as_millis(), "Taking failed; backing off.");
                        if sleep_or_cancel(delay, cancel).await {
                            return Ok(Vec::new());
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(self.take(cancel).await?.into_iter().collect())
    }

    async fn take_waiting(&self, max: usize) -> Result<Vec<Taken>, QueueError> {
        let mut conn = self.manager.clone();
        let flat: Vec<redis::Value> = TAKE_MANY
            .key(&self.keys.queue)
            .key(&self.keys.processing)
            .key(&self.keys.attempts)
            .key(&self.keys.workers)
            .key(&self.keys.givebacks)
            .arg(max)
            .arg(&self.keys.worker)
            .invoke_async(&mut conn)
            .await
            .map_err(command_error("take", &self.keys.queue))?;
        let mut taken = Vec::with_capacity(flat.len() / 3);
        let mut values = flat.into_iter();
        let decode = |e: redis::ParsingError| command_error("take", &self.keys.queue)(e.into());
        while let (Some(raw), Some(attempts), Some(given_back)) =
            (values.next(), values.next(), values.next())
        {
            let raw: String = redis::from_redis_value(raw).map_err(decode)?;
            let attempts: u64 = redis::from_redis_value(attempts).map_err(decode)?;
            let given_back: u64 = redis::from_redis_value(given_back).map_err(decode)?;
            taken.push(Taken {
                raw,
                attempts,
                given_back,
            });
        }
        Ok(taken)
    }

    async fn pop(&self, cancel: &CancellationToken) -> Result<Option<String>, QueueError> {
        let mut guard = self.blocking.lock().await;
        if guard.is_none() {
            *guard = Some(self.connect_blocking().await?);
        }
        let Some(blocking) = guard.as_mut() else {
            return Ok(None);
        };
        let mut cmd = redis::cmd("BLMOVE");
        cmd.arg(&self.keys.queue)
            .arg(&self.keys.processing)
            .arg("RIGHT")
            .arg("LEFT")
            .arg(BLOCK_TIMEOUT.as_secs_f64());
        let client_id = blocking.client_id;
        let result = {
            let pop = cmd.query_async::<Option<String>>(&mut blocking.conn);
            tokio::pin!(pop);
            tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    // Stop waiting now: unblock the pop on the server, then read its answer,
                    // which is nil, or the id it moved just before (returned, so it is
                    // processed rather than left in the processing list). The pop may not have
                    // reached the server yet, so unblock until it answers.
                    let deadline = tokio::time::Instant::now() + BLOCK_TIMEOUT + REPLY_MARGIN;
                    loop {
                        self.unblock(client_id).await;
                        tokio::select! {
                            r = &mut pop => break r,
                            () = tokio::time::sleep(UNBLOCK_RETRY) => {}
                        }
                        if tokio::time::Instant::now() >= deadline {
                            let timeout = std::io::Error::from(std::io::ErrorKind::TimedOut);
                            break Err(RedisError::from(timeout));
                        }
                    }
                }
                r = &mut pop => r,
            }
        };
        match result {
            Ok(v) => {
                self.set_connected(true);
                Ok(v)
            }
            Err(source) => {
                *guard = None;
                Err(QueueError::Command {
                    command: "BLMOVE",
                    key: self.keys.queue.clone(),
                    source,
                })
            }
        }
    }

    /// Ends a blocked `BLMOVE` of ours on the server, so no id moves after shutdown began.
    async fn unblock(&self, client_id: i64) {
        let mut conn = self.manager.clone();
        let mut unblock = redis::cmd("CLIENT");
        unblock.arg("UNBLOCK").arg(client_id);
        if let Err(e) = unblock.query_async::<i64>(&mut conn).await {
            debug!(error = %e, "Could not unblock the pending pop.");
        }
    }

    async fn connect_blocking(&self) -> Result<Blocking, QueueError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(BLOCK_TIMEOUT + REPLY_MARGIN));
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|source| QueueError::Connect {
                url: self.url.clone(),
                source,
            })?;
        let client_id: i64 = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut conn)
            .await
            .map_err(|source| QueueError::Connect {
                url: self.url.clone(),
                source,
            })?;
        // Named so that `CLIENT LIST` shows which worker a blocked pop belongs to.
        let name = format!("migrate-take:{}", self.keys.worker);
        if let Err(e) = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(&name)
            .query_async::<()>(&mut conn)
            .await
        {
            debug!(error = %e, "Could not name the blocking connection.");
        }
        Ok(Blocking { conn, client_id })
    }

    /// Counts a delivery of `raw` and reads its give-backs: (attempts, give-backs).
    async fn count_delivery(&self, raw: &str) -> Result<(u64, u64), QueueError> {
        let mut conn = self.manager.clone();
        let (attempts, given_back): (u64, Option<u64>) = redis::pipe()
            .cmd("HINCRBY")
            .arg(&self.keys.attempts)
            .arg(raw)
            .arg(1)
            .cmd("HGET")
            .arg(&self.keys.givebacks)
            .arg(raw)
            .cmd("SADD")
            .arg(&self.keys.workers)
            .arg(&self.keys.worker)
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(command_error("HINCRBY", &self.keys.attempts))?;
        Ok((attempts, given_back.unwrap_or(0)))
    }

    /// Ends a task: `Indexed`, `Filtered` and `Skipped` acknowledge it (applying its counts
    /// and stats once), `Dead` dead-letters it, `Retry` puts it back at the head of the queue
    /// or dead-letters it when its attempts are used up. Returns whether the id was still held
    /// by this worker (false: nothing changed, e.g. on a second call).
    ///
    /// # Errors
    /// [`QueueError::Command`] when Redis fails; the id then stays in the processing list, so
    /// calling again later is safe.
    pub async fn finish(&self, raw: &str, outcome: &Outcome) -> Result<bool, QueueError> {
        self.settle(raw, outcome).await.map(Settled::applied)
    }

    /// Like [`Queue::finish`], telling what happened.
    ///
    /// # Errors
    /// As [`Queue::finish`].
    pub async fn settle(&self, raw: &str, outcome: &Outcome) -> Result<Settled, QueueError> {
        let result = match outcome {
            Outcome::Indexed { counts } => self.ack(raw, outcome.stats_field(), counts).await,
            Outcome::Filtered { .. } | Outcome::Skipped => {
                self.ack(raw, outcome.stats_field(), &[]).await
            }
            Outcome::Dead(dead) => self.dead_letter(raw, dead).await,
            Outcome::Retry(dead) => self.retry(raw, dead).await,
        };
        self.note(result)
    }

    /// Ends many tasks in few round trips: the acknowledgements go through one script per
    /// [`ACK_CHUNK`] tasks (each applying its counts only if it removed its own id, exactly as
    /// [`Queue::finish`] does); dead letters and retries go one by one. Results are in input
    /// order.
    ///
    /// # Errors
    /// As [`Queue::finish`]; on an error some tasks may be settled already (settling them
    /// again changes nothing).
    pub async fn settle_many(
        &self,
        tasks: &[(&str, &Outcome)],
    ) -> Result<Vec<Settled>, QueueError> {
        let mut settled = vec![Settled::NotHeld; tasks.len()];
        let acks: Vec<usize> = (0..tasks.len())
            .filter(|&i| {
                matches!(
                    tasks[i].1,
                    Outcome::Indexed { .. } | Outcome::Filtered { .. } | Outcome::Skipped
                )
            })
            .collect();
        for chunk in acks.chunks(ACK_CHUNK) {
            let mut conn = self.manager.clone();
            let mut invocation = ACK_MANY.prepare_invoke();
            invocation
                .key(&self.keys.processing)
                .key(&self.keys.counts)
                .key(&self.keys.stats)
                .key(&self.keys.attempts)
                .key(&self.keys.givebacks)
                .arg(chunk.len());
            for &i in chunk {
                let (raw, outcome) = tasks[i];
                let counts: &[(String, u64)] = match outcome {
                    Outcome::Indexed { counts } => counts,
                    _ => &[],
                };
                let field = outcome.stats_field();
                let nonzero = counts.iter().filter(|(_, n)| *n > 0);
                invocation.arg(raw).arg(field).arg(nonzero.clone().count());
                for (keyword, hits) in nonzero {
                    invocation.arg(keyword).arg(*hits);
                }
            }
            let removed: Vec<i64> = self.note(
                invocation
                    .invoke_async(&mut conn)
                    .await
                    .map_err(command_error("ack", &self.keys.processing)),
            )?;
            for (&i, r) in chunk.iter().zip(removed) {
                settled[i] = if r == 1 {
                    Settled::Acked
                } else {
                    Settled::NotHeld
                };
            }
        }
        let mut is_ack = vec![false; tasks.len()];
        for &i in &acks {
            is_ack[i] = true;
        }
        for (i, (raw, outcome)) in tasks.iter().enumerate() {
            if !is_ack[i] {
                settled[i] = self.settle(raw, outcome).await?;
            }
        }
        Ok(settled)
    }

    async fn ack(
        &self,
        raw: &str,
        field: &str,
        counts: &[(String, u64)],
    ) -> Result<Settled, QueueError> {
        let mut conn = self.manager.clone();
        let mut invocation = ACK.prepare_invoke();
        invocation
            .key(&self.keys.processing)
            .key(&self.keys.counts)
            .key(&self.keys.stats)
            .key(&self.keys.attempts)
            .key(&self.keys.givebacks)
            .arg(raw)
            .arg(field);
        for (keyword, hits) in counts.iter().filter(|(_, n)| *n > 0) {
            invocation.arg(keyword).arg(*hits);
        }
        let removed: i64 = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(command_error("ack", &self.keys.processing))?;
        Ok(if removed == 1 {
            Settled::Acked
        } else {
            Settled::NotHeld
        })
    }

    async fn dead_letter(&self, raw: &str, dead: &DeadLetter) -> Result<Settled, QueueError> {
        let mut conn = self.manager.clone();
        let removed: i64 = self
            .invocation(&DEAD, raw, dead)
            .invoke_async(&mut conn)
            .await
            .map_err(command_error("dead-letter", &self.keys.processing))?;
        Ok(if removed == 1 {
            Settled::DeadLettered
        } else {
            Settled::NotHeld
        })
    }

    async fn retry(&self, raw: &str, dead: &DeadLetter) -> Result<Settled, QueueError> {
        let mut conn = self.manager.clone();
        let result: i64 = self
            .invocation(&RETRY, raw, dead)
            .invoke_async(&mut conn)
            .await
            .map_err(command_error("retry", &self.keys.processing))?;
        Ok(match result {
            1 => Settled::Retried,
            2 => Settled::DeadLettered,
            _ => Settled::NotHeld,
        })
    }

    fn invocation<'s>(
        &self,
        script: &'s Script,
        raw: &str,
        dead: &DeadLetter,
    ) -> redis::ScriptInvocation<'s> {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&self.keys.processing)
            .key(&self.keys.queue)
            .key(&self.keys.stats)
            .key(&self.keys.attempts)
            .key(&self.keys.dead)
            .key(&self.keys.givebacks)
            .arg(raw)
            .arg(self.max_attempts)
            .arg(dead.stage.as_str())
            .arg(&dead.reason)
            .arg(now_rfc3339())
            .arg(&self.keys.worker);
        invocation
    }

    /// Writes this worker's heartbeat with the configured TTL and keeps the worker listed in
    /// `{q}:workers`.
    ///
    /// # Errors
    /// [`QueueError::Command`] when Redis fails.
    pub async fn heartbeat(&self, pid: u32, rss: u64, tasks_done: u64) -> Result<(), QueueError> {
        let beat = Heartbeat {
            pid,
            rss,
            tasks_done,
            at: now_rfc3339(),
        };
        let value = serde_json::to_string(&beat).map_err(|source| QueueError::Encode {
            worker: self.keys.worker.clone(),
            source,
        })?;
        let mut conn = self.manager.clone();
        let result = redis::pipe()
            .cmd("SET")
            .arg(&self.keys.heartbeat)
            .arg(value)
            .arg("EX")
            .arg(self.heartbeat_ttl)
            .ignore()
            .cmd("SADD")
            .arg(&self.keys.workers)
            .arg(&self.keys.worker)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(command_error("SET", &self.keys.heartbeat));
        self.note(result)
    }

    /// Ids waiting and in flight for this queue (see [`backlog`]).
    ///
    /// # Errors
    /// [`QueueError::Command`] when Redis fails.
    pub async fn backlog(&self) -> Result<Backlog, QueueError> {
        let mut conn = self.manager.clone();
        let result = backlog(&mut conn, &self.keys.queue).await;
        self.note(result)
    }

    /// Length of this worker's processing list.
    ///
    /// # Errors
    /// [`QueueError::Command`] when Redis fails.
    pub async fn held(&self) -> Result<u64, QueueError> {
        let mut conn = self.manager.clone();
        let result = redis::cmd("LLEN")
            .arg(&self.keys.processing)
            .query_async(&mut conn)
            .await
            .map_err(command_error("LLEN", &self.keys.processing));
        self.note(result)
    }
}

/// Dead-letter reason for an id delivered more often than allowed (its worker died each time).
#[must_use]
pub fn too_many_deliveries(attempts: u64, max_attempts: u32) -> DeadLetter {
    DeadLetter {
        stage: Stage::Queue,
        reason: format!(
            "delivered {attempts} times, more than maxAttempts {max_attempts}; the workers handling it stopped before finishing it"
        ),
    }
}

/// Dead-letter reason for an id given back more often than allowed (every worker holding it
/// was stopped gracefully before it finished, e.g. it always outlasts the grace period).
#[must_use]
pub fn too_many_give_backs(given_back: u64, max_give_backs: u32) -> DeadLetter {
    DeadLetter {
        stage: Stage::Queue,
        reason: format!(
            "given back {given_back} times, more than maxGiveBacks {max_give_backs}; the workers holding it were stopped gracefully before finishing it (does it outlast workers.terminationGracePeriodSeconds?)"
        ),
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
