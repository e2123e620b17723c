//! The root of a container with a user namespace, seen through an idmapped
//! mount: files the host's ids 0..count own appear owned by the
//! container's ids 0..count, and what the container writes is owned by
//! those host ids on disk. The root's files are never chowned.
//!
//! Creating an idmapped mount takes `CAP_SYS_ADMIN` over the file
//! system's user namespace (the host's), which the container's init no
//! longer has once it is cloned into its own user namespace. So the
//! parent (host root) makes it: `open_tree(OPEN_TREE_CLONE)` of the root
//! (a detached copy), `mount_setattr(MOUNT_ATTR_IDMAP)` with the
//! container's user namespace (its maps already written), and hands the
//! descriptor to the child with the byte that releases it (`SCM_RIGHTS`).
//! The child moves it onto the root path in its own mount namespace
//! (`move_mount`) where it would otherwise bind-mount the root onto
//! itself (see [`crate::child`]).

use crate::error::{Error, Result};
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `AT_RECURSIVE` (Linux 5.12): apply to the whole mount tree.
const AT_RECURSIVE: libc::c_uint = 0x8000;

/// A detached, recursive copy of the mounts at `root`, idmapped to the
/// user namespace of process `pid`. An [`Error::Invalid`] when the file
/// system cannot be idmapped, naming the root and the fix.
pub(crate) fn idmapped_root(root: &Path, pid: i32) -> Result<OwnedFd> {
    let userns = File::open(format!("/proc/{pid}/ns/user")).map_err(|source| Error::Os {
        what: "opening the container's user namespace",
        source,
    })?;
    let path = CString::new(root.as_os_str().as_bytes())
        .map_err(|_| Error::Invalid("the root path contains a NUL byte; remove it".into()))?;
    // SAFETY: open_tree with a NUL-terminated path; the result is checked
    // and becomes an owned descriptor.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | AT_RECURSIVE,
        )
    };
    if tree < 0 {
        return Err(unsupported(root, io::Error::last_os_error()));
    }
    // SAFETY: open_tree returned a new descriptor we own.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as RawFd) };
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        // Not a peer of the host's mounts: what the child mounts below it
        // stays in the container.
        propagation: libc::MS_PRIVATE,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr on our detached tree with an empty path and a
    // mount_attr of the size given; both descriptors are open.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r != 0 {
        return Err(unsupported(root, io::Error::last_os_error()));
    }
    Ok(tree)
}

/// Why `root` cannot be shown idmapped, and what to do about it.
fn unsupported(root: &Path, e: io::Error) -> Error {
    let fs = fs_name(root);
    Error::Invalid(format!(
        "root {} (on {fs}), or a mount below it, cannot be given to a user namespace through \
         an idmapped mount: {e}; \
         put it on a file system that supports idmapped mounts (ext4, xfs, btrfs, and \
         tmpfs since Linux 6.3; an overlay cannot be idmapped itself, only its layers), or \
         shift its files to the container's host ids yourself (then the root directory must \
         be owned by the first host id of the map, and it is used as it is)",
        root.display()
    ))
}

/// The name of the file system `path` is on, for messages.
fn fs_name(path: &Path) -> String {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return "an unknown file system".into();
    };
    // SAFETY: statfs fills a zeroed struct from a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; the result is checked.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return "an unknown file system".into();
    }
    let name = match st.f_type as u64 {
        0xEF53 => "ext4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x0102_1994 => "tmpfs",
        0x794C_7630 => "overlayfs",
        0x6969 => "nfs",
        0x2FC1_2FC1 => "zfs",
        0x6573_5546 => "fuse",
        0x5346_414F => "afs",
        0x0000_9FA0 => "proc",
        0x8584_58F6 => "ramfs",
        other => return format!("file system type {other:#x}"),
    };
    name.into()
}

/// Writes the byte that releases the child, with `fd` attached
/// (`SCM_RIGHTS`) when there is one.
pub(crate) fn release(sock: RawFd, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let byte = [1u8];
    let mut iov = libc::iovec {
        iov_base: byte.as_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    // Room for one descriptor, aligned for cmsghdr.
    let mut control = [0u64; 4];
    // SAFETY: a zeroed msghdr is valid (no buffers).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: CMSG_SPACE/CMSG_LEN are arithmetic; the header is written
        // inside `control`, which CMSG_SPACE(sizeof(int)) (24 bytes) fits.
        unsafe {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd.as_raw_fd());
        }
    }
    // SAFETY: sendmsg with the message built above, whose buffers live
    // until the call returns.
    if unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) } != 1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
