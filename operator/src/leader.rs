//! Leader election on a `coordination.k8s.io/v1` Lease, so that two operator replicas never
//! reconcile at the same time.
//!
//! The loop follows client-go's `leaderelection` package:
//! - every `retry_period` a candidate reads the Lease; a holder other than itself keeps the
//!   lease until `leaseDurationSeconds` have passed *on the candidate's own clock* since the
//!   candidate last saw the record change, so clock skew between machines does not matter;
//! - taking or renewing writes the whole spec with the `resourceVersion` read, so of two
//!   candidates racing for an expired lease exactly one wins (the other gets a conflict);
//! - a leader that could not renew for `renew_deadline` (shorter than the lease duration) steps
//!   down on its own, before anyone else may take over: losing the lease stops reconciling;
//! - on shutdown the leader releases the lease (empty holder) so a standby takes over at once.
//!
//! Leadership is published on a `tokio::sync::watch` channel of `bool`.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Why one round of the election failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// Reading, creating or writing the Lease failed.
    #[error("cannot {verb} lease {namespace}/{name}")]
    Lease {
        /// get, create or replace.
        verb: &'static str,
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

/// Settings of the election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Name of the Lease.
    pub name: String,
    /// Namespace of the Lease.
    pub namespace: String,
    /// This candidate's identity (the pod name).
    pub identity: String,
    /// How long a lease stays valid after its last renewal.
    pub lease_duration: Duration,
    /// How long a leader keeps leading without a successful renewal; below `lease_duration`.
    pub renew_deadline: Duration,
    /// Time between two rounds.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// The usual timings (15 s lease, 10 s renew deadline, 2 s retry) for a lease and identity.
    #[must_use]
    pub fn new(
        name: impl Into<String>,
        namespace: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What one round should do with the lease as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Someone else holds a valid lease: wait.
    Wait {
        /// The holder.
        holder: String,
    },
    /// Renew our own lease.
    Renew,
    /// Take a free or expired lease.
    Take,
}

/// Decides a round. `holder` is the Lease's holder, `observed_for` how long ago (on our clock)
/// the lease record last changed, `duration` the lease's validity.
#[must_use]
pub fn plan(holder: Option<&str>, me: &str, observed_for: Duration, duration: Duration) -> Plan {
    match holder.filter(|h| !h.is_empty()) {
        Some(h) if h == me => Plan::Renew,
        Some(h) if observed_for < duration => Plan::Wait {
            holder: h.to_owned(),
        },
        _ => Plan::Take,
    }
}

/// One candidate in the election.
#[derive(Debug)]
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The lease record last seen and when (our clock) it was first seen.
    observed: Option<(LeaseSpec, Instant)>,
}

impl LeaderElector {
    /// A candidate for the lease in `config`.
    #[must_use]
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        let api = Api::namespaced(client, &config.namespace);
        Self {
            api,
            config,
            observed: None,
        }
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    fn lease_error(&self, verb: &'static str) -> impl FnOnce(kube::Error) -> LeaderError + '_ {
        move |source| LeaderError::Lease {
            verb,
            namespace: self.config.namespace.clone(),
            name: self.config.name.clone(),
            source,
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// One round: reads the lease and takes or renews it when allowed. Returns whether this
    /// candidate holds the lease now.
    ///
    /// # Errors
    /// [`LeaderError`] when the API server cannot be read or written (a lost race is not an
    /// error: it returns `Ok(false)`).
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaderError> {
        let now = MicroTime(Timestamp::now());
        let current = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(self.lease_error("get"))?;
        let Some(lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(self.duration_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observed = created.spec.map(|s| (s, Instant::now()));
                    Ok(true)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(self.lease_error("create")(e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let seen_at = match &self.observed {
            Some((old, at)) if *old == spec => *at,
            _ => Instant::now(),
        };
        self.observed = Some((spec.clone(), seen_at));
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.config.lease_duration, Duration::from_secs);
        let me = self.config.identity.as_str();
        let renewing = match plan(
            spec.holder_identity.as_deref(),
            me,
            seen_at.elapsed(),
            duration,
        ) {
            Plan::Wait { holder } => {
                debug!(holder, "Lease held by another candidate.");
                return Ok(false);
            }
            Plan::Renew => true,
            Plan::Take => false,
        };
        let mut next = lease.clone();
        next.spec = Some(LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.duration_seconds()),
            acquire_time: if renewing {
                spec.acquire_time.clone()
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if renewing {
                spec.lease_transitions.unwrap_or(0)
            } else {
                spec.lease_transitions.unwrap_or(0).saturating_add(1)
            }),
            ..spec
        });
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &next)
            .await
        {
            Ok(written) => {
                self.observed = written.spec.map(|s| (s, Instant::now()));
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(self.lease_error("replace")(e)),
        }
    }

    /// Gives the lease up if this candidate holds it, so another takes over at once.
    ///
    /// # Errors
    /// [`LeaderError`] when the lease cannot be read or written.
    pub async fn release(&mut self) -> Result<(), LeaderError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(self.lease_error("get"))?
        else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(self.lease_error("replace")(e)),
        }
    }

    /// Runs the election until `shutdown` resolves, publishing leadership on `leading`, then
    /// releases the lease if held. A leader whose renewals keep failing steps down after
    /// `renew_deadline`.
    pub async fn run(mut self, leading: watch::Sender<bool>, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut last_renewed: Option<Instant> = None;
        loop {
            let outcome = self.try_acquire_or_renew().await;
            let is_leader = match outcome {
                Ok(true) => {
                    last_renewed = Some(Instant::now());
                    true
                }
                Ok(false) => {
                    last_renewed = None;
                    false
                }
                Err(e) => {
                    warn!(error = %migrate_contract::error_chain(&e), "Leader election round failed.");
                    last_renewed.is_some_and(|t| t.elapsed() < self.config.renew_deadline)
                }
            };
            if !is_leader {
                last_renewed = None;
            }
            leading.send_if_modified(|was| {
                if *was == is_leader {
                    return false;
                }
                if is_leader {
                    info!(identity = %self.config.identity, lease = %self.config.name, "Became the leader.");
                } else {
                    info!(identity = %self.config.identity, lease = %self.config.name, "Lost the lease; reconciling stops.");
                }
                *was = is_leader;
                true
            });
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(self.config.retry_period) => {}
            }
        }
        leading.send_replace(false);
        if let Err(e) = self.release().await {
            warn!(error = %migrate_contract::error_chain(&e), "Could not release the lease.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn a_free_lease_is_taken() {
        assert_eq!(plan(None, "a", Duration::ZERO, MIN), Plan::Take);
        assert_eq!(plan(Some(""), "a", Duration::ZERO, MIN), Plan::Take);
    }

    #[test]
    fn our_own_lease_is_renewed() {
        assert_eq!(
            plan(Some("a"), "a", Duration::from_secs(600), MIN),
            Plan::Renew
        );
    }

    #[test]
    fn another_holder_is_waited_for_until_the_lease_expires_on_our_clock() {
        assert_eq!(
            plan(Some("b"), "a", Duration::from_secs(59), MIN),
            Plan::Wait {
                holder: "b".to_owned()
            }
        );
        assert_eq!(
            plan(Some("b"), "a", Duration::from_secs(60), MIN),
            Plan::Take
        );
    }
}
