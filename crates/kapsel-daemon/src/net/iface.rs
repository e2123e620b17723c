//! A guest's network interface on the host: a VM's tap or a container's
//! host-side veth, joined to its switch or set up as a `local interface`.

use super::dhcp::{DhcpLease, DhcpServer, DEFAULT_LEASE_SECS};
use super::local::{LocalLink, LOCAL_LINK_PREFIX_LEN};
use super::nft::{self, Family};
use super::switch::bridge_name;
use super::tap::TapDevice;
use super::{fnv1a, kernel, validate_ifname, NetError};
use kapsel_config::{InterfaceSpec, Ipv4Prefix, MacAddr, SwitchSpec};
use kapsel_host::netlink::Netlink;
use std::net::Ipv4Addr;

/// The first three bytes of the MACs Kapsel derives for guests: `fe` is a
/// locally administered unicast address, and `fe:e1:bb` stays clear of
/// vmd's `fe:e1:ba` prefix (vmd's host-side tap addresses).
pub const GUEST_MAC_PREFIX: [u8; 3] = [0xfe, 0xe1, 0xbb];

/// The MAC of interface `index` of guest `guest`: its `lladdr`, or
/// `fe:e1:bb` and 24 bits of a stable hash of the guest name and the index,
/// so a guest keeps its MAC (and its DHCP lease elsewhere) across restarts.
pub fn guest_mac(guest: &str, index: u32, spec: &InterfaceSpec) -> MacAddr {
    if let Some(mac) = spec.lladdr {
        return mac;
    }
    let h = fnv1a(&[guest.as_bytes(), &index.to_le_bytes()]).to_le_bytes();
    let p = GUEST_MAC_PREFIX;
    MacAddr([p[0], p[1], p[2], h[0], h[1], h[2]])
}

/// The tap name of interface `index` of the VM with id `vm_id` when the
/// interface does not name one: `ktap<id>-<index>` (e.g. `ktap1-0`). The
/// VM id keeps names unique among running VMs; ids above 99,999,999 and
/// indexes above 99 would not fit 15 characters and are refused.
pub fn tap_name(vm_id: u32, index: u32) -> Result<String, NetError> {
    let name = format!("ktap{vm_id}-{index}");
    validate_ifname(&name)?;
    Ok(name)
}

/// What kind of host-side interface a guest has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum InterfaceKind {
    /// A VM's tap, created by [`start_vm_interface`].
    Tap,
    /// A container's host-side veth, created by the container runtime.
    Veth,
}

/// One interface of a guest, as the daemon resolved it from vm.conf.
#[derive(Debug, Clone, Copy)]
pub struct InterfaceRequest<'a> {
    /// The VM or container name.
    pub guest: &'a str,
    /// The daemon's id of the guest: 1-based, unique among running
    /// guests; it picks the `local interface` addresses and the tap name.
    pub guest_id: u32,
    /// The interface's index in the guest (0-based, in vm.conf order).
    pub index: u32,
    /// The interface's statement.
    pub spec: &'a InterfaceSpec,
    /// The switch `spec.switch` names (resolved by the daemon).
    pub switch: Option<&'a SwitchSpec>,
    /// The `local prefix`.
    pub local_prefix: Ipv4Prefix,
    /// The name servers offered to local interfaces; the gateway when empty
    /// (see [`super::host_dns_servers`]).
    pub dns: &'a [Ipv4Addr],
}

/// A guest interface set up on the host.
#[derive(Debug)]
pub struct GuestInterface {
    /// The host-side interface name.
    pub ifname: String,
    /// Tap or veth.
    pub kind: InterfaceKind,
    /// The guest's MAC: the VM's virtio-net device, or the container's
    /// veth peer, must use it (locking and DHCP rely on it).
    pub mac: MacAddr,
    /// The bridge the interface is a port of.
    pub bridge: Option<String>,
    /// Whether frames from other MACs are dropped.
    pub locked: bool,
    /// The addresses of a local interface.
    pub local: Option<LocalLink>,
    /// The open tap (taps only): pass it to the VM process with
    /// [`TapDevice::into_fd`] and close the daemon's copy, so the tap goes
    /// away with the VM.
    pub tap: Option<TapDevice>,
    /// The DHCP server of a local interface: keep it running while the
    /// guest runs ([`DhcpServer::spawn`], or poll its descriptor).
    pub dhcp: Option<DhcpServer>,
}

/// Creates and sets up the tap of one VM interface: named by `interface
/// NAME` or [`tap_name`]; on its switch's bridge, or a `local interface`
/// with its /31, NAT (set up by [`super::LocalNetwork::ensure`]) and a DHCP
/// server; locked to the guest's MAC when the interface or its switch says
/// `locked lladdr`; up or down. On failure nothing is left behind.
pub fn start_vm_interface(req: &InterfaceRequest<'_>) -> Result<GuestInterface, NetError> {
    check_local_vs_switch(req)?;
    let name = match &req.spec.name {
        Some(n) => n.clone(),
        None => tap_name(req.guest_id, req.index)?,
    };
    let tap = TapDevice::create(&name)?;
    let ifname = tap.name().to_string();
    match configure(req, &ifname, InterfaceKind::Tap) {
        Ok(mut iface) => {
            iface.tap = Some(tap);
            Ok(iface)
        }
        Err(e) => {
            drop(tap); // the tap is not persistent: it goes away with its fd
            let _ = remove_locks(&ifname);
            Err(e)
        }
    }
}

/// Sets up a container's host-side veth `host_ifname` (created by the
/// container runtime) like [`start_vm_interface`] sets up a tap. The
/// runtime gives the container's end the returned MAC.
pub fn attach_veth(
    req: &InterfaceRequest<'_>,
    host_ifname: &str,
) -> Result<GuestInterface, NetError> {
    check_local_vs_switch(req)?;
    validate_ifname(host_ifname)?;
    configure(req, host_ifname, InterfaceKind::Veth).inspect_err(|_| {
        let _ = remove_locks(host_ifname);
    })
}

fn check_local_vs_switch(req: &InterfaceRequest<'_>) -> Result<(), NetError> {
    match (&req.spec.switch, req.spec.local) {
        (Some(sw), true) => Err(NetError::LocalOnSwitch {
            guest: req.guest.to_string(),
            index: req.index,
            switch: sw.clone(),
        }),
        _ => Ok(()),
    }
}

fn configure(
    req: &InterfaceRequest<'_>,
    ifname: &str,
    kind: InterfaceKind,
) -> Result<GuestInterface, NetError> {
    let mut nl = Netlink::open().map_err(kernel("opening a netlink socket"))?;
    let link = nl
        .link(ifname)
        .map_err(kernel(format!("looking up {ifname}")))?
        .ok_or_else(|| NetError::MissingInterface {
            owner: format!("\"{}\"", req.guest),
            ifname: ifname.to_string(),
            fix: "the container runtime must create the veth pair first".into(),
        })?;
    let mac = guest_mac(req.guest, req.index, req.spec);
    let switch_locked = req.switch.is_some_and(|s| s.locked_lladdr);
    let locked = req.spec.locked || switch_locked;
    let mut iface = GuestInterface {
        ifname: ifname.to_string(),
        kind,
        mac,
        bridge: None,
        locked,
        local: None,
        tap: None,
        dhcp: None,
    };
    if let Some(sw) = req.switch {
        let bridge = bridge_name(sw)?;
        let br = nl
            .link(&bridge)
            .map_err(kernel(format!("looking up bridge {bridge}")))?
            .ok_or_else(|| NetError::MissingInterface {
                owner: format!("\"{}\" interface {}", req.guest, req.index),
                ifname: bridge.clone(),
                fix: format!(
                    "switch \"{}\" is not set up; is it disabled, or did starting it fail?",
                    sw.name
                ),
            })?;
        if locked {
            nft::run(
                &nft::lock_script(Family::Bridge, ifname, mac),
                &format!("locking {ifname} to {mac}"),
            )?;
        }
        // Locked before it joins the bridge: no frame slips through.
        nl.set_master(link.index, Some(br.index))
            .map_err(kernel(format!("adding {ifname} to bridge {bridge}")))?;
        iface.bridge = Some(bridge);
    } else if req.spec.local {
        let ll = LocalLink::new(req.local_prefix, req.guest_id, req.index)?;
        nl.add_ipv4(link.index, ll.gateway, LOCAL_LINK_PREFIX_LEN)
            .map_err(kernel(format!("adding {}/31 to {ifname}", ll.gateway)))?;
        if locked {
            nft::run(
                &nft::lock_script(Family::Ip, ifname, mac),
                &format!("locking {ifname} to {mac}"),
            )?;
        }
        let lease = local_lease(req, locked)?;
        iface.dhcp = Some(DhcpServer::bind(ifname, lease)?);
        iface.local = Some(ll);
    }
    if link.is_up() != req.spec.up {
        nl.set_up(link.index, req.spec.up).map_err(kernel(format!(
            "bringing {ifname} {}",
            if req.spec.up { "up" } else { "down" }
        )))?;
    }
    Ok(iface)
}

/// What the DHCP server of a local interface offers: the guest side of its
/// /31, the gateway as router, the request's name servers (else the
/// gateway), the guest's name; `client_mac` only when `locked`. A restarted
/// daemon uses it to start the servers of guests that kept running:
/// `DhcpServer::bind(ifname, local_lease(&req, locked)?)`.
pub fn local_lease(req: &InterfaceRequest<'_>, locked: bool) -> Result<DhcpLease, NetError> {
    let ll = LocalLink::new(req.local_prefix, req.guest_id, req.index)?;
    Ok(DhcpLease {
        client: ll.guest,
        server: ll.gateway,
        prefix_len: LOCAL_LINK_PREFIX_LEN,
        router: ll.gateway,
        dns: if req.dns.is_empty() {
            vec![ll.gateway]
        } else {
            req.dns.to_vec()
        },
        lease_secs: DEFAULT_LEASE_SECS,
        client_mac: locked.then(|| guest_mac(req.guest, req.index, req.spec)),
        hostname: Some(req.guest.to_string()),
    })
}

/// A guest interface that is a port of a switch, as the daemon recorded it
/// when the guest started: what [`reattach_port`] puts back and
/// [`port_state`] checks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SwitchPort {
    /// The host-side interface (tap or veth).
    pub ifname: String,
    /// The bridge it belongs on.
    pub bridge: String,
    /// The guest's MAC (the lock's address).
    pub mac: MacAddr,
    /// Whether frames from other MACs are dropped.
    pub locked: bool,
    /// Whether the interface is to be up.
    pub up: bool,
}

impl GuestInterface {
    /// The interface as a switch port (`up` as its statement says), if it
    /// is on a bridge.
    pub fn port(&self, up: bool) -> Option<SwitchPort> {
        self.bridge.as_ref().map(|bridge| SwitchPort {
            ifname: self.ifname.clone(),
            bridge: bridge.clone(),
            mac: self.mac,
            locked: self.locked,
            up,
        })
    }
}

/// Where a guest's switch port stands on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortState {
    /// A port of its bridge (up if it is to be up).
    Attached,
    /// It exists but is not a port of its bridge (or is down when it is to
    /// be up): the bridge was deleted and made again, or someone took it
    /// out.
    Detached,
    /// Its bridge does not exist (or is no bridge).
    NoBridge,
    /// The interface itself is gone (its guest stopped meanwhile).
    Gone,
}

impl std::fmt::Display for PortState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PortState::Attached => "attached",
            PortState::Detached => "not a port of its bridge",
            PortState::NoBridge => "its bridge is gone",
            PortState::Gone => "gone",
        })
    }
}

fn state_of(nl: &mut Netlink, port: &SwitchPort) -> Result<(PortState, u32, u32), NetError> {
    validate_ifname(&port.ifname)?;
    validate_ifname(&port.bridge)?;
    let Some(link) = nl
        .link(&port.ifname)
        .map_err(kernel(format!("looking up {}", port.ifname)))?
    else {
        return Ok((PortState::Gone, 0, 0));
    };
    let bridge = nl
        .link(&port.bridge)
        .map_err(kernel(format!("looking up bridge {}", port.bridge)))?;
    let Some(bridge) = bridge.filter(|b| b.kind.as_deref() == Some("bridge")) else {
        return Ok((PortState::NoBridge, link.index, 0));
    };
    let state = if link.master == Some(bridge.index) && (!port.up || link.is_up()) {
        PortState::Attached
    } else {
        PortState::Detached
    };
    Ok((state, link.index, bridge.index))
}

/// Where `port` stands: netlink lookups only (no `nft`), cheap enough for
/// a periodic check. The MAC lock is not checked (that needs `nft`);
/// [`reattach_port`] puts it back regardless.
pub fn port_state(port: &SwitchPort) -> Result<PortState, NetError> {
    let mut nl = Netlink::open().map_err(kernel("opening a netlink socket"))?;
    Ok(state_of(&mut nl, port)?.0)
}

/// Makes `port` a port of its bridge again, locked (before it joins, as at
/// start) and up as recorded, after its bridge was deleted and made again
/// ([`super::ensure_switch`] first) or it was taken out by hand. Returns
/// the state it was found in: [`PortState::Attached`] (only the lock was
/// renewed), [`PortState::Detached`] (put back), [`PortState::NoBridge`]
/// (left alone: there is no bridge to join) or [`PortState::Gone`].
pub fn reattach_port(port: &SwitchPort) -> Result<PortState, NetError> {
    let mut nl = Netlink::open().map_err(kernel("opening a netlink socket"))?;
    let (state, index, bridge) = state_of(&mut nl, port)?;
    if matches!(state, PortState::Gone | PortState::NoBridge) {
        return Ok(state);
    }
    let ifname = &port.ifname;
    if port.locked {
        // Idempotent (the port's chain is flushed and refilled), so a lock
        // flushed by hand with `nft` comes back too.
        nft::run(
            &nft::lock_script(Family::Bridge, ifname, port.mac),
            &format!("locking {ifname} to {}", port.mac),
        )?;
        // The guest may have stopped meanwhile and its interface been
        // released: leave no lock behind for an interface that is gone.
        if nl
            .link_by_index(index)
            .map_err(kernel(format!("looking up {ifname}")))?
            .is_none_or(|l| l.name != *ifname)
        {
            remove_locks(ifname)?;
            return Ok(PortState::Gone);
        }
    }
    if state == PortState::Detached {
        let link = nl
            .link_by_index(index)
            .map_err(kernel(format!("looking up {ifname}")))?;
        let Some(link) = link else {
            return Ok(PortState::Gone);
        };
        if link.master != Some(bridge) {
            nl.set_master(index, Some(bridge))
                .map_err(kernel(format!("adding {ifname} to bridge {}", port.bridge)))?;
        }
        if port.up && !link.is_up() {
            nl.set_up(index, true)
                .map_err(kernel(format!("bringing {ifname} up")))?;
        }
    }
    Ok(state)
}

fn remove_locks(ifname: &str) -> Result<(), NetError> {
    for family in [Family::Bridge, Family::Ip] {
        if nft::has_lock(family, ifname)? {
            nft::run(
                &nft::unlock_script(family, ifname),
                &format!("unlocking {ifname}"),
            )?;
            nft::drop_unused_table(family)?;
        }
    }
    Ok(())
}

/// Takes a guest interface off the host after the guest stopped: its MAC
/// locking rules go, a tap that still exists (the VM process is gone but
/// something holds the descriptor) is deleted, a veth or a persistent tap
/// (the administrator's, named by `interface NAME`) only leaves its bridge
/// (the container runtime deletes the veth pair). Works from the name alone, so
/// a restarted daemon can clean up after guests it no longer knows; an
/// interface already gone is not an error. Drop the interface's
/// [`DhcpServer`] (or its thread) first.
pub fn release_interface(ifname: &str, kind: InterfaceKind) -> Result<(), NetError> {
    validate_ifname(ifname)?;
    remove_locks(ifname)?;
    let mut nl = Netlink::open().map_err(kernel("opening a netlink socket"))?;
    let Some(link) = nl
        .link(ifname)
        .map_err(kernel(format!("looking up {ifname}")))?
    else {
        return Ok(());
    };
    let ours = kind == InterfaceKind::Tap
        && link.kind.as_deref() == Some("tun")
        && link.tun_persist != Some(true);
    if ours {
        nl.delete_link(link.index)
            .or_else(|e| match e.raw_os_error() {
                Some(libc::ENODEV) => Ok(()), // went away meanwhile
                _ => Err(e),
            })
            .map_err(kernel(format!("deleting tap {ifname}")))
    } else if link.master.is_some() {
        nl.set_master(link.index, None)
            .map_err(kernel(format!("taking {ifname} off its bridge")))
    } else {
        Ok(())
    }
}

/// Removes every table of Kapsel's firewall rules (locking and NAT), for
/// the daemon's shutdown after all guests were released.
pub fn remove_firewall() -> Result<(), NetError> {
    nft::run(
        "add table bridge kapsel\ndelete table bridge kapsel\n\
         add table ip kapsel\ndelete table ip kapsel\n\
         add table ip kapsel-nat\ndelete table ip kapsel-nat\n",
        "removing Kapsel's rules",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_macs_are_stable_local_unicast_and_distinct() {
        let spec = InterfaceSpec::default();
        let a = guest_mac("web", 0, &spec);
        assert_eq!(a, guest_mac("web", 0, &spec));
        assert_ne!(a, guest_mac("web", 1, &spec));
        assert_ne!(a, guest_mac("web2", 0, &spec));
        assert_eq!(&a.0[..3], &GUEST_MAC_PREFIX);
        assert_eq!(a.0[0] & 0x03, 0x02, "locally administered, unicast");
        let fixed = MacAddr([2, 0, 0, 0, 0, 9]);
        let spec = InterfaceSpec {
            lladdr: Some(fixed),
            ..InterfaceSpec::default()
        };
        assert_eq!(guest_mac("web", 0, &spec), fixed);
    }

    #[test]
    fn tap_names_fit_the_kernel_limit() {
        assert_eq!(tap_name(1, 0).unwrap(), "ktap1-0");
        assert_eq!(tap_name(99_999_999, 31).unwrap().len(), 15);
        assert!(tap_name(100_000_000, 31).is_err());
    }

    #[test]
    fn a_local_interface_on_a_switch_is_refused() {
        let spec = InterfaceSpec {
            local: true,
            switch: Some("uplink".into()),
            ..InterfaceSpec::default()
        };
        let req = InterfaceRequest {
            guest: "vm1",
            guest_id: 1,
            index: 0,
            spec: &spec,
            switch: None,
            local_prefix: Ipv4Prefix::default(),
            dns: &[],
        };
        let e = start_vm_interface(&req).unwrap_err();
        assert!(matches!(e, NetError::LocalOnSwitch { .. }));
        assert!(e.to_string().contains("switch \"uplink\""));
    }
}
