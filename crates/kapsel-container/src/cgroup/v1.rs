//! cgroup v1 (legacy, and hybrid hosts whose controllers live in v1):
//! `/sys/fs/cgroup/CTRL/kapsel/NAME` in each of the `memory`, `pids`,
//! `cpu`, `freezer` and `devices` hierarchies that exist; the `devices`
//! controller gets an allow-list; freezing through `freezer.state`. On a
//! hybrid host a delegated container also gets a directory in the
//! (controller-less) v2 hierarchy.

use super::{mkdir_leaf, read, timeout, write, Controller, Limits, CPU_PERIOD_US};
use crate::devices;
use crate::error::{Error, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Makes `parent_rel/name` below each of `mounts` (and, with `delegate`,
/// below the hybrid host's v2 hierarchy); pushes each directory made
/// into `dirs` and `hybrid` as it goes, so that the caller can remove
/// them all after an error.
pub(super) fn create_dirs(
    mounts: &[(Controller, PathBuf)],
    hybrid_v2: Option<&Path>,
    parent_rel: &Path,
    name: &str,
    delegate: bool,
    dirs: &mut Vec<(Controller, PathBuf)>,
    hybrid: &mut Option<PathBuf>,
) -> Result<()> {
    for (c, mount) in mounts {
        let parent = mount.join(parent_rel);
        fs::create_dir_all(&parent).map_err(|source| Error::Cgroup {
            path: parent.clone(),
            source,
        })?;
        let dir = parent.join(name);
        mkdir_leaf(&dir, name)?;
        dirs.push((*c, dir));
    }
    if let (true, Some(v2)) = (delegate, hybrid_v2) {
        let parent = v2.join(parent_rel);
        fs::create_dir_all(&parent).map_err(|source| Error::Cgroup {
            path: parent.clone(),
            source,
        })?;
        let dir = parent.join(name);
        mkdir_leaf(&dir, name)?;
        *hybrid = Some(dir);
    }
    Ok(())
}

/// Writes the memory limit into the memory hierarchy's `dir` (swap
/// included where the host accounts it).
pub(super) fn apply_memory(dir: &Path, bytes: u64) -> Result<()> {
    let memsw = dir.join("memory.memsw.limit_in_bytes");
    write(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
    if memsw.exists() {
        write(&memsw, &bytes.to_string())?;
    }
    Ok(())
}

/// Writes the CPU quota into the cpu hierarchy's `dir`.
pub(super) fn apply_cpus(dir: &Path, cpus: f64) -> Result<()> {
    let quota = ((cpus * CPU_PERIOD_US as f64) as u64).max(1000);
    write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
    write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())
}

/// Denies every device, then allows Kapsel's list.
pub(super) fn apply_devices(dir: &Path) -> Result<()> {
    write(&dir.join("devices.deny"), "a")?;
    for rule in devices::v1_rules() {
        write(&dir.join("devices.allow"), &rule)?;
    }
    Ok(())
}

/// Writes `limits` into the hierarchies' directories (`dir_of`).
pub(super) fn apply<'a>(
    dir_of: impl Fn(Controller) -> Option<&'a Path>,
    limits: &Limits,
) -> Result<()> {
    if let Some(bytes) = limits.memory {
        apply_memory(
            dir_of(Controller::Memory).ok_or_else(super::missing("memory"))?,
            bytes,
        )?;
    }
    if let Some(n) = limits.pids {
        let dir = dir_of(Controller::Pids).ok_or_else(super::missing("pids"))?;
        write(&dir.join("pids.max"), &n.to_string())?;
    }
    if let Some(cpus) = limits.cpus {
        apply_cpus(
            dir_of(Controller::Cpu).ok_or_else(super::missing("cpu"))?,
            cpus,
        )?;
    }
    if let Some(dir) = dir_of(Controller::Devices) {
        apply_devices(dir)?;
    }
    Ok(())
}

/// Freezes or thaws the freezer hierarchy's `dir`.
pub(super) fn set_frozen(dir: &Path, frozen: bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let state = dir.join("freezer.state");
    let want = if frozen { "FROZEN" } else { "THAWED" };
    loop {
        // v1 may stop in FREEZING; writing again retries the stragglers.
        write(&state, want)?;
        if read(&state)?.trim() == want {
            break;
        }
        if Instant::now() > deadline {
            return Err(timeout(&state));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Whether the freezer hierarchy's `dir` is frozen (or freezing).
pub(super) fn is_frozen(dir: &Path) -> Result<bool> {
    Ok(read(&dir.join("freezer.state"))?.trim() != "THAWED")
}

/// The file holding the memory the limit counts.
pub(super) const MEMORY_USAGE: &str = "memory.usage_in_bytes";

/// The file and key of the OOM-kill counter.
pub(super) const OOM_KILLS: (&str, &str) = ("memory.oom_control", "oom_kill ");
