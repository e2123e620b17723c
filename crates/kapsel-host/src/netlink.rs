//! The rtnetlink requests Kapsel makes, on the synchronous `netlink-sys`
//! socket with messages from `netlink-packet-route`: links (create, delete,
//! up and down, bridge ports, alias, MAC, MTU, network namespace), veth
//! pairs with their peer in a container's namespace, IPv4 addresses, and
//! the lookups the switch reconciliation uses (a link by name or index, the
//! ports of a bridge).
//!
//! Every request asks for an acknowledgement, so a failure comes back as
//! the kernel's errno in an `io::Error`; callers add the interface and the
//! fix. A socket acts on the network namespace of the thread that opened
//! it. No request here takes any lock of the caller's: kapseld makes them
//! outside its state lock.
//!
//! [`link_up`] is the exception: an ioctl with no allocation, for a child
//! between `clone` and `execve`.

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::io;
use std::net::{IpAddr, Ipv4Addr};

/// `IFF_UP` of a link's flags.
pub const IFF_UP: u32 = libc::IFF_UP as u32;
/// `IFLA_TUN_PERSIST` inside a tun link's `IFLA_INFO_DATA`.
const IFLA_TUN_PERSIST: u16 = 6;
/// The largest reply datagram read at once (as `iproute2`'s 32 KiB, twice).
const RECV_BUF: usize = 64 * 1024;

/// What the kernel says about one link.
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
    /// The MTU.
    pub mtu: Option<u32>,
    /// For taps: whether the tap is persistent (outlives its descriptors).
    pub tun_persist: Option<bool>,
}

impl Link {
    /// Whether IFF_UP is set.
    pub fn is_up(&self) -> bool {
        self.flags & IFF_UP != 0
    }

    fn from_message(msg: &LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            flags: msg.header.flags.bits(),
            ..Link::default()
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Controller(m) => link.master = Some(*m).filter(|m| *m != 0),
                LinkAttribute::IfAlias(a) => link.alias = Some(a.clone()),
                LinkAttribute::Address(a) => link.mac = a.as_slice().try_into().ok(),
                LinkAttribute::Mtu(m) => link.mtu = Some(*m),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                            LinkInfo::Data(InfoData::Tun(tun)) => {
                                link.tun_persist =
                                    tun.iter().find_map(tun_persist).or(link.tun_persist);
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

fn tun_persist(nla: &netlink_packet_route::link::InfoTun) -> Option<bool> {
    use netlink_packet_core::Nla;
    if nla.kind() != IFLA_TUN_PERSIST {
        return None;
    }
    let mut value = vec![0u8; nla.value_len()];
    nla.emit_value(&mut value);
    value.first().map(|v| *v != 0)
}

/// Asks the kernel to leave the statistics out of link replies: nothing
/// here reads them (they are most of a reply's bytes).
fn skip_stats() -> LinkAttribute {
    LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats])
}

/// A link message addressed to `index` (0: by name or new).
fn link_message(index: u32) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg
}

/// A NETLINK_ROUTE socket of the calling thread's network namespace.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink {
            socket,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    /// Sends one request and collects the replies up to the kernel's
    /// acknowledgement, the end of a dump, or an error (returned as an
    /// `io::Error` with the kernel's errno).
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = flags | NLM_F_REQUEST | NLM_F_ACK;
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket.send(&out, 0)?;
        let mut replies = Vec::new();
        loop {
            let n = match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => n.min(self.buf.len()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let mut rest = &self.buf[..n];
            while rest.len() >= 16 {
                let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                if len < 16 || len > rest.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "truncated netlink reply",
                    ));
                }
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rest[..len]);
                rest = rest.get(len.next_multiple_of(4)..).unwrap_or(&[]);
                let reply = reply.map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("undecodable netlink reply: {e}"),
                    )
                })?;
                if reply.header.sequence_number != seq {
                    continue; // a late reply to an earlier request
                }
                match reply.payload {
                    NetlinkPayload::Error(e) if e.code.is_none() => return Ok(replies),
                    NetlinkPayload::Error(e) => return Err(e.to_io()),
                    NetlinkPayload::Done(d) if d.code < 0 => {
                        return Err(io::Error::from_raw_os_error(-d.code))
                    }
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(m) => replies.push(m),
                    NetlinkPayload::Noop | NetlinkPayload::Overrun(_) => {}
                    _ => {}
                }
            }
        }
    }

    /// A request that changes something and expects only the ACK.
    fn change(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.request(msg, flags).map(drop)
    }

    fn get_link(&mut self, mut msg: LinkMessage) -> io::Result<Option<Link>> {
        msg.attributes.push(skip_stats());
        match self.request(RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(replies) => Ok(replies.iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The link called `name`, or `None` when there is none.
    pub fn link(&mut self, name: &str) -> io::Result<Option<Link>> {
        let mut msg = link_message(0);
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(msg)
    }

    /// The link with index `index`, or `None` when there is none.
    pub fn link_by_index(&mut self, index: u32) -> io::Result<Option<Link>> {
        self.get_link(link_message(index))
    }

    /// The ports of bridge `master` (the kernel filters the dump by
    /// `IFLA_MASTER`, so links elsewhere on the host are never parsed).
    pub fn ports(&mut self, master: u32) -> io::Result<Vec<Link>> {
        let mut msg = link_message(0);
        msg.attributes.push(LinkAttribute::Controller(master));
        msg.attributes.push(skip_stats());
        let replies = self.request(RouteNetlinkMessage::GetLink(msg), NLM_F_DUMP)?;
        Ok(replies
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            // Older kernels ignore the filter: check it here too.
            .filter(|l| l.master == Some(master))
            .collect())
    }

    /// Creates a link of `kind` (e.g. `bridge`, `dummy`); fails with EEXIST
    /// if the name is taken.
    pub fn create_link(&mut self, name: &str, kind: &str) -> io::Result<()> {
        let mut msg = link_message(0);
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::from(kind),
            )]));
        self.change(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Deletes the link `index`.
    pub fn delete_link(&mut self, index: u32) -> io::Result<()> {
        self.change(RouteNetlinkMessage::DelLink(link_message(index)), 0)
    }

    /// Brings the link up or down.
    pub fn set_up(&mut self, index: u32, up: bool) -> io::Result<()> {
        let mut msg = link_message(index);
        msg.header.flags = if up {
            LinkFlags::Up
        } else {
            LinkFlags::empty()
        };
        msg.header.change_mask = LinkFlags::Up;
        self.change(RouteNetlinkMessage::NewLink(msg), 0)
    }

    /// A change to one attribute of link `index`.
    fn set_attr(&mut self, index: u32, attr: LinkAttribute) -> io::Result<()> {
        let mut msg = link_message(index);
        msg.attributes.push(attr);
        self.change(RouteNetlinkMessage::NewLink(msg), 0)
    }

    /// Makes the link a port of bridge `master`, or of no bridge (`None`).
    pub fn set_master(&mut self, index: u32, master: Option<u32>) -> io::Result<()> {
        self.set_attr(index, LinkAttribute::Controller(master.unwrap_or(0)))
    }

    /// Sets the interface alias, which marks links Kapsel created.
    pub fn set_alias(&mut self, index: u32, alias: &str) -> io::Result<()> {
        self.set_attr(index, LinkAttribute::IfAlias(alias.to_string()))
    }

    /// Sets the link's MAC address.
    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> io::Result<()> {
        self.set_attr(index, LinkAttribute::Address(mac.to_vec()))
    }

    /// Sets the link's MTU.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> io::Result<()> {
        self.set_attr(index, LinkAttribute::Mtu(mtu))
    }

    /// Moves the link into the network namespace of process `pid`.
    pub fn move_to_netns(&mut self, index: u32, pid: u32) -> io::Result<()> {
        self.set_attr(index, LinkAttribute::NetNsPid(pid))
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
        self.change(
            RouteNetlinkMessage::NewLink(veth_message(host_name, peer_name, pid, mac)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Adds (or replaces) an IPv4 address on the link.
    pub fn add_ipv4(&mut self, index: u32, addr: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix_len;
        msg.header.index = index;
        msg.attributes
            .push(AddressAttribute::Local(IpAddr::V4(addr)));
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V4(addr)));
        self.change(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// The IPv4 addresses of link `index`, with their prefix lengths.
    pub fn ipv4_addresses(&mut self, index: u32) -> io::Result<Vec<(Ipv4Addr, u8)>> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.index = index;
        let replies = self.request(RouteNetlinkMessage::GetAddress(msg), NLM_F_DUMP)?;
        Ok(replies
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    a.attributes.iter().find_map(|attr| match attr {
                        AddressAttribute::Local(IpAddr::V4(ip)) => Some((*ip, a.header.prefix_len)),
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }
}

/// The RTM_NEWLINK message of [`Netlink::create_veth`].
fn veth_message(host_name: &str, peer_name: &str, pid: i32, mac: Option<[u8; 6]>) -> LinkMessage {
    // Not up there: the kernel opens the peer before the pair is joined and
    // refuses (ENOTCONN); the container brings eth0 up itself.
    let mut peer = link_message(0);
    peer.attributes
        .push(LinkAttribute::IfName(peer_name.to_string()));
    peer.attributes.push(LinkAttribute::NetNsPid(pid as u32));
    if let Some(mac) = mac {
        peer.attributes.push(LinkAttribute::Address(mac.to_vec()));
    }
    let mut msg = link_message(0);
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    msg.attributes
        .push(LinkAttribute::IfName(host_name.to_string()));
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
    ]));
    msg
}

/// Brings interface `name` (NUL-terminated, at most 15 bytes before the
/// NUL) of the calling process's network namespace up, with an ioctl (no
/// allocation: safe after `clone`). The error is the errno.
pub fn link_up(name: &[u8]) -> Result<(), i32> {
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(crate::errno());
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
    let e = crate::errno();
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    if r < 0 {
        Err(e)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{Emitable, Parseable};

    fn round_trip(msg: &LinkMessage) -> LinkMessage {
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.emit(&mut buf);
        LinkMessage::parse(&buf[..]).unwrap()
    }

    #[test]
    fn a_veth_request_nests_the_peer_in_its_namespace() {
        let msg = round_trip(&veth_message(
            "kct1-0",
            "eth0",
            42,
            Some([2, 0, 0, 0, 0, 1]),
        ));
        let host = Link::from_message(&msg);
        assert_eq!(host.name, "kct1-0");
        assert_eq!(host.kind.as_deref(), Some("veth"));
        assert!(host.is_up());
        let peer = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::LinkInfo(i) => i.iter().find_map(|i| match i {
                    LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))) => Some(p.clone()),
                    _ => None,
                }),
                _ => None,
            })
            .unwrap();
        assert!(peer.attributes.contains(&LinkAttribute::NetNsPid(42)));
        let peer = Link::from_message(&peer);
        assert_eq!(peer.name, "eth0");
        assert_eq!(peer.mac, Some([2, 0, 0, 0, 0, 1]));
        assert!(!peer.is_up());
    }

    #[test]
    fn a_link_message_is_read() {
        use netlink_packet_core::DefaultNla;
        use netlink_packet_route::link::InfoTun;
        let mut msg = link_message(5);
        msg.header.flags = LinkFlags::Up;
        msg.attributes.push(LinkAttribute::IfName("ktap1-0".into()));
        msg.attributes.push(LinkAttribute::Controller(3));
        msg.attributes.push(LinkAttribute::Mtu(1500));
        msg.attributes
            .push(LinkAttribute::IfAlias("kapsel switch x".into()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Tun),
            LinkInfo::Data(InfoData::Tun(vec![InfoTun::Other(DefaultNla::new(
                IFLA_TUN_PERSIST,
                vec![1],
            ))])),
        ]));
        let link = Link::from_message(&round_trip(&msg));
        assert_eq!(link.index, 5);
        assert_eq!(link.name, "ktap1-0");
        assert_eq!(link.master, Some(3));
        assert_eq!(link.mtu, Some(1500));
        assert_eq!(link.alias.as_deref(), Some("kapsel switch x"));
        assert_eq!(link.kind.as_deref(), Some("tun"));
        assert_eq!(link.tun_persist, Some(true));
        assert!(link.is_up());
        // Master 0 is "no bridge".
        let mut msg = link_message(6);
        msg.attributes.push(LinkAttribute::Controller(0));
        assert_eq!(Link::from_message(&msg).master, None);
    }
}
