//! Why an observation failed.

use std::time::Duration;

use migrate_contract::queue::QueueError;

/// Why an observation failed.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// The Secret holding the Redis URL does not exist.
    #[error("secret {namespace}/{name} does not exist")]
    SecretMissing {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
    },
    /// The Secret exists but lacks the key, or the value is not UTF-8.
    #[error("secret {namespace}/{name} has no UTF-8 key {key:?}")]
    SecretKeyMissing {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// The key looked for.
        key: String,
    },
    /// Reading the Secret failed.
    #[error("cannot read secret {namespace}/{name}")]
    SecretRead {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A Secret or ConfigMap the spec names could not be read.
    #[error("cannot read {kind} {namespace}/{name}")]
    ReferenceRead {
        /// Secret or ConfigMap.
        kind: &'static str,
        /// Namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The `metrics.k8s.io` API could not be listed.
    #[error(
        "cannot list PodMetrics (metrics.k8s.io/v1beta1): is metrics-server installed (kubectl top pod)?"
    )]
    PodMetrics(#[source] kube::Error),
    /// The URL is not a Redis URL.
    #[error("the Redis URL in the secret does not parse")]
    RedisUrl(#[source] redis::RedisError),
    /// Connecting to Redis failed.
    #[error("cannot connect to Redis at {url}")]
    RedisConnect {
        /// The URL, password removed.
        url: String,
        /// The client's error.
        #[source]
        source: redis::RedisError,
    },
    /// A queue command failed.
    #[error("queue {queue} could not be read or written")]
    Queue {
        /// The queue key.
        queue: String,
        /// The queue contract's error.
        #[source]
        source: QueueError,
    },
    /// A Redis command failed.
    #[error("redis command {command} on {key} failed")]
    Redis {
        /// The command.
        command: &'static str,
        /// The key.
        key: String,
        /// The client's error.
        #[source]
        source: redis::RedisError,
    },
    /// Redis did not answer in time.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// A worker's `/metrics` could not be read.
    #[error("cannot scrape {url}")]
    Scrape {
        /// The URL.
        url: String,
        /// The HTTP error.
        #[source]
        source: reqwest::Error,
    },
}

impl ObserveError {
    /// A short stable name, used as the Degraded condition's reason.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::SecretMissing { .. } => "RedisSecretMissing",
            Self::SecretKeyMissing { .. } | Self::RedisUrl(_) => "RedisSecretInvalid",
            Self::SecretRead { .. } => "RedisSecretUnreadable",
            Self::ReferenceRead { .. } => "ReferenceUnreadable",
            Self::RedisConnect { .. }
            | Self::Queue { .. }
            | Self::Redis { .. }
            | Self::Timeout(_) => "RedisUnreachable",
            Self::Scrape { .. } => "MetricsUnreachable",
            Self::PodMetrics(_) => "MetricsUnavailable",
        }
    }
}
