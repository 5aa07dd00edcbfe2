//! Pure checks of a MigrateJob beyond its schema, and their mapping to the Degraded condition.
//!
//! The CRD's schema and CEL rules reject most mistakes at admission; what they cannot express
//! (SQL placeholders, thresholds resolved against the memory limit, names that must fit in a
//! label value) is checked by `migrate_crds::validate::validate` and here. An invalid job gets a
//! Degraded condition and a Warning Event naming every problem, and waits for the next edit.

use migrate_crds::MigrateJob;
use migrate_crds::validate::{Invalid, validate};

use crate::policy::Settings;

/// Longest job name: it is a label value on every worker pod.
pub const MAX_NAME_LEN: usize = 63;

/// Condition reason of an invalid spec.
pub const REASON_INVALID_SPEC: &str = "InvalidSpec";

/// Every problem of a job that cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("MigrateJob {job} is invalid: {}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct InvalidJob {
    /// The job's name.
    pub job: String,
    /// Each problem, naming its field and value.
    pub problems: Vec<Invalid>,
}

impl InvalidJob {
    /// The Degraded condition's message: the problems, then what to do.
    #[must_use]
    pub fn message(&self) -> String {
        let list = self
            .problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        format!(
            "the spec cannot run: {list}. Fix it with `kubectl edit migratejob {}`; nothing is started or scaled until then",
            self.job
        )
    }
}

/// Checks a job and reads the policy's settings from it.
///
/// # Errors
/// [`InvalidJob`] listing every problem.
pub fn check(job: &MigrateJob) -> Result<Settings, InvalidJob> {
    let name = job.metadata.name.clone().unwrap_or_default();
    let mut problems = Vec::new();
    if name.len() > MAX_NAME_LEN {
        problems.push(Invalid {
            field: "metadata.name".to_owned(),
            message: format!(
                "{name:?} is {} characters long; at most {MAX_NAME_LEN} fit in the pods' label",
                name.len()
            ),
        });
    }
    if let Err(e) = validate(&job.spec) {
        problems.extend(e.0);
    }
    if !problems.is_empty() {
        return Err(InvalidJob {
            job: name,
            problems,
        });
    }
    Settings::from_spec(&job.spec).map_err(|e| {
        let text = e.to_string();
        let (field, message) = text.split_once(": ").unwrap_or(("memory", text.as_str()));
        InvalidJob {
            job: name,
            problems: vec![Invalid {
                field: field.to_owned(),
                message: message.to_owned(),
            }],
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use migrate_crds::pipeline::example_spec;

    fn job(name: &str, spec: migrate_crds::MigrateJobSpec) -> MigrateJob {
        MigrateJob::new(name, spec)
    }

    #[test]
    fn the_example_job_passes_and_gives_its_settings() {
        let settings = check(&job("articles", example_spec())).unwrap();
        assert_eq!(
            settings.min_replicas,
            example_spec().workers.min_replicas as u32
        );
    }

    /// A spec the schema accepts but the worker would refuse maps to a message naming the field,
    /// the value and the command that fixes it.
    #[test]
    fn an_invalid_spec_names_each_field_and_how_to_fix_it() {
        let mut spec = example_spec();
        spec.source.queries[1].sql = "SELECT name FROM tags".to_owned();
        let err = check(&job("articles", spec)).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert_eq!(err.problems[0].field, "source.queries[1].sql");
        let message = err.message();
        assert!(message.contains("exactly one `?` placeholder"), "{message}");
        assert!(
            message.contains("kubectl edit migratejob articles"),
            "{message}"
        );
    }

    #[test]
    fn a_name_too_long_for_a_label_is_refused() {
        let name = "a".repeat(64);
        let err = check(&job(&name, example_spec())).unwrap_err();
        assert_eq!(err.problems[0].field, "metadata.name");
        assert!(err.problems[0].message.contains("64 characters"), "{err}");
    }
}
