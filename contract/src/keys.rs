//! The Redis key layout of one job: its only spelling in code.
//!
//! One job is one key prefix, the queue key `{q}`; `docs/architecture.md` ("Redis keys") lists
//! every key with its type, its writer and its meaning.

/// The Redis keys of one job and one worker, exactly as `docs/architecture.md` lists them.
///
/// ```
/// use migrate_contract::Keys;
///
/// let keys = Keys::new("articles", "w-1");
/// assert_eq!(keys.processing, "articles:processing:w-1");
/// assert_eq!(keys.heartbeat, "articles:heartbeat:w-1");
/// assert_eq!(keys.dead, "articles:dead");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// `{q}`: the pending ids.
    pub queue: String,
    /// The worker these keys belong to.
    pub worker: String,
    /// `{q}:processing:{worker}`: ids this worker took and has not acknowledged.
    pub processing: String,
    /// `{q}:heartbeat:{worker}`: alive marker with a TTL.
    pub heartbeat: String,
    /// `{q}:workers`: every worker id that took work.
    pub workers: String,
    /// `{q}:attempts`: deliveries per id.
    pub attempts: String,
    /// `{q}:givebacks`: graceful give-backs per id still in flight (cleared when it ends).
    pub givebacks: String,
    /// `{q}:dead`: dead-letter entries (JSON, newest first).
    pub dead: String,
    /// `{q}:counts`: keyword hit counts.
    pub counts: String,
    /// `{q}:stats`: outcome totals.
    pub stats: String,
}

impl Keys {
    /// The keys of queue `queue_key` as seen by `worker`.
    #[must_use]
    pub fn new(queue_key: &str, worker: &str) -> Self {
        Self {
            queue: queue_key.to_owned(),
            worker: worker.to_owned(),
            processing: Self::processing_of(queue_key, worker),
            heartbeat: Self::heartbeat_of(queue_key, worker),
            workers: format!("{queue_key}:workers"),
            attempts: format!("{queue_key}:attempts"),
            givebacks: format!("{queue_key}:givebacks"),
            dead: format!("{queue_key}:dead"),
            counts: format!("{queue_key}:counts"),
            stats: format!("{queue_key}:stats"),
        }
    }

    /// `{q}:processing:{worker}`.
    #[must_use]
    pub fn processing_of(queue_key: &str, worker: &str) -> String {
        format!("{queue_key}:processing:{worker}")
    }

    /// `{q}:heartbeat:{worker}`.
    #[must_use]
    pub fn heartbeat_of(queue_key: &str, worker: &str) -> String {
        format!("{queue_key}:heartbeat:{worker}")
    }
}

/// The fields of `{q}:stats`, the outcome totals: written by the worker's scripts (the ack
/// scripts take the field as an argument; the dead-letter and retry scripts spell `dead` and
/// `retried` themselves), read by the supervisors for the status and the summary.
pub mod stat {
    /// Tasks indexed.
    pub const INDEXED: &str = "indexed";
    /// Tasks dropped by a black- or whitelist.
    pub const FILTERED: &str = "filtered";
    /// Tasks whose main row does not exist, skipped by policy.
    pub const SKIPPED: &str = "skipped";
    /// Tasks put back on the queue after a failure.
    pub const RETRIED: &str = "retried";
    /// Tasks dead-lettered.
    pub const DEAD: &str = "dead";
    /// The fields of finished tasks (every outcome but a retry), which add up to the tasks done.
    pub const FINISHED: [&str; 4] = [INDEXED, FILTERED, SKIPPED, DEAD];
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key of the architecture page's table, spelled as the page spells it.
    #[test]
    fn every_key_follows_the_documented_layout() {
        let k = Keys::new("q", "w");
        assert_eq!(
            [
                k.queue.as_str(),
                &k.processing,
                &k.heartbeat,
                &k.workers,
                &k.attempts,
                &k.givebacks,
                &k.dead,
                &k.counts,
                &k.stats
            ],
            [
                "q",
                "q:processing:w",
                "q:heartbeat:w",
                "q:workers",
                "q:attempts",
                "q:givebacks",
                "q:dead",
                "q:counts",
                "q:stats"
            ]
        );
        let doc = include_str!("../../docs/architecture.md");
        for key in [
            "`{q}`",
            "`{q}:processing:{worker}`",
            "`{q}:heartbeat:{worker}`",
            "`{q}:workers`",
            "`{q}:attempts`",
            "`{q}:givebacks`",
            "`{q}:dead`",
            "`{q}:counts`",
            "`{q}:stats`",
        ] {
            assert!(
                doc.contains(&format!("| {key} |")),
                "{key} is not documented"
            );
        }
    }
}
