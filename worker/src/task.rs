//! A task: one id taken from the queue, and the document built for it.

use std::borrow::Cow;
use std::fmt;

use migrate_contract::keys::stat;

use crate::stage::Stage;

/// A task id as taken from the queue. Ids are decimal unsigned integers; anything else is a
/// poison task that is dead-lettered at the queue stage with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaskId {
    /// The id exactly as it was in the Redis list (used to acknowledge it).
    pub raw: String,
    /// The numeric value, bound as the parameter of every source query.
    pub value: u64,
}

/// Why a raw queue entry is not a task id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task id {} is not a decimal unsigned integer", shown_id(raw))]
pub struct BadTaskId {
    /// The entry as taken from the queue.
    pub raw: String,
}

impl TaskId {
    /// Reads a queue entry as a task id.
    ///
    /// # Errors
    /// [`BadTaskId`] when the entry is not a decimal unsigned integer.
    pub fn parse(raw: &str) -> Result<Self, BadTaskId> {
        let trimmed = raw.trim();
        let ok = !trimmed.is_empty()
            && trimmed.len() <= 20
            && trimmed.bytes().all(|b| b.is_ascii_digit());
        match trimmed.parse::<u64>() {
            Ok(value) if ok => Ok(Self {
                raw: raw.to_owned(),
                value,
            }),
            _ => Err(BadTaskId {
                raw: raw.to_owned(),
            }),
        }
    }

    /// The document id in the search index (the id's decimal form, so a replay overwrites).
    #[must_use]
    pub fn doc_id(&self) -> String {
        self.value.to_string()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Longest queue entry shown whole in logs and dead-letter reasons, in bytes.
pub const MAX_SHOWN_ID_BYTES: usize = 256;

/// Bytes of a long entry's start kept by [`shown_id`].
const SHOWN_PREFIX_BYTES: usize = 64;

/// A queue entry as logs and dead-letter reasons show it: quoted and whole up to
/// [`MAX_SHOWN_ID_BYTES`], else its first 64 bytes, its length and a hash of the whole
/// (FNV-1a, 64 bits), so that one malformed 10 KB entry does not fill the log twice. The
/// dead-letter entry itself keeps the whole id once, for a replay.
///
/// ```
/// use migrate_worker::task::shown_id;
///
/// assert_eq!(shown_id("42"), "\"42\"");
/// let long = "x".repeat(10_000);
/// let shown = shown_id(&long);
/// assert!(shown.len() < 120, "{shown}");
/// assert!(shown.contains("10000 bytes"), "{shown}");
/// ```
#[must_use]
pub fn shown_id(raw: &str) -> Cow<'_, str> {
    if raw.len() <= MAX_SHOWN_ID_BYTES {
        return Cow::Owned(format!("{raw:?}"));
    }
    let mut end = SHOWN_PREFIX_BYTES;
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    let hash = raw.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    Cow::Owned(format!(
        "{:?}… ({} bytes, fnv1a {hash:016x})",
        &raw[..end],
        raw.len()
    ))
}

/// A JSON document under construction.
pub type Document = serde_json::Map<String, serde_json::Value>;

/// Why a task is dead-lettered: the stage and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Stage that gave up on the task.
    pub stage: Stage,
    /// What went wrong, naming the input (the error chain, flattened).
    pub reason: String,
}

/// What became of one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Indexed; per-keyword counts to add exactly once.
    Indexed {
        /// `(keyword, hits)` pairs to add to the counts hash.
        counts: Vec<(String, u64)>,
    },
    /// Dropped by a black- or whitelist (acknowledged, counted, not indexed).
    Filtered {
        /// The keyword set that dropped it.
        set: String,
    },
    /// The main row does not exist and the policy is to skip.
    Skipped,
    /// Failed for now; the id goes back to the queue (or to the dead-letter list once its
    /// attempts are used up).
    Retry(DeadLetter),
    /// Failed for good.
    Dead(DeadLetter),
}

impl Outcome {
    /// The `{q}:stats` field this outcome adds to, and the `outcome` label of
    /// `migrate_tasks_total`: the one mapping from outcomes to their counted names.
    #[must_use]
    pub const fn stats_field(&self) -> &'static str {
        match self {
            Outcome::Indexed { .. } => stat::INDEXED,
            Outcome::Filtered { .. } => stat::FILTERED,
            Outcome::Skipped => stat::SKIPPED,
            Outcome::Retry(_) => stat::RETRIED,
            Outcome::Dead(_) => stat::DEAD,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_ids_parse_and_others_are_poison() {
        assert_eq!(TaskId::parse("42").unwrap().value, 42);
        assert_eq!(TaskId::parse(" 7 ").unwrap().doc_id(), "7");
        for bad in ["", "abc", "-1", "1.5", "99999999999999999999999", "+3"] {
            let err = TaskId::parse(bad).unwrap_err();
            assert_eq!(err.raw, bad);
            assert!(err.to_string().contains("not a decimal unsigned integer"));
        }
    }

    /// A 10 KB malformed id is shortened in the reason, and two ids differing only past the
    /// shown prefix still read differently.
    #[test]
    fn a_long_bad_id_is_shortened_with_its_length_and_hash() {
        let a = format!("{}a", "9".repeat(10_239));
        let b = format!("{}b", "9".repeat(10_239));
        let reason = TaskId::parse(&a).unwrap_err().to_string();
        assert!(reason.len() < 200, "{} bytes: {reason}", reason.len());
        assert!(reason.contains("10240 bytes"), "{reason}");
        assert_ne!(shown_id(&a), shown_id(&b));
        assert_eq!(shown_id(&"é".repeat(200)).matches('é').count(), 32);
        assert_eq!(shown_id(&"7".repeat(256)), format!("{:?}", "7".repeat(256)));
    }
}
