//! `local interface`: a point-to-point IPv4 link between the host and a
//! guest, addressed from `local prefix` the way OpenBSD vmd does it, with
//! the guest's traffic masqueraded to the rest of the world.
//!
//! vmd's scheme (`vm_priv_addr` in vmd's priv.c), which Kapsel keeps so that
//! guests moved from vmd see the same addresses: VM id N (1-based) gets the
//! /24 at offset `N << 8` of the prefix, and its interface I the /31 at
//! offset `(I + 1) * 2` in it (skipping .0 so no gateway ends in .0). The
//! first address of the /31 is the host side (the guest's gateway), the
//! second the guest. With the default 100.64.0.0/10, VM 1's first interface
//! is 100.64.1.2 (host) and 100.64.1.3 (guest); a VM has at most 126 local
//! interfaces and a /10 holds VM ids up to 16383.

use super::{nft, NetError};
use kapsel_config::{Ipv4Prefix, Ipv6Prefix};
use std::net::Ipv4Addr;
use std::path::Path;

/// The prefix length of every local link.
pub const LOCAL_LINK_PREFIX_LEN: u8 = 31;
/// The most local interfaces per VM (vmd's limit).
pub const MAX_LOCAL_INTERFACES: u32 = 126;

/// The two addresses of one local interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalLink {
    /// The host side: the guest's gateway and DHCP server.
    pub gateway: Ipv4Addr,
    /// The guest's address.
    pub guest: Ipv4Addr,
}

impl LocalLink {
    /// The link of interface `index` (0-based) of the VM with id `vm_id`.
    pub fn new(prefix: Ipv4Prefix, vm_id: u32, index: u32) -> Result<LocalLink, NetError> {
        let full = || NetError::LocalPrefixFull {
            prefix: prefix.to_string(),
            vm_id,
            index,
        };
        if index >= MAX_LOCAL_INTERFACES || prefix.len > 32 {
            return Err(full());
        }
        let host_bits = 32 - u32::from(prefix.len);
        let size: u64 = 1 << host_bits;
        let offset = (u64::from(vm_id) << 8) | u64::from((index + 1) * 2);
        if offset + 1 >= size {
            return Err(full());
        }
        let mask = if host_bits == 32 {
            0
        } else {
            u32::MAX << host_bits
        };
        let net = u32::from(prefix.addr) & mask;
        // `offset + 1 < size <= 2^32` was checked, so this fits.
        let gateway = net | offset as u32;
        Ok(LocalLink {
            gateway: Ipv4Addr::from(gateway),
            guest: Ipv4Addr::from(gateway + 1),
        })
    }

    /// The netmask of the link, 255.255.255.254.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX << (32 - LOCAL_LINK_PREFIX_LEN))
    }
}

/// The host-wide part of local interfaces: IPv4 forwarding and NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalNetwork {
    /// The `local prefix`.
    pub prefix: Ipv4Prefix,
}

impl LocalNetwork {
    /// Turns on IPv4 forwarding and masquerades traffic from `prefix` to
    /// anywhere outside it (nft table `ip kapsel-nat`). Idempotent; called
    /// at startup and on reload (a changed prefix replaces the rule).
    /// `local inet6` is not supported yet: it is logged as a warning and
    /// local interfaces get IPv4 only.
    pub fn ensure(prefix: Ipv4Prefix, inet6: Option<Ipv6Prefix>) -> Result<LocalNetwork, NetError> {
        if inet6.is_some() {
            tracing::warn!("{}", NetError::Inet6Unsupported);
        }
        write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
        nft::run(&nft::nat_script(prefix), "NAT of the local prefix")?;
        Ok(LocalNetwork { prefix })
    }

    /// Removes the NAT rules. IPv4 forwarding stays on: other software on
    /// the host may rely on it, and turning it off is the administrator's
    /// call.
    pub fn remove() -> Result<(), NetError> {
        nft::run(
            nft::remove_nat_script(),
            "removing the NAT of the local prefix",
        )
    }
}

fn write_sysctl(path: &str, value: &str) -> Result<(), NetError> {
    std::fs::write(path, value).map_err(|source| NetError::Sysctl {
        path: path.to_string(),
        source,
    })
}

/// The IPv4 name servers of `resolv_conf` (normally /etc/resolv.conf) that
/// a guest can reach: loopback resolvers such as systemd-resolved's
/// 127.0.0.53 are left out. An empty list means "offer the gateway", which
/// then has to run a resolver (vmd's advice too).
pub fn host_dns_servers(resolv_conf: &Path) -> Vec<Ipv4Addr> {
    let Ok(text) = std::fs::read_to_string(resolv_conf) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|w| w.parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback() && !a.is_unspecified())
        .take(3) // what resolv.conf itself honours (MAXNS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Ipv4Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_follow_vmd() {
        let l = LocalLink::new(Ipv4Prefix::default(), 1, 0).unwrap();
        assert_eq!(l.gateway, Ipv4Addr::new(100, 64, 1, 2));
        assert_eq!(l.guest, Ipv4Addr::new(100, 64, 1, 3));
        let l = LocalLink::new(Ipv4Prefix::default(), 2, 3).unwrap();
        assert_eq!(l.gateway, Ipv4Addr::new(100, 64, 2, 8));
        assert_eq!(l.guest, Ipv4Addr::new(100, 64, 2, 9));
        let l = LocalLink::new(Ipv4Prefix::default(), 300, 125).unwrap();
        assert_eq!(l.gateway, Ipv4Addr::new(100, 65, 44, 252));
        assert_eq!(l.netmask(), Ipv4Addr::new(255, 255, 255, 254));
    }

    #[test]
    fn host_bits_of_the_prefix_are_ignored() {
        let l = LocalLink::new(p("10.1.2.3/16"), 5, 0).unwrap();
        assert_eq!(l.gateway, Ipv4Addr::new(10, 1, 5, 2));
    }

    #[test]
    fn addresses_never_leave_the_prefix() {
        // /10: VM ids below 2^14.
        assert!(LocalLink::new(Ipv4Prefix::default(), 16383, 125).is_ok());
        assert!(LocalLink::new(Ipv4Prefix::default(), 16384, 0).is_err());
        assert!(LocalLink::new(Ipv4Prefix::default(), 1, 126).is_err());
        assert!(LocalLink::new(p("10.0.0.0/24"), 0, 0).is_ok());
        assert!(LocalLink::new(p("10.0.0.0/24"), 1, 0).is_err());
        assert!(LocalLink::new(p("10.0.0.0/31"), 0, 0).is_err());
        assert!(LocalLink::new(p("0.0.0.0/0"), u32::MAX, 125).is_err());
        let l = LocalLink::new(p("0.0.0.0/0"), 0xff_ffff, 125).unwrap();
        assert_eq!(l.guest, Ipv4Addr::new(255, 255, 255, 253));
    }

    #[test]
    fn distinct_interfaces_get_distinct_links() {
        let mut seen = std::collections::HashSet::new();
        for vm in 0..20 {
            for i in 0..MAX_LOCAL_INTERFACES {
                let l = LocalLink::new(Ipv4Prefix::default(), vm, i).unwrap();
                assert!(seen.insert(l.gateway) && seen.insert(l.guest));
                assert_eq!(u32::from(l.gateway) % 2, 0);
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_link_is_a_31_inside_the_prefix(
            addr in proptest::prelude::any::<u32>(),
            len in 0u8..=32,
            vm_id in proptest::prelude::any::<u32>(),
            index in 0u32..200,
        ) {
            let prefix = Ipv4Prefix { addr: Ipv4Addr::from(addr), len };
            if let Ok(l) = LocalLink::new(prefix, vm_id, index) {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                let (g, c) = (u32::from(l.gateway), u32::from(l.guest));
                proptest::prop_assert_eq!(g & mask, addr & mask);
                proptest::prop_assert_eq!(c & mask, addr & mask);
                proptest::prop_assert_eq!(g % 2, 0);
                proptest::prop_assert_eq!(c, g + 1);
                proptest::prop_assert!(index < MAX_LOCAL_INTERFACES);
            }
        }
    }

    #[test]
    fn loopback_resolvers_are_not_offered() {
        let dir = std::env::temp_dir().join(format!("kapsel-resolv-{}", std::process::id()));
        std::fs::write(
            &dir,
            "# comment\nnameserver 127.0.0.53\nnameserver 192.0.2.53\nnameserver ::1\n\
             nameserver 198.51.100.1\noptions edns0\n",
        )
        .unwrap();
        let got = host_dns_servers(&dir);
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(
            got,
            vec![Ipv4Addr::new(192, 0, 2, 53), Ipv4Addr::new(198, 51, 100, 1)]
        );
        assert!(host_dns_servers(Path::new("/nonexistent/resolv.conf")).is_empty());
    }
}
