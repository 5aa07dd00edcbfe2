//! Memory of a process's cgroup: `memory.current`/`memory.max` (v2), with a fallback to the
//! v1 memory controller (`memory.usage_in_bytes`/`memory.limit_in_bytes`) on hosts that still
//! mount it.

use std::path::{Path, PathBuf};

/// Memory use and limit of a cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupMemory {
    /// Bytes charged to the cgroup (`memory.current`): anonymous memory, page cache, kernel
    /// memory such as socket buffers, for every process in it.
    pub current: u64,
    /// The limit (`memory.max`); `None` when unlimited.
    pub max: Option<u64>,
    /// Page cache the kernel can drop without writing anything back (`inactive_file` of
    /// `memory.stat`); 0 when unknown.
    pub inactive_file: u64,
    /// Whether the cgroup holds the process read alone (its `cgroup.procs` lists that pid
    /// only), as a container's cgroup does; a cgroup shared with other processes is not this
    /// process's memory.
    pub own: bool,
}

impl CgroupMemory {
    /// `current` minus the inactive page cache: what the kubelet calls the working set and
    /// uses for eviction; the part of the charge the kernel cannot cheaply reclaim.
    #[must_use]
    pub fn working_set(&self) -> u64 {
        self.current.saturating_sub(self.inactive_file)
    }
}

/// Memory of this process's cgroup; `None` outside a cgroup with a memory controller (or at
/// the root cgroup, which has no `memory.current`).
#[must_use]
pub fn read_cgroup() -> Option<CgroupMemory> {
    read_cgroup_at(Path::new("/proc/self/cgroup"), std::process::id())
}

/// Memory of another process's cgroup, for a supervisor watching its children (in the caller's
/// mount namespace); `None` as for [`read_cgroup`] or when the process is gone.
#[must_use]
pub fn read_cgroup_of(pid: u32) -> Option<CgroupMemory> {
    read_cgroup_at(Path::new(&format!("/proc/{pid}/cgroup")), pid)
}

fn read_cgroup_at(proc_cgroup: &Path, pid: u32) -> Option<CgroupMemory> {
    let membership = std::fs::read_to_string(proc_cgroup).ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mounts = parse_mountinfo(&mountinfo);
    if let Some(dir) = v2_dir(&membership, &mounts)
        && let Some(memory) = read_v2(&dir)
    {
        return Some(CgroupMemory {
            own: holds_only(&dir, pid),
            ..memory
        });
    }
    let dir = v1_dir(&membership, &mounts)?;
    read_v1(&dir).map(|memory| CgroupMemory {
        own: holds_only(&dir, pid),
        ..memory
    })
}

/// Whether the cgroup at `dir` holds process `pid` and no other (`cgroup.procs`, one pid a
/// line, as seen from this pid namespace). Reads two lines at most: a shared cgroup may list
/// thousands.
fn holds_only(dir: &Path, pid: u32) -> bool {
    use std::io::BufRead;
    let Ok(file) = std::fs::File::open(dir.join("cgroup.procs")) else {
        return false;
    };
    let mut lines = std::io::BufReader::new(file).lines();
    let first = lines.next().and_then(Result::ok);
    let second = lines.next().and_then(Result::ok);
    first.and_then(|l| l.trim().parse::<u32>().ok()) == Some(pid) && second.is_none()
}

/// The cgroup v2 directory of a process: the `0::/path` line of `/proc/<pid>/cgroup` under the
/// cgroup2 mount.
fn v2_dir(membership: &str, mounts: &[Mount]) -> Option<PathBuf> {
    let path = membership.lines().find_map(|l| l.strip_prefix("0::"))?;
    let default = Mount {
        root: "/".to_owned(),
        point: PathBuf::from("/sys/fs/cgroup"),
        fstype: "cgroup2".to_owned(),
        super_options: String::new(),
    };
    let mount = mounts
        .iter()
        .find(|m| m.fstype == "cgroup2")
        .unwrap_or(&default);
    mount.dir_of(path)
}

/// The cgroup v1 memory-controller directory of a process: the `N:...memory...:/path` line.
fn v1_dir(membership: &str, mounts: &[Mount]) -> Option<PathBuf> {
    let path = membership.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then_some(path)
    })?;
    let default = Mount {
        root: "/".to_owned(),
        point: PathBuf::from("/sys/fs/cgroup/memory"),
        fstype: "cgroup".to_owned(),
        super_options: "memory".to_owned(),
    };
    let mount = mounts
        .iter()
        .find(|m| m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == "memory"))
        .unwrap_or(&default);
    mount.dir_of(path)
}

fn read_v2(dir: &Path) -> Option<CgroupMemory> {
    let current = read_number(&dir.join("memory.current"))?;
    let max = std::fs::read_to_string(dir.join("memory.max"))
        .ok()
        .and_then(|t| parse_max(&t));
    let inactive_file = stat_field(&dir.join("memory.stat"), "inactive_file").unwrap_or(0);
    Some(CgroupMemory {
        current,
        max,
        inactive_file,
        own: false,
    })
}

fn read_v1(dir: &Path) -> Option<CgroupMemory> {
    let current = read_number(&dir.join("memory.usage_in_bytes"))?;
    // v1 has no "max": an unlimited cgroup reports a number near i64::MAX.
    let max = read_number(&dir.join("memory.limit_in_bytes")).filter(|&l| l < 1 << 62);
    let inactive_file = stat_field(&dir.join("memory.stat"), "total_inactive_file").unwrap_or(0);
    Some(CgroupMemory {
        current,
        max,
        inactive_file,
        own: false,
    })
}

fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `memory.max`: a byte count, or `max` for unlimited.
fn parse_max(text: &str) -> Option<u64> {
    match text.trim() {
        "max" => None,
        n => n.parse().ok(),
    }
}

fn stat_field(path: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

/// One line of `/proc/self/mountinfo`, the fields that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    /// The directory of the mounted file system that appears at `point`.
    root: String,
    point: PathBuf,
    fstype: String,
    super_options: String,
}

impl Mount {
    /// Where a cgroup path (as `/proc/<pid>/cgroup` gives it) appears under this mount; `None`
    /// when the cgroup is outside the part of the hierarchy mounted here.
    fn dir_of(&self, cgroup_path: &str) -> Option<PathBuf> {
        let relative = if self.root == "/" {
            cgroup_path
        } else {
            let rest = cgroup_path.strip_prefix(self.root.as_str())?;
            if !(rest.is_empty() || rest.starts_with('/')) {
                return None;
            }
            rest
        };
        let relative = relative.trim_start_matches('/');
        if relative.split('/').any(|c| c == "..") {
            return None;
        }
        Some(if relative.is_empty() {
            self.point.clone()
        } else {
            self.point.join(relative)
        })
    }
}

/// Mounts of type `cgroup`/`cgroup2`: `id parent major:minor root point options [optional...]
/// - fstype source super_options`.
fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mut pre = before.split(' ');
            let root = pre.nth(3)?;
            let point = pre.next()?;
            let mut post = after.split(' ');
            let fstype = post.next()?;
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            let super_options = post.nth(1).unwrap_or("");
            Some(Mount {
                root: unescape(root),
                point: PathBuf::from(unescape(point)),
                fstype: fstype.to_owned(),
                super_options: super_options.to_owned(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn a_v2_membership_is_found_under_the_cgroup2_mount() {
        let mounts = parse_mountinfo(
            "30 24 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n",
        );
        assert_eq!(
            v2_dir("0::/kubepods.slice/pod1/cri-abc\n", &mounts),
            Some(PathBuf::from("/sys/fs/cgroup/kubepods.slice/pod1/cri-abc"))
        );
        assert_eq!(
            v2_dir("0::/\n", &mounts),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn without_a_cgroup2_mount_the_default_place_is_used() {
        assert_eq!(
            v2_dir("0::/a\n", &[]),
            Some(PathBuf::from("/sys/fs/cgroup/a"))
        );
    }

    #[test]
    fn a_mount_of_a_subtree_strips_its_root_from_the_path() {
        let mounts = parse_mountinfo(
            "1 0 0:1 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n",
        );
        let membership = "4:memory:/docker/abc\n0::/\n";
        assert_eq!(
            v1_dir(membership, &mounts),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert_eq!(v1_dir("4:memory:/docker/abcdef\n", &mounts), None);
        assert_eq!(v1_dir("4:memory:/other\n", &mounts), None);
    }

    #[test]
    fn a_v1_memory_controller_is_found_among_others() {
        let mounts = parse_mountinfo(HYBRID_MOUNTINFO);
        assert_eq!(mounts.len(), 3);
        let membership = "5:devices:/\n4:cpu,memory:/process_api/x\n0::/\n";
        assert_eq!(
            v1_dir(membership, &mounts),
            Some(PathBuf::from("/sys/fs/cgroup/memory/process_api/x"))
        );
        assert_eq!(
            v2_dir(membership, &mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn paths_that_climb_out_of_the_mount_are_refused() {
        let mounts = parse_mountinfo(HYBRID_MOUNTINFO);
        assert_eq!(v2_dir("0::/../../etc\n", &mounts), None);
    }

    #[test]
    fn v2_files_are_read_and_max_means_unlimited() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memory.current"), "123456\n").unwrap();
        std::fs::write(dir.path().join("memory.max"), "max\n").unwrap();
        std::fs::write(
            dir.path().join("memory.stat"),
            "anon 100\nfile 50\ninactive_file 4000\n",
        )
        .unwrap();
        assert_eq!(
            read_v2(dir.path()),
            Some(CgroupMemory {
                current: 123_456,
                max: None,
                inactive_file: 4000,
                own: false
            })
        );
        std::fs::write(dir.path().join("memory.max"), "1073741824\n").unwrap();
        let memory = read_v2(dir.path()).unwrap();
        assert_eq!(memory.max, Some(1 << 30));
        assert_eq!(memory.working_set(), 123_456 - 4000);
    }

    #[test]
    fn a_directory_without_memory_current_is_not_a_memory_cgroup() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_v2(dir.path()), None);
    }

    #[test]
    fn a_v1_limit_near_i64_max_means_unlimited() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memory.usage_in_bytes"), "5000\n").unwrap();
        std::fs::write(
            dir.path().join("memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("memory.stat"),
            "cache 10\ntotal_inactive_file 7000\n",
        )
        .unwrap();
        assert_eq!(
            read_v1(dir.path()),
            Some(CgroupMemory {
                current: 5000,
                max: None,
                inactive_file: 7000,
                own: false
            })
        );
        assert_eq!(read_v1(dir.path()).unwrap().working_set(), 0);
    }

    /// A container's cgroup lists its one process; a shared one lists several, and an empty
    /// or missing `cgroup.procs` is no process's own.
    #[test]
    fn a_cgroup_is_a_process_own_only_when_it_lists_that_process_alone() {
        let dir = tempfile::tempdir().unwrap();
        let procs = dir.path().join("cgroup.procs");
        assert!(!holds_only(dir.path(), 42));
        std::fs::write(&procs, "42\n").unwrap();
        assert!(holds_only(dir.path(), 42));
        assert!(!holds_only(dir.path(), 43));
        std::fs::write(&procs, "42\n57\n").unwrap();
        assert!(!holds_only(dir.path(), 42));
        std::fs::write(&procs, "").unwrap();
        assert!(!holds_only(dir.path(), 42));
    }

    #[test]
    fn this_process_cgroup_reading_is_consistent_when_there_is_one() {
        // Whether a memory cgroup exists depends on the host; when it does, it charges at least
        // this process's resident memory.
        if let Some(memory) = read_cgroup() {
            assert!(memory.current > 0);
            assert_eq!(
                read_cgroup_of(std::process::id()).map(|m| m.max),
                Some(memory.max)
            );
        }
        assert_eq!(read_cgroup_of(u32::MAX), None);
    }
}
