//! Small helpers over the Elasticsearch/OpenSearch REST API for tests: create, refresh, count,
//! every id of an index (scroll), one document, delete. Work against OpenSearch, osmem and noida.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::fail;

/// Documents per scroll page.
const SCROLL_PAGE: usize = 5_000;
/// Timeout of one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a search request failed.
#[derive(Debug, thiserror::Error)]
enum SearchError {
    /// The request did not complete.
    #[error("{method} {url} failed")]
    Request {
        /// HTTP method.
        method: &'static str,
        /// URL requested.
        url: String,
        /// The client error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an unexpected status.
    #[error("{method} {url} answered {status}: {body}")]
    Status {
        /// HTTP method.
        method: &'static str,
        /// URL requested.
        url: String,
        /// Status received.
        status: reqwest::StatusCode,
        /// Start of the body.
        body: String,
    },
    /// The answer lacked a field or was not JSON.
    #[error("{url}: unexpected answer ({what}): {body}")]
    Shape {
        /// URL requested.
        url: String,
        /// What was missing.
        what: &'static str,
        /// Start of the body.
        body: String,
    },
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap_or_else(|e| fail(format!("cannot build an HTTP client: {e}")))
}

/// Sends a request; returns the status and the JSON body (`Null` when the body is not JSON).
async fn send(
    method: &'static str,
    url: String,
    body: Option<Value>,
    ok_statuses: &[u16],
) -> Result<(u16, Value), SearchError> {
    let c = client();
    let mut request = match method {
        "GET" => c.get(&url),
        "DELETE" => c.delete(&url),
        "PUT" => c.put(&url),
        _ => c.post(&url),
    };
    if let Some(b) = body {
        request = request.json(&b);
    }
    let response = request
        .send()
        .await
        .map_err(|source| SearchError::Request {
            method,
            url: url.clone(),
            source,
        })?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|source| SearchError::Request {
            method,
            url: url.clone(),
            source,
        })?;
    if !(status.is_success() || ok_statuses.contains(&status.as_u16())) {
        return Err(SearchError::Status {
            method,
            url,
            status,
            body: text.chars().take(500).collect(),
        });
    }
    Ok((
        status.as_u16(),
        serde_json::from_str(&text).unwrap_or(Value::Null),
    ))
}

fn or_fail<T>(r: Result<T, SearchError>) -> T {
    r.unwrap_or_else(|e| fail(crate::chain(&e)))
}

fn base(es_url: &str) -> &str {
    es_url.trim_end_matches('/')
}

/// Makes every document written so far to `index` searchable (`POST /{index}/_refresh`).
///
/// # Panics
/// When the request fails or the index does not exist.
pub async fn refresh(es_url: &str, index: &str) {
    or_fail(
        send(
            "POST",
            format!("{}/{index}/_refresh", base(es_url)),
            None,
            &[],
        )
        .await,
    );
}

/// Number of documents in `index` after a refresh (`GET /{index}/_count`); 0 when the index
/// does not exist.
///
/// # Panics
/// When the request fails.
pub async fn count(es_url: &str, index: &str) -> u64 {
    or_fail(try_count(es_url, index).await)
}

async fn try_count(es_url: &str, index: &str) -> Result<u64, SearchError> {
    let url = format!("{}/{index}/_refresh", base(es_url));
    let (status, _) = send("POST", url, None, &[404]).await?;
    if status == 404 {
        return Ok(0);
    }
    let url = format!("{}/{index}/_count", base(es_url));
    let (_, body) = send("GET", url.clone(), None, &[]).await?;
    body.get("count")
        .and_then(Value::as_u64)
        .ok_or_else(|| SearchError::Shape {
            url,
            what: "no count",
            body: body.to_string().chars().take(500).collect(),
        })
}

/// Every `_id` of `index` (after a refresh), read with the scroll API; empty when the index
/// does not exist.
///
/// # Panics
/// When a request fails.
pub async fn all_ids(es_url: &str, index: &str) -> HashSet<String> {
    or_fail(try_all_ids(es_url, index).await)
}

/// [`all_ids`] read as task ids (decimal `u64`).
///
/// # Panics
/// When a request fails or an `_id` is not a decimal `u64` (naming it).
pub async fn ids(es_url: &str, index: &str) -> HashSet<u64> {
    all_ids(es_url, index)
        .await
        .into_iter()
        .map(|id| {
            id.parse::<u64>().unwrap_or_else(|_| {
                fail(format!(
                    "index {index} holds a document whose _id {id:?} is not a task id"
                ))
            })
        })
        .collect()
}

async fn try_all_ids(es_url: &str, index: &str) -> Result<HashSet<String>, SearchError> {
    let es = base(es_url);
    let (status, _) = send("POST", format!("{es}/{index}/_refresh"), None, &[404]).await?;
    if status == 404 {
        return Ok(HashSet::new());
    }
    let mut out = HashSet::new();
    let first_url = format!("{es}/{index}/_search?scroll=1m");
    let (_, mut page) = send(
        "POST",
        first_url,
        Some(json!({"size": SCROLL_PAGE, "_source": false, "sort": ["_doc"]})),
        &[],
    )
    .await?;
    let mut scroll_id: Option<String> = None;
    loop {
        if let Some(id) = page.get("_scroll_id").and_then(Value::as_str) {
            scroll_id = Some(id.to_owned());
        }
        let hits = page
            .pointer("/hits/hits")
            .and_then(Value::as_array)
            .ok_or_else(|| SearchError::Shape {
                url: format!("{es}/{index}/_search"),
                what: "no hits.hits",
                body: page.to_string().chars().take(500).collect(),
            })?;
        if hits.is_empty() {
            break;
        }
        out.extend(
            hits.iter()
                .filter_map(|h| h.get("_id").and_then(Value::as_str))
                .map(str::to_owned),
        );
        let Some(id) = scroll_id.clone() else { break };
        page = send(
            "POST",
            format!("{es}/_search/scroll"),
            Some(json!({"scroll": "1m", "scroll_id": id})),
            &[],
        )
        .await?
        .1;
    }
    if let Some(id) = scroll_id {
        // Freeing the context early is a courtesy; it expires anyway.
        let _ = send(
            "DELETE",
            format!("{es}/_search/scroll"),
            Some(json!({"scroll_id": id})),
            &[404],
        )
        .await;
    }
    Ok(out)
}

/// The `_source` of document `id` in `index`, or `None` when it does not exist.
///
/// # Panics
/// When the request fails (other than 404).
pub async fn get_source(es_url: &str, index: &str, id: &str) -> Option<Value> {
    let url = format!("{}/{index}/_doc/{id}", base(es_url));
    let (status, body) = or_fail(send("GET", url, None, &[404]).await);
    if status == 404 {
        return None;
    }
    body.get("_source").cloned()
}

/// Creates `index` afresh: deletes any index of that name, then creates it with `body`
/// (settings and mappings; `{}` for the server's defaults and dynamic mapping).
///
/// # Panics
/// When a request fails.
pub async fn create_index(es_url: &str, index: &str, body: Value) {
    delete_index(es_url, index).await;
    or_fail(send("PUT", format!("{}/{index}", base(es_url)), Some(body), &[]).await);
}

/// The index body the pipeline tests and the pipeline benchmark load into: set up for a fast
/// bulk load (one shard, no replica, no periodic refresh: readers refresh first), the long
/// texts stored and not indexed (to spare a 2-core testbed the analysis), `extra` mapped
/// properties, and everything else, `keywords` included, mapped dynamically.
#[must_use]
pub fn bulk_load_index(extra: &Value) -> Value {
    let mut properties = json!({
        "body": { "type": "text", "index": false },
        "summary": { "type": "text", "index": false },
    });
    if let (Some(p), Some(e)) = (properties.as_object_mut(), extra.as_object()) {
        p.extend(e.clone());
    }
    json!({
        "settings": {
            "number_of_shards": 1,
            "number_of_replicas": 0,
            "refresh_interval": "-1",
            "translog.durability": "async",
        },
        "mappings": { "properties": properties },
    })
}

/// Deletes `index`; a missing index is not an error.
///
/// # Panics
/// When the request fails (other than 404).
pub async fn delete_index(es_url: &str, index: &str) {
    or_fail(send("DELETE", format!("{}/{index}", base(es_url)), None, &[404]).await);
}
