//! The testbed's Redis for tests: its address, a fresh key per test, a connection, and the
//! cleanup of a test's keys. Uses nothing but `redis` and `std`, so that the contract crate's
//! tests (which the test kit cannot be a dependency of: the kit depends on the contract) include
//! this same file by path instead of copying it.

#![allow(clippy::unwrap_used, clippy::panic)]

use redis::aio::MultiplexedConnection;

/// The testbed's Redis when `REDIS_URL` is not set.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6390";

/// `REDIS_URL`, else [`DEFAULT_REDIS_URL`].
#[must_use]
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.to_owned())
}

/// A queue key no other test run uses: `test:<scope>:<name>:<pid>:<nanos>`.
#[must_use]
pub fn fresh_key(scope: &str, name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("test:{scope}:{name}:{}:{nanos}", std::process::id())
}

/// A connection to [`redis_url`].
///
/// # Panics
/// When Redis does not answer: the test cannot run.
pub async fn connect() -> MultiplexedConnection {
    let client = redis::Client::open(redis_url()).unwrap();
    client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("redis at {} does not answer: {e}", redis_url()))
}

/// Deletes every key that starts with `key` (a test's queue and the keys derived from it).
///
/// # Panics
/// When Redis fails.
pub async fn drop_keys(key: &str) {
    let mut conn = connect().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{key}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        redis::cmd("DEL")
            .arg(keys)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
}
