//! The queue as a supervisor sees it, and the vocabulary it shares with the worker.
//!
//! The worker takes, acknowledges and dead-letters (its own scripts, in `migrate-worker`);
//! what a supervisor does on the same keys lives here, so the operator needs nothing else of
//! the worker:
//!
//! | function | what it does |
//! |---|---|
//! | [`requeue_worker`] | one script (`lua/requeue.lua`): `RPUSH {q}` every id of a dead worker's processing list, `DEL` the list, `SREM {q}:workers`; twice is harmless |
//! | [`requeue`] | the same script, optionally giving back the ids' deliveries and counting the give-back in `{q}:givebacks` (a worker's own graceful release) |
//! | [`backlog`] | `LLEN {q}` plus the processing lists of every worker in `{q}:workers` |
//! | [`worker_beats`], [`live_workers`] | `{q}:workers` with each `{q}:heartbeat:{worker}` value ([`Heartbeat`]) |
//! | [`dead_letters`] | the newest entries of `{q}:dead` ([`DeadEntry`]) |
//!
//! The key layout is [`Keys`]; `docs/architecture.md` documents both.

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{RedisError, RetryMethod, Script};
use serde::{Deserialize, Serialize};

use crate::keys::Keys;

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The Redis URL could not be read (the URL in the message has its password removed).
    #[error("invalid redis url {url}")]
    Url {
        /// The URL, password redacted.
        url: String,
        /// What the client said.
        #[source]
        source: RedisError,
    },
    /// No connection could be made.
    #[error("cannot connect to redis at {url}; check MIGRATE_REDIS_URL (from queue.urlSecretRef)")]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// What the client said.
        #[source]
        source: RedisError,
    },
    /// A command or script failed.
    #[error("redis {command} on {key} failed")]
    Command {
        /// The command or script name.
        command: &'static str,
        /// The main key it worked on.
        key: String,
        /// What Redis or the client said.
        #[source]
        source: RedisError,
    },
    /// A value stored in Redis is not of the documented shape.
    #[error("unexpected value in {key}")]
    Decode {
        /// The key read.
        key: String,
        /// Why it could not be read.
        #[source]
        source: serde_json::Error,
    },
    /// A heartbeat could not be encoded.
    #[error("cannot encode the heartbeat of worker {worker}")]
    Encode {
        /// The worker.
        worker: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

impl QueueError {
    /// Whether waiting and trying again can help (connection lost, timeout, server loading).
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            QueueError::Connect { .. } => true,
            QueueError::Command { source, .. } => is_transient(source),
            QueueError::Url { .. } | QueueError::Decode { .. } | QueueError::Encode { .. } => false,
        }
    }

    /// A short stable name for logs and metric labels.
    #[must_use]
    pub const fn metric_label(&self) -> &'static str {
        match self {
            QueueError::Url { .. } => "url",
            QueueError::Connect { .. } => "connect",
            QueueError::Command { .. } => "command",
            QueueError::Decode { .. } => "decode",
            QueueError::Encode { .. } => "encode",
        }
    }
}

fn is_transient(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || !matches!(err.retry_method(), RetryMethod::NoRetry)
}

/// Wraps a client error of `command` on `key` into [`QueueError::Command`], for `map_err`.
pub fn command_error<'k>(
    command: &'static str,
    key: &'k str,
) -> impl FnOnce(RedisError) -> QueueError + 'k {
    move |source| QueueError::Command {
        command,
        key: key.to_owned(),
        source,
    }
}

/// Removes the password (and user) from a URL for logs and errors: `redis://:secret@h:1/0`
/// becomes `redis://***@h:1/0`.
#[must_use]
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..scheme_end], &rest[at..]),
        None => url.to_owned(),
    }
}

/// The value of a worker's heartbeat key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Process id.
    pub pid: u32,
    /// Resident set size in bytes.
    pub rss: u64,
    /// Tasks finished by this process.
    pub tasks_done: u64,
    /// When it was written (RFC 3339).
    pub at: String,
}

/// One entry of the dead-letter list `{q}:dead`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadEntry {
    /// The entry as it was in the queue.
    pub id: String,
    /// The stage that gave up (`queue`, `source`, `enrich`, `keywords`, `sink`).
    pub stage: String,
    /// Why.
    pub reason: String,
    /// Deliveries of the id.
    pub attempts: u64,
    /// When (RFC 3339).
    pub at: String,
    /// The worker that dead-lettered it.
    pub worker: String,
}

/// Ids waiting and ids held by workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backlog {
    /// Length of the queue list.
    pub queued: u64,
    /// Sum of the processing lists of every worker in `{q}:workers`.
    pub in_flight: u64,
}

impl Backlog {
    /// Queued plus in flight.
    #[must_use]
    pub const fn total(self) -> u64 {
        self.queued.saturating_add(self.in_flight)
    }
}

/// A worker listed in `{q}:workers`, with its heartbeat when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerBeat {
    /// The worker id.
    pub worker: String,
    /// The heartbeat value; `None` when the key expired (the worker is dead).
    pub heartbeat: Option<Heartbeat>,
}

static REQUEUE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/requeue.lua")));

/// Moves every id of `worker`'s processing list back to the head of queue `queue_key` (taken
/// next), deletes the list and removes the worker from `{q}:workers`. One script: running it
/// twice, or for a worker that never existed, is harmless. Returns the ids moved.
///
/// Only call it for a worker that is dead or stopped: a live worker would later find its ids
/// gone and leave their counting to whoever takes them next (still exactly once).
///
/// # Errors
/// [`QueueError::Command`] when Redis fails.
pub async fn requeue_worker<C>(
    conn: &mut C,
    queue_key: &str,
    worker: &str,
) -> Result<u64, QueueError>
where
    C: ConnectionLike + Send,
{
    let keys = Keys::new(queue_key, worker);
    requeue(conn, &keys, false).await
}

/// Runs the requeue script for the worker of `keys`: every id of its processing list back to
/// the head of the queue, the list deleted, the worker removed from `{q}:workers`. With
/// `give_back`, each id's delivery is uncounted (`HINCRBY {q}:attempts id -1`) and its
/// give-back counted instead (`HINCRBY {q}:givebacks id 1`): what a worker does for itself at a
/// graceful exit. The worker's next take of the id dead-letters it once that count is above
/// `queue.maxGiveBacks`, so a task that always outlasts the grace period does not circulate
/// forever; acknowledging or dead-lettering the id deletes its count, so `{q}:givebacks`
/// holds only ids still in flight. A supervisor requeueing a dead worker passes `false` (that
/// is [`requeue_worker`]), so a task that kills its worker still runs out of deliveries.
///
/// # Errors
/// [`QueueError::Command`] when Redis fails.
pub async fn requeue<C>(conn: &mut C, keys: &Keys, give_back: bool) -> Result<u64, QueueError>
where
    C: ConnectionLike + Send,
{
    REQUEUE
        .key(&keys.processing)
        .key(&keys.queue)
        .key(&keys.workers)
        .key(&keys.attempts)
        .key(&keys.givebacks)
        .arg(&keys.worker)
        .arg(if give_back { "1" } else { "0" })
        .invoke_async::<u64>(conn)
        .await
        .map_err(command_error("requeue", &keys.processing))
}

/// Ids waiting in `queue_key` and ids held in the processing lists of the workers in
/// `{q}:workers`.
///
/// # Errors
/// [`QueueError::Command`] when Redis fails.
pub async fn backlog<C>(conn: &mut C, queue_key: &str) -> Result<Backlog, QueueError>
where
    C: ConnectionLike + Send,
{
    let keys = Keys::new(queue_key, "");
    let workers: Vec<String> = redis::cmd("SMEMBERS")
        .arg(&keys.workers)
        .query_async(conn)
        .await
        .map_err(command_error("SMEMBERS", &keys.workers))?;
    let mut pipe = redis::pipe();
    pipe.cmd("LLEN").arg(&keys.queue);
    for worker in &workers {
        pipe.cmd("LLEN").arg(Keys::processing_of(queue_key, worker));
    }
    let lengths: Vec<u64> = pipe
        .query_async(conn)
        .await
        .map_err(command_error("LLEN", &keys.queue))?;
    let queued = lengths.first().copied().unwrap_or(0);
    let in_flight = lengths.iter().skip(1).copied().sum();
    Ok(Backlog { queued, in_flight })
}

/// The newest `limit` entries of the dead-letter list `{q}:dead`.
///
/// # Errors
/// [`QueueError::Command`] when Redis fails, [`QueueError::Decode`] when an entry is not JSON
/// of the documented shape.
pub async fn dead_letters<C>(
    conn: &mut C,
    queue_key: &str,
    limit: usize,
) -> Result<Vec<DeadEntry>, QueueError>
where
    C: ConnectionLike + Send,
{
    if limit == 0 {
        return Ok(Vec::new());
    }
    let keys = Keys::new(queue_key, "");
    let stop = i64::try_from(limit).unwrap_or(i64::MAX).saturating_sub(1);
    let raw: Vec<String> = redis::cmd("LRANGE")
        .arg(&keys.dead)
        .arg(0)
        .arg(stop)
        .query_async(conn)
        .await
        .map_err(command_error("LRANGE", &keys.dead))?;
    raw.iter()
        .map(|entry| {
            serde_json::from_str(entry).map_err(|source| QueueError::Decode {
                key: keys.dead.clone(),
                source,
            })
        })
        .collect()
}

/// Every worker in `{q}:workers` with its heartbeat (`None` once the heartbeat expired).
///
/// # Errors
/// [`QueueError::Command`] when Redis fails. A heartbeat that is not valid JSON counts as
/// present with zeroed fields, so one bad value never hides a live worker.
pub async fn worker_beats<C>(conn: &mut C, queue_key: &str) -> Result<Vec<WorkerBeat>, QueueError>
where
    C: ConnectionLike + Send,
{
    let keys = Keys::new(queue_key, "");
    let mut workers: Vec<String> = redis::cmd("SMEMBERS")
        .arg(&keys.workers)
        .query_async(conn)
        .await
        .map_err(command_error("SMEMBERS", &keys.workers))?;
    workers.sort();
    if workers.is_empty() {
        return Ok(Vec::new());
    }
    let beat_keys: Vec<String> = workers
        .iter()
        .map(|w| Keys::heartbeat_of(queue_key, w))
        .collect();
    let values: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&beat_keys)
        .query_async(conn)
        .await
        .map_err(command_error("MGET", &keys.workers))?;
    Ok(workers
        .into_iter()
        .zip(values)
        .map(|(worker, value)| WorkerBeat {
            worker,
            heartbeat: value.map(|v| {
                serde_json::from_str(&v).unwrap_or(Heartbeat {
                    pid: 0,
                    rss: 0,
                    tasks_done: 0,
                    at: String::new(),
                })
            }),
        })
        .collect())
}

/// The workers of `{q}:workers` whose heartbeat is present, with it.
///
/// # Errors
/// [`QueueError::Command`] when Redis fails.
pub async fn live_workers<C>(
    conn: &mut C,
    queue_key: &str,
) -> Result<Vec<(String, Heartbeat)>, QueueError>
where
    C: ConnectionLike + Send,
{
    Ok(worker_beats(conn, queue_key)
        .await?
        .into_iter()
        .filter_map(|w| w.heartbeat.map(|h| (w.worker, h)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials_in_logs() {
        assert_eq!(
            redact_url("redis://:secret@h:6379/0"),
            "redis://***@h:6379/0"
        );
        assert_eq!(
            redact_url("mysql://u:p@w@db:3306/x?a=b@c"),
            "mysql://***@db:3306/x?a=b@c"
        );
        assert_eq!(redact_url("http://es:9200"), "http://es:9200");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
