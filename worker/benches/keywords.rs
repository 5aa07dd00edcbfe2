//! Keyword matching speed: `daachorse` against `aho-corasick`, and whole documents through
//! `Keywords::apply`, on generated Chinese articles with 10,000 keywords.
//!
//! Run with `cargo bench -p migrate-worker --bench keywords` (release profile). Prints build
//! time, automaton memory and single-thread throughput (MB/s of UTF-8 text per core); nothing
//! is asserted except that the engines agree.
//!
//! Where the words come from: jieba-rs's built-in dictionary (349k words with corpus
//! frequencies). It has no public way to list its words, so they are recovered through its
//! public `has_word` and `suggest_freq`: the dictionary's single characters are ranked by
//! frequency; every pair of the 3,500 most frequent characters is looked up (2-character
//! words); 3-character words are the 40,000 most frequent 2-character words plus one common
//! character, 4-character words the 20,000 most frequent 3-character words plus one, or two of
//! the 3,000 most frequent 2-character words joined. Every word used is a real dictionary word
//! with its real frequency; words with rare characters, and longer words without a frequent
//! word as their prefix, are missed.
//!
//! Text: articles of 1,200-1,800 characters drawn word by word from that vocabulary weighted by
//! frequency (a unigram model), in clauses and sentences with Chinese punctuation, quotes,
//! paragraphs, numbers and a few Latin tokens. It reads as word salad but has the character
//! and word statistics of Chinese text, which is what an automaton's speed depends on.
//!
//! Keyword lists: "sampled" is 10,000 words of 2-4 characters drawn uniformly from the
//! vocabulary (mostly uncommon words: few hits); "frequent" is the 10,000 most frequent ones
//! (many hits: the worst case for the per-hit work).

use std::collections::HashMap;
use std::error::Error;
use std::hint::black_box;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use jieba_rs::Jieba;
use migrate_crds::KeywordsSpec;
use migrate_worker::keywords::{Engine, Keywords, Matcher};
use migrate_worker::task::Document;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const TEXT_BYTES: usize = 50 * 1024 * 1024;
const KEYWORDS: usize = 10_000;
const COMMON_CHARS: usize = 3_500;
const ROUNDS: usize = 5;
const MB: f64 = 1024.0 * 1024.0;

type BenchResult<T> = Result<T, Box<dyn Error>>;

struct Word {
    text: String,
    freq: u64,
}

fn main() -> BenchResult<()> {
    let started = Instant::now();
    let jieba = Jieba::new();
    let vocabulary = vocabulary(&jieba);
    let by_len = |n: usize| {
        vocabulary
            .iter()
            .filter(|w| w.text.chars().count() == n)
            .count()
    };
    println!(
        "vocabulary: {} words from the jieba dictionary ({} of 1, {} of 2, {} of 3, {} of 4 chars) in {:.1} s",
        vocabulary.len(),
        by_len(1),
        by_len(2),
        by_len(3),
        by_len(4),
        started.elapsed().as_secs_f64()
    );

    let mut rng = StdRng::seed_from_u64(20_261_101);
    let started = Instant::now();
    let articles = articles(&vocabulary, &mut rng);
    let bytes: usize = articles.iter().map(|a| a.body.len()).sum();
    let chars: usize = articles.iter().map(|a| a.body.chars().count()).sum();
    println!(
        "text: {} articles, {:.1} MB, {} chars ({:.0} chars/article, {:.2} bytes/char) in {:.1} s",
        articles.len(),
        bytes as f64 / MB,
        chars,
        chars as f64 / articles.len() as f64,
        bytes as f64 / chars as f64,
        started.elapsed().as_secs_f64()
    );
    if let Some(first) = articles.first() {
        let sample: String = first.body.chars().take(120).collect();
        println!("sample: {} | {}", first.title, sample.replace('\n', "⏎"));
    }

    let candidates: Vec<&Word> = vocabulary
        .iter()
        .filter(|w| (2..=4).contains(&w.text.chars().count()))
        .collect();
    let mut sampled: Vec<String> = candidates.iter().map(|w| w.text.clone()).collect();
    sampled.shuffle(&mut rng);
    sampled.truncate(KEYWORDS);
    let mut by_freq = candidates.clone();
    by_freq.sort_by(|a, b| b.freq.cmp(&a.freq).then_with(|| a.text.cmp(&b.text)));
    let frequent: Vec<String> = by_freq
        .iter()
        .take(KEYWORDS)
        .map(|w| w.text.clone())
        .collect();

    for (name, keywords) in [("sampled", &sampled), ("frequent", &frequent)] {
        println!();
        println!(
            "== {} keywords: {name} ({}) ==",
            keywords.len(),
            length_mix(keywords)
        );
        engines(keywords, &articles)?;
        apply(keywords, &sampled, &articles)?;
    }
    Ok(())
}

/// Dictionary words recovered from jieba (see the crate docs above for how).
fn vocabulary(jieba: &Jieba) -> Vec<Word> {
    let freq = |w: &str| u64::try_from(jieba.suggest_freq(w)).unwrap_or(u64::MAX);
    let mut singles: Vec<(char, u64)> = ('\u{4e00}'..='\u{9fa5}')
        .filter(|c| jieba.has_word(c.encode_utf8(&mut [0; 4])))
        .map(|c| (c, freq(c.encode_utf8(&mut [0; 4]))))
        .collect();
    singles.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let common: Vec<char> = singles.iter().take(COMMON_CHARS).map(|(c, _)| *c).collect();

    let mut buf = String::with_capacity(16);
    let mut extend = |prefixes: &[String], out: &mut Vec<String>| {
        for prefix in prefixes {
            for &c in &common {
                buf.clear();
                buf.push_str(prefix);
                buf.push(c);
                if jieba.has_word(&buf) {
                    out.push(buf.clone());
                }
            }
        }
    };
    let one: Vec<String> = common.iter().map(char::to_string).collect();
    let mut two = Vec::new();
    extend(&one, &mut two);
    // Longer words are looked for after the most frequent prefixes only, to keep this step to
    // seconds (each extension is COMMON_CHARS lookups).
    let top_prefixes = |words: &[String], n: usize| -> Vec<String> {
        let mut ranked: Vec<(u64, &String)> = words.iter().map(|w| (freq(w), w)).collect();
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
        ranked.into_iter().take(n).map(|(_, w)| w.clone()).collect()
    };
    let mut three = Vec::new();
    extend(&top_prefixes(&two, 40_000), &mut three);
    let mut four = Vec::new();
    extend(&top_prefixes(&three, 20_000), &mut four);

    let mut two_ranked: Vec<(u64, &String)> = two.iter().map(|w| (freq(w), w)).collect();
    two_ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    let top: Vec<&String> = two_ranked.iter().take(3_000).map(|(_, w)| *w).collect();
    for a in &top {
        for b in &top {
            buf.clear();
            buf.push_str(a);
            buf.push_str(b);
            if jieba.has_word(&buf) {
                four.push(buf.clone());
            }
        }
    }
    four.sort();
    four.dedup();

    singles
        .into_iter()
        .map(|(c, f)| Word {
            text: c.to_string(),
            freq: f,
        })
        .chain(two.into_iter().chain(three).chain(four).map(|w| Word {
            freq: freq(&w),
            text: w,
        }))
        .collect()
}

/// Draws words with probability proportional to their dictionary frequency.
struct Unigram<'a> {
    words: &'a [Word],
    cumulative: Vec<u64>,
    total: u64,
}

impl<'a> Unigram<'a> {
    fn new(words: &'a [Word]) -> Self {
        let mut total = 0;
        let cumulative = words
            .iter()
            .map(|w| {
                total += w.freq.max(1);
                total
            })
            .collect();
        Self {
            words,
            cumulative,
            total,
        }
    }

    fn sample(&self, rng: &mut StdRng) -> &'a str {
        let x = rng.random_range(0..self.total.max(1));
        let i = self.cumulative.partition_point(|&c| c <= x);
        self.words.get(i).map_or("的", |w| w.text.as_str())
    }
}

struct Article {
    title: String,
    body: String,
}

/// Articles drawn from a unigram model of the vocabulary until `TEXT_BYTES` of bodies.
fn articles(vocabulary: &[Word], rng: &mut StdRng) -> Vec<Article> {
    let unigram = Unigram::new(vocabulary);
    let word = |rng: &mut StdRng| unigram.sample(rng);
    const LATIN: [&str; 8] = ["AI", "iPhone", "GDP", "5G", "CEO", "App", "NBA", "WiFi"];

    let mut out = Vec::new();
    let mut bytes = 0;
    while bytes < TEXT_BYTES {
        let target = rng.random_range(1_200..1_800);
        let mut body = String::with_capacity(target * 3 + 64);
        let mut chars = 0;
        while chars < target {
            for _ in 0..rng.random_range(3..7) {
                let quoted = rng.random_bool(0.05);
                if quoted {
                    body.push('“');
                }
                for clause in 0..rng.random_range(1..4) {
                    if clause > 0 {
                        body.push(if rng.random_bool(0.1) { '、' } else { '，' });
                    }
                    for _ in 0..rng.random_range(2..9) {
                        let roll = rng.random_range(0..100);
                        if roll < 3 {
                            body.push_str(&rng.random_range(1..3000).to_string());
                            body.push(if rng.random_bool(0.5) { '年' } else { '%' });
                        } else if roll < 4 {
                            body.push_str(LATIN[rng.random_range(0..LATIN.len())]);
                        } else {
                            body.push_str(word(rng));
                        }
                    }
                }
                body.push(match rng.random_range(0..100) {
                    0..80 => '。',
                    80..88 => '！',
                    88..96 => '？',
                    _ => '；',
                });
                if quoted {
                    body.push('”');
                }
            }
            body.push('\n');
            chars = body.chars().count();
        }
        let mut title = String::new();
        while title.chars().count() < rng.random_range(8..20) {
            title.push_str(word(rng));
        }
        bytes += body.len();
        out.push(Article { title, body });
    }
    out
}

fn length_mix(keywords: &[String]) -> String {
    let mut n = [0usize; 5];
    for k in keywords {
        n[k.chars().count().min(4)] += 1;
    }
    format!("{} of 2 chars, {} of 3, {} of 4", n[2], n[3], n[4])
}

/// CPU time this thread has run, from `/proc/thread-self/schedstat` (nanoseconds on the CPU).
/// The machine is shared, so wall time measures the neighbours too; CPU time is what one core
/// spends, which is what "MB/s per core" means. `None` where the file does not exist.
fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace()
        .next()?
        .parse()
        .ok()
        .map(Duration::from_nanos)
}

/// Wall and CPU time of one round.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Took {
    cpu: Duration,
    wall: Duration,
}

fn took<T>(f: impl FnOnce() -> T) -> (T, Took) {
    let (wall0, cpu0) = (Instant::now(), thread_cpu());
    let out = black_box(f());
    let wall = wall0.elapsed();
    let cpu = match (cpu0, thread_cpu()) {
        (Some(a), Some(b)) if b > a => b - a,
        _ => wall,
    };
    (out, Took { cpu, wall })
}

struct Run {
    /// Rounds sorted by CPU time.
    rounds: Vec<Took>,
    matches: u64,
    checksum: u64,
}

impl Run {
    fn best(&self) -> Took {
        self.rounds.first().copied().unwrap_or(Took {
            cpu: Duration::MAX,
            wall: Duration::MAX,
        })
    }
    fn median(&self) -> Took {
        self.rounds
            .get(self.rounds.len() / 2)
            .copied()
            .unwrap_or(Took {
                cpu: Duration::MAX,
                wall: Duration::MAX,
            })
    }
}

/// `ROUNDS` passes of `f` over the articles; `f` returns (matches, checksum) of one pass.
fn timed(mut f: impl FnMut() -> (u64, u64)) -> Run {
    let mut rounds = Vec::with_capacity(ROUNDS);
    let mut last = (0, 0);
    for _ in 0..ROUNDS {
        let (out, t) = took(&mut f);
        last = out;
        rounds.push(t);
    }
    rounds.sort();
    Run {
        rounds,
        matches: last.0,
        checksum: last.1,
    }
}

fn mb_per_s(bytes: usize, time: Duration) -> f64 {
    bytes as f64 / MB / time.as_secs_f64()
}

/// Each engine alone: build time, memory, throughput, and whether all agree.
fn engines(keywords: &[String], articles: &[Article]) -> BenchResult<()> {
    let bytes: usize = articles.iter().map(|a| a.body.len()).sum();
    println!(
        "MB/s per core = text bytes / CPU time of the thread (best and median of {ROUNDS}); wall = elapsed"
    );
    println!(
        "{:<24} {:>9} {:>9} {:>10} {:>12} {:>10} {:>10} {:>8}",
        "engine",
        "build ms",
        "heap MB",
        "best MB/s",
        "median MB/s",
        "wall MB/s",
        "matches",
        "hits/KB"
    );
    let mut seen: Option<(u64, u64)> = None;
    let mut agree = true;
    let configs = [
        (Engine::Daachorse, false, false),
        (Engine::AhoCorasickDfa, false, false),
        (Engine::AhoCorasickNfa, false, false),
        (Engine::AhoCorasickDfa, true, false),
        (Engine::AhoCorasickNfa, true, false),
        (Engine::AhoCorasickDfa, false, true),
        (Engine::AhoCorasickNfa, false, true),
    ];
    for (engine, case_insensitive, whole_words) in configs {
        let label = match (case_insensitive, whole_words) {
            (false, false) => engine.as_str().to_owned(),
            (true, _) => format!("{engine} +ci"),
            (_, true) => format!("{engine} +words"),
        };
        let start = Instant::now();
        let matcher = Matcher::build(engine, keywords, case_insensitive, whole_words)?;
        let build = start.elapsed();
        let run = timed(|| {
            let (mut matches, mut checksum) = (0u64, 0u64);
            for article in articles {
                let _ = matcher.for_each(&article.body, |hit| {
                    matches += 1;
                    checksum = checksum.rotate_left(5)
                        ^ (hit.start as u64)
                        ^ (u64::from(hit.keyword) << 32);
                    ControlFlow::Continue(())
                });
            }
            (matches, checksum)
        });
        println!(
            "{:<24} {:>9.1} {:>9.2} {:>10.0} {:>12.0} {:>10.0} {:>10} {:>8.2}",
            label,
            build.as_secs_f64() * 1e3,
            matcher.heap_bytes() as f64 / MB,
            mb_per_s(bytes, run.best().cpu),
            mb_per_s(bytes, run.median().cpu),
            mb_per_s(bytes, run.best().wall),
            run.matches,
            run.matches as f64 / (bytes as f64 / 1024.0)
        );
        match seen {
            None => seen = Some((run.matches, run.checksum)),
            Some(first) if first == (run.matches, run.checksum) => {}
            Some(_) => {
                agree = false;
                println!("!! {label} found different matches than daachorse");
            }
        }
    }
    // The keywords are Chinese, so case folding and word boundaries change nothing here: every
    // configuration must report the same matches.
    println!("all configurations found the same matches (count and offset checksum): {agree}");

    // For comparison only: the same automaton over uniformly random CJK characters, where
    // almost nothing matches and the automaton rarely leaves its root. Figures measured on
    // such text are far above what word-structured text gives.
    let matcher = Matcher::build(Engine::Daachorse, keywords, false, false)?;
    let mut rng = StdRng::seed_from_u64(5);
    let random: Vec<String> = (0..4_000)
        .map(|_| {
            (0..1_500)
                .map(|_| rng.random_range('\u{4e00}'..='\u{9fa5}'))
                .collect()
        })
        .collect();
    let random_bytes: usize = random.iter().map(String::len).sum();
    let run = timed(|| {
        let mut matches = 0;
        for text in &random {
            let _ = matcher.for_each(text, |_| {
                matches += 1;
                ControlFlow::Continue(())
            });
        }
        (matches, 0)
    });
    println!(
        "(daachorse-charwise on {:.0} MB of uniformly random CJK characters: {:.0} MB/s per core, {} matches)",
        random_bytes as f64 / MB,
        mb_per_s(random_bytes, run.best().cpu),
        run.matches
    );
    Ok(())
}

/// `Keywords::apply` on whole documents: a count set of `keywords` over title and body, a
/// blacklist of 300 rarely hit words, and a 200-character summary.
fn apply(keywords: &[String], sampled: &[String], articles: &[Article]) -> BenchResult<()> {
    let spec: KeywordsSpec = serde_json::from_value(json!({
        "sets": [
            {"name": "banned", "file": "banned.txt", "role": "Blacklist", "fields": ["title", "body"]},
            {"name": "topics", "file": "topics.txt", "fields": ["title", "body"]},
        ],
        "summary": {"inputField": "body", "outputField": "summary", "maxChars": 200},
    }))?;
    // Sampled 4-character words: mostly rare, so the blacklist drops only some documents.
    let banned: Vec<String> = sampled
        .iter()
        .filter(|w| w.chars().count() == 4)
        .take(300)
        .cloned()
        .collect();
    let lists = HashMap::from([
        ("topics.txt".to_owned(), keywords.to_vec()),
        ("banned.txt".to_owned(), banned),
    ]);
    let start = Instant::now();
    let compiled = Keywords::from_lists(&spec, &lists)?;
    let build = start.elapsed();

    let docs: Vec<Document> = articles
        .iter()
        .enumerate()
        .filter_map(
            |(i, a)| match json!({"id": i, "title": a.title, "body": a.body}) {
                Value::Object(map) => Some(map),
                _ => None,
            },
        )
        .collect();
    let bytes: usize = articles.iter().map(|a| a.title.len() + a.body.len()).sum();
    let mut rounds = Vec::with_capacity(ROUNDS);
    let (mut dropped, mut counted, mut pairs) = (0, 0u64, 0);
    for _ in 0..ROUNDS {
        let mut batch = docs.clone();
        let ((), t) = took(|| {
            (dropped, counted, pairs) = (0, 0, 0);
            for doc in &mut batch {
                let verdict = compiled.apply(doc);
                dropped += usize::from(verdict.dropped_by.is_some());
                pairs += verdict.counts.len();
                counted += verdict.counts.iter().map(|(_, n)| n).sum::<u64>();
            }
        });
        rounds.push(t);
        drop(black_box(batch));
    }
    rounds.sort();
    let run = Run {
        rounds,
        matches: counted,
        checksum: 0,
    };
    let (best, median) = (run.best(), run.median());
    println!(
        "Keywords::apply: {} docs, {:.1} MB: best {:.0} MB/s per core ({:.0} docs/s), median {:.0} MB/s, \
         wall {:.0} MB/s; build {:.1} ms, heap {:.2} MB; dropped {dropped}, {pairs} count pairs, {} hits",
        docs.len(),
        bytes as f64 / MB,
        mb_per_s(bytes, best.cpu),
        docs.len() as f64 / best.cpu.as_secs_f64(),
        mb_per_s(bytes, median.cpu),
        mb_per_s(bytes, best.wall),
        build.as_secs_f64() * 1e3,
        compiled.heap_bytes() as f64 / MB,
        run.matches,
    );
    Ok(())
}
