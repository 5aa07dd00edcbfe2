//! The runner: registers the Node, watches the pods it serves, binds the pending ones to its
//! Node (there is no scheduler), runs one [`pod`] task per pod bound to it, and on shutdown
//! stops every container and removes the Node.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{Config, IpPool};
use crate::node::{Capacity, HEARTBEAT, Registration};
use crate::pod::{self, Shared};

/// Most pods one runner runs at once (the Node's `pods` capacity); more are left unbound.
pub const MAX_PODS: usize = 110;
/// How long the runner waits for its pod tasks to stop on shutdown, beyond their grace.
const STOP_WAIT: Duration = Duration::from_secs(10);
/// Attempts to bind one pod.
const BIND_ATTEMPTS: u32 = 5;

/// Why the runner stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The state folder cannot be created.
    #[error("cannot create the state folder {path}")]
    StateDir {
        /// The folder.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The Node cannot be registered.
    #[error("cannot register the node")]
    Node(#[source] crate::node::NodeError),
    /// The probe client cannot be built.
    #[error("cannot build the HTTP client of the probes")]
    Http(#[source] reqwest::Error),
}

struct Entry {
    tx: watch::Sender<Option<Pod>>,
    task: JoinHandle<()>,
}

/// Runs until `shutdown` resolves.
///
/// # Errors
/// [`RunnerError`] when it cannot start; once running, API errors are logged and retried.
pub async fn run(
    client: Client,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunnerError> {
    std::fs::create_dir_all(config.state_dir.join("pods")).map_err(|source| {
        RunnerError::StateDir {
            path: config.state_dir.clone(),
            source,
        }
    })?;
    let capacity = Capacity::of_this_machine();
    let registration = Registration::register(client.clone(), &config.node_name, capacity)
        .await
        .map_err(RunnerError::Node)?;
    info!(node = %config.node_name, state = %config.state_dir.display(), "Node registered.");
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(RunnerError::Http)?;
    let shared = Arc::new(Shared {
        client: client.clone(),
        ips: Mutex::new(IpPool::new(config.first_ip, config.last_ip)),
        config: Arc::new(config),
        capacity,
        http,
        path: std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_owned()),
    });
    let stop = CancellationToken::new();

    let beat = {
        let registration = registration.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(HEARTBEAT);
            every.tick().await;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = every.tick() => {
                        if let Err(e) = registration.heartbeat().await {
                            warn!(error = %e, "Node heartbeat failed.");
                        }
                    }
                }
            }
        })
    };

    let pods: Api<Pod> = match &shared.config.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut watch_config = watcher::Config::default();
    if let Some(selector) = &shared.config.selector {
        watch_config = watch_config.labels(selector);
    }
    let mut events = watcher::watcher(pods, watch_config)
        .default_backoff()
        .boxed();
    let mut entries: HashMap<String, Entry> = HashMap::new();
    let mut listed: BTreeSet<String> = BTreeSet::new();
    let mut prune = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = prune.tick() => entries.retain(|_, e| !e.task.is_finished()),
            event = events.next() => match event {
                None => break,
                Some(Err(e)) => warn!(error = %e, "Pod watch failed; retrying."),
                Some(Ok(Event::Init)) => listed.clear(),
                Some(Ok(Event::InitApply(p))) => {
                    listed.insert(p.uid().unwrap_or_default());
                    seen(&shared, &stop, &mut entries, p).await;
                }
                Some(Ok(Event::InitDone)) => {
                    for (uid, e) in &entries {
                        if !listed.contains(uid) {
                            e.tx.send_replace(None);
                        }
                    }
                }
                Some(Ok(Event::Apply(p))) => seen(&shared, &stop, &mut entries, p).await,
                Some(Ok(Event::Delete(p))) => {
                    if let Some(e) = entries.get(&p.uid().unwrap_or_default()) {
                        e.tx.send_replace(None);
                    }
                }
            },
        }
    }

    info!(
        pods = entries.len(),
        "Stopping: every container is stopped, the node removed."
    );
    stop.cancel();
    let wait = shared.config.shutdown_grace + STOP_WAIT;
    for (_, e) in entries.drain() {
        if tokio::time::timeout(wait, e.task).await.is_err() {
            warn!("A pod task did not stop in time.");
        }
    }
    let _ = beat.await;
    if let Err(e) = registration.deregister().await {
        warn!(error = %e, "Node not removed.");
    }
    Ok(())
}

/// Handles one pod seen in the watch: bind it, or hand it to its task.
async fn seen(
    shared: &Arc<Shared>,
    stop: &CancellationToken,
    entries: &mut HashMap<String, Entry>,
    pod: Pod,
) {
    let uid = pod.uid().unwrap_or_default();
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    match node.as_deref() {
        None | Some("") => {
            if pod.metadata.deletion_timestamp.is_none() && entries.len() < MAX_PODS {
                bind(shared, &pod).await;
            }
        }
        Some(n) if n == shared.config.node_name => {
            if let Some(e) = entries.get(&uid) {
                e.tx.send_replace(Some(pod));
            } else if entries.len() < MAX_PODS {
                let (tx, rx) = watch::channel(Some(pod));
                let task = tokio::spawn(pod::run(shared.clone(), rx, stop.child_token()));
                entries.insert(uid, Entry { tx, task });
            }
        }
        Some(_) => {}
    }
}

/// Binds a pending pod to this Node (the Binding subresource, as a scheduler does).
async fn bind(shared: &Shared, pod: &Pod) {
    let name = pod.name_any();
    let namespace = pod.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &namespace);
    let binding = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name, "namespace": namespace, "uid": pod.uid()},
        "target": {"apiVersion": "v1", "kind": "Node", "name": shared.config.node_name},
    });
    for attempt in 1..=BIND_ATTEMPTS {
        match api
            .create_subresource::<_, serde_json::Value>(
                "binding",
                &name,
                &PostParams::default(),
                &binding,
            )
            .await
        {
            Ok(_) => {
                debug!(pod = %name, node = %shared.config.node_name, "Pod bound.");
                return;
            }
            // Bound already (by an earlier attempt or someone else), or gone.
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => return,
            Err(e) if attempt == BIND_ATTEMPTS => {
                warn!(pod = %name, error = %e, "Pod not bound; its next change retries.");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
