//! Pod volumes as folders under the pod's own folder: `configMap` and `secret` volumes are
//! written as one file per key (or per `items` entry), `emptyDir` is an empty folder, and
//! `hostPath` is the host path itself. Other volume types are refused.
//!
//! The files are written when the pod starts and, like the kubelet's periodic sync, again
//! every [`REFRESH_EVERY`] while it runs: an edited key is replaced atomically (written aside,
//! then renamed), so a running process sees ConfigMap and Secret edits. A key removed from the
//! ConfigMap or Secret stays as a file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, KeyToPath, Pod};

use crate::env::Sources;

/// How often the ConfigMap and Secret volumes of a running pod are written again.
pub const REFRESH_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a pod's volumes cannot be prepared.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A volume type the runner does not emulate.
    #[error(
        "volume {0:?} is of a type the pod runner does not support (configMap, secret, emptyDir, hostPath are)"
    )]
    Unsupported(String),
    /// A non-optional ConfigMap or Secret does not exist.
    #[error("{kind} {name:?} not found")]
    Missing {
        /// `configmap` or `secret`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// An `items` entry names a key that does not exist.
    #[error("key {key:?} of {kind} {name:?} not found")]
    MissingKey {
        /// `configmap` or `secret`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The key.
        key: String,
    },
    /// A path in `items` or `subPath` leaves the volume.
    #[error("path {0:?} must be relative and must not contain '..'")]
    BadPath(String),
    /// A mount names a volume the pod does not have.
    #[error("volumeMount {0:?} names no volume of the pod")]
    NoVolume(String),
    /// Writing a file or folder failed.
    #[error("cannot write {path}")]
    Write {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Where a volume's content comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A ConfigMap's keys.
    ConfigMap {
        /// ConfigMap name.
        name: String,
        /// Selected keys and their file names (every key when `None`).
        items: Option<Vec<KeyToPath>>,
        /// Whether a missing ConfigMap is an empty volume.
        optional: bool,
        /// File mode.
        mode: u32,
    },
    /// A Secret's keys.
    Secret {
        /// Secret name.
        name: String,
        /// Selected keys and their file names (every key when `None`).
        items: Option<Vec<KeyToPath>>,
        /// Whether a missing Secret is an empty volume.
        optional: bool,
        /// File mode.
        mode: u32,
    },
    /// An empty folder.
    EmptyDir,
    /// A path of the host.
    HostPath(PathBuf),
}

/// One volume of the pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Volume name.
    pub name: String,
    /// Its content.
    pub kind: Kind,
}

fn mode(m: Option<i32>) -> u32 {
    m.and_then(|m| u32::try_from(m).ok()).unwrap_or(0o644) & 0o777
}

/// The pod's volumes.
///
/// # Errors
/// [`VolumeError::Unsupported`] for a volume type other than configMap, secret, emptyDir and
/// hostPath.
pub fn plan(pod: &Pod) -> Result<Vec<Plan>, VolumeError> {
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    volumes
        .iter()
        .map(|v| {
            let kind = if let Some(c) = &v.config_map {
                Kind::ConfigMap {
                    name: c.name.clone(),
                    items: c.items.clone(),
                    optional: c.optional == Some(true),
                    mode: mode(c.default_mode),
                }
            } else if let Some(s) = &v.secret {
                Kind::Secret {
                    name: s.secret_name.clone().unwrap_or_default(),
                    items: s.items.clone(),
                    optional: s.optional == Some(true),
                    mode: mode(s.default_mode),
                }
            } else if v.empty_dir.is_some() {
                Kind::EmptyDir
            } else if let Some(h) = &v.host_path {
                Kind::HostPath(PathBuf::from(&h.path))
            } else {
                return Err(VolumeError::Unsupported(v.name.clone()));
            };
            Ok(Plan {
                name: v.name.clone(),
                kind,
            })
        })
        .collect()
}

fn relative(path: &str) -> Result<&str, VolumeError> {
    if path.is_empty()
        || path.starts_with('/')
        || path.split('/').any(|part| part == ".." || part.is_empty())
    {
        return Err(VolumeError::BadPath(path.to_owned()));
    }
    Ok(path)
}

/// The files of a ConfigMap or Secret volume: (relative path, content, mode).
///
/// # Errors
/// [`VolumeError::MissingKey`] for an `items` key that is not in `data`, and
/// [`VolumeError::BadPath`] for a path leaving the volume.
pub fn files(
    kind: &'static str,
    name: &str,
    items: Option<&[KeyToPath]>,
    data: &BTreeMap<String, Vec<u8>>,
    default_mode: u32,
) -> Result<Vec<(String, Vec<u8>, u32)>, VolumeError> {
    match items {
        None => data
            .iter()
            .map(|(k, v)| Ok((relative(k)?.to_owned(), v.clone(), default_mode)))
            .collect(),
        Some(items) => items
            .iter()
            .map(|item| {
                let value = data.get(&item.key).ok_or_else(|| VolumeError::MissingKey {
                    kind,
                    name: name.to_owned(),
                    key: item.key.clone(),
                })?;
                Ok((
                    relative(&item.path)?.to_owned(),
                    value.clone(),
                    item.mode.map_or(default_mode, |m| mode(Some(m))),
                ))
            })
            .collect(),
    }
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError + '_ {
    move |source| VolumeError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the volumes under `dir/<volume name>/`; returns each volume's host folder.
///
/// # Errors
/// [`VolumeError`] when a non-optional source is missing or a file cannot be written.
pub fn materialise(
    dir: &Path,
    plans: &[Plan],
    sources: &Sources,
) -> Result<BTreeMap<String, PathBuf>, VolumeError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut out = BTreeMap::new();
    for p in plans {
        let folder = dir.join(&p.name);
        let (kind, name, items, optional, mode, data) = match &p.kind {
            Kind::HostPath(path) => {
                out.insert(p.name.clone(), path.clone());
                continue;
            }
            Kind::EmptyDir => {
                std::fs::create_dir_all(&folder).map_err(write_err(&folder))?;
                out.insert(p.name.clone(), folder);
                continue;
            }
            Kind::ConfigMap {
                name,
                items,
                optional,
                mode,
            } => (
                "configmap",
                name,
                items,
                optional,
                mode,
                sources.config_maps.get(name),
            ),
            Kind::Secret {
                name,
                items,
                optional,
                mode,
            } => (
                "secret",
                name,
                items,
                optional,
                mode,
                sources.secrets.get(name),
            ),
        };
        std::fs::create_dir_all(&folder).map_err(write_err(&folder))?;
        let empty = BTreeMap::new();
        let data = match data {
            Some(d) => d,
            None if *optional => &empty,
            None => {
                return Err(VolumeError::Missing {
                    kind,
                    name: name.clone(),
                });
            }
        };
        for (path, content, file_mode) in files(kind, name, items.as_deref(), data, *mode)? {
            let target = folder.join(&path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(write_err(parent))?;
            }
            if std::fs::read(&target).is_ok_and(|old| old == content) {
                continue;
            }
            // Written aside and renamed over the old file, so a reader never sees half of it.
            let mut aside = target.as_os_str().to_owned();
            aside.push(".podrunner-new");
            let aside = PathBuf::from(aside);
            std::fs::write(&aside, &content).map_err(write_err(&aside))?;
            std::fs::set_permissions(&aside, std::fs::Permissions::from_mode(file_mode))
                .map_err(write_err(&aside))?;
            std::fs::rename(&aside, &target).map_err(write_err(&target))?;
        }
        out.insert(p.name.clone(), folder);
    }
    Ok(out)
}

/// The container's mounts as (container path, host path), `subPath` applied.
///
/// # Errors
/// [`VolumeError::NoVolume`] or [`VolumeError::BadPath`].
pub fn mounts(
    container: &Container,
    volume_dirs: &BTreeMap<String, PathBuf>,
) -> Result<Vec<(String, PathBuf)>, VolumeError> {
    container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| {
            let host = volume_dirs
                .get(&m.name)
                .ok_or_else(|| VolumeError::NoVolume(m.name.clone()))?;
            let host = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sub) => host.join(relative(sub)?),
                None => host.clone(),
            };
            Ok((m.mount_path.clone(), host))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {
                "containers": [{"name": "worker", "volumeMounts": [
                    {"name": "pipeline", "mountPath": "/etc/migrate/pipeline.yaml", "subPath": "pipeline.yaml"},
                    {"name": "keywords", "mountPath": "/etc/migrate/keywords"},
                    {"name": "tmp", "mountPath": "/tmp"}
                ]}],
                "volumes": [
                    {"name": "pipeline", "configMap": {"name": "job-pipeline"}},
                    {"name": "keywords", "configMap": {"name": "kw", "items": [{"key": "topics.txt", "path": "t/topics.txt", "mode": 256}]}},
                    {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}
                ]
            }
        }))
        .unwrap()
    }

    #[test]
    fn config_maps_become_files_and_empty_dirs_folders_with_sub_paths_mounted() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = pod();
        let plans = plan(&p).unwrap();
        let sources = Sources {
            config_maps: BTreeMap::from([
                (
                    "job-pipeline".to_owned(),
                    BTreeMap::from([("pipeline.yaml".to_owned(), b"mode: Drain\n".to_vec())]),
                ),
                (
                    "kw".to_owned(),
                    BTreeMap::from([
                        ("topics.txt".to_owned(), "词\n".as_bytes().to_vec()),
                        ("other.txt".to_owned(), b"x".to_vec()),
                    ]),
                ),
            ]),
            ..Sources::default()
        };
        let dirs = materialise(dir.path(), &plans, &sources).unwrap();
        let m = mounts(&p.spec.as_ref().unwrap().containers[0], &dirs).unwrap();
        let host = |c: &str| m.iter().find(|(p, _)| p == c).unwrap().1.clone();
        assert_eq!(
            std::fs::read_to_string(host("/etc/migrate/pipeline.yaml")).unwrap(),
            "mode: Drain\n"
        );
        let topics = host("/etc/migrate/keywords").join("t/topics.txt");
        assert_eq!(std::fs::read_to_string(&topics).unwrap(), "词\n");
        assert_eq!(
            std::fs::metadata(&topics).unwrap().permissions().mode() & 0o777,
            0o400
        );
        assert!(!host("/etc/migrate/keywords").join("other.txt").exists());
        assert!(host("/tmp").is_dir());

        let mut edited = sources.clone();
        edited
            .config_maps
            .get_mut("kw")
            .unwrap()
            .insert("topics.txt".to_owned(), "新\n".as_bytes().to_vec());
        materialise(dir.path(), &plans, &edited).unwrap();
        assert_eq!(
            std::fs::read_to_string(&topics).unwrap(),
            "新\n",
            "an edit is written again"
        );
    }

    #[test]
    fn a_missing_config_map_or_an_escaping_path_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let plans = plan(&pod()).unwrap();
        let err = materialise(dir.path(), &plans, &Sources::default()).unwrap_err();
        assert!(err.to_string().contains("job-pipeline"), "{err}");
        let items = [KeyToPath {
            key: "k".to_owned(),
            path: "../escape".to_owned(),
            mode: None,
        }];
        let data = BTreeMap::from([("k".to_owned(), vec![])]);
        assert!(matches!(
            files("configmap", "x", Some(&items), &data, 0o644),
            Err(VolumeError::BadPath(_))
        ));
    }

    #[test]
    fn an_unsupported_volume_type_is_named() {
        let p: Pod = serde_json::from_value(json!({"spec": {"containers": [],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "c"}}]}}))
        .unwrap();
        assert!(matches!(plan(&p), Err(VolumeError::Unsupported(n)) if n == "data"));
    }
}
