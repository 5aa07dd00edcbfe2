//! Which stage the current thread is working for: the allocator credits allocations to it.

use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::alloc::{current_slot, replace_slot};
use crate::stage::Stage;

/// The allocator's counter slot of a stage (1..=5; they always fit a byte).
fn slot_of(stage: Stage) -> u8 {
    u8::try_from(stage.index()).unwrap_or(0)
}

/// The stage the calling thread is currently attributed to, if any.
#[must_use]
pub fn current_stage() -> Option<Stage> {
    let slot = usize::from(current_slot());
    Stage::ALL.into_iter().find(|s| s.index() == slot)
}

/// Attributes the calling thread's allocations to a stage until dropped, then restores the
/// previous attribution. For synchronous code; async code uses [`in_stage`].
///
/// The guard is neither `Send` nor `Sync`: the attribution is a thread-local, so a guard held
/// across an `.await` in a spawned task would attribute whatever else that thread runs. The
/// compiler rejects that for `Send` futures.
#[derive(Debug)]
#[must_use = "the stage ends when the guard is dropped"]
pub struct StageGuard {
    previous: u8,
    _thread_bound: PhantomData<*const ()>,
}

impl Drop for StageGuard {
    fn drop(&mut self) {
        replace_slot(self.previous);
    }
}

/// Attributes the calling thread's allocations to `stage` until the guard is dropped.
///
/// ```
/// use migrate_worker::memory::{current_stage, enter_stage};
/// use migrate_worker::stage::Stage;
///
/// {
///     let _g = enter_stage(Stage::Keywords);
///     assert_eq!(current_stage(), Some(Stage::Keywords));
/// }
/// assert_eq!(current_stage(), None);
/// ```
pub fn enter_stage(stage: Stage) -> StageGuard {
    let previous = replace_slot(slot_of(stage));
    StageGuard {
        previous,
        _thread_bound: PhantomData,
    }
}

pin_project_lite::pin_project! {
    /// A future whose every poll runs attributed to one stage (see [`in_stage`]).
    #[derive(Debug)]
    #[must_use = "futures do nothing unless polled"]
    pub struct Staged<F> {
        #[pin]
        inner: F,
        stage: Stage,
    }
}

impl<F: Future> Future for Staged<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _guard = enter_stage(*this.stage);
        this.inner.poll(cx)
    }
}

/// Runs `fut` with its allocations attributed to `stage`: the thread-local is set for the
/// duration of each poll and restored afterwards, so whatever else the thread polls in between
/// is not attributed to `stage`.
///
/// Tasks spawned from inside `fut` (`tokio::spawn`) are not covered: wrap them too. Blocks
/// freed later, outside the stage, are still debited from `stage` (the allocator records the
/// owner in each block).
///
/// ```
/// use migrate_worker::memory::{current_stage, in_stage};
/// use migrate_worker::stage::Stage;
///
/// let fut = in_stage(Stage::Source, async { current_stage() });
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// assert_eq!(rt.block_on(fut), Some(Stage::Source));
/// ```
pub fn in_stage<F: IntoFuture>(stage: Stage, fut: F) -> Staged<F::IntoFuture> {
    Staged {
        inner: fut.into_future(),
        stage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_nest_and_restore_the_outer_stage() {
        assert_eq!(current_stage(), None);
        {
            let _outer = enter_stage(Stage::Source);
            {
                let _inner = enter_stage(Stage::Enrich);
                assert_eq!(current_stage(), Some(Stage::Enrich));
            }
            assert_eq!(current_stage(), Some(Stage::Source));
        }
        assert_eq!(current_stage(), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_staged_future_sets_its_stage_only_while_polled() {
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let staged = tokio::spawn(in_stage(Stage::Sink, async move {
            let before = current_stage();
            let _ = started_tx.send(());
            let _ = rx.await;
            (before, current_stage())
        }));
        started_rx.await.unwrap();
        // The staged task ran on this thread and is parked: this task is not in a stage.
        assert_eq!(current_stage(), None);
        tx.send(()).unwrap();
        let (before, after) = staged.await.unwrap();
        assert_eq!(before, Some(Stage::Sink));
        assert_eq!(after, Some(Stage::Sink));
        assert_eq!(current_stage(), None);
    }
}
