//! config.json's idmapped bind mounts (`idmap`, `ridmap`): while the
//! container's init waits with its root mounted, before `pivot_root`
//! (the moment of the create hooks), a process forked here joins the
//! init's mount namespace, clones each source (`open_tree`), idmaps the
//! clone to the container's user namespace (`mount_setattr` with
//! `MOUNT_ATTR_IDMAP`, read-only if the mount is) and moves it over the
//! plain bind mount the init made at the destination, which is resolved
//! inside the root (`openat2` with `RESOLVE_IN_ROOT`).

use crate::config::IdmapMount;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

/// The steps the helper reports a failure of, by number.
const STEPS: [&str; 5] = [
    "joining the container's mount namespace",
    "opening the container's root",
    "cloning the source (open_tree)",
    "idmapping the clone (mount_setattr; the source's file system must support idmapped mounts)",
    "mounting it at the destination (openat2, move_mount)",
];

/// Mounts `mounts` idmapped in the container whose init is `pid` and
/// whose root is `rootfs`.
pub fn mount_all(pid: i32, rootfs: &Path, mounts: &[IdmapMount]) -> Result<(), String> {
    let userns = File::open(format!("/proc/{pid}/ns/user"))
        .map_err(|e| format!("the container's user namespace: {e}"))?;
    let mntns = File::open(format!("/proc/{pid}/ns/mnt"))
        .map_err(|e| format!("the container's mount namespace: {e}"))?;
    let c = |s: &[u8]| CString::new(s).map_err(|_| "a mount path has a NUL byte".to_string());
    let root = c(rootfs.as_os_str().as_bytes())?;
    let items: Vec<(CString, CString, &IdmapMount)> = mounts
        .iter()
        .map(|m| {
            let rel = m.destination.trim_start_matches('/');
            Ok((
                c(m.source.as_bytes())?,
                c(if rel.is_empty() { b"." } else { rel.as_bytes() })?,
                m,
            ))
        })
        .collect::<Result<_, String>>()?;
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("a pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: both descriptors are new and ours.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fork; the child makes system calls on data prepared above
    // (no allocation) and ends with _exit.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if child == 0 {
        // SAFETY: as above.
        unsafe {
            helper(
                mntns.as_raw_fd(),
                userns.as_raw_fd(),
                &root,
                &items,
                wr.as_raw_fd(),
            )
        }
    }
    drop(wr);
    let mut report = [0u8; 8];
    // SAFETY: reads at most 8 bytes into `report`.
    let n = unsafe { libc::read(rd.as_raw_fd(), report.as_mut_ptr().cast(), 8) };
    let mut st = 0;
    // SAFETY: waitpid on our own child into a local.
    unsafe { libc::waitpid(child, &mut st, 0) };
    if n == 8 {
        let step = u32::from_ne_bytes([report[0], report[1], report[2], report[3]]) as usize;
        let which = u32::from_ne_bytes([report[4], report[5], report[6], report[7]]) as usize;
        let errno = (step >> 8) as i32;
        let m = &mounts[which.min(mounts.len().saturating_sub(1))];
        return Err(format!(
            "idmapped mount of {} at {}: {}: {}",
            m.source,
            m.destination,
            STEPS.get(step & 0xff).copied().unwrap_or("an unknown step"),
            std::io::Error::from_raw_os_error(errno)
        ));
    }
    if !libc::WIFEXITED(st) || libc::WEXITSTATUS(st) != 0 {
        return Err("the idmapped-mount helper failed".into());
    }
    Ok(())
}

/// The forked helper; never returns.
///
/// # Safety
/// Only in the child of fork: system calls on the prepared data.
unsafe fn helper(
    mntns: RawFd,
    userns: RawFd,
    root: &CString,
    items: &[(CString, CString, &IdmapMount)],
    report: RawFd,
) -> ! {
    // SAFETY: system calls on descriptors and strings prepared before fork.
    unsafe {
        let fail = |step: usize, which: usize| -> ! {
            let errno = *libc::__errno_location();
            let mut msg = [0u8; 8];
            msg[..4].copy_from_slice(&((step as u32) | ((errno as u32) << 8)).to_ne_bytes());
            msg[4..].copy_from_slice(&(which as u32).to_ne_bytes());
            libc::write(report, msg.as_ptr().cast(), 8);
            libc::_exit(1)
        };
        if libc::setns(mntns, libc::CLONE_NEWNS) != 0 {
            fail(0, 0);
        }
        let rootfd = libc::open(
            root.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if rootfd < 0 {
            fail(1, 0);
        }
        for (i, (src, dest, m)) in items.iter().enumerate() {
            let rec = if m.recursive { AT_RECURSIVE } else { 0 };
            let tree = libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                src.as_ptr(),
                libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | rec,
            );
            if tree < 0 {
                fail(2, i);
            }
            let attr = libc::mount_attr {
                attr_set: libc::MOUNT_ATTR_IDMAP
                    | if m.readonly {
                        libc::MOUNT_ATTR_RDONLY
                    } else {
                        0
                    },
                attr_clr: 0,
                propagation: 0,
                userns_fd: userns as u64,
            };
            if libc::syscall(
                libc::SYS_mount_setattr,
                tree,
                c"".as_ptr(),
                libc::AT_EMPTY_PATH as libc::c_uint | rec,
                &attr as *const libc::mount_attr,
                std::mem::size_of::<libc::mount_attr>(),
            ) != 0
            {
                fail(3, i);
            }
            let mut how: libc::open_how = std::mem::zeroed();
            how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
            how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
            let target = libc::syscall(
                libc::SYS_openat2,
                rootfd,
                dest.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            );
            if target < 0 {
                fail(4, i);
            }
            if libc::syscall(
                libc::SYS_move_mount,
                tree,
                c"".as_ptr(),
                target,
                c"".as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
            ) != 0
            {
                fail(4, i);
            }
        }
        libc::_exit(0)
    }
}
