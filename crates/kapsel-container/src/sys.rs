//! Small system-call helpers shared by the start and exec paths.

use crate::error::{Error, Result};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// The parent's and the child's ends of a pipe.
pub(crate) fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    kapsel_host::fd::pipe().map_err(|source| Error::Os {
        what: "creating a pipe",
        source,
    })
}

/// A connected pair of Unix stream sockets: the parent's byte that
/// releases the child can carry a descriptor (the idmapped root).
pub(crate) fn socket_pair() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into `fds`.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(Error::last_os("creating a socket pair"));
    }
    // SAFETY: both descriptors are new and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `bytes` as a C string; a NUL byte inside is a user error.
pub(crate) fn cstring(bytes: &[u8]) -> Result<CString> {
    CString::new(bytes)
        .map_err(|_| Error::Invalid("a path or argument contains a NUL byte; remove it".into()))
}

/// Reads until `buf` is full or the other end is closed; returns the bytes read.
pub(crate) fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reads into the unfilled tail of `buf`.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                buf[got..].as_mut_ptr().cast(),
                buf.len() - got,
            )
        };
        if n > 0 {
            got += n as usize;
        } else if n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
    got
}

/// Receives one byte with a descriptor (SCM_RIGHTS) on `sock`; `None` at
/// end of file or without a descriptor.
pub(crate) fn recv_fd(sock: &OwnedFd) -> Option<OwnedFd> {
    let mut byte = [0u8; 1];
    let got = kapsel_host::fd::recv_with_fds(sock.as_fd(), &mut byte, 0).ok()?;
    if got.len != 1 {
        return None;
    }
    got.fds.into_iter().next()
}
