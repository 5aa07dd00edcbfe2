//! Which documents of a bulk request to send again, and when.
//!
//! A bulk request answers HTTP 200 even when some of its documents failed, so success is read
//! item by item: the response carries `errors` and one entry per document, in request order,
//! each under its operation key (`index`, `create`, `update`, `delete`) with a `status`.
//! [`classify_bulk_response`] turns that into one [`ItemClass`] per document sent. It is pure:
//! no client, no clock, so every shape of response is tested with a canned body.
//!
//! The rules:
//! - 2xx: indexed.
//! - 408, 429 and 5xx: the server is overloaded or broken; retry the document.
//! - 409 on a `create`: the document already exists, which for a replayed id means it was
//!   written by an earlier delivery; indexed. 409 on any other operation is a concurrent write
//!   of the same id; retry (an `index` overwrites, so the last write wins).
//! - 4xx errors about the index rather than the document (`index_not_found_exception`,
//!   `index_closed_exception`, `cluster_block_exception`, `security_exception`): retry, so a
//!   missing or read-only index fails the batch for redelivery instead of dead-lettering
//!   every document in it.
//! - any other 4xx: the document itself is wrong (e.g. `mapper_parsing_exception`); rejected
//!   with the server's reason, never retried.
//! - anything the response does not say clearly (a missing item, a missing status, an item
//!   count different from the documents sent, an item for another `_id`): retry. An unmatched
//!   document is never taken for a success; re-sending one is harmless because its `_id` is
//!   the task id and an `index` overwrites.
//!
//! Whole-request statuses are classified by [`classify_request_status`] by whose fault they
//! are: the server's availability (429, 502-504) or the job's settings (401, 403, 404) are
//! waited for, other transient failures (408, 500) retried the same way as items, with
//! [`Backoff`] between attempts, a refused body (400) fails without retrying, and a body too
//! large for the server (413) is split until each document is refused or taken alone.

use std::time::Duration;

use serde_json::Value;

/// What to do with one document of a bulk request, read from its response item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemClass {
    /// Written.
    Ok,
    /// Not written, for a reason that may pass (429, 5xx, an unreadable answer): send it
    /// again. The text says why, for logs and for the final failure.
    Retry(String),
    /// Refused for good (a 4xx about the document itself): the document goes to the dead-letter
    /// list with this reason.
    Reject {
        /// The item's HTTP status.
        status: u16,
        /// The server's error type and reason, e.g. `mapper_parsing_exception: failed to parse
        /// field [n] of type [integer] ...; caused by number_format_exception: ...`.
        reason: String,
    },
}

/// What to do with a bulk request whose HTTP status is not a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestClass {
    /// The server is overloaded or unavailable (429, 502, 503, 504): wait for it without
    /// using up a retry.
    Unavailable,
    /// The server refuses the job's settings (401, 403 credentials, 404 index or path): wait
    /// without using up a retry until the settings are fixed.
    Settings,
    /// The request may succeed later (408, 500, other 5xx): retry every document in it.
    Retry,
    /// The request body is larger than the server takes (413): split it, and a document
    /// refused alone is rejected with the server's answer.
    TooLarge,
    /// The request as a whole was refused for its body (400, ...): no document in it is
    /// known to be at fault, so none is rejected and none is retried now; they fail and are
    /// redelivered later.
    Fail,
}

/// Classifies the HTTP status of a whole bulk request that was not a 2xx.
#[must_use]
pub fn classify_request_status(status: u16) -> RequestClass {
    match status {
        429 | 502..=504 => RequestClass::Unavailable,
        401 | 403 | 404 => RequestClass::Settings,
        413 => RequestClass::TooLarge,
        _ if is_retriable_status(status) => RequestClass::Retry,
        _ => RequestClass::Fail,
    }
}

/// Whether an HTTP status means "try again later" (408, 429, 5xx).
#[must_use]
pub fn is_retriable_status(status: u16) -> bool {
    status == 408 || status == 429 || (500..=599).contains(&status)
}

/// Classifies every document of a bulk request from the response body: one [`ItemClass`] per
/// document sent, in the order they were sent.
///
/// When the response has a different number of items than `sent`, positions cannot be trusted,
/// so every document is retried.
#[must_use]
pub fn classify_bulk_response(body: &Value, sent: usize) -> Vec<ItemClass> {
    classify(body, sent, None)
}

/// Like [`classify_bulk_response`], and also retries a document whose response item names
/// another `_id` than the one sent (`ids[i]` is the `_id` of the i-th document sent). Items
/// without an `_id` are matched by position only.
#[must_use]
pub fn classify_bulk_response_for_ids<S: AsRef<str>>(body: &Value, ids: &[S]) -> Vec<ItemClass> {
    classify(
        body,
        ids.len(),
        Some(&|i: usize| ids.get(i).map(AsRef::as_ref)),
    )
}

type ExpectedId<'a> = &'a dyn Fn(usize) -> Option<&'a str>;

fn classify(body: &Value, sent: usize, expected_id: Option<ExpectedId<'_>>) -> Vec<ItemClass> {
    let all = |reason: String| vec![ItemClass::Retry(reason); sent];
    if let Some(error) = body.get("error") {
        return all(format!(
            "bulk response is an error: {}",
            error_reason(error)
        ));
    }
    let Some(items) = body.get("items").and_then(Value::as_array) else {
        return all("bulk response has no items array".to_owned());
    };
    if items.len() != sent {
        return all(format!(
            "bulk response has {} items for {sent} documents sent",
            items.len()
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let class = classify_item(item);
            match (&class, expected_id.and_then(|f| f(i)), item_id(item)) {
                (ItemClass::Ok | ItemClass::Reject { .. }, Some(want), Some(got))
                    if want != got =>
                {
                    ItemClass::Retry(format!(
                        "bulk response item {i} is for _id {got:?}, expected {want:?}"
                    ))
                }
                _ => class,
            }
        })
        .collect()
}

/// The operation key and its object, e.g. `("index", {...})`.
fn item_op(item: &Value) -> Option<(&str, &Value)> {
    item.as_object()?
        .iter()
        .find(|(_, v)| v.is_object())
        .map(|(k, v)| (k.as_str(), v))
}

fn item_id(item: &Value) -> Option<&str> {
    item_op(item)?.1.get("_id")?.as_str()
}

fn classify_item(item: &Value) -> ItemClass {
    let Some((op, result)) = item_op(item) else {
        return ItemClass::Retry(
            "bulk response item is not an object with an operation key".to_owned(),
        );
    };
    let Some(status) = result.get("status").and_then(Value::as_u64) else {
        return ItemClass::Retry(format!("bulk response item ({op}) has no status"));
    };
    let status = u16::try_from(status).unwrap_or(u16::MAX);
    let reason = || {
        result.get("error").map_or_else(
            || format!("HTTP {status}"),
            |e| format!("HTTP {status} {}", error_reason(e)),
        )
    };
    match status {
        200..=299 => ItemClass::Ok,
        409 if op == "create" => ItemClass::Ok,
        409 => ItemClass::Retry(reason()),
        s if is_retriable_status(s) => ItemClass::Retry(reason()),
        400..=499 if result.get("error").is_some_and(is_index_level) => ItemClass::Retry(reason()),
        400..=499 => ItemClass::Reject {
            status,
            reason: result
                .get("error")
                .map_or_else(|| format!("HTTP {status}"), error_reason),
        },
        _ => ItemClass::Retry(reason()),
    }
}

/// Errors about the index or the cluster rather than the document: rejecting would
/// dead-letter every document of every batch for a problem an operator can fix (create or
/// open the index, lift a read-only block, grant a role), so they are retried and then left
/// for redelivery.
const INDEX_LEVEL_ERRORS: [&str; 4] = [
    "index_not_found_exception",
    "index_closed_exception",
    "cluster_block_exception",
    "security_exception",
];

fn is_index_level(error: &Value) -> bool {
    error
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| INDEX_LEVEL_ERRORS.contains(&t))
}

/// `type: reason; caused by type: reason` from an Elasticsearch error object (or the string
/// itself when the error is a plain string).
fn error_reason(error: &Value) -> String {
    let mut parts = Vec::new();
    let mut current = Some(error);
    // The chain is short in practice; the bound only guards against a pathological body.
    for _ in 0..4 {
        let Some(e) = current else { break };
        let part = match e {
            Value::String(s) => s.clone(),
            Value::Object(map) => {
                let kind = map.get("type").and_then(Value::as_str);
                let reason = map.get("reason").and_then(Value::as_str);
                match (kind, reason) {
                    (Some(k), Some(r)) => format!("{k}: {r}"),
                    (Some(k), None) => k.to_owned(),
                    (None, Some(r)) => r.to_owned(),
                    (None, None) => e.to_string(),
                }
            }
            other => other.to_string(),
        };
        // ES repeats the same cause twice in some parse errors; say it once.
        if parts.last() != Some(&part) {
            parts.push(part);
        }
        current = e.get("caused_by");
    }
    parts.join("; caused by ")
}

pub use crate::backoff::Backoff;

/// Waits between bulk attempts: 200 ms doubling up to 30 s, fully jittered.
pub const BULK_BACKOFF: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(body: &str) -> Value {
        serde_json::from_str(body).unwrap()
    }

    /// A response where every item succeeded gives one Ok per document.
    #[test]
    fn all_successful_items_are_ok() {
        let body = parse(
            r#"{"took":3,"errors":false,"items":[
                {"index":{"_index":"t","_id":"1","_version":1,"result":"created","status":201}},
                {"index":{"_index":"t","_id":"2","_version":3,"result":"updated","status":200}}]}"#,
        );
        assert_eq!(
            classify_bulk_response(&body, 2),
            vec![ItemClass::Ok, ItemClass::Ok]
        );
    }

    /// 201/200 are ok, 429/503 retry with their reason, 400 is rejected with type and reason.
    #[test]
    fn mixed_statuses_are_classified_item_by_item() {
        let body = parse(
            r#"{"took":5,"errors":true,"items":[
              {"index":{"_id":"1","status":201}},
              {"index":{"_id":"2","status":200}},
              {"index":{"_id":"3","status":429,"error":{"type":"es_rejected_execution_exception","reason":"rejected execution of coordinating operation"}}},
              {"index":{"_id":"4","status":503,"error":{"type":"unavailable_shards_exception","reason":"primary shard is not active"}}},
              {"index":{"_id":"5","status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [n] of type [integer] in document with id '5'. Preview of field's value: 'abc'","caused_by":{"type":"number_format_exception","reason":"For input string: \"abc\""}}}}
            ]}"#,
        );
        let classes = classify_bulk_response(&body, 5);
        assert_eq!(classes[0], ItemClass::Ok);
        assert_eq!(classes[1], ItemClass::Ok);
        assert!(
            matches!(&classes[2], ItemClass::Retry(r) if r.contains("429") && r.contains("es_rejected_execution_exception")),
            "{:?}",
            classes[2]
        );
        assert!(
            matches!(&classes[3], ItemClass::Retry(r) if r.contains("503") && r.contains("primary shard is not active")),
            "{:?}",
            classes[3]
        );
        assert_eq!(
            classes[4],
            ItemClass::Reject {
                status: 400,
                reason: "mapper_parsing_exception: failed to parse field [n] of type [integer] in document with id '5'. \
                         Preview of field's value: 'abc'; caused by number_format_exception: For input string: \"abc\""
                    .to_owned(),
            }
        );
    }

    /// `errors: false` does not excuse an item with a failing status: items are read anyway.
    #[test]
    fn errors_false_still_reads_every_item() {
        let body = parse(
            r#"{"errors":false,"items":[{"index":{"_id":"1","status":201}},{"index":{"_id":"2","status":503}}]}"#,
        );
        let classes = classify_bulk_response(&body, 2);
        assert_eq!(classes[0], ItemClass::Ok);
        assert!(matches!(&classes[1], ItemClass::Retry(r) if r.contains("503")));
    }

    /// `errors: false` without any items is not a success for anything that was sent.
    #[test]
    fn missing_items_retry_every_document() {
        for body in [
            r#"{"took":1,"errors":false}"#,
            r#"{"errors":false,"items":null}"#,
            "[]",
            "null",
        ] {
            let classes = classify_bulk_response(&parse(body), 3);
            assert_eq!(classes.len(), 3, "{body}");
            assert!(
                classes
                    .iter()
                    .all(|c| matches!(c, ItemClass::Retry(r) if r.contains("no items"))),
                "{body}"
            );
        }
    }

    /// Fewer or more items than documents sent: positions cannot be trusted, nothing is Ok.
    #[test]
    fn item_count_mismatch_retries_every_document() {
        let fewer = parse(r#"{"errors":false,"items":[{"index":{"_id":"1","status":201}}]}"#);
        let classes = classify_bulk_response(&fewer, 3);
        assert_eq!(classes.len(), 3);
        assert!(
            classes
                .iter()
                .all(|c| matches!(c, ItemClass::Retry(r) if r.contains("1 items for 3")))
        );

        let more = parse(
            r#"{"errors":true,"items":[{"index":{"status":201}},{"index":{"status":400,"error":"bad"}},{"index":{"status":201}}]}"#,
        );
        let classes = classify_bulk_response(&more, 2);
        assert_eq!(classes.len(), 2);
        assert!(classes.iter().all(|c| matches!(c, ItemClass::Retry(_))));
    }

    /// Items under `create`, `update` or an unknown operation key are read like `index`.
    #[test]
    fn create_update_and_other_op_keys_are_tolerated() {
        let body = parse(
            r#"{"errors":true,"items":[
              {"create":{"_id":"1","status":201}},
              {"update":{"_id":"2","status":200}},
              {"update":{"_id":"3","status":404,"error":{"type":"document_missing_exception","reason":"[3]: document missing"}}},
              {"upsert":{"_id":"4","status":200}}
            ]}"#,
        );
        let classes = classify_bulk_response(&body, 4);
        assert_eq!(classes[..2], [ItemClass::Ok, ItemClass::Ok]);
        assert_eq!(
            classes[2],
            ItemClass::Reject {
                status: 404,
                reason: "document_missing_exception: [3]: document missing".to_owned()
            }
        );
        assert_eq!(classes[3], ItemClass::Ok);
    }

    /// 409 on `create` means the document is already there (a replay); on `index` it is a
    /// concurrent write and is retried, never dead-lettered.
    #[test]
    fn conflict_is_ok_for_create_and_retried_for_index() {
        let body = parse(
            r#"{"errors":true,"items":[
              {"create":{"_id":"1","status":409,"error":{"type":"version_conflict_engine_exception","reason":"[1]: version conflict, document already exists (current version [1])"}}},
              {"index":{"_id":"2","status":409,"error":{"type":"version_conflict_engine_exception","reason":"[2]: version conflict"}}}
            ]}"#,
        );
        let classes = classify_bulk_response(&body, 2);
        assert_eq!(classes[0], ItemClass::Ok);
        assert!(
            matches!(&classes[1], ItemClass::Retry(r) if r.contains("409") && r.contains("version_conflict"))
        );
    }

    /// A 4xx about the index (missing, closed, blocked, forbidden) is retried, not
    /// dead-lettered: it is not the document's fault.
    #[test]
    fn index_level_errors_are_retried_not_rejected() {
        let body = parse(
            r#"{"errors":true,"items":[
              {"index":{"_id":"1","status":404,"error":{"type":"index_not_found_exception","reason":"no such index [t]"}}},
              {"index":{"_id":"2","status":403,"error":{"type":"cluster_block_exception","reason":"index [t] blocked by: [FORBIDDEN/8/index write (api)];"}}},
              {"index":{"_id":"3","status":403,"error":{"type":"security_exception","reason":"action [indices:data/write/bulk[s]] is unauthorized"}}},
              {"index":{"_id":"4","status":400,"error":{"type":"index_closed_exception","reason":"closed"}}},
              {"index":{"_id":"5","status":404,"error":{"type":"document_missing_exception","reason":"[5]: document missing"}}}
            ]}"#,
        );
        let classes = classify_bulk_response(&body, 5);
        assert!(
            classes[..4]
                .iter()
                .all(|c| matches!(c, ItemClass::Retry(_))),
            "{classes:?}"
        );
        assert!(matches!(classes[4], ItemClass::Reject { status: 404, .. }));
    }

    /// Items with no status, or not shaped like an item, are retried.
    #[test]
    fn malformed_items_are_retried() {
        let body = parse(
            r#"{"errors":true,"items":[{"index":{"_id":"1"}},"oops",{"index":{"status":"201"}}]}"#,
        );
        let classes = classify_bulk_response(&body, 3);
        assert!(
            classes.iter().all(|c| matches!(c, ItemClass::Retry(_))),
            "{classes:?}"
        );
    }

    /// A 200 whose body is an error object retries everything with the server's reason.
    #[test]
    fn top_level_error_retries_every_document() {
        let body = parse(
            r#"{"error":{"type":"cluster_block_exception","reason":"index read-only"},"status":200}"#,
        );
        let classes = classify_bulk_response(&body, 2);
        assert_eq!(classes.len(), 2);
        assert!(classes.iter().all(|c| matches!(c, ItemClass::Retry(r) if r.contains("cluster_block_exception: index read-only"))));
    }

    /// An item that answers for another `_id` than the one sent at its position is retried.
    #[test]
    fn item_for_another_id_is_retried() {
        let body = parse(
            r#"{"errors":true,"items":[{"index":{"_id":"1","status":201}},{"index":{"_id":"9","status":400,"error":"x"}},{"index":{"status":201}}]}"#,
        );
        let classes = classify_bulk_response_for_ids(&body, &["1", "2", "3"]);
        assert_eq!(classes[0], ItemClass::Ok);
        assert!(
            matches!(&classes[1], ItemClass::Retry(r) if r.contains("\"9\"") && r.contains("\"2\""))
        );
        assert_eq!(classes[2], ItemClass::Ok);
    }

    /// A cause repeated verbatim (as OpenSearch does for parse errors) is said once.
    #[test]
    fn repeated_causes_are_said_once() {
        let e = json!({"type":"a","reason":"r","caused_by":{"type":"b","reason":"s","caused_by":{"type":"b","reason":"s"}}});
        assert_eq!(error_reason(&e), "a: r; caused by b: s");
    }

    /// Whole-request statuses: an unavailable server and wrong settings are waited for,
    /// other transient statuses retry, and a refused body fails without retrying.
    #[test]
    fn request_statuses_are_classified_by_whose_fault_they_are() {
        for s in [429, 502, 503, 504] {
            assert_eq!(classify_request_status(s), RequestClass::Unavailable, "{s}");
        }
        for s in [401, 403, 404] {
            assert_eq!(classify_request_status(s), RequestClass::Settings, "{s}");
        }
        for s in [408, 500, 501, 599] {
            assert_eq!(classify_request_status(s), RequestClass::Retry, "{s}");
        }
        assert_eq!(classify_request_status(413), RequestClass::TooLarge);
        for s in [400, 405, 411] {
            assert_eq!(classify_request_status(s), RequestClass::Fail, "{s}");
        }
    }
}
