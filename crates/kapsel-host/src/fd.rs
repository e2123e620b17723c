//! Pipes and eventfds as owned, close-on-exec descriptors, and messages
//! that carry descriptors over Unix sockets (`SCM_RIGHTS`).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The most descriptors one message carries ([`send_with_fds`]).
pub const MAX_SEND_FDS: usize = 16;
/// The most descriptors a message is received with ([`recv_with_fds`];
/// more are reported, and closed by the kernel).
pub const MAX_FDS: usize = 4;

/// Sends `bytes` on the Unix socket `sock` with `fds` attached as one
/// `SCM_RIGHTS` message (none when empty), retrying on EINTR. `flags` are
/// sendmsg's (`MSG_NOSIGNAL` is always added). Returns how many bytes
/// went (a stream socket may take fewer; the descriptors went with the
/// first byte).
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    flags: libc::c_int,
) -> io::Result<usize> {
    if fds.len() > MAX_SEND_FDS {
        return Err(io::Error::other(format!(
            "{} descriptors in one message, at most {MAX_SEND_FDS}",
            fds.len()
        )));
    }
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // Room for MAX_SEND_FDS descriptors, aligned for cmsghdr.
    let mut cbuf = [0u64; 16];
    // SAFETY: msghdr is plain old data; every field used is set below.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    if !fds.is_empty() {
        let data_len = (fds.len() * std::mem::size_of::<RawFd>()) as u32;
        // SAFETY: CMSG_SPACE is a pure size computation.
        let space = unsafe { libc::CMSG_SPACE(data_len) } as usize;
        hdr.msg_control = cbuf.as_mut_ptr().cast();
        hdr.msg_controllen = space.min(std::mem::size_of_val(&cbuf));
        // SAFETY: the control buffer is aligned and holds CMSG_SPACE of
        // MAX_SEND_FDS descriptors (80 of its 128 bytes); CMSG_FIRSTHDR of it is
        // non-null and in bounds, and the data written is fds.len()
        // descriptors, as CMSG_LEN says.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&hdr);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(data_len) as _;
            let data = libc::CMSG_DATA(c).cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                std::ptr::write_unaligned(data.add(i), fd.as_raw_fd());
            }
        }
    }
    loop {
        // SAFETY: hdr points at live buffers for the call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &hdr, flags | libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One message received by [`recv_with_fds`].
#[derive(Debug)]
pub struct Received {
    /// How many bytes were read into the buffer.
    pub len: usize,
    /// The descriptors that came with them (close-on-exec, owned).
    pub fds: Vec<OwnedFd>,
    /// The message was longer than the buffer (datagram sockets).
    pub truncated: bool,
    /// It carried more descriptors than [`MAX_FDS`] (the rest are closed
    /// by the kernel).
    pub too_many_fds: bool,
}

/// Receives one message from the Unix socket `sock` into `buf` with the
/// descriptors sent along (owned at once, so closed on any error),
/// retrying on EINTR. `flags` are recvmsg's (`MSG_CMSG_CLOEXEC` is always
/// added).
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: libc::c_int,
) -> io::Result<Received> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = [0u64; 8];
    // SAFETY: CMSG_SPACE is a pure size computation.
    let room = unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) };
    // SAFETY: msghdr is plain old data; every field used is set below.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = cbuf.as_mut_ptr().cast();
    hdr.msg_controllen = (room as usize).min(std::mem::size_of_val(&cbuf));
    let n = loop {
        // SAFETY: hdr points at live buffers of the sizes given.
        let n =
            unsafe { libc::recvmsg(sock.as_raw_fd(), &mut hdr, flags | libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg_control up to msg_controllen; the
    // CMSG_* walk stays inside it, and each SCM_RIGHTS payload holds
    // (cmsg_len - CMSG_LEN(0)) / 4 descriptors now owned by this process.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            c = libc::CMSG_NXTHDR(&hdr, c);
        }
    }
    Ok(Received {
        len: n,
        fds,
        truncated: hdr.msg_flags & libc::MSG_TRUNC != 0,
        too_many_fds: hdr.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

/// A pipe: (read end, write end), both close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two new descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A `pollfd` that waits for `fd` to be readable (`POLLIN`).
pub fn pollin(fd: std::os::fd::RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// An eventfd: a counter that one thread adds to ([`EventFd::signal`]) to
/// wake another polling it. Close-on-exec; non-blocking if asked.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    /// A new eventfd with a zero counter.
    pub fn new(nonblocking: bool) -> io::Result<EventFd> {
        let flags = libc::EFD_CLOEXEC | if nonblocking { libc::EFD_NONBLOCK } else { 0 };
        // SAFETY: eventfd takes no pointers; the result is checked.
        let fd = unsafe { libc::eventfd(0, flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor that nothing else owns.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Adds one to the counter. A full counter (EAGAIN) already means
    /// "wake up", so the result is not looked at.
    pub fn signal(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a valid buffer.
        unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    /// Resets the counter (returns at once when non-blocking and zero).
    pub fn clear(&self) {
        let mut count = [0u8; 8];
        // SAFETY: reads 8 bytes into a valid buffer.
        unsafe { libc::read(self.0.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) };
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

impl std::os::fd::AsFd for EventFd {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_pipe_carries_bytes_and_closes_on_exec() {
        let (r, w) = pipe().unwrap();
        for fd in [&r, &w] {
            // SAFETY: F_GETFD only reads the descriptor's flags.
            let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
            assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        }
        std::fs::File::from(w).write_all(b"hi").unwrap();
        let mut got = String::new();
        std::fs::File::from(r).read_to_string(&mut got).unwrap();
        assert_eq!(got, "hi");
    }

    #[test]
    fn an_eventfd_wakes_a_poller_until_cleared() {
        let e = EventFd::new(true).unwrap();
        let readable = |e: &EventFd| {
            let mut p = libc::pollfd {
                fd: e.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, no waiting.
            unsafe { libc::poll(&mut p, 1, 0) == 1 }
        };
        assert!(!readable(&e));
        e.signal();
        e.signal();
        assert!(readable(&e));
        e.clear();
        assert!(!readable(&e));
        e.clear(); // non-blocking: returns at once
    }

    #[test]
    fn descriptors_travel_with_a_message_and_too_many_are_refused() {
        use std::os::fd::AsFd;
        use std::os::unix::net::UnixDatagram;
        let (a, b) = UnixDatagram::pair().unwrap();
        let (r, w) = pipe().unwrap();
        let sent = send_with_fds(a.as_fd(), b"hello", &[w.as_fd(), r.as_fd()], 0).unwrap();
        assert_eq!(sent, 5);
        drop((r, w));
        let mut buf = [0u8; 3];
        let got = recv_with_fds(b.as_fd(), &mut buf, 0).unwrap();
        assert_eq!((got.len, &buf[..], got.truncated), (3, &b"hel"[..], true));
        let [w2, r2]: [OwnedFd; 2] = got.fds.try_into().unwrap();
        for fd in [&r2, &w2] {
            // SAFETY: F_GETFD only reads the descriptor's flags.
            let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
            assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        }
        // The pipe survived its senders' copies: the received ends work.
        std::fs::File::from(w2).write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        std::fs::File::from(r2).read_exact(&mut one).unwrap();
        assert_eq!(&one, b"x");
        let (r, _w) = pipe().unwrap();
        let many = [r.as_fd(); MAX_SEND_FDS + 1];
        assert!(send_with_fds(a.as_fd(), b"x", &many, 0).is_err());
        // More than a receiver takes: it is told, and gets MAX_FDS.
        send_with_fds(a.as_fd(), b"y", &many[..MAX_FDS + 1], 0).unwrap();
        let got = recv_with_fds(b.as_fd(), &mut buf, 0).unwrap();
        assert!(got.too_many_fds);
        assert!(got.fds.len() <= MAX_FDS);
    }
}
