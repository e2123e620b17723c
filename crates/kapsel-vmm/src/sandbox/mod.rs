//! The VM process's sandbox: what a guest that breaks out of a device
//! model finds around it.
//!
//! [`crate::vm::run`] opens every host resource first (/dev/kvm, the kernel
//! and initrd, disk images with their backing chains, taps, console files)
//! and then, before the first guest instruction, confines the process in
//! this order:
//!
//! 1. [`isolate_filesystem`]: a new mount namespace whose root is an empty,
//!    read-only tmpfs (`pivot_root`, the old root detached; `chroot` where
//!    the root is an initramfs that cannot be pivoted), and new network and
//!    IPC namespaces (empty: the taps already open keep working, but nothing
//!    else on the host's network or IPC is reachable, not even through a
//!    path seccomp does not see, such as io_uring's own operations). Without
//!    CAP_SYS_ADMIN a user namespace is created first; where that is not
//!    allowed either, the step is skipped with a log line and the rest
//!    still applies.
//! 2. [`set_no_new_privs`]: no exec can ever gain privileges.
//! 3. [`drop_capabilities`]: the bounding set, the ambient set and the
//!    effective, permitted and inheritable sets are emptied. The uid stays:
//!    root without capabilities, in an empty mount namespace and with no
//!    `kill`, `ptrace`, `open` or `socket` in its seccomp allowlists, can
//!    reach nothing a uid change would protect; a daemon that wants a
//!    distinct uid per VM starts the VM process under it (the process only
//!    needs the descriptors it is handed).
//! 4. [`seccomp`]: a per-thread allowlist filter, KillProcess on anything
//!    else. The main thread installs its own filter at once; every vCPU and
//!    I/O thread installs its narrower one as the first thing it does.
//!
//! Rebooting the guest (`--on-reboot restart`) reuses the resources opened
//! in the first step, so it needs nothing the sandbox took away.

pub mod seccomp;

use std::ffi::CStr;
use std::io;

/// Why the process could not be confined.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A step of the confinement failed.
    #[error("cannot confine the VM process: {step} failed: {source}")]
    Step {
        /// What was being done.
        step: &'static str,
        /// What the OS said.
        source: io::Error,
    },
    /// A seccomp filter could not be built (a bug in the allowlists).
    #[error("cannot build the seccomp filter of the {thread} thread: {detail}")]
    Filter {
        /// The thread kind.
        thread: &'static str,
        /// What seccompiler said.
        detail: String,
    },
    /// A seccomp filter could not be installed.
    #[error("cannot install the seccomp filter of the {thread} thread: {detail}")]
    Install {
        /// The thread kind.
        thread: &'static str,
        /// What the kernel said.
        detail: String,
    },
}

fn step(step: &'static str) -> impl FnOnce(io::Error) -> SandboxError {
    move |source| SandboxError::Step { step, source }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// How the filesystem was taken away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootIsolation {
    /// The root is an empty read-only tmpfs; the old root is detached.
    PivotRoot,
    /// The root is an empty read-only tmpfs, entered with `chroot` because
    /// the old root (an initramfs) cannot be pivoted away.
    Chroot,
    /// Not possible here (no CAP_SYS_ADMIN and no user namespaces); the
    /// other steps still apply.
    Unavailable(String),
}

/// What [`enter`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    /// How the filesystem was taken away.
    pub root: RootIsolation,
    /// Whether a user namespace was created for it.
    pub user_namespace: bool,
}

/// Steps 1–3 of the sandbox, for the whole process. Must be called while
/// the process has a single thread (a user namespace cannot be entered
/// otherwise, and threads started later inherit what is set here).
pub fn enter() -> Result<Confinement, SandboxError> {
    let (root, user_namespace) = isolate_filesystem()?;
    set_no_new_privs()?;
    drop_capabilities()?;
    Ok(Confinement {
        root,
        user_namespace,
    })
}

/// Directories over which the empty root can be mounted (in the new mount
/// namespace only; the host never sees it): the first that exists is used.
const MOUNT_POINTS: [&CStr; 3] = [c"/tmp", c"/mnt", c"/dev"];

/// The namespaces made besides the mount namespace.
const OTHER_NAMESPACES: libc::c_int = libc::CLONE_NEWNET | libc::CLONE_NEWIPC;

/// `unshare` of a mount namespace and, where the kernel has them,
/// [`OTHER_NAMESPACES`] (EINVAL: a kernel built without one of them).
fn unshare_namespaces(extra: libc::c_int) -> io::Result<()> {
    let flags = extra | libc::CLONE_NEWNS;
    // SAFETY: unshare takes only flags.
    match check(unsafe { libc::unshare(flags | OTHER_NAMESPACES) }) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::info!("sandbox: no network/IPC namespaces on this kernel ({e})");
            // SAFETY: unshare takes only flags.
            check(unsafe { libc::unshare(flags) })
        }
        other => other,
    }
}

/// Step 1: private mount, network and IPC namespaces; the root is an empty
/// read-only tmpfs. Returns how, and whether a user namespace was needed.
pub fn isolate_filesystem() -> Result<(RootIsolation, bool), SandboxError> {
    let user_namespace = match unshare_namespaces(0) {
        Ok(()) => false,
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => match enter_user_namespace() {
            Ok(()) => true,
            Err(why) => {
                let why =
                    format!("no CAP_SYS_ADMIN for a mount namespace and no user namespace ({why})");
                tracing::info!("sandbox: the VM process keeps the host's filesystem view: {why}");
                return Ok((RootIsolation::Unavailable(why), false));
            }
        },
        Err(e) => {
            return Err(step("unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC)")(
                e,
            ))
        }
    };
    // Nothing mounted or unmounted below propagates back to the host.
    // SAFETY: valid NUL-terminated strings; null source/type/data are
    // allowed for a propagation change.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    })
    .map_err(step("making the mounts private"))?;
    let target = MOUNT_POINTS
        .iter()
        .find(|dir| std::path::Path::new(dir.to_str().unwrap_or("/")).is_dir())
        .ok_or_else(|| {
            step("finding a directory for the empty root")(io::Error::new(
                io::ErrorKind::NotFound,
                "none of /tmp, /mnt, /dev exists",
            ))
        })?;
    // SAFETY: valid NUL-terminated strings for source, target, type and data.
    check(unsafe {
        libc::mount(
            c"kapsel-empty".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            c"size=4k,nr_inodes=4,mode=0555".as_ptr().cast(),
        )
    })
    .map_err(step("mounting the empty root"))?;
    // SAFETY: a valid NUL-terminated path.
    check(unsafe { libc::chdir(target.as_ptr()) }).map_err(step("entering the empty root"))?;
    // pivot_root(".", ".") stacks the old root under the new one, where
    // umount2(".") detaches it: afterwards no path reaches the host's files.
    // SAFETY: valid NUL-terminated paths.
    let pivoted = check(unsafe {
        libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int
    });
    let root = match pivoted {
        Ok(()) => {
            // SAFETY: a valid NUL-terminated path.
            check(unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) })
                .map_err(step("detaching the old root"))?;
            RootIsolation::PivotRoot
        }
        // The initramfs (rootfs) cannot be pivoted away: chroot into the
        // empty tmpfs instead. Without capabilities, and holding no
        // directory descriptor, the process cannot climb back out.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            // SAFETY: a valid NUL-terminated path.
            check(unsafe { libc::chroot(c".".as_ptr()) }).map_err(step("chroot"))?;
            RootIsolation::Chroot
        }
        Err(e) => return Err(step("pivot_root")(e)),
    };
    // SAFETY: a valid NUL-terminated path.
    check(unsafe { libc::chdir(c"/".as_ptr()) }).map_err(step("chdir /"))?;
    Ok((root, user_namespace))
}

/// A user namespace (with a mount namespace) in which this user is mapped
/// to itself: it gives the capabilities to mount the empty root, which are
/// dropped again in step 3.
fn enter_user_namespace() -> io::Result<()> {
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    unshare_namespaces(libc::CLONE_NEWUSER)?;
    std::fs::write("/proc/self/setgroups", "deny")?;
    std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1"))?;
    std::fs::write("/proc/self/gid_map", format!("{gid} {gid} 1"))?;
    Ok(())
}

/// Step 2: no exec (which seccomp forbids anyway) can gain privileges, and
/// seccomp filters can be installed without CAP_SYS_ADMIN.
pub fn set_no_new_privs() -> Result<(), SandboxError> {
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
        .map_err(step("prctl(PR_SET_NO_NEW_PRIVS)"))
}

/// Step 3: empties the bounding set, the ambient set, and the effective,
/// permitted and inheritable sets.
pub fn drop_capabilities() -> Result<(), SandboxError> {
    use kapsel_host::caps::{self, CapSet};
    drop_bounding_set()?;
    caps::clear_ambient().map_err(cap_failed)?;
    caps::set_capabilities(CapSet::EMPTY).map_err(cap_failed)
}

/// Empties the bounding set, one capability at a time until the kernel's
/// last one (EINVAL past it), and leaves the other sets alone: a process
/// that changes its uid next (the DHCP helper) drops the bounding set
/// first, while it still has CAP_SETPCAP, and keeps CAP_SETUID for the
/// change. Needs CAP_SETPCAP: a process without it has no capabilities to
/// lose, and with no_new_privs it cannot gain any.
pub fn drop_bounding_set() -> Result<(), SandboxError> {
    // Up to the kernel's last capability: /proc may be gone by now, so 63,
    // and the kernel's EINVAL past its last one ends the loop.
    match kapsel_host::caps::drop_bounding(kapsel_host::caps::CapSet::EMPTY, 63) {
        Err(e) if e.errno != libc::EPERM => Err(cap_failed(e)),
        _ => Ok(()),
    }
}

/// A failed capability step as the sandbox reports it.
fn cap_failed(e: kapsel_host::caps::CapError) -> SandboxError {
    step(e.step)(io::Error::from_raw_os_error(e.errno))
}

/// Development aids compiled into debug builds only, so that a release
/// build ships nothing that loosens or probes the sandbox. They read the
/// environment variable `KAPSEL_DEBUG_SECCOMP`, which a guest cannot set:
///
/// - `log`: syscalls outside the allowlists are logged by the kernel
///   (audit type 1326 in dmesg, with the thread's name) instead of killing
///   the process: the way to find what a new code path needs.
/// - `violate`: the main thread calls `socket(2)`, which no allowlist
///   holds, right after its filter is installed: the tests' proof that a
///   forbidden syscall kills the VM process with SIGSYS.
#[cfg(debug_assertions)]
pub mod debug {
    /// The value of `KAPSEL_DEBUG_SECCOMP`.
    fn mode() -> Option<String> {
        std::env::var("KAPSEL_DEBUG_SECCOMP").ok()
    }

    /// Whether forbidden syscalls are only logged.
    pub fn log_only() -> bool {
        mode().as_deref() == Some("log")
    }

    /// Issues a forbidden syscall if asked to.
    pub fn violate_if_asked() {
        if mode().as_deref() == Some("violate") {
            // SAFETY: socket(2) takes integers; the filter kills the process
            // before it returns.
            let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
            tracing::error!("socket(2) was not stopped by the sandbox (returned {fd})");
        }
    }
}
