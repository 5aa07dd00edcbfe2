//! The testbed's NLP service: Chinese word segmentation (jieba) and a small sentiment score,
//! over HTTP, with failure injection that tests trigger from the text they send.
//!
//! | endpoint | request | answer |
//! |---|---|---|
//! | `POST /segment` | `{"text": "..."}` | `{"tokens": ["...", ...]}`: jieba's cut with HMM, whitespace tokens dropped |
//! | `POST /score` | `{"text": "..."}` | `{"score": f64, "positive": n, "negative": n}`: tokens found in a built-in lexicon, `score = (positive - negative) / (positive + negative)`, 0 without any |
//! | `GET /healthz` | | `{"status": "ok"}` |
//!
//! Errors are JSON, `{"error": "..."}`: 400 for a body that is not `{"text": string}`, 413 for a
//! body above the limit (1 MiB by default), 503 with `Retry-After: 1` when more requests are
//! in flight than allowed (1,024 by default).
//!
//! # Failure injection
//! A text sent to `/segment` or `/score` that contains a marker makes the service misbehave,
//! checked in this order:
//! - `[nlp:slow]`: waits [`Config::slow`] (5 s by default) before answering (timeout tests);
//! - `[nlp:400]`: answers 400 `{"error": "injected failure: [nlp:400]"}`;
//! - `[nlp:503-once]`: answers 503 the first time this exact text is seen (on either endpoint),
//!   then normally. The service remembers the last 10,000 such texts (by a 64-bit hash), so a
//!   text forgotten after 10,000 newer ones fails once more.
//!
//! Markers are otherwise text like any other (they are segmented too).

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jieba_rs::Jieba;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

/// Marker: wait [`Config::slow`] before answering.
pub const MARK_SLOW: &str = "[nlp:slow]";
/// Marker: answer 400.
pub const MARK_400: &str = "[nlp:400]";
/// Marker: answer 503 the first time the text is seen.
pub const MARK_503_ONCE: &str = "[nlp:503-once]";
/// How many `[nlp:503-once]` texts are remembered.
pub const SEEN_CAPACITY: usize = 10_000;
/// Texts up to this many bytes are processed on the request's task; longer ones on the
/// blocking pool, at most [`Config::max_concurrency`] at once.
const INLINE_BYTES: usize = 4 * 1024;

/// Words counted as positive by `/score`.
pub const POSITIVE: &[&str] = &[
    "好", "优秀", "成功", "喜欢", "满意", "精彩", "美好", "幸福", "快乐", "高兴", "支持", "进步",
    "提高", "增长", "安全", "健康", "优质", "稳定", "繁荣", "创新", "胜利", "感谢", "温暖", "友好",
    "出色", "可靠", "漂亮", "开心", "积极", "顺利", "丰富", "赞赏",
];
/// Words counted as negative by `/score`.
pub const NEGATIVE: &[&str] = &[
    "坏", "失败", "问题", "困难", "危险", "损失", "下降", "糟糕", "讨厌", "失望", "痛苦", "悲伤",
    "愤怒", "担心", "风险", "事故", "危机", "错误", "污染", "腐败", "贫困", "暴力", "欺骗", "诈骗",
    "投诉", "亏损", "违法", "冲突", "灾难", "批评", "消极", "恶劣",
];

/// Limits and knobs of the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Requests admitted at once (reading, waiting, computing); more get 503 at once.
    pub max_in_flight: usize,
    /// Long texts segmented at once on the blocking pool.
    pub max_concurrency: usize,
    /// How long a `[nlp:slow]` text waits.
    pub slow: Duration,
}

impl Default for Config {
    /// 1 MiB bodies, 1,024 requests in flight, one long text per CPU, 5 s slow.
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_in_flight: 1_024,
            max_concurrency: std::thread::available_parallelism().map_or(2, usize::from),
            slow: Duration::from_secs(5),
        }
    }
}

/// An error answer, written as `{"error": "<message>"}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not `{"text": string}`.
    #[error("invalid request body: {0}")]
    BadRequest(String),
    /// The body could not be read (too large: 413, or cut short).
    #[error("cannot read the request body: {message}")]
    Body {
        /// The status to answer.
        status: StatusCode,
        /// What the body reader said.
        message: String,
    },
    /// A failure injected by a marker in the text.
    #[error("injected failure: {marker}")]
    Injected {
        /// The status to answer.
        status: StatusCode,
        /// The marker that asked for it.
        marker: &'static str,
    },
    /// Too many requests in flight.
    #[error("overloaded: {0} requests in flight")]
    Overloaded(usize),
    /// A segmentation task died.
    #[error("segmentation failed")]
    Internal,
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Body { status, .. } | Self::Injected { status, .. } => *status,
            Self::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (
            status,
            axum::Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

#[derive(Deserialize)]
struct TextRequest {
    text: String,
}

/// The answer of `/segment`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Segmented {
    /// The tokens, in order.
    pub tokens: Vec<String>,
}

/// The answer of `/score`.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Scored {
    /// `(positive - negative) / (positive + negative)`, 0 when both are 0.
    pub score: f64,
    /// Tokens found in [`POSITIVE`].
    pub positive: u64,
    /// Tokens found in [`NEGATIVE`].
    pub negative: u64,
}

/// The last [`SEEN_CAPACITY`] hashes of `[nlp:503-once]` texts, oldest first out.
#[derive(Default)]
struct Seen {
    set: HashSet<u64>,
    order: VecDeque<u64>,
}

impl Seen {
    /// Records `hash`; true when it was not known (the first sighting).
    fn first_sighting(&mut self, hash: u64) -> bool {
        if self.set.contains(&hash) {
            return false;
        }
        if self.order.len() >= SEEN_CAPACITY
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.set.insert(hash);
        self.order.push_back(hash);
        true
    }
}

struct Inner {
    jieba: Arc<Jieba>,
    config: Config,
    in_flight: AtomicUsize,
    blocking: Semaphore,
    seen: Mutex<Seen>,
    positive: HashSet<&'static str>,
    negative: HashSet<&'static str>,
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct Nlp(Arc<Inner>);

impl Nlp {
    /// The service with a segmenter (build it once: `Jieba::new()` takes a while) and limits.
    #[must_use]
    pub fn new(jieba: Arc<Jieba>, config: Config) -> Self {
        Self(Arc::new(Inner {
            jieba,
            blocking: Semaphore::new(config.max_concurrency.max(1)),
            config,
            in_flight: AtomicUsize::new(0),
            seen: Mutex::new(Seen::default()),
            positive: POSITIVE.iter().copied().collect(),
            negative: NEGATIVE.iter().copied().collect(),
        }))
    }

    /// The routes, with the body limit and the in-flight limit.
    pub fn router(self) -> Router {
        let limit = self.0.config.max_body_bytes;
        let work = Router::new()
            .route("/segment", post(segment))
            .route("/score", post(score))
            .layer(middleware::from_fn_with_state(self.clone(), admit))
            .layer(DefaultBodyLimit::max(limit));
        Router::new()
            .route(
                "/healthz",
                get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
            )
            .merge(work)
            .with_state(self)
    }

    /// jieba's cut with HMM, without whitespace tokens.
    #[must_use]
    pub fn tokens(&self, text: &str) -> Vec<String> {
        self.0
            .jieba
            .cut(text, true)
            .into_iter()
            .map(|t| t.word)
            .filter(|w| !w.trim().is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The sentiment of `text` from the lexicon.
    #[must_use]
    pub fn score(&self, text: &str) -> Scored {
        let (mut positive, mut negative) = (0u64, 0u64);
        for token in self.0.jieba.cut(text, true) {
            if self.0.positive.contains(token.word) {
                positive += 1;
            } else if self.0.negative.contains(token.word) {
                negative += 1;
            }
        }
        let total = positive + negative;
        let score = if total == 0 {
            0.0
        } else {
            (positive as f64 - negative as f64) / total as f64
        };
        Scored {
            score,
            positive,
            negative,
        }
    }

    /// Reads the body, applies the markers, then runs `work` on the text (on the blocking pool,
    /// bounded, when the text is long).
    async fn handle<T: Send + 'static>(
        &self,
        body: Result<Bytes, BytesRejection>,
        endpoint: &'static str,
        work: fn(&Nlp, &str) -> T,
    ) -> Result<T, ApiError> {
        let body = body.map_err(|r| ApiError::Body {
            status: r.status(),
            message: r.body_text(),
        })?;
        let request: TextRequest =
            serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        drop(body);
        let text = request.text;
        self.inject(&text, endpoint).await?;
        if text.len() <= INLINE_BYTES {
            return Ok(work(self, &text));
        }
        let _permit = self
            .0
            .blocking
            .acquire()
            .await
            .map_err(|_| ApiError::Internal)?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || work(&this, &text))
            .await
            .map_err(|_| ApiError::Internal)
    }

    async fn inject(&self, text: &str, endpoint: &'static str) -> Result<(), ApiError> {
        if text.contains(MARK_SLOW) {
            tracing::info!(
                endpoint,
                delay_ms = self.0.config.slow.as_millis() as u64,
                "Injected delay."
            );
            tokio::time::sleep(self.0.config.slow).await;
        }
        if text.contains(MARK_400) {
            tracing::info!(endpoint, "Injected 400.");
            return Err(ApiError::Injected {
                status: StatusCode::BAD_REQUEST,
                marker: MARK_400,
            });
        }
        if text.contains(MARK_503_ONCE) {
            let mut hasher = DefaultHasher::new();
            text.hash(&mut hasher);
            let first = self
                .0
                .seen
                .lock()
                .map(|mut seen| seen.first_sighting(hasher.finish()))
                .unwrap_or(false);
            if first {
                tracing::info!(endpoint, "Injected 503 (first sighting of this text).");
                return Err(ApiError::Injected {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    marker: MARK_503_ONCE,
                });
            }
        }
        Ok(())
    }
}

/// Admits a request while fewer than `max_in_flight` are in flight; else 503 at once.
async fn admit(State(nlp): State<Nlp>, request: Request, next: Next) -> Response {
    let limit = nlp.0.config.max_in_flight;
    // The guard gives the slot back even when the client goes away and the request's future
    // is dropped mid-way.
    let slot = InFlight::enter(&nlp);
    if slot.before >= limit {
        tracing::warn!(
            in_flight = slot.before,
            limit,
            "Request refused: too many in flight."
        );
        return ApiError::Overloaded(slot.before).into_response();
    }
    next.run(request).await
}

/// One request counted in `in_flight` for as long as it lives.
struct InFlight {
    nlp: Nlp,
    before: usize,
}

impl InFlight {
    fn enter(nlp: &Nlp) -> Self {
        let before = nlp.0.in_flight.fetch_add(1, Ordering::AcqRel);
        Self {
            nlp: nlp.clone(),
            before,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.nlp.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn segment(State(nlp): State<Nlp>, body: Result<Bytes, BytesRejection>) -> Response {
    match nlp.handle(body, "segment", |n, t| n.tokens(t)).await {
        Ok(tokens) => axum::Json(Segmented { tokens }).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn score(State(nlp): State<Nlp>, body: Result<Bytes, BytesRejection>) -> Response {
    match nlp.handle(body, "score", Nlp::score).await {
        Ok(scored) => axum::Json(scored).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then finishes the requests in
/// flight.
///
/// # Errors
/// When accepting connections fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::LazyLock;
    use std::time::Instant;

    use super::*;

    static JIEBA: LazyLock<Arc<Jieba>> = LazyLock::new(|| Arc::new(Jieba::new()));

    /// Starts the service on 127.0.0.1:0 and returns its base URL.
    async fn start(config: Config) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let router = Nlp::new(Arc::clone(&JIEBA), config).router();
        tokio::spawn(serve(listener, router, std::future::pending()));
        format!("http://{addr}")
    }

    async fn post(
        base: &str,
        path: &str,
        body: serde_json::Value,
    ) -> (StatusCode, serde_json::Value) {
        let response = reqwest::Client::new()
            .post(format!("{base}{path}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        (status, response.json().await.unwrap())
    }

    #[tokio::test]
    async fn segment_cuts_chinese_text_into_words_without_whitespace_tokens() {
        let base = start(Config::default()).await;
        let (status, body) = post(
            &base,
            "/segment",
            serde_json::json!({"text": "我来到北京清华大学 \n 我们中出了一个叛徒"}),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let tokens: Segmented = serde_json::from_value(body).unwrap();
        assert_eq!(
            tokens.tokens,
            [
                "我",
                "来到",
                "北京",
                "清华大学",
                "我们",
                "中出",
                "了",
                "一个",
                "叛徒"
            ]
        );
    }

    #[tokio::test]
    async fn score_counts_lexicon_words() {
        let base = start(Config::default()).await;
        let (status, body) = post(
            &base,
            "/score",
            serde_json::json!({"text": "这次合作非常成功，大家都很满意，只有一个问题。"}),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let scored: Scored = serde_json::from_value(body).unwrap();
        assert_eq!((scored.positive, scored.negative), (2, 1));
        assert!((scored.score - 1.0 / 3.0).abs() < 1e-9, "{}", scored.score);
        let (_, body) = post(&base, "/score", serde_json::json!({"text": "今天星期三"})).await;
        assert_eq!(
            body,
            serde_json::json!({"score": 0.0, "positive": 0, "negative": 0})
        );
    }

    #[tokio::test]
    async fn healthz_answers_ok() {
        let base = start(Config::default()).await;
        let response = reqwest::get(format!("{base}/healthz")).await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
    }

    #[tokio::test]
    async fn a_body_that_is_not_a_text_object_gets_a_json_400() {
        let base = start(Config::default()).await;
        let (status, body) = post(&base, "/segment", serde_json::json!({"txt": "x"})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"].as_str().unwrap().contains("text"), "{body}");
        let response = reqwest::Client::new()
            .post(format!("{base}/score"))
            .body("not json")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400);
    }

    #[tokio::test]
    async fn a_body_over_the_limit_gets_a_json_413() {
        let base = start(Config {
            max_body_bytes: 1_000,
            ..Config::default()
        })
        .await;
        let (status, body) = post(
            &base,
            "/segment",
            serde_json::json!({"text": "字".repeat(1_000)}),
        )
        .await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(body["error"].is_string(), "{body}");
        let (status, _) = post(
            &base,
            "/segment",
            serde_json::json!({"text": "字".repeat(100)}),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn the_400_marker_fails_every_time_with_a_json_error() {
        let base = start(Config::default()).await;
        for _ in 0..2 {
            let (status, body) = post(
                &base,
                "/segment",
                serde_json::json!({"text": "标题[nlp:400]"}),
            )
            .await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert_eq!(body["error"], "injected failure: [nlp:400]");
        }
    }

    #[tokio::test]
    async fn the_503_once_marker_fails_only_the_first_time_a_text_is_seen() {
        let base = start(Config::default()).await;
        let text = serde_json::json!({"text": "标题一[nlp:503-once]"});
        let (first, _) = post(&base, "/segment", text.clone()).await;
        let (second, body) = post(&base, "/segment", text).await;
        assert_eq!(
            (first, second),
            (StatusCode::SERVICE_UNAVAILABLE, StatusCode::OK)
        );
        assert!(body["tokens"].is_array());
        let (other, _) = post(
            &base,
            "/segment",
            serde_json::json!({"text": "标题二[nlp:503-once]"}),
        )
        .await;
        assert_eq!(
            other,
            StatusCode::SERVICE_UNAVAILABLE,
            "another text fails once too"
        );
    }

    #[test]
    fn the_memory_of_seen_texts_is_bounded_and_forgets_the_oldest() {
        let mut seen = Seen::default();
        for h in 0..(SEEN_CAPACITY as u64 + 1) {
            assert!(seen.first_sighting(h));
        }
        assert_eq!(seen.set.len(), SEEN_CAPACITY);
        assert!(seen.first_sighting(0), "the oldest was forgotten");
        assert!(
            !seen.first_sighting(SEEN_CAPACITY as u64),
            "a recent one is remembered"
        );
    }

    #[tokio::test]
    async fn the_slow_marker_delays_the_answer() {
        let base = start(Config {
            slow: Duration::from_millis(300),
            ..Config::default()
        })
        .await;
        let started = Instant::now();
        let (status, _) = post(
            &base,
            "/segment",
            serde_json::json!({"text": "慢[nlp:slow]"}),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn requests_beyond_the_in_flight_limit_get_503_at_once() {
        let base = start(Config {
            max_in_flight: 1,
            slow: Duration::from_secs(2),
            ..Config::default()
        })
        .await;
        let slow = {
            let base = base.clone();
            tokio::spawn(async move {
                post(&base, "/segment", serde_json::json!({"text": "[nlp:slow]"})).await
            })
        };
        // Wait until the slow request is admitted: then the next one must be refused.
        let deadline = Instant::now() + Duration::from_secs(5);
        let refused = loop {
            let response = reqwest::Client::new()
                .post(format!("{base}/segment"))
                .json(&serde_json::json!({"text": "快"}))
                .send()
                .await
                .unwrap();
            if response.status().as_u16() == 503 {
                break Some(response);
            }
            if Instant::now() > deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let refused = refused.expect("a second request while one is in flight was never refused");
        assert_eq!(refused.headers()["retry-after"], "1");
        assert_eq!(slow.await.unwrap().0, StatusCode::OK);
    }

    /// A client that gives up on a slow request must not leave its slot taken for good.
    #[tokio::test]
    async fn a_request_abandoned_by_its_client_frees_its_slot() {
        let config = Config {
            max_in_flight: 1,
            slow: Duration::from_secs(30),
            ..Config::default()
        };
        let base = start(config).await;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let abandoned = client
            .post(format!("{base}/segment"))
            .json(&serde_json::json!({"text": "[nlp:slow]"}))
            .send()
            .await;
        assert!(abandoned.unwrap_err().is_timeout());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (status, _) = post(&base, "/segment", serde_json::json!({"text": "快"})).await;
            if status == StatusCode::OK {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the abandoned request still holds the only slot"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_long_text_is_segmented_on_the_blocking_pool_with_the_same_result() {
        let base = start(Config::default()).await;
        let text = "我们中出了一个叛徒。".repeat(1_000);
        let (status, body) = post(&base, "/segment", serde_json::json!({"text": text})).await;
        assert_eq!(status, StatusCode::OK);
        let tokens: Segmented = serde_json::from_value(body).unwrap();
        // 我们 / 中出 / 了 / 一个 / 叛徒 / 。
        assert_eq!(tokens.tokens.len(), 6_000);
    }
}
