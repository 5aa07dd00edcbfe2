//! A deterministic data set shaped like the real job, loaded into MariaDB, and the oracle that
//! says what the worker must produce from it.
//!
//! Shape (see [`DataSetSpec`]): `N` articles with a title of ~15 Chinese characters and a body
//! of ~1,500, written from real words (the most frequent 30,000 words of jieba's dictionary,
//! drawn in proportion to `frequency^0.75`) with the punctuation `，。！？、；`; 0 to 5 tags each
//! from a vocabulary of 64; one of 1,000 authors. A keyword file of `K` real words (2-4
//! characters) and a blacklist of `B` words (3-4 characters, never drawn as body words), one of
//! which is inserted on purpose into exactly `round(N * blacklist_fraction)` articles (a fifth
//! of them in the title). Words that meet by chance can spell a blacklisted word too (in ~2%
//! of texts with the default spec): such a text is drawn again, so exactly the chosen articles
//! are blacklisted; every article is still checked, and [`Generated::blacklisted_ids`] is the
//! truth, not the intent.
//!
//! The same [`DataSetSpec`] (seed included) always gives the same data, on any machine and
//! after any crate upgrade: the generator is a SplitMix64 of its own, and article `i` depends
//! only on the seed and `i`.
//!
//! Ids are `FIRST_ID + ID_STEP * i`: above `u32::MAX` and with gaps, as real ids may be.
//!
//! Tables (utf8mb4):
//! ```sql
//! article(id BIGINT UNSIGNED PRIMARY KEY, title VARCHAR(200), body MEDIUMTEXT,
//!         author_id INT, published_at DATETIME(3), score DECIMAL(10,4))
//! article_tag(article_id BIGINT UNSIGNED, tag VARCHAR(64), PRIMARY KEY (article_id, tag))
//! author(id INT PRIMARY KEY, name VARCHAR(64))
//! ```

mod matcher;
mod words;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use migrate_crds::MigrateJobSpec;
use mysql_async::prelude::Queryable;
use mysql_async::{Params, Value};
use tokio::sync::{Mutex, mpsc};

pub use matcher::NaiveMatcher;
use words::{Alias, Rng, WORDS, Word};

use crate::fail;

/// Id of the first article; article `i` has id `FIRST_ID + ID_STEP * i`.
pub const FIRST_ID: u64 = 1 << 32;
/// Gap between consecutive article ids.
pub const ID_STEP: u64 = 3;
/// Number of authors (ids `1..=AUTHORS`).
pub const AUTHORS: u32 = 1_000;
/// Name of the counted keyword set in [`pipeline_spec`]; count keys are `topics:<keyword>`.
pub const TOPICS_SET: &str = "topics";
/// Name of the blacklist set in [`pipeline_spec`].
pub const BLOCKED_SET: &str = "blocked";
/// File name of the keyword list written by [`write_keyword_files`].
pub const TOPICS_FILE: &str = "topics.txt";
/// File name of the blacklist written by [`write_keyword_files`].
pub const BLACKLIST_FILE: &str = "blacklist.txt";

/// The tag vocabulary.
pub const TAGS: [&str; 64] = [
    "科技",
    "财经",
    "体育",
    "娱乐",
    "教育",
    "健康",
    "旅游",
    "美食",
    "汽车",
    "房产",
    "军事",
    "国际",
    "社会",
    "文化",
    "历史",
    "游戏",
    "动漫",
    "时尚",
    "育儿",
    "科学",
    "互联网",
    "人工智能",
    "数码",
    "手机",
    "电影",
    "音乐",
    "读书",
    "艺术",
    "摄影",
    "职场",
    "创业",
    "股票",
    "基金",
    "理财",
    "法律",
    "环保",
    "农业",
    "能源",
    "交通",
    "天气",
    "宠物",
    "家居",
    "情感",
    "星座",
    "足球",
    "篮球",
    "网球",
    "奥运",
    "航天",
    "医疗",
    "养生",
    "心理",
    "公益",
    "政策",
    "城市",
    "乡村",
    "考试",
    "留学",
    "求职",
    "电商",
    "物流",
    "新能源",
    "芯片",
    "区块链",
];

const SURNAMES: [&str; 50] = [
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡", "郭",
    "何", "高", "林", "罗", "郑", "梁", "谢", "宋", "唐", "许", "韩", "冯", "邓", "曹", "彭", "曾",
    "肖", "田", "董", "袁", "潘", "于", "蒋", "蔡", "余", "杜", "叶", "程", "苏", "魏", "吕", "丁",
    "任", "沈",
];
const GIVEN: [&str; 50] = [
    "伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明",
    "超", "秀", "霞", "平", "刚", "桂", "英", "华", "玉", "萍", "红", "辉", "建", "文", "丹", "鹏",
    "飞", "宇", "婷", "雪", "琳", "晨", "欣", "浩", "然", "思", "怡", "佳", "嘉", "俊", "博", "子",
    "涵", "梓",
];

// Independent random streams under one seed.
const STREAM_BLACKLIST: u64 = 1;
const STREAM_KEYWORDS: u64 = 2;
const STREAM_CHOSEN: u64 = 3;
const STREAM_ARTICLE: u64 = 4;
const STREAM_AUTHOR: u64 = 5;

/// Articles per multi-row INSERT (~2.3 MB of text; the testbed allows 64 MB packets).
const BATCH_ARTICLES: usize = 500;
/// Connections inserting at once.
const WRITERS: usize = 3;
/// Rows read per query by [`expected`].
const EXPECTED_CHUNK: u64 = 2_000;
/// Ids per LPUSH, and LPUSH commands per pipeline, in [`enqueue`].
const LPUSH_IDS: usize = 5_000;
const LPUSH_PER_PIPELINE: usize = 20;

/// What went wrong while making or reading a data set.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DatagenError {
    /// The spec asks for something the word list cannot give.
    #[error("invalid data set spec: {0}")]
    Spec(String),
    /// The MySQL URL does not parse.
    #[error("invalid MySQL URL {url}")]
    Url {
        /// The URL given.
        url: String,
        /// The parser's error.
        #[source]
        source: mysql_async::UrlError,
    },
    /// The database name is not a plain identifier.
    #[error("invalid database name {0:?}: use 1-64 characters of [A-Za-z0-9_]")]
    DbName(String),
    /// A MySQL statement failed.
    #[error("mysql: {what} failed on {url}")]
    Mysql {
        /// The URL used.
        url: String,
        /// What was being done.
        what: String,
        /// The driver's error.
        #[source]
        source: mysql_async::Error,
    },
    /// A Redis command failed.
    #[error("redis: {what} failed on {url} for key {key}")]
    Redis {
        /// The URL used.
        url: String,
        /// The key written.
        key: String,
        /// What was being done.
        what: &'static str,
        /// The client's error.
        #[source]
        source: redis::RedisError,
    },
    /// A keyword file could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A background task of the loader or the oracle died.
    #[error("a background task of the data generator failed")]
    Task(#[source] tokio::task::JoinError),
    /// [`expected`] was asked to match a column that is not a text field of `article`.
    #[error("unknown text field {0:?}: the article text fields are title and body")]
    Field(String),
}

/// What data set to make. The same spec always makes the same data.
#[derive(Debug, Clone, PartialEq)]
pub struct DataSetSpec {
    /// Number of articles.
    pub articles: u64,
    /// Number of keywords in `topics.txt` (2-4 characters each; at most ~25,000).
    pub keywords: usize,
    /// Number of words in `blacklist.txt` (3-4 characters each; at most ~5,000).
    pub blacklist: usize,
    /// Share of articles that get a blacklisted word inserted on purpose, in `[0, 1]`.
    pub blacklist_fraction: f64,
    /// Seed of every random choice.
    pub seed: u64,
}

impl Default for DataSetSpec {
    /// 1,000 articles, 10,000 keywords, 50 blacklisted words in 2% of the articles, seed 42.
    fn default() -> Self {
        Self {
            articles: 1_000,
            keywords: 10_000,
            blacklist: 50,
            blacklist_fraction: 0.02,
            seed: 42,
        }
    }
}

/// One generated article.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Article {
    /// `article.id`.
    pub id: u64,
    /// `article.title`, ~15 characters.
    pub title: String,
    /// `article.body`, ~1,500 characters.
    pub body: String,
    /// `article.author_id`, in `1..=AUTHORS`.
    pub author_id: u32,
    /// `article.published_at` as MySQL text, `YYYY-MM-DD HH:MM:SS.mmm` (UTC, 2019-2024).
    pub published_at: String,
    /// `article.score` as decimal text with 4 places, in `[0, 1000)`.
    pub score: String,
    /// Its rows of `article_tag`, 0 to 5 distinct tags of [`TAGS`].
    pub tags: Vec<&'static str>,
    /// Whether a blacklisted word occurs in its title or body (inserted or by chance).
    pub blacklisted: bool,
}

/// A data set in memory: its word lists, and each article made on demand.
#[derive(Debug, Clone)]
pub struct DataSet {
    spec: DataSetSpec,
    keywords: Vec<String>,
    blacklist: Vec<String>,
    /// Body words and their lengths in characters.
    body_words: Vec<(&'static str, usize)>,
    body_alias: Alias,
    chosen: HashSet<u64>,
    blocked: NaiveMatcher,
}

impl DataSet {
    /// Picks the keywords and the blacklist and which articles get a blacklisted word.
    ///
    /// # Panics
    /// When the spec asks for more keywords or blacklisted words than the word list has, or
    /// `blacklist_fraction` is outside `[0, 1]`, or a fraction above 0 with an empty blacklist.
    #[must_use]
    pub fn new(spec: &DataSetSpec) -> Self {
        Self::try_new(spec).unwrap_or_else(|e| fail(crate::chain(&e)))
    }

    fn try_new(spec: &DataSetSpec) -> Result<Self, DatagenError> {
        if !(0.0..=1.0).contains(&spec.blacklist_fraction) {
            return Err(DatagenError::Spec(format!(
                "blacklist_fraction {} is not in [0, 1]",
                spec.blacklist_fraction
            )));
        }
        if spec.blacklist == 0 && spec.blacklist_fraction > 0.0 {
            return Err(DatagenError::Spec(
                "blacklist_fraction > 0 needs blacklist > 0".to_owned(),
            ));
        }
        let words: &[Word] = &WORDS;
        let mut blacklist_pool: Vec<&Word> = words.iter().filter(|w| w.chars >= 3).collect();
        if spec.blacklist > blacklist_pool.len() {
            return Err(DatagenError::Spec(format!(
                "blacklist {} is more than the {} words of 3-4 characters",
                spec.blacklist,
                blacklist_pool.len()
            )));
        }
        Rng::derive(spec.seed, STREAM_BLACKLIST, 0).shuffle(&mut blacklist_pool);
        let blacklist: Vec<String> = blacklist_pool[..spec.blacklist]
            .iter()
            .map(|w| w.text.to_owned())
            .collect();
        let banned: HashSet<&str> = blacklist.iter().map(String::as_str).collect();

        let mut keyword_pool: Vec<&Word> = words
            .iter()
            .filter(|w| w.chars >= 2 && !banned.contains(w.text))
            .collect();
        if spec.keywords > keyword_pool.len() {
            return Err(DatagenError::Spec(format!(
                "keywords {} is more than the {} words of 2-4 characters",
                spec.keywords,
                keyword_pool.len()
            )));
        }
        Rng::derive(spec.seed, STREAM_KEYWORDS, 0).shuffle(&mut keyword_pool);
        let keywords: Vec<String> = keyword_pool[..spec.keywords]
            .iter()
            .map(|w| w.text.to_owned())
            .collect();

        let body: Vec<&Word> = words.iter().filter(|w| !banned.contains(w.text)).collect();
        let weights: Vec<f64> = body.iter().map(|w| (w.freq as f64).powf(0.75)).collect();
        let body_words = body.iter().map(|w| (w.text, w.chars)).collect();

        // Floyd's algorithm: exactly `m` distinct article indices out of `n`.
        let n = spec.articles;
        let m = ((n as f64) * spec.blacklist_fraction).round() as u64;
        let m = m.min(n);
        let mut rng = Rng::derive(spec.seed, STREAM_CHOSEN, 0);
        let mut chosen = HashSet::with_capacity(m as usize);
        for j in (n - m)..n {
            let t = rng.below(j + 1);
            if !chosen.insert(t) {
                chosen.insert(j);
            }
        }

        Ok(Self {
            spec: spec.clone(),
            blocked: NaiveMatcher::new(&blacklist),
            keywords,
            blacklist,
            body_words,
            body_alias: Alias::new(&weights),
            chosen,
        })
    }

    /// The spec this data set was made from.
    #[must_use]
    pub fn spec(&self) -> &DataSetSpec {
        &self.spec
    }

    /// The keywords of `topics.txt`.
    #[must_use]
    pub fn keywords(&self) -> &[String] {
        &self.keywords
    }

    /// The words of `blacklist.txt`.
    #[must_use]
    pub fn blacklist(&self) -> &[String] {
        &self.blacklist
    }

    /// The id of article `index` (`0..articles`).
    #[must_use]
    pub fn id(&self, index: u64) -> u64 {
        FIRST_ID + ID_STEP * index
    }

    /// Every article id, in order.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.spec.articles).map(|i| self.id(i))
    }

    /// Name of author `id` (`1..=AUTHORS`).
    #[must_use]
    pub fn author_name(&self, id: u32) -> String {
        let mut rng = Rng::derive(self.spec.seed, STREAM_AUTHOR, u64::from(id));
        let mut name = SURNAMES[rng.index(SURNAMES.len())].to_owned();
        for _ in 0..rng.between(1, 2) {
            name.push_str(GIVEN[rng.index(GIVEN.len())]);
        }
        name
    }

    /// Article `index` (`0..articles`), made from the seed and the index alone.
    #[must_use]
    pub fn article(&self, index: u64) -> Article {
        // Words that meet by chance can spell a blacklisted word (in ~2% of articles with the
        // default spec); such a text is drawn again, so that exactly the chosen articles are
        // blacklisted. After MAX_DRAWS the last text is kept, and `blacklisted` still tells.
        const MAX_DRAWS: u64 = 64;
        let mut draw = 0;
        let (mut rng, mut title, title_cuts, mut body, body_cuts) = loop {
            let mut rng = Rng::derive(self.spec.seed, STREAM_ARTICLE, index ^ (draw << 48));
            let (title, title_cuts, body, body_cuts) = self.text(&mut rng);
            draw += 1;
            if draw >= MAX_DRAWS || !(self.blocked.is_match(&title) || self.blocked.is_match(&body))
            {
                break (rng, title, title_cuts, body, body_cuts);
            }
        };

        if self.chosen.contains(&index) {
            let word = &self.blacklist[rng.index(self.blacklist.len())];
            let (text, cuts) = if rng.below(5) == 0 {
                (&mut title, &title_cuts)
            } else {
                (&mut body, &body_cuts)
            };
            let at = cuts[rng.index(cuts.len())];
            text.insert_str(at, word);
        }

        let tag_count = rng.between(0, 5) as usize;
        let mut order: Vec<usize> = (0..TAGS.len()).collect();
        for i in 0..tag_count {
            let j = i + rng.index(TAGS.len() - i);
            order.swap(i, j);
        }
        let tags = order[..tag_count].iter().map(|&i| TAGS[i]).collect();

        let author_id = rng.between(1, u64::from(AUTHORS)) as u32;
        // 2019-01-01T00:00:00Z plus up to six years.
        let millis = 1_546_300_800_000 + rng.below(6 * 365 * 24 * 3_600_000) as i64;
        let published_at = chrono::DateTime::from_timestamp_millis(millis)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
            .unwrap_or_else(|| "2019-01-01 00:00:00.000".to_owned());
        let score = rng.below(10_000_000);
        let blacklisted = self.blocked.is_match(&title) || self.blocked.is_match(&body);

        Article {
            id: self.id(index),
            title,
            body,
            author_id,
            published_at,
            score: format!("{}.{:04}", score / 10_000, score % 10_000),
            tags,
            blacklisted,
        }
    }

    /// A title and a body, with the byte offsets between their words (where a word may be
    /// inserted).
    fn text(&self, rng: &mut Rng) -> (String, Vec<usize>, String, Vec<usize>) {
        let mut title = String::with_capacity(64);
        let mut title_cuts = vec![0];
        let title_target = rng.between(10, 20) as usize;
        let mut title_chars = 0;
        while title_chars < title_target {
            let (w, chars) = self.body_word(rng);
            title.push_str(w);
            title_chars += chars;
            title_cuts.push(title.len());
        }

        let mut body = String::with_capacity(5_000);
        let mut body_cuts = vec![0];
        let body_target = rng.between(1_200, 1_800) as usize;
        let mut body_chars = 0;
        while body_chars < body_target {
            let clauses = rng.between(1, 3);
            for clause in 0..clauses {
                for _ in 0..rng.between(4, 12) {
                    let (w, chars) = self.body_word(rng);
                    body.push_str(w);
                    body_chars += chars;
                    body_cuts.push(body.len());
                }
                let p = rng.below(10);
                let mark = if clause + 1 == clauses {
                    match p {
                        0 => '！',
                        1 => '？',
                        _ => '。',
                    }
                } else {
                    match p {
                        0 => '、',
                        1 => '；',
                        _ => '，',
                    }
                };
                body.push(mark);
                body_chars += 1;
                body_cuts.push(body.len());
            }
        }
        (title, title_cuts, body, body_cuts)
    }

    fn body_word(&self, rng: &mut Rng) -> (&'static str, usize) {
        self.body_words[self.body_alias.sample(rng)]
    }
}

/// What [`load`] put into the database.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// Every article id, in insertion order.
    pub ids: Vec<u64>,
    /// The keywords (`topics.txt`).
    pub keywords: Vec<String>,
    /// The blacklisted words (`blacklist.txt`).
    pub blacklist: Vec<String>,
    /// Ids of the articles whose title or body contains a blacklisted word.
    pub blacklisted_ids: HashSet<u64>,
    /// The spec the data was made from.
    pub spec: DataSetSpec,
}

/// What the worker must produce from a loaded data set, recomputed from the database.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Expected {
    /// `topics:<keyword>` -> occurrences over the non-blacklisted articles (every
    /// leftmost-longest, non-overlapping match in every matched field, summed); keywords with no
    /// match are absent.
    pub counts: HashMap<String, u64>,
    /// Ids of the articles that must be indexed (every article without a blacklisted word).
    pub indexed_ids: HashSet<u64>,
    /// Ids of the articles the blacklist must filter out.
    pub blacklisted_ids: HashSet<u64>,
}

impl Expected {
    /// Checks the keyword counts a job accumulated in Redis (`{q}:counts`) against
    /// [`Expected::counts`].
    ///
    /// # Panics
    /// When they differ, with the number of keys on each side and up to ten keys whose counts
    /// differ as (key, expected, counted).
    pub fn assert_counts(&self, counted: &HashMap<String, u64>) {
        if counted == &self.counts {
            return;
        }
        let wrong: Vec<_> = self
            .counts
            .iter()
            .filter(|(k, v)| counted.get(*k) != Some(v))
            .take(10)
            .map(|(k, v)| (k.clone(), *v, counted.get(k).copied()))
            .collect();
        fail(format!(
            "keyword counts differ ({} expected keys, {} counted); first (key, expected, counted): {wrong:?}",
            self.counts.len(),
            counted.len()
        ));
    }
}

/// Makes a fresh database `db_name` (dropped first if it exists), utf8mb4, and returns the URL
/// of `mysql_url` with the database replaced by it. With the testbed's user, `db_name` must
/// start with `migrate_`.
///
/// # Panics
/// When the URL or the name is invalid or MySQL refuses, naming both.
pub async fn create_database(mysql_url: &str, db_name: &str) -> String {
    try_create_database(mysql_url, db_name)
        .await
        .unwrap_or_else(|e| fail(crate::chain(&e)))
}

async fn try_create_database(mysql_url: &str, db_name: &str) -> Result<String, DatagenError> {
    check_db_name(db_name)?;
    let mut conn = connect(mysql_url).await?;
    let sql = format!(
        "DROP DATABASE IF EXISTS `{db_name}`; CREATE DATABASE `{db_name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
    );
    conn.query_drop(sql)
        .await
        .map_err(|source| DatagenError::Mysql {
            url: mysql_url.to_owned(),
            what: format!("CREATE DATABASE {db_name}"),
            source,
        })?;
    let _ = conn.disconnect().await;
    Ok(with_database(mysql_url, db_name))
}

/// Drops the database `db_name` (no error when it does not exist), e.g. at the end of a test
/// that made it with [`create_database`].
///
/// # Panics
/// When the URL or the name is invalid or MySQL refuses, naming both.
pub async fn drop_database(mysql_url: &str, db_name: &str) {
    try_drop_database(mysql_url, db_name)
        .await
        .unwrap_or_else(|e| fail(crate::chain(&e)));
}

async fn try_drop_database(mysql_url: &str, db_name: &str) -> Result<(), DatagenError> {
    check_db_name(db_name)?;
    let mut conn = connect(mysql_url).await?;
    conn.query_drop(format!("DROP DATABASE IF EXISTS `{db_name}`"))
        .await
        .map_err(|source| DatagenError::Mysql {
            url: mysql_url.to_owned(),
            what: format!("DROP DATABASE {db_name}"),
            source,
        })?;
    let _ = conn.disconnect().await;
    Ok(())
}

fn check_db_name(db_name: &str) -> Result<(), DatagenError> {
    let plain = db_name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if db_name.is_empty() || db_name.len() > 64 || !plain {
        return Err(DatagenError::DbName(db_name.to_owned()));
    }
    Ok(())
}

/// `url` with its database path replaced by `db` (query string kept).
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = base[authority_start..]
        .find('/')
        .map_or(base, |slash| &base[..authority_start + slash]);
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

async fn connect(url: &str) -> Result<mysql_async::Conn, DatagenError> {
    let opts = mysql_async::Opts::from_url(url).map_err(|source| DatagenError::Url {
        url: url.to_owned(),
        source,
    })?;
    mysql_async::Conn::new(opts)
        .await
        .map_err(|source| DatagenError::Mysql {
            url: url.to_owned(),
            what: "connect".to_owned(),
            source,
        })
}

const SCHEMA: &str = "
DROP TABLE IF EXISTS article_tag;
DROP TABLE IF EXISTS article;
DROP TABLE IF EXISTS author;
CREATE TABLE author (
  id INT NOT NULL PRIMARY KEY,
  name VARCHAR(64) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE article (
  id BIGINT UNSIGNED NOT NULL PRIMARY KEY,
  title VARCHAR(200) NOT NULL,
  body MEDIUMTEXT NOT NULL,
  author_id INT NOT NULL,
  published_at DATETIME(3) NOT NULL,
  score DECIMAL(10,4) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE article_tag (
  article_id BIGINT UNSIGNED NOT NULL,
  tag VARCHAR(64) NOT NULL,
  PRIMARY KEY (article_id, tag)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
";

/// One multi-row INSERT's worth of articles and their tags.
struct Batch {
    articles: usize,
    article_params: Vec<Value>,
    tags: usize,
    tag_params: Vec<Value>,
    blacklisted: Vec<u64>,
}

/// The rows of articles `indices`.
fn make_batch(data: &DataSet, indices: std::ops::Range<u64>) -> Batch {
    let mut batch = Batch {
        articles: 0,
        article_params: Vec::with_capacity(BATCH_ARTICLES * 6),
        tags: 0,
        tag_params: Vec::new(),
        blacklisted: Vec::new(),
    };
    for index in indices {
        let a = data.article(index);
        batch.articles += 1;
        for tag in &a.tags {
            batch.tags += 1;
            batch.tag_params.extend([Value::UInt(a.id), text(tag)]);
        }
        if a.blacklisted {
            batch.blacklisted.push(a.id);
        }
        batch.article_params.extend([
            Value::UInt(a.id),
            Value::Bytes(a.title.into_bytes()),
            Value::Bytes(a.body.into_bytes()),
            Value::Int(i64::from(a.author_id)),
            Value::Bytes(a.published_at.into_bytes()),
            Value::Bytes(a.score.into_bytes()),
        ]);
    }
    batch
}

fn text(s: &str) -> Value {
    Value::Bytes(s.as_bytes().to_vec())
}

fn insert_sql(table_and_columns: &str, columns: usize, rows: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(","));
    format!(
        "INSERT INTO {table_and_columns} VALUES {}",
        vec![row; rows].join(",")
    )
}

/// Creates the tables (dropping any of the same names) in the database of `mysql_url_of_db`
/// and inserts the data set of `spec`: authors, articles and tags, in multi-row INSERTs of 500
/// articles over 3 connections, while up to 4 threads generate the next batches. 100,000
/// articles (~450 MB of text) take ~17 s in a release build on 2 busy cores, ~5x longer in a
/// debug build.
///
/// # Panics
/// When the spec is invalid (see [`DataSet::new`]) or MySQL fails, naming the URL.
pub async fn load(mysql_url_of_db: &str, spec: &DataSetSpec) -> Generated {
    try_load(mysql_url_of_db, spec)
        .await
        .unwrap_or_else(|e| fail(crate::chain(&e)))
}

async fn try_load(url: &str, spec: &DataSetSpec) -> Result<Generated, DatagenError> {
    let started = Instant::now();
    let data = Arc::new(DataSet::try_new(spec)?);
    let mysql = |what: &str| {
        let what = what.to_owned();
        move |source| DatagenError::Mysql {
            url: url.to_owned(),
            what,
            source,
        }
    };
    let opts = mysql_async::Opts::from_url(url).map_err(|source| DatagenError::Url {
        url: url.to_owned(),
        source,
    })?;
    let pool = mysql_async::Pool::new(opts);
    let mut conn = pool.get_conn().await.map_err(mysql("connect"))?;
    conn.query_drop(SCHEMA)
        .await
        .map_err(mysql("CREATE TABLE"))?;

    let author_params: Vec<Value> = (1..=AUTHORS)
        .flat_map(|id| [Value::Int(i64::from(id)), text(&data.author_name(id))])
        .collect();
    conn.exec_drop(
        insert_sql("author (id, name)", 2, AUTHORS as usize),
        Params::Positional(author_params),
    )
    .await
    .map_err(mysql("INSERT INTO author"))?;
    drop(conn);

    // Generators take every `generators`-th batch; the order rows arrive in does not matter.
    let generators = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, 4);
    let (tx, rx) = mpsc::channel::<Batch>(WRITERS * 2);
    let batches = data.spec().articles.div_ceil(BATCH_ARTICLES as u64);
    let generating: Vec<_> = (0..generators as u64)
        .map(|g| {
            let (data, tx) = (Arc::clone(&data), tx.clone());
            tokio::task::spawn_blocking(move || {
                let n = data.spec().articles;
                for b in (g..batches).step_by(generators) {
                    let start = b * BATCH_ARTICLES as u64;
                    let batch = make_batch(&data, start..(start + BATCH_ARTICLES as u64).min(n));
                    if tx.blocking_send(batch).is_err() {
                        // A writer failed; its error is reported by the caller.
                        return;
                    }
                }
            })
        })
        .collect();
    drop(tx);

    let rx = Arc::new(Mutex::new(rx));
    let writers = (0..WRITERS).map(|_| {
        let rx = Arc::clone(&rx);
        let pool = pool.clone();
        async move {
            let mut conn = pool.get_conn().await.map_err(mysql("connect"))?;
            let mut blacklisted = Vec::new();
            loop {
                let next = rx.lock().await.recv().await;
                let Some(batch) = next else { break };
                conn.exec_drop(
                    insert_sql(
                        "article (id, title, body, author_id, published_at, score)",
                        6,
                        batch.articles,
                    ),
                    Params::Positional(batch.article_params),
                )
                .await
                .map_err(mysql("INSERT INTO article"))?;
                if batch.tags > 0 {
                    conn.exec_drop(
                        insert_sql("article_tag (article_id, tag)", 2, batch.tags),
                        Params::Positional(batch.tag_params),
                    )
                    .await
                    .map_err(mysql("INSERT INTO article_tag"))?;
                }
                blacklisted.extend(batch.blacklisted);
            }
            Ok::<_, DatagenError>(blacklisted)
        }
    });
    let written = futures::future::try_join_all(writers).await;
    drop(rx);
    for g in generating {
        g.await.map_err(DatagenError::Task)?;
    }
    let blacklisted_ids: HashSet<u64> = written?.into_iter().flatten().collect();
    let _ = pool.disconnect().await;

    tracing::info!(
        articles = spec.articles,
        blacklisted = blacklisted_ids.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        url,
        "Loaded the data set."
    );
    Ok(Generated {
        ids: data.ids().collect(),
        keywords: data.keywords().to_vec(),
        blacklist: data.blacklist().to_vec(),
        blacklisted_ids,
        spec: spec.clone(),
    })
}

/// Writes `topics.txt` (the keywords) and `blacklist.txt` into `dir` (created if missing),
/// one word per line.
///
/// # Panics
/// When a file cannot be written, naming it.
pub fn write_keyword_files(dir: impl AsRef<Path>, generated: &Generated) {
    let dir = dir.as_ref();
    let write = |name: &str, words: &[String]| -> Result<(), DatagenError> {
        let path = dir.join(name);
        std::fs::create_dir_all(dir)
            .and_then(|()| {
                std::fs::write(
                    &path,
                    words.iter().map(|w| format!("{w}\n")).collect::<String>(),
                )
            })
            .map_err(|source| DatagenError::Write { path, source })
    };
    write(TOPICS_FILE, &generated.keywords)
        .and_then(|()| write(BLACKLIST_FILE, &generated.blacklist))
        .unwrap_or_else(|e| fail(crate::chain(&e)));
}

/// LPUSHes `ids` (in order, so with BLMOVE RIGHT the first id is taken first) onto the list
/// `key`, 5,000 ids per command and 20 commands per round trip.
///
/// # Panics
/// When Redis fails, naming the URL and the key.
pub async fn enqueue(redis_url: &str, key: &str, ids: &[u64]) {
    try_enqueue(redis_url, key, ids)
        .await
        .unwrap_or_else(|e| fail(crate::chain(&e)));
}

async fn try_enqueue(url: &str, key: &str, ids: &[u64]) -> Result<(), DatagenError> {
    let err = |what: &'static str| {
        move |source| DatagenError::Redis {
            url: url.to_owned(),
            key: key.to_owned(),
            what,
            source,
        }
    };
    let client = redis::Client::open(url).map_err(err("open"))?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(err("connect"))?;
    for group in ids.chunks(LPUSH_IDS * LPUSH_PER_PIPELINE) {
        let mut pipe = redis::pipe();
        for chunk in group.chunks(LPUSH_IDS) {
            pipe.cmd("LPUSH").arg(key).arg(chunk).ignore();
        }
        let () = pipe.query_async(&mut conn).await.map_err(err("LPUSH"))?;
    }
    Ok(())
}

/// Recomputes, from the rows in the database of `mysql_url_of_db`, what the worker must
/// produce with [`pipeline_spec`]: an article is blacklisted when a word of
/// `generated.blacklist` occurs in one of `fields`; the others must be indexed, and their
/// keyword matches in `fields` (each field matched on its own) are counted with the
/// [`NaiveMatcher`], an independent leftmost-longest oracle.
///
/// # Panics
/// When a field is not `title` or `body`, or MySQL fails, naming the URL.
pub async fn expected(mysql_url_of_db: &str, generated: &Generated, fields: &[&str]) -> Expected {
    try_expected(mysql_url_of_db, generated, fields)
        .await
        .unwrap_or_else(|e| fail(crate::chain(&e)))
}

async fn try_expected(
    url: &str,
    generated: &Generated,
    fields: &[&str],
) -> Result<Expected, DatagenError> {
    let (mut use_title, mut use_body) = (false, false);
    for &f in fields {
        match f {
            "title" => use_title = true,
            "body" => use_body = true,
            other => return Err(DatagenError::Field(other.to_owned())),
        }
    }
    let topics = Arc::new(NaiveMatcher::new(&generated.keywords));
    let blocked = Arc::new(NaiveMatcher::new(&generated.blacklist));
    let mut conn = connect(url).await?;
    let mut counts = vec![0u64; topics.keywords().len()];
    let mut out = Expected::default();
    let mut after: Option<u64> = None;
    // Matching one chunk runs on the blocking pool while the next chunk is read.
    let mut pending: Option<tokio::task::JoinHandle<Part>> = None;
    loop {
        // Keyset pagination: bounded memory however large the table.
        let rows: Vec<(u64, String, String)> = conn
            .exec(
                "SELECT id, title, body FROM article WHERE ? IS NULL OR id > ? ORDER BY id LIMIT ?",
                (after, after, EXPECTED_CHUNK),
            )
            .await
            .map_err(|source| DatagenError::Mysql {
                url: url.to_owned(),
                what: "SELECT FROM article".to_owned(),
                source,
            })?;
        if let Some(handle) = pending.take() {
            handle
                .await
                .map_err(DatagenError::Task)?
                .merge_into(&mut out, &mut counts);
        }
        let Some(last) = rows.last().map(|r| r.0) else {
            break;
        };
        after = Some(last);
        let (topics, blocked) = (Arc::clone(&topics), Arc::clone(&blocked));
        pending = Some(tokio::task::spawn_blocking(move || {
            let mut part = Part {
                counts: vec![0; topics.keywords().len()],
                ..Part::default()
            };
            for (id, title, body) in rows {
                let texts: Vec<&str> = [(use_title, title.as_str()), (use_body, body.as_str())]
                    .into_iter()
                    .filter_map(|(on, t)| on.then_some(t))
                    .collect();
                if texts.iter().any(|t| blocked.is_match(t)) {
                    part.blacklisted.push(id);
                } else {
                    part.indexed.push(id);
                    for t in texts {
                        topics.count(t, &mut part.counts);
                    }
                }
            }
            part
        }));
    }
    out.counts = topics
        .keywords()
        .iter()
        .zip(counts)
        .filter(|&(_, n)| n > 0)
        .map(|(k, n)| (format!("{TOPICS_SET}:{k}"), n))
        .collect();
    let _ = conn.disconnect().await;
    Ok(out)
}

/// What the worker must store under `keywords.<set>` of one document for the matches of
/// `matcher` in `texts` (each text matched on its own, as the worker matches each field):
/// `[{"keyword": k, "count": n}, ...]`, most hits first, ties in keyword (byte) order; `None`
/// when nothing matches, as the worker then writes no entry for the set.
///
/// ```
/// use migrate_e2e::datagen::{NaiveMatcher, expected_hits};
/// let m = NaiveMatcher::new(["中国", "人民"]);
/// assert_eq!(
///     expected_hits(&m, &["中国人民", "中国"]),
///     Some(serde_json::json!([{"keyword": "中国", "count": 2}, {"keyword": "人民", "count": 1}]))
/// );
/// assert_eq!(expected_hits(&m, &["没有"]), None);
/// ```
#[must_use]
pub fn expected_hits(matcher: &NaiveMatcher, texts: &[&str]) -> Option<serde_json::Value> {
    let mut counts: HashMap<String, u64> = HashMap::new();
    for text in texts {
        matcher.count_into(text, "", &mut counts);
    }
    if counts.is_empty() {
        return None;
    }
    let mut hits: Vec<(String, u64)> = counts.into_iter().collect();
    hits.sort_by(|(ka, na), (kb, nb)| nb.cmp(na).then_with(|| ka.cmp(kb)));
    Some(serde_json::Value::Array(
        hits.into_iter()
            .map(|(keyword, count)| serde_json::json!({"keyword": keyword, "count": count}))
            .collect(),
    ))
}

/// The oracle's result for one chunk of rows.
#[derive(Default)]
struct Part {
    counts: Vec<u64>,
    indexed: Vec<u64>,
    blacklisted: Vec<u64>,
}

impl Part {
    fn merge_into(self, out: &mut Expected, counts: &mut [u64]) {
        out.indexed_ids.extend(self.indexed);
        out.blacklisted_ids.extend(self.blacklisted);
        for (total, n) in counts.iter_mut().zip(self.counts) {
            *total += n;
        }
    }
}

/// The pipeline for a data set of this module: starts from
/// [`migrate_crds::pipeline::example_spec`] (queries `article` (main), `tags` (pluck `tag`) and
/// `author`; one NLP `/segment` call on the title stored at `nlp.title_tokens`; keyword sets
/// `topics` (Count, `topics.txt`) and `blocked` (Blacklist, `blacklist.txt`) over title and
/// body; a 120-character summary of the body), with the queue key, the index and the NLP
/// service's base URL (e.g. `http://127.0.0.1:8090`) given.
#[must_use]
pub fn pipeline_spec(queue_key: &str, index: &str, nlp_url: &str) -> MigrateJobSpec {
    let mut spec = migrate_crds::pipeline::example_spec();
    spec.queue.key = queue_key.to_owned();
    spec.sink.index = index.to_owned();
    let base = nlp_url.trim_end_matches('/');
    for endpoint in &mut spec.enrich {
        if endpoint.name == "segment" {
            endpoint.url = format!("{base}/segment");
        }
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> DataSetSpec {
        DataSetSpec {
            articles: 300,
            keywords: 2_000,
            blacklist: 20,
            blacklist_fraction: 0.05,
            seed: 7,
        }
    }

    #[test]
    fn the_same_seed_makes_the_same_data_set() {
        let (a, b) = (DataSet::new(&small()), DataSet::new(&small()));
        assert_eq!(a.keywords(), b.keywords());
        assert_eq!(a.blacklist(), b.blacklist());
        for i in [0, 1, 150, 299] {
            assert_eq!(a.article(i), b.article(i));
        }
        assert_eq!(a.author_name(17), b.author_name(17));
    }

    #[test]
    fn another_seed_makes_another_data_set() {
        let a = DataSet::new(&small());
        let b = DataSet::new(&DataSetSpec { seed: 8, ..small() });
        assert_ne!(a.keywords(), b.keywords());
        assert_ne!(a.article(0).body, b.article(0).body);
    }

    #[test]
    fn an_article_depends_only_on_the_seed_and_its_index() {
        let few = DataSet::new(&small());
        let many = DataSet::new(&DataSetSpec {
            articles: 5_000,
            ..small()
        });
        // Same seed, other size: the text is the same (only which articles get a blacklisted
        // word may differ).
        let (a, b) = (few.article(42), many.article(42));
        assert_eq!((a.id, &a.tags, a.author_id), (b.id, &b.tags, b.author_id));
    }

    #[test]
    fn articles_are_shaped_like_the_real_ones() {
        let data = DataSet::new(&small());
        for i in 0..data.spec().articles {
            let a = data.article(i);
            let title = a.title.chars().count();
            let body = a.body.chars().count();
            assert!(
                (10..=40).contains(&title),
                "title of {} chars: {}",
                title,
                a.title
            );
            assert!((1_200..=1_900).contains(&body), "body of {body} chars");
            assert!(a.title.len() <= 200 * 4 && a.tags.len() <= 5);
            assert!((1..=AUTHORS).contains(&a.author_id));
            assert!(a.body.contains('。') && a.body.contains('，'));
            assert!(
                a.published_at.starts_with("20") && a.published_at.len() == 23,
                "{}",
                a.published_at
            );
            let tags: HashSet<_> = a.tags.iter().collect();
            assert_eq!(tags.len(), a.tags.len(), "tags are distinct");
        }
    }

    #[test]
    fn keywords_and_blacklist_are_real_disjoint_words_of_the_asked_sizes() {
        let data = DataSet::new(&small());
        assert_eq!(data.keywords().len(), 2_000);
        assert_eq!(data.blacklist().len(), 20);
        let k: HashSet<_> = data.keywords().iter().collect();
        assert_eq!(k.len(), 2_000, "no duplicates");
        assert!(data.blacklist().iter().all(|b| !k.contains(b)));
        assert!(
            data.keywords()
                .iter()
                .all(|w| (2..=4).contains(&w.chars().count()))
        );
        assert!(
            data.blacklist()
                .iter()
                .all(|w| (3..=4).contains(&w.chars().count()))
        );
    }

    #[test]
    fn exactly_the_asked_fraction_of_articles_contains_a_blacklisted_word() {
        let spec = DataSetSpec {
            articles: 2_000,
            blacklist_fraction: 0.02,
            ..small()
        };
        let data = DataSet::new(&spec);
        let hits = (0..spec.articles)
            .filter(|&i| data.article(i).blacklisted)
            .count();
        assert_eq!(hits, 40, "{hits} of 2000 articles are blacklisted");
    }

    #[test]
    fn a_zero_fraction_inserts_no_blacklisted_word() {
        let spec = DataSetSpec {
            articles: 500,
            blacklist_fraction: 0.0,
            ..small()
        };
        let data = DataSet::new(&spec);
        let hits = (0..spec.articles)
            .filter(|&i| data.article(i).blacklisted)
            .count();
        assert_eq!(
            hits, 0,
            "{hits} articles spell a blacklisted word by chance"
        );
    }

    #[test]
    fn keywords_occur_in_the_text() {
        let data = DataSet::new(&DataSetSpec::default());
        let m = NaiveMatcher::new(data.keywords());
        let hits = m.find_all(&data.article(0).body).len();
        assert!(
            hits > 50,
            "only {hits} keyword matches in a 1,500-character body"
        );
    }

    #[test]
    fn a_database_is_swapped_into_the_url() {
        assert_eq!(
            with_database("mysql://u:p@h:1/migrate", "migrate_x"),
            "mysql://u:p@h:1/migrate_x"
        );
        assert_eq!(
            with_database("mysql://u:p@h:1", "migrate_x"),
            "mysql://u:p@h:1/migrate_x"
        );
        assert_eq!(
            with_database("mysql://u:p@h:1/db?prefer_socket=false", "migrate_x"),
            "mysql://u:p@h:1/migrate_x?prefer_socket=false"
        );
    }

    #[test]
    fn an_impossible_spec_is_refused_with_its_reason() {
        let err = DataSet::try_new(&DataSetSpec {
            keywords: 1_000_000,
            ..small()
        })
        .unwrap_err();
        assert!(err.to_string().contains("keywords 1000000"), "{err}");
        let err = DataSet::try_new(&DataSetSpec {
            blacklist_fraction: 1.5,
            ..small()
        })
        .unwrap_err();
        assert!(err.to_string().contains("1.5"), "{err}");
    }

    #[test]
    fn the_pipeline_points_at_the_given_queue_index_and_nlp_service() {
        let spec = pipeline_spec("q1", "idx1", "http://127.0.0.1:18090/");
        assert_eq!(spec.queue.key, "q1");
        assert_eq!(spec.sink.index, "idx1");
        assert_eq!(spec.enrich[0].url, "http://127.0.0.1:18090/segment");
        let sets: Vec<(&str, &str)> = spec
            .keywords
            .sets
            .iter()
            .map(|s| (s.name.as_str(), s.file.as_str()))
            .collect();
        assert_eq!(
            sets,
            [(TOPICS_SET, TOPICS_FILE), (BLOCKED_SET, BLACKLIST_FILE)]
        );
    }

    #[test]
    fn keyword_files_hold_one_word_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataSet::new(&small());
        let generated = Generated {
            ids: data.ids().collect(),
            keywords: data.keywords().to_vec(),
            blacklist: data.blacklist().to_vec(),
            blacklisted_ids: HashSet::new(),
            spec: small(),
        };
        write_keyword_files(dir.path().join("kw"), &generated);
        let topics = std::fs::read_to_string(dir.path().join("kw").join(TOPICS_FILE)).unwrap();
        assert_eq!(topics.lines().collect::<Vec<_>>(), data.keywords());
        let black = std::fs::read_to_string(dir.path().join("kw").join(BLACKLIST_FILE)).unwrap();
        assert_eq!(black.lines().count(), 20);
    }
}
