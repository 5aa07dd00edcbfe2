//! Stage B: the rows of one id, gathered from MySQL into a JSON document.
//!
//! Every configured query runs once per id, with the id bound as its one `?` parameter (the id
//! never becomes SQL text). The main query's row is the document's top level; the other
//! queries are stored under their `name`:
//!
//! | shape | result |
//! |---|---|
//! | One (main) | the row's columns are the document's fields; no row: [`Source::fetch`] returns `Ok(None)` |
//! | One | the first row as an object, or null |
//! | Many | every row as an object, in an array |
//! | Many + `pluck` | the named column of every row, in an array |
//!
//! A sub-query whose name equals a column of the main row replaces that column.
//!
//! The queries of one id run one after the other on one pooled connection, as prepared
//! statements; each connection caches its statements (the cache holds at most the configured
//! queries plus two, so it never grows). Connections are not reset when they go back to the
//! pool, which keeps the statement cache alive: the queries must not change session state.
//!
//! # Types
//!
//! The queries run as prepared statements, so values arrive in the binary protocol, already
//! typed (integers, floats, dates, times, bytes). The column definition says what the bytes
//! are. The mapping, chosen so nothing is rounded, guessed or lost:
//!
//! | MySQL | JSON |
//! |---|---|
//! | TINYINT..BIGINT (signed or unsigned), YEAR | number, exact (`u64`/`i64`) |
//! | FLOAT, DOUBLE | number (a FLOAT keeps its shortest `f32` form: `1.1`, not `1.100000023841858`) |
//! | DECIMAL | string, exact (`"12345.6789000000"`): a JSON number would pass through `f64` in most readers and lose digits |
//! | DATE | `"2024-05-01"` |
//! | DATETIME, TIMESTAMP | `"2024-05-01T10:00:00"`, with as many fractional digits as the column declares (`DATETIME(6)`: `.000123`) |
//! | TIME | `"HH:MM:SS[.ffffff]"`, hours beyond 24 and a leading `-` as MySQL allows (`"-838:59:59"`) |
//! | zero date (`0000-00-00`) | null: MySQL's "no date", which no ISO-8601 reader accepts |
//! | BIT | number (big-endian bits) |
//! | JSON | the parsed JSON (MySQL's JSON type; on MariaDB a column with a `json_valid` check) |
//! | binary columns (BLOB, BINARY, VARBINARY, GEOMETRY: character set 63) | base64 string (standard alphabet, padded) |
//! | text (CHAR, VARCHAR, TEXT, ENUM, SET) | string; invalid UTF-8 is repaired with U+FFFD and counted |
//! | NULL | null |
//!
//! Text columns of any character set arrive as UTF-8 because the connection asks the server for
//! utf8mb4 results (the server converts latin1 and others); bytes that are still not UTF-8
//! (a session whose `character_set_results` was changed, a corrupt row) are repaired, never a
//! crash; [`Source::repaired_texts`] counts the repairs.
//!
//! MariaDB sends its JSON columns as LONGTEXT; they are recognised by their `json_valid(...)`
//! column check in `information_schema`, looked up once per query on first use. A JSON value
//! computed in the SQL (`JSON_OBJECT(...)`) has no such column and stays a string there.
//!
//! Errors say whether waiting helps ([`SourceError::is_transient`]): a refused, lost or timed
//! out connection is transient and the pool reconnects by itself (an idle connection is
//! checked before it is handed out, a broken one is dropped); an SQL error is not.

mod value;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use migrate_crds::{QueryShape, SourceQuery, SourceSpec};
use mysql_async::consts::ColumnType;
use mysql_async::prelude::Queryable;
use mysql_async::{
    Column, Conn, DriverError, Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts, Row,
};
use serde_json::{Map, Value as Json};
use tokio::sync::OnceCell;
use tracing::{debug, warn};

use self::value::{ColumnKind, column_kind, to_json};
use crate::task::{Document, TaskId};

/// Most rows one query may return for one id. A `Many` query is meant for the tags or the
/// comments of one record, not for a table scan; beyond this the task fails instead of
/// holding an unbounded result in memory.
pub const MAX_ROWS_PER_QUERY: usize = 10_000;

/// Server error codes after which the same query can succeed if tried again later: the server
/// is overloaded, shutting down, or the statement lost a lock race.
/// Server error codes that say the job's settings are wrong, not the task: every task would
/// fail the same way until the URL, the grants or the queries are fixed.
const SETTINGS_SERVER_CODES: &[u16] = &[
    1044, // ER_DBACCESS_DENIED_ERROR: no access to the database
    1045, // ER_ACCESS_DENIED_ERROR: wrong user or password
    1046, // ER_NO_DB_ERROR: no database selected
    1049, // ER_BAD_DB_ERROR: unknown database
    1054, // ER_BAD_FIELD_ERROR: unknown column in a query
    1064, // ER_PARSE_ERROR: a query's syntax
    1142, // ER_TABLEACCESS_DENIED_ERROR
    1143, // ER_COLUMNACCESS_DENIED_ERROR
    1146, // ER_NO_SUCH_TABLE
    1227, // ER_SPECIFIC_ACCESS_DENIED_ERROR
];

const TRANSIENT_SERVER_CODES: &[u16] = &[
    1040, // ER_CON_COUNT_ERROR: too many connections
    1053, // ER_SERVER_SHUTDOWN
    1152, // ER_ABORTING_CONNECTION
    // 1153 (packet too large) is not transient; 1154-1161 are network read/write errors.
    1154, 1155, 1156, 1157, 1158, 1159, 1160, 1161, //
    1203, // ER_TOO_MANY_USER_CONNECTIONS
    1205, // ER_LOCK_WAIT_TIMEOUT
    1213, // ER_LOCK_DEADLOCK
    1226, // ER_USER_LIMIT_REACHED
    1317, // ER_QUERY_INTERRUPTED
    1927, // ER_CONNECTION_KILLED (MariaDB)
    1969, // ER_STATEMENT_TIMEOUT (MariaDB max_statement_time)
    3024, // ER_QUERY_TIMEOUT (MySQL max_execution_time)
    4031, // ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8)
];

/// Why rows could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The MySQL URL does not parse.
    #[error("invalid mysql url")]
    Url {
        /// The parser's complaint.
        #[source]
        source: mysql_async::UrlError,
    },
    /// The queries cannot compose a document (no main query, a main query of shape Many...).
    #[error("invalid source queries: {reason}")]
    Spec {
        /// What is wrong.
        reason: String,
    },
    /// No connection could be taken from the pool.
    #[error(
        "cannot connect to mysql at {addr} for task {id}; check MIGRATE_MYSQL_URL (from source.urlSecretRef)"
    )]
    Connect {
        /// The server's host and port.
        addr: String,
        /// The task id.
        id: u64,
        /// The driver's error.
        #[source]
        source: mysql_async::Error,
    },
    /// Taking a connection from the pool took longer than the query timeout.
    #[error(
        "connecting to mysql at {addr} for task {id} timed out after {seconds} s; check MIGRATE_MYSQL_URL (from source.urlSecretRef)"
    )]
    ConnectTimeout {
        /// The server's host and port.
        addr: String,
        /// The task id.
        id: u64,
        /// The timeout.
        seconds: u32,
    },
    /// The connection broke while a query ran.
    #[error("mysql connection lost while running query {query} for task {id}")]
    Connection {
        /// The query's name.
        query: String,
        /// The task id.
        id: u64,
        /// The driver's error.
        #[source]
        source: mysql_async::Error,
    },
    /// A query took longer than `queryTimeoutSeconds`.
    #[error("query {query} for task {id} timed out after {seconds} s")]
    Timeout {
        /// The query's name.
        query: String,
        /// The task id.
        id: u64,
        /// The timeout.
        seconds: u32,
    },
    /// The server rejected a query (syntax, unknown column, permission...).
    #[error("query {query} failed for task {id}: {message} (mysql error {code}, sqlstate {state})")]
    Sql {
        /// The query's name.
        query: String,
        /// The task id.
        id: u64,
        /// The server's error code.
        code: u16,
        /// The SQLSTATE.
        state: String,
        /// The server's message.
        message: String,
    },
    /// The driver refused a query (e.g. its SQL does not have exactly one `?`).
    #[error("query {query} cannot run for task {id}")]
    Driver {
        /// The query's name.
        query: String,
        /// The task id.
        id: u64,
        /// The driver's error.
        #[source]
        source: mysql_async::Error,
    },
    /// A query returned more than [`MAX_ROWS_PER_QUERY`] rows.
    #[error("query {query} returned more than {limit} rows for task {id}")]
    TooManyRows {
        /// The query's name.
        query: String,
        /// The task id.
        id: u64,
        /// The limit.
        limit: usize,
    },
    /// The `pluck` column is not in the query's result.
    #[error("query {query} has no column {column} to pluck (task {id})")]
    NoSuchColumn {
        /// The query's name.
        query: String,
        /// The task id.
        id: u64,
        /// The missing column.
        column: String,
    },
    /// A ping failed.
    #[error("cannot reach mysql at {addr}; check MIGRATE_MYSQL_URL (from source.urlSecretRef)")]
    Ping {
        /// The server's host and port.
        addr: String,
        /// The driver's error.
        #[source]
        source: mysql_async::Error,
    },
    /// A ping took longer than the query timeout.
    #[error(
        "pinging mysql at {addr} timed out after {seconds} s; check MIGRATE_MYSQL_URL (from source.urlSecretRef)"
    )]
    PingTimeout {
        /// The server's host and port.
        addr: String,
        /// The timeout.
        seconds: u32,
    },
}

impl SourceError {
    /// Whether waiting and trying the same task again can succeed: connection-level failures
    /// (refused, lost, pool closed, timeouts) and server overload or lock errors. The driver
    /// retries such a task without consuming a delivery attempt.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::ConnectTimeout { .. }
            | SourceError::Connection { .. }
            | SourceError::Timeout { .. }
            | SourceError::PingTimeout { .. } => true,
            SourceError::Connect { source, .. } | SourceError::Ping { source, .. } => {
                is_transient_mysql(source)
            }
            SourceError::Sql { code, .. } => TRANSIENT_SERVER_CODES.contains(code),
            SourceError::Url { .. }
            | SourceError::Spec { .. }
            | SourceError::Driver { .. }
            | SourceError::TooManyRows { .. }
            | SourceError::NoSuchColumn { .. } => false,
        }
    }

    /// Whether the job's settings, not the task, are wrong: access denied, an unknown
    /// database, table or column, a query's syntax, a plucked column the query does not
    /// return. Every task would fail the same way, so the driver keeps the task (it waits as
    /// for an outage, using up no attempt, and says what to fix) instead of dead-lettering the
    /// whole queue one task at a time.
    #[must_use]
    pub fn is_settings(&self) -> bool {
        let server_code = |e: &mysql_async::Error| match e {
            mysql_async::Error::Server(e) => SETTINGS_SERVER_CODES.contains(&e.code),
            _ => false,
        };
        match self {
            SourceError::Sql { code, .. } => SETTINGS_SERVER_CODES.contains(code),
            SourceError::Connect { source, .. }
            | SourceError::Ping { source, .. }
            | SourceError::Connection { source, .. } => server_code(source),
            SourceError::NoSuchColumn { .. } => true,
            _ => false,
        }
    }

    /// A short stable name for metrics and event reasons.
    #[must_use]
    pub const fn metric_label(&self) -> &'static str {
        match self {
            SourceError::Url { .. } => "url",
            SourceError::Spec { .. } => "spec",
            SourceError::Connect { .. } => "connect",
            SourceError::ConnectTimeout { .. } => "connect-timeout",
            SourceError::Connection { .. } => "connection",
            SourceError::Timeout { .. } => "timeout",
            SourceError::Sql { .. } => "sql",
            SourceError::Driver { .. } => "driver",
            SourceError::TooManyRows { .. } => "too-many-rows",
            SourceError::NoSuchColumn { .. } => "no-such-column",
            SourceError::Ping { .. } => "ping",
            SourceError::PingTimeout { .. } => "ping-timeout",
        }
    }
}

/// A driver error that says the connection, not the statement, failed.
fn is_connection_level(error: &mysql_async::Error) -> bool {
    match error {
        mysql_async::Error::Io(_) => true,
        mysql_async::Error::Driver(d) => matches!(
            d,
            DriverError::ConnectionClosed
                | DriverError::PoolDisconnected
                | DriverError::PacketOutOfOrder
                | DriverError::UnexpectedPacket { .. }
                | DriverError::BadCompressedPacketHeader
        ),
        mysql_async::Error::Server(_)
        | mysql_async::Error::Other(_)
        | mysql_async::Error::Url(_) => false,
    }
}

fn is_transient_mysql(error: &mysql_async::Error) -> bool {
    match error {
        mysql_async::Error::Server(e) => TRANSIENT_SERVER_CODES.contains(&e.code),
        other => is_connection_level(other),
    }
}

/// One configured query, with what was learnt about its columns.
#[derive(Debug)]
struct Query {
    name: String,
    sql: String,
    shape: QueryShape,
    pluck: Option<String>,
    /// Per result column: holds JSON (resolved once, on first use).
    json_columns: OnceCell<Arc<[bool]>>,
}

impl Query {
    fn new(spec: &SourceQuery) -> Self {
        Self {
            name: spec.name.clone(),
            sql: spec.sql.clone(),
            shape: spec.shape,
            pluck: spec.pluck.clone(),
            json_columns: OnceCell::new(),
        }
    }

    fn error(&self, id: u64, error: mysql_async::Error) -> SourceError {
        let query = self.name.clone();
        match error {
            mysql_async::Error::Server(e) => SourceError::Sql {
                query,
                id,
                code: e.code,
                state: e.state,
                message: e.message,
            },
            other if is_connection_level(&other) => SourceError::Connection {
                query,
                id,
                source: other,
            },
            other => SourceError::Driver {
                query,
                id,
                source: other,
            },
        }
    }
}

/// The MySQL side of the pipeline: a connection pool and the queries that compose a document.
///
/// Cheap to share: wrap it in an `Arc` and call [`Source::fetch`] from many tasks at once; at
/// most `poolMax` of them hold a connection at a time, the others wait for one (within the
/// query timeout).
#[derive(Debug)]
pub struct Source {
    pool: Pool,
    /// The main query first, then the others in configured order.
    queries: Vec<Query>,
    timeout: Duration,
    timeout_seconds: u32,
    repaired: AtomicU64,
    /// `host:port` of the server, for error messages (the URL may hold a password).
    addr: String,
}

impl Source {
    /// A pool for `url` (at most `pool_max` connections, TLS by rustls when the URL asks for
    /// it) and the queries of `spec`. Connects lazily: the first fetch or ping opens the
    /// first connection.
    ///
    /// # Errors
    /// [`SourceError::Url`] when the URL does not parse; [`SourceError::Spec`] when the queries
    /// do not have exactly one main query of shape One, repeat a name, or pluck from a query
    /// of shape One.
    pub fn new(spec: &SourceSpec, url: &str) -> Result<Self, SourceError> {
        let queries = plan(&spec.queries)?;
        let opts = Opts::from_url(url).map_err(|source| SourceError::Url { source })?;
        let addr = format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port());
        let pool_max = usize::try_from(spec.pool_max.max(1)).unwrap_or(usize::MAX);
        let constraints = PoolConstraints::new(1, pool_max).ok_or_else(|| SourceError::Spec {
            reason: format!("poolMax {} is not a pool size", spec.pool_max),
        })?;
        let pool_opts = PoolOpts::default()
            .with_constraints(constraints)
            // Keep idle connections (up to poolMax) for a minute instead of closing every
            // connection above the minimum as soon as it is returned.
            .with_inactive_connection_ttl(Duration::from_secs(60))
            // A reset would drop every prepared statement on each return to the pool.
            .with_reset_connection(false);
        let opts = OptsBuilder::from_opts(opts)
            .pool_opts(pool_opts)
            // The queries, the JSON-column lookup and one spare.
            .stmt_cache_size(queries.len() + 2)
            .tcp_keepalive(Some(Duration::from_secs(30)))
            .tcp_nodelay(true);
        let timeout_seconds = spec.query_timeout_seconds.max(1);
        Ok(Self {
            pool: Pool::new(Opts::from(opts)),
            queries,
            timeout: Duration::from_secs(u64::from(timeout_seconds)),
            timeout_seconds,
            repaired: AtomicU64::new(0),
            addr,
        })
    }

    /// The document of task `id`: the main row's columns plus one field per other query.
    /// `Ok(None)` when the main query returns no row (the driver applies `onMissingRow`);
    /// the other queries are not run then.
    ///
    /// # Errors
    /// A [`SourceError`] naming the query and the id; [`SourceError::is_transient`] says
    /// whether retrying later can help.
    pub async fn fetch(&self, id: &TaskId) -> Result<Option<Document>, SourceError> {
        let mut conn = match tokio::time::timeout(self.timeout, self.pool.get_conn()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(source)) => {
                return Err(SourceError::Connect {
                    addr: self.addr.clone(),
                    id: id.value,
                    source,
                });
            }
            Err(_) => {
                return Err(SourceError::ConnectTimeout {
                    addr: self.addr.clone(),
                    id: id.value,
                    seconds: self.timeout_seconds,
                });
            }
        };
        let mut queries = self.queries.iter();
        let Some(main) = queries.next() else {
            return Ok(None);
        };
        let Json::Object(mut doc) = self.run(&mut conn, main, id.value).await? else {
            return Ok(None);
        };
        for query in queries {
            let value = self.run(&mut conn, query, id.value).await?;
            doc.insert(query.name.clone(), value);
        }
        Ok(Some(doc))
    }

    /// Checks that a connection can be taken and answers.
    ///
    /// # Errors
    /// [`SourceError::Ping`] or [`SourceError::PingTimeout`].
    pub async fn ping(&self) -> Result<(), SourceError> {
        let ping = async {
            let mut conn = self.pool.get_conn().await?;
            conn.ping().await
        };
        match tokio::time::timeout(self.timeout, ping).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(SourceError::Ping {
                addr: self.addr.clone(),
                source,
            }),
            Err(_) => Err(SourceError::PingTimeout {
                addr: self.addr.clone(),
                seconds: self.timeout_seconds,
            }),
        }
    }

    /// Closes every connection, waiting for the ones in use to come back.
    pub async fn close(self) {
        if let Err(error) = self.pool.disconnect().await {
            debug!(%error, "MySQL pool closed with an error.");
        }
    }

    /// How many text values had invalid UTF-8 replaced by U+FFFD since the start.
    #[must_use]
    pub fn repaired_texts(&self) -> u64 {
        self.repaired.load(Ordering::Relaxed)
    }

    /// Runs one query within the timeout and shapes its rows.
    async fn run(&self, conn: &mut Conn, query: &Query, id: u64) -> Result<Json, SourceError> {
        match tokio::time::timeout(self.timeout, self.run_unbounded(conn, query, id)).await {
            Ok(result) => result,
            // Dropping the query future mid-flight leaves the connection marked broken, so the
            // pool discards it instead of handing out a connection with a half-read reply.
            Err(_) => Err(SourceError::Timeout {
                query: query.name.clone(),
                id,
                seconds: self.timeout_seconds,
            }),
        }
    }

    async fn run_unbounded(
        &self,
        conn: &mut Conn,
        query: &Query,
        id: u64,
    ) -> Result<Json, SourceError> {
        let stmt = conn
            .prep(query.sql.as_str())
            .await
            .map_err(|e| query.error(id, e))?;
        let json_columns = match query.json_columns.get() {
            Some(known) => Arc::clone(known),
            None => {
                let found = json_columns(conn, stmt.columns().as_ref())
                    .await
                    .map_err(|e| query.error(id, e))?;
                Arc::clone(query.json_columns.get_or_init(|| async { found }).await)
            }
        };
        let mut result = conn
            .exec_iter(&stmt, (id,))
            .await
            .map_err(|e| query.error(id, e))?;
        let columns: Arc<[Column]> = result.columns().unwrap_or_else(|| Arc::from(Vec::new()));
        let kinds: Vec<ColumnKind> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| column_kind(c, json_columns.get(i).copied().unwrap_or(false)))
            .collect();
        let names: Vec<String> = columns.iter().map(|c| c.name_str().into_owned()).collect();
        let pluck = match (&query.shape, &query.pluck) {
            (QueryShape::Many, Some(column)) => match names.iter().position(|n| n == column) {
                Some(index) => Some(index),
                None => {
                    return Err(SourceError::NoSuchColumn {
                        query: query.name.clone(),
                        id,
                        column: column.clone(),
                    });
                }
            },
            _ => None,
        };
        let limit = match query.shape {
            QueryShape::One => 1,
            QueryShape::Many => MAX_ROWS_PER_QUERY,
        };

        let mut rows: Vec<Json> = Vec::new();
        let mut overflow = false;
        let mut repaired = 0u64;
        result
            .for_each(|row: Row| {
                if rows.len() >= limit {
                    // Keep reading (the connection must be drained) but store nothing more.
                    overflow = true;
                    return;
                }
                let mut convert = |index: usize| {
                    let converted = row.as_ref(index).map(|v| to_json(v, kinds[index]));
                    match converted {
                        Some(c) => {
                            if c.repaired {
                                repaired += 1;
                                debug!(query = %query.name, id, column = %names[index], "Invalid UTF-8 repaired.");
                            }
                            c.json
                        }
                        None => Json::Null,
                    }
                };
                let item = match pluck {
                    Some(index) => convert(index),
                    None => {
                        let mut object = Map::with_capacity(names.len());
                        for (index, name) in names.iter().enumerate() {
                            object.insert(name.clone(), convert(index));
                        }
                        Json::Object(object)
                    }
                };
                rows.push(item);
            })
            .await
            .map_err(|e| query.error(id, e))?;
        drop(result);
        if repaired > 0 {
            self.note_repairs(query, id, repaired);
        }

        match query.shape {
            QueryShape::One => Ok(rows.into_iter().next().unwrap_or(Json::Null)),
            QueryShape::Many if overflow => Err(SourceError::TooManyRows {
                query: query.name.clone(),
                id,
                limit: MAX_ROWS_PER_QUERY,
            }),
            QueryShape::Many => Ok(Json::Array(rows)),
        }
    }

    /// Counts repairs; warns on the first and then every thousandth, so a latin1 table does
    /// not flood the log.
    fn note_repairs(&self, query: &Query, id: u64, repaired: u64) {
        let before = self.repaired.fetch_add(repaired, Ordering::Relaxed);
        let after = before + repaired;
        if before == 0 || before / 1000 != after / 1000 {
            warn!(
                query = %query.name,
                id,
                repaired_total = after,
                "Text that is not valid UTF-8 was repaired with U+FFFD."
            );
        }
    }
}

/// Checks the queries and puts the main one first.
fn plan(specs: &[SourceQuery]) -> Result<Vec<Query>, SourceError> {
    let spec_error = |reason: String| Err(SourceError::Spec { reason });
    let mains: Vec<&SourceQuery> = specs.iter().filter(|q| q.main).collect();
    let [main] = mains.as_slice() else {
        return spec_error(format!(
            "exactly one query must have main: true, found {}",
            mains.len()
        ));
    };
    if main.shape != QueryShape::One {
        return spec_error(format!("main query {} must have shape One", main.name));
    }
    let mut names = HashSet::new();
    for q in specs {
        if !names.insert(q.name.as_str()) {
            return spec_error(format!("query name {} is used twice", q.name));
        }
        if q.pluck.is_some() && q.shape != QueryShape::Many {
            return spec_error(format!(
                "query {} plucks a column but has shape One",
                q.name
            ));
        }
    }
    let mut queries = vec![Query::new(main)];
    queries.extend(specs.iter().filter(|q| !q.main).map(Query::new));
    Ok(queries)
}

/// Text column types that may hold a MariaDB JSON column (LONGTEXT with a `json_valid` check).
fn may_be_mariadb_json(column: &Column) -> bool {
    matches!(
        column.column_type(),
        ColumnType::MYSQL_TYPE_BLOB
            | ColumnType::MYSQL_TYPE_TINY_BLOB
            | ColumnType::MYSQL_TYPE_MEDIUM_BLOB
            | ColumnType::MYSQL_TYPE_LONG_BLOB
            | ColumnType::MYSQL_TYPE_VAR_STRING
            | ColumnType::MYSQL_TYPE_STRING
            | ColumnType::MYSQL_TYPE_VARCHAR
    ) && column.character_set() != 63
        && !column.schema_ref().is_empty()
        && !column.org_table_ref().is_empty()
        && !column.org_name_ref().is_empty()
}

/// Which result columns hold JSON. MySQL marks them with their own type; MariaDB sends them as
/// LONGTEXT, so its column-level `json_valid(...)` check constraints are looked up in
/// `information_schema` (once per query). A lookup the server rejects (MySQL has no `LEVEL`
/// column there) means no such columns; a lost connection is returned.
async fn json_columns(
    conn: &mut Conn,
    columns: &[Column],
) -> Result<Arc<[bool]>, mysql_async::Error> {
    let mut flags = vec![false; columns.len()];
    let mut checks: HashMap<(String, String), Vec<String>> = HashMap::new();
    for (index, column) in columns.iter().enumerate() {
        if !may_be_mariadb_json(column) {
            continue;
        }
        let key = (
            column.schema_str().into_owned(),
            column.org_table_str().into_owned(),
        );
        if !checks.contains_key(&key) {
            let found: Result<Vec<String>, _> = conn
                .exec(
                    "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS \
                     WHERE CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ? AND LEVEL = 'Column'",
                    (key.0.as_str(), key.1.as_str()),
                )
                .await;
            let clauses = match found {
                Ok(clauses) => clauses,
                Err(error @ mysql_async::Error::Server(_)) => {
                    debug!(%error, table = %key.1, "No JSON column lookup on this server.");
                    Vec::new()
                }
                Err(error) => return Err(error),
            };
            checks.insert(key.clone(), clauses);
        }
        let wanted = format!("json_valid(`{}`)", column.org_name_str());
        flags[index] = checks
            .get(&key)
            .is_some_and(|clauses| clauses.iter().any(|c| c.trim() == wanted));
    }
    Ok(Arc::from(flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, main: bool, shape: QueryShape, pluck: Option<&str>) -> SourceQuery {
        SourceQuery {
            name: name.to_owned(),
            sql: "SELECT 1 FROM t WHERE id = ?".to_owned(),
            shape,
            main,
            pluck: pluck.map(str::to_owned),
        }
    }

    #[test]
    fn plan_puts_the_main_query_first() {
        let planned = plan(&[
            query("tags", false, QueryShape::Many, Some("tag")),
            query("article", true, QueryShape::One, None),
            query("author", false, QueryShape::One, None),
        ])
        .unwrap();
        let names: Vec<&str> = planned.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(names, ["article", "tags", "author"]);
    }

    #[test]
    fn plan_rejects_specs_that_cannot_compose_a_document() {
        let cases = [
            (
                vec![query("a", false, QueryShape::One, None)],
                "exactly one query",
            ),
            (
                vec![
                    query("a", true, QueryShape::One, None),
                    query("b", true, QueryShape::One, None),
                ],
                "exactly one query",
            ),
            (vec![query("a", true, QueryShape::Many, None)], "shape One"),
            (
                vec![
                    query("a", true, QueryShape::One, None),
                    query("a", false, QueryShape::Many, None),
                ],
                "used twice",
            ),
            (
                vec![
                    query("a", true, QueryShape::One, None),
                    query("b", false, QueryShape::One, Some("x")),
                ],
                "plucks",
            ),
        ];
        for (specs, expected) in cases {
            let error = plan(&specs).unwrap_err();
            assert!(error.to_string().contains(expected), "{error}");
            assert!(!error.is_transient());
        }
    }

    #[test]
    fn connection_failures_are_transient_and_sql_errors_are_not() {
        let lost = SourceError::Connection {
            query: "q".into(),
            id: 1,
            source: mysql_async::Error::Driver(DriverError::ConnectionClosed),
        };
        assert!(lost.is_transient());
        let syntax = SourceError::Sql {
            query: "q".into(),
            id: 1,
            code: 1064,
            state: "42000".into(),
            message: "You have an error in your SQL syntax".into(),
        };
        assert!(!syntax.is_transient());
        assert!(
            syntax.is_settings(),
            "a query's syntax is the job's, not the task's"
        );
        let denied = SourceError::Sql {
            query: "q".into(),
            id: 1,
            code: 1045,
            state: "28000".into(),
            message: "Access denied for user".into(),
        };
        assert!(denied.is_settings());
        let too_long = SourceError::Sql {
            query: "q".into(),
            id: 1,
            code: 1406,
            state: "22001".into(),
            message: "Data too long".into(),
        };
        assert!(!too_long.is_settings(), "a data error belongs to the task");
        let deadlock = SourceError::Sql {
            query: "q".into(),
            id: 1,
            code: 1213,
            state: "40001".into(),
            message: "Deadlock".into(),
        };
        assert!(deadlock.is_transient());
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let refused = SourceError::Connect {
            addr: "db:3306".into(),
            id: 1,
            source: mysql_async::Error::Io(io.into()),
        };
        assert!(refused.is_transient());
        let pool_closed = SourceError::Ping {
            addr: "db:3306".into(),
            source: mysql_async::Error::Driver(DriverError::PoolDisconnected),
        };
        assert!(pool_closed.is_transient());
    }

    /// A source of one main query and a pool of `pool_max` connections.
    fn one_query_spec(pool_max: u32) -> SourceSpec {
        SourceSpec {
            url_secret_ref: migrate_crds::SecretKeyRef {
                name: "s".into(),
                key: "k".into(),
            },
            queries: vec![query("a", true, QueryShape::One, None)],
            on_missing_row: migrate_crds::MissingRowPolicy::Skip,
            pool_max,
            query_timeout_seconds: 5,
        }
    }

    #[test]
    fn a_bad_url_is_a_configuration_error() {
        let spec = one_query_spec(4);
        let error = Source::new(&spec, "postgres://nope").unwrap_err();
        assert!(matches!(error, SourceError::Url { .. }));
        assert!(!error.is_transient());
    }

    /// A person reading the error of an unreachable server learns where the worker tried to
    /// connect and which setting to change, and never sees the password.
    #[tokio::test]
    async fn an_unreachable_server_is_named_with_the_setting_to_change() {
        let spec = one_query_spec(1);
        // Port 1 on loopback: nothing listens there.
        let source = Source::new(&spec, "mysql://migrate:hunter2@127.0.0.1:1/db").unwrap();
        let error = source
            .fetch(&TaskId::parse("7").unwrap())
            .await
            .unwrap_err();
        let text = error.to_string();
        assert!(text.contains("127.0.0.1:1"), "names the address: {text}");
        assert!(
            text.contains("MIGRATE_MYSQL_URL") && text.contains("source.urlSecretRef"),
            "names the setting: {text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
        let ping = source.ping().await.unwrap_err().to_string();
        assert!(
            ping.contains("127.0.0.1:1") && ping.contains("MIGRATE_MYSQL_URL"),
            "{ping}"
        );
    }
}
