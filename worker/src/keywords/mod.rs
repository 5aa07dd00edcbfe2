//! Stage D: keyword matching, black/white-list filters, keyword counts and the summary.
//!
//! Every keyword set of the spec is compiled once into a [`Matcher`] with leftmost-longest
//! semantics (`中国人` wins over `中国` at the same position, and matches do not overlap) and
//! shared read-only by every task through an `Arc`. [`Keywords::apply`] then, per document:
//!
//! 1. runs the blacklists and whitelists, in spec order: a blacklist hit or a whitelist without
//!    a hit drops the document, which is then left untouched (no hits, no counts, no summary);
//! 2. matches the remaining sets over their fields (dotted paths; string values, arrays of
//!    strings, and through arrays of objects);
//! 3. writes the hits of every set that has any under `keywords.<set>` as an array of
//!    `{"keyword": k, "count": n}` objects, most hits first, ties by keyword (byte order); a
//!    set without hits writes nothing, so an absent key means "no hit". The array keeps the
//!    index mapping bounded (two fields per set, however many distinct keywords hit);
//! 4. returns `("<set>:<keyword>", hits)` pairs for the sets with `count: true`, to be added to
//!    the Redis counts hash exactly once by the acknowledgement;
//! 5. writes the summary (see [`summarize`]).
//!
//! Keyword files live in one directory (`MIGRATE_KEYWORDS_DIR`, in Kubernetes a mounted
//! ConfigMap); see [`parse_keywords`] for their format. [`KeywordsHandle`] holds the current
//! compiled sets and swaps in new ones when the files change.
//!
//! ```
//! use std::collections::HashMap;
//! use migrate_crds::KeywordsSpec;
//! use migrate_worker::keywords::Keywords;
//!
//! let spec: KeywordsSpec = serde_json::from_value(serde_json::json!({
//!     "sets": [{"name": "topics", "file": "topics.txt", "fields": ["body"]}]
//! })).unwrap();
//! let lists = HashMap::from([("topics.txt".to_owned(), vec!["中国".to_owned(), "中国人".to_owned()])]);
//! let keywords = Keywords::from_lists(&spec, &lists).unwrap();
//!
//! let mut doc = serde_json::json!({"body": "中国人在中国，中国"}).as_object().unwrap().clone();
//! let verdict = keywords.apply(&mut doc);
//! assert_eq!(
//!     doc["keywords"]["topics"],
//!     serde_json::json!([{"keyword": "中国", "count": 2}, {"keyword": "中国人", "count": 1}])
//! );
//! assert_eq!(verdict.counts, vec![("topics:中国".to_owned(), 2), ("topics:中国人".to_owned(), 1)]);
//! ```
//!
//! Resource use, measured by `cargo bench -p migrate-worker --bench keywords` with 10,000
//! Chinese keywords: a daachorse automaton holds about 0.65 MB and builds in 10-25 ms; it
//! matches about 250 MB/s of word-structured Chinese text per core (190 MB/s when a keyword
//! hits every few characters), 2.5 to 3 times `aho-corasick`. Matching allocates only for the
//! hits of a document.

mod files;
mod matcher;
mod path;
mod reload;
mod summary;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use migrate_crds::{KeywordRole, KeywordsSpec};
use serde_json::{Map, Value};

pub use files::parse_keywords;
pub use matcher::{Engine, Hit, Matcher, MatcherError};
pub use reload::KeywordsHandle;
pub use summary::summarize;

use self::path::{FieldPath, object_entry};
use crate::task::Document;

/// Top-level document field the hits are written under.
pub const HITS_FIELD: &str = "keywords";
/// Field of a hit entry holding the keyword (as written in the keyword file).
pub const HIT_KEYWORD: &str = "keyword";
/// Field of a hit entry holding how many times the keyword matched in the document.
pub const HIT_COUNT: &str = "count";

/// Why keyword sets could not be loaded or compiled. Each names the set and the file.
#[derive(Debug, thiserror::Error)]
pub enum KeywordsError {
    /// The file does not exist in the keywords directory.
    #[error("keyword file {file:?} of set {set:?} not found in {}", dir.display())]
    MissingFile {
        /// Set that names the file.
        set: String,
        /// File name from the spec.
        file: String,
        /// Directory tried.
        dir: PathBuf,
    },
    /// The file exists but could not be read.
    #[error("failed to read keyword file {file:?} of set {set:?} at {}", path.display())]
    ReadFile {
        /// Set that names the file.
        set: String,
        /// File name from the spec.
        file: String,
        /// Full path tried.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not UTF-8.
    #[error("keyword file {file:?} of set {set:?} at {} is not valid UTF-8", path.display())]
    NotUtf8 {
        /// Set that names the file.
        set: String,
        /// File name from the spec.
        file: String,
        /// Full path read.
        path: PathBuf,
        /// Where the first invalid byte is.
        #[source]
        source: std::str::Utf8Error,
    },
    /// The file name is not a plain name inside the directory (`..`, or contains a slash).
    #[error("keyword file name {file:?} of set {set:?} is not a plain file name")]
    BadFileName {
        /// Set that names the file.
        set: String,
        /// File name from the spec.
        file: String,
    },
    /// [`Keywords::from_lists`] was given no list under the file name.
    #[error("no keyword list named {file:?} for set {set:?}")]
    MissingList {
        /// Set that names the file.
        set: String,
        /// File name from the spec.
        file: String,
    },
    /// Two sets have the same name (their hits would overwrite each other).
    #[error("keyword set name {set:?} is used more than once")]
    DuplicateSet {
        /// The repeated name.
        set: String,
    },
    /// A field of a set is not a dotted path.
    #[error("field {field:?} of keyword set {set:?} is not a dotted path")]
    BadField {
        /// Set the field belongs to.
        set: String,
        /// The field as written.
        field: String,
    },
    /// A field of the summary is not a dotted path.
    #[error("summary field {field:?} is not a dotted path")]
    BadSummaryField {
        /// The field as written.
        field: String,
    },
    /// The automaton could not be built from the keywords.
    #[error("failed to build the automaton of keyword set {set:?} from file {file:?}")]
    Build {
        /// Set being compiled.
        set: String,
        /// File its keywords came from.
        file: String,
        /// The engine's refusal.
        #[source]
        source: MatcherError,
    },
}

impl KeywordsError {
    /// The keyword file involved, if any.
    #[must_use]
    pub fn file(&self) -> Option<&str> {
        match self {
            Self::MissingFile { file, .. }
            | Self::ReadFile { file, .. }
            | Self::NotUtf8 { file, .. }
            | Self::BadFileName { file, .. }
            | Self::MissingList { file, .. }
            | Self::Build { file, .. } => Some(file),
            Self::DuplicateSet { .. } | Self::BadField { .. } | Self::BadSummaryField { .. } => {
                None
            }
        }
    }

    /// The keyword set involved, if any.
    #[must_use]
    pub fn set(&self) -> Option<&str> {
        match self {
            Self::MissingFile { set, .. }
            | Self::ReadFile { set, .. }
            | Self::NotUtf8 { set, .. }
            | Self::BadFileName { set, .. }
            | Self::MissingList { set, .. }
            | Self::DuplicateSet { set }
            | Self::BadField { set, .. }
            | Self::Build { set, .. } => Some(set),
            Self::BadSummaryField { .. } => None,
        }
    }

    /// Short stable name, for metric labels and event reasons.
    #[must_use]
    pub const fn metric_label(&self) -> &'static str {
        match self {
            Self::MissingFile { .. } => "missing-file",
            Self::ReadFile { .. } => "read-file",
            Self::NotUtf8 { .. } => "not-utf8",
            Self::BadFileName { .. } => "bad-file-name",
            Self::MissingList { .. } => "missing-list",
            Self::DuplicateSet { .. } => "duplicate-set",
            Self::BadField { .. } | Self::BadSummaryField { .. } => "bad-field",
            Self::Build { .. } => "build",
        }
    }
}

/// What [`Keywords::apply`] decided for one document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// The black- or whitelist that dropped the document; `None` when it is kept.
    pub dropped_by: Option<String>,
    /// `("<set>:<keyword>", hits)` for every keyword found by a set with `count: true`:
    /// whitelists first, then count sets, each in spec order and then keyword-file order.
    /// Empty when the document is dropped.
    pub counts: Vec<(String, u64)>,
}

/// The compiled keyword sets and summary settings of one spec.
pub struct Keywords {
    sets: Vec<CompiledSet>,
    summary: Option<CompiledSummary>,
    /// Fingerprint of the files the sets were read from (`None` when built from lists).
    fingerprint: Option<u64>,
}

struct CompiledSet {
    name: String,
    role: KeywordRole,
    count: bool,
    fields: Vec<FieldPath>,
    /// The keywords; a hit's `keyword` indexes this list.
    keywords: Vec<String>,
    matcher: Matcher,
}

struct CompiledSummary {
    input: FieldPath,
    output: FieldPath,
    max_chars: usize,
}

impl fmt::Debug for Keywords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for set in &self.sets {
            list.entry(&format_args!(
                "{} ({:?}, {} keywords, {:?})",
                set.name,
                set.role,
                set.keywords.len(),
                set.matcher.engine()
            ));
        }
        list.finish()
    }
}

impl Keywords {
    /// Reads every set's file from `dir` and compiles the sets.
    ///
    /// # Errors
    /// A [`KeywordsError`] naming the set and the file: the file is missing (naming the
    /// directory tried too), unreadable, not UTF-8, or its keywords cannot be compiled; or the
    /// spec has a duplicate set name or a field that is not a dotted path.
    pub fn load(spec: &KeywordsSpec, dir: &Path) -> Result<Self, KeywordsError> {
        let snapshot = files::read_snapshot(spec, dir);
        let mut keywords = Self::from_lists(spec, &snapshot.lists?)?;
        keywords.fingerprint = Some(snapshot.fingerprint);
        Ok(keywords)
    }

    /// Compiles the sets from keyword lists given by file name (for tests and benchmarks).
    /// Entries are trimmed, and empty and repeated entries dropped, as in a file.
    ///
    /// # Errors
    /// [`KeywordsError::MissingList`] when a set's file is not in `lists`, and the errors of
    /// [`Keywords::load`] about the spec and compiling.
    pub fn from_lists(
        spec: &KeywordsSpec,
        lists: &HashMap<String, Vec<String>>,
    ) -> Result<Self, KeywordsError> {
        let mut names = HashSet::new();
        let mut sets = Vec::with_capacity(spec.sets.len());
        for set in &spec.sets {
            if !names.insert(set.name.as_str()) {
                return Err(KeywordsError::DuplicateSet {
                    set: set.name.clone(),
                });
            }
            let list = lists
                .get(&set.file)
                .ok_or_else(|| KeywordsError::MissingList {
                    set: set.name.clone(),
                    file: set.file.clone(),
                })?;
            let fields = set
                .fields
                .iter()
                .map(|field| {
                    FieldPath::parse(field).ok_or_else(|| KeywordsError::BadField {
                        set: set.name.clone(),
                        field: field.clone(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let keywords = distinct(list, set.case_insensitive);
            let engine = Engine::for_options(set.case_insensitive, set.whole_words);
            let matcher = Matcher::build(engine, &keywords, set.case_insensitive, set.whole_words)
                .map_err(|source| KeywordsError::Build {
                    set: set.name.clone(),
                    file: set.file.clone(),
                    source,
                })?;
            if keywords.is_empty() && set.role == KeywordRole::Whitelist {
                tracing::warn!(set = %set.name, file = %set.file, "Whitelist has no keywords: every document will be dropped.");
            }
            sets.push(CompiledSet {
                name: set.name.clone(),
                role: set.role,
                count: set.count,
                fields,
                keywords,
                matcher,
            });
        }
        let summary = spec
            .summary
            .as_ref()
            .map(|s| {
                let parse = |field: &String| {
                    FieldPath::parse(field).ok_or_else(|| KeywordsError::BadSummaryField {
                        field: field.clone(),
                    })
                };
                Ok::<_, KeywordsError>(CompiledSummary {
                    input: parse(&s.input_field)?,
                    output: parse(&s.output_field)?,
                    max_chars: usize::try_from(s.max_chars).unwrap_or(usize::MAX),
                })
            })
            .transpose()?;
        Ok(Self {
            sets,
            summary,
            fingerprint: None,
        })
    }

    /// Matches the document, filters it, writes its hits and summary into it, and returns the
    /// verdict and the counts. A dropped document is left unchanged.
    #[must_use = "a dropped document must not be indexed"]
    pub fn apply(&self, doc: &mut Document) -> Verdict {
        // Filters first: a dropped document costs no counting and is not modified.
        let mut found: Vec<(&CompiledSet, Vec<(u32, u64)>)> = Vec::new();
        let mut scratch = Vec::new();
        for set in &self.sets {
            match set.role {
                KeywordRole::Blacklist if set.any_hit(doc) => return Verdict::dropped(&set.name),
                KeywordRole::Whitelist => {
                    let hits = set.tally(doc, &mut scratch);
                    if hits.is_empty() {
                        return Verdict::dropped(&set.name);
                    }
                    found.push((set, hits));
                }
                KeywordRole::Blacklist | KeywordRole::Count => {}
            }
        }
        for set in self.sets.iter().filter(|s| s.role == KeywordRole::Count) {
            let hits = set.tally(doc, &mut scratch);
            if !hits.is_empty() {
                found.push((set, hits));
            }
        }

        let mut counts = Vec::new();
        if !found.is_empty()
            && let Some(out) = object_entry(doc, HITS_FIELD)
        {
            for (set, hits) in found {
                let mut per_keyword: Vec<(&String, u64)> = Vec::with_capacity(hits.len());
                for (id, n) in hits {
                    let Some(keyword) = set.keywords.get(id as usize) else {
                        continue;
                    };
                    if set.count {
                        counts.push((format!("{}:{keyword}", set.name), n));
                    }
                    per_keyword.push((keyword, n));
                }
                out.insert(set.name.clone(), hits_value(per_keyword));
            }
        }

        if let Some(summary) = &self.summary
            && let Some(text) = summary.input.get_str(doc)
        {
            let cut = summarize(text, summary.max_chars).to_owned();
            summary.output.insert(doc, Value::String(cut));
        }
        Verdict {
            dropped_by: None,
            counts,
        }
    }

    /// Number of keywords over all sets (after removing duplicates).
    #[must_use]
    pub fn keyword_count(&self) -> usize {
        self.sets.iter().map(|s| s.keywords.len()).sum()
    }

    /// Heap bytes held by the automata.
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        self.sets.iter().map(|s| s.matcher.heap_bytes()).sum()
    }

    pub(crate) fn fingerprint(&self) -> Option<u64> {
        self.fingerprint
    }
}

impl Verdict {
    fn dropped(set: &str) -> Self {
        Self {
            dropped_by: Some(set.to_owned()),
            counts: Vec::new(),
        }
    }
}

impl CompiledSet {
    /// Whether any field has a hit (stops at the first).
    fn any_hit(&self, doc: &Document) -> bool {
        self.fields.iter().any(|field| {
            field
                .for_each_str(doc, &mut |text| {
                    self.matcher.for_each(text, |_| ControlFlow::Break(()))
                })
                .is_break()
        })
    }

    /// Hits per keyword over every field, in keyword order. `scratch` is reused between sets.
    fn tally(&self, doc: &Document, scratch: &mut Vec<u32>) -> Vec<(u32, u64)> {
        scratch.clear();
        for field in &self.fields {
            let _ = field.for_each_str(doc, &mut |text| {
                self.matcher.for_each(text, |hit| {
                    scratch.push(hit.keyword);
                    ControlFlow::Continue(())
                })
            });
        }
        scratch.sort_unstable();
        let mut hits: Vec<(u32, u64)> = Vec::new();
        for &id in scratch.iter() {
            match hits.last_mut() {
                Some((last, n)) if *last == id => *n += 1,
                _ => hits.push((id, 1)),
            }
        }
        hits
    }
}

/// The hits of one set as stored in the document: `[{"keyword": k, "count": n}, ...]`, most
/// hits first and then by keyword (byte order), so the same text always gives the same array.
///
/// An array of two-field objects keeps the index mapping at two fields per set however many
/// distinct keywords hit; an object keyed by keyword would add a mapped field per keyword and
/// soon pass the index's field limit (1,000 by default).
fn hits_value(mut hits: Vec<(&String, u64)>) -> Value {
    hits.sort_unstable_by(|(ka, na), (kb, nb)| nb.cmp(na).then_with(|| ka.cmp(kb)));
    Value::Array(
        hits.into_iter()
            .map(|(keyword, n)| {
                let mut entry = Map::with_capacity(2);
                entry.insert(HIT_KEYWORD.to_owned(), Value::String(keyword.clone()));
                entry.insert(HIT_COUNT.to_owned(), Value::from(n));
                Value::Object(entry)
            })
            .collect(),
    )
}

/// Trimmed, non-empty keywords without repeats (compared ASCII-case-insensitively when the set
/// is), first spelling kept.
fn distinct(list: &[String], case_insensitive: bool) -> Vec<String> {
    let mut seen = HashSet::new();
    list.iter()
        .map(|k| k.trim())
        .filter(|k| !k.is_empty())
        .filter(|k| {
            seen.insert(if case_insensitive {
                k.to_ascii_lowercase()
            } else {
                (*k).to_owned()
            })
        })
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests;
