//! One compiled keyword automaton and the two engines behind it.
//!
//! Exact matching uses `daachorse`'s character-wise double-array Aho-Corasick: on Chinese text
//! it takes one transition per character instead of one per byte, and measured 2.5 to 3 times
//! the speed of `aho-corasick` with 10,000 Chinese keywords (see `benches/keywords.rs`).
//! `aho-corasick` is used where daachorse has no support: ASCII case-insensitive matching and
//! whole-word matching (which needs every overlapping match, see [`Matcher::for_each`]). Both
//! give leftmost-longest matches, so the engine never changes which keywords are found.

use std::cmp::Reverse;
use std::fmt;
use std::ops::ControlFlow;

use aho_corasick::{AhoCorasick, AhoCorasickKind};
use daachorse::{CharwiseDoubleArrayAhoCorasick, CharwiseDoubleArrayAhoCorasickBuilder};

/// Which automaton implementation a keyword set is compiled into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Engine {
    /// `daachorse` character-wise double-array Aho-Corasick (exact matching only).
    Daachorse,
    /// `aho-corasick` DFA: the fastest `aho-corasick` variant, and the largest.
    AhoCorasickDfa,
    /// `aho-corasick` contiguous NFA: slower than the DFA, several times smaller.
    AhoCorasickNfa,
}

impl Engine {
    /// The engine a set with these options is compiled with.
    ///
    /// daachorse for exact matching; the `aho-corasick` contiguous NFA where case folding or
    /// whole words are asked for (daachorse has neither). With 10,000 Chinese keywords the DFA
    /// was no faster than the NFA on Chinese text and took about 30 times the memory (18 MB
    /// against 0.6 MB), so the NFA is used.
    #[must_use]
    pub const fn for_options(case_insensitive: bool, whole_words: bool) -> Engine {
        if case_insensitive || whole_words {
            Engine::AhoCorasickNfa
        } else {
            Engine::Daachorse
        }
    }

    /// Short name for logs and benchmark output.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Engine::Daachorse => "daachorse-charwise",
            Engine::AhoCorasickDfa => "aho-corasick-dfa",
            Engine::AhoCorasickNfa => "aho-corasick-nfa",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an automaton could not be built.
#[derive(Debug, thiserror::Error)]
pub enum MatcherError {
    /// daachorse matches exactly; the options need `aho-corasick`.
    #[error("engine {engine} cannot match case-insensitively or by whole words")]
    Unsupported {
        /// The engine asked for.
        engine: Engine,
    },
    /// More keywords than a `u32` pattern id can name.
    #[error("{count} keywords are more than one automaton can hold")]
    TooMany {
        /// Number of keywords given.
        count: usize,
    },
    /// A keyword is the empty string.
    #[error("keyword {index} is empty")]
    EmptyKeyword {
        /// Position of the keyword in the list.
        index: usize,
    },
    /// `aho-corasick` refused the patterns.
    #[error("aho-corasick could not build the automaton")]
    AhoCorasick(#[from] aho_corasick::BuildError),
    /// daachorse refused the patterns (its error type implements only `Display`).
    #[error("daachorse could not build the automaton: {message}")]
    Daachorse {
        /// daachorse's description.
        message: String,
    },
}

/// One match: byte offsets into the text and the index of the keyword in the list the matcher
/// was built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hit {
    /// Byte offset of the first byte of the match.
    pub start: usize,
    /// Byte offset just past the match.
    pub end: usize,
    /// Index of the keyword in the list given to [`Matcher::build`].
    pub keyword: u32,
}

/// A compiled keyword automaton with leftmost-longest semantics.
///
/// Built once per keyword set and shared read-only (it is `Send + Sync`); searching allocates
/// nothing except for whole-word sets, which collect candidate matches of one text.
pub struct Matcher {
    inner: Inner,
    whole_words: bool,
}

enum Inner {
    /// No keywords: daachorse refuses an empty pattern list, and nothing can match anyway.
    Empty,
    Daachorse(CharwiseDoubleArrayAhoCorasick<u32>),
    AhoCorasick(AhoCorasick),
}

impl fmt::Debug for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Matcher")
            .field("engine", &self.engine())
            .field("whole_words", &self.whole_words)
            .field("heap_bytes", &self.heap_bytes())
            .finish()
    }
}

impl Matcher {
    /// Compiles `keywords` (non-empty, without duplicates) with `engine`.
    ///
    /// With `whole_words`, a match whose first (last) character is an ASCII letter or digit does
    /// not count when an ASCII letter or digit comes right before (after) it, so `cat` is not
    /// found in `concat` while `手机` is still found in `iPhone手机`; among the matches that
    /// count, the leftmost-longest non-overlapping ones are reported.
    /// With `case_insensitive`, ASCII letters match either case; other characters match
    /// exactly.
    ///
    /// # Errors
    /// [`MatcherError::Unsupported`] for daachorse with either option, [`MatcherError::EmptyKeyword`]
    /// for an empty keyword, [`MatcherError::TooMany`] past `u32::MAX` keywords, and the engine's
    /// own refusal otherwise.
    pub fn build<S: AsRef<str>>(
        engine: Engine,
        keywords: &[S],
        case_insensitive: bool,
        whole_words: bool,
    ) -> Result<Self, MatcherError> {
        if u32::try_from(keywords.len()).is_err() {
            return Err(MatcherError::TooMany {
                count: keywords.len(),
            });
        }
        if let Some(index) = keywords.iter().position(|k| k.as_ref().is_empty()) {
            return Err(MatcherError::EmptyKeyword { index });
        }
        if keywords.is_empty() {
            return Ok(Self {
                inner: Inner::Empty,
                whole_words,
            });
        }
        let inner = match engine {
            Engine::Daachorse if case_insensitive || whole_words => {
                return Err(MatcherError::Unsupported { engine });
            }
            Engine::Daachorse => Inner::Daachorse(
                CharwiseDoubleArrayAhoCorasickBuilder::new()
                    .match_kind(daachorse::MatchKind::LeftmostLongest)
                    .build::<_, _, u32>(keywords.iter().map(AsRef::as_ref))
                    .map_err(|e| MatcherError::Daachorse {
                        message: e.to_string(),
                    })?,
            ),
            Engine::AhoCorasickDfa | Engine::AhoCorasickNfa => {
                let kind = if engine == Engine::AhoCorasickDfa {
                    AhoCorasickKind::DFA
                } else {
                    AhoCorasickKind::ContiguousNFA
                };
                // Whole-word matching filters matches after the fact, so it needs all of them
                // (overlapping iteration, which only the standard match kind offers); the
                // leftmost-longest choice is then made among the matches that pass.
                let match_kind = if whole_words {
                    aho_corasick::MatchKind::Standard
                } else {
                    aho_corasick::MatchKind::LeftmostLongest
                };
                Inner::AhoCorasick(
                    AhoCorasick::builder()
                        .match_kind(match_kind)
                        .kind(Some(kind))
                        .ascii_case_insensitive(case_insensitive)
                        .build(keywords.iter().map(AsRef::as_ref))?,
                )
            }
        };
        Ok(Self { inner, whole_words })
    }

    /// The engine in use (`None` for a matcher without keywords).
    #[must_use]
    pub fn engine(&self) -> Option<Engine> {
        match &self.inner {
            Inner::Empty => None,
            Inner::Daachorse(_) => Some(Engine::Daachorse),
            Inner::AhoCorasick(ac) => Some(match ac.kind() {
                AhoCorasickKind::DFA => Engine::AhoCorasickDfa,
                _ => Engine::AhoCorasickNfa,
            }),
        }
    }

    /// Heap bytes held by the automaton.
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        match &self.inner {
            Inner::Empty => 0,
            Inner::Daachorse(pma) => pma.heap_bytes(),
            Inner::AhoCorasick(ac) => ac.memory_usage(),
        }
    }

    /// Calls `f` for every leftmost-longest, non-overlapping match in `text`, left to right,
    /// until `f` breaks.
    pub fn for_each<F>(&self, text: &str, mut f: F) -> ControlFlow<()>
    where
        F: FnMut(Hit) -> ControlFlow<()>,
    {
        match &self.inner {
            Inner::Empty => ControlFlow::Continue(()),
            Inner::Daachorse(pma) => {
                for m in pma.leftmost_find_iter(text) {
                    f(Hit {
                        start: m.start(),
                        end: m.end(),
                        keyword: m.value(),
                    })?;
                }
                ControlFlow::Continue(())
            }
            Inner::AhoCorasick(ac) if self.whole_words => whole_word_matches(ac, text, f),
            Inner::AhoCorasick(ac) => {
                for m in ac.find_iter(text) {
                    f(Hit {
                        start: m.start(),
                        end: m.end(),
                        keyword: m.pattern().as_u32(),
                    })?;
                }
                ControlFlow::Continue(())
            }
        }
    }

    /// Every match of [`Matcher::for_each`], collected.
    #[must_use]
    pub fn find_all(&self, text: &str) -> Vec<Hit> {
        let mut hits = Vec::new();
        let _ = self.for_each(text, |hit| {
            hits.push(hit);
            ControlFlow::Continue(())
        });
        hits
    }
}

/// Leftmost-longest among the overlapping matches that are whole words.
fn whole_word_matches<F>(ac: &AhoCorasick, text: &str, mut f: F) -> ControlFlow<()>
where
    F: FnMut(Hit) -> ControlFlow<()>,
{
    let bytes = text.as_bytes();
    let is_word_byte = |i: Option<usize>| {
        i.and_then(|i| bytes.get(i))
            .is_some_and(u8::is_ascii_alphanumeric)
    };
    // A boundary is needed only where the keyword's own edge is an ASCII letter or digit:
    // "cat" must not match inside "concat", but "手机" still matches in "iPhone手机".
    let whole = |start: usize, end: usize| {
        let (before, first, last, after) = (
            start.checked_sub(1),
            Some(start),
            end.checked_sub(1),
            Some(end),
        );
        let glued = |edge, neighbour| is_word_byte(edge) && is_word_byte(neighbour);
        !(glued(first, before) || glued(last, after))
    };
    let mut candidates: Vec<Hit> = ac
        .find_overlapping_iter(text)
        .filter(|m| whole(m.start(), m.end()))
        .map(|m| Hit {
            start: m.start(),
            end: m.end(),
            keyword: m.pattern().as_u32(),
        })
        .collect();
    candidates.sort_unstable_by_key(|h| (h.start, Reverse(h.end), h.keyword));
    let mut taken_to = 0;
    for hit in candidates {
        if hit.start >= taken_to {
            taken_to = hit.end;
            f(hit)?;
        }
    }
    ControlFlow::Continue(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(m: &Matcher, keywords: &[&str], text: &str) -> Vec<String> {
        m.find_all(text)
            .iter()
            .map(|h| keywords[h.keyword as usize].to_owned())
            .collect()
    }

    /// Leftmost-longest is the contract whatever the engine: the longest keyword at the
    /// leftmost position wins, and matching resumes after it.
    #[test]
    fn every_engine_reports_leftmost_longest_matches() {
        let keywords = ["中国", "中国人", "国人", "人民", "民"];
        let cases: &[(&str, &[&str])] = &[
            ("中国人民", &["中国人", "民"]),
            ("我是中国的", &["中国"]),
            ("外国人", &["国人"]),
            ("人民", &["人民"]),
            ("", &[]),
        ];
        for engine in [
            Engine::Daachorse,
            Engine::AhoCorasickDfa,
            Engine::AhoCorasickNfa,
        ] {
            let m = Matcher::build(engine, &keywords, false, false).unwrap();
            assert_eq!(m.engine(), Some(engine));
            for (text, want) in cases {
                assert_eq!(texts(&m, &keywords, text), *want, "{engine} on {text:?}");
            }
        }
    }

    /// Whole words: a match inside an ASCII word is skipped, and a shorter keyword that is a
    /// whole word is found where the longest one is not.
    #[test]
    fn whole_word_matching_skips_matches_inside_ascii_words() {
        let keywords = ["cat", "cat-dog", "dog", "中文"];
        let cases: &[(&str, &[&str])] = &[
            ("cat", &["cat"]),
            ("concat dogs", &[]),
            ("a cat-dog.", &["cat-dog"]),
            ("cat-dogs", &["cat"]),
            ("中文cat中文", &["中文", "cat", "中文"]),
            ("x中文1", &["中文"]),
            ("x中文cat", &["中文", "cat"]),
            ("cat9", &[]),
        ];
        for engine in [Engine::AhoCorasickDfa, Engine::AhoCorasickNfa] {
            let m = Matcher::build(engine, &keywords, false, true).unwrap();
            for (text, want) in cases {
                assert_eq!(texts(&m, &keywords, text), *want, "{engine} on {text:?}");
            }
        }
    }

    #[test]
    fn daachorse_refuses_options_it_cannot_honour() {
        let err = Matcher::build(Engine::Daachorse, &["a"], true, false).unwrap_err();
        assert!(matches!(
            err,
            MatcherError::Unsupported {
                engine: Engine::Daachorse
            }
        ));
        assert!(Matcher::build(Engine::Daachorse, &["a"], false, true).is_err());
    }

    #[test]
    fn an_empty_keyword_is_refused_and_no_keywords_match_nothing() {
        let err = Matcher::build(Engine::Daachorse, &["a", ""], false, false).unwrap_err();
        assert!(matches!(err, MatcherError::EmptyKeyword { index: 1 }));
        let none: [&str; 0] = [];
        let m = Matcher::build(Engine::Daachorse, &none, false, false).unwrap();
        assert_eq!(m.engine(), None);
        assert!(m.find_all("anything").is_empty());
    }

    #[test]
    fn for_each_stops_when_the_callback_breaks() {
        let m = Matcher::build(Engine::Daachorse, &["a"], false, false).unwrap();
        let mut seen = 0;
        let flow = m.for_each("aaaa", |_| {
            seen += 1;
            ControlFlow::Break(())
        });
        assert_eq!(flow, ControlFlow::Break(()));
        assert_eq!(seen, 1);
    }
}
