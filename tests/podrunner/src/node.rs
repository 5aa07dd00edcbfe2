//! The runner's Node: registered with a Ready condition, capacity and addresses, kept fresh by
//! a heartbeat (the Ready condition's `lastHeartbeatTime` and a Lease in `kube-node-lease`),
//! deleted when the runner stops.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// The field manager of the runner's writes.
pub const MANAGER: &str = "testbed-podrunner";
/// How often the heartbeat is written.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// The address of the node (and the `hostIP` of its pods).
pub const HOST_IP: &str = "127.0.0.1";
const LEASE_NAMESPACE: &str = "kube-node-lease";
const LEASE_SECONDS: i32 = 40;
const MAX_PODS: &str = "110";

/// Why the Node could not be written.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// An API call failed.
    #[error("cannot {verb} node {node}")]
    Api {
        /// What was done.
        verb: &'static str,
        /// The Node.
        node: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

/// What the Node offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// CPUs.
    pub cpus: u64,
}

impl Capacity {
    /// This machine's memory (`MemTotal` of `/proc/meminfo`) and CPUs.
    #[must_use]
    pub fn of_this_machine() -> Self {
        let memory_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            })
            .map_or(8 << 30, |kib| kib * 1024);
        let cpus =
            std::thread::available_parallelism().map_or(1, |n| u64::try_from(n.get()).unwrap_or(1));
        Self { memory_bytes, cpus }
    }
}

fn now() -> Time {
    let t = Timestamp::now();
    Time(Timestamp::from_second(t.as_second()).unwrap_or(t))
}

/// The Node's status: Ready since `since`, heartbeat `now`.
#[must_use]
pub fn node_status(name: &str, capacity: Capacity, since: &Time, now: &Time) -> NodeStatus {
    let resources = BTreeMap::from([
        ("cpu".to_owned(), Quantity(capacity.cpus.to_string())),
        (
            "memory".to_owned(),
            Quantity(capacity.memory_bytes.to_string()),
        ),
        ("pods".to_owned(), Quantity(MAX_PODS.to_owned())),
    ]);
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        conditions: Some(vec![NodeCondition {
            type_: "Ready".to_owned(),
            status: "True".to_owned(),
            reason: Some("KubeletReady".to_owned()),
            message: Some("testbed-podrunner is posting ready status".to_owned()),
            last_heartbeat_time: Some(now.clone()),
            last_transition_time: Some(since.clone()),
        }]),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".to_owned(),
                address: HOST_IP.to_owned(),
            },
            NodeAddress {
                type_: "Hostname".to_owned(),
                address: name.to_owned(),
            },
        ]),
        node_info: Some(NodeSystemInfo {
            architecture: std::env::consts::ARCH.to_owned(),
            operating_system: std::env::consts::OS.to_owned(),
            os_image: "testbed-podrunner (local processes)".to_owned(),
            container_runtime_version: "podrunner://0.1.0".to_owned(),
            kubelet_version: format!("testbed-podrunner-{}", env!("CARGO_PKG_VERSION")),
            ..NodeSystemInfo::default()
        }),
        ..NodeStatus::default()
    }
}

/// The registered Node and its heartbeat.
#[derive(Clone)]
pub struct Registration {
    client: Client,
    name: String,
    capacity: Capacity,
    since: Time,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Registration {
    /// Creates (or takes over) the Node `name` and writes its first status.
    ///
    /// # Errors
    /// [`NodeError`] when the API server refuses.
    pub async fn register(
        client: Client,
        name: &str,
        capacity: Capacity,
    ) -> Result<Self, NodeError> {
        let nodes: Api<Node> = Api::all(client.clone());
        let node = Node {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(BTreeMap::from([
                    ("kubernetes.io/hostname".to_owned(), name.to_owned()),
                    ("kubernetes.io/os".to_owned(), "linux".to_owned()),
                    (
                        "testbed.migrate-operator.io/podrunner".to_owned(),
                        "true".to_owned(),
                    ),
                ])),
                ..ObjectMeta::default()
            },
            ..Node::default()
        };
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(source) => {
                return Err(NodeError::Api {
                    verb: "create",
                    node: name.to_owned(),
                    source,
                });
            }
        }
        let registration = Self {
            client,
            name: name.to_owned(),
            capacity,
            since: now(),
        };
        registration.heartbeat().await?;
        Ok(registration)
    }

    /// The Node's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Writes the status with a fresh heartbeat and renews the Lease (a Lease that cannot be
    /// written is only logged: the testbed may lack `kube-node-lease`).
    ///
    /// # Errors
    /// [`NodeError`] when the status cannot be written.
    pub async fn heartbeat(&self) -> Result<(), NodeError> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let status = node_status(&self.name, self.capacity, &self.since, &now());
        nodes
            .patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .map_err(|source| NodeError::Api {
                verb: "patch the status of",
                node: self.name.clone(),
                source,
            })?;
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), LEASE_NAMESPACE);
        let t = Timestamp::now();
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(LEASE_NAMESPACE.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.name.clone()),
                lease_duration_seconds: Some(LEASE_SECONDS),
                renew_time: Some(MicroTime(t)),
                ..LeaseSpec::default()
            }),
        };
        let mut body = serde_json::to_value(&lease).unwrap_or_else(|_| json!({}));
        body["apiVersion"] = json!("coordination.k8s.io/v1");
        body["kind"] = json!("Lease");
        if let Err(e) = leases
            .patch(
                &self.name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
        {
            tracing::debug!(node = %self.name, error = %e, "Node Lease not renewed.");
        }
        Ok(())
    }

    /// Deletes the Node and its Lease (404 is success).
    ///
    /// # Errors
    /// [`NodeError`] when the API server refuses.
    pub async fn deregister(&self) -> Result<(), NodeError> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), LEASE_NAMESPACE);
        let _ = leases.delete(&self.name, &DeleteParams::default()).await;
        let nodes: Api<Node> = Api::all(self.client.clone());
        match nodes.delete(&self.name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(source) => Err(NodeError::Api {
                verb: "delete",
                node: self.name.clone(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_is_ready_with_capacity_addresses_and_a_fresh_heartbeat() {
        let since = Time(Timestamp::from_second(1_000).unwrap());
        let beat = Time(Timestamp::from_second(2_000).unwrap());
        let s = node_status(
            "podrunner-1",
            Capacity {
                memory_bytes: 1 << 30,
                cpus: 2,
            },
            &since,
            &beat,
        );
        let ready = &s.conditions.as_ref().unwrap()[0];
        assert_eq!(
            (ready.type_.as_str(), ready.status.as_str()),
            ("Ready", "True")
        );
        assert_eq!(ready.last_heartbeat_time, Some(beat));
        assert_eq!(ready.last_transition_time, Some(since));
        let cap = s.capacity.as_ref().unwrap();
        assert_eq!(cap["memory"].0, "1073741824");
        assert_eq!(cap["cpu"].0, "2");
        assert_eq!(s.addresses.as_ref().unwrap()[0].address, HOST_IP);
    }
}
