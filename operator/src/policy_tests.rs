//! Table-driven tests of the supervision policy.

use super::*;

const S: Duration = Duration::from_secs(1);

fn settings() -> Settings {
    Settings {
        mode: Mode::Continuous,
        replicas_override: None,
        min_replicas: 1,
        max_replicas: 4,
        target_backlog_per_worker: 100,
        scale_down_window: 60 * S,
        drain_settle: 5 * S,
        soft: Threshold::Percent(80),
        hard: Threshold::Percent(92),
        spec_limit_bytes: Some(1000),
        max_concurrent_restarts: 1,
        min_age: 10 * S,
        stale_after: 10 * S,
        recycle_after_tasks: None,
        recycle_jitter_percent: 0,
        memory_restarts: true,
    }
}

fn worker(name: &str) -> Worker {
    Worker {
        name: name.to_owned(),
        state: WorkerState::Running,
        age: 60 * S,
        ready: true,
        in_flight: 0,
        tasks_done: 0,
        memory: Some(MemoryReading {
            usage_bytes: 100,
            limit_bytes: Some(1000),
            age: S,
        }),
        outdated: false,
        asks_restart: false,
    }
}

fn using(mut w: Worker, bytes: u64) -> Worker {
    if let Some(m) = w.memory.as_mut() {
        m.usage_bytes = bytes;
    }
    w
}

fn busy(mut w: Worker, in_flight: u64) -> Worker {
    w.in_flight = in_flight;
    w
}

fn aged(mut w: Worker, age: Duration) -> Worker {
    w.age = age;
    w
}

fn obs(workers: Vec<Worker>, queued: u64) -> Observations {
    Observations {
        workers,
        backlog: Some(Backlog {
            queued,
            in_flight: 0,
        }),
        now: 1000 * S,
    }
}

fn run(settings: &Settings, o: &Observations) -> Decision {
    decide(settings, o, &PolicyState::default())
}

fn drains(d: &Decision) -> Vec<(String, RestartReason)> {
    d.actions
        .iter()
        .filter_map(|a| match a {
            Action::Drain { worker, reason, .. } => Some((worker.clone(), *reason)),
            _ => None,
        })
        .collect()
}

fn kills(d: &Decision) -> Vec<(String, RestartReason)> {
    d.actions
        .iter()
        .filter_map(|a| match a {
            Action::Kill { worker, reason, .. } => Some((worker.clone(), *reason)),
            _ => None,
        })
        .collect()
}

fn starts(d: &Decision) -> u32 {
    d.actions
        .iter()
        .map(|a| match a {
            Action::Start { count } => *count,
            _ => 0,
        })
        .sum()
}

fn reports(d: &Decision) -> Vec<&Report> {
    d.actions
        .iter()
        .filter_map(|a| match a {
            Action::Report(r) => Some(r),
            _ => None,
        })
        .collect()
}

/// Workers waiting, working, for their replacement to be Ready.
fn awaiting(d: &Decision) -> Vec<&str> {
    d.actions
        .iter()
        .filter_map(|a| match a {
            Action::Report(Report::AwaitingReplacement { waiting }) => Some(waiting),
            _ => None,
        })
        .flatten()
        .map(String::as_str)
        .collect()
}

/// Workers whose restart this round decided: drained now, or waiting for a replacement.
fn chosen(d: &Decision) -> Vec<&str> {
    let mut all: Vec<&str> = d
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Drain { worker, reason, .. } if *reason != RestartReason::ScaledDown => {
                Some(worker.as_str())
            }
            _ => None,
        })
        .collect();
    all.extend(awaiting(d));
    all
}

fn asking(mut w: Worker) -> Worker {
    w.asks_restart = true;
    w
}

fn starting(name: &str) -> Worker {
    Worker {
        state: WorkerState::Starting,
        ready: false,
        age: S,
        memory: None,
        ..worker(name)
    }
}

fn names(list: &[(String, RestartReason)]) -> Vec<&str> {
    list.iter().map(|(n, _)| n.as_str()).collect()
}

/// Desired workers = clamp(ceil(backlog / target), min, max), or the override when set.
#[test]
fn desired_workers_follow_the_backlog_within_bounds() {
    let cases: [(u64, Option<u32>, Mode, u32); 8] = [
        (0, None, Mode::Continuous, 1),
        (1, None, Mode::Continuous, 1),
        (100, None, Mode::Continuous, 1),
        (101, None, Mode::Continuous, 2),
        (350, None, Mode::Continuous, 4),
        (1_000_000, None, Mode::Continuous, 4),
        (1_000_000, Some(7), Mode::Continuous, 7),
        (0, None, Mode::Drain, 0),
    ];
    for (queued, replicas_override, mode, want) in cases {
        let s = Settings {
            replicas_override,
            mode,
            ..settings()
        };
        assert_eq!(
            s.desired_for(Backlog {
                queued,
                in_flight: 0
            }),
            want,
            "backlog {queued}"
        );
    }
}

#[test]
fn scale_up_happens_at_once() {
    let d = run(&settings(), &obs(vec![worker("a")], 350));
    assert_eq!(d.desired, 4);
    assert_eq!(starts(&d), 3);
    assert!(drains(&d).is_empty());
}

#[test]
fn scale_down_waits_for_the_stabilization_window() {
    let s = settings();
    let workers = vec![worker("a"), worker("b"), worker("c")];
    let mut o = obs(workers, 50);
    let first = decide(&s, &o, &PolicyState::default());
    assert!(drains(&first).is_empty(), "no drain before the window");
    assert_eq!(first.state.scale_down_since, Some(o.now));

    o.now += 30 * S;
    let mid = decide(&s, &o, &first.state);
    assert!(drains(&mid).is_empty(), "still inside the window");

    o.now += 30 * S;
    let last = decide(&s, &o, &mid.state);
    assert_eq!(drains(&last).len(), 2);
    assert!(
        drains(&last)
            .iter()
            .all(|(_, r)| *r == RestartReason::ScaledDown)
    );
    assert_eq!(last.state.scale_down_since, None);
}

#[test]
fn a_backlog_spike_inside_the_window_resets_it() {
    let s = settings();
    let mut o = obs(vec![worker("a"), worker("b")], 50);
    let first = decide(&s, &o, &PolicyState::default());
    o.now += 30 * S;
    o.backlog = Some(Backlog {
        queued: 200,
        in_flight: 0,
    });
    let spike = decide(&s, &o, &first.state);
    assert_eq!(spike.state.scale_down_since, None);
    o.now += 40 * S;
    o.backlog = Some(Backlog {
        queued: 50,
        in_flight: 0,
    });
    let after = decide(&s, &o, &spike.state);
    assert!(
        drains(&after).is_empty(),
        "the window restarted at the spike"
    );
}

#[test]
fn scale_down_stops_idle_workers_before_busy_ones() {
    let s = Settings {
        scale_down_window: Duration::ZERO,
        ..settings()
    };
    let cases: [(Vec<Worker>, u64, Vec<&str>); 4] = [
        (
            vec![busy(worker("a"), 5), worker("b"), busy(worker("c"), 1)],
            1,
            vec!["b", "c"],
        ),
        (
            vec![busy(worker("a"), 5), busy(worker("b"), 2), worker("c")],
            1,
            vec!["c", "b"],
        ),
        // Among idle workers, the one using most memory goes first.
        (
            vec![
                using(worker("a"), 100),
                using(worker("b"), 500),
                worker("c"),
            ],
            100,
            vec!["b", "a"],
        ),
        (
            vec![busy(worker("a"), 3), busy(worker("b"), 3)],
            60,
            vec!["a"],
        ),
    ];
    for (workers, queued, want) in cases {
        let d = run(&s, &obs(workers, queued));
        assert_eq!(names(&drains(&d)), want, "queued {queued}");
    }
}

#[test]
fn a_scale_override_wins_and_applies_at_once() {
    let s = Settings {
        replicas_override: Some(2),
        ..settings()
    };
    let d = run(
        &s,
        &obs(
            vec![worker("a"), worker("b"), worker("c"), worker("d")],
            100_000,
        ),
    );
    assert_eq!(d.desired, 2);
    assert_eq!(
        drains(&d).len(),
        2,
        "no stabilization window for an explicit count"
    );
    let d = run(
        &Settings {
            replicas_override: Some(6),
            ..settings()
        },
        &obs(vec![worker("a")], 0),
    );
    assert_eq!(d.desired, 6);
    assert_eq!(starts(&d), 5, "the override may exceed maxReplicas");
}

/// Surge strictly before stop: a worker over soft keeps working while its replacement starts
/// and becomes Ready, and is drained only then; nothing more starts meanwhile.
#[test]
fn over_the_soft_limit_the_worker_is_drained_only_once_its_replacement_is_ready() {
    let s = settings();
    // Round 1: the pool is at its desired size (1): a replacement starts, nothing stops.
    let d = run(&s, &obs(vec![using(worker("a"), 850)], 50));
    assert_eq!(d.desired, 1);
    assert_eq!(starts(&d), 1);
    assert!(drains(&d).is_empty(), "{:?}", d.actions);
    assert_eq!(awaiting(&d), ["a"]);
    // Round 2: the replacement is not Ready yet: still nothing stops, nothing more starts.
    let d = run(&s, &obs(vec![using(worker("a"), 870), starting("n")], 50));
    assert_eq!(starts(&d), 0, "{:?}", d.actions);
    assert!(drains(&d).is_empty(), "{:?}", d.actions);
    assert_eq!(awaiting(&d), ["a"]);
    // Round 3: the replacement is Ready: now the old worker is drained, and nothing starts or
    // is scaled down in its place.
    let d = run(&s, &obs(vec![using(worker("a"), 880), worker("n")], 50));
    assert_eq!(
        drains(&d),
        vec![("a".to_owned(), RestartReason::MemorySoft)]
    );
    assert_eq!(starts(&d), 0);
    assert!(awaiting(&d).is_empty());
    // Round 4: while it drains, the pool is whole.
    let mut draining = using(worker("a"), 880);
    draining.state = WorkerState::Draining(RestartReason::MemorySoft);
    let d = run(&s, &obs(vec![draining, worker("n")], 50));
    assert!(drains(&d).is_empty() && starts(&d) == 0, "{:?}", d.actions);
}

/// With spare Ready workers (the backlog wants fewer than run), the restart needs no surge.
#[test]
fn with_a_spare_ready_worker_the_restart_is_granted_at_once() {
    let d = run(
        &settings(),
        &obs(vec![using(worker("a"), 850), worker("b")], 50),
    );
    assert_eq!(names(&drains(&d)), ["a"]);
    assert_eq!(starts(&d), 0);
}

/// Once its replacement is Ready, a restart is not held back by another worker that is not
/// Ready (killed and restarting, or waiting for the search server): the pool keeps its count.
#[test]
fn a_ready_replacement_is_enough_whatever_other_workers_do() {
    let mut away = aged(worker("b"), 50 * S);
    away.ready = false;
    let surge = aged(worker("s"), 5 * S);
    let d = run(
        &settings(),
        &obs(vec![asking(worker("a")), away, surge], 150),
    );
    assert_eq!(d.desired, 2);
    assert_eq!(names(&drains(&d)), ["a"]);
    assert_eq!(starts(&d), 0);
}

/// A worker that is not Ready serves nothing: stopping it needs no replacement first (an
/// update rolling Pending pods would otherwise never start).
#[test]
fn a_worker_that_is_not_ready_is_restarted_without_waiting_for_a_surge() {
    let mut idle = using(worker("a"), 850);
    idle.ready = false;
    let d = run(&settings(), &obs(vec![idle], 50));
    assert_eq!(
        drains(&d),
        vec![("a".to_owned(), RestartReason::MemorySoft)]
    );
    assert_eq!(starts(&d), 1, "its replacement after it");
}

/// At `maxReplicas` the surge goes past it, by no more than the restarts in progress.
#[test]
fn at_max_replicas_the_surge_goes_past_it_by_the_restart_budget() {
    let workers = vec![
        using(worker("a"), 850),
        using(worker("b"), 860),
        worker("c"),
        worker("d"),
    ];
    let d = run(&settings(), &obs(workers, 100_000));
    assert_eq!(d.desired, 4);
    assert!(drains(&d).is_empty());
    assert_eq!(starts(&d), 1, "one surge: maxConcurrentRestarts is 1");
    assert_eq!(awaiting(&d), ["b"]);
}

/// A supervised worker asks at its soft line instead of draining itself; the policy acts on
/// the ask even when its own reading is below soft or stale, and still within the minimum age
/// and only while memory restarts are on.
#[test]
fn a_worker_asking_for_a_restart_is_restarted_like_one_over_soft() {
    let s = settings();
    let d = run(&s, &obs(vec![asking(worker("a")), worker("b")], 50));
    assert_eq!(
        drains(&d),
        vec![("a".to_owned(), RestartReason::MemorySoft)]
    );
    let mut stale = asking(worker("a"));
    if let Some(m) = stale.memory.as_mut() {
        m.age = 30 * S;
    }
    let d = run(&s, &obs(vec![stale, worker("b")], 50));
    assert_eq!(
        names(&drains(&d)),
        ["a"],
        "the ask is the worker's own reading"
    );
    let mut unread = asking(worker("a"));
    unread.memory = None;
    assert_eq!(chosen(&run(&s, &obs(vec![unread], 50))), ["a"]);
    let young = aged(asking(worker("a")), 5 * S);
    assert!(chosen(&run(&s, &obs(vec![young, worker("b")], 50))).is_empty());
    let off = Settings {
        memory_restarts: false,
        ..settings()
    };
    assert!(chosen(&run(&off, &obs(vec![asking(worker("a")), worker("b")], 50))).is_empty());
    // Over the hard line the ask does not matter: killed at once.
    let d = run(&s, &obs(vec![asking(using(worker("a"), 950))], 50));
    assert_eq!(kills(&d), vec![("a".to_owned(), RestartReason::MemoryHard)]);
}

/// Many workers asking at once is no restart storm: one surge and one restart per budget.
#[test]
fn many_workers_asking_at_once_restart_one_budget_at_a_time() {
    let workers: Vec<Worker> = ["a", "b", "c", "d"]
        .into_iter()
        .map(|n| asking(worker(n)))
        .collect();
    let d = run(&settings(), &obs(workers, 400));
    assert!(drains(&d).is_empty());
    assert_eq!(starts(&d), 1);
    assert_eq!(chosen(&d).len(), 1);
    assert!(reports(&d).contains(&&Report::RestartsThrottled {
        waiting: vec!["b".to_owned(), "c".to_owned(), "d".to_owned()]
    }));
}

#[test]
fn thresholds_apply_in_percent_and_in_bytes() {
    // (soft, hard, limit of the reading, usage, expected drain, expected kill)
    let cases = [
        (
            Threshold::Percent(80),
            Threshold::Percent(92),
            Some(1000),
            799,
            false,
            false,
        ),
        (
            Threshold::Percent(80),
            Threshold::Percent(92),
            Some(1000),
            800,
            true,
            false,
        ),
        (
            Threshold::Percent(80),
            Threshold::Percent(92),
            Some(1000),
            920,
            false,
            true,
        ),
        (
            Threshold::Bytes(500),
            Threshold::Bytes(700),
            None,
            499,
            false,
            false,
        ),
        (
            Threshold::Bytes(500),
            Threshold::Bytes(700),
            None,
            500,
            true,
            false,
        ),
        (
            Threshold::Bytes(500),
            Threshold::Bytes(700),
            Some(10_000),
            700,
            false,
            true,
        ),
        // The reading's own limit wins over the spec's.
        (
            Threshold::Percent(50),
            Threshold::Percent(90),
            Some(2000),
            1500,
            true,
            false,
        ),
    ];
    for (soft, hard, limit, usage, drain, kill) in cases {
        let s = Settings {
            soft,
            hard,
            ..settings()
        };
        let mut w = using(worker("a"), usage);
        if let Some(m) = w.memory.as_mut() {
            m.limit_bytes = limit;
        }
        let d = run(&s, &obs(vec![w], 50));
        assert_eq!(!chosen(&d).is_empty(), drain, "{soft} {hard} usage {usage}");
        assert_eq!(!kills(&d).is_empty(), kill, "{soft} {hard} usage {usage}");
    }
}

#[test]
fn percentages_without_any_limit_are_never_acted_on() {
    let s = Settings {
        spec_limit_bytes: None,
        ..settings()
    };
    let mut w = using(worker("a"), u64::MAX);
    if let Some(m) = w.memory.as_mut() {
        m.limit_bytes = None;
    }
    let d = run(&s, &obs(vec![w], 50));
    assert!(drains(&d).is_empty() && kills(&d).is_empty());
}

#[test]
fn over_the_hard_limit_the_worker_is_killed_at_once_whatever_its_age() {
    let d = run(
        &settings(),
        &obs(vec![aged(using(worker("a"), 930), S)], 50),
    );
    assert_eq!(kills(&d), vec![("a".to_owned(), RestartReason::MemoryHard)]);
    assert_eq!(starts(&d), 1, "the replacement starts at once");
}

/// `testOnly.noMemoryRestarts` (the control run): no line restarts a worker, not even the
/// hard one, so the leak reaches the kernel.
#[test]
fn without_memory_restarts_no_line_drains_or_kills() {
    let s = Settings {
        memory_restarts: false,
        ..settings()
    };
    let d = run(
        &s,
        &obs(vec![using(worker("a"), 850), using(worker("b"), 990)], 50),
    );
    assert!(drains(&d).is_empty() && kills(&d).is_empty(), "{d:?}");
}

#[test]
fn young_workers_are_not_drained_for_the_soft_limit() {
    let d = run(
        &settings(),
        &obs(vec![aged(using(worker("a"), 850), 5 * S)], 50),
    );
    assert!(chosen(&d).is_empty());
}

#[test]
fn memory_restarts_respect_the_concurrency_limit() {
    let workers = vec![
        using(worker("a"), 820),
        using(worker("b"), 880),
        using(worker("c"), 100),
    ];
    let d = run(&settings(), &obs(workers, 250));
    assert_eq!(chosen(&d), ["b"], "highest usage first, one at a time");
    assert!(reports(&d).contains(&&Report::RestartsThrottled {
        waiting: vec!["a".to_owned()]
    }));

    let two = Settings {
        max_concurrent_restarts: 2,
        ..settings()
    };
    let workers = vec![
        using(worker("a"), 820),
        using(worker("b"), 880),
        using(worker("c"), 100),
    ];
    assert_eq!(chosen(&run(&two, &obs(workers, 250))), ["b", "a"]);
}

#[test]
fn a_worker_already_draining_uses_the_restart_budget() {
    let mut draining = using(worker("a"), 850);
    draining.state = WorkerState::Draining(RestartReason::MemorySoft);
    let d = run(
        &settings(),
        &obs(vec![draining, using(worker("b"), 850)], 150),
    );
    assert!(drains(&d).is_empty());
    assert!(reports(&d).contains(&&Report::RestartsThrottled {
        waiting: vec!["b".to_owned()]
    }));
}

#[test]
fn every_worker_over_the_line_is_reported_not_restarted_at_once() {
    let workers = vec![
        using(worker("a"), 850),
        using(worker("b"), 860),
        using(worker("c"), 870),
    ];
    let d = run(&settings(), &obs(workers, 300));
    assert!(reports(&d).contains(&&Report::AllOverSoftLimit { workers: 3 }));
    assert_eq!(chosen(&d).len(), 1, "no restart storm");
}

#[test]
fn stale_and_missing_readings_are_reported_and_never_acted_on() {
    let mut stale = using(worker("a"), 990);
    if let Some(m) = stale.memory.as_mut() {
        m.age = 30 * S;
    }
    let mut missing = worker("b");
    missing.memory = None;
    let mut fresh_start = aged(worker("c"), S);
    fresh_start.memory = None;
    let d = run(&settings(), &obs(vec![stale, missing, fresh_start], 250));
    assert!(kills(&d).is_empty() && drains(&d).is_empty());
    let r = reports(&d);
    assert!(r.contains(&&Report::StaleReading {
        worker: "a".to_owned(),
        age: 30 * S
    }));
    assert!(r.contains(&&Report::MissingReading {
        worker: "b".to_owned()
    }));
    assert!(
        !r.contains(&&Report::MissingReading {
            worker: "c".to_owned()
        }),
        "start-up grace"
    );
}

#[test]
fn recycling_after_n_tasks_takes_the_memory_path() {
    let s = Settings {
        recycle_after_tasks: Some(1000),
        ..settings()
    };
    let mut w = worker("a");
    w.tasks_done = 1000;
    let mut fresh = worker("b");
    fresh.tasks_done = 999;
    let d = run(&s, &obs(vec![w.clone(), fresh.clone()], 150));
    assert_eq!(chosen(&d), ["a"]);
    assert_eq!(starts(&d), 1, "its replacement first");
    let d = run(&s, &obs(vec![w, fresh], 50));
    assert_eq!(drains(&d), vec![("a".to_owned(), RestartReason::Recycled)]);
    assert_eq!(starts(&d), 0, "a spare worker is Ready");
}

/// The operator recycles each worker at the jittered count that worker stops at itself, not at
/// the bare `recycleAfterTasks`: otherwise the jitter does nothing.
#[test]
fn recycling_honours_each_workers_jittered_count() {
    let s = Settings {
        recycle_after_tasks: Some(1000),
        recycle_jitter_percent: 10,
        ..settings()
    };
    let name = (0..)
        .map(|i| format!("job-worker-{i}"))
        .find(|n| recycle_target(n, 1000, 10) > 1000)
        .unwrap();
    let target = recycle_target(&name, 1000, 10);
    let mut w = worker(&name);
    w.tasks_done = 1000;
    let d = run(&s, &obs(vec![w.clone(), worker("spare")], 50));
    assert!(
        chosen(&d).is_empty(),
        "recycled at 1000, its target is {target}"
    );
    w.tasks_done = target;
    let d = run(&s, &obs(vec![w, worker("spare")], 50));
    assert_eq!(drains(&d), vec![(name, RestartReason::Recycled)]);
}

#[test]
fn a_spec_change_rolls_outdated_workers_one_budget_at_a_time_memory_first() {
    let outdated = |name: &str| {
        let mut w = worker(name);
        w.outdated = true;
        w
    };
    // Two outdated workers, a budget of one: one is drained (its replacement starts first),
    // the other waits.
    let d = run(
        &settings(),
        &obs(vec![outdated("a"), outdated("b"), worker("c")], 250),
    );
    assert_eq!(chosen(&d), ["a"]);
    assert!(drains(&d).is_empty(), "the replacement is Ready first");
    assert_eq!(starts(&d), 1, "the replacement starts first");
    assert!(d.actions.iter().any(|a| matches!(
        a,
        Action::Report(Report::RestartsThrottled { waiting }) if waiting == &vec!["b".to_owned()]
    )));
    let d = run(
        &settings(),
        &obs(vec![outdated("a"), outdated("b"), worker("c")], 150),
    );
    assert_eq!(drains(&d), vec![("a".to_owned(), RestartReason::Updated)]);
    // A worker draining for the update holds the budget.
    let mut draining = outdated("a");
    draining.state = WorkerState::Draining(RestartReason::Updated);
    let d = run(
        &settings(),
        &obs(vec![draining, outdated("b"), worker("c")], 250),
    );
    assert!(drains(&d).is_empty(), "{:?}", d.actions);
    // Memory goes before an update.
    let d = run(
        &settings(),
        &obs(vec![outdated("a"), using(worker("b"), 850)], 150),
    );
    assert_eq!(chosen(&d), ["b"]);
}

#[test]
fn exited_workers_are_reaped_with_their_reason() {
    let exited =
        |code: Option<i32>, signal: Option<i32>, oom: bool, asked: Option<RestartReason>| {
            let mut w = worker("x");
            w.state = WorkerState::Exited {
                status: ExitStatus {
                    code,
                    signal,
                    oom_killed: oom,
                    evicted: false,
                },
                asked,
            };
            w
        };
    let cases = [
        (
            exited(Some(10), None, false, None),
            Some(RestartReason::MemorySoft),
        ),
        (
            exited(Some(11), None, false, None),
            Some(RestartReason::MemoryHard),
        ),
        (
            exited(Some(12), None, false, None),
            Some(RestartReason::Recycled),
        ),
        (
            exited(None, Some(9), true, None),
            Some(RestartReason::OomKilled),
        ),
        (
            exited(Some(137), None, true, Some(RestartReason::MemorySoft)),
            Some(RestartReason::OomKilled),
        ),
        (
            exited(Some(0), None, false, Some(RestartReason::ScaledDown)),
            Some(RestartReason::ScaledDown),
        ),
        (
            exited(Some(0), None, false, Some(RestartReason::MemorySoft)),
            Some(RestartReason::MemorySoft),
        ),
        (
            exited(None, Some(9), false, Some(RestartReason::MemoryHard)),
            Some(RestartReason::MemoryHard),
        ),
        (exited(Some(0), None, false, None), None),
        (
            exited(None, Some(9), false, None),
            Some(RestartReason::Crashed),
        ),
        (
            exited(Some(101), None, false, None),
            Some(RestartReason::Crashed),
        ),
    ];
    for (w, want) in cases {
        let d = run(&settings(), &obs(vec![w.clone()], 50));
        assert!(
            d.actions.contains(&Action::Reap {
                worker: "x".to_owned(),
                reason: want
            }),
            "{:?} -> {:?}: {:?}",
            w.state,
            want,
            d.actions
        );
        assert_eq!(starts(&d), 1, "the exited worker is replaced");
    }
}

/// Every exit code the worker defines reaches the policy as the reason the worker meant: the
/// restart reason of the same name, none for a plain drain (nothing asked), `crashed` for a
/// fatal or configuration error, and the configuration error also stops new starts.
#[test]
fn every_worker_exit_code_round_trips_through_the_classifier() {
    for reason in ExitReason::ALL {
        let status = ExitStatus {
            code: Some(reason.code()),
            ..ExitStatus::default()
        };
        assert_eq!(ExitReason::from_code(reason.code()), Some(reason));
        let classified = classify_exit(&status, None);
        match reason {
            ExitReason::Drained => assert_eq!(classified, None, "{reason:?}"),
            ExitReason::Config => assert_eq!(classified, Some(RestartReason::Crashed)),
            _ => assert_eq!(
                classified.map(RestartReason::as_str),
                Some(reason.as_str()),
                "{reason:?} is counted under another name than the worker writes"
            ),
        }
        let mut w = worker("x");
        w.state = WorkerState::Exited {
            status,
            asked: None,
        };
        let d = run(&settings(), &obs(vec![w], 50));
        assert!(
            d.actions.contains(&Action::Reap {
                worker: "x".to_owned(),
                reason: classified
            }),
            "{reason:?}: {:?}",
            d.actions
        );
        assert_eq!(
            d.state.config_error,
            reason == ExitReason::Config,
            "{reason:?}"
        );
    }
}
#[test]
fn an_oom_kill_is_reported_with_the_last_reading() {
    let mut w = using(worker("x"), 990);
    w.state = WorkerState::Exited {
        status: ExitStatus {
            oom_killed: true,
            ..ExitStatus::default()
        },
        asked: None,
    };
    let d = run(&settings(), &obs(vec![w], 50));
    assert!(reports(&d).contains(&&Report::OomKilled {
        worker: "x".to_owned(),
        last_usage_bytes: Some(990)
    }));
}

#[test]
fn a_configuration_error_stops_new_starts() {
    let mut w = worker("x");
    w.state = WorkerState::Exited {
        status: ExitStatus {
            code: Some(78),
            ..ExitStatus::default()
        },
        asked: None,
    };
    let d = run(&settings(), &obs(vec![w], 5000));
    assert!(d.state.config_error);
    assert_eq!(starts(&d), 0);
    assert_eq!(d.desired, 0);
    assert!(reports(&d).contains(&&Report::ConfigError {
        worker: "x".to_owned()
    }));
}

#[test]
fn a_drain_job_completes_after_the_settle_period() {
    let s = Settings {
        mode: Mode::Drain,
        ..settings()
    };
    let mut o = obs(vec![worker("a")], 0);
    let first = decide(&s, &o, &PolicyState::default());
    assert!(!first.actions.contains(&Action::Complete));
    assert_eq!(starts(&first), 0, "no new worker for an empty queue");
    o.now += 5 * S;
    let done = decide(&s, &o, &first.state);
    assert!(done.actions.contains(&Action::Complete));
    assert!(done.state.complete);
    // Once complete, always complete.
    o.backlog = Some(Backlog {
        queued: 10,
        in_flight: 0,
    });
    assert!(
        decide(&s, &o, &done.state)
            .actions
            .contains(&Action::Complete)
    );
}

#[test]
fn in_flight_work_keeps_a_drain_job_open() {
    let s = Settings {
        mode: Mode::Drain,
        ..settings()
    };
    let mut o = obs(vec![busy(worker("a"), 1)], 0);
    let first = decide(&s, &o, &PolicyState::default());
    assert_eq!(first.state.idle_since, None);
    o.workers = vec![worker("a")];
    o.backlog = Some(Backlog {
        queued: 0,
        in_flight: 1,
    });
    o.now += 60 * S;
    let second = decide(&s, &o, &first.state);
    assert!(!second.actions.contains(&Action::Complete));
}

#[test]
fn an_unknown_backlog_keeps_the_pool_as_it_is() {
    let mut o = obs(vec![worker("a"), worker("b")], 0);
    o.backlog = None;
    let d = run(
        &Settings {
            scale_down_window: Duration::ZERO,
            ..settings()
        },
        &o,
    );
    assert!(reports(&d).contains(&&Report::BacklogUnknown));
    assert!(drains(&d).is_empty());
    assert_eq!(starts(&d), 0);
    assert_eq!(d.desired, 2);
}

#[test]
fn restart_reasons_have_their_documented_names() {
    let names: Vec<&str> = RestartReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        names,
        [
            "memory-soft",
            "memory-hard",
            "recycled",
            "oom-killed",
            "crashed",
            "evicted",
            "scaled-down",
            "updated"
        ]
    );
    for r in RestartReason::ALL {
        assert_eq!(RestartReason::from_name(r.as_str()), Some(r));
    }
}
