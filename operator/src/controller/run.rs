//! Running the controller: the flags, the metrics endpoints, leader election, and the
//! kube-runtime [`Controller`] that calls [`reconcile`] for every MigrateJob event and requeue.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use kube::{Client, ResourceExt};
use migrate_contract::error_chain;
use migrate_crds::MigrateJob;
use tokio::sync::watch;
use tracing::{Instrument as _, debug, error, info, info_span};

use super::build;
use super::context::{Caches, Context};
use super::observe::{Kind, QueueBackend, RedisQueues, names_object};
use super::reconcile::{error_policy, reconcile};
use crate::leader::{LeaderElector, LeaseConfig};
use crate::metrics::{self, Health, Metrics};

/// Flags of `migrate-operator run`.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    /// Address of the operator's /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "MIGRATE_OPERATOR_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Reconcile only the MigrateJobs of this namespace [default: every namespace].
    #[arg(long, env = "MIGRATE_OPERATOR_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Run without leader election. Only for a single replica: two replicas without it would
    /// both act on every job.
    #[arg(long)]
    pub no_leader_election: bool,
    /// Name of the Lease the replicas elect a leader with.
    #[arg(
        long,
        env = "MIGRATE_OPERATOR_LEASE",
        default_value = "migrate-operator"
    )]
    pub lease_name: String,
    /// Namespace of the Lease [default: the operator's own namespace, from POD_NAMESPACE].
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// This replica's name in the election [default: POD_NAME, else host name and pid].
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Seconds a Lease stays valid after its last renewal.
    #[arg(long, default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// Seconds a leader goes on leading without a successful renewal before it steps down;
    /// less than --lease-duration-seconds.
    #[arg(long, default_value_t = 10)]
    pub renew_deadline_seconds: u64,
    /// Seconds between two attempts to acquire or renew the Lease.
    #[arg(long, default_value_t = 2)]
    pub retry_period_seconds: u64,
}

/// How the controller runs, independent of flags (tests build it directly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Reconcile only this namespace.
    pub namespace: Option<String>,
    /// Leader election; `None` reconciles at once.
    pub lease: Option<LeaseConfig>,
    /// Where to serve `/metrics`, `/healthz`, `/readyz`; `None` serves nothing.
    pub listen: Option<SocketAddr>,
    /// The name Events are reported under (`reportingInstance`).
    pub instance: String,
}

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// No Kubernetes configuration was found (in-cluster or KUBECONFIG).
    #[error("cannot find a Kubernetes configuration (in-cluster or KUBECONFIG)")]
    Config(#[source] kube::config::InferConfigError),
    /// No Kubernetes client could be configured.
    #[error("cannot configure a Kubernetes client (in-cluster or KUBECONFIG)")]
    Client(#[source] kube::Error),
    /// The metrics server failed.
    #[error("metrics endpoint failed")]
    Metrics(#[source] metrics::MetricsError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers")]
    Signal(#[source] std::io::Error),
}

/// `config` with the operator's [`crate::USER_AGENT`] on every request.
#[must_use]
pub fn identified(mut config: kube::Config) -> kube::Config {
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(crate::USER_AGENT),
    ));
    config
}

/// Runs the controller until a signal (SIGINT, SIGTERM) arrives.
///
/// # Errors
/// [`ControllerError`] when it cannot start.
pub async fn run(args: ControllerArgs) -> Result<(), ControllerError> {
    let config = kube::Config::infer()
        .await
        .map_err(ControllerError::Config)?;
    let client = Client::try_from(identified(config)).map_err(ControllerError::Client)?;
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let lease = (!args.no_leader_election).then(|| LeaseConfig {
        name: args.lease_name.clone(),
        namespace: args
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned()),
        identity: identity.clone(),
        lease_duration: Duration::from_secs(args.lease_duration_seconds.max(2)),
        renew_deadline: Duration::from_secs(
            args.renew_deadline_seconds
                .clamp(1, args.lease_duration_seconds.max(2) - 1),
        ),
        retry_period: Duration::from_secs(args.retry_period_seconds.max(1)),
    });
    let config = Config {
        namespace: args.namespace.clone(),
        lease,
        listen: Some(args.listen),
        instance: identity,
    };
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(ControllerError::Signal)?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm.recv() => {}
        }
        info!("Shutdown requested.");
    };
    run_with(client, config, Arc::new(RedisQueues::default()), shutdown).await
}

fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "migrate-operator".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Runs the controller on `client` until `shutdown` resolves: serves the metrics endpoints,
/// takes part in the election (when configured) and reconciles while leading.
///
/// # Errors
/// [`ControllerError::Metrics`] when the metrics address cannot be bound.
pub async fn run_with(
    client: Client,
    config: Config,
    queues: Arc<dyn QueueBackend>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ControllerError> {
    let metrics = Arc::new(Metrics::new());
    let health = Health::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        stop_tx.send_replace(true);
    });
    let server = match config.listen {
        Some(addr) => {
            let (bound, serve) = metrics::bind(addr, metrics.clone(), health.clone())
                .await
                .map_err(ControllerError::Metrics)?;
            info!(%bound, "Serving /metrics, /healthz and /readyz.");
            Some(tokio::spawn(serve))
        }
        None => None,
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        metrics,
        queues,
        &config.instance,
    ));

    match config.lease.clone() {
        None => {
            health.set_ready(true);
            let mut stop = stop_rx.clone();
            run_controller(ctx, config.namespace.clone(), async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        }
        Some(lease) => {
            let (leading_tx, mut leading) = watch::channel(false);
            let elector = LeaderElector::new(client.clone(), lease);
            let mut stop = stop_rx.clone();
            let election = tokio::spawn(elector.run(leading_tx, async move {
                let _ = stop.wait_for(|s| *s).await;
            }));
            health.set_ready(client.apiserver_version().await.is_ok());
            let mut stop = stop_rx.clone();
            loop {
                tokio::select! {
                    r = leading.wait_for(|l| *l) => if r.is_err() { break },
                    _ = stop.wait_for(|s| *s) => break,
                }
                health.set_ready(true);
                let mut lost = leading.clone();
                let mut stop_inner = stop_rx.clone();
                run_controller(ctx.clone(), config.namespace.clone(), async move {
                    tokio::select! {
                        _ = lost.wait_for(|l| !*l) => {}
                        _ = stop_inner.wait_for(|s| *s) => {}
                    }
                })
                .await;
                if *stop.borrow() {
                    break;
                }
                info!("Not the leader any more; reconciling stopped.");
            }
            let _ = election.await;
        }
    }
    if let Some(server) = server {
        server.abort();
    }
    Ok(())
}

/// Runs the controller until `stop` resolves; dropping it cancels reconciliations in flight.
///
/// Besides the MigrateJobs it watches the worker pods (which also trigger their job's round)
/// and the metadata of the Secrets, each into a cache the rounds read instead of asking the API
/// server ([`Caches`]); they serve once their first list is complete.
async fn run_controller(
    ctx: Arc<Context>,
    namespace: Option<String>,
    stop: impl Future<Output = ()>,
) {
    let client = ctx.client.clone();
    let ns = namespace.as_deref();
    let jobs: Api<DeserializeGuard<MigrateJob>> = scoped(&client, ns);
    let pods: Api<Pod> = scoped(&client, ns);
    let secrets: Api<PartialObjectMeta<Secret>> = scoped(&client, ns);
    let config_maps: Api<PartialObjectMeta<ConfigMap>> = scoped(&client, ns);
    let pod_watch =
        watcher::Config::default().labels(&format!("app.kubernetes.io/name={}", build::APP_NAME));
    let (pod_cache, pod_writer) = reflector::store::<Pod>();
    let pod_events = reflector(pod_writer, watcher(pods, pod_watch))
        .default_backoff()
        .touched_objects();
    let (secret_cache, secret_writer) = reflector::store::<PartialObjectMeta<Secret>>();
    // Metadata only: the operator never holds the Secrets' values but the Redis URL's (of the
    // others it reads the key names, when their version changes).
    let secret_events = reflector(secret_writer, watcher(secrets, watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    let (config_map_cache, config_map_writer) = reflector::store::<PartialObjectMeta<ConfigMap>>();
    let config_map_events = reflector(
        config_map_writer,
        watcher(config_maps, watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects();
    let caches = Caches {
        pods: pod_cache,
        secrets: secret_cache,
        config_maps: config_map_cache,
    };
    let serve_caches = {
        let ctx = ctx.clone();
        async move {
            if caches.pods.wait_until_ready().await.is_ok()
                && caches.secrets.wait_until_ready().await.is_ok()
                && caches.config_maps.wait_until_ready().await.is_ok()
            {
                debug!("Pod, Secret and ConfigMap caches ready.");
                ctx.set_caches(Some(caches));
            }
            std::future::pending::<()>().await;
        }
    };
    info!(
        namespace = namespace.as_deref().unwrap_or("(all)"),
        "Reconciling MigrateJobs."
    );
    let controller = Controller::new(jobs, watcher::Config::default().any_semantic());
    // A Secret or ConfigMap that appears or changes starts a round of each job naming it, so
    // a job waiting for one starts its workers without waiting for a requeue.
    let (secret_jobs, config_map_jobs) = (
        jobs_naming(controller.store(), Kind::Secret),
        jobs_naming(controller.store(), Kind::ConfigMap),
    );
    let controller = controller
        .owns_stream(pod_events)
        .watches_stream(secret_events, secret_jobs)
        .watches_stream(config_map_events, config_map_jobs)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => debug!(job = %object.name, "Reconciled."),
                Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
                // A round asked for a job that was deleted meanwhile (a requeue, or an event of
                // one of its pods going away with it): nothing is left to do.
                Err(kube::runtime::controller::Error::ObjectNotFound(job)) => {
                    debug!(job = %job.name, "Job gone; nothing to reconcile.");
                }
                Err(e) => error!(error = %error_chain(&e), "Controller error."),
            }
        })
        .instrument(info_span!("controller"));
    tokio::select! {
        () = controller => {}
        () = serve_caches => {}
        () = stop => {}
    }
    ctx.set_caches(None);
}

/// The objects of `namespace`, or of every namespace.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The jobs of `store` whose spec names an object of `kind` (a Secret's or ConfigMap's
/// metadata), to start their rounds when it appears or changes.
fn jobs_naming<K: ResourceExt>(
    store: Store<DeserializeGuard<MigrateJob>>,
    kind: Kind,
) -> impl Fn(K) -> Vec<ObjectRef<DeserializeGuard<MigrateJob>>> {
    move |object: K| {
        let (name, namespace) = (object.name_any(), object.namespace());
        store
            .state()
            .iter()
            .filter(|guard| {
                guard.0.as_ref().is_ok_and(|job| {
                    job.namespace() == namespace && names_object(&job.spec, kind, &name)
                })
            })
            .map(|guard| ObjectRef::from_obj(&**guard))
            .collect()
    }
}

#[cfg(test)]
mod identity_tests {
    use super::*;

    /// Every request the operator's client sends names the operator and its version.
    #[test]
    fn the_kubernetes_client_config_carries_the_operator_user_agent() {
        let config = identified(kube::Config::new("https://127.0.0.1:6443".parse().unwrap()));
        let agents: Vec<_> = config
            .headers
            .iter()
            .filter(|(name, _)| name == http::header::USER_AGENT)
            .map(|(_, value)| value.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            agents,
            [concat!("migrate-operator/", env!("CARGO_PKG_VERSION"))]
        );
    }
}
