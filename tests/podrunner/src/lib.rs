//! A stand-in kubelet for the testbed's kube-apiserver, which runs no kubelet, scheduler or
//! controller-manager. Test infrastructure only: never shipped.
//!
//! The runner registers a Node of its own, binds the pending pods it serves to it (the Binding
//! subresource, as a scheduler would), and runs each container as a local process built from
//! this workspace (`--image NAME=PATH`). It reports pod status as a kubelet does (phase,
//! conditions, container states with exit codes, reasons and messages, readiness from probes,
//! restart counts), enforces `resources.limits.memory` on each process's resident set
//! (`OOMKilled`, exit code 137), restarts containers per `restartPolicy` with back-off, and
//! stops containers gracefully when their pod is deleted (SIGTERM, the grace period, SIGKILL,
//! then the pod object is removed).
//!
//! What it emulates with plain processes (see `README.md`):
//! - a network namespace: each pod gets a loopback address `127.0.0.N` as its pod IP, and a
//!   wildcard listen address given to the process is rewritten to it ([`rewrite`]);
//! - a mount namespace: volumes are folders under the pod's folder, and mount paths given to
//!   the process are rewritten to them ([`rewrite`], [`volumes`]);
//! - a memory cgroup: RSS sampled every 100 ms ([`oom`]).
//!
//! State folder layout (`--state-dir`): `pods/<namespace>_<pod>/` holds `volumes/<volume>/`,
//! `<container>.log`, `<container>.pid` (while the process runs) and
//! `<container>.termination-log`; [`pod::running_processes`] lists the pid files.

pub mod config;
pub mod env;
pub mod node;
pub mod oom;
pub mod pod;
pub mod probe;
pub mod process;
pub mod quantity;
pub mod rewrite;
pub mod runner;
pub mod status;
pub mod volumes;

pub use config::{Args, Config};
pub use runner::run;
