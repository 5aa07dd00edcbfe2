//! One pod's life on the runner's node, from binding to deletion: an IP, a folder with the
//! volumes, one process per container, memory enforcement, probes, restarts, status, and the
//! graceful stop when the pod is deleted.
//!
//! Everything a pod task waits on is bounded: the latest pod object arrives on a `watch`
//! channel (one value), process exits and probe results on channels of [`EVENTS`] items, and
//! the status goes to a writer task through another `watch` channel (only the latest status is
//! ever written; an unchanged one is not).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, PodStatus, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Client, ResourceExt};
use nix::sys::signal::Signal;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{Config, IpPool};
use crate::env::{self, Facts, Sources};
use crate::node::{Capacity, HOST_IP};
use crate::oom::{self, SAMPLE_EVERY, Verdict};
use crate::probe::{self, Tracker};
use crate::process::{self, Ended, Launch};
use crate::quantity;
use crate::rewrite::Rewriter;
use crate::status::{self, ContainerView, PodView, State, Terminated};
use crate::volumes;

/// Capacity of each pod task's channels (process exits, probe results).
pub const EVENTS: usize = 16;
/// Delay before a container whose configuration could not be made is tried again.
const CONFIG_RETRY: Duration = Duration::from_secs(2);
/// A container that ran this long without failing starts its restart back-off afresh.
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// The default `terminationMessagePath`.
const DEFAULT_MESSAGE_PATH: &str = "/dev/termination-log";
/// How long a pod task waits for killed processes to be reaped.
const REAP_WAIT: Duration = Duration::from_secs(5);
/// Log rotation is checked every this many ticks.
const ROTATE_EVERY_TICKS: u32 = 20;
/// Longest wait for one API read.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// What every pod task shares.
pub struct Shared {
    /// The API client.
    pub client: Client,
    /// The runner's settings.
    pub config: Arc<Config>,
    /// What the node offers.
    pub capacity: Capacity,
    /// Pod IPs.
    pub ips: Mutex<IpPool>,
    /// For probes.
    pub http: reqwest::Client,
    /// The runner's `PATH`, given to every container.
    pub path: String,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("node", &self.config.node_name)
            .finish_non_exhaustive()
    }
}

/// The folder of a pod: `<state>/pods/<namespace>_<name>`.
#[must_use]
pub fn pod_dir(state_dir: &Path, namespace: &str, name: &str) -> PathBuf {
    state_dir.join("pods").join(format!("{namespace}_{name}"))
}

/// A running container process found in the state folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningProcess {
    /// `<namespace>_<pod>`.
    pub pod: String,
    /// Container name.
    pub container: String,
    /// Process id.
    pub pid: u32,
}

/// The container processes the runner has running, read from its state folder (each running
/// container has a `<container>.pid` file in its pod's folder).
#[must_use]
pub fn running_processes(state_dir: &Path) -> Vec<RunningProcess> {
    let mut out = Vec::new();
    let Ok(pods) = std::fs::read_dir(state_dir.join("pods")) else {
        return out;
    };
    for pod in pods.flatten() {
        let Ok(files) = std::fs::read_dir(pod.path()) else {
            continue;
        };
        for file in files.flatten() {
            let name = file.file_name().to_string_lossy().into_owned();
            let Some(container) = name.strip_suffix(".pid") else {
                continue;
            };
            if let Some(pid) = std::fs::read_to_string(file.path())
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                out.push(RunningProcess {
                    pod: pod.file_name().to_string_lossy().into_owned(),
                    container: container.to_owned(),
                    pid,
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.pod, &a.container).cmp(&(&b.pod, &b.container)));
    out
}

fn now_time() -> Time {
    let t = Timestamp::now();
    Time(Timestamp::from_second(t.as_second()).unwrap_or(t))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeKind {
    Readiness,
    Liveness,
}

#[derive(Debug)]
struct ProbeResult {
    container: usize,
    pid: u32,
    kind: ProbeKind,
    passed: bool,
}

/// One container of the pod.
struct Slot {
    spec: Container,
    view: ContainerView,
    pid: Option<u32>,
    started: Option<Instant>,
    limit: Option<u64>,
    oom_killed: bool,
    kill_at: Option<Instant>,
    readiness: Option<Tracker>,
    liveness: Option<Tracker>,
    /// When the next start is due (`None`: no start planned).
    start_at: Option<Instant>,
    backoff_step: u32,
    log: PathBuf,
    /// Where the current process's output begins in the log.
    log_start: u64,
    pid_file: PathBuf,
    message_file: PathBuf,
}

impl Slot {
    fn new(spec: &Container, dir: &Path, now: Instant) -> Self {
        let limit = spec
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("memory"))
            .and_then(|q| quantity::parse_bytes(&q.0).ok());
        Self {
            view: ContainerView {
                name: spec.name.clone(),
                image: spec.image.clone().unwrap_or_default(),
                state: State::Waiting {
                    reason: "ContainerCreating".to_owned(),
                    message: None,
                },
                last_terminated: None,
                ready: false,
                restart_count: 0,
                container_id: None,
            },
            spec: spec.clone(),
            pid: None,
            started: None,
            limit,
            oom_killed: false,
            kill_at: None,
            readiness: None,
            liveness: None,
            start_at: Some(now),
            backoff_step: 0,
            log: dir.join(format!("{}.log", spec.name)),
            log_start: 0,
            pid_file: dir.join(format!("{}.pid", spec.name)),
            message_file: dir.join(format!("{}.termination-log", spec.name)),
        }
    }

    fn wait(&mut self, reason: &str, message: Option<String>) {
        self.view.state = State::Waiting {
            reason: reason.to_owned(),
            message,
        };
        self.view.ready = false;
    }
}

/// The pod task's state.
struct PodRun {
    shared: Arc<Shared>,
    pod: Pod,
    api: Api<Pod>,
    name: String,
    namespace: String,
    ip: Ipv4Addr,
    dir: PathBuf,
    view: PodView,
    slots: Vec<Slot>,
    volume_dirs: Option<BTreeMap<String, PathBuf>>,
    volumes_retry_at: Instant,
    volumes_refresh_at: Instant,
    terminating: bool,
    ended_tx: mpsc::Sender<Ended>,
    probe_tx: mpsc::Sender<ProbeResult>,
    status_tx: watch::Sender<Option<PodStatus>>,
    last_status: Option<PodStatus>,
}

/// Runs one pod bound to this node until it is deleted (or the runner stops).
pub async fn run(
    shared: Arc<Shared>,
    mut updates: watch::Receiver<Option<Pod>>,
    shutdown: CancellationToken,
) {
    let Some(pod) = updates.borrow_and_update().clone() else {
        return;
    };
    let name = pod.name_any();
    let namespace = pod.namespace().unwrap_or_default();
    let ip = match shared.ips.lock().ok().and_then(|mut p| p.take()) {
        Some(ip) => ip,
        None => {
            warn!(pod = %name, "No pod IP left; the pod is not started.");
            return;
        }
    };
    let dir = pod_dir(&shared.config.state_dir, &namespace, &name);
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(dir.join("volumes")) {
        warn!(pod = %name, error = %e, "Cannot create the pod folder.");
        give_back(&shared, ip);
        return;
    }
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &namespace);
    let (status_tx, status_rx) = watch::channel(None);
    let writer = tokio::spawn(write_statuses(api.clone(), name.clone(), status_rx));
    let (ended_tx, mut ended_rx) = mpsc::channel(EVENTS);
    let (probe_tx, mut probe_rx) = mpsc::channel(EVENTS);
    let now = Instant::now();
    let spec = pod.spec.clone().unwrap_or_default();
    let slots: Vec<Slot> = spec
        .containers
        .iter()
        .map(|c| Slot::new(c, &dir, now))
        .collect();
    info!(pod = %name, namespace = %namespace, %ip, "Pod accepted.");
    let mut run = PodRun {
        view: PodView {
            pod_ip: ip.to_string(),
            host_ip: HOST_IP.to_owned(),
            start_time: now_time(),
            restart_policy: spec
                .restart_policy
                .clone()
                .unwrap_or_else(|| "Always".to_owned()),
            volumes_ready: false,
            containers: slots.iter().map(|s| s.view.clone()).collect(),
        },
        shared,
        pod,
        api,
        name,
        namespace,
        ip,
        dir,
        slots,
        volume_dirs: None,
        volumes_retry_at: now,
        volumes_refresh_at: now + volumes::REFRESH_EVERY,
        terminating: false,
        ended_tx,
        probe_tx,
        status_tx,
        last_status: None,
    };
    if spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
        for slot in &mut run.slots {
            slot.wait(
                "InitContainersUnsupported",
                Some("the pod runner does not run init containers".to_owned()),
            );
            slot.start_at = None;
        }
    }
    run.publish();

    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u32 = 0;
    let outcome = loop {
        tokio::select! {
            () = shutdown.cancelled() => break Outcome::Shutdown,
            changed = updates.changed() => {
                if changed.is_err() {
                    break Outcome::Shutdown;
                }
                let latest = updates.borrow_and_update().clone();
                match latest {
                    None => break Outcome::Gone,
                    Some(p) => run.updated(p),
                }
            }
            Some(ended) = ended_rx.recv() => run.ended(ended),
            Some(result) = probe_rx.recv() => run.probed(result),
            _ = tick.tick() => {
                ticks = ticks.wrapping_add(1);
                run.tick(ticks.is_multiple_of(ROTATE_EVERY_TICKS)).await;
                if run.terminating && run.slots.iter().all(|s| s.pid.is_none()) {
                    break Outcome::Terminated;
                }
                run.publish();
            }
        }
    };
    match outcome {
        Outcome::Terminated => {
            // The writer stops once its channel closes; the last status is written here.
            let (closed, _) = watch::channel(None);
            drop(std::mem::replace(&mut run.status_tx, closed));
            let _ = writer.await;
            run.finish_deletion().await;
        }
        Outcome::Gone => {
            run.kill_all(Signal::SIGKILL);
            run.reap(&mut ended_rx, REAP_WAIT).await;
            writer.abort();
        }
        Outcome::Shutdown => {
            run.kill_all(Signal::SIGTERM);
            let grace = run.shared.config.shutdown_grace;
            run.reap(&mut ended_rx, grace).await;
            run.kill_all(Signal::SIGKILL);
            run.reap(&mut ended_rx, REAP_WAIT).await;
            writer.abort();
        }
    }
    run.cleanup();
}

enum Outcome {
    Terminated,
    Gone,
    Shutdown,
}

fn give_back(shared: &Shared, ip: Ipv4Addr) {
    if let Ok(mut pool) = shared.ips.lock() {
        pool.give_back(ip);
    }
}

impl PodRun {
    fn publish(&mut self) {
        self.view.containers = self.slots.iter().map(|s| s.view.clone()).collect();
        self.view.volumes_ready = self.volume_dirs.is_some();
        let status = status::build(&self.view, self.last_status.as_ref(), &now_time());
        if self.last_status.as_ref() != Some(&status) {
            self.last_status = Some(status.clone());
            self.status_tx.send_replace(Some(status));
        }
    }

    fn updated(&mut self, pod: Pod) {
        let deleting = pod.metadata.deletion_timestamp.is_some();
        self.pod = pod;
        if deleting {
            let grace = self
                .pod
                .metadata
                .deletion_grace_period_seconds
                .or_else(|| {
                    self.pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.termination_grace_period_seconds)
                })
                .unwrap_or(30);
            self.terminate(Duration::from_secs(u64::try_from(grace).unwrap_or(0)));
        }
    }

    /// Starts (or shortens) the graceful stop of every container.
    fn terminate(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        let first = !self.terminating;
        self.terminating = true;
        for slot in &mut self.slots {
            slot.start_at = None;
            let Some(pid) = slot.pid else {
                continue;
            };
            if grace.is_zero() {
                process::signal_group(pid, Signal::SIGKILL);
            } else if first {
                process::signal(pid, Signal::SIGTERM);
            }
            slot.kill_at = Some(slot.kill_at.map_or(deadline, |k| k.min(deadline)));
        }
        if first {
            info!(pod = %self.name, grace_seconds = grace.as_secs(), "Pod deleted; stopping its containers.");
        }
    }

    fn kill_all(&self, sig: Signal) {
        for slot in &self.slots {
            if let Some(pid) = slot.pid {
                if sig == Signal::SIGKILL {
                    process::signal_group(pid, sig);
                } else {
                    process::signal(pid, sig);
                }
            }
        }
    }

    /// Waits (at most `limit`) for every process to be reaped.
    async fn reap(&mut self, ended_rx: &mut mpsc::Receiver<Ended>, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.slots.iter().any(|s| s.pid.is_some()) {
            match tokio::time::timeout_at(deadline, ended_rx.recv()).await {
                Ok(Some(ended)) => self.ended(ended),
                Ok(None) | Err(_) => break,
            }
        }
    }

    fn ended(&mut self, ended: Ended) {
        let policy = self.view.restart_policy.clone();
        let terminating = self.terminating;
        let (base, max) = (
            self.shared.config.backoff_base,
            self.shared.config.backoff_max,
        );
        let Some(slot) = self.slots.get_mut(ended.container) else {
            return;
        };
        if slot.pid != Some(ended.pid) {
            return;
        }
        slot.pid = None;
        slot.kill_at = None;
        slot.readiness = None;
        slot.liveness = None;
        let _ = std::fs::remove_file(&slot.pid_file);
        let exit = ended.exit.unwrap_or(status::Exit::Code(-1));
        let code = match exit {
            status::Exit::Code(c) => c,
            status::Exit::Signal(s) => 128 + s,
        };
        let file = std::fs::read(&slot.message_file).ok();
        let log = process::log_tail_since(&slot.log, slot.log_start, 16 * 1024);
        let message = status::termination_message(
            file.as_deref(),
            slot.spec.termination_message_policy.as_deref(),
            if slot.oom_killed {
                oom::KILLED_EXIT_CODE
            } else {
                code
            },
            log.as_deref(),
        );
        let started_at = match &slot.view.state {
            State::Running { started_at } => Some(started_at.clone()),
            _ => None,
        };
        let t: Terminated =
            status::terminated(exit, slot.oom_killed, message, started_at, now_time());
        info!(
            pod = %self.name,
            container = %slot.spec.name,
            pid = ended.pid,
            exit_code = t.exit_code,
            reason = %t.reason,
            "Container ended."
        );
        slot.oom_killed = false;
        slot.view.ready = false;
        let ran = slot.started.map_or(Duration::ZERO, |s| s.elapsed());
        if !terminating && status::restart_wanted(&policy, t.exit_code) {
            if ran >= BACKOFF_RESET {
                slot.backoff_step = 0;
            }
            let delay = status::backoff(slot.backoff_step, base, max);
            slot.backoff_step = slot.backoff_step.saturating_add(1);
            slot.start_at = Some(Instant::now() + delay);
            slot.view.last_terminated = Some(t);
            slot.wait(
                "CrashLoopBackOff",
                Some(format!(
                    "back-off {}s restarting failed container={} pod={}",
                    delay.as_secs(),
                    slot.spec.name,
                    self.name
                )),
            );
        } else {
            slot.view.state = State::Terminated(t);
        }
    }

    fn probed(&mut self, r: ProbeResult) {
        let Some(slot) = self.slots.get_mut(r.container) else {
            return;
        };
        if slot.pid != Some(r.pid) {
            return;
        }
        match r.kind {
            ProbeKind::Readiness => {
                if let Some(t) = &mut slot.readiness {
                    slot.view.ready = t.record(r.passed);
                }
            }
            ProbeKind::Liveness => {
                let alive = slot.liveness.as_mut().is_none_or(|t| t.record(r.passed));
                if !alive && slot.kill_at.is_none() {
                    let grace = self
                        .pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.termination_grace_period_seconds)
                        .and_then(|g| u64::try_from(g).ok())
                        .unwrap_or(30);
                    warn!(pod = %self.name, container = %slot.spec.name, "Liveness probe failed; restarting the container.");
                    process::signal(r.pid, Signal::SIGTERM);
                    slot.kill_at = Some(Instant::now() + Duration::from_secs(grace));
                }
            }
        }
    }

    async fn tick(&mut self, rotate: bool) {
        let now = Instant::now();
        if self.volume_dirs.is_none() && !self.terminating && now >= self.volumes_retry_at {
            self.prepare_volumes().await;
        } else if self.volume_dirs.is_some() && !self.terminating && now >= self.volumes_refresh_at
        {
            self.volumes_refresh_at = now + volumes::REFRESH_EVERY;
            self.refresh_volumes().await;
        }
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            if let Some(pid) = slot.pid {
                if let Some(rss) = oom::read_rss(pid)
                    && oom::verdict(rss, slot.limit) == Verdict::Kill
                    && !slot.oom_killed
                {
                    warn!(
                        pod = %self.name,
                        container = %slot.spec.name,
                        rss_bytes = rss,
                        limit_bytes = slot.limit.unwrap_or_default(),
                        "Container above its memory limit; killed as OOMKilled."
                    );
                    slot.oom_killed = true;
                    process::signal_group(pid, Signal::SIGKILL);
                }
                if slot.kill_at.is_some_and(|k| now >= k) {
                    process::signal_group(pid, Signal::SIGKILL);
                }
                if rotate {
                    process::rotate_if_larger(&slot.log, self.shared.config.log_max_bytes);
                }
                self.send_probes(i, pid, now);
            } else if !self.terminating
                && self.volume_dirs.is_some()
                && self.slots[i].start_at.is_some_and(|t| now >= t)
            {
                self.start(i).await;
            }
        }
    }

    fn send_probes(&mut self, i: usize, pid: u32, now: Instant) {
        let ip = self.ip.to_string();
        let slot = &mut self.slots[i];
        for (kind, tracker) in [
            (ProbeKind::Readiness, slot.readiness.as_mut()),
            (ProbeKind::Liveness, slot.liveness.as_mut()),
        ] {
            let Some(tracker) = tracker else {
                continue;
            };
            if !tracker.due(now) {
                continue;
            }
            tracker.sent(now);
            let spec = tracker.spec.clone();
            let http = self.shared.http.clone();
            let tx = self.probe_tx.clone();
            let ip = ip.clone();
            tokio::spawn(async move {
                let passed = probe::run(&http, &ip, &spec).await;
                let _ = tx
                    .send(ProbeResult {
                        container: i,
                        pid,
                        kind,
                        passed,
                    })
                    .await;
            });
        }
    }

    async fn sources(&self) -> Result<Sources, String> {
        let refs = env::references(&self.pod);
        let mut sources = Sources::default();
        let secrets: Api<Secret> = Api::namespaced(self.shared.client.clone(), &self.namespace);
        for name in &refs.secrets {
            match tokio::time::timeout(API_TIMEOUT, secrets.get_opt(name)).await {
                Ok(Ok(Some(s))) => {
                    let data = s
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect();
                    sources.secrets.insert(name.clone(), data);
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => return Err(format!("cannot read secret {name:?}: {e}")),
                Err(_) => return Err(format!("reading secret {name:?} timed out")),
            }
        }
        let maps: Api<ConfigMap> = Api::namespaced(self.shared.client.clone(), &self.namespace);
        for name in &refs.config_maps {
            match tokio::time::timeout(API_TIMEOUT, maps.get_opt(name)).await {
                Ok(Ok(Some(m))) => {
                    let mut data: BTreeMap<String, Vec<u8>> = m
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes()))
                        .collect();
                    data.extend(
                        m.binary_data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.0)),
                    );
                    sources.config_maps.insert(name.clone(), data);
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => return Err(format!("cannot read configmap {name:?}: {e}")),
                Err(_) => return Err(format!("reading configmap {name:?} timed out")),
            }
        }
        Ok(sources)
    }

    async fn prepare_volumes(&mut self) {
        let result = match volumes::plan(&self.pod) {
            Err(e) => Err(e.to_string()),
            Ok(plans) => match self.sources().await {
                Err(e) => Err(e),
                Ok(sources) => volumes::materialise(&self.dir.join("volumes"), &plans, &sources)
                    .map_err(|e| e.to_string()),
            },
        };
        match result {
            Ok(dirs) => self.volume_dirs = Some(dirs),
            Err(message) => {
                debug!(pod = %self.name, %message, "Volumes not ready; retrying.");
                self.volumes_retry_at = Instant::now() + CONFIG_RETRY;
                for slot in &mut self.slots {
                    if slot.pid.is_none() && slot.view.last_terminated.is_none() {
                        slot.wait(
                            "ContainerCreating",
                            Some(format!("MountVolume failed: {message}")),
                        );
                    }
                }
            }
        }
    }

    /// Writes the ConfigMap and Secret volumes again (an edit reaches the running process);
    /// a failure keeps the files as they are.
    async fn refresh_volumes(&mut self) {
        let Ok(plans) = volumes::plan(&self.pod) else {
            return;
        };
        match self.sources().await {
            Ok(sources) => {
                if let Err(e) = volumes::materialise(&self.dir.join("volumes"), &plans, &sources) {
                    debug!(pod = %self.name, error = %e, "Volumes not refreshed.");
                }
            }
            Err(message) => debug!(pod = %self.name, %message, "Volumes not refreshed."),
        }
    }

    async fn start(&mut self, i: usize) {
        let launch = match self.launch(i).await {
            Ok(l) => l,
            Err((reason, message, retry)) => {
                let slot = &mut self.slots[i];
                slot.start_at = retry.then(|| Instant::now() + CONFIG_RETRY);
                if slot.view.state
                    != (State::Waiting {
                        reason: reason.to_owned(),
                        message: Some(message.clone()),
                    })
                {
                    warn!(pod = %self.name, container = %slot.spec.name, reason, %message, "Container not started.");
                }
                slot.wait(reason, Some(message));
                return;
            }
        };
        let slot = &mut self.slots[i];
        let _ = std::fs::write(&slot.message_file, b"");
        slot.log_start = process::log_len(&slot.log);
        if slot.view.last_terminated.is_some() || matches!(slot.view.state, State::Terminated(_)) {
            slot.view.restart_count = slot.view.restart_count.saturating_add(1);
        }
        match process::spawn(&launch, i, self.ended_tx.clone()) {
            Ok(pid) => {
                let now = Instant::now();
                let _ = std::fs::write(&slot.pid_file, format!("{pid}\n"));
                slot.pid = Some(pid);
                slot.started = Some(now);
                slot.start_at = None;
                slot.oom_killed = false;
                slot.view.container_id = Some(format!("podrunner://{pid}"));
                slot.view.state = State::Running {
                    started_at: now_time(),
                };
                slot.readiness = slot
                    .spec
                    .readiness_probe
                    .as_ref()
                    .map(|p| Tracker::new(probe::spec(p, &slot.spec), now, false));
                slot.liveness = slot
                    .spec
                    .liveness_probe
                    .as_ref()
                    .map(|p| Tracker::new(probe::spec(p, &slot.spec), now, true));
                slot.view.ready = slot.readiness.is_none();
                info!(pod = %self.name, container = %slot.spec.name, pid, program = %launch.program.display(), "Container started.");
            }
            Err(e) => {
                warn!(pod = %self.name, container = %slot.spec.name, error = %e, "Container could not be started.");
                let t = status::terminated(
                    status::Exit::Code(128),
                    false,
                    Some(e.to_string()),
                    None,
                    now_time(),
                );
                let t = Terminated {
                    reason: "StartError".to_owned(),
                    ..t
                };
                let policy = self.view.restart_policy.clone();
                if status::restart_wanted(&policy, t.exit_code) {
                    let delay = status::backoff(
                        slot.backoff_step,
                        self.shared.config.backoff_base,
                        self.shared.config.backoff_max,
                    );
                    slot.backoff_step = slot.backoff_step.saturating_add(1);
                    slot.start_at = Some(Instant::now() + delay);
                    slot.view.last_terminated = Some(t);
                    slot.wait("CrashLoopBackOff", Some(e.to_string()));
                } else {
                    slot.start_at = None;
                    slot.view.state = State::Terminated(t);
                }
            }
        }
    }

    /// What to execute for container `i`; on failure the waiting reason, the message and
    /// whether to try again.
    async fn launch(&self, i: usize) -> Result<Launch, (&'static str, String, bool)> {
        let spec = &self.slots[i].spec;
        let image = spec.image.clone().unwrap_or_default();
        let binary = self
            .shared
            .config
            .images
            .resolve(&image)
            .map(Path::to_path_buf)
            .ok_or_else(|| {
                (
                    "ErrImagePull",
                    format!("the pod runner has no --image mapping for {image:?}"),
                    false,
                )
            })?;
        let sources = self
            .sources()
            .await
            .map_err(|e| ("CreateContainerConfigError", e, true))?;
        let ip = self.ip.to_string();
        let facts = Facts {
            pod: &self.pod,
            pod_ip: &ip,
            host_ip: HOST_IP,
            node_name: &self.shared.config.node_name,
            node_memory_bytes: self.shared.capacity.memory_bytes,
            node_cpus: self.shared.capacity.cpus,
        };
        let resolved = env::resolve(spec, &facts, &sources)
            .map_err(|e| ("CreateContainerConfigError", e.to_string(), true))?;
        let dirs = self.volume_dirs.clone().unwrap_or_default();
        let mut mounts = volumes::mounts(spec, &dirs)
            .map_err(|e| ("CreateContainerConfigError", e.to_string(), true))?;
        let message_path = spec
            .termination_message_path
            .clone()
            .unwrap_or_else(|| DEFAULT_MESSAGE_PATH.to_owned());
        mounts.push((message_path, self.slots[i].message_file.clone()));
        let rewriter = Rewriter::new(mounts, &ip);

        let mut env_vars: Vec<(String, String)> = vec![
            ("PATH".to_owned(), self.shared.path.clone()),
            ("HOSTNAME".to_owned(), self.name.clone()),
        ];
        env_vars.extend(self.shared.config.pass_env.iter().cloned());
        for (k, v) in resolved {
            let v = rewriter.value(&v);
            if let Some(slot) = env_vars.iter_mut().find(|(n, _)| *n == k) {
                slot.1 = v;
            } else {
                env_vars.push((k, v));
            }
        }
        let lookup = |name: &str| {
            env_vars
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let expand = |words: &Option<Vec<String>>| -> Vec<String> {
            words
                .iter()
                .flatten()
                .map(|w| rewriter.value(&env::expand(w, lookup)))
                .collect()
        };
        let command = expand(&spec.command);
        let mut args = expand(&spec.args);
        let program = match command.split_first() {
            None => binary,
            Some((first, rest)) => {
                let mut full = rest.to_vec();
                full.append(&mut args);
                args = full;
                let same_name = Path::new(first).file_name() == binary.file_name();
                if same_name {
                    binary
                } else {
                    PathBuf::from(first)
                }
            }
        };
        let cwd = spec
            .working_dir
            .as_deref()
            .and_then(|w| rewriter.host_path(w))
            .unwrap_or_else(|| self.dir.clone());
        Ok(Launch {
            program,
            args,
            env: env_vars,
            cwd,
            log: self.slots[i].log.clone(),
        })
    }

    /// After a graceful stop: the last status, then the pod object removed as a kubelet does.
    async fn finish_deletion(&mut self) {
        self.publish();
        if let Some(status) = &self.last_status {
            let patch = Patch::Merge(json!({ "status": status }));
            if let Err(e) = self
                .api
                .patch_status(&self.name, &PatchParams::default(), &patch)
                .await
            {
                debug!(pod = %self.name, error = %e, "Final status not written.");
            }
        }
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: self.pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match self.api.delete(&self.name, &params).await {
            Ok(_) => info!(pod = %self.name, "Pod stopped and removed."),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => warn!(pod = %self.name, error = %e, "Cannot remove the stopped pod."),
        }
    }

    fn cleanup(&mut self) {
        for slot in &self.slots {
            let _ = std::fs::remove_file(&slot.pid_file);
        }
        give_back(&self.shared, self.ip);
        if !self.shared.config.keep_pod_dirs {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Writes the latest status whenever it changes; a failed write is retried with the status
/// that is latest then.
async fn write_statuses(api: Api<Pod>, name: String, mut rx: watch::Receiver<Option<PodStatus>>) {
    let mut written: Option<PodStatus> = None;
    let mut retry = false;
    loop {
        if !retry && rx.changed().await.is_err() {
            return;
        }
        retry = false;
        let Some(status) = rx.borrow_and_update().clone() else {
            continue;
        };
        if written.as_ref() == Some(&status) {
            continue;
        }
        match api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
        {
            Ok(_) => written = Some(status),
            Err(kube::Error::Api(s)) if s.code == 404 => return,
            Err(e) => {
                debug!(pod = %name, error = %e, "Status not written; retrying.");
                tokio::time::sleep(Duration::from_millis(500)).await;
                retry = true;
            }
        }
    }
}
