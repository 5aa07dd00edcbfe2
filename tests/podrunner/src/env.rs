//! A container's environment, resolved as the kubelet resolves it: `envFrom` first, then `env`
//! in order (a later variable of the same name wins), each value expanded with `$(NAME)` over
//! the variables defined before it (`$$` is a literal `$`, an unknown `$(NAME)` stays as it
//! is). Pure: Secrets and ConfigMaps are passed in, already read.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::quantity::{self, QuantityError};

/// Why an environment cannot be made (the kubelet's `CreateContainerConfigError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// A Secret named by a non-optional reference does not exist.
    #[error("secret {0:?} not found")]
    SecretMissing(String),
    /// The Secret exists but lacks the key.
    #[error("couldn't find key {key} in Secret {name}")]
    SecretKeyMissing {
        /// The Secret.
        name: String,
        /// The key.
        key: String,
    },
    /// A ConfigMap named by a non-optional reference does not exist.
    #[error("configmap {0:?} not found")]
    ConfigMapMissing(String),
    /// The ConfigMap exists but lacks the key.
    #[error("couldn't find key {key} in ConfigMap {name}")]
    ConfigMapKeyMissing {
        /// The ConfigMap.
        name: String,
        /// The key.
        key: String,
    },
    /// A `fieldRef` names a field the kubelet does not expose.
    #[error("unsupported fieldRef {0:?}")]
    FieldPath(String),
    /// A `resourceFieldRef` names an unknown resource or container, or a bad divisor.
    #[error("cannot resolve resourceFieldRef {resource:?}")]
    Resource {
        /// The resource, e.g. `limits.memory`.
        resource: String,
        /// What was wrong with the numbers, if anything.
        #[source]
        source: Option<QuantityError>,
    },
}

/// The Secrets and ConfigMaps a pod references, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct References {
    /// Secret names.
    pub secrets: BTreeSet<String>,
    /// ConfigMap names.
    pub config_maps: BTreeSet<String>,
}

/// Every Secret and ConfigMap a pod's containers (`env`, `envFrom`) and volumes name.
#[must_use]
pub fn references(pod: &Pod) -> References {
    let mut refs = References::default();
    let Some(spec) = &pod.spec else {
        return refs;
    };
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        for e in c.env.iter().flatten() {
            if let Some(from) = &e.value_from {
                if let Some(s) = &from.secret_key_ref {
                    refs.secrets.insert(s.name.clone());
                }
                if let Some(m) = &from.config_map_key_ref {
                    refs.config_maps.insert(m.name.clone());
                }
            }
        }
        for f in c.env_from.iter().flatten() {
            if let Some(s) = &f.secret_ref {
                refs.secrets.insert(s.name.clone());
            }
            if let Some(m) = &f.config_map_ref {
                refs.config_maps.insert(m.name.clone());
            }
        }
    }
    for v in spec.volumes.iter().flatten() {
        if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            refs.secrets.insert(s);
        }
        if let Some(m) = &v.config_map {
            refs.config_maps.insert(m.name.clone());
        }
    }
    refs
}

/// Secrets and ConfigMaps as read from the API server: name -> key -> bytes. A name that is
/// absent does not exist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    /// Secret data by Secret name.
    pub secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// ConfigMap `data` (and `binaryData`) by ConfigMap name.
    pub config_maps: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

/// What the kubelet knows about the pod and its node, for `fieldRef` and `resourceFieldRef`.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The pod.
    pub pod: &'a Pod,
    /// Its IP.
    pub pod_ip: &'a str,
    /// Its node's IP.
    pub host_ip: &'a str,
    /// Its node's name.
    pub node_name: &'a str,
    /// The node's allocatable memory in bytes (what `limits.memory` gives without a limit).
    pub node_memory_bytes: u64,
    /// The node's allocatable CPUs (what `limits.cpu` gives without a limit).
    pub node_cpus: u64,
}

/// The resolved environment of `container`, in definition order.
///
/// # Errors
/// [`EnvError`] when a non-optional Secret/ConfigMap or key is missing or a reference cannot be
/// resolved.
pub fn resolve(
    container: &Container,
    facts: &Facts<'_>,
    sources: &Sources,
) -> Result<Vec<(String, String)>, EnvError> {
    let mut vars: Vec<(String, String)> = Vec::new();
    let set = |vars: &mut Vec<(String, String)>, name: String, value: String| {
        if let Some(slot) = vars.iter_mut().find(|(n, _)| *n == name) {
            slot.1 = value;
        } else {
            vars.push((name, value));
        }
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = if let Some(s) = &from.secret_ref {
            match sources.secrets.get(&s.name) {
                Some(d) => Some(d),
                None if s.optional == Some(true) => None,
                None => return Err(EnvError::SecretMissing(s.name.clone())),
            }
        } else if let Some(m) = &from.config_map_ref {
            match sources.config_maps.get(&m.name) {
                Some(d) => Some(d),
                None if m.optional == Some(true) => None,
                None => return Err(EnvError::ConfigMapMissing(m.name.clone())),
            }
        } else {
            None
        };
        for (key, value) in data.into_iter().flatten() {
            let name = format!("{prefix}{key}");
            // The kubelet skips keys that are not valid variable names (and says so in an
            // Event); so does the runner, silently.
            if valid_name(&name) {
                set(&mut vars, name, String::from_utf8_lossy(value).into_owned());
            }
        }
    }
    for e in container.env.iter().flatten() {
        let value = if let Some(v) = &e.value {
            let known = vars.clone();
            Some(expand(v, |n| {
                known.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())
            }))
        } else if let Some(from) = &e.value_from {
            value_from(container, from, facts, sources)?
        } else {
            Some(String::new())
        };
        if let Some(value) = value {
            set(&mut vars, e.name.clone(), value);
        }
    }
    Ok(vars)
}

fn value_from(
    container: &Container,
    from: &k8s_openapi::api::core::v1::EnvVarSource,
    facts: &Facts<'_>,
    sources: &Sources,
) -> Result<Option<String>, EnvError> {
    if let Some(s) = &from.secret_key_ref {
        let optional = s.optional == Some(true);
        return match sources.secrets.get(&s.name) {
            None if optional => Ok(None),
            None => Err(EnvError::SecretMissing(s.name.clone())),
            Some(data) => match data.get(&s.key) {
                Some(v) => Ok(Some(String::from_utf8_lossy(v).into_owned())),
                None if optional => Ok(None),
                None => Err(EnvError::SecretKeyMissing {
                    name: s.name.clone(),
                    key: s.key.clone(),
                }),
            },
        };
    }
    if let Some(m) = &from.config_map_key_ref {
        let optional = m.optional == Some(true);
        return match sources.config_maps.get(&m.name) {
            None if optional => Ok(None),
            None => Err(EnvError::ConfigMapMissing(m.name.clone())),
            Some(data) => match data.get(&m.key) {
                Some(v) => Ok(Some(String::from_utf8_lossy(v).into_owned())),
                None if optional => Ok(None),
                None => Err(EnvError::ConfigMapKeyMissing {
                    name: m.name.clone(),
                    key: m.key.clone(),
                }),
            },
        };
    }
    if let Some(f) = &from.field_ref {
        return field(&f.field_path, facts).map(Some);
    }
    if let Some(r) = &from.resource_field_ref {
        return resource(container, r, facts).map(Some);
    }
    Ok(Some(String::new()))
}

fn field(path: &str, facts: &Facts<'_>) -> Result<String, EnvError> {
    let meta = &facts.pod.metadata;
    let spec = facts.pod.spec.as_ref();
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| -> Option<String> {
        let key = path
            .strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => facts.node_name.to_owned(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => facts.pod_ip.to_owned(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.to_owned(),
        other => keyed("metadata.labels", meta.labels.as_ref())
            .or_else(|| keyed("metadata.annotations", meta.annotations.as_ref()))
            .ok_or_else(|| EnvError::FieldPath(other.to_owned()))?,
    };
    Ok(value)
}

fn resource(
    container: &Container,
    r: &k8s_openapi::api::core::v1::ResourceFieldSelector,
    facts: &Facts<'_>,
) -> Result<String, EnvError> {
    let fail = |source| EnvError::Resource {
        resource: r.resource.clone(),
        source,
    };
    let target = match r.container_name.as_deref().filter(|n| !n.is_empty()) {
        None => container,
        Some(name) => facts
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|c| c.name == name))
            .ok_or_else(|| fail(None))?,
    };
    let (kind, name) = r.resource.split_once('.').ok_or_else(|| fail(None))?;
    let resources = target.resources.as_ref();
    let limit = resources
        .and_then(|x| x.limits.as_ref())
        .and_then(|l| l.get(name))
        .map(|q| q.0.clone());
    let request = resources
        .and_then(|x| x.requests.as_ref())
        .and_then(|l| l.get(name))
        .map(|q| q.0.clone());
    let node = match name {
        "memory" => facts.node_memory_bytes.to_string(),
        "cpu" => facts.node_cpus.to_string(),
        "ephemeral-storage" => "0".to_owned(),
        _ => return Err(fail(None)),
    };
    let value = match kind {
        // Without a limit the kubelet exposes the node's allocatable amount.
        "limits" => limit.unwrap_or(node),
        "requests" => request.or(limit).unwrap_or_else(|| "0".to_owned()),
        _ => return Err(fail(None)),
    };
    let divisor = r.divisor.as_ref().map_or("1", |d| d.0.as_str());
    quantity::divide_ceil(&value, divisor).map_err(|e| fail(Some(e)))
}

/// Whether `name` may be an environment variable name (what `envFrom` keys must be).
#[must_use]
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Expands `$(NAME)` in `text` with `lookup`, as Kubernetes expands `env`, `command` and
/// `args`: `$$` is a literal `$`, and a name `lookup` does not know stays as written.
#[must_use]
pub fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "w-1", "namespace": "ns", "uid": "u-1",
                          "labels": {"app": "worker"}},
            "spec": {"containers": [{
                "name": "worker",
                "resources": {"limits": {"memory": "96Mi"}},
                "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
                "env": [
                    {"name": "PLAIN", "value": "x"},
                    {"name": "EXPANDED", "value": "$(PLAIN)-$(CFG_MODE)-$(UNKNOWN)-$$(PLAIN)"},
                    {"name": "REDIS", "valueFrom": {"secretKeyRef": {"name": "redis", "key": "url"}}},
                    {"name": "OPTIONAL", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": true}}},
                    {"name": "KEYWORD", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "MODE"}}},
                    {"name": "ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "MEM", "valueFrom": {"resourceFieldRef": {"containerName": "worker", "resource": "limits.memory"}}},
                    {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                    {"name": "PLAIN", "value": "y"}
                ]
            }],
            "volumes": [{"name": "kw", "configMap": {"name": "keywords"}}]}
        }))
        .unwrap()
    }

    fn sources() -> Sources {
        Sources {
            secrets: BTreeMap::from([(
                "redis".to_owned(),
                BTreeMap::from([("url".to_owned(), b"redis://127.0.0.1:6390".to_vec())]),
            )]),
            config_maps: BTreeMap::from([(
                "settings".to_owned(),
                BTreeMap::from([
                    ("MODE".to_owned(), b"drain".to_vec()),
                    ("not a name".to_owned(), b"skipped".to_vec()),
                ]),
            )]),
        }
    }

    fn facts(pod: &Pod) -> Facts<'_> {
        Facts {
            pod,
            pod_ip: "127.0.0.7",
            host_ip: "127.0.0.1",
            node_name: "podrunner-1",
            node_memory_bytes: 1 << 34,
            node_cpus: 2,
        }
    }

    #[test]
    fn every_kind_of_variable_is_resolved_in_order_with_later_names_winning() {
        let p = pod();
        let c = &p.spec.as_ref().unwrap().containers[0];
        let env: BTreeMap<String, String> = resolve(c, &facts(&p), &sources())
            .unwrap()
            .into_iter()
            .collect();
        let get = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(get("CFG_MODE"), Some("drain"));
        assert_eq!(get("PLAIN"), Some("y"));
        assert_eq!(get("EXPANDED"), Some("x-drain-$(UNKNOWN)-$(PLAIN)"));
        assert_eq!(get("REDIS"), Some("redis://127.0.0.1:6390"));
        assert_eq!(get("OPTIONAL"), None);
        assert_eq!(get("KEYWORD"), Some("drain"));
        assert_eq!(get("ID"), Some("w-1"));
        assert_eq!(get("NS"), Some("ns"));
        assert_eq!(get("IP"), Some("127.0.0.7"));
        assert_eq!(get("APP"), Some("worker"));
        assert_eq!(get("MEM"), Some("100663296"));
        assert_eq!(get("CPU"), Some("2"), "no cpu limit: the node's CPUs");
        assert!(!env.contains_key("CFG_not a name"));
    }

    #[test]
    fn a_missing_secret_or_key_is_a_config_error_naming_it() {
        let p = pod();
        let c = &p.spec.as_ref().unwrap().containers[0];
        let mut s = sources();
        s.secrets.clear();
        assert_eq!(
            resolve(c, &facts(&p), &s),
            Err(EnvError::SecretMissing("redis".to_owned()))
        );
        let mut s = sources();
        s.secrets.insert("redis".to_owned(), BTreeMap::new());
        assert_eq!(
            resolve(c, &facts(&p), &s),
            Err(EnvError::SecretKeyMissing {
                name: "redis".to_owned(),
                key: "url".to_owned()
            })
        );
    }

    #[test]
    fn references_name_every_secret_and_config_map() {
        let refs = references(&pod());
        assert_eq!(
            refs.secrets,
            BTreeSet::from(["redis".to_owned(), "nope".to_owned()])
        );
        assert_eq!(
            refs.config_maps,
            BTreeSet::from(["settings".to_owned(), "keywords".to_owned()])
        );
    }

    #[test]
    fn expansion_handles_escapes_unknown_names_and_unclosed_references() {
        let lookup = |n: &str| (n == "A").then(|| "1".to_owned());
        assert_eq!(expand("$(A)$(B)$$(A)$A$(A", lookup), "1$(B)$(A)$A$(A");
        assert_eq!(expand("no vars", lookup), "no vars");
    }
}
