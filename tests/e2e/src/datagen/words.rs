//! The word list, a seeded random generator and weighted sampling.
//!
//! The words are real: `data/words.txt` holds the 30,000 most frequent entries of jieba's
//! dictionary made only of CJK ideographs, 1-4 characters, with their frequencies. It is a
//! committed extract (see `data/extract_words.py`) because jieba-rs keeps its dictionary text
//! private; a test checks that every word is in jieba-rs's built-in dictionary.

use std::sync::LazyLock;

/// The committed word list: `word freq` lines, `#` comments.
const WORDS_TXT: &str = include_str!("../../data/words.txt");

/// One word of the list.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Word {
    pub(crate) text: &'static str,
    pub(crate) freq: u64,
    pub(crate) chars: usize,
}

/// Every word of `data/words.txt`, most frequent first.
pub(crate) static WORDS: LazyLock<Vec<Word>> = LazyLock::new(|| {
    WORDS_TXT
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (text, freq) = l.split_once(' ')?;
            Some(Word {
                text,
                freq: freq.trim().parse().ok()?,
                chars: text.chars().count(),
            })
        })
        .collect()
});

/// SplitMix64: tiny, fast, and its output for a seed never changes with a crate upgrade (the
/// `rand` crate does not promise that for its standard generators), so a seed names one data
/// set forever.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    #[cfg(test)]
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// An independent generator for item `index` of stream `stream` under `seed`, so items can
    /// be generated in any order (or in parallel) with the same result.
    pub(crate) fn derive(seed: u64, stream: u64, index: u64) -> Self {
        let mut r = Self(seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F));
        let a = r.next_u64();
        Self(a ^ index.wrapping_mul(0xE703_7ED1_A0B4_28DB))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// An index into `n` items (`usize`).
    pub(crate) fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// Shuffles `items` in place (Fisher-Yates).
    pub(crate) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.index(i + 1);
            items.swap(i, j);
        }
    }
}

/// Walker's alias table: draws index `i` with probability `weights[i] / sum`, in O(1).
#[derive(Debug, Clone)]
pub(crate) struct Alias {
    prob: Vec<f64>,
    alias: Vec<usize>,
}

impl Alias {
    pub(crate) fn new(weights: &[f64]) -> Self {
        let n = weights.len();
        let sum: f64 = weights.iter().sum();
        let mut prob: Vec<f64> = weights.iter().map(|w| w * n as f64 / sum).collect();
        let mut alias = vec![0; n];
        let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| prob[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            alias[s] = l;
            prob[l] -= 1.0 - prob[s];
            if prob[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // What is left is 1.0 up to rounding.
        for i in small.into_iter().chain(large) {
            prob[i] = 1.0;
        }
        Self { prob, alias }
    }

    pub(crate) fn sample(&self, rng: &mut Rng) -> usize {
        let i = rng.index(self.prob.len());
        if rng.unit() < self.prob[i] {
            i
        } else {
            self.alias[i]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_word_list_has_thirty_thousand_cjk_words_of_one_to_four_characters() {
        assert_eq!(WORDS.len(), 30_000);
        assert!(
            WORDS
                .iter()
                .all(|w| (1..=4).contains(&w.chars) && w.freq > 0)
        );
        assert!(WORDS.iter().all(|w| {
            w.text
                .chars()
                .all(|c| ('\u{4e00}'..='\u{9fff}').contains(&c))
        }));
        assert_eq!(WORDS[0].text, "了");
    }

    #[test]
    fn every_listed_word_is_in_jiebas_built_in_dictionary() {
        let jieba = jieba_rs::Jieba::new();
        let missing: Vec<&str> = WORDS
            .iter()
            .map(|w| w.text)
            .filter(|w| !jieba.has_word(w))
            .collect();
        assert!(
            missing.is_empty(),
            "not in jieba's dictionary: {:?}",
            &missing[..missing.len().min(20)]
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_numbers_and_another_seed_does_not() {
        let a: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::derive(7, 1, 3);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::derive(7, 1, 3);
                move |_| r.next_u64()
            })
            .collect();
        let c: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::derive(8, 1, 3);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn the_alias_table_draws_in_proportion_to_the_weights() {
        let alias = Alias::new(&[1.0, 3.0, 0.0, 6.0]);
        let mut rng = Rng::new(1);
        let mut seen = [0u32; 4];
        for _ in 0..100_000 {
            seen[alias.sample(&mut rng)] += 1;
        }
        assert_eq!(seen[2], 0, "a zero weight is never drawn");
        for (i, expected) in [(0, 10_000.0), (1, 30_000.0), (3, 60_000.0)] {
            let got = f64::from(seen[i]);
            assert!(
                (got - expected).abs() < expected * 0.05,
                "index {i}: {got} vs {expected}"
            );
        }
    }
}
