//! The few rtnetlink requests the runtime needs, written out by hand:
//! create a veth pair with one end in the container's network namespace,
//! delete a link, bring a link up. No helper program runs and no netlink
//! crate is pulled in for three messages.

use crate::error::{Error, Result};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_PID: u16 = 19;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;

/// A netlink message under construction: header, `ifinfomsg`, attributes.
struct Message {
    buf: Vec<u8>,
    /// Offsets of nested attributes still open.
    open: Vec<usize>,
}

impl Message {
    fn new(kind: u16, flags: u16) -> Message {
        let mut m = Message {
            buf: Vec::with_capacity(256),
            open: Vec::new(),
        };
        m.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish
        m.buf.extend_from_slice(&kind.to_ne_bytes());
        m.buf
            .extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        m.buf.extend_from_slice(&1u32.to_ne_bytes()); // sequence
        m.buf.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel fills it
        m
    }

    /// An `ifinfomsg` with IFF_UP set (and changed) when `up`.
    fn ifinfo(&mut self, up: bool) {
        let flags = if up { libc::IFF_UP as u32 } else { 0 };
        self.buf.push(libc::AF_UNSPEC as u8);
        self.buf.push(0);
        self.buf.extend_from_slice(&0u16.to_ne_bytes()); // type
        self.buf.extend_from_slice(&0i32.to_ne_bytes()); // index
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes()); // change mask
    }

    fn attr(&mut self, kind: u16, data: &[u8]) {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn name(&mut self, kind: u16, name: &str) {
        let mut data = name.as_bytes().to_vec();
        data.push(0);
        self.attr(kind, &data);
    }

    fn begin(&mut self, kind: u16) {
        self.open.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    }

    fn end(&mut self) {
        if let Some(start) = self.open.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// Sends one request on a fresh NETLINK_ROUTE socket and returns the
/// kernel's answer (0 or an errno).
fn request(msg: Vec<u8>) -> io::Result<()> {
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor we just opened and own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_nl is plain data; all zeroes is "the kernel".
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: `msg` and `addr` are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut reply = [0u8; 4096];
    loop {
        // SAFETY: `reply` is writable for its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let n = n as usize;
        let mut off = 0;
        while off + NLMSG_HDRLEN <= n {
            let len = u32::from_ne_bytes(reply[off..off + 4].try_into().unwrap_or([0; 4])) as usize;
            let kind = u16::from_ne_bytes([reply[off + 4], reply[off + 5]]);
            if len < NLMSG_HDRLEN || off + len > n {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "bad netlink reply",
                ));
            }
            if kind == NLMSG_ERROR && len >= NLMSG_HDRLEN + 4 {
                let code = i32::from_ne_bytes(
                    reply[off + NLMSG_HDRLEN..off + NLMSG_HDRLEN + 4]
                        .try_into()
                        .unwrap_or([0; 4]),
                );
                return if code == 0 {
                    Ok(())
                } else {
                    Err(io::Error::from_raw_os_error(-code))
                };
            }
            off += (len + 3) & !3;
        }
    }
}

/// Creates a veth pair: `host_name` up on the host, and its peer `eth0`
/// (down, with `mac` if given) in the network namespace of process `pid`.
pub fn create_veth(host_name: &str, pid: i32, mac: Option<[u8; 6]>) -> Result<()> {
    let mut m = Message::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
    m.ifinfo(true);
    m.name(IFLA_IFNAME, host_name);
    m.begin(IFLA_LINKINFO);
    m.name(IFLA_INFO_KIND, "veth");
    m.begin(IFLA_INFO_DATA);
    m.begin(VETH_INFO_PEER);
    // Not up here: the kernel opens the peer before the pair is joined and
    // refuses (ENOTCONN); the container brings eth0 up itself.
    m.ifinfo(false);
    m.name(IFLA_IFNAME, "eth0");
    m.attr(IFLA_NET_NS_PID, &(pid as u32).to_ne_bytes());
    if let Some(mac) = mac {
        m.attr(IFLA_ADDRESS, &mac);
    }
    m.end();
    m.end();
    m.end();
    debug_assert!(m.buf.len().is_multiple_of(4));
    debug_assert!(m.buf.len() > NLMSG_HDRLEN + IFINFOMSG_LEN);
    request(m.finish()).map_err(|source| Error::Network {
        what: format!("creating veth {host_name}"),
        source,
    })
}

/// Deletes link `name`; a link that is already gone is not an error.
pub fn delete_link(name: &str) -> Result<()> {
    let mut m = Message::new(RTM_DELLINK, 0);
    m.ifinfo(false);
    m.name(IFLA_IFNAME, name);
    match request(m.finish()) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
        Err(source) => Err(Error::Network {
            what: format!("deleting {name}"),
            source,
        }),
    }
}

/// Brings interface `name` (NUL-terminated, at most 15 bytes before the
/// NUL) of the calling process's network namespace up, with an ioctl (no
/// allocation: safe after `clone`).
pub(crate) fn link_up(name: &[u8]) -> std::result::Result<(), i32> {
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, &b) in req
        .ifr_name
        .iter_mut()
        .zip(name.iter().take(libc::IFNAMSIZ - 1))
    {
        *d = b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS read and write an ifreq, which `req` is.
    let r = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req as *mut libc::ifreq) < 0 {
            -1
        } else {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &req as *const libc::ifreq)
        }
    };
    let e = errno();
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    if r < 0 {
        Err(e)
    } else {
        Ok(())
    }
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_message_layout() {
        let mut m = Message::new(RTM_NEWLINK, NLM_F_CREATE);
        m.ifinfo(true);
        m.name(IFLA_IFNAME, "kv0");
        m.begin(IFLA_LINKINFO);
        m.name(IFLA_INFO_KIND, "veth");
        m.end();
        let b = m.finish();
        assert_eq!(
            u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize,
            b.len()
        );
        // ifname attribute: len 4 + "kv0\0" = 8, type 3.
        assert_eq!(&b[32..36], &[8, 0, 3, 0]);
        assert_eq!(&b[36..40], b"kv0\0");
        // linkinfo: nested, length covers the kind attribute (4 + 5 -> padded 12).
        assert_eq!(u16::from_ne_bytes([b[40], b[41]]), 4 + 12);
        assert_eq!(
            u16::from_ne_bytes([b[42], b[43]]),
            IFLA_LINKINFO | NLA_F_NESTED
        );
        assert!(b.len().is_multiple_of(4));
    }
}
