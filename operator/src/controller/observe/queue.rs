//! The job's Redis queue as the controller reads and requeues it: length, each worker's
//! processing list (in-flight ids: the testbed has no kubelet, so in-flight is always read from
//! Redis, never from a pod), the workers that ever took work, and the outcome totals. Behind a
//! trait so that controller tests run against a fake.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::future::BoxFuture;
use migrate_contract::Keys;
use migrate_contract::queue::{backlog, redact_url, requeue_worker};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Mutex;

use super::ObserveError;
use crate::policy::Backlog;

/// Most Redis connections kept open at once (one per distinct Redis URL).
const MAX_CONNECTIONS: usize = 64;
/// How long connecting to Redis or one command may take.
const REDIS_TIMEOUT: Duration = Duration::from_secs(3);

/// The queue as one round of observation saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueView {
    /// Queued ids and ids in every registered worker's processing list.
    pub backlog: Backlog,
    /// Ids in the processing list of each worker asked about.
    pub in_flight: BTreeMap<String, u64>,
    /// Members of `{q}:workers`: every worker that took work and was not requeued since.
    pub holders: Vec<String>,
    /// `{q}:stats`: outcome totals (`indexed`, `filtered`, `skipped`, `dead`, `retried`).
    pub stats: BTreeMap<String, i64>,
}

/// Reads and requeues a job's Redis queue.
pub trait QueueBackend: Send + Sync {
    /// The queue `queue` at `url`, with the in-flight ids of each of `workers`.
    fn view<'a>(
        &'a self,
        url: &'a str,
        queue: &'a str,
        workers: &'a [String],
    ) -> BoxFuture<'a, Result<QueueView, ObserveError>>;

    /// Puts `worker`'s processing list back on the queue (idempotent); returns the ids moved.
    fn requeue<'a>(
        &'a self,
        url: &'a str,
        queue: &'a str,
        worker: &'a str,
    ) -> BoxFuture<'a, Result<u64, ObserveError>>;
}

/// [`QueueBackend`] on real Redis servers, one cached connection per URL.
#[derive(Default)]
pub struct RedisQueues {
    connections: Mutex<HashMap<String, ConnectionManager>>,
}

impl std::fmt::Debug for RedisQueues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueues").finish_non_exhaustive()
    }
}

impl RedisQueues {
    async fn connection(&self, url: &str) -> Result<ConnectionManager, ObserveError> {
        let mut cache = self.connections.lock().await;
        if let Some(c) = cache.get(url) {
            return Ok(c.clone());
        }
        let client = redis::Client::open(url).map_err(ObserveError::RedisUrl)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        let conn = tokio::time::timeout(
            REDIS_TIMEOUT * 2,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| ObserveError::Timeout(REDIS_TIMEOUT * 2))?
        .map_err(|source| ObserveError::RedisConnect {
            url: redact_url(url),
            source,
        })?;
        if cache.len() >= MAX_CONNECTIONS {
            cache.clear();
        }
        cache.insert(url.to_owned(), conn.clone());
        Ok(conn)
    }

    async fn view_inner(
        &self,
        url: &str,
        queue: &str,
        workers: &[String],
    ) -> Result<QueueView, ObserveError> {
        let mut conn = self.connection(url).await?;
        let totals = backlog(&mut conn, queue)
            .await
            .map_err(|source| ObserveError::Queue {
                queue: queue.to_owned(),
                source,
            })?;
        let keys = Keys::new(queue, "");
        let redis_err = |command: &'static str| {
            let key = queue.to_owned();
            move |source| ObserveError::Redis {
                command,
                key,
                source,
            }
        };
        let (holders, stats): (Vec<String>, BTreeMap<String, i64>) = redis::pipe()
            .cmd("SMEMBERS")
            .arg(&keys.workers)
            .cmd("HGETALL")
            .arg(&keys.stats)
            .query_async(&mut conn)
            .await
            .map_err(redis_err("SMEMBERS/HGETALL"))?;
        let lengths: Vec<u64> = if workers.is_empty() {
            Vec::new()
        } else {
            let mut pipe = redis::pipe();
            for w in workers {
                pipe.cmd("LLEN").arg(Keys::processing_of(queue, w));
            }
            pipe.query_async(&mut conn)
                .await
                .map_err(redis_err("LLEN"))?
        };
        let in_flight = workers.iter().cloned().zip(lengths).collect();
        Ok(QueueView {
            backlog: totals,
            in_flight,
            holders,
            stats,
        })
    }
}

impl QueueBackend for RedisQueues {
    fn view<'a>(
        &'a self,
        url: &'a str,
        queue: &'a str,
        workers: &'a [String],
    ) -> BoxFuture<'a, Result<QueueView, ObserveError>> {
        Box::pin(async move {
            tokio::time::timeout(REDIS_TIMEOUT * 3, self.view_inner(url, queue, workers))
                .await
                .map_err(|_| ObserveError::Timeout(REDIS_TIMEOUT * 3))?
        })
    }

    fn requeue<'a>(
        &'a self,
        url: &'a str,
        queue: &'a str,
        worker: &'a str,
    ) -> BoxFuture<'a, Result<u64, ObserveError>> {
        Box::pin(async move {
            let mut conn = self.connection(url).await?;
            tokio::time::timeout(REDIS_TIMEOUT * 2, requeue_worker(&mut conn, queue, worker))
                .await
                .map_err(|_| ObserveError::Timeout(REDIS_TIMEOUT * 2))?
                .map_err(|source| ObserveError::Queue {
                    queue: queue.to_owned(),
                    source,
                })
        })
    }
}
