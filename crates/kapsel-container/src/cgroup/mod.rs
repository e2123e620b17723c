//! Control groups: one group per container, on cgroup v2 (unified) or v1
//! (legacy and hybrid hosts), detected at run time.
//!
//! v2: `BASE/kapsel/NAME`, with `memory`, `pids`, `cpu` and `io` enabled
//! in the `cgroup.subtree_control` of BASE and `BASE/kapsel`; freezing is
//! `cgroup.freeze`, devices an eBPF filter ([`crate::devices`]). BASE is
//! the root (`/sys/fs/cgroup`), or the cgroup this process runs in when
//! it was delegated to it (systemd's `Delegate=yes`, which marks the
//! cgroup with the `trusted.delegate` attribute): then the processes in
//! BASE (the daemon and its VMs) first move to `BASE/supervisor`, since a
//! non-root cgroup that hands controllers to its children may hold no
//! process itself. v1 (and hybrid, where the controllers live in v1 and
//! the v2 hierarchy holds none of ours): `/sys/fs/cgroup/CTRL/kapsel/NAME`
//! in each of the `memory`, `pids`, `cpu`, `freezer` and `devices`
//! hierarchies that exist; the `devices` controller gets an allow-list.
//!
//! This file detects the layout and holds [`Cgroup`], which dispatches to
//! `v2.rs` and `v1.rs` for what differs between the two.

mod v1;
mod v2;

use crate::error::{Error, Result};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The directory under each hierarchy that holds Kapsel's containers.
pub const PARENT: &str = "kapsel";
/// The leaf that the processes of a delegated BASE move into (v2): see
/// the module's documentation.
pub const SUPERVISOR: &str = "supervisor";
/// The CFS period Kapsel uses for CPU limits, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

/// The controllers Kapsel uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controller {
    /// Memory limit and usage.
    Memory,
    /// Task count limit.
    Pids,
    /// CPU quota.
    Cpu,
    /// Freezing (a controller on v1, built in on v2).
    Freezer,
    /// Device access (a controller on v1, an eBPF filter on v2).
    Devices,
    /// CPU time used (a controller on v1, often mounted with `cpu`;
    /// `cpu.stat` on v2).
    Cpuacct,
}

impl Controller {
    const ALL: [Controller; 6] = [
        Controller::Memory,
        Controller::Pids,
        Controller::Cpu,
        Controller::Freezer,
        Controller::Devices,
        Controller::Cpuacct,
    ];

    /// The kernel's name of the controller.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
            Controller::Freezer => "freezer",
            Controller::Devices => "devices",
            Controller::Cpuacct => "cpuacct",
        }
    }
}

/// How this host's cgroups are laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupMode {
    /// cgroup v2 mounted at `root`; Kapsel's groups live below `base`,
    /// which offers `controllers`.
    Unified {
        /// The mount point (normally /sys/fs/cgroup).
        root: PathBuf,
        /// The group that holds `kapsel/`: `root`, or the delegated group
        /// this process runs in (see the module's documentation).
        base: PathBuf,
        /// The controllers in `base`'s `cgroup.controllers`.
        controllers: Vec<String>,
    },
    /// cgroup v1 hierarchies (pure v1, or hybrid with an empty v2 beside).
    Legacy {
        /// Each controller Kapsel uses that is mounted, and where.
        mounts: Vec<(Controller, PathBuf)>,
        /// The v2 hierarchy of a hybrid host (normally
        /// /sys/fs/cgroup/unified): no controllers, but the tree a
        /// systemd container runs in ([`Cgroup::create`] with `delegate`).
        hybrid_v2: Option<PathBuf>,
    },
}

impl CgroupMode {
    /// Reads the host's layout from `/proc/self/mountinfo`; on v2, the
    /// base is the delegated group this process runs in, if any (from
    /// `/proc/self/cgroup`).
    pub fn detect() -> Result<CgroupMode> {
        let info = fs::read_to_string("/proc/self/mountinfo").map_err(|e| Error::Os {
            what: "reading /proc/self/mountinfo",
            source: e,
        })?;
        let controllers =
            |dir: &Path| fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
        let mode = Self::from_mountinfo(&info, controllers);
        let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        Ok(mode.in_delegated(&own, v2::is_delegated, controllers))
    }

    /// On v2: the same layout with the base moved to the delegated group
    /// (per `delegated`) that holds the process whose `/proc/PID/cgroup`
    /// is `own`, the nearest one going up from its group; `controllers`
    /// reads that group's `cgroup.controllers`. Unchanged when there is
    /// none: then Kapsel's groups go below the root, beside systemd's
    /// slices (logged for a process outside the root group).
    pub fn in_delegated(
        self,
        own: &str,
        delegated: impl Fn(&Path) -> bool,
        controllers: impl Fn(&Path) -> String,
    ) -> CgroupMode {
        let CgroupMode::Unified { root, base, .. } = &self else {
            return self;
        };
        let path = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .map(|p| p.trim().trim_start_matches('/'))
            .unwrap_or("");
        if path.is_empty() || path.split('/').any(|c| c == "..") {
            return self;
        }
        let mine = root.join(path);
        let found = mine
            .ancestors()
            .take_while(|d| *d != root.as_path())
            .find(|d| delegated(d));
        match found {
            Some(dir) if dir != base => CgroupMode::Unified {
                root: root.clone(),
                base: dir.to_path_buf(),
                controllers: controllers(dir)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect(),
            },
            Some(_) => self,
            None => {
                tracing::info!(
                    "this process runs in cgroup /{path}, which was not delegated to it: \
                     containers go to {}, outside it; under systemd, give the unit \
                     Delegate=yes (contrib/kapseld.service does)",
                    root.join(PARENT).display()
                );
                self
            }
        }
    }

    /// The layout described by a mountinfo text; `controllers` reads a v2
    /// root's `cgroup.controllers` (a parameter so tests can give one).
    pub fn from_mountinfo(info: &str, controllers: impl Fn(&Path) -> String) -> CgroupMode {
        let mut v1 = Vec::new();
        let mut v2_root = None;
        let mut hybrid_v2 = None;
        for line in info.lines() {
            // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS"
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mountpoint = left.split(' ').nth(4).unwrap_or("");
            let mut r = right.split(' ');
            let fstype = r.next().unwrap_or("");
            let superopts = r.nth(1).unwrap_or("");
            match fstype {
                "cgroup2" if mountpoint == "/sys/fs/cgroup" => {
                    v2_root = Some(PathBuf::from(mountpoint))
                }
                "cgroup2" if mountpoint.starts_with("/sys/fs/cgroup/") && hybrid_v2.is_none() => {
                    hybrid_v2 = Some(PathBuf::from(mountpoint))
                }
                "cgroup" => {
                    for c in Controller::ALL {
                        if superopts.split(',').any(|o| o == c.name())
                            && !v1.iter().any(|(have, _)| *have == c)
                        {
                            v1.push((c, PathBuf::from(mountpoint)));
                        }
                    }
                }
                _ => {}
            }
        }
        match v2_root {
            Some(root) if v1.is_empty() => {
                let controllers = controllers(&root)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect();
                CgroupMode::Unified {
                    base: root.clone(),
                    root,
                    controllers,
                }
            }
            _ => CgroupMode::Legacy {
                mounts: v1,
                hybrid_v2,
            },
        }
    }

    /// Whether `c` can be used on this host.
    pub fn has(&self, c: Controller) -> bool {
        match self {
            CgroupMode::Unified { controllers, .. } => match c {
                Controller::Freezer | Controller::Devices | Controller::Cpuacct => true,
                _ => controllers.iter().any(|n| n == c.name()),
            },
            CgroupMode::Legacy { mounts, .. } => mounts.iter().any(|(have, _)| *have == c),
        }
    }

    /// Whether this is cgroup v2.
    pub fn is_unified(&self) -> bool {
        matches!(self, CgroupMode::Unified { .. })
    }

    /// Whether a container can get a cgroup2 tree of its own to delegate
    /// to its init (systemd): always on v2, on hybrid hosts through their
    /// v2 hierarchy, never on pure v1.
    pub fn can_delegate(&self) -> bool {
        match self {
            CgroupMode::Unified { .. } => true,
            CgroupMode::Legacy { hybrid_v2, .. } => hybrid_v2.is_some(),
        }
    }
}

/// Limits written into a container's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// Bytes of memory (swap included where the host lets Kapsel say so).
    pub memory: Option<u64>,
    /// CPUs, as a CFS quota over [`CPU_PERIOD_US`].
    pub cpus: Option<f64>,
    /// Tasks.
    pub pids: Option<u64>,
}

/// A change of a running container's limits (runc's `update`): `None`
/// leaves a value as it is; -1 means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// Bytes of memory.
    pub memory: Option<i64>,
    /// Bytes of memory plus swap (the OCI meaning).
    pub memory_swap: Option<i64>,
    /// Bytes of memory kept under pressure (v1 soft limit, v2 `memory.low`).
    pub memory_reservation: Option<i64>,
    /// CFS quota in microseconds per period.
    pub cpu_quota: Option<i64>,
    /// CFS period in microseconds.
    pub cpu_period: Option<u64>,
    /// Relative CPU weight, v1 shares (2..262144; v2 converts to a weight).
    pub cpu_shares: Option<u64>,
    /// Tasks.
    pub pids: Option<i64>,
}

/// A container's figures, as runc's `events --stats` reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// CPU time, nanoseconds: total, user, kernel, and per CPU (v1).
    pub cpu_total: u64,
    /// User CPU time, nanoseconds.
    pub cpu_user: u64,
    /// Kernel CPU time, nanoseconds.
    pub cpu_kernel: u64,
    /// Per-CPU time, nanoseconds (v1 only).
    pub cpu_percpu: Vec<u64>,
    /// CFS periods, throttled periods, throttled time (ns).
    pub throttling: (u64, u64, u64),
    /// Memory used now, the most used, the limit (`u64::MAX`: none), the
    /// times the limit was hit.
    pub memory_usage: u64,
    /// The most memory used (v1).
    pub memory_max_usage: u64,
    /// The memory limit (`u64::MAX`: none).
    pub memory_limit: u64,
    /// How often the limit was hit.
    pub memory_failcnt: u64,
    /// Page cache.
    pub memory_cache: u64,
    /// Swap used, and its limit (`u64::MAX`: none).
    pub swap_usage: u64,
    /// The swap limit.
    pub swap_limit: u64,
    /// `memory.stat`, as the kernel names its figures.
    pub memory_raw: Vec<(String, u64)>,
    /// Tasks now, and their limit (0: none).
    pub pids_current: u64,
    /// The task limit (0: none).
    pub pids_limit: u64,
}

/// Reads a cgroup file holding one number ("max" reads as `u64::MAX`).
fn read_u64(path: &Path) -> Option<u64> {
    let s = fs::read_to_string(path).ok()?;
    let s = s.trim();
    if s == "max" {
        return Some(u64::MAX);
    }
    s.parse().ok()
}

/// Reads a flat-keyed cgroup file (`memory.stat`, `cpu.stat`).
fn read_keyed(path: &Path) -> Vec<(String, u64)> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

fn key(list: &[(String, u64)], k: &str) -> u64 {
    list.iter()
        .find(|(n, _)| n == k)
        .map(|(_, v)| *v)
        .unwrap_or(0)
}

/// One container's cgroup (one directory on v2, one per hierarchy on v1).
#[derive(Debug)]
pub struct Cgroup {
    unified: bool,
    /// The directories: on v1, paired with their controller.
    dirs: Vec<(Controller, PathBuf)>,
    /// On a hybrid host, for a delegated cgroup: the directory in the v2
    /// hierarchy (no controllers there; the container's init owns the
    /// tree below it).
    hybrid_v2: Option<PathBuf>,
}

impl Cgroup {
    /// Creates the cgroup of container `name` and writes `limits`. With
    /// `delegate` on a hybrid host, the container also gets a directory in
    /// the v2 hierarchy (see [`CgroupMode::can_delegate`]). On an error,
    /// whatever was created is removed again.
    pub fn create(
        mode: &CgroupMode,
        name: &str,
        limits: &Limits,
        delegate: bool,
    ) -> Result<Cgroup> {
        Self::create_at(mode, &Path::new(PARENT).join(name), limits, delegate)
    }

    /// [`Cgroup::create`] at `path` below each hierarchy's root (an OCI
    /// `cgroupsPath` such as `/machine/ctr-1`; a leading `/` is the same
    /// root) instead of `kapsel/NAME`. The directories above it are made
    /// when missing and left in place.
    pub fn create_at(
        mode: &CgroupMode,
        path: &Path,
        limits: &Limits,
        delegate: bool,
    ) -> Result<Cgroup> {
        Self::create_allowing(mode, path, limits, delegate, &[])
    }

    /// [`Cgroup::create_at`] whose device filter also allows `devices`
    /// (an OCI configuration's `linux.devices`).
    pub fn create_allowing(
        mode: &CgroupMode,
        path: &Path,
        limits: &Limits,
        delegate: bool,
        devices: &[crate::devices::AllowedDevice],
    ) -> Result<Cgroup> {
        let rel: PathBuf = path
            .components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .collect();
        if rel.as_os_str().is_empty()
            || path
                .components()
                .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(Error::Invalid(format!(
                "cgroup path \"{}\" must name a group below the root, without \"..\"",
                path.display()
            )));
        }
        let name = rel
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let parent_rel = rel.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut cg = Cgroup {
            unified: mode.is_unified(),
            dirs: Vec::new(),
            hybrid_v2: None,
        };
        let made = cg
            .create_dirs(mode, &parent_rel, &name, limits, delegate)
            .and_then(|()| cg.apply(limits, devices));
        match made {
            Ok(()) => Ok(cg),
            Err(e) => {
                cg.remove();
                Err(e)
            }
        }
    }

    fn create_dirs(
        &mut self,
        mode: &CgroupMode,
        parent_rel: &Path,
        name: &str,
        limits: &Limits,
        delegate: bool,
    ) -> Result<()> {
        match mode {
            CgroupMode::Unified {
                root,
                base,
                controllers,
            } => {
                let dir = v2::create_dir(root, base, controllers, parent_rel, name, limits)?;
                self.dirs.push((Controller::Memory, dir));
            }
            CgroupMode::Legacy { mounts, hybrid_v2 } => v1::create_dirs(
                mounts,
                hybrid_v2.as_deref(),
                parent_rel,
                name,
                delegate,
                &mut self.dirs,
                &mut self.hybrid_v2,
            )?,
        }
        Ok(())
    }

    fn dir_of(&self, c: Controller) -> Option<&Path> {
        if self.unified {
            return self.dirs.first().map(|(_, d)| d.as_path());
        }
        self.dirs
            .iter()
            .find(|(have, _)| *have == c)
            .map(|(_, d)| d.as_path())
    }

    fn apply(&self, limits: &Limits, devices: &[crate::devices::AllowedDevice]) -> Result<()> {
        if !self.unified {
            return v1::apply(|c| self.dir_of(c), limits, devices);
        }
        let dir = self
            .dir_of(Controller::Memory)
            .ok_or_else(missing("cgroup"))?;
        v2::apply(dir, limits)?;
        v2::attach_devices(dir, devices);
        Ok(())
    }

    /// Moves process `pid` into the cgroup (every hierarchy on v1).
    pub fn add(&self, pid: i32) -> Result<()> {
        let pid = pid.to_string();
        for dir in self.unique_dirs() {
            write(&dir.join("cgroup.procs"), &pid)?;
        }
        Ok(())
    }

    /// Freezes every task of the container and returns once they are frozen.
    pub fn freeze(&self) -> Result<()> {
        self.set_frozen(true)
    }

    /// Thaws the container.
    pub fn thaw(&self) -> Result<()> {
        self.set_frozen(false)
    }

    fn set_frozen(&self, frozen: bool) -> Result<()> {
        if self.unified {
            let dir = self
                .dir_of(Controller::Freezer)
                .ok_or_else(missing("cgroup"))?;
            v2::set_frozen(dir, frozen)
        } else {
            let dir = self
                .dir_of(Controller::Freezer)
                .ok_or_else(missing("freezer"))?;
            v1::set_frozen(dir, frozen)
        }
    }

    /// Whether the container is frozen.
    pub fn is_frozen(&self) -> Result<bool> {
        if self.unified {
            let dir = self
                .dir_of(Controller::Freezer)
                .ok_or_else(missing("cgroup"))?;
            v2::is_frozen(dir)
        } else {
            match self.dir_of(Controller::Freezer) {
                Some(dir) => v1::is_frozen(dir),
                None => Ok(false),
            }
        }
    }

    /// Bytes of memory the container uses now (what the limit counts:
    /// `memory.current` on v2, `memory.usage_in_bytes` on v1).
    pub fn memory_usage(&self) -> Result<u64> {
        let dir = self
            .dir_of(Controller::Memory)
            .ok_or_else(missing("memory"))?;
        let file = dir.join(if self.unified {
            v2::MEMORY_USAGE
        } else {
            v1::MEMORY_USAGE
        });
        read(&file)?.trim().parse().map_err(|_| Error::Cgroup {
            path: file,
            source: io::Error::new(io::ErrorKind::InvalidData, "not a number"),
        })
    }

    /// How many times a task of the container was OOM-killed.
    pub fn oom_kills(&self) -> Result<u64> {
        let dir = self
            .dir_of(Controller::Memory)
            .ok_or_else(missing("memory"))?;
        let (file, key) = if self.unified {
            v2::OOM_KILLS
        } else {
            v1::OOM_KILLS
        };
        let file = dir.join(file);
        Ok(read(&file)?
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0))
    }

    /// The directory on cgroup v2, where a child can be cloned straight
    /// into (`CLONE_INTO_CGROUP`); `None` on v1.
    pub fn unified_dir(&self) -> Option<&Path> {
        if self.unified {
            self.dirs.first().map(|(_, d)| d.as_path())
        } else {
            None
        }
    }

    /// The v1 `tasks` files, through which the init can move itself in:
    /// a thread moving itself through `tasks` skips the global threadgroup
    /// lock that a move through `cgroup.procs` takes for writing, which
    /// waits for an RCU grace period (milliseconds). Empty on v2.
    /// With a hybrid v2 directory, its `cgroup.procs` comes last (v2
    /// has no `tasks`; the init is single-threaded when it writes).
    pub fn v1_task_files(&self) -> Vec<PathBuf> {
        if self.unified {
            Vec::new()
        } else {
            self.unique_dirs()
                .map(|d| d.join("tasks"))
                .chain(self.hybrid_v2.iter().map(|d| d.join("cgroup.procs")))
                .collect()
        }
    }

    /// The cgroup's directories (one on v2; on a hybrid host with a
    /// delegated tree, its v2 directory last).
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.unique_dirs().chain(self.hybrid_v2.as_deref())
    }

    /// The directories, each once: v1 controllers mounted together
    /// (`cpu,cpuacct`) share one.
    fn unique_dirs(&self) -> impl Iterator<Item = &Path> {
        self.dirs
            .iter()
            .enumerate()
            .filter(|(i, (_, d))| !self.dirs[..*i].iter().any(|(_, e)| e == d))
            .map(|(_, (_, d))| d.as_path())
    }

    /// The cgroup of an existing container from its directories (as
    /// [`Cgroup::paths`] listed them), to freeze, update or read it from
    /// another process (`kapsel-oci pause`). Directories that belong to
    /// no hierarchy of `mode` are left out.
    pub fn open(mode: &CgroupMode, paths: &[PathBuf]) -> Cgroup {
        let mut cg = Cgroup {
            unified: mode.is_unified(),
            dirs: Vec::new(),
            hybrid_v2: None,
        };
        match mode {
            CgroupMode::Unified { .. } => {
                if let Some(d) = paths.first() {
                    cg.dirs.push((Controller::Memory, d.clone()));
                }
            }
            CgroupMode::Legacy { mounts, hybrid_v2 } => {
                for d in paths {
                    let mut any = false;
                    for (c, mount) in mounts {
                        if d.starts_with(mount) {
                            cg.dirs.push((*c, d.clone()));
                            any = true;
                        }
                    }
                    if !any && hybrid_v2.as_deref().is_some_and(|v2| d.starts_with(v2)) {
                        cg.hybrid_v2 = Some(d.clone());
                    }
                }
            }
        }
        cg
    }

    /// Changes the limits of the running container (`kapsel-oci
    /// update`): only what `res` sets.
    pub fn update(&self, res: &Resources) -> Result<()> {
        if self.unified {
            let dir = self
                .dir_of(Controller::Memory)
                .ok_or_else(missing("cgroup"))?;
            v2::update(dir, res)
        } else {
            v1::update(|c| self.dir_of(c), res)
        }
    }

    /// The container's figures now: CPU time, memory, tasks.
    pub fn stats(&self) -> Stats {
        if self.unified {
            match self.dir_of(Controller::Memory) {
                Some(dir) => v2::stats(dir),
                None => Stats::default(),
            }
        } else {
            v1::stats(|c| self.dir_of(c))
        }
    }

    /// The container's directory in a cgroup2 hierarchy, if it has one:
    /// the v2 directory, or the hybrid host's delegated one.
    pub fn v2_dir(&self) -> Option<&Path> {
        self.unified_dir().or(self.hybrid_v2.as_deref())
    }

    /// Hands the cgroup2 directory (if there is one) to `uid`:`gid`, the
    /// host ids of a user namespace's root, as cgroups(7) describes
    /// delegation: the directory and its `cgroup.procs`, `cgroup.threads`
    /// and `cgroup.subtree_control`. The init (systemd) can then make its
    /// sub-groups and move its processes; the limits stay the host's.
    pub fn delegate_to(&self, uid: u32, gid: u32) -> Result<()> {
        let Some(dir) = self.v2_dir() else {
            return Ok(());
        };
        let files = [
            "",
            "cgroup.procs",
            "cgroup.threads",
            "cgroup.subtree_control",
        ];
        for f in files {
            let path = if f.is_empty() {
                dir.to_path_buf()
            } else {
                dir.join(f)
            };
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                .map_err(|source| Error::Cgroup { path, source })?;
        }
        Ok(())
    }

    /// Removes the directories. The tasks must be gone; a directory whose
    /// last task is still being torn down by the kernel is retried for up
    /// to a second. Returns whether everything was removed.
    /// Sub-groups (a systemd init makes its own tree) go first, deepest
    /// first.
    pub fn remove(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(1);
        if let Some(dir) = &self.hybrid_v2 {
            if remove_tree(dir, deadline) {
                self.hybrid_v2 = None;
            }
        }
        self.dirs.retain(|(_, dir)| !remove_tree(dir, deadline));
        self.dirs.is_empty() && self.hybrid_v2.is_none()
    }
}

/// Removes the cgroup directory `dir` and every group below it; true once
/// it is gone.
fn remove_tree(dir: &Path, deadline: Instant) -> bool {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path(), deadline);
            }
        }
    }
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return true,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => {
                tracing::warn!("cannot remove cgroup {}: {e}", dir.display());
                return false;
            }
        }
    }
}

fn missing(what: &'static str) -> impl Fn() -> Error {
    move || Error::Cgroup {
        path: PathBuf::from(what),
        source: io::Error::new(io::ErrorKind::NotFound, "controller not mounted"),
    }
}

fn timeout(path: &Path) -> Error {
    Error::Cgroup {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::TimedOut, "state did not change within 5 s"),
    }
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(|source| Error::Cgroup {
        path: path.to_path_buf(),
        source,
    })
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| Error::Cgroup {
        path: path.to_path_buf(),
        source,
    })
}

fn mkdir_parent(dir: &Path) -> Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(Error::Cgroup {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Removes the cgroup `dir` and the groups below it, deepest first, if no
/// process is in any of them (rmdir(2) of a cgroup fails while it has
/// processes or children): what a container that ended without its
/// cleanup (its manager killed) left behind.
fn remove_if_empty(dir: &Path) -> bool {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_if_empty(&e.path());
            }
        }
    }
    fs::remove_dir(dir).is_ok()
}

fn mkdir_leaf(dir: &Path, name: &str) -> Result<()> {
    let first = match fs::create_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && remove_if_empty(dir) => {
            tracing::info!(
                "removed the empty cgroup {} a container left",
                dir.display()
            );
            fs::create_dir(dir)
        }
        other => other,
    };
    match first {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(Error::Invalid(format!(
            "a container named {name} is already running ({} exists); pick another name \
             or stop it (rmdir the directory if it is left over)",
            dir.display()
        ))),
        Err(source) => Err(Error::Cgroup {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::v2::leave_for_leaf;
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const UNIFIED: &str = "\
30 23 0:27 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
";
    const DEBIAN_V1: &str = "\
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
";

    #[test]
    fn hybrid_uses_the_v1_controllers() {
        let m = CgroupMode::from_mountinfo(HYBRID, |_| "hugetlb".into());
        assert!(!m.is_unified());
        for c in Controller::ALL {
            assert!(m.has(c), "{c:?}");
        }
        let CgroupMode::Legacy { mounts, hybrid_v2 } = m else {
            unreachable!()
        };
        assert!(mounts.contains(&(Controller::Cpu, PathBuf::from("/sys/fs/cgroup/cpu"))));
        assert_eq!(hybrid_v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
    }

    #[test]
    fn unified_offers_what_the_root_lists() {
        let m = CgroupMode::from_mountinfo(UNIFIED, |p| {
            assert_eq!(p, Path::new("/sys/fs/cgroup"));
            "cpuset cpu io memory pids".into()
        });
        assert!(m.is_unified() && m.can_delegate());
        assert!(m.has(Controller::Memory) && m.has(Controller::Cpu) && m.has(Controller::Pids));
        assert!(m.has(Controller::Freezer) && m.has(Controller::Devices));
        let m = CgroupMode::from_mountinfo(UNIFIED, |_| "cpu pids".into());
        assert!(!m.has(Controller::Memory));
    }

    #[test]
    fn a_delegated_group_becomes_the_base() {
        let root = Path::new("/sys/fs/cgroup");
        let svc = root.join("system.slice/kapseld.service");
        let unified =
            || CgroupMode::from_mountinfo(UNIFIED, |_| "cpuset cpu io memory pids".into());
        let delegated = |d: &Path| d == svc;
        let controllers = |d: &Path| {
            assert_eq!(d, svc);
            "cpu memory pids".to_string()
        };
        // systemd starts kapseld in its unit's group, marked delegated.
        let m =
            unified().in_delegated("0::/system.slice/kapseld.service\n", delegated, controllers);
        let CgroupMode::Unified {
            base,
            controllers: offered,
            ..
        } = &m
        else {
            unreachable!()
        };
        assert_eq!(base, &svc);
        assert_eq!(offered, &["cpu", "memory", "pids"]);
        // Already moved to the leaf (a second start in the same unit, or
        // systemd's DelegateSubgroup=): the same base.
        let m = unified().in_delegated(
            "0::/system.slice/kapseld.service/supervisor\n",
            delegated,
            controllers,
        );
        assert!(matches!(&m, CgroupMode::Unified { base, .. } if base == &svc));
        // The root, and a group nobody delegated: Kapsel's own top-level group.
        for own in [
            "0::/\n",
            "0::/user.slice/session-1.scope\n",
            "",
            "0::/../x\n",
        ] {
            let m = unified().in_delegated(own, delegated, controllers);
            assert_eq!(m, unified(), "{own:?}");
        }
        // v1 and hybrid hosts keep their layout.
        let hybrid = CgroupMode::from_mountinfo(HYBRID, |_| String::new());
        let m = hybrid.clone().in_delegated(
            "0::/system.slice/kapseld.service\n",
            |_| true,
            controllers,
        );
        assert_eq!(m, hybrid);
    }

    /// A directory tree that stands in for cgroupfs (plain files).
    fn fake_cgroupfs(tag: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("kapsel-cgfs-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("system.slice/kapseld.service")).unwrap();
        root
    }

    #[test]
    fn processes_of_a_delegated_base_move_to_a_leaf() {
        let root = fake_cgroupfs("leaf");
        let svc = root.join("system.slice/kapseld.service");
        fs::write(svc.join("cgroup.procs"), "4242\n4343\n").unwrap();
        let mode = CgroupMode::Unified {
            root: root.clone(),
            base: svc.clone(),
            controllers: vec!["cpu".into(), "memory".into(), "pids".into()],
        };
        let limits = Limits {
            memory: Some(32 << 20),
            cpus: Some(0.5),
            pids: Some(24),
        };
        let cg = Cgroup::create(&mode, "web", &limits, false).unwrap();
        // The last pid written is the last moved (a plain file keeps one).
        let moved = fs::read_to_string(svc.join("supervisor/cgroup.procs")).unwrap();
        assert_eq!(moved, "4343");
        let dir = svc.join("kapsel/web");
        assert_eq!(cg.unified_dir(), Some(dir.as_path()));
        assert_eq!(
            fs::read_to_string(dir.join("memory.max")).unwrap(),
            "33554432"
        );
        assert_eq!(fs::read_to_string(dir.join("pids.max")).unwrap(), "24");
        assert_eq!(
            fs::read_to_string(dir.join("cpu.max")).unwrap(),
            "50000 100000"
        );
        // Controllers go into the base's and kapsel/'s subtree_control,
        // never into a group above the base.
        for d in [&svc, &svc.join("kapsel")] {
            assert!(d.join("cgroup.subtree_control").exists(), "{}", d.display());
        }
        assert!(!root.join("cgroup.subtree_control").exists());
        assert!(!root.join("system.slice/cgroup.subtree_control").exists());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn an_empty_delegated_base_makes_no_leaf() {
        let root = fake_cgroupfs("empty");
        let svc = root.join("system.slice/kapseld.service");
        fs::write(svc.join("cgroup.procs"), "").unwrap();
        leave_for_leaf(&svc).unwrap();
        assert!(!svc.join(SUPERVISOR).exists());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn comounted_v1_controllers() {
        let m = CgroupMode::from_mountinfo(DEBIAN_V1, |_| String::new());
        assert!(m.has(Controller::Cpu));
        assert!(!m.can_delegate(), "pure v1 has no cgroup2 tree to give");
        assert!(!m.has(Controller::Memory));
    }
}
