//! The independent oracle's matcher: leftmost-longest, non-overlapping, written the naive way.
//!
//! At each character position it takes the longest keyword starting there, records it and
//! jumps past it; else it advances one character. No automaton: it is deliberately a different
//! algorithm from the worker's, so a test compares the worker against an independent oracle.
//! It is made fast enough for 100,000 articles in a debug build by cheap means only: a bitmap
//! of the one-character keywords, a Bloom-like bitmap of the first two characters of the longer
//! ones (most positions are passed over after one lookup in it), and hash maps keyed by up to
//! five characters packed into a `u128`, with a simple multiplicative hash.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Characters packed into one `u128` key (21 bits each).
const PACKED_MAX: usize = 5;
/// Bits of the one-character bitmap (every Unicode scalar value).
const CHAR_SPACE: usize = 0x11_0000;
/// log2 of the bits of the first-two-characters filter (4 Mi bits, 512 KiB).
const PAIR_BITS: u32 = 22;

/// Slot of a pair of characters in the first-two-characters filter.
fn pair_slot(a: char, b: char) -> usize {
    let h = u64::from(u32::from(a)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ u64::from(u32::from(b)).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    (h >> (64 - PAIR_BITS)) as usize
}

fn bit(bits: &[u64], i: usize) -> bool {
    bits[i / 64] & (1 << (i % 64)) != 0
}

fn set_bit(bits: &mut [u64], i: usize) {
    bits[i / 64] |= 1 << (i % 64);
}

/// A multiplicative hash (FxHash's mixing step): far cheaper than SipHash, plenty for keys
/// that are not chosen by an adversary.
#[derive(Default, Clone, Copy)]
struct Fx(u64);

impl Fx {
    fn add(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x517C_C1B7_2722_0A95);
    }
}

impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.add(u64::from(b));
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
    fn write_u128(&mut self, n: u128) {
        self.add(n as u64);
        self.add((n >> 64) as u64);
    }
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;

/// The keywords of one length.
#[derive(Debug, Clone)]
enum ByLength {
    /// Up to [`PACKED_MAX`] characters, packed into a `u128`.
    Packed(FxMap<u128, u32>),
    /// Longer keywords.
    Long(FxMap<Vec<char>, u32>),
}

fn pack(chars: &[char]) -> u128 {
    chars
        .iter()
        .fold(0u128, |acc, &c| (acc << 21) | u128::from(u32::from(c)))
}

/// A set of keywords matched leftmost-longest without overlaps, by brute force.
///
/// ```
/// use migrate_e2e::datagen::NaiveMatcher;
/// let m = NaiveMatcher::new(["中国", "中国人", "人民"]);
/// // At 中 the longest keyword is 中国人; matching resumes after it, at 民.
/// assert_eq!(m.find_all("中国人民"), vec!["中国人"]);
/// ```
#[derive(Debug, Clone)]
pub struct NaiveMatcher {
    /// Distinct keywords; a match is reported by its index here.
    keywords: Vec<String>,
    /// Keywords of two characters or more by length in characters, longest first.
    lengths: Vec<(usize, ByLength)>,
    /// Bit `pair_slot(a, b)` is set when some keyword of two characters or more starts with
    /// `ab` (false positives are possible, false negatives not).
    pairs: Vec<u64>,
    /// Keyword index of each one-character keyword.
    singles: FxMap<char, u32>,
    /// Bit `c` is set when `c` is a one-character keyword.
    single_bits: Vec<u64>,
}

impl NaiveMatcher {
    /// A matcher for `keywords` (each trimmed; empty ones and repeats are ignored).
    pub fn new<I, S>(keywords: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut distinct: Vec<String> = Vec::new();
        let mut lengths: Vec<(usize, ByLength)> = Vec::new();
        let mut pairs = vec![0u64; (1 << PAIR_BITS) / 64];
        let mut singles: FxMap<char, u32> = FxMap::default();
        let mut single_bits = vec![0u64; CHAR_SPACE / 64];
        for keyword in keywords {
            let keyword = keyword.as_ref().trim();
            let chars: Vec<char> = keyword.chars().collect();
            let len = chars.len();
            let index = distinct.len() as u32;
            let inserted = match chars[..] {
                [] => false,
                [c] => {
                    set_bit(&mut single_bits, u32::from(c) as usize);
                    singles.try_insert_index(c, index)
                }
                [a, b, ..] => {
                    set_bit(&mut pairs, pair_slot(a, b));
                    let slot = match lengths.iter().position(|(l, _)| *l == len) {
                        Some(i) => i,
                        None => {
                            let map = if len <= PACKED_MAX {
                                ByLength::Packed(FxMap::default())
                            } else {
                                ByLength::Long(FxMap::default())
                            };
                            lengths.push((len, map));
                            lengths.len() - 1
                        }
                    };
                    match &mut lengths[slot].1 {
                        ByLength::Packed(m) => m.try_insert_index(pack(&chars), index),
                        ByLength::Long(m) => m.try_insert_index(chars, index),
                    }
                }
            };
            if inserted {
                distinct.push(keyword.to_owned());
            }
        }
        lengths.sort_unstable_by_key(|l| std::cmp::Reverse(l.0));
        Self {
            keywords: distinct,
            lengths,
            pairs,
            singles,
            single_bits,
        }
    }

    /// The distinct keywords; [`NaiveMatcher::count`] counts by their position here.
    #[must_use]
    pub fn keywords(&self) -> &[String] {
        &self.keywords
    }

    /// The keyword index of the longest keyword at the start of `chars`, and its length.
    fn longest_at(&self, chars: &[char]) -> Option<(u32, usize)> {
        let (&a, rest) = chars.split_first()?;
        if let Some(&b) = rest.first()
            && bit(&self.pairs, pair_slot(a, b))
        {
            for (len, map) in &self.lengths {
                let Some(window) = chars.get(..*len) else {
                    continue;
                };
                let found = match map {
                    ByLength::Packed(m) => m.get(&pack(window)),
                    ByLength::Long(m) => m.get(window),
                };
                if let Some(&i) = found {
                    return Some((i, *len));
                }
            }
        }
        if bit(&self.single_bits, u32::from(a) as usize) {
            return self.singles.get(&a).map(|&i| (i, 1));
        }
        None
    }

    /// Calls `hit(keyword_index, byte_start, byte_end)` for every match, left to right.
    fn scan(&self, text: &str, mut hit: impl FnMut(u32, usize, usize)) {
        let chars: Vec<char> = text.chars().collect();
        let mut byte = 0;
        let mut i = 0;
        while i < chars.len() {
            match self.longest_at(&chars[i..]) {
                Some((index, len)) => {
                    let end = byte
                        + chars[i..i + len]
                            .iter()
                            .map(|c| c.len_utf8())
                            .sum::<usize>();
                    hit(index, byte, end);
                    byte = end;
                    i += len;
                }
                None => {
                    byte += chars[i].len_utf8();
                    i += 1;
                }
            }
        }
    }

    /// Calls `hit` with every match of `text`, left to right.
    pub fn for_each_match<'t>(&self, text: &'t str, mut hit: impl FnMut(&'t str)) {
        self.scan(text, |_, start, end| hit(&text[start..end]));
    }

    /// Every match of `text`, left to right.
    #[must_use]
    pub fn find_all<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let mut out = Vec::new();
        self.for_each_match(text, |m| out.push(m));
        out
    }

    /// Whether any keyword occurs in `text`.
    #[must_use]
    pub fn is_match(&self, text: &str) -> bool {
        // Any occurrence shows up as a match (or is covered by an earlier one, itself a match),
        // so looking for a keyword at each position answers it.
        let chars: Vec<char> = text.chars().collect();
        (0..chars.len()).any(|i| self.longest_at(&chars[i..]).is_some())
    }

    /// Adds one to `counts[i]` for every match of keyword `i` (of [`NaiveMatcher::keywords`])
    /// in `text`. `counts` must have one slot per keyword.
    pub fn count(&self, text: &str, counts: &mut [u64]) {
        self.scan(text, |i, _, _| {
            if let Some(c) = counts.get_mut(i as usize) {
                *c += 1;
            }
        });
    }

    /// Adds one to `counts[prefix + keyword]` for every match of `text`.
    pub fn count_into(&self, text: &str, prefix: &str, counts: &mut HashMap<String, u64>) {
        self.scan(text, |i, _, _| {
            *counts
                .entry(format!("{prefix}{}", self.keywords[i as usize]))
                .or_insert(0) += 1;
        });
    }
}

/// Inserting without replacing: true when the key was new.
trait TryInsertIndex<K> {
    fn try_insert_index(&mut self, key: K, index: u32) -> bool;
}

impl<K: std::hash::Hash + Eq> TryInsertIndex<K> for FxMap<K, u32> {
    fn try_insert_index(&mut self, key: K, index: u32) -> bool {
        match self.entry(key) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(index);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Table-driven: (keywords, text, expected matches in order).
    #[test]
    fn matches_are_leftmost_longest_and_never_overlap() {
        let cases: &[(&[&str], &str, &[&str])] = &[
            (&["中国", "中国人", "人民"], "中国人民", &["中国人"]),
            (&["中国", "人民"], "中国人民", &["中国", "人民"]),
            (&["国人", "中国"], "中国人", &["中国"]),
            (&["北京", "京城"], "北京城", &["北京"]),
            (&["北京", "京城"], "在京城北京", &["京城", "北京"]),
            (&["aa"], "aaaaa", &["aa", "aa"]),
            (
                &["经济", "经济发展", "发展"],
                "经济发展与经济",
                &["经济发展", "经济"],
            ),
            (&["了"], "了了，了", &["了", "了", "了"]),
            (
                &["中华人民共和国", "中华", "人民"],
                "中华人民共和国成立",
                &["中华人民共和国"],
            ),
            (
                &["中华人民共和国", "中华", "人民"],
                "中华人民共和",
                &["中华", "人民"],
            ),
            (&["é", "ab"], "aébab", &["é", "ab"]),
            (&["新闻"], "", &[]),
            (&["新闻"], "没有关键词", &[]),
            (&["", "  "], "空的关键词不算", &[]),
        ];
        for (keywords, text, expected) in cases {
            let m = NaiveMatcher::new(keywords.iter());
            assert_eq!(
                m.find_all(text),
                *expected,
                "keywords {keywords:?} in {text:?}"
            );
        }
    }

    #[test]
    fn is_match_agrees_with_finding_any_match() {
        let m = NaiveMatcher::new(["赌博", "诈骗团伙"]);
        assert!(m.is_match("警方破获一个诈骗团伙。"));
        assert!(m.is_match("赌博"));
        assert!(!m.is_match("诈骗团"));
        assert!(!m.is_match(""));
    }

    #[test]
    fn counts_are_summed_per_prefixed_keyword() {
        let m = NaiveMatcher::new(["经济", "发展"]);
        let mut counts = HashMap::new();
        m.count_into("经济发展，经济。", "topics:", &mut counts);
        m.count_into("发展", "topics:", &mut counts);
        assert_eq!(counts.get("topics:经济"), Some(&2));
        assert_eq!(counts.get("topics:发展"), Some(&2));
        assert_eq!(counts.len(), 2);
    }

    #[test]
    fn counts_by_index_follow_the_distinct_keywords() {
        let m = NaiveMatcher::new(["经济", "发展", "经济", " "]);
        assert_eq!(
            m.keywords(),
            ["经济", "发展"],
            "repeats and blanks are dropped"
        );
        let mut counts = vec![0; 2];
        m.count("经济发展，经济。", &mut counts);
        assert_eq!(counts, [2, 1]);
    }
}
