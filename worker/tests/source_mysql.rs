//! Stage B against the real MariaDB of the testbed (`tests/testbed/up.sh mariadb`).
//!
//! Every test creates its own database `migrate_source_test_<random>` and drops it at the end
//! (also when the test fails), so the tests run in parallel with each other and with other
//! suites. `MYSQL_URL` defaults to the testbed's address.

// Test helpers outside #[test] functions may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use migrate_crds::{MissingRowPolicy, QueryShape, SecretKeyRef, SourceQuery, SourceSpec};
use migrate_worker::source::{Source, SourceError};
use migrate_worker::task::TaskId;
use mysql_async::prelude::Queryable;
use rand::Rng as _;
use serde_json::{Value, json};

fn base_url() -> String {
    std::env::var("MYSQL_URL")
        .unwrap_or_else(|_| "mysql://migrate:migrate@127.0.0.1:3390/migrate".to_owned())
}

/// `base` with its database replaced by `db`.
fn url_for(base: &str, db: &str) -> String {
    let without_query = base.split('?').next().unwrap_or(base);
    let (server, _) = without_query
        .rsplit_once('/')
        .expect("a mysql url has a path");
    format!("{server}/{db}")
}

/// A fresh database, dropped when the guard goes out of scope.
struct TestDb {
    name: String,
    url: String,
}

impl TestDb {
    async fn create(statements: &[&str]) -> Self {
        let name = format!("migrate_source_test_{:016x}", rand::rng().random::<u64>());
        let mut admin = mysql_async::Conn::from_url(base_url())
            .await
            .expect("connect to the testbed mariadb");
        admin
            .query_drop(format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
            .await
            .unwrap();
        admin.query_drop(format!("USE `{name}`")).await.unwrap();
        for statement in statements {
            admin
                .query_drop(*statement)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
        }
        admin.disconnect().await.unwrap();
        let url = url_for(&base_url(), &name);
        Self { name, url }
    }

    async fn admin(&self) -> mysql_async::Conn {
        mysql_async::Conn::from_url(&self.url).await.unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (name, url) = (self.name.clone(), base_url());
        // Drop runs inside the test's runtime, which cannot be blocked on: use a thread with its
        // own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut conn) = mysql_async::Conn::from_url(url).await {
                    let _ = conn
                        .query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
                        .await;
                    let _ = conn.disconnect().await;
                }
            });
        })
        .join();
    }
}

fn query(name: &str, sql: &str, shape: QueryShape, main: bool, pluck: Option<&str>) -> SourceQuery {
    SourceQuery {
        name: name.to_owned(),
        sql: sql.to_owned(),
        shape,
        main,
        pluck: pluck.map(str::to_owned),
    }
}

fn main_query(sql: &str) -> SourceQuery {
    query("main", sql, QueryShape::One, true, None)
}

fn spec(queries: Vec<SourceQuery>) -> SourceSpec {
    SourceSpec {
        url_secret_ref: SecretKeyRef {
            name: "mysql".into(),
            key: "url".into(),
        },
        queries,
        on_missing_row: MissingRowPolicy::Skip,
        pool_max: 4,
        query_timeout_seconds: 10,
    }
}

fn id(value: u64) -> TaskId {
    TaskId::parse(&value.to_string()).unwrap()
}

const ARTICLES: &[&str] = &[
    "CREATE TABLE author (id BIGINT UNSIGNED PRIMARY KEY, name VARCHAR(100) NOT NULL)",
    "CREATE TABLE article (id BIGINT UNSIGNED PRIMARY KEY, title VARCHAR(200) NOT NULL, body TEXT, author_id BIGINT UNSIGNED)",
    "CREATE TABLE tag (article_id BIGINT UNSIGNED NOT NULL, tag VARCHAR(50) NOT NULL, PRIMARY KEY (article_id, tag))",
    "CREATE TABLE comment (id BIGINT UNSIGNED PRIMARY KEY, article_id BIGINT UNSIGNED NOT NULL, text TEXT NOT NULL, KEY (article_id))",
    "INSERT INTO author VALUES (7, 'Ada'), (8, 'Grace')",
    "INSERT INTO article VALUES (1, 'First', '第一篇文章', 7), (2, 'Second', NULL, 8), (3, 'Third', 'three', NULL)",
    "INSERT INTO tag VALUES (1, 'rust'), (1, 'mysql'), (1, 'json'), (2, 'solo')",
    "INSERT INTO comment VALUES (10, 1, 'nice'), (11, 1, 'indeed'), (12, 2, 'hm')",
];

fn article_queries() -> Vec<SourceQuery> {
    vec![
        query(
            "article",
            "SELECT id, title, body FROM article WHERE id = ?",
            QueryShape::One,
            true,
            None,
        ),
        query(
            "tags",
            "SELECT tag FROM tag WHERE article_id = ? ORDER BY tag",
            QueryShape::Many,
            false,
            Some("tag"),
        ),
        query(
            "author",
            "SELECT a.id, a.name FROM author a JOIN article ar ON ar.author_id = a.id WHERE ar.id = ?",
            QueryShape::One,
            false,
            None,
        ),
    ]
}

/// Locks in the JSON form of every MySQL type: exact integers, exact DECIMAL strings, ISO-8601
/// dates at the declared precision, base64 binary, parsed JSON, numbers for BIT and YEAR.
#[tokio::test]
async fn every_mysql_type_becomes_the_exact_json_value() {
    let db = TestDb::create(&[
        "CREATE TABLE all_types (
            id BIGINT UNSIGNED PRIMARY KEY,
            ti TINYINT, tu TINYINT UNSIGNED, si SMALLINT, mi MEDIUMINT, i INT, iu INT UNSIGNED,
            bi BIGINT, bu BIGINT UNSIGNED,
            fl FLOAT, db DOUBLE, dc DECIMAL(30,10),
            d DATE, dt DATETIME, dt6 DATETIME(6), ts TIMESTAMP(3) NULL, zd DATE,
            t TIME, t6 TIME(6), tneg TIME,
            y YEAR, b BIT(12), b64 BIT(64), e ENUM('red','green'), s SET('a','b','c'),
            j JSON, txt TEXT, l VARCHAR(20) CHARACTER SET latin1,
            blb BLOB, bin BINARY(4), vb VARBINARY(8), n INT NULL
        )",
        "INSERT INTO all_types VALUES (
            1,
            -128, 255, -32768, -8388608, -2147483648, 4294967295,
            -9223372036854775808, 18446744073709551615,
            1.1, 2.5e-300, 12345678901234567890.0123456789,
            '2024-05-01', '2024-05-01 10:00:00', '2024-05-01 10:00:00.000123', '2024-05-01 10:00:00.5', '0000-00-00',
            '12:34:56', '25:00:00.000005', '-838:59:59',
            2024, b'100000000011', b'1111111111111111111111111111111111111111111111111111111111111111', 'green', 'a,c',
            '{\"k\": [1, 2.5, \"v\", null, true], \"big\": 18446744073709551615}', 'plain 中文 ✓', _latin1 X'636166E9',
            X'00FF80C328', X'DEADBEEF', X'41C328', NULL
        )",
    ])
    .await;
    let source = Source::new(
        &spec(vec![main_query("SELECT * FROM all_types WHERE id = ?")]),
        &db.url,
    )
    .unwrap();

    let doc = source.fetch(&id(1)).await.unwrap().expect("row 1 exists");

    let expected = json!({
        "id": 1,
        "ti": -128, "tu": 255, "si": -32768, "mi": -8388608, "i": -2147483648i64, "iu": 4294967295u64,
        "bi": i64::MIN, "bu": u64::MAX,
        "fl": 1.1, "db": 2.5e-300, "dc": "12345678901234567890.0123456789",
        "d": "2024-05-01", "dt": "2024-05-01T10:00:00", "dt6": "2024-05-01T10:00:00.000123",
        "ts": "2024-05-01T10:00:00.500", "zd": null,
        "t": "12:34:56", "t6": "25:00:00.000005", "tneg": "-838:59:59",
        "y": 2024, "b": 2051, "b64": u64::MAX, "e": "green", "s": "a,c",
        "j": {"k": [1, 2.5, "v", null, true], "big": u64::MAX},
        "txt": "plain 中文 ✓", "l": "café",
        "blb": "AP+Awyg=", "bin": "3q2+7w==", "vb": "QcMo", "n": null
    });
    assert_eq!(Value::Object(doc.clone()), expected);
    // Exactness on the wire, not only after parsing back.
    let text = serde_json::to_string(&doc).unwrap();
    assert!(text.contains("\"bu\":18446744073709551615"), "{text}");
    assert!(text.contains("\"fl\":1.1,"), "{text}");
    assert_eq!(source.repaired_texts(), 0);
    source.close().await;
}

/// Locks in the UTF-8 repair: a session that receives latin1 bytes raw (its
/// `character_set_results` switched off) gets U+FFFD in place of the invalid byte, counted.
#[tokio::test]
async fn text_that_is_not_utf8_is_repaired_and_counted() {
    let db = TestDb::create(&[
        "CREATE TABLE t (id INT PRIMARY KEY, l VARCHAR(20) CHARACTER SET latin1)",
        "INSERT INTO t VALUES (1, _latin1 X'636166E9')",
    ])
    .await;
    let mut s = spec(vec![
        main_query("SELECT l FROM t WHERE id = ?"),
        // Runs after the main query and changes the session of the one pooled connection.
        query(
            "raw_results",
            "SET SESSION character_set_results = IF(? IS NULL, NULL, NULL)",
            QueryShape::One,
            false,
            None,
        ),
    ]);
    s.pool_max = 1;
    let source = Source::new(&s, &db.url).unwrap();

    let converted = source.fetch(&id(1)).await.unwrap().unwrap();
    assert_eq!(
        Value::Object(converted),
        json!({"l": "café", "raw_results": null})
    );
    assert_eq!(source.repaired_texts(), 0);

    let raw = source.fetch(&id(1)).await.unwrap().unwrap();
    assert_eq!(
        Value::Object(raw),
        json!({"l": "caf\u{FFFD}", "raw_results": null})
    );
    assert_eq!(source.repaired_texts(), 1);
    source.close().await;
}

/// Locks in the document shape: the main row at the top, One as an object or null, Many as an
/// array of objects, pluck as an array of values, no rows as an empty array.
#[tokio::test]
async fn one_many_and_pluck_queries_compose_one_document() {
    let db = TestDb::create(ARTICLES).await;
    let mut queries = article_queries();
    queries.push(query(
        "comments",
        "SELECT id, text FROM comment WHERE article_id = ? ORDER BY id",
        QueryShape::Many,
        false,
        None,
    ));
    let source = Source::new(&spec(queries), &db.url).unwrap();

    let first = source.fetch(&id(1)).await.unwrap().unwrap();
    assert_eq!(
        Value::Object(first),
        json!({
            "id": 1, "title": "First", "body": "第一篇文章",
            "tags": ["json", "mysql", "rust"],
            "author": {"id": 7, "name": "Ada"},
            "comments": [{"id": 10, "text": "nice"}, {"id": 11, "text": "indeed"}]
        })
    );
    let third = source.fetch(&id(3)).await.unwrap().unwrap();
    assert_eq!(
        Value::Object(third),
        json!({"id": 3, "title": "Third", "body": "three", "tags": [], "author": null, "comments": []})
    );
    source.close().await;
}

/// Locks in `Ok(None)` for an id without a main row, including the largest id.
#[tokio::test]
async fn an_id_without_a_main_row_is_none() {
    let db = TestDb::create(ARTICLES).await;
    let source = Source::new(&spec(article_queries()), &db.url).unwrap();
    assert_eq!(source.fetch(&id(999)).await.unwrap(), None);
    assert_eq!(source.fetch(&id(u64::MAX)).await.unwrap(), None);
    source.close().await;
}

/// Locks in that the id is the bound parameter: `WHERE id = ?` with id 1 selects row 1 only,
/// and a `Many` query returns only that id's rows.
#[tokio::test]
async fn the_id_is_bound_as_the_parameter_and_selects_only_its_rows() {
    let db = TestDb::create(ARTICLES).await;
    let source = Source::new(
        &spec(vec![
            main_query("SELECT id, title FROM article WHERE id = ?"),
            query(
                "same",
                "SELECT id FROM article WHERE id = ?",
                QueryShape::Many,
                false,
                Some("id"),
            ),
            query("param", "SELECT ? AS p", QueryShape::One, false, None),
        ]),
        &db.url,
    )
    .unwrap();
    for (n, title) in [(1u64, "First"), (2, "Second")] {
        let doc = source.fetch(&id(n)).await.unwrap().unwrap();
        assert_eq!(
            Value::Object(doc),
            json!({"id": n, "title": title, "same": [n], "param": {"p": n}})
        );
    }
    source.close().await;
}

/// Locks in error classification: SQL errors are permanent and carry the query name and the
/// server's message; a query without exactly one `?` is permanent too.
#[tokio::test]
async fn bad_sql_is_a_permanent_error_naming_the_query_and_the_server_message() {
    let db = TestDb::create(ARTICLES).await;
    let cases = [
        (
            "unknown_column",
            "SELECT nope FROM article WHERE id = ?",
            "Unknown column 'nope'",
        ),
        (
            "syntax",
            "SELEC id FROM article WHERE id = ?",
            "error in your SQL syntax",
        ),
        (
            "no_table",
            "SELECT id FROM missing_table WHERE id = ?",
            "doesn't exist",
        ),
        (
            "denied",
            "SELECT user FROM mysql.user WHERE ? IS NOT NULL",
            "denied",
        ),
    ];
    for (name, sql, message) in cases {
        let mut queries = article_queries();
        queries.push(query(name, sql, QueryShape::One, false, None));
        let source = Source::new(&spec(queries), &db.url).unwrap();
        let error = source.fetch(&id(1)).await.unwrap_err();
        assert!(
            matches!(error, SourceError::Sql { .. }),
            "{name}: {error:?}"
        );
        let text = error.to_string();
        assert!(
            text.contains(name) && text.contains(message) && text.contains("task 1"),
            "{text}"
        );
        assert!(!error.is_transient(), "{name}");
        source.close().await;
    }

    let mut queries = article_queries();
    queries.push(query(
        "no_placeholder",
        "SELECT 1 AS one",
        QueryShape::One,
        false,
        None,
    ));
    let source = Source::new(&spec(queries), &db.url).unwrap();
    let error = source.fetch(&id(1)).await.unwrap_err();
    assert!(matches!(error, SourceError::Driver { .. }), "{error:?}");
    assert!(error.to_string().contains("no_placeholder"));
    assert!(!error.is_transient());
    source.close().await;
}

/// Locks in that a pluck of a column the query does not return is a permanent error.
#[tokio::test]
async fn plucking_a_missing_column_is_a_permanent_error() {
    let db = TestDb::create(ARTICLES).await;
    let mut queries = article_queries();
    queries[1].pluck = Some("label".into());
    let source = Source::new(&spec(queries), &db.url).unwrap();
    let error = source.fetch(&id(1)).await.unwrap_err();
    assert!(
        matches!(&error, SourceError::NoSuchColumn { column, .. } if column == "label"),
        "{error:?}"
    );
    assert!(!error.is_transient());
    source.close().await;
}

/// Locks in that an unreachable server is a transient error (the driver waits and retries).
#[tokio::test]
async fn a_refused_connection_is_transient() {
    let source = Source::new(
        &spec(article_queries()),
        "mysql://migrate:migrate@127.0.0.1:1/migrate",
    )
    .unwrap();
    let error = source.fetch(&id(1)).await.unwrap_err();
    assert!(matches!(error, SourceError::Connect { .. }), "{error:?}");
    assert!(error.is_transient());
    assert!(source.ping().await.unwrap_err().is_transient());
}

/// Locks in the query timeout: a slow query fails as a transient timeout, and the connection
/// it was running on is not reused half-read.
#[tokio::test]
async fn a_slow_query_times_out_transiently_and_the_pool_stays_usable() {
    let db = TestDb::create(ARTICLES).await;
    let mut s = spec(vec![
        main_query("SELECT id FROM article WHERE id = ?"),
        query(
            "slow",
            "SELECT SLEEP(IF(? = 2, 5, 0)) AS slept",
            QueryShape::One,
            false,
            None,
        ),
    ]);
    s.query_timeout_seconds = 1;
    s.pool_max = 1;
    let source = Source::new(&s, &db.url).unwrap();
    let error = source.fetch(&id(2)).await.unwrap_err();
    assert!(
        matches!(&error, SourceError::Timeout { query, .. } if query == "slow"),
        "{error:?}"
    );
    assert!(error.is_transient());
    let doc = source.fetch(&id(1)).await.unwrap().unwrap();
    assert_eq!(Value::Object(doc), json!({"id": 1, "slow": {"slept": 0}}));
    source.close().await;
}

/// Polls `fetch` of id 1 until it succeeds, asserting every failure on the way is transient.
async fn fetch_until_ok(
    source: &Source,
    deadline: Duration,
) -> (serde_json::Map<String, Value>, usize) {
    let start = Instant::now();
    let mut failures = 0;
    loop {
        match source.fetch(&id(1)).await {
            Ok(Some(doc)) => return (doc, failures),
            Ok(None) => panic!("row 1 vanished"),
            Err(error) => {
                assert!(
                    error.is_transient(),
                    "a non-transient error while reconnecting: {error:?}"
                );
                failures += 1;
                assert!(
                    start.elapsed() < deadline,
                    "no recovery within {deadline:?}; last error: {error}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Locks in recovery from a killed connection: the pool replaces it without help.
#[tokio::test]
async fn a_killed_connection_is_replaced_by_the_pool() {
    let db = TestDb::create(ARTICLES).await;
    let mut s = spec(vec![main_query(
        "SELECT id, CONNECTION_ID() AS conn FROM article WHERE id = ?",
    )]);
    s.pool_max = 1;
    let source = Source::new(&s, &db.url).unwrap();
    let (before, _) = fetch_until_ok(&source, Duration::from_secs(5)).await;
    let killed = before["conn"].as_u64().unwrap();

    let mut admin = db.admin().await;
    admin
        .query_drop(format!("KILL CONNECTION {killed}"))
        .await
        .unwrap();
    admin.disconnect().await.unwrap();

    let (after, _) = fetch_until_ok(&source, Duration::from_secs(10)).await;
    assert_ne!(after["conn"].as_u64().unwrap(), killed);
    source.close().await;
}

fn mariadb_script(action: &str) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/testbed/components/mariadb.sh"
    );
    let status = std::process::Command::new(script)
        .arg(action)
        .status()
        .expect("run mariadb.sh");
    assert!(status.success(), "mariadb.sh {action} failed: {status}");
}

/// Locks in recovery from a server restart: while MariaDB is down every fetch fails
/// transiently, and once it is back the same `Source` fetches again by itself.
///
/// Ignored by default because it stops the shared testbed MariaDB for a few seconds (other
/// suites running at the same time would see it go away). Run it alone:
/// `cargo test -p migrate-worker --test source_mysql -- --ignored restart`.
#[tokio::test]
#[ignore = "restarts the shared testbed MariaDB"]
async fn the_pool_recovers_after_a_mariadb_restart() {
    let db = TestDb::create(ARTICLES).await;
    let mut s = spec(article_queries());
    s.query_timeout_seconds = 3;
    let source = Arc::new(Source::new(&s, &db.url).unwrap());
    // Fill the pool with several idle connections, all of which the restart breaks.
    let warm: Vec<_> = (0..4)
        .map(|_| {
            let source = Arc::clone(&source);
            tokio::spawn(async move { source.fetch(&id(1)).await })
        })
        .collect();
    for handle in warm {
        assert!(handle.await.unwrap().unwrap().is_some());
    }

    tokio::task::spawn_blocking(|| mariadb_script("down"))
        .await
        .unwrap();
    let error = source.fetch(&id(1)).await.unwrap_err();
    assert!(error.is_transient(), "{error:?}");
    assert!(source.ping().await.unwrap_err().is_transient());

    tokio::task::spawn_blocking(|| mariadb_script("up"))
        .await
        .unwrap();
    let (doc, failures) = fetch_until_ok(&source, Duration::from_secs(60)).await;
    assert_eq!(doc["title"], json!("First"));
    println!("recovered after the restart with {failures} transient failures on the way");
    source.ping().await.unwrap();
}

/// Measures (prints, does not assert) the latency of one document of three queries (article,
/// tags, author) per id over 2,000 ids, sequentially and with 8 fetches in flight.
#[tokio::test]
async fn fetch_latency_of_the_three_query_composition() {
    const IDS: u64 = 2_000;
    let mut statements: Vec<String> = ARTICLES[..4].iter().map(|s| (*s).to_owned()).collect();
    statements.push("INSERT INTO author VALUES (1, 'Ada'), (2, 'Grace'), (3, 'Linus')".to_owned());
    let mut articles = Vec::new();
    let mut tags = Vec::new();
    for n in 1..=IDS {
        articles.push(format!(
            "({n}, 'Title {n}', REPEAT('正文 body text ', 50), {})",
            n % 3 + 1
        ));
        for t in 0..(n % 5) {
            tags.push(format!("({n}, 'tag{t}')"));
        }
    }
    statements.push(format!("INSERT INTO article VALUES {}", articles.join(",")));
    statements.push(format!("INSERT INTO tag VALUES {}", tags.join(",")));
    let refs: Vec<&str> = statements.iter().map(String::as_str).collect();
    let db = TestDb::create(&refs).await;
    let mut s = spec(article_queries());
    s.pool_max = 8;
    let source = Arc::new(Source::new(&s, &db.url).unwrap());
    source.fetch(&id(1)).await.unwrap();

    let mut latencies = Vec::with_capacity(IDS as usize);
    for n in 1..=IDS {
        let started = Instant::now();
        let doc = source.fetch(&id(n)).await.unwrap().unwrap();
        latencies.push(started.elapsed());
        assert_eq!(doc["id"], json!(n));
        assert_eq!(doc["tags"].as_array().unwrap().len() as u64, n % 5);
    }
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
    println!(
        "source fetch, 3 queries, sequential, {IDS} ids: p50 {:?}, p99 {:?}, max {:?}",
        pct(0.50),
        pct(0.99),
        latencies[latencies.len() - 1]
    );

    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for lane in 0..8u64 {
        let source = Arc::clone(&source);
        set.spawn(async move {
            let mut n = lane + 1;
            while n <= IDS {
                assert!(source.fetch(&id(n)).await.unwrap().is_some());
                n += 8;
            }
        });
    }
    while let Some(joined) = set.join_next().await {
        joined.unwrap();
    }
    let elapsed = started.elapsed();
    println!(
        "source fetch, 3 queries, 8 in flight: {IDS} ids in {elapsed:?} ({:.0} docs/s)",
        IDS as f64 / elapsed.as_secs_f64()
    );
}
