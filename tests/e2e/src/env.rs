//! Where the testbed services are, and a loud check that they answer.
//!
//! Addresses come, per variable, from the process environment, else from the testbed's
//! `.testbed/env` file (written by `tests/testbed/up.sh`), else from the loopback defaults of
//! `tests/testbed/README.md`. A test that needs a service calls [`TestEnv::require`] first: it
//! panics naming the address and `tests/testbed/up.sh` when the service does not answer, so a
//! test fails instead of silently skipping when the testbed is down.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::fail;

/// Default addresses, as in `tests/testbed/README.md`.
pub use crate::redis::DEFAULT_REDIS_URL;
/// Default MySQL URL (the `migrate` user may create databases named `migrate_%`).
pub const DEFAULT_MYSQL_URL: &str = "mysql://migrate:migrate@127.0.0.1:3390/migrate";
/// Default OpenSearch URL.
pub const DEFAULT_ES_URL: &str = "http://127.0.0.1:9250";
/// Default osmem (in-memory OpenSearch-compatible server) URL.
pub const DEFAULT_OSMEM_URL: &str = "http://127.0.0.1:9251";
/// Default noida (Elasticsearch-compatible server) URL.
pub const DEFAULT_NOIDA_URL: &str = "http://127.0.0.1:9252";
/// Default address at which pods of the real node reach the services above: the host side of the
/// node's bridge, where `tests/testbed/components/node.sh` forwards each port to 127.0.0.1.
pub const DEFAULT_NODE_SERVICES_HOST: &str = "10.244.0.1";
/// Default URL of the test NLP service (`tests/nlp`).
pub const DEFAULT_NLP_URL: &str = "http://127.0.0.1:8090";

/// How long one readiness probe of [`TestEnv::require`] may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a service did not answer a probe.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    /// Redis refused or failed the PING.
    #[error("redis PING failed")]
    Redis(#[source] redis::RedisError),
    /// MySQL refused the connection or `SELECT 1`.
    #[error("mysql connect or SELECT 1 failed")]
    Mysql(#[source] mysql_async::Error),
    /// The HTTP request failed.
    #[error("GET {url} failed")]
    Http {
        /// The URL requested.
        url: String,
        /// The client error.
        #[source]
        source: reqwest::Error,
    },
    /// The HTTP request answered with an error status.
    #[error("GET {url} answered {status}")]
    Status {
        /// The URL requested.
        url: String,
        /// The status received.
        status: reqwest::StatusCode,
    },
    /// No kubeconfig is known or it cannot be read.
    #[error("no readable kubeconfig ({0})")]
    Kubeconfig(String),
    /// The API server's port does not accept connections.
    #[error("cannot connect to the API server {addr}")]
    Connect {
        /// `host:port` tried.
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The probe took longer than its deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// A testbed service a test can [`require`](TestEnv::require).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// Redis (`REDIS_URL`), probed with PING.
    Redis,
    /// MariaDB (`MYSQL_URL`), probed with `SELECT 1`.
    Mysql,
    /// OpenSearch (`ES_URL`), probed with `GET /_cluster/health`.
    Es,
    /// osmem (`OSMEM_URL`), probed with `GET /_cluster/health`.
    Osmem,
    /// noida (`NOIDA_URL`), probed with `GET /_cluster/health`.
    Noida,
    /// The test NLP service (`NLP_URL`), probed with `GET /healthz`.
    Nlp,
    /// The Kubernetes API server named in `KUBECONFIG`, probed with a TCP connect.
    Kubernetes,
    /// The API server of the real single-node cluster named in `NODE_KUBECONFIG` (a kubelet,
    /// containerd and runc run its pods), probed with a TCP connect.
    Node,
}

impl Service {
    /// The testbed component that provides this service (`tests/testbed/up.sh <component>`).
    #[must_use]
    pub fn component(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Mysql => "mariadb",
            Self::Es => "opensearch",
            Self::Osmem => "osmem",
            Self::Noida => "noida",
            Self::Nlp => "nlp",
            Self::Kubernetes => "k8s",
            Self::Node => "node",
        }
    }
}

/// The addresses of the testbed services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestEnv {
    /// `REDIS_URL`, e.g. `redis://127.0.0.1:6390`.
    pub redis_url: String,
    /// `MYSQL_URL`, e.g. `mysql://migrate:migrate@127.0.0.1:3390/migrate`.
    pub mysql_url: String,
    /// `ES_URL` (OpenSearch), e.g. `http://127.0.0.1:9250`.
    pub es_url: String,
    /// `OSMEM_URL`, e.g. `http://127.0.0.1:9251`.
    pub osmem_url: String,
    /// `NOIDA_URL`, e.g. `http://127.0.0.1:9252`.
    pub noida_url: String,
    /// `NLP_URL`, e.g. `http://127.0.0.1:8090` (no trailing slash).
    pub nlp_url: String,
    /// `KUBECONFIG` of the testbed's API server, when one is known (the variable, the env file,
    /// or `<testbed>/k8s/admin.kubeconfig` when that file exists).
    pub kubeconfig: Option<PathBuf>,
    /// `NODE_KUBECONFIG` of the real single-node cluster (`tests/testbed/up.sh node`), when one
    /// is known (the variable or the env file).
    pub node_kubeconfig: Option<PathBuf>,
    /// `NODE_SERVICES_HOST`: where the real node's pods reach the loopback services (see
    /// [`TestEnv::for_pods`]).
    pub node_services_host: String,
    /// `NODE_CONTAINERD_ADDRESS`: the socket of the real node's containerd, where a test
    /// imports an image it built (`ctr --address ... images import`).
    pub node_containerd_address: Option<PathBuf>,
}

impl TestEnv {
    /// Reads the addresses: each from its environment variable, else from the testbed's env
    /// file (`$TESTBED_DIR/env`, else `<repo>/.testbed/env`), else the loopback default.
    #[must_use]
    pub fn load() -> Self {
        let dir = testbed_dir();
        let file = std::fs::read_to_string(dir.join("env"))
            .map(|text| parse_env_file(&text))
            .unwrap_or_default();
        let default_kubeconfig = dir.join("k8s").join("admin.kubeconfig");
        Self::from_sources(|k| std::env::var(k).ok(), &file, &default_kubeconfig)
    }

    /// [`TestEnv::load`] with its sources given: `var` reads the environment, `file` holds the
    /// env file's variables, `default_kubeconfig` is used when it exists and nothing names one.
    fn from_sources(
        var: impl Fn(&str) -> Option<String>,
        file: &HashMap<String, String>,
        default_kubeconfig: &Path,
    ) -> Self {
        let get = |key: &str, default: &str| {
            var(key)
                .filter(|v| !v.trim().is_empty())
                .or_else(|| file.get(key).cloned())
                .unwrap_or_else(|| default.to_owned())
                .trim()
                .trim_end_matches('/')
                .to_owned()
        };
        let kubeconfig = var("KUBECONFIG")
            .filter(|v| !v.trim().is_empty())
            .or_else(|| file.get("KUBECONFIG").cloned())
            .map(PathBuf::from)
            .or_else(|| {
                default_kubeconfig
                    .exists()
                    .then(|| default_kubeconfig.to_path_buf())
            });
        let node_kubeconfig = var("NODE_KUBECONFIG")
            .filter(|v| !v.trim().is_empty())
            .or_else(|| file.get("NODE_KUBECONFIG").cloned())
            .map(PathBuf::from);
        Self {
            redis_url: get("REDIS_URL", DEFAULT_REDIS_URL),
            mysql_url: get("MYSQL_URL", DEFAULT_MYSQL_URL),
            es_url: get("ES_URL", DEFAULT_ES_URL),
            osmem_url: get("OSMEM_URL", DEFAULT_OSMEM_URL),
            noida_url: get("NOIDA_URL", DEFAULT_NOIDA_URL),
            nlp_url: get("NLP_URL", DEFAULT_NLP_URL),
            kubeconfig,
            node_kubeconfig,
            node_services_host: get("NODE_SERVICES_HOST", DEFAULT_NODE_SERVICES_HOST),
            node_containerd_address: var("NODE_CONTAINERD_ADDRESS")
                .filter(|v| !v.trim().is_empty())
                .or_else(|| file.get("NODE_CONTAINERD_ADDRESS").cloned())
                .map(PathBuf::from),
        }
    }

    /// `url` as a pod of the real node reaches it: a loopback host (`127.0.0.1`, `localhost`)
    /// becomes [`TestEnv::node_services_host`]; any other URL is returned as it is.
    #[must_use]
    pub fn for_pods(&self, url: &str) -> String {
        ["127.0.0.1", "localhost"]
            .iter()
            .find_map(|host| {
                let (scheme, rest) = url.split_once("://")?;
                let (userinfo, hostport) = match rest.split_once('@') {
                    Some((u, h)) => (format!("{u}@"), h),
                    None => (String::new(), rest),
                };
                let tail = hostport.strip_prefix(host)?;
                (tail.is_empty() || tail.starts_with([':', '/']))
                    .then(|| format!("{scheme}://{userinfo}{}{tail}", self.node_services_host))
            })
            .unwrap_or_else(|| url.to_owned())
    }

    /// The address a service is reached at (the kubeconfig path for Kubernetes).
    #[must_use]
    pub fn address(&self, service: Service) -> String {
        match service {
            Service::Redis => self.redis_url.clone(),
            Service::Mysql => self.mysql_url.clone(),
            Service::Es => self.es_url.clone(),
            Service::Osmem => self.osmem_url.clone(),
            Service::Noida => self.noida_url.clone(),
            Service::Nlp => self.nlp_url.clone(),
            Service::Kubernetes => self
                .kubeconfig
                .as_ref()
                .map_or_else(|| "(no KUBECONFIG)".to_owned(), |p| p.display().to_string()),
            Service::Node => self.node_kubeconfig.as_ref().map_or_else(
                || "(no NODE_KUBECONFIG)".to_owned(),
                |p| p.display().to_string(),
            ),
        }
    }

    /// Checks that every service in `what` answers (all probed at once, 5 s each).
    ///
    /// # Panics
    /// When any does not, with one line per failed service naming its address and the error,
    /// and the `tests/testbed/up.sh` command that starts them. Tests must fail, never skip,
    /// when the testbed is down.
    pub async fn require(&self, what: &[Service]) {
        let probes = what.iter().map(|&service| async move {
            let outcome = tokio::time::timeout(PROBE_TIMEOUT, self.probe(service))
                .await
                .unwrap_or(Err(ProbeError::Timeout(PROBE_TIMEOUT)));
            (service, outcome)
        });
        let failures: Vec<(Service, ProbeError)> = futures::future::join_all(probes)
            .await
            .into_iter()
            .filter_map(|(service, outcome)| outcome.err().map(|e| (service, e)))
            .collect();
        if failures.is_empty() {
            return;
        }
        let mut message = String::from("the testbed is not ready: this test needs real services\n");
        let mut components: Vec<&str> = Vec::new();
        for (service, error) in &failures {
            message.push_str(&format!(
                "  - {:?} at {}: {}\n",
                service,
                self.address(*service),
                crate::chain(error)
            ));
            if !components.contains(&service.component()) {
                components.push(service.component());
            }
        }
        message.push_str(&format!(
            "start them from the repository root with `tests/testbed/up.sh {}` (then `source .testbed/env`), \
             or point the *_URL variables at running services",
            components.join(" ")
        ));
        fail(message)
    }

    async fn probe(&self, service: Service) -> Result<(), ProbeError> {
        match service {
            Service::Redis => {
                let client =
                    redis::Client::open(self.redis_url.as_str()).map_err(ProbeError::Redis)?;
                let mut conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(ProbeError::Redis)?;
                let _: String = redis::cmd("PING")
                    .query_async(&mut conn)
                    .await
                    .map_err(ProbeError::Redis)?;
                Ok(())
            }
            Service::Mysql => {
                let opts = mysql_async::Opts::from_url(&self.mysql_url)
                    .map_err(|e| ProbeError::Mysql(mysql_async::Error::Url(e)))?;
                let mut conn = mysql_async::Conn::new(opts)
                    .await
                    .map_err(ProbeError::Mysql)?;
                let one: Option<u8> =
                    mysql_async::prelude::Queryable::query_first(&mut conn, "SELECT 1")
                        .await
                        .map_err(ProbeError::Mysql)?;
                let _ = conn.disconnect().await;
                debug_assert_eq!(one, Some(1));
                Ok(())
            }
            Service::Es => http_ok(&format!("{}/_cluster/health", self.es_url)).await,
            Service::Osmem => http_ok(&format!("{}/_cluster/health", self.osmem_url)).await,
            Service::Noida => http_ok(&format!("{}/_cluster/health", self.noida_url)).await,
            Service::Nlp => http_ok(&format!("{}/healthz", self.nlp_url)).await,
            Service::Kubernetes => {
                api_server_answers(self.kubeconfig.as_deref(), "KUBECONFIG").await
            }
            Service::Node => {
                api_server_answers(self.node_kubeconfig.as_deref(), "NODE_KUBECONFIG").await
            }
        }
    }
}

/// Connects to the API server of the kubeconfig at `path` (named by the variable `var`).
async fn api_server_answers(path: Option<&Path>, var: &str) -> Result<(), ProbeError> {
    let path = path.ok_or_else(|| ProbeError::Kubeconfig(format!("{var} is not set")))?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| ProbeError::Kubeconfig(format!("{}: {e}", path.display())))?;
    let addr = kube_server_addr(&text).ok_or_else(|| {
        ProbeError::Kubeconfig(format!(
            "{}: no `server: https://host:port` line",
            path.display()
        ))
    })?;
    tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|source| ProbeError::Connect { addr, source })?;
    Ok(())
}

async fn http_ok(url: &str) -> Result<(), ProbeError> {
    let client = reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .build()
        .map_err(|source| ProbeError::Http {
            url: url.to_owned(),
            source,
        })?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|source| ProbeError::Http {
            url: url.to_owned(),
            source,
        })?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(ProbeError::Status {
            url: url.to_owned(),
            status: response.status(),
        })
    }
}

/// `host:port` of the first `server:` line of a kubeconfig.
fn kube_server_addr(kubeconfig: &str) -> Option<String> {
    let url = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("server:"))?
        .trim();
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest
        .split('/')
        .next()?
        .trim_matches(|c| c == '"' || c == '\'');
    if authority.is_empty() {
        return None;
    }
    Some(
        if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_owned()
        } else {
            format!("{authority}:443")
        },
    )
}

/// `KEY=VALUE` lines (optionally `export KEY=VALUE`, values optionally quoted); comments and
/// blank lines are ignored.
fn parse_env_file(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_owned(), v.to_owned()))
        })
        .collect()
}

/// The repository root (the workspace this crate belongs to).
#[must_use]
pub fn repo_root() -> PathBuf {
    // tests/e2e -> the repository root, fixed at compile time so it works from any test binary
    // and any working directory.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .map_or_else(|| manifest.to_path_buf(), Path::to_path_buf)
}

/// The testbed state folder: `$TESTBED_DIR`, else `<repo>/.testbed`.
#[must_use]
pub fn testbed_dir() -> PathBuf {
    std::env::var_os("TESTBED_DIR")
        .filter(|v| !v.is_empty())
        .map_or_else(|| repo_root().join(".testbed"), PathBuf::from)
}

/// A name no other test run uses: `<prefix>_<pid>_<time>_<n>`, lowercase ASCII, digits and
/// `_`, so it is valid as a MySQL database (pass a `migrate_...` prefix: the test user may only
/// create those), an index and a Redis key.
#[must_use]
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() % 1_000_000_000_000);
    format!(
        "{}_{}_{micros}_{n}",
        prefix.to_ascii_lowercase(),
        std::process::id()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_variables_win_over_the_env_file_which_wins_over_defaults() {
        let file = parse_env_file(
            "# header\nREDIS_URL=redis://10.0.0.1:1\nexport ES_URL=\"http://file:9\"\nNLP_URL=http://file-nlp/\n",
        );
        let env = TestEnv::from_sources(
            |k| (k == "REDIS_URL").then(|| "redis://from-env:2".to_owned()),
            &file,
            Path::new("/nonexistent/kubeconfig"),
        );
        assert_eq!(env.redis_url, "redis://from-env:2");
        assert_eq!(env.es_url, "http://file:9");
        assert_eq!(
            env.nlp_url, "http://file-nlp",
            "a trailing slash is dropped"
        );
        assert_eq!(env.mysql_url, DEFAULT_MYSQL_URL);
        assert_eq!(env.kubeconfig, None);
    }

    #[test]
    fn an_existing_default_kubeconfig_is_used_when_nothing_names_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.kubeconfig");
        std::fs::write(&path, "server: https://127.0.0.1:6443\n").unwrap();
        let env = TestEnv::from_sources(|_| None, &HashMap::new(), &path);
        assert_eq!(env.kubeconfig, Some(path));
    }

    #[test]
    fn the_api_server_address_is_read_from_the_kubeconfig() {
        let cfg = "clusters:\n- cluster:\n    certificate-authority: ca.crt\n    server: https://127.0.0.1:6443\n  name: x\n";
        assert_eq!(kube_server_addr(cfg).as_deref(), Some("127.0.0.1:6443"));
        assert_eq!(
            kube_server_addr("    server: https://k8s.local\n").as_deref(),
            Some("k8s.local:443")
        );
        assert_eq!(kube_server_addr("nothing"), None);
    }

    #[test]
    fn unique_names_differ_and_are_valid_identifiers() {
        let a = unique_name("migrate_T");
        let b = unique_name("migrate_T");
        assert_ne!(a, b);
        assert!(a.starts_with("migrate_t_"));
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{a}"
        );
        assert!(a.len() <= 64, "{a}");
    }

    #[test]
    fn pods_of_the_node_reach_loopback_services_at_the_bridge() {
        let env = TestEnv::from_sources(|_| None, &HashMap::new(), Path::new("/nonexistent"));
        assert_eq!(
            env.for_pods("mysql://migrate:migrate@127.0.0.1:3390/migrate_x"),
            "mysql://migrate:migrate@10.244.0.1:3390/migrate_x"
        );
        assert_eq!(
            env.for_pods("redis://127.0.0.1:6390"),
            "redis://10.244.0.1:6390"
        );
        assert_eq!(
            env.for_pods("http://localhost:8090/nlp"),
            "http://10.244.0.1:8090/nlp"
        );
        assert_eq!(
            env.for_pods("http://127.0.0.10:1"),
            "http://127.0.0.10:1",
            "only the loopback host itself is replaced"
        );
        assert_eq!(env.for_pods("http://search:9200"), "http://search:9200");
    }

    #[tokio::test]
    async fn a_missing_service_fails_loudly_naming_its_address_and_up_sh() {
        let env = TestEnv {
            nlp_url: "http://127.0.0.1:1".to_owned(),
            ..TestEnv::from_sources(|_| None, &HashMap::new(), Path::new("/nonexistent"))
        };
        let result = tokio::spawn(async move { env.require(&[Service::Nlp]).await }).await;
        let panic = result.unwrap_err().into_panic();
        let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(message.contains("http://127.0.0.1:1"), "{message}");
        assert!(message.contains("tests/testbed/up.sh nlp"), "{message}");
    }
}

/// The variable naming the file where skipped tests are recorded, one line each, for
/// `scripts/test.sh` to count in its summary (cargo's own count would call them passed).
pub const SKIP_LOG_VAR: &str = "MIGRATE_TEST_SKIPS";

/// Whether `CI` is set to `true` (or `1`): there, a missing component fails instead of skipping.
#[must_use]
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// What a test does about a testbed component it needs that is not running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// Fail with this message (under CI).
    Fail(String),
    /// Skip, recording this line (outside CI).
    Skip(String),
}

/// The decision for `test`, which needs `component`, when that component is missing: under
/// CI a failure, elsewhere a skip; both name the component and the command that starts it.
#[must_use]
pub fn when_missing(test: &str, component: &str, ci: bool) -> Missing {
    let line = format!(
        "{test}: the testbed component `{component}` is not running; start it with `tests/testbed/up.sh {component}`"
    );
    if ci {
        Missing::Fail(format!(
            "{line} (CI=true: a missing component fails the run)"
        ))
    } else {
        Missing::Skip(line)
    }
}

/// Appends `line` to the skip log at `path` (created when missing).
///
/// # Errors
/// When the file cannot be opened or written.
pub fn record_skip(path: &Path, line: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(file, "{line}")
}

/// Decides what a test does when a testbed component it needs is `present` or not.
///
/// Returns `true` when it is present. When it is not, under CI (`CI=true`) the test fails,
/// naming the component and the command that starts it: CI must never go green on a test that
/// ran nothing. Elsewhere the test is skipped: it says so on stderr and appends a line to the
/// file named by [`SKIP_LOG_VAR`] (set by `scripts/test.sh`, which counts those lines as
/// skipped in its summary), and `false` is returned so the test can return early.
///
/// # Panics
/// Under CI when the component is missing, or when the skip log cannot be written.
#[must_use]
pub fn present_or_skip(test: &str, component: &str, present: bool) -> bool {
    if present {
        return true;
    }
    match when_missing(test, component, in_ci()) {
        Missing::Fail(message) => fail(message),
        Missing::Skip(line) => {
            eprintln!("SKIPPED {line}");
            if let Some(path) = std::env::var_os(SKIP_LOG_VAR).filter(|p| !p.is_empty()) {
                let path = PathBuf::from(path);
                if let Err(e) = record_skip(&path, &line) {
                    fail(format!("cannot record the skip in {}: {e}", path.display()));
                }
            }
            false
        }
    }
}

#[cfg(test)]
mod skip_tests {
    use super::*;

    #[test]
    fn a_missing_component_fails_under_ci_and_is_skipped_elsewhere_both_naming_the_command() {
        let Missing::Fail(failure) = when_missing("mission", "k8s", true) else {
            panic!("under CI a missing component must fail");
        };
        let Missing::Skip(skip) = when_missing("mission", "k8s", false) else {
            panic!("outside CI a missing component is skipped");
        };
        for message in [&failure, &skip] {
            assert!(message.starts_with("mission: "), "{message}");
            assert!(message.contains("`k8s`"), "{message}");
            assert!(message.contains("tests/testbed/up.sh k8s"), "{message}");
        }
        assert!(failure.contains("CI=true"), "{failure}");
    }

    #[test]
    fn skips_are_appended_one_line_each_for_the_summary_to_count() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("skips");
        record_skip(&log, "a: first").unwrap();
        record_skip(&log, "b: second").unwrap();
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "a: first\nb: second\n"
        );
    }
}
