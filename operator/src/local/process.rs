//! Worker processes: spawned with their environment and a log file each, signalled, reaped.

use std::collections::HashSet;
use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use migrate_contract::env as worker_env;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::policy::ExitStatus;

/// Why a worker process could not be started or signalled.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The log file could not be created.
    #[error("cannot create worker log file {path}")]
    Log {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The worker binary could not be started.
    #[error("cannot start worker {worker} from {bin}")]
    Spawn {
        /// The worker id.
        worker: String,
        /// The binary.
        bin: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No free port was found for the worker's endpoints.
    #[error("no free port at or above {from} for worker {worker}")]
    NoPort {
        /// The worker id.
        worker: String,
        /// The first port tried.
        from: u16,
    },
    /// A signal could not be sent.
    #[error("cannot send {signal} to worker {worker} (pid {pid})")]
    Signal {
        /// The worker id.
        worker: String,
        /// Its process id.
        pid: u32,
        /// The signal.
        signal: Signal,
        /// Why.
        #[source]
        source: nix::Error,
    },
}

/// How every worker is started: the same binary, job file and environment, apart from what
/// names one worker.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The `migrate-worker` binary.
    pub bin: PathBuf,
    /// The job file, passed as `--pipeline` to workers that run it as it is.
    pub job: PathBuf,
    /// A copy of the job without `testOnly`, passed as `--pipeline` to the workers that must
    /// not leak; `None` when every worker runs the job as it is.
    pub job_without_leak: Option<PathBuf>,
    /// At most this many live workers that are not draining run with the job's test-only
    /// leak; `None`: every worker does.
    pub leaky_workers: Option<usize>,
    /// Folder of the per-worker log files.
    pub log_dir: PathBuf,
    /// `MIGRATE_KEYWORDS_DIR`, when known.
    pub keywords_dir: Option<PathBuf>,
    /// `MIGRATE_REDIS_URL`.
    pub redis_url: String,
    /// `MIGRATE_MEMORY_LIMIT_BYTES`, when known.
    pub memory_limit: Option<u64>,
}

/// One running (or exited, not yet reaped) worker process.
#[derive(Debug)]
pub struct WorkerProcess {
    /// The worker id, `local-<n>`.
    pub id: String,
    /// Its process id.
    pub pid: u32,
    /// The port of its `/metrics`, `/healthz` and `/readyz`.
    pub port: u16,
    /// Its log file (stdout and stderr).
    pub log: PathBuf,
    /// It runs the job's test-only leak.
    pub leaky: bool,
    child: tokio::process::Child,
    reaped: bool,
}

impl Launch {
    /// The job file a worker gets: the job as it is when it may leak, else the copy without
    /// the leak when there is one.
    #[must_use]
    pub fn pipeline(&self, leaky: bool) -> &Path {
        match (&self.job_without_leak, leaky) {
            (Some(calm), false) => calm,
            _ => &self.job,
        }
    }
}

impl WorkerProcess {
    /// Starts `migrate-worker run --pipeline JOB` as worker `id`, listening on `port`, with
    /// its output in `<log_dir>/<id>.log`; JOB is [`Launch::pipeline`] of `leaky`. The worker
    /// gets a process group of its own, so a Ctrl-C at the terminal reaches only the
    /// supervisor, which then drains the workers.
    ///
    /// # Errors
    /// [`ProcessError::Log`] or [`ProcessError::Spawn`].
    pub fn spawn(launch: &Launch, id: &str, port: u16, leaky: bool) -> Result<Self, ProcessError> {
        let log = launch.log_dir.join(format!("{id}.log"));
        let log_error = |source| ProcessError::Log {
            path: log.clone(),
            source,
        };
        let out = File::create(&log).map_err(log_error)?;
        let err = out.try_clone().map_err(log_error)?;
        let mut command = tokio::process::Command::new(&launch.bin);
        command
            .arg("run")
            .arg("--pipeline")
            .arg(launch.pipeline(leaky))
            .env(worker_env::WORKER_ID, id)
            .env(worker_env::LISTEN, format!("127.0.0.1:{port}"))
            .env(worker_env::REDIS_URL, &launch.redis_url)
            // This supervisor grants soft-line restarts (surge first, within the budget).
            .env(
                worker_env::SUPERVISED,
                migrate_contract::restart::SUPERVISED_VALUE,
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0)
            .kill_on_drop(true);
        if let Some(limit) = launch.memory_limit {
            command.env(worker_env::MEMORY_LIMIT_BYTES, limit.to_string());
        }
        if let Some(dir) = &launch.keywords_dir {
            command.env(worker_env::KEYWORDS_DIR, dir);
        }
        let spawn_error = |source| ProcessError::Spawn {
            worker: id.to_owned(),
            bin: launch.bin.clone(),
            source,
        };
        let child = command.spawn().map_err(spawn_error)?;
        let pid = child.id().ok_or_else(|| {
            spawn_error(std::io::Error::other(
                "the process exited before its pid was read",
            ))
        })?;
        Ok(Self {
            id: id.to_owned(),
            pid,
            port,
            log,
            leaky,
            child,
            reaped: false,
        })
    }

    /// Sends a signal. A process that already exited (not yet reaped) is not an error.
    ///
    /// The pid cannot have been reused: the process is only reaped by [`WorkerProcess::try_exit`]
    /// and no signal is sent after that.
    ///
    /// # Errors
    /// [`ProcessError::Signal`] when the kernel refuses.
    pub fn signal(&self, signal: Signal) -> Result<(), ProcessError> {
        if self.reaped {
            return Ok(());
        }
        let pid = Pid::from_raw(i32::try_from(self.pid).unwrap_or(i32::MAX));
        match kill(pid, signal) {
            Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
            Err(source) => Err(ProcessError::Signal {
                worker: self.id.clone(),
                pid: self.pid,
                signal,
                source,
            }),
        }
    }

    /// The exit of the process when it has exited (reaping it), `None` while it runs.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.reaped {
            return None;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.reaped = true;
                Some(exit_status(status))
            }
            Ok(None) => None,
            Err(error) => {
                // Not our child any more (cannot happen for a process we spawned and did not
                // wait for): treat it as gone so the supervisor reaps and replaces it.
                tracing::warn!(worker = %self.id, pid = self.pid, %error, "Cannot wait for a worker process.");
                self.reaped = true;
                Some(ExitStatus::default())
            }
        }
    }

    /// Waits for the process to exit.
    pub async fn wait(&mut self) -> ExitStatus {
        if self.reaped {
            return ExitStatus::default();
        }
        let status = self.child.wait().await;
        self.reaped = true;
        status.map(exit_status).unwrap_or_default()
    }
}

/// The policy's view of an exit: the code when it exited, the signal when one ended it.
#[must_use]
pub fn exit_status(status: std::process::ExitStatus) -> ExitStatus {
    ExitStatus {
        code: status.code(),
        signal: status.signal(),
        oom_killed: false,
        evicted: false,
    }
}

/// The first port at or above `from` that no worker of ours uses and that can be bound on
/// 127.0.0.1 now.
#[must_use]
pub fn free_port(from: u16, taken: &HashSet<u16>) -> Option<u16> {
    (from..=u16::MAX)
        .filter(|p| !taken.contains(p))
        .find(|&p| TcpListener::bind(("127.0.0.1", p)).is_ok())
}

/// The kernel's count of OOM kills in the cgroup of this process (`oom_kill` of cgroup v2
/// `memory.events`); `None` outside such a cgroup. Workers started by the local supervisor
/// share its cgroup, so a rise of this count tells an OOM kill from another SIGKILL.
#[must_use]
pub fn cgroup_oom_kills() -> Option<u64> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = membership.lines().find_map(|l| l.strip_prefix("0::"))?;
    let file = Path::new("/sys/fs/cgroup")
        .join(path.trim_start_matches('/'))
        .join("memory.events");
    let text = std::fs::read_to_string(file).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_port_skips_ports_taken_by_workers_and_bound_by_others() {
        let held = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let busy = held.local_addr().unwrap().port();
        let port = free_port(busy, &HashSet::new()).unwrap();
        assert!(port > busy, "{port} is bound by this test");
        let next = free_port(busy, &HashSet::from([port])).unwrap();
        assert!(next > port && next != busy);
    }

    fn fake_worker(dir: &Path, body: &str) -> Launch {
        use std::os::unix::fs::PermissionsExt as _;
        let bin = dir.join("fake-worker");
        std::fs::write(&bin, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        Launch {
            bin,
            job: PathBuf::from("/etc/job.yaml"),
            job_without_leak: Some(PathBuf::from("/etc/calm.yaml")),
            leaky_workers: Some(1),
            log_dir: dir.to_owned(),
            keywords_dir: Some(PathBuf::from("/kw")),
            redis_url: "redis://127.0.0.1:1".into(),
            memory_limit: Some(1234),
        }
    }

    /// The worker gets its id, address, memory limit and connection variables, and its output
    /// goes to its own log file.
    #[tokio::test]
    async fn a_worker_is_started_with_its_environment_and_its_log_file() {
        let dir = tempfile::tempdir().unwrap();
        let launch = fake_worker(
            dir.path(),
            "echo \"$* $MIGRATE_WORKER_ID $MIGRATE_LISTEN $MIGRATE_MEMORY_LIMIT_BYTES $MIGRATE_KEYWORDS_DIR $MIGRATE_REDIS_URL\"; echo oops >&2; exit 3",
        );
        let mut worker = WorkerProcess::spawn(&launch, "local-7", 9107, true).unwrap();
        let status = worker.wait().await;
        assert_eq!((status.code, status.signal), (Some(3), None));
        assert!(worker.log.ends_with("local-7.log"));
        let log = std::fs::read_to_string(&worker.log).unwrap();
        assert_eq!(
            log,
            "run --pipeline /etc/job.yaml local-7 127.0.0.1:9107 1234 /kw redis://127.0.0.1:1\noops\n"
        );
    }

    /// A signal ends the process, the exit carries the signal, and a reaped process is never
    /// signalled or reported again.
    #[tokio::test]
    async fn a_signalled_worker_is_reaped_once_with_its_signal() {
        let dir = tempfile::tempdir().unwrap();
        let launch = fake_worker(dir.path(), "exec sleep 30");
        let mut worker = WorkerProcess::spawn(&launch, "local-1", 9101, false).unwrap();
        assert_eq!(worker.try_exit(), None);
        worker.signal(Signal::SIGTERM).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let status = loop {
            if let Some(status) = worker.try_exit() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the worker ignored SIGTERM"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        assert_eq!((status.code, status.signal), (None, Some(15)));
        assert_eq!(worker.try_exit(), None);
        worker.signal(Signal::SIGKILL).unwrap();
    }

    #[tokio::test]
    async fn a_missing_binary_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let launch = Launch {
            bin: dir.path().join("nope"),
            ..fake_worker(dir.path(), "true")
        };
        let err = WorkerProcess::spawn(&launch, "local-1", 9101, false).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    /// A worker that must not leak gets the copy of the job without the leak; without such a
    /// copy every worker gets the job as it is.
    #[test]
    fn only_leaky_workers_get_the_job_with_the_leak() {
        let dir = tempfile::tempdir().unwrap();
        let launch = fake_worker(dir.path(), "true");
        assert_eq!(launch.pipeline(true), Path::new("/etc/job.yaml"));
        assert_eq!(launch.pipeline(false), Path::new("/etc/calm.yaml"));
        let every = Launch {
            job_without_leak: None,
            ..launch
        };
        assert_eq!(every.pipeline(false), Path::new("/etc/job.yaml"));
    }
}
