//! The Grafana dashboard shipped with the Helm chart queries only metrics the code exports.
//!
//! The exported names come from the worker's and the operator's registries themselves, encoded
//! to the Prometheus/OpenMetrics text a scrape would get: a renamed or removed metric fails
//! this test instead of leaving an empty panel.
//!
//! It lives in the test kit because it needs both registries, and the operator does not depend
//! on the worker (not even for its tests).

use std::collections::BTreeSet;

use migrate_operator::metrics::Metrics;
use migrate_worker::metrics::WorkerMetrics;

const DASHBOARD: &str =
    include_str!("../../../charts/migrate-operator/dashboards/migrate-operator.json");

/// Every series name a scrape of `text` can give: sample names as written, and for each
/// `# TYPE` line the names its type implies (a family without samples yet, such as a labelled
/// gauge nobody has set, still declares its type).
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(declaration) = line.strip_prefix("# TYPE ") {
            let mut parts = declaration.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total", "_created"],
                "histogram" | "gaugehistogram" => &["_bucket", "_sum", "_count", "_created"],
                "summary" => &["", "_sum", "_count", "_created"],
                "info" => &["_info"],
                _ => &[""],
            };
            for suffix in suffixes {
                names.insert(format!("{name}{suffix}"));
            }
        } else if !line.starts_with('#') {
            let end = line
                .find(|c: char| c == '{' || c.is_whitespace())
                .unwrap_or(line.len());
            if end > 0 {
                names.insert(line[..end].to_owned());
            }
        }
    }
    names
}

/// Every string under a key named `expr` or `query` (panel targets and template variables).
fn queries(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "query", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => queries(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

/// The metric names a PromQL expression mentions: identifiers starting with `migrate_`
/// outside quoted strings (label values may contain anything).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut chars = expr.char_indices().peekable();
    let mut quote: Option<char> = None;
    while let Some((i, c)) = chars.next() {
        if let Some(q) = quote {
            if c == '\\' {
                chars.next();
            } else if c == q {
                quote = None;
            }
            continue;
        }
        if c == '"' || c == '\'' || c == '`' {
            quote = Some(c);
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let mut end = i + c.len_utf8();
            while let Some(&(j, d)) = chars.peek() {
                if d.is_ascii_alphanumeric() || d == '_' || d == ':' {
                    end = j + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            let word = &expr[i..end];
            if word.starts_with("migrate_") {
                names.push(word.to_owned());
            }
        }
    }
    names
}

#[test]
fn every_metric_the_dashboard_queries_is_exported_by_the_worker_or_the_operator() {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
    let mut exprs = Vec::new();
    queries(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "too few queries found: {exprs:?}");

    let worker = exported_names(&WorkerMetrics::new().encode());
    // A labelled family is encoded only once it has a series: the leak gauge gets its first
    // one when a restart names a leaking stage.
    let operator_metrics = Metrics::new();
    operator_metrics.leak("enrich", 1);
    let operator = exported_names(&operator_metrics.encode());
    let mut used_worker = false;
    let mut used_operator = false;
    let mut missing = Vec::new();
    for expr in &exprs {
        let names = metric_names(expr);
        for name in names {
            used_worker |= worker.contains(&name);
            used_operator |= operator.contains(&name);
            if !worker.contains(&name) && !operator.contains(&name) {
                missing.push(format!("{name} (in {expr})"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics nobody exports:\n  {}\nworker exports: {worker:?}\noperator exports: {operator:?}",
        missing.join("\n  ")
    );
    assert!(used_worker, "no panel shows a worker metric");
    assert!(used_operator, "no panel shows an operator metric");
}

#[test]
fn every_panel_has_a_query_and_a_unique_id() {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "duplicate id at {title}"
        );
        if panel["type"] == "row" {
            continue;
        }
        let mut exprs = Vec::new();
        queries(&panel["targets"], &mut exprs);
        assert!(
            !exprs.is_empty() && exprs.iter().all(|e| !metric_names(e).is_empty()),
            "panel {title} has no metric query"
        );
    }
}

#[test]
fn names_are_found_in_promql_but_not_in_label_values() {
    assert_eq!(
        metric_names(
            r#"sum by (stage, le) (rate(migrate_stage_seconds_bucket{pod=~"migrate_x.*"}[5m])) / migrate_in_flight"#
        ),
        ["migrate_stage_seconds_bucket", "migrate_in_flight"]
    );
    let names = exported_names(
        "# TYPE migrate_tasks counter\nmigrate_tasks_total{outcome=\"x\"} 1\n# TYPE migrate_leak gauge\n# TYPE h histogram\n",
    );
    assert!(names.contains("migrate_tasks_total"));
    assert!(names.contains("migrate_leak"), "a family without samples");
    assert!(names.contains("h_bucket"));
    assert!(
        !names.contains("migrate_tasks"),
        "a counter's samples end in _total"
    );
}
