//! The current keyword sets, and their reload when the files change.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use migrate_contract::error_chain;
use migrate_crds::KeywordsSpec;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Keywords, files};

/// The compiled keyword sets in use, shared by every task and replaced as a whole on reload.
///
/// A task takes [`KeywordsHandle::current`] once and keeps that `Arc` until it is done, so a
/// reload never changes the sets under a document half-way; the old sets are freed when the
/// last task using them ends.
#[derive(Clone)]
pub struct KeywordsHandle {
    shared: Arc<Shared>,
}

struct Shared {
    /// Held only to clone or replace the `Arc`, never while matching or building.
    current: RwLock<Arc<Keywords>>,
    reloads: AtomicU64,
    failed_reloads: AtomicU64,
}

impl KeywordsHandle {
    /// A handle holding `keywords`.
    #[must_use]
    pub fn new(keywords: Keywords) -> Self {
        Self {
            shared: Arc::new(Shared {
                current: RwLock::new(Arc::new(keywords)),
                reloads: AtomicU64::new(0),
                failed_reloads: AtomicU64::new(0),
            }),
        }
    }

    /// The sets in use now.
    #[must_use]
    pub fn current(&self) -> Arc<Keywords> {
        // A poisoned lock still holds a valid `Arc`: the writer only assigns it.
        Arc::clone(
            &self
                .shared
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Reloads that replaced the sets since the handle was made.
    #[must_use]
    pub fn reloads(&self) -> u64 {
        self.shared.reloads.load(Ordering::Relaxed)
    }

    /// Reloads that failed (and kept the sets in use) since the handle was made.
    #[must_use]
    pub fn failed_reloads(&self) -> u64 {
        self.shared.failed_reloads.load(Ordering::Relaxed)
    }

    fn replace(&self, keywords: Keywords) {
        let new = Arc::new(keywords);
        let old = std::mem::replace(
            &mut *self
                .shared
                .current
                .write()
                .unwrap_or_else(PoisonError::into_inner),
            new,
        );
        // The previous sets are dropped here, outside the lock, unless a task still uses them.
        drop(old);
    }

    /// Polls the keyword files in `dir` every `every` and swaps in newly compiled sets when
    /// their content changed, until `cancel` is cancelled.
    ///
    /// Each poll reads the files the spec names and hashes their bytes (no file-system
    /// notifications: a ConfigMap update swaps a symlink, which polling sees like any edit).
    /// Reading and compiling run on the blocking pool, off the tasks' path. A reload that fails
    /// (missing file, bad UTF-8, ...) logs the error with the file and keeps the sets in use;
    /// the same failing content is reported once, and the next change is tried again.
    pub fn spawn_reloader(
        &self,
        spec: KeywordsSpec,
        dir: PathBuf,
        every: Duration,
        cancel: CancellationToken,
    ) -> JoinHandle<()> {
        let handle = self.clone();
        let spec = Arc::new(spec);
        let dir = Arc::new(dir);
        tokio::spawn(async move {
            let mut seen = handle.current().fingerprint();
            let mut ticker = tokio::time::interval(every.max(Duration::from_millis(1)));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => break,
                    _ = ticker.tick() => {}
                }
                let (spec_now, dir_now) = (Arc::clone(&spec), Arc::clone(&dir));
                let poll =
                    tokio::task::spawn_blocking(move || poll(&spec_now, &dir_now, seen)).await;
                match poll {
                    Ok(Poll::Unchanged) => {}
                    Ok(Poll::Reloaded {
                        keywords,
                        fingerprint,
                    }) => {
                        seen = Some(fingerprint);
                        let keyword_count = keywords.keyword_count();
                        handle.replace(keywords);
                        handle.shared.reloads.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(keyword_count, dir = %dir.display(), "Keyword sets reloaded.");
                    }
                    Ok(Poll::Failed { error, fingerprint }) => {
                        seen = Some(fingerprint);
                        handle.shared.failed_reloads.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            file = error.file().unwrap_or(""),
                            set = error.set().unwrap_or(""),
                            reason = error.metric_label(),
                            error = %error_chain(&error),
                            "Keyword reload failed; keeping the sets in use."
                        );
                    }
                    Err(join) => {
                        handle.shared.failed_reloads.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %join, "Keyword reload task failed; keeping the sets in use.");
                    }
                }
            }
        })
    }
}

enum Poll {
    Unchanged,
    Reloaded {
        keywords: Keywords,
        fingerprint: u64,
    },
    Failed {
        error: super::KeywordsError,
        fingerprint: u64,
    },
}

/// Reads the files and compiles them when their fingerprint differs from `seen`.
fn poll(spec: &KeywordsSpec, dir: &std::path::Path, seen: Option<u64>) -> Poll {
    let snapshot = files::read_snapshot(spec, dir);
    let fingerprint = snapshot.fingerprint;
    if seen == Some(fingerprint) {
        return Poll::Unchanged;
    }
    match snapshot
        .lists
        .and_then(|lists| Keywords::from_lists(spec, &lists))
    {
        Ok(mut keywords) => {
            keywords.fingerprint = Some(fingerprint);
            Poll::Reloaded {
                keywords,
                fingerprint,
            }
        }
        Err(error) => Poll::Failed { error, fingerprint },
    }
}
