//! The job file of `migrate-operator local`, read and checked once before anything starts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use migrate_crds::MigrateJobSpec;
use migrate_crds::memory::{ThresholdError, parse_quantity_bytes};
use migrate_crds::pipeline::PipelineError;
use migrate_crds::validate::{ValidationError, container_memory_limit, resolve_memory};

use crate::policy::Settings;

/// Time a worker gets beyond its termination grace period before it is killed.
pub const KILL_MARGIN: Duration = Duration::from_secs(5);

/// Why a job file cannot be supervised.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The file cannot be read or parsed.
    #[error("cannot load job file {path}")]
    Load {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: PipelineError,
    },
    /// The spec is invalid.
    #[error("job file {path} is invalid")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem.
        #[source]
        source: ValidationError,
    },
    /// A memory threshold does not parse.
    #[error("job file {path} has an unreadable memory threshold")]
    Threshold {
        /// The file.
        path: PathBuf,
        /// Which threshold and why.
        #[source]
        source: ThresholdError,
    },
    /// A memory size flag is not a size.
    #[error("{flag} {value:?} is not a memory size such as 512Mi, 2G or 1073741824")]
    Size {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: String,
    },
}

/// A job ready to supervise: the spec, the policy settings and the memory numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalJob {
    /// The job file (absolute), passed to every worker as `--pipeline`.
    pub path: PathBuf,
    /// The spec, with `workers.resources.limits.memory` set to the per-worker limit when one
    /// was given on the command line.
    pub spec: MigrateJobSpec,
    /// What the policy needs.
    pub settings: Settings,
    /// The per-worker memory limit the percentage thresholds refer to.
    pub memory_limit: Option<u64>,
    /// The limit given to the workers as `MIGRATE_MEMORY_LIMIT_BYTES` (their own soft and
    /// hard checks refer to it).
    pub worker_memory_limit: Option<u64>,
    /// The soft threshold in bytes.
    pub soft_bytes: Option<u64>,
    /// The hard threshold in bytes.
    pub hard_bytes: Option<u64>,
    /// Time between two observations (`memory.checkIntervalMs`).
    pub check_interval: Duration,
    /// Time a draining worker gets before it is killed: the termination grace period plus
    /// [`KILL_MARGIN`].
    pub kill_after: Duration,
}

impl LocalJob {
    /// Reads and checks a job file. `memory_limit` overrides the spec's
    /// `workers.resources.limits.memory`; `worker_memory_limit` is what the workers are told
    /// (default: the same limit).
    ///
    /// # Errors
    /// [`JobError`] naming the file, the field or the flag that is wrong.
    pub fn load(
        path: &Path,
        memory_limit: Option<&str>,
        worker_memory_limit: Option<&str>,
    ) -> Result<Self, JobError> {
        let spec = migrate_crds::pipeline::load(path).map_err(|source| JobError::Load {
            path: path.to_owned(),
            source,
        })?;
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        Self::from_spec(path, spec, memory_limit, worker_memory_limit)
    }

    /// [`LocalJob::load`] for a spec already read.
    ///
    /// # Errors
    /// As [`LocalJob::load`].
    pub fn from_spec(
        path: PathBuf,
        mut spec: MigrateJobSpec,
        memory_limit: Option<&str>,
        worker_memory_limit: Option<&str>,
    ) -> Result<Self, JobError> {
        let size = |flag: &'static str, value: &str| {
            parse_quantity_bytes(value.trim()).ok_or_else(|| JobError::Size {
                flag,
                value: value.to_owned(),
            })
        };
        if let Some(limit) = memory_limit {
            size("--memory-limit", limit)?;
            set_memory_limit(&mut spec, limit.trim());
        }
        let worker_limit = worker_memory_limit
            .map(|v| size("--worker-memory-limit", v))
            .transpose()?;
        migrate_crds::validate::validate(&spec).map_err(|source| JobError::Invalid {
            path: path.clone(),
            source,
        })?;
        let resolved = resolve_memory(&spec).map_err(|source| JobError::Invalid {
            path: path.clone(),
            source,
        })?;
        let settings = Settings::from_spec(&spec).map_err(|source| JobError::Threshold {
            path: path.clone(),
            source,
        })?;
        let memory_limit = container_memory_limit(&spec);
        let grace = Duration::from_secs(
            u64::try_from(spec.workers.termination_grace_period_seconds).unwrap_or(30),
        );
        Ok(Self {
            path,
            memory_limit,
            worker_memory_limit: worker_limit.or(memory_limit),
            soft_bytes: resolved.soft_bytes,
            hard_bytes: resolved.hard_bytes,
            check_interval: Duration::from_millis(u64::from(
                spec.memory.check_interval_ms.max(100),
            )),
            kill_after: grace + KILL_MARGIN,
            settings,
            spec,
        })
    }

    /// The folder of the keyword files when the spec's `keywords.configMap` names one: in local
    /// mode it may be a folder, relative to the job file.
    #[must_use]
    pub fn keywords_folder(&self) -> Option<PathBuf> {
        let name = self.spec.keywords.config_map.as_deref()?;
        let base = self.path.parent().unwrap_or_else(|| Path::new("."));
        let dir = base.join(name);
        dir.is_dir().then_some(dir)
    }
}

fn set_memory_limit(spec: &mut MigrateJobSpec, limit: &str) {
    let resources = spec
        .workers
        .resources
        .get_or_insert_with(ResourceRequirements::default);
    resources
        .limits
        .get_or_insert_with(Default::default)
        .insert("memory".to_owned(), Quantity(limit.to_owned()));
    // A memory request is what a scheduler reserves on a node: a local process has none, and a
    // request above the new limit would make the spec one Kubernetes refuses.
    if let Some(requests) = resources.requests.as_mut() {
        requests.remove("memory");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> MigrateJobSpec {
        migrate_crds::pipeline::example_spec()
    }

    #[test]
    fn the_memory_limit_flag_wins_over_the_spec_and_sets_the_thresholds() {
        let job = LocalJob::from_spec("/j.yaml".into(), spec(), Some("500Mi"), None).unwrap();
        assert_eq!(job.memory_limit, Some(500 << 20));
        assert_eq!(job.worker_memory_limit, Some(500 << 20));
        assert_eq!(job.soft_bytes, Some((500 << 20) / 100 * 80));
        assert_eq!(job.settings.spec_limit_bytes, Some(500 << 20));
        assert_eq!(job.kill_after, Duration::from_secs(30) + KILL_MARGIN);
        assert_eq!(job.check_interval, Duration::from_secs(1));
    }

    #[test]
    fn without_a_flag_the_spec_limit_is_used_and_the_workers_may_be_told_another() {
        let job = LocalJob::from_spec("/j.yaml".into(), spec(), None, Some("4Gi")).unwrap();
        assert_eq!(job.memory_limit, Some(1 << 30));
        assert_eq!(job.worker_memory_limit, Some(4 << 30));
    }

    #[test]
    fn percentages_without_any_limit_are_refused_naming_the_field() {
        let mut s = spec();
        s.workers.resources = None;
        let err = LocalJob::from_spec("/j.yaml".into(), s, None, None).unwrap_err();
        let text = format!(
            "{err}: {}",
            std::error::Error::source(&err)
                .map(ToString::to_string)
                .unwrap_or_default()
        );
        assert!(text.contains("memory.soft"), "{text}");
    }

    #[test]
    fn a_size_flag_that_is_not_a_size_is_refused() {
        let err = LocalJob::from_spec("/j.yaml".into(), spec(), Some("lots"), None).unwrap_err();
        assert!(
            matches!(
                err,
                JobError::Size {
                    flag: "--memory-limit",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_keywords_config_map_naming_a_folder_next_to_the_job_is_that_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("migrate-keywords")).unwrap();
        let job = LocalJob::from_spec(dir.path().join("job.yaml"), spec(), None, None).unwrap();
        assert_eq!(
            job.keywords_folder(),
            Some(dir.path().join("migrate-keywords"))
        );
        let elsewhere =
            LocalJob::from_spec("/nonexistent/job.yaml".into(), spec(), None, None).unwrap();
        assert_eq!(elsewhere.keywords_folder(), None);
    }
}
