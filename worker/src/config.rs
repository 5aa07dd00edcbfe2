//! The worker's configuration: the pipeline file plus the environment.
//!
//! The pipeline (a `MigrateJob` manifest or its bare spec) says what to do; connection strings
//! and secrets come only from the environment, which the operator fills from Secrets:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `MIGRATE_REDIS_URL` | the queue's Redis | required |
//! | `MIGRATE_MYSQL_URL` | the source database | required |
//! | `MIGRATE_SEARCH_URL` | the Elasticsearch/OpenSearch endpoint | required |
//! | `MIGRATE_SEARCH_USERNAME`, `MIGRATE_SEARCH_PASSWORD` | basic auth for the index | none |
//! | `MIGRATE_WORKER_ID` | this worker's id in Redis keys | host name + pid |
//! | `MIGRATE_KEYWORDS_DIR` | folder of keyword files | `/etc/migrate/keywords` |
//! | `MIGRATE_LISTEN` | address of `/metrics`, `/healthz`, `/readyz` | `127.0.0.1:9000` |
//! | `MIGRATE_LOG_FORMAT` | `text` or `json` | `text` |
//! | `MIGRATE_MEMORY_LIMIT_BYTES` | memory limit when there is no cgroup limit | cgroup |
//!
//! Every error here is a configuration error (exit code 78: restarting will not help).
//! Secrets never reach logs: [`WorkerConfig`]'s `Debug` redacts them.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use migrate_contract::env;
use migrate_crds::MigrateJobSpec;
use migrate_crds::pipeline::PipelineError;
use migrate_crds::validate::ValidationError;

use crate::queue::redact_url;

/// The command-line flags and environment variables of `migrate-worker run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The pipeline file: a MigrateJob manifest or its spec, as YAML.
    #[arg(long, value_name = "FILE")]
    pub pipeline: PathBuf,
    /// Connection strings and local settings, from the environment.
    #[command(flatten)]
    pub env: EnvArgs,
}

/// Settings read from the environment (each also accepted as a flag; prefer the environment
/// for URLs with passwords, since command lines are visible to other users).
#[derive(Clone, Default, clap::Args)]
pub struct EnvArgs {
    /// Redis URL of the queue, e.g. redis://:password@redis:6379/0 (required).
    #[arg(
        long,
        env = env::REDIS_URL,
        hide_env_values = true,
        value_name = "URL"
    )]
    pub redis_url: Option<String>,
    /// MySQL URL of the source, e.g. mysql://user:password@mysql:3306/db (required).
    #[arg(
        long,
        env = env::MYSQL_URL,
        hide_env_values = true,
        value_name = "URL"
    )]
    pub mysql_url: Option<String>,
    /// Elasticsearch/OpenSearch URL, e.g. https://search:9200 (required).
    #[arg(
        long,
        env = env::SEARCH_URL,
        hide_env_values = true,
        value_name = "URL"
    )]
    pub search_url: Option<String>,
    /// Basic-auth user of the search endpoint.
    #[arg(
        long,
        env = env::SEARCH_USERNAME,
        hide_env_values = true,
        value_name = "USER"
    )]
    pub search_username: Option<String>,
    /// Basic-auth password of the search endpoint.
    #[arg(
        long,
        env = env::SEARCH_PASSWORD,
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    pub search_password: Option<String>,
    /// This worker's id in the Redis keys [default: host name and pid].
    #[arg(long, env = env::WORKER_ID, value_name = "ID")]
    pub worker_id: Option<String>,
    /// Folder holding the keyword files named by the pipeline.
    #[arg(
        long,
        env = env::KEYWORDS_DIR,
        default_value = "/etc/migrate/keywords",
        value_name = "DIR"
    )]
    pub keywords_dir: PathBuf,
    /// Address of the /metrics, /healthz and /readyz endpoints (loopback unless told
    /// otherwise; the operator sets 0.0.0.0:PORT in a pod).
    #[arg(
        long,
        env = env::LISTEN,
        default_value = "127.0.0.1:9000",
        value_name = "ADDR"
    )]
    pub listen: Option<SocketAddr>,
    /// Memory limit the soft and hard thresholds refer to, in bytes or as a quantity such as
    /// 512Mi [default: the cgroup's memory.max, else workers.resources.limits.memory].
    #[arg(
        long,
        visible_alias = "memory-limit",
        env = env::MEMORY_LIMIT_BYTES,
        value_name = "BYTES"
    )]
    pub memory_limit_bytes: Option<String>,
    /// Set by a supervisor (`1`): at the soft memory line, ask it for a restart and keep
    /// working instead of draining at once.
    #[arg(long, env = env::SUPERVISED, value_name = "1|0", hide = true)]
    pub supervised: Option<String>,
}

/// The flags of `migrate-worker check`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// The pipeline file: a MigrateJob manifest or its spec, as YAML.
    #[arg(long, value_name = "FILE")]
    pub pipeline: PathBuf,
    /// Memory limit the soft and hard thresholds refer to, as for `run` [default: the
    /// cgroup's memory.max, else workers.resources.limits.memory].
    #[arg(
        long,
        visible_alias = "memory-limit",
        env = env::MEMORY_LIMIT_BYTES,
        value_name = "BYTES"
    )]
    pub memory_limit_bytes: Option<String>,
}

impl fmt::Debug for EnvArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvArgs")
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("mysql_url", &self.mysql_url.as_deref().map(redact_url))
            .field("search_url", &self.search_url.as_deref().map(redact_url))
            .field("search_username", &self.search_username)
            .field(
                "search_password",
                &self.search_password.as_ref().map(|_| "***"),
            )
            .field("worker_id", &self.worker_id)
            .field("keywords_dir", &self.keywords_dir)
            .field("listen", &self.listen)
            .field("memory_limit_bytes", &self.memory_limit_bytes)
            .field("supervised", &self.supervised)
            .finish()
    }
}

/// Why the worker cannot start with this configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The pipeline file cannot be read or parsed.
    #[error("cannot load the pipeline")]
    Pipeline(#[source] PipelineError),
    /// The pipeline parses but is invalid.
    #[error("the pipeline is invalid")]
    Invalid(#[source] ValidationError),
    /// A required environment variable is not set.
    #[error("environment variable {variable} is not set ({what})")]
    Missing {
        /// The variable.
        variable: &'static str,
        /// What it is for.
        what: &'static str,
    },
    /// A setting is malformed.
    #[error("{variable} is invalid: {message}")]
    Malformed {
        /// The variable or field.
        variable: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// Every problem, one sentence each (a validation error lists each invalid field).
    #[must_use]
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid(ValidationError(problems)) => {
                problems.iter().map(ToString::to_string).collect()
            }
            ConfigError::Pipeline(e) => vec![e.to_string()],
            other => vec![other.to_string()],
        }
    }
}

/// Everything the worker needs to run.
#[derive(Clone)]
pub struct WorkerConfig {
    /// The pipeline.
    pub spec: MigrateJobSpec,
    /// Where it was read from.
    pub pipeline_path: PathBuf,
    /// Redis URL (secret: never log it unredacted).
    pub redis_url: String,
    /// MySQL URL (secret).
    pub mysql_url: String,
    /// Search URL (secret).
    pub search_url: String,
    /// Search basic-auth user.
    pub search_username: Option<String>,
    /// Search basic-auth password (secret).
    pub search_password: Option<String>,
    /// This worker's id.
    pub worker_id: String,
    /// Folder of keyword files.
    pub keywords_dir: PathBuf,
    /// Address of the HTTP endpoints.
    pub listen: SocketAddr,
    /// Memory limit override in bytes.
    pub memory_limit_bytes: Option<u64>,
    /// A supervisor grants this worker's restarts: at the soft line it asks instead of
    /// draining itself (`migrate_contract::restart`).
    pub supervised: bool,
}

impl fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("pipeline_path", &self.pipeline_path)
            .field("queue", &self.spec.queue.key)
            .field("index", &self.spec.sink.index)
            .field("redis_url", &redact_url(&self.redis_url))
            .field("mysql_url", &redact_url(&self.mysql_url))
            .field("search_url", &redact_url(&self.search_url))
            .field("search_username", &self.search_username)
            .field(
                "search_password",
                &self.search_password.as_ref().map(|_| "***"),
            )
            .field("worker_id", &self.worker_id)
            .field("keywords_dir", &self.keywords_dir)
            .field("listen", &self.listen)
            .field("memory_limit_bytes", &self.memory_limit_bytes)
            .finish_non_exhaustive()
    }
}

/// Reads and validates a pipeline file (what `migrate-worker check` does).
///
/// # Errors
/// [`ConfigError::Pipeline`] when it cannot be read or parsed, [`ConfigError::Invalid`] with
/// every problem when it is invalid.
pub fn load_pipeline(path: &Path) -> Result<MigrateJobSpec, ConfigError> {
    load_pipeline_with_memory_limit(path, None)
}

/// Like [`load_pipeline`], with the memory limit the percentage thresholds refer to given from
/// outside the spec (`None`: the spec's `workers.resources.limits.memory`).
///
/// # Errors
/// As [`load_pipeline`].
pub fn load_pipeline_with_memory_limit(
    path: &Path,
    memory_limit: Option<u64>,
) -> Result<MigrateJobSpec, ConfigError> {
    let spec = migrate_crds::pipeline::load(path).map_err(ConfigError::Pipeline)?;
    migrate_crds::validate::validate_with_memory_limit(&spec, memory_limit)
        .map_err(ConfigError::Invalid)?;
    Ok(spec)
}

/// Reads a memory limit given as bytes or a quantity (`MIGRATE_MEMORY_LIMIT_BYTES`,
/// `--memory-limit`); `None` when it is not given.
///
/// # Errors
/// [`ConfigError::Malformed`] naming the variable and the value when it is not a size.
pub fn parse_memory_limit(value: Option<&str>) -> Result<Option<u64>, ConfigError> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => migrate_crds::memory::parse_quantity_bytes(text)
            .filter(|b| *b > 0)
            .map(Some)
            .ok_or_else(|| ConfigError::Malformed {
                variable: env::MEMORY_LIMIT_BYTES,
                message: format!("{text:?} is not a size in bytes (e.g. 1073741824 or 1Gi)"),
            }),
    }
}

/// The limit the worker's thresholds will refer to when none is given in the spec: the
/// override, else this process's cgroup `memory.max` (the order `MemoryLimits` follows).
fn outside_limit(override_limit: Option<u64>) -> Option<u64> {
    override_limit.or_else(|| crate::memory::read_cgroup().and_then(|c| c.max))
}

fn required(
    value: Option<String>,
    variable: &'static str,
    what: &'static str,
) -> Result<String, ConfigError> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(ConfigError::Missing { variable, what }),
    }
}

/// The default worker id: host name and process id, e.g. `migrate-worker-7c9f-12`.
#[must_use]
pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    format!("{host}-{}", std::process::id())
}

impl WorkerConfig {
    /// Builds the configuration from parsed arguments: loads and validates the pipeline and
    /// checks that every required variable is set.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, field or variable at fault.
    pub fn from_args(args: RunArgs) -> Result<Self, ConfigError> {
        // The thresholds are checked against the limit the worker will use, so that
        // `memory.soft: 80%` with MIGRATE_MEMORY_LIMIT_BYTES and no limit in the spec runs.
        let override_limit = parse_memory_limit(args.env.memory_limit_bytes.as_deref())?;
        let spec = load_pipeline_with_memory_limit(&args.pipeline, outside_limit(override_limit))?;
        Self::from_parts(spec, args.pipeline, args.env)
    }

    /// Builds the configuration from an already valid spec and the environment settings.
    ///
    /// # Errors
    /// [`ConfigError::Missing`] for a required variable that is unset, [`ConfigError::Malformed`]
    /// for an unusable value.
    pub fn from_parts(
        spec: MigrateJobSpec,
        pipeline_path: PathBuf,
        env: EnvArgs,
    ) -> Result<Self, ConfigError> {
        let redis_url = required(env.redis_url, env::REDIS_URL, "the Redis URL of the queue")?;
        let mysql_url = required(env.mysql_url, env::MYSQL_URL, "the MySQL URL of the source")?;
        let search_url = required(
            env.search_url,
            env::SEARCH_URL,
            "the URL of the search index",
        )?;
        let search_username = env.search_username.filter(|u| !u.is_empty());
        let search_password = env.search_password.filter(|p| !p.is_empty());
        if search_username.is_some() != search_password.is_some() {
            return Err(ConfigError::Malformed {
                variable: env::SEARCH_USERNAME,
                message: "MIGRATE_SEARCH_USERNAME and MIGRATE_SEARCH_PASSWORD must be set together"
                    .to_owned(),
            });
        }
        let worker_id = env
            .worker_id
            .filter(|w| !w.trim().is_empty())
            .unwrap_or_else(default_worker_id);
        if worker_id
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ConfigError::Malformed {
                variable: env::WORKER_ID,
                message: format!("{worker_id:?} contains white space or control characters"),
            });
        }
        let listen = env
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9000)));
        let memory_limit_bytes = parse_memory_limit(env.memory_limit_bytes.as_deref())?;
        Ok(Self {
            spec,
            pipeline_path,
            redis_url,
            mysql_url,
            search_url,
            search_username,
            search_password,
            worker_id,
            keywords_dir: env.keywords_dir,
            listen,
            memory_limit_bytes,
            supervised: migrate_contract::restart::is_supervised(env.supervised.as_deref()),
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn env_args() -> EnvArgs {
        EnvArgs {
            redis_url: Some("redis://:redispw@127.0.0.1:6390/0".into()),
            mysql_url: Some("mysql://migrate:mysqlpw@127.0.0.1:3390/db".into()),
            search_url: Some("http://127.0.0.1:9250".into()),
            search_username: Some("admin".into()),
            search_password: Some("searchpw".into()),
            worker_id: Some("w-1".into()),
            keywords_dir: PathBuf::from("/tmp/kw"),
            listen: None,
            memory_limit_bytes: None,
            supervised: None,
        }
    }

    fn spec() -> MigrateJobSpec {
        migrate_crds::pipeline::example_spec()
    }

    #[test]
    fn a_missing_url_is_an_error_naming_the_variable() {
        for (variable, clear) in [
            (
                "MIGRATE_REDIS_URL",
                (|e: &mut EnvArgs| e.redis_url = None) as fn(&mut EnvArgs),
            ),
            ("MIGRATE_MYSQL_URL", |e| e.mysql_url = None),
            ("MIGRATE_SEARCH_URL", |e| e.search_url = Some(" ".into())),
        ] {
            let mut env = env_args();
            clear(&mut env);
            let err = WorkerConfig::from_parts(spec(), "p.yaml".into(), env).unwrap_err();
            assert!(err.to_string().contains(variable), "{err}");
        }
    }

    #[test]
    fn debug_output_never_shows_a_secret() {
        let config = WorkerConfig::from_parts(spec(), "p.yaml".into(), env_args()).unwrap();
        let shown = format!("{config:?} {:?}", env_args());
        for secret in ["redispw", "mysqlpw", "searchpw"] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
        assert!(shown.contains("127.0.0.1:6390"), "{shown}");
    }

    #[test]
    fn defaults_fill_the_optional_settings() {
        let mut env = env_args();
        env.worker_id = None;
        env.search_username = None;
        env.search_password = None;
        let config = WorkerConfig::from_parts(spec(), "p.yaml".into(), env).unwrap();
        assert!(
            config
                .worker_id
                .ends_with(&format!("-{}", std::process::id())),
            "{}",
            config.worker_id
        );
        assert_eq!(config.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(config.search_password, None);
    }

    #[test]
    fn the_memory_limit_accepts_bytes_and_quantities() {
        for (text, expected) in [("1073741824", 1_073_741_824), ("512Mi", 512 * 1024 * 1024)] {
            let mut env = env_args();
            env.memory_limit_bytes = Some(text.into());
            let config = WorkerConfig::from_parts(spec(), "p.yaml".into(), env).unwrap();
            assert_eq!(config.memory_limit_bytes, Some(expected));
        }
        let mut env = env_args();
        env.memory_limit_bytes = Some("lots".into());
        let err = WorkerConfig::from_parts(spec(), "p.yaml".into(), env).unwrap_err();
        assert!(
            err.to_string().contains("MIGRATE_MEMORY_LIMIT_BYTES"),
            "{err}"
        );
    }

    /// `memory.soft: "80%"` with no limit in the spec runs when the environment gives one.
    #[test]
    fn a_percentage_refers_to_the_limit_given_in_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.yaml");
        let mut spec = spec();
        spec.workers.resources = None;
        spec.memory.soft = "80%".into();
        spec.memory.hard = "90%".into();
        std::fs::write(&path, migrate_crds::pipeline::to_yaml(&spec).unwrap()).unwrap();
        let err = load_pipeline(&path).unwrap_err();
        assert!(
            err.problems()
                .iter()
                .any(|p| p.starts_with("memory.soft: \"80%\" is a percentage")),
            "{:?}",
            err.problems()
        );
        let mut env = env_args();
        env.memory_limit_bytes = Some("1Gi".into());
        let config = WorkerConfig::from_args(RunArgs {
            pipeline: path,
            env,
        })
        .unwrap();
        assert_eq!(config.memory_limit_bytes, Some(1 << 30));
    }

    #[test]
    fn a_user_without_a_password_is_refused() {
        let mut env = env_args();
        env.search_password = None;
        let err = WorkerConfig::from_parts(spec(), "p.yaml".into(), env).unwrap_err();
        assert!(err.to_string().contains("MIGRATE_SEARCH_PASSWORD"), "{err}");
    }

    #[test]
    fn an_invalid_pipeline_lists_every_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.yaml");
        let mut bad = spec();
        bad.source.queries.iter_mut().for_each(|q| q.main = false);
        bad.workers.min_replicas = 9;
        bad.workers.max_replicas = 2;
        std::fs::write(&path, migrate_crds::pipeline::to_yaml(&bad).unwrap()).unwrap();
        let err = load_pipeline(&path).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid(_)), "{err:?}");
        let problems = err.problems();
        assert!(problems.len() >= 2, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("main")), "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("minReplicas") || p.contains("min_replicas")),
            "{problems:?}"
        );
    }

    #[test]
    fn an_unreadable_pipeline_names_the_file() {
        let err = load_pipeline(Path::new("/nonexistent/pipeline.yaml")).unwrap_err();
        assert!(
            err.problems()[0].contains("/nonexistent/pipeline.yaml"),
            "{err:?}"
        );
    }

    #[test]
    fn flags_parse_with_their_defaults() {
        let cli =
            Cli::try_parse_from(["w", "--pipeline", "p.yaml", "--redis-url", "redis://r"]).unwrap();
        assert_eq!(cli.run.pipeline, PathBuf::from("p.yaml"));
        assert_eq!(cli.run.env.redis_url.as_deref(), Some("redis://r"));
        assert_eq!(
            cli.run.env.keywords_dir,
            PathBuf::from("/etc/migrate/keywords")
        );
        // On a laptop the endpoints are not open to the network unless asked for.
        if std::env::var_os(env::LISTEN).is_none() {
            assert_eq!(cli.run.env.listen, Some("127.0.0.1:9000".parse().unwrap()));
        }
    }
}
