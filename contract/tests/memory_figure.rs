//! The memory figure in a real memory cgroup: a process alone in a cgroup of its own, whose
//! page cache grows, is seen at the same figure from inside (as a worker reads itself) and from
//! outside (as a supervisor reads its child), and that figure is the cgroup's working set, not
//! RSS. Needs a writable memory cgroup hierarchy (v1 `/sys/fs/cgroup/memory` or v2
//! `/sys/fs/cgroup` with the memory controller), as the testbed machine has.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use migrate_contract::memory::{
    FigureSource, MemoryFigure, read_figure, read_figure_of, read_rss_of,
};

/// The page cache the child makes, in bytes.
const CACHE_BYTES: u64 = 64 << 20;
/// How far two readings of a quiet process may differ (a few pages of runtime bookkeeping).
const TOLERANCE: u64 = 2 << 20;
const CHILD_ENV: &str = "MIGRATE_FIGURE_CHILD_FILE";

/// A fresh memory cgroup, removed on drop.
struct Cgroup(PathBuf);

impl Cgroup {
    fn create() -> Self {
        let name = format!("migrate-figure-test-{}", std::process::id());
        let v1 = Path::new("/sys/fs/cgroup/memory");
        let base = if v1.join("memory.usage_in_bytes").exists() {
            v1
        } else {
            Path::new("/sys/fs/cgroup")
        };
        let dir = base.join(name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| {
            panic!(
                "cannot create the memory cgroup {}: {e} (this test needs root and a writable cgroup hierarchy)",
                dir.display()
            )
        });
        Self(dir)
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for Cgroup {
    /// Removes the cgroup once its last process has been released (the kernel lets go of an
    /// exited, reaped process a moment after `wait` returns; until then rmdir says busy).
    fn drop(&mut self) {
        for _ in 0..100 {
            match std::fs::remove_dir(&self.0) {
                Err(e) if e.raw_os_error() == Some(16) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => return,
            }
        }
        eprintln!(
            "the test cgroup {} is still busy; remove it by hand",
            self.0.display()
        );
    }
}

fn parse(line: &str) -> MemoryFigure {
    let (bytes, source) = line.trim().split_once(' ').unwrap();
    MemoryFigure {
        bytes: bytes.parse().unwrap(),
        source: FigureSource::from_name(source).unwrap(),
    }
}

/// Both sides read the same figure, the working set of the worker's own cgroup, which counts
/// page cache in active use that RSS leaves out.
#[test]
fn a_process_in_its_own_cgroup_is_seen_at_its_working_set_from_inside_and_outside() {
    let cgroup = Cgroup::create();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let file = dir.path().join("cache");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_reads_a_file_and_reports_its_figure",
        ])
        .args(["--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    cgroup.add(pid);
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (figures, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // The harness may have begun the line (`test NAME ... `).
            if let Some((_, figure)) = line.split_once("memory-figure: ") {
                let _ = figures.send(parse(figure));
            }
        }
    });
    writeln!(stdin, "go").unwrap();
    let next_figure = || {
        receive
            .recv_timeout(Duration::from_secs(120))
            .expect("the child reports its figure")
    };
    let inside_before = next_figure();
    let outside = read_figure_of(pid).unwrap();
    let rss = read_rss_of(pid).unwrap();
    writeln!(stdin, "again").unwrap();
    let inside_after = next_figure();
    drop(stdin);
    assert!(child.wait().unwrap().success());

    eprintln!(
        "inside {inside_before:?} then {inside_after:?}; outside {outside:?}; RSS {rss} bytes"
    );
    assert_eq!(inside_before.source, FigureSource::CgroupWorkingSet);
    assert_eq!(outside.source, FigureSource::CgroupWorkingSet);
    let (low, high) = (
        inside_before.bytes.min(inside_after.bytes),
        inside_before.bytes.max(inside_after.bytes),
    );
    assert!(
        outside.bytes + TOLERANCE >= low && outside.bytes <= high + TOLERANCE,
        "outside {outside:?}, inside {inside_before:?} then {inside_after:?}"
    );
    assert!(
        outside.bytes >= CACHE_BYTES / 2,
        "the file read twice is active page cache and counts: {outside:?}"
    );
    assert!(
        rss + CACHE_BYTES / 2 <= outside.bytes,
        "RSS {rss} leaves the page cache out, the figure {outside:?} does not"
    );
}

/// Run by the test above in a process of its own (ignored otherwise): waits to be moved into
/// its cgroup, writes and reads a file twice (so its pages are active cache), prints its own
/// figure, waits, and prints it again.
#[test]
#[ignore = "run as a child process by the test above"]
fn child_reads_a_file_and_reports_its_figure() {
    // `cargo test -- --ignored` runs it too, without a parent: nothing to do then.
    let Some(file) = std::env::var_os(CHILD_ENV).map(PathBuf::from) else {
        return;
    };
    let mut stdin = std::io::stdin().lock().lines();
    assert_eq!(stdin.next().unwrap().unwrap(), "go");
    let block = vec![7u8; 1 << 20];
    let mut out = std::fs::File::create(&file).unwrap();
    for _ in 0..CACHE_BYTES >> 20 {
        out.write_all(&block).unwrap();
    }
    out.sync_all().unwrap();
    drop(out);
    for _ in 0..2 {
        let read = std::fs::read(&file).unwrap();
        assert_eq!(read.len() as u64, CACHE_BYTES);
    }
    // Written to the process's stdout directly: the test harness captures `println!`.
    let report = || {
        let figure = read_figure().unwrap();
        let mut out = std::io::stdout().lock();
        writeln!(out, "memory-figure: {} {}", figure.bytes, figure.source).unwrap();
        out.flush().unwrap();
    };
    report();
    assert_eq!(stdin.next().unwrap().unwrap(), "again");
    report();
}
