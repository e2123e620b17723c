//! cgroup v2 (unified): one directory per container, `BASE/kapsel/NAME`;
//! controllers enabled in the `cgroup.subtree_control` of each group
//! above it; freezing through `cgroup.freeze`; devices an eBPF filter
//! ([`crate::devices`]); a delegated BASE (systemd's `Delegate=yes`).

use super::SUPERVISOR;
use super::{mkdir_leaf, mkdir_parent, read, timeout, write, Controller, Limits, CPU_PERIOD_US};
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
pub(super) fn attach_devices(dir: &Path) {
    let attached = fs::File::open(dir).and_then(|d| devices::attach(&d));
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
