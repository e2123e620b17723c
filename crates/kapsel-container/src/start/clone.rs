//! The clone of the container's init into its new namespaces: on cgroup
//! v2 straight into its cgroup (clone3 with `CLONE_INTO_CGROUP`), else a
//! plain clone. The child runs [`child::run`] and never returns here.

use crate::cgroup::Cgroup;
use crate::child::{self, ChildPlan};
use crate::error::{Error, Result};
use crate::spec::ContainerSpec;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `CLONE_INTO_CGROUP` (Linux 5.7), not in the libc crate for every target.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` of clone3(2), version 2 (88 bytes, with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// The cloned init, as the parent sees it.
pub(super) struct Cloned {
    pub pid: i32,
    pub pidfd: OwnedFd,
    /// Born in its cgroup (v2): nobody has to move it.
    pub born_in_cgroup: bool,
}

/// The namespaces the init gets: mount, PID, UTS, IPC and network, less
/// those shared with the host or joined by path; a user namespace with
/// an id map.
fn namespace_flags(spec: &ContainerSpec) -> libc::c_int {
    let mut flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWNET
        | libc::CLONE_PIDFD;
    for ns in spec
        .extra
        .host_namespaces
        .iter()
        .chain(spec.extra.join_namespaces.iter().map(|(ns, _)| ns))
    {
        flags &= !ns.clone_flag();
    }
    if spec.user_map.is_some() {
        flags |= libc::CLONE_NEWUSER;
    }
    flags
}

/// Clones the init, which runs `plan` in the child.
pub(super) fn clone_init(
    spec: &ContainerSpec,
    plan: &ChildPlan,
    cgroup: &Cgroup,
) -> Result<Cloned> {
    let flags = namespace_flags(spec);
    let mut pidfd: libc::c_int = -1;
    // On cgroup v2 the child is born in its cgroup (clone3 with
    // CLONE_INTO_CGROUP): moving it afterwards would take the cgroup
    // threadgroup lock for writing, which waits for an RCU grace period
    // (milliseconds, the largest cost of a start). v1 has no such
    // option: there, and on kernels before 5.7, the parent moves it.
    let cgroup_dir = cgroup.unified_dir().and_then(|d| File::open(d).ok());
    let mut born_in_cgroup = false;
    let mut pid: libc::c_long = -1;
    if let Some(dir) = &cgroup_dir {
        let args = CloneArgs {
            flags: flags as u32 as u64 | CLONE_INTO_CGROUP,
            pidfd: &mut pidfd as *mut libc::c_int as u64,
            exit_signal: libc::SIGCHLD as u64,
            cgroup: dir.as_raw_fd() as u64,
            ..CloneArgs::default()
        };
        // SAFETY: clone3 with no stack and without CLONE_VM behaves like
        // fork (see below); `args` is a valid clone_args of the size given.
        pid = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        born_in_cgroup = pid >= 0;
    }
    if !born_in_cgroup {
        // SAFETY: clone without CLONE_VM and with no new stack behaves
        // like fork: the child gets a copy of this address space and
        // runs on its copy of this stack. The child only calls
        // `child::run`, which makes system calls on the prepared plan
        // and never returns.
        pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                (flags | libc::SIGCHLD) as libc::c_ulong,
                0usize,
                &mut pidfd as *mut libc::c_int,
                0usize,
                0usize,
            )
        };
    }
    if pid == 0 {
        child::run(plan);
    }
    if pid < 0 {
        return Err(Error::last_os("clone of the container's init"));
    }
    // SAFETY: CLONE_PIDFD stored a new descriptor for the child in `pidfd`.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(Cloned {
        pid: pid as i32,
        pidfd,
        born_in_cgroup,
    })
}
