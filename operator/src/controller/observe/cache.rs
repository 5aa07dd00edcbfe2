//! The reads of a round that the watches' caches serve ([`Caches`]), each with its fallback to
//! the API server for when they do not (yet).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use migrate_crds::MigrateJob;

use super::{ObserveError, PodMemory, RedisSecret, pod_metrics, redis_url};
use crate::controller::apply;
use crate::controller::build::{self, SecretVersions};
use crate::controller::context::{Caches, Context, JobMemory};
use crate::controller::error::Error;

/// The job's pods: from the cache when it serves, the last round wrote to no pod, and it
/// holds every pod the last round saw (a pod missing from a cache that lags is not taken for
/// one that vanished); else listed from the API server.
pub(super) async fn job_pods(
    job: &MigrateJob,
    ctx: &Context,
    mem: &JobMemory,
    caches: Option<&Caches>,
) -> Result<Vec<Pod>, Error> {
    let namespace = job.namespace().unwrap_or_default();
    if let Some(c) = caches
        && !mem.pods_written
    {
        let cached: Vec<Pod> = c
            .pods
            .state()
            .iter()
            .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
            .filter(|p| build::owned_by(p, job))
            .map(|p| Pod::clone(p))
            .collect();
        let names: BTreeSet<String> = cached.iter().map(ResourceExt::name_any).collect();
        if mem.known_pods.iter().all(|k| names.contains(k)) {
            return Ok(cached);
        }
    }
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    Ok(apply::list_pods(&pods_api, &namespace, &job.name_any())
        .await
        .map_err(Error::apply(job))?
        .into_iter()
        .filter(|p| build::owned_by(p, job))
        .collect())
}

/// The Redis URL of the job's Secret. With the caches serving, the Secret is read again only
/// when its resource version changed, and a Secret missing from the cache does not exist.
pub(super) async fn read_redis_url(
    job: &MigrateJob,
    ctx: &Context,
    caches: Option<&Caches>,
) -> Result<RedisSecret, ObserveError> {
    let namespace = job.namespace().unwrap_or_default();
    let secret = &job.spec.queue.url_secret_ref;
    let Some(c) = caches else {
        return redis_url(&ctx.client, &namespace, secret).await;
    };
    let Some(meta) = c
        .secrets
        .get(&ObjectRef::new(&secret.name).within(&namespace))
    else {
        return Err(ObserveError::SecretMissing {
            namespace,
            name: secret.name.clone(),
        });
    };
    let version = meta.resource_version().unwrap_or_default();
    let key = format!("{namespace}/{}/{}", secret.name, secret.key);
    if let Some(url) = ctx.redis_url_at(&key, &version) {
        return Ok(RedisSecret { url, version });
    }
    let read = redis_url(&ctx.client, &namespace, secret).await?;
    ctx.remember_redis_url(key, read.version.clone(), read.url.clone());
    Ok(read)
}

/// The PodMetrics of `namespace`'s worker pods, listed at most once per `interval` for every
/// job of the namespace: the jobs of one namespace wait for one list rather than each sending
/// its own.
pub(super) async fn namespace_pod_metrics(
    ctx: &Context,
    namespace: &str,
    interval: Duration,
) -> Result<Arc<HashMap<String, PodMemory>>, ObserveError> {
    let mut lists = ctx.pod_metrics.lock().await;
    if let Some((at, found)) = lists.get(namespace)
        && at.elapsed() < interval
    {
        return Ok(found.clone());
    }
    let found = Arc::new(pod_metrics(&ctx.client, namespace, build::CONTAINER).await?);
    lists.insert(namespace.to_owned(), (Instant::now(), found.clone()));
    Ok(found)
}

/// [`secret_versions`] from the Secrets' cache: no request.
pub(super) fn cached_versions(
    caches: &Caches,
    namespace: &str,
    names: &BTreeSet<String>,
    known: SecretVersions,
) -> SecretVersions {
    let mut versions = known;
    for name in names {
        if versions.contains_key(name) {
            continue;
        }
        let version = caches
            .secrets
            .get(&ObjectRef::new(name).within(namespace))
            .and_then(|m| m.resource_version())
            .unwrap_or_default();
        versions.insert(name.clone(), version);
    }
    versions
}
