//! Why one reconciliation failed.

use migrate_crds::MigrateJob;

use super::apply::ApplyError;
use super::context::job_key;
use super::observe::ObserveError;

/// Why one reconciliation failed. [`Error::metric_label`] names the kind.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing to the API server failed.
    #[error("cannot write the objects of MigrateJob {job}")]
    Apply {
        /// `namespace/name`.
        job: String,
        /// What failed.
        #[source]
        source: ApplyError,
    },
    /// Writing the status failed.
    #[error("cannot write the status of MigrateJob {job}")]
    Status {
        /// `namespace/name`.
        job: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Redis could not be reached during cleanup (in-flight ids would be lost).
    #[error("cannot requeue the in-flight ids of MigrateJob {job}")]
    Requeue {
        /// `namespace/name`.
        job: String,
        /// What failed.
        #[source]
        source: ObserveError,
    },
}

impl Error {
    /// A short stable name of the kind of error (Event reason, log field).
    #[must_use]
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Apply { .. } => "apply",
            Error::Status { .. } => "status",
            Error::Requeue { .. } => "requeue",
        }
    }

    /// Wraps a failed write to `job`'s objects.
    pub(super) fn apply(job: &MigrateJob) -> impl Fn(ApplyError) -> Self {
        let key = job_key(job);
        move |source| Error::Apply {
            job: key.clone(),
            source,
        }
    }

    /// Wraps a failed write of `job`'s status.
    pub(super) fn status(job: &MigrateJob) -> impl Fn(kube::Error) -> Self {
        let key = job_key(job);
        move |source| Error::Status {
            job: key.clone(),
            source,
        }
    }
}
