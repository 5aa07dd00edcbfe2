//! The progress line of the local supervisor, and a log writer that never tears it.
//!
//! On a terminal (and without `--no-progress`) an indicatif bar shows tasks done out of done
//! plus backlog, the rate, the backlog, workers ready of total and restarts by reason. Log
//! lines written through [`LogWriter`] hide the bar while they are printed, so the two never
//! interleave. Elsewhere (a pipe, a CI log) the same figures are logged every
//! [`PLAIN_EVERY`].

use std::collections::VecDeque;
use std::io::{IsTerminal as _, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the figures are logged when no bar is drawn.
pub const PLAIN_EVERY: Duration = Duration::from_secs(10);

/// Samples kept for the rate: enough for [`RATE_WINDOW`] at the fastest check interval.
const RATE_SAMPLES: usize = 128;
/// The rate is measured over this much recent time.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// The bar currently drawn, if any; [`LogWriter`] hides it while it writes.
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn active_bar() -> Option<ProgressBar> {
    ACTIVE.lock().ok().and_then(|bar| bar.clone())
}

/// A `tracing_subscriber` writer to stderr that suspends the progress bar around each line.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LogWriter
    }
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match active_bar() {
            Some(bar) => bar
                .suspend(|| std::io::stderr().write_all(buf))
                .map(|()| buf.len()),
            None => std::io::stderr().write_all(buf).map(|()| buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The figures shown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Figures {
    /// Tasks finished (indexed, filtered, skipped, dead).
    pub done: u64,
    /// Ids queued plus in flight, when known.
    pub backlog: Option<u64>,
    /// Workers passing their readiness check.
    pub ready: usize,
    /// Workers running (draining ones included).
    pub workers: usize,
    /// Restarts by reason, only the non-zero ones, e.g. `memory-soft 2`.
    pub restarts: Vec<String>,
}

/// The progress display and the rate it shows.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    /// The bar is drawn (from the first figures on).
    drawing: bool,
    samples: VecDeque<(Duration, u64)>,
    last_plain: Option<Duration>,
}

impl Progress {
    /// A bar on stderr when `show` and stderr is a terminal; plain log lines otherwise.
    #[must_use]
    pub fn new(show: bool) -> Self {
        let bar = (show && std::io::stderr().is_terminal()).then(|| {
            // Hidden until the first figures arrive, so that no empty bar is drawn.
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len}\n  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        });
        if let (Some(bar), Ok(mut active)) = (&bar, ACTIVE.lock()) {
            *active = Some(bar.clone());
        }
        Self {
            bar,
            drawing: false,
            samples: VecDeque::with_capacity(RATE_SAMPLES),
            last_plain: None,
        }
    }

    /// Tasks per second over the last [`RATE_WINDOW`], given a new count at `now`.
    pub fn rate(&mut self, now: Duration, done: u64) -> f64 {
        while self.samples.len() >= RATE_SAMPLES
            || self
                .samples
                .front()
                .is_some_and(|&(t, _)| now.saturating_sub(t) > RATE_WINDOW)
        {
            self.samples.pop_front();
        }
        self.samples.push_back((now, done));
        let (Some(&(t0, d0)), Some(&(t1, d1))) = (self.samples.front(), self.samples.back()) else {
            return 0.0;
        };
        let seconds = t1.saturating_sub(t0).as_secs_f64();
        #[allow(clippy::cast_precision_loss)] // display only
        let tasks = d1.saturating_sub(d0) as f64;
        if seconds > 0.0 { tasks / seconds } else { 0.0 }
    }

    /// Shows new figures at `now`.
    pub fn update(&mut self, now: Duration, figures: &Figures) {
        let rate = self.rate(now, figures.done);
        let backlog = figures
            .backlog
            .map_or_else(|| "?".to_owned(), |b| b.to_string());
        let restarts = if figures.restarts.is_empty() {
            "none".to_owned()
        } else {
            figures.restarts.join(", ")
        };
        let message = format!(
            "{rate:.0} docs/s · backlog {backlog} · workers {}/{} ready · restarts: {restarts}",
            figures.ready, figures.workers
        );
        match &self.bar {
            Some(bar) => {
                if !self.drawing {
                    self.drawing = true;
                    bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(4));
                }
                bar.set_length(figures.done.saturating_add(figures.backlog.unwrap_or(0)));
                bar.set_position(figures.done);
                bar.set_message(message);
                bar.tick();
            }
            None => {
                if self
                    .last_plain
                    .is_none_or(|t| now.saturating_sub(t) >= PLAIN_EVERY)
                {
                    self.last_plain = Some(now);
                    tracing::info!(done = figures.done, "Progress: {message}.");
                }
            }
        }
    }

    /// Removes the bar (the summary follows on stdout).
    pub fn finish(&mut self) {
        if let Ok(mut active) = ACTIVE.lock() {
            *active = None;
        }
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_rate_is_measured_over_the_recent_window() {
        let mut p = Progress::new(false);
        assert!(p.rate(Duration::ZERO, 0).abs() < f64::EPSILON);
        assert!((p.rate(S, 100) - 100.0).abs() < 1e-9);
        assert!((p.rate(2 * S, 300) - 150.0).abs() < 1e-9);
        // Twenty seconds later the early, slow samples are out of the window.
        for t in 3..=22 {
            p.rate(t * S, 300 + (u64::from(t) - 2) * 400);
        }
        assert!((p.rate(23 * S, 300 + 21 * 400) - 400.0).abs() < 1e-9);
    }

    #[test]
    fn the_rate_keeps_a_bounded_number_of_samples() {
        let mut p = Progress::new(false);
        for i in 0..10_000u64 {
            p.rate(Duration::from_millis(i), i);
        }
        assert!(p.samples.len() <= RATE_SAMPLES);
    }
}
