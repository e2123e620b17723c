//! The built-in DHCP server of `local interface`s (RFC 2131, options of
//! RFC 2132): one server per interface, which offers exactly one address,
//! the guest side of the interface's /31, to whoever asks on that link.
//!
//! [`handle_packet`] is the whole protocol: a pure function from a request
//! to a reply, never panicking on any input. [`DhcpServer`] owns the UDP
//! socket, bound to port 67 on the one interface (SO_BINDTODEVICE), so each
//! local interface has its own server and none answers on another link.
//! The daemon (root) only opens the socket, which needs privilege; the
//! packets are read and answered by the confined DHCP helper process
//! (`super::dhcp_helper`, [`super::DhcpHelper::serve`]), never by the
//! daemon itself. [`DhcpServer::spawn`] runs the helper's same loop on a
//! thread of the calling process instead, for library tests and tools.

use super::NetError;
use kapsel_config::MacAddr;
use serde::{Deserialize, Serialize};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::thread::JoinHandle;

/// The server's port.
pub const SERVER_PORT: u16 = 67;
/// The client's port.
pub const CLIENT_PORT: u16 = 68;
/// The lease time Kapsel offers: one day. The address never changes, so
/// the time only bounds how long a guest keeps a stale configuration.
pub const DEFAULT_LEASE_SECS: u32 = 86_400;

const BOOTREQUEST: u8 = 1;
const BOOTREPLY: u8 = 2;
const HTYPE_ETHER: u8 = 1;
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// Fixed BOOTP header up to and including the magic cookie.
const HEADER_LEN: usize = 240;
/// Replies are padded to the minimum BOOTP message size (RFC 1542).
const MIN_REPLY_LEN: usize = 300;

const OPT_PAD: u8 = 0;
const OPT_SUBNET_MASK: u8 = 1;
const OPT_ROUTER: u8 = 3;
const OPT_DNS: u8 = 6;
const OPT_HOSTNAME: u8 = 12;
const OPT_REQUESTED_IP: u8 = 50;
const OPT_LEASE_TIME: u8 = 51;
const OPT_MESSAGE_TYPE: u8 = 53;
const OPT_SERVER_ID: u8 = 54;
const OPT_RENEWAL_TIME: u8 = 58;
const OPT_REBINDING_TIME: u8 = 59;
const OPT_END: u8 = 255;

const DHCPDISCOVER: u8 = 1;
const DHCPOFFER: u8 = 2;
const DHCPREQUEST: u8 = 3;
const DHCPACK: u8 = 5;
const DHCPNAK: u8 = 6;
const DHCPINFORM: u8 = 8;

/// What the server offers on its interface. It travels from the daemon to
/// the DHCP helper, and into the daemon's state file, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DhcpLease {
    /// The guest's address.
    pub client: Ipv4Addr,
    /// The server identifier: the host side's address.
    pub server: Ipv4Addr,
    /// The subnet's prefix length (31 on a local interface).
    pub prefix_len: u8,
    /// The default router (the host side).
    pub router: Ipv4Addr,
    /// Name servers; none are offered when empty.
    pub dns: Vec<Ipv4Addr>,
    /// The lease time in seconds.
    pub lease_secs: u32,
    /// Only answer this MAC (set when the interface is `locked lladdr`);
    /// `None` answers any client, the link having only one.
    pub client_mac: Option<MacAddr>,
    /// A host name to offer (the VM name), if any.
    pub hostname: Option<String>,
}

/// A reply and where to send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpReply {
    /// The DHCP message.
    pub bytes: Vec<u8>,
    /// The destination: the client's address when it has one (renewal,
    /// INFORM), else the limited broadcast.
    pub to: SocketAddrV4,
}

/// A request's fields the server looks at.
struct Request<'a> {
    xid: [u8; 4],
    flags: [u8; 2],
    ciaddr: Ipv4Addr,
    chaddr: &'a [u8],
    message_type: u8,
    requested_ip: Option<Ipv4Addr>,
    server_id: Option<Ipv4Addr>,
}

fn ipv4(data: &[u8]) -> Option<Ipv4Addr> {
    let b: [u8; 4] = data.try_into().ok()?;
    Some(Ipv4Addr::from(b))
}

/// Parses a BOOTREQUEST; `None` for anything malformed or not for us.
fn parse(packet: &[u8]) -> Option<Request<'_>> {
    let header = packet.get(..HEADER_LEN)?;
    if header[0] != BOOTREQUEST || header[1] != HTYPE_ETHER || header[2] != 6 {
        return None;
    }
    if header[236..240] != MAGIC_COOKIE {
        return None;
    }
    // A relayed request (giaddr set) cannot reach a point-to-point link.
    if header[24..28] != [0; 4] {
        return None;
    }
    let mut req = Request {
        xid: header[4..8].try_into().ok()?,
        flags: header[10..12].try_into().ok()?,
        ciaddr: ipv4(&header[12..16])?,
        chaddr: &header[28..34],
        message_type: 0,
        requested_ip: None,
        server_id: None,
    };
    let mut opts = &packet[HEADER_LEN..];
    loop {
        let (&code, rest) = opts.split_first()?; // no END: malformed
        match code {
            OPT_END => break,
            OPT_PAD => opts = rest,
            _ => {
                let (&len, rest) = rest.split_first()?;
                let data = rest.get(..usize::from(len))?;
                opts = &rest[usize::from(len)..];
                match code {
                    OPT_MESSAGE_TYPE => req.message_type = *data.first()?,
                    OPT_REQUESTED_IP => req.requested_ip = Some(ipv4(data)?),
                    OPT_SERVER_ID => req.server_id = Some(ipv4(data)?),
                    _ => {}
                }
            }
        }
    }
    Some(req)
}

fn put_opt(out: &mut Vec<u8>, code: u8, data: &[u8]) {
    // Every option written here is far below 255 bytes; longer data (a
    // long host name) is cut rather than encoded wrongly.
    let data = &data[..data.len().min(255)];
    out.push(code);
    out.push(data.len() as u8);
    out.extend_from_slice(data);
}

/// The reply to one request, or `None` when the server stays silent:
/// malformed packets, replies, relayed requests, other clients' MACs,
/// requests for another server, DECLINE and RELEASE.
pub fn handle_packet(lease: &DhcpLease, packet: &[u8]) -> Option<DhcpReply> {
    let req = parse(packet)?;
    if let Some(mac) = lease.client_mac {
        if req.chaddr != mac.0 {
            return None;
        }
    }
    let reply_type = match req.message_type {
        DHCPDISCOVER => DHCPOFFER,
        DHCPREQUEST => {
            if req.server_id.is_some_and(|s| s != lease.server) {
                return None; // the client took another server's offer
            }
            let wanted = req.requested_ip.unwrap_or(req.ciaddr);
            if wanted == lease.client {
                DHCPACK
            } else {
                DHCPNAK
            }
        }
        DHCPINFORM => DHCPACK,
        _ => return None,
    };
    let inform = req.message_type == DHCPINFORM;
    let yiaddr = if reply_type == DHCPNAK || inform {
        Ipv4Addr::UNSPECIFIED
    } else {
        lease.client
    };
    let mut out = Vec::with_capacity(MIN_REPLY_LEN);
    out.extend_from_slice(&[BOOTREPLY, HTYPE_ETHER, 6, 0]);
    out.extend_from_slice(&req.xid);
    out.extend_from_slice(&[0, 0]); // secs
    out.extend_from_slice(&req.flags);
    let ciaddr = if reply_type == DHCPNAK {
        Ipv4Addr::UNSPECIFIED
    } else {
        req.ciaddr
    };
    out.extend_from_slice(&ciaddr.octets());
    out.extend_from_slice(&yiaddr.octets());
    out.extend_from_slice(&[0; 4]); // siaddr: no boot server
    out.extend_from_slice(&[0; 4]); // giaddr: no relay
    out.extend_from_slice(req.chaddr);
    out.resize(HEADER_LEN - 4, 0); // chaddr padding, sname, file
    out.extend_from_slice(&MAGIC_COOKIE);
    put_opt(&mut out, OPT_MESSAGE_TYPE, &[reply_type]);
    put_opt(&mut out, OPT_SERVER_ID, &lease.server.octets());
    if reply_type != DHCPNAK {
        if !inform {
            put_opt(&mut out, OPT_LEASE_TIME, &lease.lease_secs.to_be_bytes());
            put_opt(
                &mut out,
                OPT_RENEWAL_TIME,
                &(lease.lease_secs / 2).to_be_bytes(),
            );
            let t2 = (u64::from(lease.lease_secs) * 7 / 8) as u32;
            put_opt(&mut out, OPT_REBINDING_TIME, &t2.to_be_bytes());
        }
        let mask = u32::MAX
            .checked_shl(32 - u32::from(lease.prefix_len.min(32)))
            .unwrap_or(0);
        put_opt(&mut out, OPT_SUBNET_MASK, &mask.to_be_bytes());
        put_opt(&mut out, OPT_ROUTER, &lease.router.octets());
        if !lease.dns.is_empty() {
            let dns: Vec<u8> = lease.dns.iter().take(8).flat_map(|a| a.octets()).collect();
            put_opt(&mut out, OPT_DNS, &dns);
        }
        if let Some(name) = &lease.hostname {
            put_opt(&mut out, OPT_HOSTNAME, name.as_bytes());
        }
    }
    out.push(OPT_END);
    if out.len() < MIN_REPLY_LEN {
        out.resize(MIN_REPLY_LEN, OPT_PAD);
    }
    // A NAK is broadcast (RFC 2131 4.1): the client's address is in doubt.
    let to = if reply_type != DHCPNAK && !req.ciaddr.is_unspecified() {
        SocketAddrV4::new(req.ciaddr, CLIENT_PORT)
    } else {
        SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
    };
    Some(DhcpReply { bytes: out, to })
}

/// The DHCP server of one interface.
#[derive(Debug)]
pub struct DhcpServer {
    socket: UdpSocket,
    ifname: String,
    lease: DhcpLease,
}

fn setsockopt(fd: &OwnedFd, level: i32, name: i32, value: &[u8]) -> io::Result<()> {
    // SAFETY: `value` is a valid slice for the duration of the call; the
    // kernel copies its bytes.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl DhcpServer {
    /// Opens the server's socket: UDP port 67 of interface `ifname` only.
    /// The interface needs its host-side address first (it is the source of
    /// the replies).
    pub fn bind(ifname: &str, lease: DhcpLease) -> Result<DhcpServer, NetError> {
        let err = |source| NetError::Dhcp {
            ifname: ifname.to_string(),
            source,
        };
        // SAFETY: plain socket(2) call; the result is checked below.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if fd < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by socket(2) and is owned by no one else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let one = (1 as libc::c_int).to_ne_bytes();
        // SO_REUSEADDR lets the servers of all interfaces (and a DHCP server
        // of the administrator's on other interfaces) share port 67.
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &one).map_err(err)?;
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_BROADCAST, &one).map_err(err)?;
        setsockopt(
            &fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            ifname.as_bytes(),
        )
        .map_err(err)?;
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: SERVER_PORT.to_be(),
            sin_addr: libc::in_addr { s_addr: 0 },
            sin_zero: [0; 8],
        };
        // SAFETY: `addr` is a valid sockaddr_in and the length matches it.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        let socket = UdpSocket::from(fd);
        Ok(DhcpServer {
            socket,
            ifname: ifname.to_string(),
            lease,
        })
    }

    /// The interface served.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// What is offered.
    pub fn lease(&self) -> &DhcpLease {
        &self.lease
    }

    /// Answers every request queued on the socket (it never blocks);
    /// returns how many replies were sent. Call it when the descriptor is
    /// readable. A reply that cannot be sent is logged and dropped: the
    /// client asks again.
    pub fn handle_ready(&self) -> io::Result<usize> {
        let mut buf = [0u8; 1500];
        let mut sent = 0;
        loop {
            let n = match self.socket.recv_from(&mut buf) {
                Ok((n, _)) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(sent),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let Some(reply) = handle_packet(&self.lease, &buf[..n]) else {
                continue;
            };
            match self.socket.send_to(&reply.bytes, reply.to) {
                Ok(_) => sent += 1,
                Err(e) => {
                    tracing::warn!("DHCP server on {}: reply to {}: {e}", self.ifname, reply.to)
                }
            }
        }
    }

    /// Runs the server on a thread of the calling process until the
    /// returned handle is dropped: the DHCP helper's own loop
    /// ([`super::dhcp_helper::serve`]) and protocol, without the separate
    /// process and its confinement. For library tests and tools; the
    /// daemon serves through [`super::DhcpHelper`].
    pub fn spawn(self) -> Result<DhcpServerThread, NetError> {
        let ifname = self.ifname.clone();
        let err = |source| NetError::Dhcp {
            ifname: ifname.clone(),
            source,
        };
        let (ours, theirs) = super::dhcp_helper::control_pair().map_err(err)?;
        let handle = std::thread::Builder::new()
            .name(format!("dhcp-{}", self.ifname))
            .spawn(move || {
                if let Err(e) = super::dhcp_helper::serve(theirs) {
                    tracing::error!("DHCP server thread: {e}");
                }
            })
            .map_err(err)?;
        let (fd, ifname, lease) = self.into_parts();
        let serve = super::dhcp_helper::ToHelper::Serve {
            ifname: ifname.clone(),
            lease,
        };
        let thread = DhcpServerThread {
            control: Some(ours),
            handle: Some(handle),
        };
        if let Some(control) = &thread.control {
            super::dhcp_helper::send(control, &serve, Some(fd.as_fd()))
                .map_err(|source| NetError::Dhcp { ifname, source })?;
        }
        Ok(thread)
    }

    /// The socket, the interface and the lease, to hand to the helper.
    pub(super) fn into_parts(self) -> (OwnedFd, String, DhcpLease) {
        (OwnedFd::from(self.socket), self.ifname, self.lease)
    }

    /// A server on a socket received from the daemon (the helper's side).
    pub(super) fn from_parts(socket: UdpSocket, ifname: String, lease: DhcpLease) -> DhcpServer {
        DhcpServer {
            socket,
            ifname,
            lease,
        }
    }
}

impl AsFd for DhcpServer {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

/// A [`DhcpServer`] running on a thread of this process; dropping it
/// stops the thread and closes the socket.
#[derive(Debug)]
pub struct DhcpServerThread {
    control: Option<OwnedFd>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for DhcpServerThread {
    fn drop(&mut self) {
        // The loop ends when its control connection hangs up.
        drop(self.control.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAC: [u8; 6] = [0xfe, 0xe1, 0xbb, 1, 2, 3];

    fn lease() -> DhcpLease {
        DhcpLease {
            client: Ipv4Addr::new(100, 64, 1, 3),
            server: Ipv4Addr::new(100, 64, 1, 2),
            prefix_len: 31,
            router: Ipv4Addr::new(100, 64, 1, 2),
            dns: vec![Ipv4Addr::new(192, 0, 2, 53)],
            lease_secs: DEFAULT_LEASE_SECS,
            client_mac: None,
            hostname: Some("vm1".into()),
        }
    }

    /// A client's request with the given options (without END).
    fn request(msg_type: u8, ciaddr: [u8; 4], extra: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; HEADER_LEN];
        p[0] = BOOTREQUEST;
        p[1] = HTYPE_ETHER;
        p[2] = 6;
        p[4..8].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        p[10] = 0x80; // broadcast flag
        p[12..16].copy_from_slice(&ciaddr);
        p[28..34].copy_from_slice(&MAC);
        p[236..240].copy_from_slice(&MAGIC_COOKIE);
        p.extend_from_slice(&[OPT_MESSAGE_TYPE, 1, msg_type]);
        p.extend_from_slice(extra);
        p.push(OPT_END);
        p
    }

    /// The options of a reply, as (code, data) pairs.
    fn options(reply: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut o = &reply[HEADER_LEN..];
        while let [code, rest @ ..] = o {
            match *code {
                OPT_END => break,
                OPT_PAD => o = rest,
                _ => {
                    let len = rest[0] as usize;
                    out.push((*code, rest[1..1 + len].to_vec()));
                    o = &rest[1 + len..];
                }
            }
        }
        out
    }

    fn opt(reply: &[u8], code: u8) -> Option<Vec<u8>> {
        options(reply)
            .into_iter()
            .find(|(c, _)| *c == code)
            .map(|(_, d)| d)
    }

    #[test]
    fn discover_gets_an_offer_with_the_guest_address() {
        let r = handle_packet(&lease(), &request(DHCPDISCOVER, [0; 4], &[])).unwrap();
        assert_eq!(r.to, SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT));
        let b = &r.bytes;
        assert!(b.len() >= MIN_REPLY_LEN);
        assert_eq!(b[0], BOOTREPLY);
        assert_eq!(&b[4..8], &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(&b[10..12], &[0x80, 0]);
        assert_eq!(&b[16..20], &[100, 64, 1, 3]);
        assert_eq!(&b[28..34], &MAC);
        assert_eq!(opt(b, OPT_MESSAGE_TYPE), Some(vec![DHCPOFFER]));
        assert_eq!(opt(b, OPT_SERVER_ID), Some(vec![100, 64, 1, 2]));
        assert_eq!(opt(b, OPT_SUBNET_MASK), Some(vec![255, 255, 255, 254]));
        assert_eq!(opt(b, OPT_ROUTER), Some(vec![100, 64, 1, 2]));
        assert_eq!(opt(b, OPT_DNS), Some(vec![192, 0, 2, 53]));
        assert_eq!(
            opt(b, OPT_LEASE_TIME),
            Some(86_400u32.to_be_bytes().to_vec())
        );
        assert_eq!(opt(b, OPT_HOSTNAME), Some(b"vm1".to_vec()));
    }

    #[test]
    fn request_for_the_offered_address_is_acked() {
        let extra = [
            OPT_REQUESTED_IP,
            4,
            100,
            64,
            1,
            3,
            OPT_SERVER_ID,
            4,
            100,
            64,
            1,
            2,
        ];
        let r = handle_packet(&lease(), &request(DHCPREQUEST, [0; 4], &extra)).unwrap();
        assert_eq!(opt(&r.bytes, OPT_MESSAGE_TYPE), Some(vec![DHCPACK]));
        assert_eq!(&r.bytes[16..20], &[100, 64, 1, 3]);
    }

    #[test]
    fn renewal_is_acked_by_unicast() {
        let r = handle_packet(&lease(), &request(DHCPREQUEST, [100, 64, 1, 3], &[])).unwrap();
        assert_eq!(opt(&r.bytes, OPT_MESSAGE_TYPE), Some(vec![DHCPACK]));
        assert_eq!(
            r.to,
            SocketAddrV4::new(Ipv4Addr::new(100, 64, 1, 3), CLIENT_PORT)
        );
    }

    #[test]
    fn request_for_another_address_is_naked_by_broadcast() {
        let extra = [OPT_REQUESTED_IP, 4, 10, 0, 0, 7];
        let r = handle_packet(&lease(), &request(DHCPREQUEST, [0; 4], &extra)).unwrap();
        assert_eq!(opt(&r.bytes, OPT_MESSAGE_TYPE), Some(vec![DHCPNAK]));
        assert_eq!(&r.bytes[16..20], &[0; 4]);
        assert_eq!(opt(&r.bytes, OPT_ROUTER), None);
        assert_eq!(r.to.ip(), &Ipv4Addr::BROADCAST);
    }

    #[test]
    fn inform_gets_the_options_but_no_lease() {
        let r = handle_packet(&lease(), &request(DHCPINFORM, [100, 64, 1, 3], &[])).unwrap();
        assert_eq!(opt(&r.bytes, OPT_MESSAGE_TYPE), Some(vec![DHCPACK]));
        assert_eq!(&r.bytes[16..20], &[0; 4]);
        assert_eq!(opt(&r.bytes, OPT_LEASE_TIME), None);
        assert_eq!(opt(&r.bytes, OPT_ROUTER), Some(vec![100, 64, 1, 2]));
    }

    #[test]
    fn silence_for_what_is_not_ours() {
        let l = lease();
        // Another server's offer was chosen.
        let extra = [OPT_SERVER_ID, 4, 10, 9, 9, 9];
        assert!(handle_packet(&l, &request(DHCPREQUEST, [0; 4], &extra)).is_none());
        // RELEASE and DECLINE need no answer.
        assert!(handle_packet(&l, &request(7, [0; 4], &[])).is_none());
        assert!(handle_packet(&l, &request(4, [0; 4], &[])).is_none());
        // A locked interface answers its guest's MAC only.
        let mut locked = lease();
        locked.client_mac = Some(MacAddr([2, 0, 0, 0, 0, 1]));
        assert!(handle_packet(&locked, &request(DHCPDISCOVER, [0; 4], &[])).is_none());
        locked.client_mac = Some(MacAddr(MAC));
        assert!(handle_packet(&locked, &request(DHCPDISCOVER, [0; 4], &[])).is_some());
        // A reply, a relayed request, no cookie, no END, a truncated option.
        let mut p = request(DHCPDISCOVER, [0; 4], &[]);
        p[0] = BOOTREPLY;
        assert!(handle_packet(&l, &p).is_none());
        let mut p = request(DHCPDISCOVER, [0; 4], &[]);
        p[24] = 10;
        assert!(handle_packet(&l, &p).is_none());
        let mut p = request(DHCPDISCOVER, [0; 4], &[]);
        p[236] = 0;
        assert!(handle_packet(&l, &p).is_none());
        let mut p = request(DHCPDISCOVER, [0; 4], &[]);
        p.pop();
        assert!(handle_packet(&l, &p).is_none());
        let p = request(DHCPDISCOVER, [0; 4], &[OPT_REQUESTED_IP, 9, 1]);
        assert!(handle_packet(&l, &p).is_none());
        assert!(handle_packet(&l, &[]).is_none());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = handle_packet(&lease(), &bytes);
        }

        #[test]
        fn mangled_requests_never_panic_and_replies_are_well_formed(
            opts in proptest::collection::vec(any::<u8>(), 0..300),
            msg_type in 0u8..10,
            cut in 0usize..600,
        ) {
            let mut p = request(msg_type, [0; 4], &opts);
            p.truncate(cut.max(HEADER_LEN / 2));
            if let Some(r) = handle_packet(&lease(), &p) {
                prop_assert!(r.bytes.len() >= MIN_REPLY_LEN);
                prop_assert_eq!(r.bytes[0], BOOTREPLY);
                prop_assert!(opt(&r.bytes, OPT_MESSAGE_TYPE).is_some());
            }
        }
    }
}
