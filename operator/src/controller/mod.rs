//! The Kubernetes controller: reconciles MigrateJobs into worker pods.
//!
//! Worker pods are managed directly, not through a Deployment, because the operator must choose
//! which pod stops (an idle or draining one, never a busy one while an idle one exists), start a
//! replacement before it stops one, and account for every pod's in-flight ids. The decisions are
//! taken by the pure [`crate::policy::decide`], shared with the local backend; this module only
//! observes and carries them out.
//!
//! # One reconciliation ([`reconcile`])
//! 1. **Deletion** ([`cleanup`]): a job being deleted has its pods deleted, then (once they are
//!    gone) every processing list requeued, its ConfigMap and PodDisruptionBudget deleted, and
//!    the [`FINALIZER`] removed. 404 counts as success everywhere.
//! 2. **Validate** ([`validate`]): a spec the schema could not reject gets a Degraded condition
//!    and a Warning Event, then waits for an edit (`Action::await_change()`, no hot loop).
//! 3. **Children** ([`build`], [`apply`]): the pipeline ConfigMap (`pipeline.yaml`, the spec as
//!    the worker reads it) and a PodDisruptionBudget (`maxUnavailable: 1`), server-side applied
//!    once per generation.
//! 4. **Observe** ([`observe`]): the job's pods, the Redis Secret, the queue (length plus each
//!    processing list), each ready pod's `/metrics` and the Secrets' versions.
//! 5. **Plan** (`plan`, pure): `policy::decide(settings, observations, state)`, turned into the
//!    round's writes in order: ends nobody asked for recorded, ended pods reaped (processing
//!    list requeued, exit counted once, pod deleted), new pods started *before* any is
//!    drained, drained and killed pods annotated with their reason then deleted with (drain)
//!    or without (kill) their grace period, problems announced, and busy pods annotated
//!    `cluster-autoscaler.kubernetes.io/safe-to-evict: "false"`, idle ones `"true"`, with
//!    `controller.kubernetes.io/pod-deletion-cost` their in-flight count.
//! 6. **Act** (`act`): one loop over the planned steps; an Event ([`events`]) for every scale,
//!    restart, requeue and new problem.
//! 7. **Report** (`report`, [`status`]): the status, server-side applied with the field manager
//!    [`MANAGER`] when it changed; the job's gauges; the next round after
//!    `memory.checkIntervalMs`.
//!
//! # Scaling
//! With `spec.autoscaling: External`, desired workers = `spec.replicas`, set by `kubectl scale`,
//! an HPA or KEDA through the scale subresource. With `Backlog` (the default), desired =
//! `clamp(ceil(backlog / workers.targetBacklogPerWorker), workers.minReplicas,
//! workers.maxReplicas)`, where backlog = queue length + ids in flight. Scale-up is immediate.
//! A backlog-driven scale-down waits for `workers.scaleDownStabilizationSeconds` of lower demand
//! and stops idle workers first; a scale-down asked through `spec.replicas` is immediate (the
//! caller already decided). Switching the mode changes no running worker: it is not part of the
//! pod template's hash.
//!
//! # Counting exactly once
//! A pod's end is counted under its restart reason once: the operator records its decision on
//! the pod (`migrate-operator.io/stop-reason`, or `migrate-operator.io/reaped` for a pod that
//! ended on its own) *before* deleting it, and never counts a pod carrying either annotation
//! again. Requeueing is idempotent (one script moves the list and deletes it), so the ids of a
//! pod that vanished without being seen are requeued from `{q}:workers` on a later round.
//!
//! # Two replicas
//! With leader election ([`crate::leader`]), only the holder of the Lease reconciles; losing
//! the Lease drops the controller (cancelling reconciliations in flight) until it is won again.

mod act;
pub mod apply;
pub mod build;
mod cleanup;
mod context;
mod error;
pub mod events;
pub mod observe;
mod plan;
mod reconcile;
mod report;
mod run;
pub mod status;
pub mod validate;

pub use apply::MANAGER;
pub use cleanup::FINALIZER;
pub use context::Context;
pub use error::Error;
pub use reconcile::{error_policy, reconcile};
pub use run::{Config, ControllerArgs, ControllerError, identified, run, run_with};
