//! The Secrets a job names: the Redis URL (read in full, with its resource version) and the
//! other Secrets' resource versions (metadata only: the operator never holds the MySQL or
//! search credentials).

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;
use migrate_crds::SecretKeyRef;

use super::ObserveError;
use crate::controller::build::SecretVersions;

/// The Redis URL, and the resource version of the Secret it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSecret {
    /// The URL under the key the spec names.
    pub url: String,
    /// The Secret's resource version (a change of it rolls the workers).
    pub version: String,
}

/// Reads the Redis URL from the Secret key the spec names.
///
/// # Errors
/// [`ObserveError::SecretMissing`], [`ObserveError::SecretKeyMissing`] or
/// [`ObserveError::SecretRead`].
pub async fn redis_url(
    client: &Client,
    namespace: &str,
    secret: &SecretKeyRef,
) -> Result<RedisSecret, ObserveError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let found = api
        .get_opt(&secret.name)
        .await
        .map_err(|source| ObserveError::SecretRead {
            namespace: namespace.to_owned(),
            name: secret.name.clone(),
            source,
        })?;
    let Some(found) = found else {
        return Err(ObserveError::SecretMissing {
            namespace: namespace.to_owned(),
            name: secret.name.clone(),
        });
    };
    let url = found
        .data
        .as_ref()
        .and_then(|d| d.get(&secret.key))
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ObserveError::SecretKeyMissing {
            namespace: namespace.to_owned(),
            name: secret.name.clone(),
            key: secret.key.clone(),
        })?;
    Ok(RedisSecret {
        url,
        version: found.metadata.resource_version.unwrap_or_default(),
    })
}

/// The resource version of each named Secret (empty for one that does not exist), read as
/// metadata only: the operator never holds the MySQL or search credentials. Names already in
/// `known` (read earlier this round) are not asked for again.
///
/// # Errors
/// [`ObserveError::SecretRead`] when one cannot be read (the caller then knows no versions,
/// and rolls nothing for them).
pub async fn secret_versions(
    client: &Client,
    namespace: &str,
    names: &std::collections::BTreeSet<String>,
    known: SecretVersions,
) -> Result<SecretVersions, ObserveError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut versions = known;
    for name in names {
        if versions.contains_key(name) {
            continue;
        }
        let version = match api.get_metadata(name).await {
            Ok(meta) => meta.metadata.resource_version.unwrap_or_default(),
            Err(kube::Error::Api(status)) if status.code == 404 => String::new(),
            Err(source) => {
                return Err(ObserveError::SecretRead {
                    namespace: namespace.to_owned(),
                    name: name.clone(),
                    source,
                });
            }
        };
        versions.insert(name.clone(), version);
    }
    Ok(versions)
}
