//! The supervision policy: one pure function from observations to actions.
//!
//! Both backends (Kubernetes pods and local processes) observe their workers, call [`decide`],
//! and carry out the [`Action`]s. Every decision the operator takes — scale up or down, drain a
//! worker that grew past its soft memory limit, kill one past its hard limit, recycle one after
//! its tasks, requeue what an exited worker held, finish a drained job — is therefore testable
//! as a table, without a cluster or a process.
//!
//! The rules, in the order they are applied:
//! 1. Every exited worker is reaped: its processing list is requeued and its exit is counted
//!    under a restart reason ([`classify_exit`]). A worker that exited with the configuration
//!    error code blocks new starts until the spec changes. Exit codes, restart reasons and the
//!    classifier between them are the worker contract's (`migrate_contract::exit`), re-exported
//!    here.
//! 2. Drain mode: once the queue is empty and nothing is in flight for the settle period, the
//!    job is complete; no new worker starts for an empty queue.
//! 3. Memory: a fresh reading at or above the hard limit kills the worker at once. At or above
//!    the soft limit — by the supervisor's reading, or because the worker asks for a restart
//!    (`migrate_contract::restart`: a supervised worker does not drain itself there) — a worker
//!    older than the minimum age is restarted gracefully, highest usage first, at most
//!    `maxConcurrentRestarts` at a time (draining ones and ones waiting for their replacement
//!    count). When every worker is over the soft line the limit is probably too low for the
//!    workload rather than a leak: that is reported, and restarts still go one budget at a
//!    time, never all at once. Stale or missing readings are reported and never acted on (a
//!    worker's own ask still is).
//! 4. Recycling after each worker's jittered task count (`migrate_contract::restart::
//!    recycle_target`, the count the worker itself stops at), and replacing a worker started
//!    from an older spec (reason `updated`: a rolling update), take the same path and budget
//!    as a soft-limit restart.
//! 5. Surge strictly before stop: a worker restarted for memory, an update or recycling is
//!    drained only once the pool without it still numbers the desired count and the youngest
//!    of the others (its replacement) is Ready; a worker that is not Ready serves nothing and
//!    needs no surge. Until then its replacement is started (a surge: up to `maxReplicas` plus the
//!    restarts in progress) and the worker keeps working. A hard-limit kill cannot wait: its
//!    replacement starts after it. With the backlog unknown, there is no desired size to
//!    surge above: restarts are granted at once and replaced after, as before.
//! 6. Scale: desired = `spec.replicas` with `spec.autoscaling: External`, else (Backlog)
//!    clamp(ceil(backlog / target), min, max).
//!    Scale up at once; scale down (backlog-based only) after the stabilization window, idle
//!    workers first, never a busy one while an idle one exists.

use std::time::Duration;

pub use migrate_contract::exit::{ExitReason, ExitStatus, RestartReason, classify_exit};
/// The queue, as read from Redis (the contract's type: the policy reads what the queue reports).
pub use migrate_contract::queue::Backlog;
use migrate_contract::restart::recycle_target;
use migrate_crds::memory::{Threshold, ThresholdError};
use migrate_crds::validate::container_memory_limit;
use migrate_crds::{MigrateJobSpec, Mode};

/// What a worker is doing, as far as the supervisor knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerState {
    /// Created, not ready yet.
    Starting,
    /// Running.
    Running,
    /// Asked to drain (SIGTERM sent or pod deleted with its grace period), for this reason.
    Draining(RestartReason),
    /// Gone. `asked` is the reason it was asked to stop for, if it was.
    Exited {
        /// How it ended.
        status: ExitStatus,
        /// The reason the supervisor drained or killed it for, if it did.
        asked: Option<RestartReason>,
    },
}

/// One memory reading of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryReading {
    /// Bytes in use (the larger of RSS and cgroup usage).
    pub usage_bytes: u64,
    /// The container's memory limit, when known.
    pub limit_bytes: Option<u64>,
    /// How old the reading is.
    pub age: Duration,
}

/// What the supervisor knows of one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    /// Pod or process name.
    pub name: String,
    /// What it is doing.
    pub state: WorkerState,
    /// Time since it was started.
    pub age: Duration,
    /// Passing its readiness check.
    pub ready: bool,
    /// Ids in its processing list.
    pub in_flight: u64,
    /// Tasks it finished so far.
    pub tasks_done: u64,
    /// Latest memory reading, if any.
    pub memory: Option<MemoryReading>,
    /// Started from an older spec than the job's current one: it is drained and replaced
    /// (reason `updated`), at most `memory.maxConcurrentRestarts` at a time.
    pub outdated: bool,
    /// It crossed its soft line and asks for a restart
    /// (`migrate_restart_requested_timestamp_seconds` above zero).
    pub asks_restart: bool,
}

/// Everything the policy looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observations {
    /// Every worker the backend knows, exited ones included until reaped.
    pub workers: Vec<Worker>,
    /// The queue; `None` when Redis could not be read this round.
    pub backlog: Option<Backlog>,
    /// Monotonic time of this observation (any fixed origin).
    pub now: Duration,
}

/// What the policy remembers between two decisions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyState {
    /// Since when the backlog has asked for fewer workers than run.
    pub scale_down_since: Option<Duration>,
    /// Drain mode: since when the queue has been empty with nothing in flight.
    pub idle_since: Option<Duration>,
    /// Drain mode: the job is complete.
    pub complete: bool,
    /// A worker exited with the configuration error code; no starts until the spec changes.
    pub config_error: bool,
}

/// Something the supervisor should tell people (a condition, an Event, a log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Every worker is above its soft limit: the limit is probably too low for the workload.
    AllOverSoftLimit {
        /// How many workers.
        workers: usize,
    },
    /// Workers over their soft limit wait because the restart budget is used.
    RestartsThrottled {
        /// Workers waiting.
        waiting: Vec<String>,
    },
    /// Workers to be restarted keep working until their replacements are Ready.
    AwaitingReplacement {
        /// Workers waiting.
        waiting: Vec<String>,
    },
    /// A worker's memory reading is older than `memory.staleAfterSeconds`; it is not acted on.
    StaleReading {
        /// The worker.
        worker: String,
        /// Age of the reading.
        age: Duration,
    },
    /// No memory reading from a worker past its start-up grace.
    MissingReading {
        /// The worker.
        worker: String,
    },
    /// A worker was OOM-killed anyway: raise the limit or lower the soft threshold.
    OomKilled {
        /// The worker.
        worker: String,
        /// Its last reading, if any.
        last_usage_bytes: Option<u64>,
    },
    /// A worker exited with the configuration error code.
    ConfigError {
        /// The worker.
        worker: String,
    },
    /// The queue could not be read; the worker count is left as it is.
    BacklogUnknown,
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start this many new workers.
    Start {
        /// How many.
        count: u32,
    },
    /// Ask a worker to finish its in-flight tasks and exit (SIGTERM, or delete the pod with
    /// its grace period).
    Drain {
        /// The worker.
        worker: String,
        /// Why.
        reason: RestartReason,
        /// Its memory when decided, if known.
        memory_bytes: Option<u64>,
    },
    /// Stop a worker at once (SIGKILL, or delete the pod with no grace); its in-flight ids are
    /// requeued when it is reaped.
    Kill {
        /// The worker.
        worker: String,
        /// Why.
        reason: RestartReason,
        /// Its memory when decided, if known.
        memory_bytes: Option<u64>,
    },
    /// Forget an exited worker: requeue its processing list, count its reason (if it is a
    /// restart), remove what is left of it.
    Reap {
        /// The worker.
        worker: String,
        /// The restart reason to count; `None` for a worker that finished normally.
        reason: Option<RestartReason>,
    },
    /// Drain mode finished: stop every remaining worker and mark the job Complete.
    Complete,
    /// Tell people.
    Report(Report),
}

/// The result of one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What to do, in order.
    pub actions: Vec<Action>,
    /// Workers wanted now.
    pub desired: u32,
    /// What to remember for the next decision.
    pub state: PolicyState,
}

/// The settings the policy needs, read once from a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Drain or Continuous.
    pub mode: Mode,
    /// `spec.replicas` with `spec.autoscaling: External`: a count set from outside instead of
    /// the backlog's.
    pub replicas_override: Option<u32>,
    /// Fewest workers.
    pub min_replicas: u32,
    /// Most workers autoscaling may ask for.
    pub max_replicas: u32,
    /// Backlog one worker is expected to handle.
    pub target_backlog_per_worker: u64,
    /// Scale-down stabilization window.
    pub scale_down_window: Duration,
    /// Drain mode settle period.
    pub drain_settle: Duration,
    /// Soft memory threshold.
    pub soft: Threshold,
    /// Hard memory threshold.
    pub hard: Threshold,
    /// The container limit from the spec, used when a reading carries none.
    pub spec_limit_bytes: Option<u64>,
    /// Most memory or recycle restarts in progress at once.
    pub max_concurrent_restarts: u32,
    /// Workers younger than this are not drained for the soft limit.
    pub min_age: Duration,
    /// Readings older than this are not acted on.
    pub stale_after: Duration,
    /// Recycle after about this many tasks.
    pub recycle_after_tasks: Option<u64>,
    /// Spread of the recycle count per worker, in percent either way.
    pub recycle_jitter_percent: u32,
    /// Whether memory.soft and memory.hard restart workers; off only under
    /// `testOnly.noMemoryRestarts`.
    pub memory_restarts: bool,
}

impl Settings {
    /// Reads the settings from a spec.
    ///
    /// # Errors
    /// [`ThresholdError`] when a memory threshold does not parse.
    pub fn from_spec(spec: &MigrateJobSpec) -> Result<Self, ThresholdError> {
        let w = &spec.workers;
        let m = &spec.memory;
        let non_negative = |v: i32| u32::try_from(v).unwrap_or(0);
        Ok(Self {
            mode: spec.mode,
            replicas_override: spec.fixed_replicas().map(non_negative),
            min_replicas: non_negative(w.min_replicas),
            max_replicas: non_negative(w.max_replicas),
            target_backlog_per_worker: u64::try_from(w.target_backlog_per_worker)
                .unwrap_or(1)
                .max(1),
            scale_down_window: Duration::from_secs(u64::from(w.scale_down_stabilization_seconds)),
            drain_settle: Duration::from_secs(u64::from(w.drain_settle_seconds)),
            soft: Threshold::parse("memory.soft", &m.soft)?,
            hard: Threshold::parse("memory.hard", &m.hard)?,
            spec_limit_bytes: container_memory_limit(spec),
            max_concurrent_restarts: m.max_concurrent_restarts.max(1),
            min_age: Duration::from_secs(u64::from(m.min_worker_age_seconds)),
            stale_after: Duration::from_secs(u64::from(m.stale_after_seconds)),
            recycle_after_tasks: w.recycle_after_tasks,
            recycle_jitter_percent: w.recycle_jitter_percent,
            memory_restarts: !spec
                .test_only
                .as_ref()
                .is_some_and(|t| t.no_memory_restarts),
        })
    }

    /// Soft and hard limits in bytes for a reading, when they can be known.
    #[must_use]
    pub fn limits_for(&self, reading: &MemoryReading) -> (Option<u64>, Option<u64>) {
        let limit = reading.limit_bytes.or(self.spec_limit_bytes);
        (self.soft.resolve(limit), self.hard.resolve(limit))
    }

    /// Workers the backlog asks for, before the stabilization window.
    #[must_use]
    pub fn desired_for(&self, backlog: Backlog) -> u32 {
        if let Some(n) = self.replicas_override {
            return n;
        }
        if self.mode == Mode::Drain && backlog.total() == 0 {
            return 0;
        }
        let want = backlog.total().div_ceil(self.target_backlog_per_worker);
        let want = u32::try_from(want).unwrap_or(u32::MAX);
        want.clamp(self.min_replicas, self.max_replicas.max(self.min_replicas))
    }
}

/// Decides what to do now. Pure: the same inputs give the same decision.
#[must_use]
pub fn decide(settings: &Settings, obs: &Observations, previous: &PolicyState) -> Decision {
    let mut state = previous.clone();
    let mut actions = Vec::new();
    let now = obs.now;

    // 1. Reap what exited.
    for w in &obs.workers {
        if let WorkerState::Exited { status, asked } = &w.state {
            if status.code == Some(ExitReason::Config.code()) {
                state.config_error = true;
                actions.push(Action::Report(Report::ConfigError {
                    worker: w.name.clone(),
                }));
            }
            let reason = classify_exit(status, *asked);
            if reason == Some(RestartReason::OomKilled) {
                actions.push(Action::Report(Report::OomKilled {
                    worker: w.name.clone(),
                    last_usage_bytes: w.memory.map(|m| m.usage_bytes),
                }));
            }
            actions.push(Action::Reap {
                worker: w.name.clone(),
                reason,
            });
        }
    }
    let live: Vec<&Worker> = obs
        .workers
        .iter()
        .filter(|w| !matches!(w.state, WorkerState::Exited { .. }))
        .collect();

    // 2. Drain mode completion.
    if settings.mode == Mode::Drain {
        let idle = obs
            .backlog
            .is_some_and(|b| b.total() == 0 && live.iter().all(|w| w.in_flight == 0));
        if idle {
            let since = *state.idle_since.get_or_insert(now);
            if now.saturating_sub(since) >= settings.drain_settle {
                state.complete = true;
            }
        } else {
            state.idle_since = None;
        }
    }
    if state.complete {
        actions.push(Action::Complete);
        return Decision {
            actions,
            desired: 0,
            state,
        };
    }

    // 3 and 4. Memory and recycling.
    let mut removed: Vec<&str> = Vec::new(); // killed or drained this round
    let mut candidates: Vec<(&Worker, RestartReason, Option<u64>, u64)> = Vec::new();
    let mut over_soft = 0usize;
    let mut active = 0usize;
    for w in &live {
        if matches!(w.state, WorkerState::Draining(_)) {
            continue;
        }
        active += 1;
        // A worker's own ask is acted on whatever the supervisor's reading: the worker compares
        // its own figure, fresh, every `checkIntervalMs`.
        let asks = settings.memory_restarts && w.asks_restart;
        let reading = match w.memory {
            None => {
                if w.age > settings.stale_after {
                    actions.push(Action::Report(Report::MissingReading {
                        worker: w.name.clone(),
                    }));
                }
                None
            }
            Some(reading) if reading.age > settings.stale_after => {
                actions.push(Action::Report(Report::StaleReading {
                    worker: w.name.clone(),
                    age: reading.age,
                }));
                if !asks {
                    continue;
                }
                None
            }
            Some(reading) => Some(reading),
        };
        if !settings.memory_restarts {
            if let Some(c) = routine_candidate(settings, w) {
                candidates.push(c);
            }
            continue;
        }
        let mut over = asks;
        if let Some(reading) = reading {
            let (soft, hard) = settings.limits_for(&reading);
            if hard.is_some_and(|h| reading.usage_bytes >= h) {
                actions.push(Action::Kill {
                    worker: w.name.clone(),
                    reason: RestartReason::MemoryHard,
                    memory_bytes: Some(reading.usage_bytes),
                });
                removed.push(&w.name);
                continue;
            }
            over |= soft.is_some_and(|s| reading.usage_bytes >= s);
        }
        if over {
            over_soft += 1;
            if w.age >= settings.min_age {
                let usage = reading.map(|r| r.usage_bytes);
                candidates.push((w, RestartReason::MemorySoft, usage, usage.unwrap_or(0)));
            }
            continue;
        }
        if let Some(c) = routine_candidate(settings, w) {
            candidates.push(c);
        }
    }
    if active >= 2 && over_soft == active {
        actions.push(Action::Report(Report::AllOverSoftLimit { workers: active }));
    }
    // Memory first (highest usage first), then updates, then recycling (most tasks first).
    candidates.sort_by(|a, b| {
        let rank = |r: RestartReason| match r {
            RestartReason::MemorySoft => 0u8,
            RestartReason::Updated => 1,
            _ => 2,
        };
        rank(a.1)
            .cmp(&rank(b.1))
            .then(b.3.cmp(&a.3))
            .then(a.0.name.cmp(&b.0.name))
    });
    let restarting = live
        .iter()
        .filter(|w| {
            matches!(
                w.state,
                WorkerState::Draining(
                    RestartReason::MemorySoft | RestartReason::Recycled | RestartReason::Updated
                )
            )
        })
        .count();
    let mut budget = usize::try_from(settings.max_concurrent_restarts)
        .unwrap_or(usize::MAX)
        .saturating_sub(restarting);
    let mut waiting = Vec::new();
    let mut chosen = Vec::new();
    for candidate in candidates {
        if budget == 0 {
            waiting.push(candidate.0.name.clone());
            continue;
        }
        budget -= 1;
        chosen.push(candidate);
    }
    if !waiting.is_empty() {
        actions.push(Action::Report(Report::RestartsThrottled { waiting }));
    }

    // 5. Surge before stop: grant a restart only while the Ready workers left without it still
    // number the desired count (the replacement counts once Ready); the others wait, working,
    // for a replacement started below.
    let backlog = obs
        .backlog
        .or(settings.replicas_override.map(|_| Backlog::default()));
    let desired = match backlog {
        Some(_) if state.config_error => 0,
        Some(b) => settings.desired_for(b),
        None => u32::try_from(active).unwrap_or(u32::MAX),
    };
    let desired_us = usize::try_from(desired).unwrap_or(usize::MAX);
    // A restart is granted once the pool without the worker still numbers the desired count
    // and the youngest of the others (its replacement, started for it) is Ready; a worker that
    // is not Ready serves nothing, so stopping it needs no surge (an update of Pending pods, a
    // worker whose search server is away). Counting the others rather than their readiness
    // keeps a crash elsewhere from holding back a restart whose replacement is up.
    let is_chosen = |w: &Worker| chosen.iter().any(|(c, ..)| c.name == w.name);
    let mut others: Vec<&Worker> = live
        .iter()
        .copied()
        .filter(|w| !matches!(w.state, WorkerState::Draining(_)))
        .filter(|w| !removed.contains(&w.name.as_str()))
        .collect();
    let replacement_ready = others
        .iter()
        .filter(|w| !is_chosen(w))
        .min_by_key(|w| w.age)
        .is_none_or(|w| w.ready);
    let mut pending = Vec::new();
    for (w, reason, memory_bytes, _) in chosen.iter().copied() {
        let stays = others.len().saturating_sub(1);
        if w.ready && backlog.is_some() && !(stays >= desired_us && replacement_ready) {
            pending.push(w.name.clone());
            continue;
        }
        others.retain(|o| o.name != w.name);
        actions.push(Action::Drain {
            worker: w.name.clone(),
            reason,
            memory_bytes,
        });
        removed.push(&w.name);
    }
    let surge = pending.len();
    if !pending.is_empty() {
        actions.push(Action::Report(Report::AwaitingReplacement {
            waiting: pending,
        }));
    }

    // 6. Scale, and the replacements of this round's kills and of the restarts waiting above.
    // Draining workers still hold their slot until they exit.
    let killed = actions
        .iter()
        .filter(|a| matches!(a, Action::Kill { .. }))
        .count();
    let live_after = live.len() - killed;
    let active_after = active - removed.len();
    if backlog.is_none() {
        actions.push(Action::Report(Report::BacklogUnknown));
        // Keep the pool as it is: replace what this round removed, within the cap.
        let cap = usize::try_from(settings.max_replicas).unwrap_or(usize::MAX);
        let start = removed.len().min(cap.saturating_sub(live_after));
        if start > 0 && !state.config_error {
            actions.push(Action::Start {
                count: u32::try_from(start).unwrap_or(u32::MAX),
            });
        }
        return Decision {
            actions,
            desired,
            state,
        };
    }
    // Workers waiting for their replacement are wanted on top of the desired count, and may
    // take the pool past `maxReplicas` by that many (at most the restart budget).
    let target = desired_us + surge;
    let cap = usize::try_from(settings.max_replicas.max(desired)).unwrap_or(usize::MAX) + surge;
    if target > active_after {
        state.scale_down_since = None;
        let start = (target - active_after).min(cap.saturating_sub(live_after));
        if start > 0 {
            actions.push(Action::Start {
                count: u32::try_from(start).unwrap_or(u32::MAX),
            });
        }
    } else if target < active_after {
        let immediate = settings.replicas_override.is_some();
        let since = *state.scale_down_since.get_or_insert(now);
        if immediate || now.saturating_sub(since) >= settings.scale_down_window {
            let excess = active_after - target;
            let mut pool: Vec<&Worker> = live
                .iter()
                .copied()
                .filter(|w| !matches!(w.state, WorkerState::Draining(_)))
                .filter(|w| !removed.contains(&w.name.as_str()))
                .collect();
            // Idle before busy; among idle, the one using most memory; among busy, the least
            // busy; then by name for a stable order.
            pool.sort_by(|a, b| {
                (a.in_flight > 0)
                    .cmp(&(b.in_flight > 0))
                    .then(a.in_flight.cmp(&b.in_flight))
                    .then(usage(b).cmp(&usage(a)))
                    .then(a.name.cmp(&b.name))
            });
            for w in pool.into_iter().take(excess) {
                actions.push(Action::Drain {
                    worker: w.name.clone(),
                    reason: RestartReason::ScaledDown,
                    memory_bytes: w.memory.map(|m| m.usage_bytes),
                });
            }
            state.scale_down_since = None;
        }
    } else {
        state.scale_down_since = None;
    }
    Decision {
        actions,
        desired,
        state,
    }
}

fn usage(w: &Worker) -> u64 {
    w.memory.map_or(0, |m| m.usage_bytes)
}

/// A worker to drain for a routine reason: an outdated spec first, then its task count.
fn routine_candidate<'a>(
    settings: &Settings,
    w: &'a Worker,
) -> Option<(&'a Worker, RestartReason, Option<u64>, u64)> {
    if w.outdated {
        return Some((
            w,
            RestartReason::Updated,
            w.memory.map(|m| m.usage_bytes),
            w.tasks_done,
        ));
    }
    recycle_candidate(settings, w)
}

fn recycle_candidate<'a>(
    settings: &Settings,
    w: &'a Worker,
) -> Option<(&'a Worker, RestartReason, Option<u64>, u64)> {
    let limit = recycle_target(
        &w.name,
        settings.recycle_after_tasks?,
        settings.recycle_jitter_percent,
    );
    (w.tasks_done >= limit).then(|| {
        (
            w,
            RestartReason::Recycled,
            w.memory.map(|m| m.usage_bytes),
            w.tasks_done,
        )
    })
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
