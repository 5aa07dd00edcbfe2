//! Test kit for migrate-operator's worker tests, end-to-end tests, benchmarks and demo.
//!
//! - [`env`]: the addresses of the testbed services ([`env::TestEnv::load`]) and a loud check
//!   that they answer ([`env::TestEnv::require`]): a test fails, never skips, when the testbed is
//!   down.
//! - [`datagen`]: a deterministic data set shaped like the real job (articles with tags and an
//!   author, keyword and blacklist files), loaded fast into MariaDB, ids pushed to Redis, and an
//!   independent oracle ([`datagen::expected`]) that recomputes what the worker must produce.
//! - [`cli`]: value parsers of the kit's command-line tools.
//! - [`search`]: small helpers over the Elasticsearch/OpenSearch REST API.
//! - [`k8s`]: clients for the testbed's kube-apiserver, the CRD, throw-away namespaces, a token
//!   bound to exactly the shipped RBAC role, and polling with a deadline.
//! - [`process`]: programs a test runs beside itself, stopped when the test ends.
//!
//! Every function here panics with a message naming its input when something fails: a test kit
//! exists to make a test fail loudly, and callers are tests.
//!
//! ```no_run
//! # async fn demo() {
//! use migrate_e2e::{datagen, env::{Service, TestEnv, unique_name}};
//! let env = TestEnv::load();
//! env.require(&[Service::Mysql, Service::Redis]).await;
//! let db = datagen::create_database(&env.mysql_url, &unique_name("migrate_demo")).await;
//! let data = datagen::load(&db, &datagen::DataSetSpec::default()).await;
//! datagen::enqueue(&env.redis_url, &unique_name("demo"), &data.ids).await;
//! # }
//! ```

pub mod cli;
pub mod datagen;
pub mod env;
pub mod k8s;
pub mod process;
pub mod redis;
pub mod search;

/// Fails the calling test with `message`. The one place this crate panics (see the crate docs).
#[allow(clippy::panic)]
#[track_caller]
pub(crate) fn fail(message: impl std::fmt::Display) -> ! {
    panic!("{message}")
}

/// Renders an error with its chain of sources, `outer: inner: innermost`.
pub(crate) use migrate_contract::error_chain as chain;
