//! cgroup v1 (legacy, and hybrid hosts whose controllers live in v1):
//! `/sys/fs/cgroup/CTRL/kapsel/NAME` in each of the `memory`, `pids`,
//! `cpu`, `freezer` and `devices` hierarchies that exist; the `devices`
//! controller gets an allow-list; freezing through `freezer.state`. On a
//! hybrid host a delegated container also gets a directory in the
//! (controller-less) v2 hierarchy.

use super::{
    key, missing, mkdir_leaf, read, read_keyed, read_u64, timeout, write, Controller, Limits,
    Resources, Stats, CPU_PERIOD_US,
};
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
        if let Some((_, made)) = dirs.iter().find(|(_, d)| d.starts_with(mount)) {
            // Mounted together with one made already (cpu,cpuacct).
            let made = made.clone();
            dirs.push((*c, made));
            continue;
        }
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

/// Denies every device, then allows Kapsel's list and `extra`.
pub(super) fn apply_devices(dir: &Path, extra: &[devices::AllowedDevice]) -> Result<()> {
    write(&dir.join("devices.deny"), "a")?;
    for rule in devices::v1_rules()
        .into_iter()
        .chain(devices::v1_rules_for(extra))
    {
        write(&dir.join("devices.allow"), &rule)?;
    }
    Ok(())
}

/// Writes `limits` into the hierarchies' directories (`dir_of`).
pub(super) fn apply<'a>(
    dir_of: impl Fn(Controller) -> Option<&'a Path>,
    limits: &Limits,
    allowed: &[devices::AllowedDevice],
) -> Result<()> {
    if let Some(bytes) = limits.memory {
        apply_memory(
            dir_of(Controller::Memory).ok_or_else(missing("memory"))?,
            bytes,
        )?;
    }
    if let Some(n) = limits.pids {
        let dir = dir_of(Controller::Pids).ok_or_else(missing("pids"))?;
        write(&dir.join("pids.max"), &n.to_string())?;
    }
    if let Some(cpus) = limits.cpus {
        apply_cpus(dir_of(Controller::Cpu).ok_or_else(missing("cpu"))?, cpus)?;
    }
    if let Some(dir) = dir_of(Controller::Devices) {
        apply_devices(dir, allowed)?;
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

/// A v1 limit: -1 is none.
fn limit(v: i64) -> String {
    if v < 0 {
        "-1".into()
    } else {
        v.to_string()
    }
}

/// Changes the limits `res` sets (see [`Resources`]).
pub(super) fn update<'a>(
    dir_of: impl Fn(Controller) -> Option<&'a Path>,
    res: &Resources,
) -> Result<()> {
    if res.memory.is_some() || res.memory_swap.is_some() || res.memory_reservation.is_some() {
        let dir = dir_of(Controller::Memory).ok_or_else(missing("memory"))?;
        if let Some(r) = res.memory_reservation {
            write(&dir.join("memory.soft_limit_in_bytes"), &limit(r))?;
        }
        let mem = dir.join("memory.limit_in_bytes");
        let memsw = dir.join("memory.memsw.limit_in_bytes");
        // Without swap accounting (no memsw file) there is no swap limit
        // to set. With it and no swap given, Kapsel's rule holds: no swap
        // past the memory limit.
        let swap = if memsw.exists() {
            res.memory_swap.or(res.memory)
        } else {
            None
        };
        let as_u64 = |v: i64| if v < 0 { u64::MAX } else { v as u64 };
        match (res.memory, swap) {
            (Some(m), Some(sw)) => {
                // memsw >= the limit at every moment: when raising, memsw
                // goes first; when lowering, the limit.
                let cur = read_u64(&mem).unwrap_or(u64::MAX);
                if as_u64(m) > cur {
                    write(&memsw, &limit(sw))?;
                    write(&mem, &limit(m))?;
                } else {
                    write(&mem, &limit(m))?;
                    write(&memsw, &limit(sw))?;
                }
            }
            (Some(m), None) => write(&mem, &limit(m))?,
            (None, Some(sw)) => write(&memsw, &limit(sw))?,
            (None, None) => {}
        }
    }
    if res.cpu_quota.is_some() || res.cpu_period.is_some() || res.cpu_shares.is_some() {
        let dir = dir_of(Controller::Cpu).ok_or_else(missing("cpu"))?;
        if let Some(p) = res.cpu_period {
            write(&dir.join("cpu.cfs_period_us"), &p.to_string())?;
        }
        if let Some(q) = res.cpu_quota {
            write(&dir.join("cpu.cfs_quota_us"), &limit(q))?;
        }
        if let Some(s) = res.cpu_shares {
            write(&dir.join("cpu.shares"), &s.to_string())?;
        }
    }
    if let Some(n) = res.pids {
        let dir = dir_of(Controller::Pids).ok_or_else(missing("pids"))?;
        let v = if n <= 0 { "max".into() } else { n.to_string() };
        write(&dir.join("pids.max"), &v)?;
    }
    Ok(())
}

/// The figures of the hierarchies' directories.
pub(super) fn stats<'a>(dir_of: impl Fn(Controller) -> Option<&'a Path>) -> Stats {
    let mut s = Stats::default();
    if let Some(dir) = dir_of(Controller::Cpuacct) {
        s.cpu_total = read_u64(&dir.join("cpuacct.usage")).unwrap_or(0);
        s.cpu_percpu = fs::read_to_string(dir.join("cpuacct.usage_percpu"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        // USER_HZ ticks (100 a second on Linux) to nanoseconds.
        let ticks = read_keyed(&dir.join("cpuacct.stat"));
        s.cpu_user = key(&ticks, "user") * 10_000_000;
        s.cpu_kernel = key(&ticks, "system") * 10_000_000;
    }
    if let Some(dir) = dir_of(Controller::Cpu) {
        let st = read_keyed(&dir.join("cpu.stat"));
        s.throttling = (
            key(&st, "nr_periods"),
            key(&st, "nr_throttled"),
            key(&st, "throttled_time"),
        );
    }
    if let Some(dir) = dir_of(Controller::Memory) {
        s.memory_usage = read_u64(&dir.join("memory.usage_in_bytes")).unwrap_or(0);
        s.memory_max_usage = read_u64(&dir.join("memory.max_usage_in_bytes")).unwrap_or(0);
        s.memory_limit = read_u64(&dir.join("memory.limit_in_bytes")).unwrap_or(u64::MAX);
        s.memory_failcnt = read_u64(&dir.join("memory.failcnt")).unwrap_or(0);
        s.memory_raw = read_keyed(&dir.join("memory.stat"));
        s.memory_cache = key(&s.memory_raw, "cache");
        s.swap_usage = read_u64(&dir.join("memory.memsw.usage_in_bytes")).unwrap_or(0);
        s.swap_limit = read_u64(&dir.join("memory.memsw.limit_in_bytes")).unwrap_or(u64::MAX);
    }
    if let Some(dir) = dir_of(Controller::Pids) {
        s.pids_current = read_u64(&dir.join("pids.current")).unwrap_or(0);
        s.pids_limit = read_u64(&dir.join("pids.max"))
            .filter(|&v| v != u64::MAX)
            .unwrap_or(0);
    }
    s
}
