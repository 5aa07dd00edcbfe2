//! The Secrets and the keyword ConfigMap a job names, and the keys inside them, checked before
//! any worker starts: a missing one is a problem naming the object, the key and the field that
//! names them, and no pod is created until it is there (a watch on both kinds starts the job's
//! next round when one appears). The Redis Secret is read, and reported, by
//! [`super::secrets`].
//!
//! Only the objects the spec names are read, and only when their resource version changed
//! since the last check; of a Secret only the names of its keys are kept, never a value.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use migrate_crds::{MigrateJobSpec, SecretKeyRef};

use super::ObserveError;
use crate::controller::context::Caches;
use crate::controller::status::Problem;

/// Degraded reason: a Secret the spec names does not exist.
pub const SECRET_MISSING: &str = "SecretMissing";
/// Degraded reason: a Secret lacks the key the spec names.
pub const SECRET_KEY_MISSING: &str = "SecretKeyMissing";
/// Degraded reason: `keywords.configMap` does not exist.
pub const CONFIG_MAP_MISSING: &str = "ConfigMapMissing";
/// Degraded reason: a keyword file is not a key of `keywords.configMap`.
pub const KEYWORD_FILE_MISSING: &str = "KeywordFileMissing";

/// The kind of object a job names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A Secret.
    Secret,
    /// A ConfigMap.
    ConfigMap,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Secret => "Secret",
            Kind::ConfigMap => "ConfigMap",
        }
    }
}

/// One object a job names, with the keys it must hold and the field naming each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Secret or ConfigMap.
    pub kind: Kind,
    /// Its name.
    pub name: String,
    /// The field naming the object (the first one, when several do).
    pub field: String,
    /// Each key it must hold, and the spec field naming it.
    pub keys: Vec<(String, String)>,
}

/// The object's key names at a resource version, as last read.
pub type KnownKeys = HashMap<(Kind, String), (String, BTreeSet<String>)>;

/// Every Secret (but the Redis one) and the keyword ConfigMap `spec` names, with their keys.
#[must_use]
pub fn references(spec: &MigrateJobSpec) -> Vec<Reference> {
    let mut secrets: BTreeMap<String, Reference> = BTreeMap::new();
    let named: [(Option<&SecretKeyRef>, &str); 4] = [
        (Some(&spec.source.url_secret_ref), "source.urlSecretRef"),
        (Some(&spec.sink.url_secret_ref), "sink.urlSecretRef"),
        (
            spec.sink.username_secret_ref.as_ref(),
            "sink.usernameSecretRef",
        ),
        (
            spec.sink.password_secret_ref.as_ref(),
            "sink.passwordSecretRef",
        ),
    ];
    for (secret, field) in named {
        let Some(secret) = secret else { continue };
        secrets
            .entry(secret.name.clone())
            .or_insert_with(|| Reference {
                kind: Kind::Secret,
                name: secret.name.clone(),
                field: format!("{field}.name"),
                keys: Vec::new(),
            })
            .keys
            .push((secret.key.clone(), format!("{field}.key")));
    }
    let mut all: Vec<Reference> = secrets.into_values().collect();
    if let Some(name) = &spec.keywords.config_map {
        all.push(Reference {
            kind: Kind::ConfigMap,
            name: name.clone(),
            field: "keywords.configMap".to_owned(),
            keys: spec
                .keywords
                .sets
                .iter()
                .enumerate()
                .map(|(i, set)| (set.file.clone(), format!("keywords.sets[{i}].file")))
                .collect(),
        });
    }
    all
}

/// Whether `spec` names the object `name` of `kind` (the Redis Secret included).
#[must_use]
pub fn names_object(spec: &MigrateJobSpec, kind: Kind, name: &str) -> bool {
    (kind == Kind::Secret && spec.queue.url_secret_ref.name == name)
        || references(spec)
            .iter()
            .any(|r| r.kind == kind && r.name == name)
}

/// The problems of `reference` in `namespace`, given its key names (`None`: it does not exist).
#[must_use]
pub fn problems_of(
    namespace: &str,
    reference: &Reference,
    keys: Option<&BTreeSet<String>>,
) -> Vec<Problem> {
    let (kind, name) = (reference.kind.as_str(), &reference.name);
    let Some(keys) = keys else {
        let wanted: Vec<&str> = reference.keys.iter().map(|(k, _)| k.as_str()).collect();
        let reason = match reference.kind {
            Kind::Secret => SECRET_MISSING,
            Kind::ConfigMap => CONFIG_MAP_MISSING,
        };
        return vec![Problem::new(
            reason,
            format!(
                "the {kind} {namespace}/{name} named by {} does not exist: create it with the key{} {}; no worker starts until it exists",
                reference.field,
                if wanted.len() == 1 { "" } else { "s" },
                wanted
                    .iter()
                    .map(|k| format!("{k:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )];
    };
    reference
        .keys
        .iter()
        .filter(|(key, _)| !keys.contains(key))
        .map(|(key, field)| {
            let reason = match reference.kind {
                Kind::Secret => SECRET_KEY_MISSING,
                Kind::ConfigMap => KEYWORD_FILE_MISSING,
            };
            Problem::new(
                reason,
                format!(
                    "the {kind} {namespace}/{name} has no key {key:?}, named by {field}: add it or fix {field}; no worker starts until it is there"
                ),
            )
        })
        .collect()
}

/// Checks every object `spec` names in `namespace`: from the watches' caches whether it exists
/// and at which version, and its key names read again only when the version changed (`known`
/// remembers them). Returns a problem for each missing object or key.
///
/// # Errors
/// [`ObserveError::ReferenceRead`] when an object cannot be read.
pub async fn check(
    client: &Client,
    caches: Option<&Caches>,
    namespace: &str,
    spec: &MigrateJobSpec,
    known: &mut KnownKeys,
) -> Result<Vec<Problem>, ObserveError> {
    let wanted = references(spec);
    known.retain(|(kind, name), _| wanted.iter().any(|r| r.kind == *kind && r.name == *name));
    let mut problems = Vec::new();
    for reference in &wanted {
        let id = (reference.kind, reference.name.clone());
        let cached_version = caches.map(|c| cached_version(c, namespace, reference));
        let keys = match cached_version {
            // The watch has not seen it: it does not exist.
            Some(None) => None,
            Some(Some(version)) if known.get(&id).is_some_and(|(v, _)| *v == version) => {
                known.get(&id).map(|(_, keys)| keys.clone())
            }
            _ => {
                let read = read_keys(client, namespace, reference).await?;
                match read {
                    Some((version, keys)) => {
                        known.insert(id, (version, keys.clone()));
                        Some(keys)
                    }
                    None => {
                        known.remove(&id);
                        None
                    }
                }
            }
        };
        problems.extend(problems_of(namespace, reference, keys.as_ref()));
    }
    Ok(problems)
}

/// The resource version the watch holds of `reference`, `None` when it holds none.
fn cached_version(caches: &Caches, namespace: &str, reference: &Reference) -> Option<String> {
    let version = match reference.kind {
        Kind::Secret => caches
            .secrets
            .get(&ObjectRef::new(&reference.name).within(namespace))
            .map(|m| m.metadata.resource_version.clone()),
        Kind::ConfigMap => caches
            .config_maps
            .get(&ObjectRef::new(&reference.name).within(namespace))
            .map(|m| m.metadata.resource_version.clone()),
    };
    version.map(Option::unwrap_or_default)
}

/// Reads the object's version and key names (`None` when it does not exist); a Secret's values
/// are dropped here.
async fn read_keys(
    client: &Client,
    namespace: &str,
    reference: &Reference,
) -> Result<Option<(String, BTreeSet<String>)>, ObserveError> {
    let error = |source| ObserveError::ReferenceRead {
        kind: reference.kind.as_str(),
        namespace: namespace.to_owned(),
        name: reference.name.clone(),
        source,
    };
    Ok(match reference.kind {
        Kind::Secret => Api::<Secret>::namespaced(client.clone(), namespace)
            .get_opt(&reference.name)
            .await
            .map_err(error)?
            .map(|s| {
                let keys = s.data.into_iter().flat_map(BTreeMap::into_keys).collect();
                (s.metadata.resource_version.unwrap_or_default(), keys)
            }),
        Kind::ConfigMap => Api::<ConfigMap>::namespaced(client.clone(), namespace)
            .get_opt(&reference.name)
            .await
            .map_err(error)?
            .map(|c| {
                let keys = c
                    .data
                    .into_iter()
                    .flat_map(BTreeMap::into_keys)
                    .chain(c.binary_data.into_iter().flat_map(BTreeMap::into_keys))
                    .collect();
                (c.metadata.resource_version.unwrap_or_default(), keys)
            }),
    })
}

/// Whether `reason` is a missing reference (no pod starts while one is).
#[must_use]
pub fn is_missing_reference(reason: &str) -> bool {
    matches!(
        reason,
        SECRET_MISSING
            | SECRET_KEY_MISSING
            | CONFIG_MAP_MISSING
            | KEYWORD_FILE_MISSING
            | "ReferenceUnreadable"
            | "RedisSecretMissing"
            | "RedisSecretInvalid"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use migrate_crds::pipeline::example_spec;

    /// Every Secret and the keyword ConfigMap are named once, with each key and the field
    /// naming it; a missing object names itself and its keys, a missing key its field.
    #[test]
    fn each_named_object_and_key_is_checked_and_named_when_missing() {
        let mut spec = example_spec();
        spec.sink.password_secret_ref = Some(SecretKeyRef {
            name: spec.sink.url_secret_ref.name.clone(),
            key: "password".to_owned(),
        });
        spec.sink.username_secret_ref = Some(SecretKeyRef {
            name: spec.sink.url_secret_ref.name.clone(),
            key: "username".to_owned(),
        });
        let refs = references(&spec);
        let sink = refs
            .iter()
            .find(|r| r.name == spec.sink.url_secret_ref.name)
            .unwrap();
        assert_eq!(sink.kind, Kind::Secret);
        assert_eq!(sink.keys.len(), 3, "{sink:?}");
        assert!(
            refs.iter().all(|r| r.name != spec.queue.url_secret_ref.name
                || r.name == spec.sink.url_secret_ref.name
                || r.name == spec.source.url_secret_ref.name),
            "the Redis Secret is checked by its own reader: {refs:?}"
        );

        let missing = problems_of("etl", sink, None);
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].reason, SECRET_MISSING);
        assert!(
            missing[0].message.contains(&format!(
                "etl/{} named by sink.urlSecretRef.name",
                sink.name
            )),
            "{}",
            missing[0].message
        );
        assert!(missing[0].message.contains("\"password\""));

        let keys: BTreeSet<String> = ["url".to_owned(), "username".to_owned()].into();
        let lacking = problems_of("etl", sink, Some(&keys));
        assert_eq!(lacking.len(), 1, "{lacking:?}");
        assert_eq!(lacking[0].reason, SECRET_KEY_MISSING);
        assert!(
            lacking[0]
                .message
                .contains("no key \"password\", named by sink.passwordSecretRef.key"),
            "{}",
            lacking[0].message
        );
    }

    #[test]
    fn a_keyword_file_missing_from_the_config_map_names_its_set() {
        let mut spec = example_spec();
        spec.keywords.config_map = Some("words".to_owned());
        let Some(reference) = references(&spec)
            .into_iter()
            .find(|r| r.kind == Kind::ConfigMap)
        else {
            panic!("no ConfigMap reference");
        };
        let file = spec.keywords.sets[0].file.clone();
        let problems = problems_of("etl", &reference, Some(&BTreeSet::new()));
        assert_eq!(problems[0].reason, KEYWORD_FILE_MISSING);
        assert!(
            problems[0]
                .message
                .contains(&format!("no key {file:?}, named by keywords.sets[0].file")),
            "{}",
            problems[0].message
        );
    }
}
