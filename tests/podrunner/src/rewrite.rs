//! The runner's stand-in for a container's mount and network namespaces: rewriting the values a
//! process is given.
//!
//! A process started by the runner sees the host's file system and the host's network. So:
//!
//! - **Paths.** Every volume mount (and the container's `terminationMessagePath`) maps a
//!   container path to a folder or file under the pod's own folder. In each argument, command
//!   word and environment value, the whole value, or the part after its first `=` (for
//!   `--flag=/path`), is rewritten when it equals a mount path or begins with a mount path
//!   followed by `/`; the longest mount path wins. Paths inside files, or in the middle of a
//!   value, are not rewritten.
//! - **Listen addresses.** Each pod gets a loopback address `127.0.0.N` of its own, reported as
//!   its `status.podIP`. A value (or the part after its first `=`) that is exactly
//!   `0.0.0.0:<port>` or `[::]:<port>` becomes `127.0.0.N:<port>`, so that several pods can
//!   listen on the same port, each at its pod IP, as they would in network namespaces of their
//!   own. A process that binds a wildcard address some other way still binds the host's.

use std::path::{Path, PathBuf};

/// Rewrites the values given to one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewriter {
    /// (container path without trailing `/`, host path), longest container path first.
    mounts: Vec<(String, PathBuf)>,
    pod_ip: String,
}

impl Rewriter {
    /// A rewriter for `mounts` (container path -> host path) and the pod's IP.
    #[must_use]
    pub fn new(mounts: impl IntoIterator<Item = (String, PathBuf)>, pod_ip: &str) -> Self {
        let mut mounts: Vec<(String, PathBuf)> = mounts
            .into_iter()
            .map(|(c, h)| (c.trim_end_matches('/').to_owned(), h))
            .filter(|(c, _)| c.starts_with('/') && c.len() > 1)
            .collect();
        mounts.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Self {
            mounts,
            pod_ip: pod_ip.to_owned(),
        }
    }

    /// The host path of a container path, when a mount covers it.
    #[must_use]
    pub fn host_path(&self, container_path: &str) -> Option<PathBuf> {
        self.mounts.iter().find_map(|(mount, host)| {
            let rest = container_path.strip_prefix(mount.as_str())?;
            if rest.is_empty() {
                Some(host.clone())
            } else {
                rest.strip_prefix('/').map(|r| join(host, r))
            }
        })
    }

    /// The value as the process is given it (see the module documentation for the rules).
    #[must_use]
    pub fn value(&self, value: &str) -> String {
        if let Some(v) = self.whole(value) {
            return v;
        }
        if let Some((flag, rest)) = value.split_once('=')
            && let Some(v) = self.whole(rest)
        {
            return format!("{flag}={v}");
        }
        value.to_owned()
    }

    fn whole(&self, value: &str) -> Option<String> {
        if let Some(port) = wildcard_port(value) {
            return Some(format!("{}:{port}", self.pod_ip));
        }
        self.host_path(value)
            .map(|p| p.to_string_lossy().into_owned())
    }
}

fn join(host: &Path, rest: &str) -> PathBuf {
    if rest.is_empty() {
        host.to_path_buf()
    } else {
        host.join(rest)
    }
}

/// The port of `0.0.0.0:<port>` or `[::]:<port>`.
fn wildcard_port(value: &str) -> Option<&str> {
    let port = value
        .strip_prefix("0.0.0.0:")
        .or_else(|| value.strip_prefix("[::]:"))?;
    (!port.is_empty() && port.len() <= 5 && port.chars().all(|c| c.is_ascii_digit()))
        .then_some(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewriter() -> Rewriter {
        Rewriter::new(
            [
                (
                    "/etc/migrate/pipeline.yaml".to_owned(),
                    PathBuf::from("/state/p/volumes/pipeline/pipeline.yaml"),
                ),
                (
                    "/etc/migrate/keywords".to_owned(),
                    PathBuf::from("/state/p/volumes/keywords"),
                ),
                ("/tmp/".to_owned(), PathBuf::from("/state/p/volumes/tmp")),
                (
                    "/dev/termination-log".to_owned(),
                    PathBuf::from("/state/p/worker.termination-log"),
                ),
            ],
            "127.0.0.9",
        )
    }

    #[test]
    fn mount_paths_and_paths_below_them_are_rewritten_longest_mount_first() {
        let r = rewriter();
        assert_eq!(
            r.value("/etc/migrate/pipeline.yaml"),
            "/state/p/volumes/pipeline/pipeline.yaml"
        );
        assert_eq!(
            r.value("/etc/migrate/keywords/topics.txt"),
            "/state/p/volumes/keywords/topics.txt"
        );
        assert_eq!(r.value("/tmp"), "/state/p/volumes/tmp");
        assert_eq!(
            r.value("--pipeline=/etc/migrate/pipeline.yaml"),
            "--pipeline=/state/p/volumes/pipeline/pipeline.yaml"
        );
    }

    #[test]
    fn other_values_are_left_alone() {
        let r = rewriter();
        for v in [
            "/etc/migrate",
            "/etc/migrate/keywordsx",
            "run",
            "/tmpfile",
            "a /tmp b",
            "redis://127.0.0.1:6390",
        ] {
            assert_eq!(r.value(v), v);
        }
    }

    #[test]
    fn a_wildcard_listen_address_becomes_the_pod_ip() {
        let r = rewriter();
        assert_eq!(r.value("0.0.0.0:9000"), "127.0.0.9:9000");
        assert_eq!(r.value("[::]:8080"), "127.0.0.9:8080");
        assert_eq!(r.value("--listen=0.0.0.0:9000"), "--listen=127.0.0.9:9000");
        assert_eq!(r.value("0.0.0.0:"), "0.0.0.0:");
        assert_eq!(r.value("10.0.0.0:9000"), "10.0.0.0:9000");
    }
}
