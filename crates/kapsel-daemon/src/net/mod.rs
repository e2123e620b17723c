//! Host networking for guests: switches (Linux bridges), taps and veths on
//! them, `local interface` addressing with NAT, and the built-in DHCP server.
//!
//! Everything here acts on the network namespace of the *calling thread*
//! (netlink sockets, `nft` child processes and `/proc/sys/net` all follow
//! it), which is what lets the tests run the real code in namespaces of
//! their own. The daemon calls it from its main thread, in the host's
//! namespace.
//!
//! The order the daemon follows (see docs/ARCHITECTURE.md, "Networking"):
//!
//! 1. startup and reload: [`ensure_switch`] for each enabled switch, and
//!    [`LocalNetwork::ensure`] once if any guest has a `local interface`;
//! 2. VM start: [`start_vm_interface`] for each interface, which returns the
//!    open tap to hand to the VM process and a [`DhcpServer`] to keep running
//!    for local interfaces; containers use [`attach_veth`];
//! 3. VM stop: [`release_interface`] for each interface (after the VM process
//!    exited and the DHCP server was dropped);
//! 4. daemon restart while guests run: [`ensure_switch`] again (idempotent);
//!    only the DHCP servers need restarting, with [`local_lease`];
//! 5. reload and `reset switches`: [`ensure_switch`] again (a bridge
//!    deleted behind the daemon's back is made again, without ports), then
//!    [`reattach_port`] for each running guest's [`SwitchPort`];
//!    [`port_state`] checks one cheaply (netlink only);
//! 6. switch removed on reload (once no running guest uses it), or
//!    shutdown: [`remove_switch`], [`LocalNetwork::remove`] and, at
//!    shutdown, [`remove_firewall`].
//!
//! Changes are made through rtnetlink and ioctls; only the firewall rules go
//! through the `nft` program (nftables' netlink ABI is not worth
//! hand-encoding), and only when an interface is set up or torn down.

mod dhcp;
mod dhcp_helper;
mod iface;
mod local;
mod nft;
mod switch;
mod tap;

pub use dhcp::DhcpReply;
pub use dhcp::{handle_packet, DhcpLease, DhcpServer, DhcpServerThread};
pub(crate) use dhcp_helper::log_child_lines;
pub use dhcp_helper::{
    main as dhcp_helper_main, DhcpHelper, DhcpService, HelperArgs as DhcpHelperArgs,
    SUBCOMMAND as DHCP_HELPER_SUBCOMMAND, USER as DHCP_HELPER_USER,
};
pub use iface::{
    attach_veth, guest_mac, local_lease, port_state, reattach_port, release_interface,
    remove_firewall, start_vm_interface, tap_name, GuestInterface, InterfaceKind, InterfaceRequest,
    PortState, SwitchPort, GUEST_MAC_PREFIX,
};
pub use local::{host_dns_servers, LocalLink, LocalNetwork, LOCAL_LINK_PREFIX_LEN};
pub use switch::{bridge_mac, bridge_name, ensure_switch, remove_switch, Switch, BRIDGE_PREFIX};
pub use tap::{TapDevice, TAP_VNET_HDR_LEN};

use std::io;

pub use kapsel_host::IFNAMSIZ;

/// What went wrong while setting up host networking. Every message names
/// the interface or switch and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A name the kernel would refuse as an interface name.
    #[error("{0}")]
    InvalidIfname(#[from] kapsel_host::InvalidIfname),
    /// A kernel request failed.
    #[error("{context}: {source}")]
    Kernel {
        /// What was being done, naming the interface.
        context: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// The switch's `interface` names a link that exists and is no bridge.
    #[error(
        "switch \"{switch}\": {ifname} exists and is a {kind} interface, not a bridge; \
         `interface` names the switch's bridge: to put {ifname} on the switch, write \
         `add {ifname}` instead (and leave `interface` out to let Kapsel name the bridge)"
    )]
    NotABridge {
        /// The switch.
        switch: String,
        /// The interface.
        ifname: String,
        /// Its link kind.
        kind: String,
    },
    /// An interface that has to exist does not.
    #[error("{owner}: interface {ifname} does not exist; {fix}")]
    MissingInterface {
        /// Who needs it (`bridge kbr-uplink`, `container "db"`).
        owner: String,
        /// The interface.
        ifname: String,
        /// What to change.
        fix: String,
    },
    /// A host interface is already a port of another bridge.
    #[error(
        "bridge {bridge}: interface {ifname} is already a port of {other}; \
         take it out there first (ip link set {ifname} nomaster)"
    )]
    PortOfOtherBridge {
        /// Our bridge.
        bridge: String,
        /// The interface.
        ifname: String,
        /// The bridge it is on.
        other: String,
    },
    /// Creating or configuring a tap failed.
    #[error("tap {ifname}: {source}; {hint}")]
    Tap {
        /// The tap.
        ifname: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
        /// What to check.
        hint: &'static str,
    },
    /// `nft` could not be run or refused the rules.
    #[error("nftables ({context}): {detail}")]
    Nft {
        /// What the rules were for.
        context: String,
        /// The exit status and nft's message.
        detail: String,
    },
    /// A sysctl could not be written.
    #[error("cannot write {path}: {source}")]
    Sysctl {
        /// The /proc/sys path.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The `local prefix` has no room for this VM id or interface.
    #[error(
        "local prefix {prefix} has no room for vm id {vm_id} interface {index}: \
         each VM takes a /24 of it and at most 126 interfaces; \
         use a shorter `local prefix` (the default is 100.64.0.0/10)"
    )]
    LocalPrefixFull {
        /// The prefix.
        prefix: String,
        /// The VM id.
        vm_id: u32,
        /// The interface index.
        index: u32,
    },
    /// `local inet6` is set.
    #[error(
        "`local inet6` is not supported by Kapsel yet: local interfaces get IPv4 \
         only; remove the `local inet6` line to silence this"
    )]
    Inet6Unsupported,
    /// A `local interface` that also names a switch.
    #[error(
        "{guest}: interface {index} is a local interface and on switch \"{switch}\"; \
         a local interface is a point-to-point link to the host: drop `local` or the `switch` line"
    )]
    LocalOnSwitch {
        /// The VM or container.
        guest: String,
        /// The interface index.
        index: u32,
        /// The switch.
        switch: String,
    },
    /// The DHCP server could not be started.
    #[error("DHCP server on {ifname}: {source}")]
    Dhcp {
        /// The interface it serves.
        ifname: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Shorthand for a failed kernel request.
pub(crate) fn kernel(context: impl Into<String>) -> impl FnOnce(io::Error) -> NetError {
    let context = context.into();
    move |source| NetError::Kernel { context, source }
}

/// Checks that `name` is a name the kernel accepts for an interface
/// ([`kapsel_host::validate_ifname`]).
pub fn validate_ifname(name: &str) -> Result<(), NetError> {
    Ok(kapsel_host::validate_ifname(name)?)
}

/// FNV-1a: a stable hash (unlike std's `DefaultHasher`, which may change
/// between Rust releases) for names and MACs that must survive upgrades.
pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(std::iter::once(&0xff)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_separates_parts() {
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
        assert_eq!(fnv1a(&[b"x"]), fnv1a(&[b"x"]));
    }
}
