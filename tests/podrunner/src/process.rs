//! Container processes: started in a process group of their own with exactly the environment
//! the pod spec gives (plus `PATH` and `HOSTNAME`), stdout and stderr appended to one log file
//! per container, and watched by a task that reports the exit on a bounded channel.
//!
//! Logs are bounded: once a log file is larger than its cap it is copied to `<log>.1` and
//! truncated (the process appends, so it goes on writing at the new end).

use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::sync::mpsc;

use crate::status::Exit;

/// Why a process could not be started or watched.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The log file could not be opened.
    #[error("cannot open the log file {path}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The program could not be executed.
    #[error("cannot execute {program}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// What to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its whole environment.
    pub env: Vec<(String, String)>,
    /// Its working directory.
    pub cwd: PathBuf,
    /// Where stdout and stderr go.
    pub log: PathBuf,
}

/// A process that ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// The container's index in the pod spec.
    pub container: usize,
    /// Its pid.
    pub pid: u32,
    /// How it ended; `None` when waiting for it failed.
    pub exit: Option<Exit>,
}

/// Starts `launch` for container number `container`; its end is sent on `ended`. Returns the
/// pid (also the process group id).
///
/// # Errors
/// [`ProcessError`] when the log cannot be opened or the program not executed.
pub fn spawn(
    launch: &Launch,
    container: usize,
    ended: mpsc::Sender<Ended>,
) -> Result<u32, ProcessError> {
    let log_err = |source| ProcessError::Log {
        path: launch.log.clone(),
        source,
    };
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&launch.log)
        .map_err(log_err)?;
    let err = out.try_clone().map_err(log_err)?;
    let mut child = tokio::process::Command::new(&launch.program)
        .args(&launch.args)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&launch.cwd)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ProcessError::Spawn {
            program: launch.program.clone(),
            source,
        })?;
    let pid = child.id().unwrap_or_default();
    tokio::spawn(async move {
        let exit = child
            .wait()
            .await
            .ok()
            .map(|s| match (s.code(), s.signal()) {
                (Some(code), _) => Exit::Code(code),
                (None, Some(sig)) => Exit::Signal(sig),
                (None, None) => Exit::Code(-1),
            });
        // The pod task may be gone (shutdown): nobody needs to know then.
        let _ = ended
            .send(Ended {
                container,
                pid,
                exit,
            })
            .await;
    });
    Ok(pid)
}

fn pid_of(pid: u32) -> Option<Pid> {
    i32::try_from(pid)
        .ok()
        .filter(|p| *p > 0)
        .map(Pid::from_raw)
}

/// Sends `sig` to the process `pid` (only the container's main process, as the kubelet's
/// SIGTERM). A process already gone is not an error.
pub fn signal(pid: u32, sig: Signal) {
    if let Some(p) = pid_of(pid) {
        let _ = signal::kill(p, sig);
    }
}

/// Sends `sig` to the process group `pid` (the container's main process and its children).
pub fn signal_group(pid: u32, sig: Signal) {
    if let Some(p) = pid_of(pid) {
        let _ = signal::killpg(p, sig);
    }
}

/// Copies the log to `<log>.1` and truncates it when it is larger than `max_bytes`.
pub fn rotate_if_larger(log: &Path, max_bytes: u64) {
    let Ok(meta) = std::fs::metadata(log) else {
        return;
    };
    if meta.len() <= max_bytes {
        return;
    }
    let mut old = log.as_os_str().to_owned();
    old.push(".1");
    if std::fs::copy(log, &old).is_ok()
        && let Ok(f) = std::fs::OpenOptions::new().write(true).open(log)
    {
        let _ = f.set_len(0);
    }
}

/// The last `max_bytes` of the log (lossy UTF-8), or `None` when there is none.
#[must_use]
pub fn log_tail(log: &Path, max_bytes: u64) -> Option<String> {
    log_tail_since(log, 0, max_bytes)
}

/// The length of the log now: where the output of a process started now begins.
#[must_use]
pub fn log_len(log: &Path) -> u64 {
    std::fs::metadata(log).map_or(0, |m| m.len())
}

/// The last `max_bytes` of the log written after offset `start` (from [`log_len`]; a log
/// rotated since is read from its beginning), or `None` when there is none.
#[must_use]
pub fn log_tail_since(log: &Path, start: u64, max_bytes: u64) -> Option<String> {
    let mut f = std::fs::File::open(log).ok()?;
    let len = f.metadata().ok()?.len();
    let start = if start > len { 0 } else { start };
    f.seek(SeekFrom::Start(len.saturating_sub(max_bytes).max(start)))
        .ok()?;
    let mut buf = Vec::new();
    f.take(max_bytes).read_to_end(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_process_gets_exactly_its_environment_and_its_exit_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("c.log");
        let (tx, mut rx) = mpsc::channel(4);
        let launch = Launch {
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".to_owned(), "echo \"$A:$HOME\"; exit 3".to_owned()],
            env: vec![("A".to_owned(), "1".to_owned())],
            cwd: dir.path().to_path_buf(),
            log: log.clone(),
        };
        let pid = spawn(&launch, 2, tx).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            ended,
            Ended {
                container: 2,
                pid,
                exit: Some(Exit::Code(3))
            }
        );
        assert_eq!(log_tail(&log, 100).unwrap(), "1:\n");
    }

    #[tokio::test]
    async fn a_signalled_group_ends_with_the_signal() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let launch = Launch {
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".to_owned(), "sleep 30 & wait".to_owned()],
            env: vec![],
            cwd: dir.path().to_path_buf(),
            log: dir.path().join("c.log"),
        };
        let pid = spawn(&launch, 0, tx).unwrap();
        signal_group(pid, Signal::SIGKILL);
        let ended = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ended.exit, Some(Exit::Signal(9)));
    }

    #[test]
    fn a_log_above_its_cap_is_rotated_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("c.log");
        std::fs::write(&log, "x".repeat(100)).unwrap();
        rotate_if_larger(&log, 200);
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 100);
        rotate_if_larger(&log, 50);
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        assert_eq!(
            std::fs::metadata(dir.path().join("c.log.1")).unwrap().len(),
            100
        );
        assert_eq!(log_tail(&dir.path().join("missing"), 10), None);
        std::fs::write(&log, "first run\nsecond run\n").unwrap();
        assert_eq!(
            log_tail_since(&log, 10, 100).as_deref(),
            Some("second run\n")
        );
        assert_eq!(
            log_tail_since(&log, 1_000, 100).as_deref(),
            Some("first run\nsecond run\n"),
            "a log rotated since the start is read whole"
        );
    }
}
