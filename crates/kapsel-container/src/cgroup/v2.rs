//! cgroup v2 (unified): one directory per container, `BASE/kapsel/NAME`;
//! controllers enabled in the `cgroup.subtree_control` of each group
//! above it; freezing through `cgroup.freeze`; devices an eBPF filter
//! ([`crate::devices`]); a delegated BASE (systemd's `Delegate=yes`).

use super::SUPERVISOR;
use super::{
    key, mkdir_leaf, mkdir_parent, read, read_keyed, read_u64, timeout, write, Controller, Limits,
    Resources, Stats, CPU_PERIOD_US,
};
use crate::devices;
use crate::error::{Error, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The extended attributes systemd sets to "1" on a cgroup it delegates
/// (`trusted.` for system services, `user.` for a user's manager).
const DELEGATE_XATTRS: [&std::ffi::CStr; 2] = [c"trusted.delegate", c"user.delegate"];

/// Makes `base/parent_rel/name`, with the controllers `limits` needs
/// (and memory and io when offered) enabled above it; returns it.
pub(super) fn create_dir(
    root: &Path,
    base: &Path,
    controllers: &[String],
    parent_rel: &Path,
    name: &str,
    limits: &Limits,
) -> Result<PathBuf> {
    let parent = base.join(parent_rel);
    // A non-root group that hands controllers to its children
    // may hold no process ("no internal processes"): those in
    // a delegated base (this one among them) go to a leaf.
    if base != root {
        leave_for_leaf(base)?;
    }
    let mut chain = vec![base.to_path_buf()];
    for c in parent_rel.components() {
        let next = chain[chain.len() - 1].join(c);
        mkdir_parent(&next)?;
        chain.push(next);
    }
    // Controllers must be enabled in the base's and the
    // parent's subtree_control, one by one: the kernel may
    // refuse one (cpu, while a real-time task sits outside the
    // root), which only matters when a limit needs it; memory
    // and io are wanted for the usage figures (and a systemd
    // container's own accounting) but not required.
    let wanted = [
        (Controller::Memory.name(), limits.memory.is_some()),
        (Controller::Pids.name(), limits.pids.is_some()),
        (Controller::Cpu.name(), limits.cpus.is_some()),
        ("io", false),
    ];
    for (c, needed) in wanted {
        if !controllers.iter().any(|h| h == c) {
            continue;
        }
        for dir in &chain {
            let file = dir.join("cgroup.subtree_control");
            match write(&file, &format!("+{c}")) {
                Ok(()) => {}
                Err(e) if needed => return Err(e),
                Err(e) => {
                    tracing::debug!("{e}: the container runs without {c}")
                }
            }
        }
    }
    let dir = parent.join(name);
    mkdir_leaf(&dir, name)?;
    Ok(dir)
}

/// Writes `limits` into `dir`.
pub(super) fn apply(dir: &Path, limits: &Limits) -> Result<()> {
    if let Some(bytes) = limits.memory {
        write(&dir.join("memory.max"), &bytes.to_string())?;
        // No swapping past the limit: the container is OOM-killed at it.
        let swap = dir.join("memory.swap.max");
        if swap.exists() {
            write(&swap, "0")?;
        }
    }
    if let Some(n) = limits.pids {
        write(&dir.join("pids.max"), &n.to_string())?;
    }
    if let Some(cpus) = limits.cpus {
        let quota = ((cpus * CPU_PERIOD_US as f64) as u64).max(1000);
        write(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
    }
    Ok(())
}

/// Attaches the device filter: v2 has no devices controller, an eBPF
/// program does its work. A kernel without CONFIG_CGROUP_BPF cannot take
/// it; the container then still has no device nodes it should not have,
/// and no CAP_MKNOD to make one.
pub(super) fn attach_devices(dir: &Path, extra: &[devices::AllowedDevice]) {
    let attached = fs::File::open(dir).and_then(|d| devices::attach_with(&d, extra));
    if let Err(e) = attached {
        tracing::warn!("no device filter for {}: {e}", dir.display());
    }
}

/// Freezes or thaws `dir` and waits until `cgroup.events` says so.
pub(super) fn set_frozen(dir: &Path, frozen: bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    write(&dir.join("cgroup.freeze"), if frozen { "1" } else { "0" })?;
    let want = if frozen { "frozen 1" } else { "frozen 0" };
    let events = dir.join("cgroup.events");
    while !read(&events)?.lines().any(|l| l == want) {
        if Instant::now() > deadline {
            return Err(timeout(&events));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Whether `dir` is frozen.
pub(super) fn is_frozen(dir: &Path) -> Result<bool> {
    Ok(read(&dir.join("cgroup.events"))?
        .lines()
        .any(|l| l == "frozen 1"))
}

/// The file holding the memory the limit counts.
pub(super) const MEMORY_USAGE: &str = "memory.current";

/// The file and key of the OOM-kill counter.
pub(super) const OOM_KILLS: (&str, &str) = ("memory.events", "oom_kill ");

/// Whether systemd delegated the cgroup directory `dir`
/// ([`DELEGATE_XATTRS`] is "1").
pub(super) fn is_delegated(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    DELEGATE_XATTRS.iter().any(|name| {
        let mut value = [0u8; 8];
        // SAFETY: getxattr reads two NUL-terminated strings and writes at
        // most `value.len()` bytes into `value`.
        let n = unsafe {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        n == 1 && value[0] == b'1'
    })
}

/// Moves every process of the group `dir` into its leaf [`SUPERVISOR`]
/// (made if missing), so that `dir` may enable controllers for its
/// children. Nothing to do when it holds none. A process forked while
/// the others move is caught by the next round (of a few).
pub(super) fn leave_for_leaf(dir: &Path) -> Result<()> {
    let procs = dir.join("cgroup.procs");
    let leaf = dir.join(SUPERVISOR);
    for _ in 0..10 {
        let pids = read(&procs)?;
        if pids.trim().is_empty() {
            return Ok(());
        }
        mkdir_parent(&leaf)?;
        for pid in pids.split_whitespace() {
            match write(&leaf.join("cgroup.procs"), pid) {
                Ok(()) => {}
                // Gone meanwhile.
                Err(Error::Cgroup { source, .. }) if source.raw_os_error() == Some(libc::ESRCH) => {
                }
                Err(e) => return Err(e),
            }
        }
        tracing::info!(
            "moved the processes of the delegated cgroup {} into {}",
            dir.display(),
            leaf.display()
        );
    }
    // Still not empty: enabling a controller below reports EBUSY.
    Ok(())
}

/// A v2 limit: -1 is "max".
fn limit(v: i64) -> String {
    if v < 0 {
        "max".into()
    } else {
        v.to_string()
    }
}

/// Changes the limits `res` sets (see [`Resources`]), in `dir`.
pub(super) fn update(dir: &Path, res: &Resources) -> Result<()> {
    if let Some(r) = res.memory_reservation {
        write(&dir.join("memory.low"), &limit(r))?;
    }
    if let Some(m) = res.memory {
        write(&dir.join("memory.max"), &limit(m))?;
    }
    if let Some(sw) = res.memory_swap {
        // OCI gives memory + swap; v2 limits the swap alone.
        let swap = dir.join("memory.swap.max");
        if swap.exists() {
            let mem = match res.memory {
                Some(m) => m,
                None => read_u64(&dir.join("memory.max"))
                    .filter(|&v| v != u64::MAX)
                    .map_or(-1, |v| v as i64),
            };
            let v = if sw < 0 || mem < 0 {
                "max".into()
            } else {
                (sw - mem).max(0).to_string()
            };
            write(&swap, &v)?;
        }
    }
    if res.cpu_quota.is_some() || res.cpu_period.is_some() {
        let file = dir.join("cpu.max");
        let now = read(&file).unwrap_or_else(|_| format!("max {CPU_PERIOD_US}"));
        let mut parts = now.split_whitespace();
        let quota = parts.next().unwrap_or("max").to_string();
        let period = parts.next().unwrap_or("100000").to_string();
        let quota = res.cpu_quota.map_or(quota, limit);
        let period = res.cpu_period.map_or(period, |p| p.to_string());
        write(&file, &format!("{quota} {period}"))?;
    }
    if let Some(shares) = res.cpu_shares {
        // runc's conversion of v1 shares (2..262144) to a weight (1..10000).
        let shares = shares.clamp(2, 262_144);
        let weight = 1 + ((shares - 2) * 9999) / 262_142;
        write(&dir.join("cpu.weight"), &weight.to_string())?;
    }
    if let Some(n) = res.pids {
        write(&dir.join("pids.max"), &limit(if n == 0 { -1 } else { n }))?;
    }
    Ok(())
}

/// The figures of `dir`.
pub(super) fn stats(dir: &Path) -> Stats {
    let mut s = Stats::default();
    let cpu = read_keyed(&dir.join("cpu.stat"));
    s.cpu_total = key(&cpu, "usage_usec") * 1000;
    s.cpu_user = key(&cpu, "user_usec") * 1000;
    s.cpu_kernel = key(&cpu, "system_usec") * 1000;
    s.throttling = (
        key(&cpu, "nr_periods"),
        key(&cpu, "nr_throttled"),
        key(&cpu, "throttled_usec") * 1000,
    );
    s.memory_usage = read_u64(&dir.join("memory.current")).unwrap_or(0);
    s.memory_max_usage = read_u64(&dir.join("memory.peak")).unwrap_or(0);
    s.memory_limit = read_u64(&dir.join("memory.max")).unwrap_or(u64::MAX);
    s.memory_failcnt = key(&read_keyed(&dir.join("memory.events")), "max");
    s.memory_raw = read_keyed(&dir.join("memory.stat"));
    s.memory_cache = key(&s.memory_raw, "file");
    s.swap_usage = read_u64(&dir.join("memory.swap.current")).unwrap_or(0);
    s.swap_limit = read_u64(&dir.join("memory.swap.max")).unwrap_or(u64::MAX);
    s.pids_current = read_u64(&dir.join("pids.current")).unwrap_or(0);
    s.pids_limit = read_u64(&dir.join("pids.max"))
        .filter(|&v| v != u64::MAX)
        .unwrap_or(0);
    s
}
