//! A minimal, synchronous rtnetlink client: the link and address requests
//! the runtime (veth pairs into a container's network namespace) and
//! kapseld's switches and interfaces need, and an ioctl to bring a link up
//! inside a freshly cloned container.
//!
//! Hand-written instead of a netlink crate because the handful of messages
//! used here are stable kernel ABI, and the async rtnetlink stack would pull
//! tokio into the privileged daemon for a few requests. Every request asks
//! for an acknowledgement, so a failure comes back as the kernel's errno.

use crate::error::{Error, Result};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_IFALIAS: u16 = 20;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const IFLA_TUN_PERSIST: u16 = 6;
const IFLA_NET_NS_PID: u16 = 19;
const VETH_INFO_PEER: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

/// `IFF_UP` of `ifi_flags`.
pub const IFF_UP: u32 = 0x1;

/// What the kernel says about one link (RTM_NEWLINK reply).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    /// The interface index.
    pub index: u32,
    /// The interface name.
    pub name: String,
    /// `ifi_flags` (IFF_UP, ...).
    pub flags: u32,
    /// The link kind (`bridge`, `tun`, `veth`), when it has one.
    pub kind: Option<String>,
    /// The index of the bridge this link is a port of.
    pub master: Option<u32>,
    /// The interface alias (`ip link set X alias ...`).
    pub alias: Option<String>,
    /// The MAC address, for Ethernet-like links.
    pub mac: Option<[u8; 6]>,
    /// For taps: whether the tap is persistent (outlives its descriptors).
    pub tun_persist: Option<bool>,
}

impl Link {
    /// Whether IFF_UP is set.
    pub fn is_up(&self) -> bool {
        self.flags & IFF_UP != 0
    }
}

/// A NETLINK_ROUTE socket of the calling thread's network namespace.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

/// Appends one attribute, padded to 4 bytes.
fn put_attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

fn put_str(buf: &mut Vec<u8>, kind: u16, s: &str) {
    let mut data = s.as_bytes().to_vec();
    data.push(0);
    put_attr(buf, kind, &data);
}

/// `struct ifinfomsg`: family, type, index, flags, change mask.
fn ifinfomsg(index: u32, flags: u32, change: u32) -> Vec<u8> {
    let mut b = vec![0u8; 4]; // family AF_UNSPEC, pad, type
    b.extend_from_slice(&index.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&change.to_ne_bytes());
    b
}

/// Iterates over the attributes in `buf`; stops at the first malformed one.
fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let len = u16::from_ne_bytes(rest.get(0..2)?.try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(rest.get(2..4)?.try_into().ok()?);
        let data = rest.get(4..len.max(4))?;
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some((kind & NLA_TYPE_MASK, data))
    })
}

fn c_str(data: &[u8]) -> String {
    let end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    String::from_utf8_lossy(&data[..end]).into_owned()
}

fn u32_attr(data: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(data.get(0..4)?.try_into().ok()?))
}

/// Parses the body of an RTM_NEWLINK message (ifinfomsg and attributes).
fn parse_link(body: &[u8]) -> Option<Link> {
    let index = u32_attr(body.get(4..8)?)?;
    let flags = u32_attr(body.get(8..12)?)?;
    let mut link = Link {
        index,
        flags,
        ..Link::default()
    };
    for (kind, data) in attrs(body.get(16..)?) {
        match kind {
            IFLA_IFNAME => link.name = c_str(data),
            IFLA_MASTER => link.master = u32_attr(data).filter(|m| *m != 0),
            IFLA_IFALIAS => link.alias = Some(c_str(data)),
            IFLA_ADDRESS => link.mac = data.try_into().ok(),
            IFLA_LINKINFO => {
                for (k, d) in attrs(data) {
                    match k {
                        IFLA_INFO_KIND => link.kind = Some(c_str(d)),
                        IFLA_INFO_DATA => {
                            link.tun_persist = attrs(d)
                                .find(|(k, _)| *k == IFLA_TUN_PERSIST)
                                .and_then(|(_, v)| v.first())
                                .map(|v| *v != 0);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(link)
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Netlink> {
        // SAFETY: plain socket(2) call; the result is checked below.
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
        // SAFETY: `fd` was just returned by socket(2) and is owned by no one else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: `addr` is a valid sockaddr_nl and the length matches it.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Netlink { fd, seq: 0 })
    }

    /// Sends one request and collects the replies up to the kernel's
    /// acknowledgement (or error, returned as an `io::Error` with its errno).
    fn request(&mut self, kind: u16, flags: u16, body: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let len = NLMSG_HDRLEN + body.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        // SAFETY: sending from a valid buffer of the given length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut replies = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: receiving into a valid, writable buffer of the given length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= NLMSG_HDRLEN {
                let mlen = u32::from_ne_bytes(rest[0..4].try_into().unwrap_or_default()) as usize;
                let mtype = u16::from_ne_bytes(rest[4..6].try_into().unwrap_or_default());
                let mseq = u32::from_ne_bytes(rest[8..12].try_into().unwrap_or_default());
                if mlen < NLMSG_HDRLEN || mlen > rest.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "truncated netlink reply",
                    ));
                }
                let body = &rest[NLMSG_HDRLEN..mlen];
                rest = rest.get(mlen.next_multiple_of(4)..).unwrap_or(&[]);
                if mseq != seq {
                    continue; // a late reply to an earlier request
                }
                match mtype {
                    NLMSG_ERROR => {
                        let errno = body
                            .get(0..4)
                            .map(|b| i32::from_ne_bytes(b.try_into().unwrap_or_default()))
                            .unwrap_or(-libc::EPROTO);
                        return if errno == 0 {
                            Ok(replies)
                        } else {
                            Err(io::Error::from_raw_os_error(-errno))
                        };
                    }
                    NLMSG_DONE => return Ok(replies),
                    _ => replies.push(body.to_vec()),
                }
            }
        }
    }

    /// The link called `name`, or `None` when there is none.
    pub fn link(&mut self, name: &str) -> io::Result<Option<Link>> {
        let mut body = ifinfomsg(0, 0, 0);
        put_str(&mut body, IFLA_IFNAME, name);
        match self.request(RTM_GETLINK, 0, &body) {
            Ok(replies) => Ok(replies.iter().find_map(|r| parse_link(r))),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The link with index `index`, or `None` when there is none.
    pub fn link_by_index(&mut self, index: u32) -> io::Result<Option<Link>> {
        let body = ifinfomsg(index, 0, 0);
        match self.request(RTM_GETLINK, 0, &body) {
            Ok(replies) => Ok(replies.iter().find_map(|r| parse_link(r))),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a link of `kind` (e.g. `bridge`); fails with EEXIST if the name is taken.
    pub fn create_link(&mut self, name: &str, kind: &str) -> io::Result<()> {
        let mut body = ifinfomsg(0, 0, 0);
        put_str(&mut body, IFLA_IFNAME, name);
        let mut info = Vec::new();
        put_str(&mut info, IFLA_INFO_KIND, kind);
        put_attr(&mut body, IFLA_LINKINFO | NLA_F_NESTED, &info);
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &body)
            .map(drop)
    }

    /// Deletes the link `index`.
    pub fn delete_link(&mut self, index: u32) -> io::Result<()> {
        self.request(RTM_DELLINK, 0, &ifinfomsg(index, 0, 0))
            .map(drop)
    }

    /// Brings the link up or down.
    pub fn set_up(&mut self, index: u32, up: bool) -> io::Result<()> {
        let body = ifinfomsg(index, if up { IFF_UP } else { 0 }, IFF_UP);
        self.request(RTM_NEWLINK, 0, &body).map(drop)
    }

    /// Makes the link a port of bridge `master`, or of no bridge (`None`).
    pub fn set_master(&mut self, index: u32, master: Option<u32>) -> io::Result<()> {
        let mut body = ifinfomsg(index, 0, 0);
        put_attr(&mut body, IFLA_MASTER, &master.unwrap_or(0).to_ne_bytes());
        self.request(RTM_NEWLINK, 0, &body).map(drop)
    }

    /// Sets the interface alias, which marks links Kapsel created.
    pub fn set_alias(&mut self, index: u32, alias: &str) -> io::Result<()> {
        let mut body = ifinfomsg(index, 0, 0);
        put_attr(&mut body, IFLA_IFALIAS, alias.as_bytes());
        self.request(RTM_NEWLINK, 0, &body).map(drop)
    }

    /// Sets the link's MAC address.
    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> io::Result<()> {
        let mut body = ifinfomsg(index, 0, 0);
        put_attr(&mut body, IFLA_ADDRESS, &mac);
        self.request(RTM_NEWLINK, 0, &body).map(drop)
    }

    /// Creates a veth pair: `host_name` up here, and its peer `peer_name`
    /// (down, with `mac` if given) in the network namespace of process
    /// `pid`.
    pub fn create_veth(
        &mut self,
        host_name: &str,
        peer_name: &str,
        pid: i32,
        mac: Option<[u8; 6]>,
    ) -> io::Result<()> {
        let body = veth_body(host_name, peer_name, pid, mac);
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &body)
            .map(drop)
    }

    /// Adds (or replaces) an IPv4 address on the link.
    pub fn add_ipv4(
        &mut self,
        index: u32,
        addr: std::net::Ipv4Addr,
        prefix_len: u8,
    ) -> io::Result<()> {
        let mut body = vec![libc::AF_INET as u8, prefix_len, 0, 0];
        body.extend_from_slice(&index.to_ne_bytes());
        put_attr(&mut body, IFA_LOCAL, &addr.octets());
        put_attr(&mut body, IFA_ADDRESS, &addr.octets());
        self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, &body)
            .map(drop)
    }
}

/// The RTM_NEWLINK body of [`Netlink::create_veth`].
fn veth_body(host_name: &str, peer_name: &str, pid: i32, mac: Option<[u8; 6]>) -> Vec<u8> {
    let mut peer = ifinfomsg(0, 0, 0);
    // Not up here: the kernel opens the peer before the pair is joined and
    // refuses (ENOTCONN); the container brings eth0 up itself.
    put_str(&mut peer, IFLA_IFNAME, peer_name);
    put_attr(&mut peer, IFLA_NET_NS_PID, &(pid as u32).to_ne_bytes());
    if let Some(mac) = mac {
        put_attr(&mut peer, IFLA_ADDRESS, &mac);
    }
    let mut data = Vec::new();
    put_attr(&mut data, VETH_INFO_PEER | NLA_F_NESTED, &peer);
    let mut info = Vec::new();
    put_str(&mut info, IFLA_INFO_KIND, "veth");
    put_attr(&mut info, IFLA_INFO_DATA | NLA_F_NESTED, &data);
    let mut body = ifinfomsg(0, IFF_UP, IFF_UP);
    put_str(&mut body, IFLA_IFNAME, host_name);
    put_attr(&mut body, IFLA_LINKINFO | NLA_F_NESTED, &info);
    body
}

/// Creates a veth pair: `host_name` up on the host, and its peer `eth0`
/// (down, with `mac` if given) in the network namespace of process `pid`.
pub fn create_veth(host_name: &str, pid: i32, mac: Option<[u8; 6]>) -> Result<()> {
    Netlink::open()
        .and_then(|mut nl| nl.create_veth(host_name, "eth0", pid, mac))
        .map_err(|source| Error::Network {
            what: format!("creating veth {host_name}"),
            source,
        })
}

/// Deletes link `name`; a link that is already gone is not an error.
pub fn delete_link(name: &str) -> Result<()> {
    let result = Netlink::open().and_then(|mut nl| match nl.link(name)? {
        Some(link) => nl.delete_link(link.index),
        None => Ok(()),
    });
    match result {
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
    fn attributes_round_trip_and_malformed_ones_stop_the_walk() {
        let mut buf = Vec::new();
        put_str(&mut buf, IFLA_IFNAME, "kbr-x");
        put_attr(&mut buf, IFLA_MASTER, &7u32.to_ne_bytes());
        let got: Vec<_> = attrs(&buf).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(c_str(got[0].1), "kbr-x");
        assert_eq!(u32_attr(got[1].1), Some(7));
        // A length running past the buffer ends the walk instead of panicking.
        let mut bad = buf.clone();
        bad[0] = 200;
        assert_eq!(attrs(&bad).count(), 0);
        assert_eq!(attrs(&[1, 0]).count(), 0);
    }

    #[test]
    fn a_veth_request_nests_the_peer() {
        let b = veth_body("kct1-0", "eth0", 42, Some([2, 0, 0, 0, 0, 1]));
        assert!(b.len().is_multiple_of(4));
        let top: Vec<_> = attrs(&b[16..]).collect();
        assert_eq!(c_str(top[0].1), "kct1-0");
        assert_eq!(top[1].0, IFLA_LINKINFO);
        let info: Vec<_> = attrs(top[1].1).collect();
        assert_eq!(c_str(info[0].1), "veth");
        let data: Vec<_> = attrs(info[1].1).collect();
        assert_eq!(data[0].0, VETH_INFO_PEER);
        let peer = &data[0].1[16..];
        let p: Vec<_> = attrs(peer).collect();
        assert_eq!(c_str(p[0].1), "eth0");
        assert_eq!(u32_attr(p[1].1), Some(42));
        assert_eq!(p[2].1, &[2, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn a_link_message_is_parsed() {
        let mut body = ifinfomsg(5, IFF_UP, 0);
        put_str(&mut body, IFLA_IFNAME, "ktap1-0");
        put_attr(&mut body, IFLA_MASTER, &3u32.to_ne_bytes());
        let mut info = Vec::new();
        put_str(&mut info, IFLA_INFO_KIND, "tun");
        let mut data = Vec::new();
        put_attr(&mut data, IFLA_TUN_PERSIST, &[1]);
        put_attr(&mut info, IFLA_INFO_DATA | NLA_F_NESTED, &data);
        put_attr(&mut body, IFLA_LINKINFO | NLA_F_NESTED, &info);
        let link = parse_link(&body).unwrap();
        assert_eq!(link.tun_persist, Some(true));
        assert_eq!(link.index, 5);
        assert_eq!(link.name, "ktap1-0");
        assert_eq!(link.master, Some(3));
        assert_eq!(link.kind.as_deref(), Some("tun"));
        assert!(link.is_up());
        assert!(parse_link(&body[..10]).is_none());
    }
}
