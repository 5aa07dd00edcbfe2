//! The runner's settings: which pods it serves, which binary each image stands for, where it
//! keeps its state, and the pool of pod IPs.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a setting is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// An `--image` flag is not `NAME=PATH`.
    #[error("--image {0:?} is not NAME=PATH")]
    Image(String),
    /// The IP range is empty or not on the loopback network.
    #[error("pod IPs {first}..={last} are not a range of 127.0.0.0/8 addresses")]
    Ips {
        /// First address.
        first: Ipv4Addr,
        /// Last address.
        last: Ipv4Addr,
    },
}

/// Flags of `testbed-podrunner`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "testbed-podrunner",
    version,
    about = "A stand-in kubelet for the testbed: binds pods to a Node of its own and runs their containers as local processes."
)]
pub struct Args {
    /// Name of the Node this runner registers (default `podrunner-<pid>`).
    #[arg(long)]
    pub node_name: Option<String>,
    /// Serve only pods of this namespace (default: every namespace).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Serve only pods matching this label selector, e.g. `app.kubernetes.io/name=migrate-worker`.
    #[arg(long)]
    pub selector: Option<String>,
    /// `IMAGE=PATH`: containers of IMAGE run the binary PATH. IMAGE matches the whole image
    /// reference, the reference without its tag or digest, or its last path segment (so
    /// `worker=...` matches `ghcr.io/migrate-operator/worker:0.1.0`).
    #[arg(long = "image", value_name = "IMAGE=PATH")]
    pub images: Vec<String>,
    /// Folder of the runner's state: one folder per pod with its volumes, logs, pid files and
    /// termination-message files.
    #[arg(long)]
    pub state_dir: PathBuf,
    /// First pod IP handed out.
    #[arg(long, default_value = "127.0.0.2")]
    pub first_ip: Ipv4Addr,
    /// Last pod IP handed out.
    #[arg(long, default_value = "127.0.0.254")]
    pub last_ip: Ipv4Addr,
    /// Environment variables of the runner passed on to every container (e.g. `RUST_LOG`).
    #[arg(long = "pass-env", value_name = "NAME")]
    pub pass_env: Vec<String>,
    /// Keep each pod's folder (logs included) after the pod is gone.
    #[arg(long)]
    pub keep_pod_dirs: bool,
    /// First restart delay of a container (doubled per restart).
    #[arg(long, default_value_t = 10)]
    pub backoff_base_seconds: u64,
    /// Longest restart delay.
    #[arg(long, default_value_t = 300)]
    pub backoff_max_seconds: u64,
    /// Bytes of a container log before it is rotated (one old file kept).
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub log_max_bytes: u64,
    /// Seconds children get after SIGTERM when the runner itself stops.
    #[arg(long, default_value_t = 2)]
    pub shutdown_grace_seconds: u64,
}

/// The settings, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The Node's name.
    pub node_name: String,
    /// Served namespace (all when `None`).
    pub namespace: Option<String>,
    /// Served label selector.
    pub selector: Option<String>,
    /// Image name -> binary.
    pub images: ImageMap,
    /// State folder.
    pub state_dir: PathBuf,
    /// Pod IPs.
    pub first_ip: Ipv4Addr,
    /// Pod IPs.
    pub last_ip: Ipv4Addr,
    /// Variables passed on to containers, with their values.
    pub pass_env: Vec<(String, String)>,
    /// Keep pod folders.
    pub keep_pod_dirs: bool,
    /// First restart delay.
    pub backoff_base: Duration,
    /// Longest restart delay.
    pub backoff_max: Duration,
    /// Log cap.
    pub log_max_bytes: u64,
    /// Grace of children at shutdown.
    pub shutdown_grace: Duration,
}

impl Config {
    /// Checks the flags.
    ///
    /// # Errors
    /// [`ConfigError`] for a malformed `--image` or IP range.
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        let images = ImageMap::parse(&args.images)?;
        let (first, last) = (args.first_ip, args.last_ip);
        if first.octets()[0] != 127 || last.octets()[0] != 127 || first > last {
            return Err(ConfigError::Ips { first, last });
        }
        let pass_env = args
            .pass_env
            .iter()
            .filter_map(|n| std::env::var(n).ok().map(|v| (n.clone(), v)))
            .collect();
        Ok(Self {
            node_name: args
                .node_name
                .unwrap_or_else(|| format!("podrunner-{}", std::process::id())),
            namespace: args.namespace,
            selector: args.selector,
            images,
            state_dir: args.state_dir,
            first_ip: first,
            last_ip: last,
            pass_env,
            keep_pod_dirs: args.keep_pod_dirs,
            backoff_base: Duration::from_secs(args.backoff_base_seconds),
            backoff_max: Duration::from_secs(
                args.backoff_max_seconds.max(args.backoff_base_seconds),
            ),
            log_max_bytes: args.log_max_bytes.max(4096),
            shutdown_grace: Duration::from_secs(args.shutdown_grace_seconds),
        })
    }
}

/// Which binary stands for which image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageMap(Vec<(String, PathBuf)>);

impl ImageMap {
    /// Reads `NAME=PATH` entries.
    ///
    /// # Errors
    /// [`ConfigError::Image`] for an entry without `=` or with an empty side.
    pub fn parse(entries: &[String]) -> Result<Self, ConfigError> {
        entries
            .iter()
            .map(|e| match e.split_once('=') {
                Some((name, path)) if !name.is_empty() && !path.is_empty() => {
                    Ok((name.to_owned(), PathBuf::from(path)))
                }
                _ => Err(ConfigError::Image(e.clone())),
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// The binary of `image`: an entry naming the whole reference, else the reference without
    /// tag or digest, else its last path segment.
    #[must_use]
    pub fn resolve(&self, image: &str) -> Option<&Path> {
        let untagged = strip_tag(image);
        let last = untagged.rsplit('/').next().unwrap_or(untagged);
        [image, untagged, last].iter().find_map(|candidate| {
            self.0
                .iter()
                .find(|(name, _)| name == candidate)
                .map(|(_, p)| p.as_path())
        })
    }
}

/// `registry/repo:tag@digest` without `:tag` and `@digest`.
fn strip_tag(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    match no_digest.rfind(':') {
        Some(colon) if !no_digest[colon..].contains('/') => &no_digest[..colon],
        _ => no_digest,
    }
}

/// The pod IPs: the lowest free address is handed out, and an address is reused once its pod
/// is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpPool {
    first: u32,
    last: u32,
    used: BTreeSet<u32>,
}

impl IpPool {
    /// A pool of `first..=last`.
    #[must_use]
    pub fn new(first: Ipv4Addr, last: Ipv4Addr) -> Self {
        Self {
            first: u32::from(first),
            last: u32::from(last),
            used: BTreeSet::new(),
        }
    }

    /// The lowest free address, or `None` when every one is used.
    pub fn take(&mut self) -> Option<Ipv4Addr> {
        let free = (self.first..=self.last).find(|a| !self.used.contains(a))?;
        self.used.insert(free);
        Some(Ipv4Addr::from(free))
    }

    /// Gives an address back.
    pub fn give_back(&mut self, ip: Ipv4Addr) {
        self.used.remove(&u32::from(ip));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_matches_by_reference_repository_or_last_segment() {
        let map = ImageMap::parse(&[
            "worker=/bin/worker".to_owned(),
            "ghcr.io/x/exact:1.0=/bin/exact".to_owned(),
            "localhost:5000/tool=/bin/tool".to_owned(),
        ])
        .unwrap();
        assert_eq!(
            map.resolve("ghcr.io/migrate-operator/worker:0.1.0"),
            Some(Path::new("/bin/worker"))
        );
        assert_eq!(
            map.resolve("ghcr.io/x/exact:1.0"),
            Some(Path::new("/bin/exact"))
        );
        assert_eq!(
            map.resolve("localhost:5000/tool@sha256:abc"),
            Some(Path::new("/bin/tool"))
        );
        assert_eq!(map.resolve("ghcr.io/x/exact:2.0"), None);
        assert_eq!(
            ImageMap::parse(&["nopath".to_owned()]),
            Err(ConfigError::Image("nopath".to_owned()))
        );
    }

    #[test]
    fn pod_ips_are_the_lowest_free_addresses_and_are_reused() {
        let mut pool = IpPool::new(Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 4));
        let a = pool.take().unwrap();
        let b = pool.take().unwrap();
        let c = pool.take().unwrap();
        assert_eq!([a, b, c], [2, 3, 4].map(|n| Ipv4Addr::new(127, 0, 0, n)));
        assert_eq!(pool.take(), None);
        pool.give_back(b);
        assert_eq!(pool.take(), Some(b));
    }
}
