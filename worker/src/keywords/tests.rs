use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::*;

fn spec(value: Value) -> KeywordsSpec {
    serde_json::from_value(value).unwrap()
}

fn doc(value: Value) -> Document {
    match value {
        Value::Object(map) => map,
        other => panic!("test documents are objects, not {other}"),
    }
}

fn lists(entries: &[(&str, &[&str])]) -> HashMap<String, Vec<String>> {
    entries
        .iter()
        .map(|(file, words)| {
            (
                (*file).to_owned(),
                words.iter().map(|w| (*w).to_owned()).collect(),
            )
        })
        .collect()
}

fn counts(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
    pairs.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect()
}

/// One set over `body` with the given options, applied to one body text; returns the hits
/// object written into the document (`null` when none).
fn hits_of(set_options: Value, words: &[&str], body: &str) -> Value {
    let mut set = json!({"name": "s", "file": "f", "fields": ["body"]});
    if let (Some(set), Some(options)) = (set.as_object_mut(), set_options.as_object()) {
        set.extend(options.clone());
    }
    let keywords =
        Keywords::from_lists(&spec(json!({"sets": [set]})), &lists(&[("f", words)])).unwrap();
    let mut d = doc(json!({"body": body}));
    let verdict = keywords.apply(&mut d);
    assert_eq!(verdict.dropped_by, None);
    d.get(HITS_FIELD)
        .and_then(|k| k.get("s"))
        .map_or(Value::Null, keyword_map)
}

/// A set's hits array as `{keyword: count}`, for comparing with tables, after checking that
/// the array has the stored shape: `{"keyword", "count"}` entries, most hits first, ties by
/// keyword, no keyword twice.
fn keyword_map(hits: &Value) -> Value {
    let entries = hits
        .as_array()
        .unwrap_or_else(|| panic!("hits are an array, not {hits}"));
    let mut map = serde_json::Map::new();
    let mut previous: Option<(u64, &str)> = None;
    for entry in entries {
        let object = entry.as_object().unwrap();
        assert_eq!(object.len(), 2, "entry {entry}");
        let keyword = object[HIT_KEYWORD].as_str().unwrap();
        let count = object[HIT_COUNT].as_u64().unwrap();
        assert!(count > 0, "entry {entry}");
        if let Some((c, k)) = previous {
            assert!(
                c > count || (c == count && k < keyword),
                "{hits} is not sorted by count, then keyword"
            );
        }
        previous = Some((count, keyword));
        assert!(
            map.insert(keyword.to_owned(), json!(count)).is_none(),
            "{keyword} twice in {hits}"
        );
    }
    Value::Object(map)
}

/// The stored shape: an array of `{"keyword", "count"}`, most hits first, ties in keyword
/// order, whatever the order of the keyword file or of the text.
#[test]
fn hits_are_stored_as_an_array_sorted_by_count_then_keyword() {
    let words: &[&str] = &["乙", "甲", "丙", "丁"];
    let s = spec(json!({"sets": [{"name": "s", "file": "f", "fields": ["body"]}]}));
    let keywords = Keywords::from_lists(&s, &lists(&[("f", words)])).unwrap();
    let mut d = doc(json!({"body": "丁甲乙丙乙丁乙"}));
    let _ = keywords.apply(&mut d);
    assert_eq!(
        d[HITS_FIELD]["s"],
        json!([
            {"keyword": "乙", "count": 3},
            {"keyword": "丁", "count": 2},
            {"keyword": "丙", "count": 1},
            {"keyword": "甲", "count": 1},
        ])
    );
}

/// Leftmost-longest: at one position the longest keyword wins, and a match is not counted
/// again inside a longer one.
#[test]
fn overlapping_keywords_are_matched_leftmost_longest() {
    let words: &[&str] = &["中国", "中国人", "国人", "人民"];
    let cases = [
        ("中国人民", json!({"中国人": 1})),
        ("中国人民中国", json!({"中国人": 1, "中国": 1})),
        ("外国人和中国", json!({"国人": 1, "中国": 1})),
        ("人民的中国人", json!({"人民": 1, "中国人": 1})),
        ("没有", Value::Null),
    ];
    for (body, want) in cases {
        assert_eq!(hits_of(json!({}), words, body), want, "body {body:?}");
    }
}

/// Case-insensitive sets fold ASCII letters only, and report the keyword as written in the
/// file (the first spelling when a file repeats it in another case).
#[test]
fn case_insensitive_sets_fold_ascii_letters_only() {
    let words: &[&str] = &["Rust", "RUST", "GPU", "Äpfel", "中文AI"];
    let cases = [
        ("rust RUST Rust", json!({"Rust": 3})),
        ("a gpu and a Gpu", json!({"GPU": 2})),
        ("äpfel", Value::Null),
        ("Äpfel", json!({"Äpfel": 1})),
        ("中文ai", json!({"中文AI": 1})),
    ];
    for (body, want) in cases {
        assert_eq!(
            hits_of(json!({"caseInsensitive": true}), words, body),
            want,
            "body {body:?}"
        );
    }
    assert_eq!(hits_of(json!({}), words, "rust Rust"), json!({"Rust": 1}));
}

#[test]
fn whole_word_sets_skip_matches_inside_ascii_words() {
    let words: &[&str] = &["cat", "AI", "手机"];
    let cases = [
        ("concat", Value::Null),
        ("the cat sat", json!({"cat": 1})),
        ("cat,cat.cats", json!({"cat": 2})),
        ("SAID AI", json!({"AI": 1})),
        ("iPhone手机和AI手机", json!({"手机": 2, "AI": 1})),
    ];
    for (body, want) in cases {
        assert_eq!(
            hits_of(json!({"wholeWords": true}), words, body),
            want,
            "body {body:?}"
        );
    }
    let both = json!({"wholeWords": true, "caseInsensitive": true});
    assert_eq!(hits_of(both, words, "Cat CAT cAts"), json!({"cat": 2}));
}

/// Blacklists drop on any hit, whitelists drop without one, and the first set in spec order
/// that drops is named.
#[test]
fn blacklists_and_whitelists_decide_which_documents_are_dropped() {
    let s = spec(json!({"sets": [
        {"name": "banned", "file": "banned.txt", "role": "Blacklist", "fields": ["title", "body"]},
        {"name": "topics", "file": "topics.txt", "role": "Whitelist", "fields": ["body"]},
        {"name": "brands", "file": "brands.txt", "fields": ["body"]},
    ]}));
    let l = lists(&[
        ("banned.txt", &["赌博", "诈骗"]),
        ("topics.txt", &["经济", "科技"]),
        ("brands.txt", &["华为"]),
    ]);
    let keywords = Keywords::from_lists(&s, &l).unwrap();
    let cases: &[(Value, Option<&str>)] = &[
        (json!({"title": "好", "body": "经济新闻"}), None),
        (json!({"title": "赌博", "body": "经济新闻"}), Some("banned")),
        (json!({"title": "好", "body": "科技与诈骗"}), Some("banned")),
        (json!({"title": "经济", "body": "体育新闻"}), Some("topics")),
        (json!({"title": "好", "body": "华为"}), Some("topics")),
        (json!({"title": "好"}), Some("topics")),
    ];
    for (input, want) in cases {
        let before = doc(input.clone());
        let mut d = before.clone();
        let verdict = keywords.apply(&mut d);
        assert_eq!(verdict.dropped_by.as_deref(), *want, "document {input}");
        if want.is_some() {
            assert_eq!(d, before, "a dropped document is left unchanged");
            assert!(verdict.counts.is_empty());
        }
    }
}

/// Counts go to Redis only for sets with `count: true`, whatever their role; hits are written
/// into the document for every set that has some.
#[test]
fn counts_are_returned_only_for_sets_that_count() {
    let s = spec(json!({"sets": [
        {"name": "topics", "file": "t.txt", "role": "Whitelist", "fields": ["body"]},
        {"name": "brands", "file": "b.txt", "fields": ["body"]},
        {"name": "quiet", "file": "b.txt", "fields": ["body"], "count": false},
        {"name": "none", "file": "n.txt", "fields": ["body"]},
    ]}));
    let l = lists(&[
        ("t.txt", &["经济"]),
        ("b.txt", &["华为", "小米"]),
        ("n.txt", &["不存在"]),
    ]);
    let keywords = Keywords::from_lists(&s, &l).unwrap();
    let mut d = doc(json!({"body": "经济：小米和华为，华为。"}));
    let verdict = keywords.apply(&mut d);
    assert_eq!(verdict.dropped_by, None);
    assert_eq!(
        verdict.counts,
        counts(&[("topics:经济", 1), ("brands:华为", 2), ("brands:小米", 1)])
    );
    assert_eq!(
        d[HITS_FIELD],
        json!({
            "topics": [{"keyword": "经济", "count": 1}],
            "brands": [{"keyword": "华为", "count": 2}, {"keyword": "小米", "count": 1}],
            "quiet": [{"keyword": "华为", "count": 2}, {"keyword": "小米", "count": 1}],
        })
    );
}

/// Fields are dotted paths; arrays of strings and arrays of objects are matched element by
/// element, and a match never spans two elements or two fields.
#[test]
fn nested_fields_and_arrays_are_matched() {
    let s = spec(json!({"sets": [
        {"name": "k", "file": "k.txt", "fields": ["title", "nlp.tags", "comments.text", "meta.missing"]},
    ]}));
    let keywords = Keywords::from_lists(&s, &lists(&[("k.txt", &["中国", "中国人"])])).unwrap();
    let mut d = doc(json!({
        "title": "中",
        "nlp": {"tags": ["国人", "中国", 7, null, ["中国人"]]},
        "comments": [{"text": "中国"}, {"text": "人"}, {"other": "中国"}],
        "meta": {},
        "body": "中国中国",
    }));
    let verdict = keywords.apply(&mut d);
    assert_eq!(
        keyword_map(&d[HITS_FIELD]["k"]),
        json!({"中国": 2, "中国人": 1})
    );
    assert_eq!(verdict.counts, counts(&[("k:中国", 2), ("k:中国人", 1)]));
}

#[test]
fn the_summary_is_written_at_its_output_path() {
    let s = spec(
        json!({"summary": {"inputField": "content.text", "outputField": "meta.summary", "maxChars": 8}}),
    );
    let keywords = Keywords::from_lists(&s, &HashMap::new()).unwrap();
    let cases = [
        (
            json!({"content": {"text": "  第一句。第二句很长很长。"}}),
            Some("第一句。"),
        ),
        (
            json!({"content": {"text": "没有句号的长长长长文字"}}),
            Some("没有句号的长长长"),
        ),
        (json!({"content": {"text": "短！"}}), Some("短！")),
        (json!({"content": {"text": 5}}), None),
        (json!({}), None),
    ];
    for (input, want) in cases {
        let mut d = doc(input.clone());
        let verdict = keywords.apply(&mut d);
        assert_eq!(verdict, Verdict::default());
        let got = d
            .get("meta")
            .and_then(|m| m.get("summary"))
            .and_then(Value::as_str);
        assert_eq!(got, want, "document {input}");
    }
    let mut d = doc(json!({"content": {"text": "好。"}, "meta": "not an object"}));
    let _ = keywords.apply(&mut d);
    assert_eq!(d["meta"], json!({"summary": "好。"}));
}

/// An empty keyword file is valid: a count set finds nothing, a blacklist drops nothing, a
/// whitelist drops everything.
#[test]
fn empty_keyword_files_match_nothing() {
    let s = spec(json!({"sets": [
        {"name": "c", "file": "empty.txt", "fields": ["body"]},
        {"name": "b", "file": "empty.txt", "role": "Blacklist", "fields": ["body"]},
    ]}));
    let keywords = Keywords::from_lists(&s, &lists(&[("empty.txt", &["", "  "])])).unwrap();
    assert_eq!(keywords.keyword_count(), 0);
    let mut d = doc(json!({"body": "任何文字"}));
    assert_eq!(keywords.apply(&mut d), Verdict::default());
    assert!(!d.contains_key(HITS_FIELD));

    let s = spec(
        json!({"sets": [{"name": "w", "file": "empty.txt", "role": "Whitelist", "fields": ["body"]}]}),
    );
    let keywords = Keywords::from_lists(&s, &lists(&[("empty.txt", &[])])).unwrap();
    assert_eq!(
        keywords
            .apply(&mut doc(json!({"body": "任何文字"})))
            .dropped_by
            .as_deref(),
        Some("w")
    );
}

#[test]
fn specs_that_cannot_be_compiled_are_refused_with_the_set_named() {
    let l = lists(&[("a.txt", &["x"])]);
    let cases = [
        (
            json!({"sets": [{"name": "s", "file": "b.txt"}]}),
            "missing-list",
            "no keyword list named \"b.txt\" for set \"s\"",
        ),
        (
            json!({"sets": [{"name": "s", "file": "a.txt"}, {"name": "s", "file": "a.txt"}]}),
            "duplicate-set",
            "keyword set name \"s\" is used more than once",
        ),
        (
            json!({"sets": [{"name": "s", "file": "a.txt", "fields": ["a..b"]}]}),
            "bad-field",
            "field \"a..b\" of keyword set \"s\" is not a dotted path",
        ),
        (
            json!({"summary": {"outputField": "x."}}),
            "bad-field",
            "summary field \"x.\" is not a dotted path",
        ),
    ];
    for (s, label, message) in cases {
        let err = Keywords::from_lists(&spec(s.clone()), &l).unwrap_err();
        assert_eq!(err.metric_label(), label, "spec {s}");
        assert_eq!(err.to_string(), message, "spec {s}");
    }
}

#[test]
fn loading_reads_every_file_from_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "# brands\n华为\n小米\n华为\n").unwrap();
    std::fs::write(dir.path().join("b.txt"), "赌博\n").unwrap();
    let s = spec(json!({"sets": [
        {"name": "brands", "file": "a.txt", "fields": ["body"]},
        {"name": "banned", "file": "b.txt", "role": "Blacklist", "fields": ["body"]},
    ]}));
    let keywords = Keywords::load(&s, dir.path()).unwrap();
    assert_eq!(keywords.keyword_count(), 3);
    assert!(keywords.fingerprint().is_some());
    let mut d = doc(json!({"body": "小米"}));
    assert_eq!(keywords.apply(&mut d).counts, counts(&[("brands:小米", 1)]));
    assert_eq!(
        keywords
            .apply(&mut doc(json!({"body": "赌博"})))
            .dropped_by
            .as_deref(),
        Some("banned")
    );
}

#[test]
fn a_missing_file_names_the_set_the_file_and_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(json!({"sets": [{"name": "brands", "file": "brands.txt"}]}));
    let err = Keywords::load(&s, dir.path()).unwrap_err();
    assert!(matches!(err, KeywordsError::MissingFile { .. }), "{err:?}");
    assert_eq!(
        (err.set(), err.file()),
        (Some("brands"), Some("brands.txt"))
    );
    let message = err.to_string();
    assert!(
        message.contains("brands.txt") && message.contains("\"brands\""),
        "{message}"
    );
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
}

#[test]
fn bad_files_and_file_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.txt"), [b'a', b'\n', 0xff, 0xfe]).unwrap();
    let s = spec(json!({"sets": [{"name": "s", "file": "bad.txt"}]}));
    let err = Keywords::load(&s, dir.path()).unwrap_err();
    assert_eq!(err.metric_label(), "not-utf8");
    assert_eq!(err.file(), Some("bad.txt"));
    for name in ["../etc/passwd", "..", "a/b"] {
        let s = spec(json!({"sets": [{"name": "s", "file": name}]}));
        let err = Keywords::load(&s, dir.path()).unwrap_err();
        assert_eq!(err.metric_label(), "bad-file-name", "{name}");
    }
}

/// Keyword lists over a small alphabet, so that keywords overlap and nest a lot.
fn overlapping_corpus(seed: u64) -> (Vec<String>, Vec<String>) {
    let alphabet: Vec<char> = "中国人民大学生日本北京上海，。a1".chars().collect();
    let mut state = seed;
    let mut next = move |bound: usize| {
        // xorshift64: enough to spread cases, and reproducible.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        usize::try_from(state % bound as u64).unwrap()
    };
    let mut keywords: Vec<String> = (0..400)
        .map(|_| {
            (0..1 + next(4))
                .map(|_| alphabet[next(alphabet.len())])
                .collect()
        })
        .collect();
    keywords.sort();
    keywords.dedup();
    let texts = (0..300)
        .map(|_| {
            (0..next(120))
                .map(|_| alphabet[next(alphabet.len())])
                .collect()
        })
        .collect();
    (keywords, texts)
}

/// The two engines are interchangeable: same keyword, same offsets, on every text.
#[test]
fn aho_corasick_and_daachorse_find_the_same_matches() {
    for seed in [1, 7, 42, 2026] {
        let (keywords, texts) = overlapping_corpus(seed);
        let daac = Matcher::build(Engine::Daachorse, &keywords, false, false).unwrap();
        let dfa = Matcher::build(Engine::AhoCorasickDfa, &keywords, false, false).unwrap();
        let nfa = Matcher::build(Engine::AhoCorasickNfa, &keywords, false, false).unwrap();
        let mut total = 0;
        for text in &texts {
            let want = daac.find_all(text);
            total += want.len();
            assert_eq!(dfa.find_all(text), want, "seed {seed}, text {text:?}");
            assert_eq!(nfa.find_all(text), want, "seed {seed}, text {text:?}");
        }
        assert!(
            total > 1000,
            "the corpus should produce many matches, got {total}"
        );
    }
}

// ---- reload ----

fn write(dir: &Path, file: &str, content: &[u8]) {
    // Write then rename, as an editor or kubelet would, so a poll never sees half a file.
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

fn finds(handle: &KeywordsHandle, body: &str) -> bool {
    !handle
        .current()
        .apply(&mut doc(json!({"body": body})))
        .counts
        .is_empty()
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An edited file is picked up; a broken one is reported and the sets in use are kept; the
/// next good edit is picked up again; cancelling stops the reloader.
#[tokio::test]
async fn reload_picks_up_edits_and_keeps_the_old_sets_when_a_file_is_broken() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "k.txt", "苹果\n".as_bytes());
    let s = spec(json!({"sets": [{"name": "fruit", "file": "k.txt", "fields": ["body"]}]}));
    let handle = KeywordsHandle::new(Keywords::load(&s, dir.path()).unwrap());
    let cancel = CancellationToken::new();
    let task = handle.spawn_reloader(
        s,
        dir.path().to_owned(),
        Duration::from_millis(10),
        cancel.clone(),
    );
    assert!(finds(&handle, "苹果"));

    write(dir.path(), "k.txt", "香蕉\n".as_bytes());
    wait_until("the new keyword is loaded", || finds(&handle, "香蕉")).await;
    assert!(!finds(&handle, "苹果"));
    assert_eq!(handle.reloads(), 1);

    write(dir.path(), "k.txt", &[0xff, 0xfe, b'\n']);
    wait_until("the broken file is reported", || {
        handle.failed_reloads() == 1
    })
    .await;
    assert!(finds(&handle, "香蕉"), "the sets in use are kept");

    std::fs::remove_file(dir.path().join("k.txt")).unwrap();
    wait_until("the missing file is reported", || {
        handle.failed_reloads() == 2
    })
    .await;
    assert!(finds(&handle, "香蕉"), "the sets in use are kept");

    write(dir.path(), "k.txt", "橙子\n".as_bytes());
    wait_until("the repaired file is loaded", || finds(&handle, "橙子")).await;
    assert_eq!((handle.reloads(), handle.failed_reloads()), (2, 2));

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}

/// A ConfigMap volume: `k.txt -> ..data/k.txt`, `..data -> ..<generation>`, and an update
/// swaps `..data` atomically.
#[cfg(unix)]
#[tokio::test]
async fn reload_follows_a_configmap_symlink_swap() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("..gen1")).unwrap();
    std::fs::write(root.join("..gen1/k.txt"), "苹果\n").unwrap();
    symlink("..gen1", root.join("..data")).unwrap();
    symlink("..data/k.txt", root.join("k.txt")).unwrap();

    let s = spec(json!({"sets": [{"name": "fruit", "file": "k.txt", "fields": ["body"]}]}));
    let handle = KeywordsHandle::new(Keywords::load(&s, root).unwrap());
    let cancel = CancellationToken::new();
    let task = handle.spawn_reloader(
        s,
        root.to_owned(),
        Duration::from_millis(10),
        cancel.clone(),
    );

    std::fs::create_dir(root.join("..gen2")).unwrap();
    std::fs::write(root.join("..gen2/k.txt"), "香蕉\n").unwrap();
    symlink("..gen2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join("..gen1")).unwrap();

    wait_until("the swapped file is loaded", || finds(&handle, "香蕉")).await;
    assert!(!finds(&handle, "苹果"));
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}
