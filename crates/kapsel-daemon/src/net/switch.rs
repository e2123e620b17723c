//! Switches: one Linux bridge per `switch` block.
//!
//! The bridge is the switch's `interface` when it names one, else a name
//! derived from the switch name (see [`bridge_name`]). A bridge Kapsel
//! creates carries the alias `kapsel switch NAME`; only such bridges are
//! deleted by [`remove_switch`], so a bridge the administrator made (and
//! named with `interface br0`) survives Kapsel, losing only the ports Kapsel
//! added to it.

use super::{fnv1a, kernel, validate_ifname, NetError, IFNAMSIZ};
use kapsel_config::{MacAddr, SwitchSpec};
use kapsel_host::netlink::Netlink;

/// The prefix of bridge names Kapsel derives from switch names.
pub const BRIDGE_PREFIX: &str = "kbr-";
/// The alias that marks a bridge as created by Kapsel.
const ALIAS_PREFIX: &str = "kapsel switch ";

/// The bridge of `spec`: its `interface` when it names one, else `kbr-` and
/// the switch name when that is at most 11 characters of `[A-Za-z0-9_.-]`,
/// else `kbr-`, the first 5 such characters, `-` and 5 hex digits of a
/// stable hash of the whole name (15 characters, the kernel's limit).
pub fn bridge_name(spec: &SwitchSpec) -> Result<String, NetError> {
    if let Some(name) = &spec.interface {
        validate_ifname(name)?;
        return Ok(name.to_string());
    }
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.';
    let name = &spec.name;
    if !name.is_empty() && name.len() <= IFNAMSIZ - BRIDGE_PREFIX.len() && name.chars().all(plain) {
        return Ok(format!("{BRIDGE_PREFIX}{name}"));
    }
    let head: String = name.chars().filter(|c| plain(*c)).take(5).collect();
    let hash = fnv1a(&[name.as_bytes()]) & 0xf_ffff;
    Ok(format!("{BRIDGE_PREFIX}{head}-{hash:05x}"))
}

/// The MAC address of a bridge Kapsel creates: `fe:e1:ba:d1` and 16 bits of
/// a stable hash of the switch name (vmd gives host-side interfaces
/// `fe:e1:ba:d0:xx:xx`; guests get `fe:e1:bb:...`, see [`super::guest_mac`]).
pub fn bridge_mac(switch: &str) -> MacAddr {
    let h = fnv1a(&[switch.as_bytes()]).to_le_bytes();
    MacAddr([0xfe, 0xe1, 0xba, 0xd1, h[0], h[1]])
}

/// A switch as it stands on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    /// The switch name from vm.conf.
    pub name: String,
    /// The bridge device.
    pub bridge: String,
    /// The bridge's interface index.
    pub index: u32,
    /// Whether this call created the bridge (false: it was there already,
    /// e.g. after a daemon restart).
    pub created: bool,
}

/// Makes the bridge of `spec` exist, with its `add` interfaces as ports,
/// up or down as the switch says. Idempotent: a daemon restart or a reload
/// finds the bridge and only fixes what differs. The daemon calls it for
/// enabled switches only. `group` and `rdomain` are OpenBSD's and ignored
/// (the config checks warn about them).
pub fn ensure_switch(spec: &SwitchSpec) -> Result<Switch, NetError> {
    let bridge = bridge_name(spec)?;
    let mut nl = Netlink::open().map_err(kernel("opening a netlink socket"))?;
    let ctx = |what: &str| format!("switch \"{}\": {what} bridge {bridge}", spec.name);
    let mut created = false;
    let link = match nl.link(&bridge).map_err(kernel(ctx("looking up")))? {
        Some(link) => link,
        None => {
            match nl.create_link(&bridge, "bridge") {
                Ok(()) => created = true,
                // Created concurrently: checked as an existing one below.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(kernel(ctx("creating"))(e)),
            }
            nl.link(&bridge)
                .map_err(kernel(ctx("looking up")))?
                .ok_or_else(|| NetError::MissingInterface {
                    owner: format!("switch \"{}\"", spec.name),
                    ifname: bridge.clone(),
                    fix: "it vanished right after it was created; is another program \
                          deleting bridges?"
                        .into(),
                })?
        }
    };
    if link.kind.as_deref() != Some("bridge") {
        return Err(NetError::NotABridge {
            switch: spec.name.clone(),
            ifname: bridge,
            kind: link.kind.unwrap_or_else(|| "plain".into()),
        });
    }
    if created {
        nl.set_alias(link.index, &format!("{ALIAS_PREFIX}{}", spec.name))
            .map_err(kernel(ctx("naming")))?;
        // A bridge without a MAC of its own takes the lowest of its ports',
        // so it would change whenever a VM starts or stops; a fixed one
        // keeps the neighbours' ARP caches right.
        nl.set_mac(link.index, bridge_mac(&spec.name).0)
            .map_err(kernel(ctx("setting the MAC address of")))?;
    }
    for member in &spec.members {
        validate_ifname(member)?;
        let port = nl
            .link(member)
            .map_err(kernel(format!("bridge {bridge}: looking up {member}")))?
            .ok_or_else(|| NetError::MissingInterface {
                owner: format!("bridge {bridge}"),
                ifname: member.clone(),
                fix: format!(
                    "fix the `add {member}` line of switch \"{}\" or create {member} first",
                    spec.name
                ),
            })?;
        match port.master {
            Some(m) if m == link.index => {}
            Some(m) => {
                let other = nl
                    .link_by_index(m)
                    .ok()
                    .flatten()
                    .map_or_else(|| format!("interface #{m}"), |l| l.name);
                return Err(NetError::PortOfOtherBridge {
                    bridge,
                    ifname: member.clone(),
                    other,
                });
            }
            None => nl
                .set_master(port.index, Some(link.index))
                .map_err(kernel(format!("bridge {bridge}: adding port {member}")))?,
        }
    }
    if link.is_up() != spec.up {
        nl.set_up(link.index, spec.up)
            .map_err(kernel(ctx(if spec.up {
                "bringing up"
            } else {
                "bringing down"
            })))?;
    }
    Ok(Switch {
        name: spec.name.clone(),
        bridge,
        index: link.index,
        created,
    })
}

/// Takes the switch of `spec` off the host: deletes its bridge if Kapsel
/// created it (ports are released by the kernel; VM taps stay, unbridged,
/// until their VMs stop), or else takes the `add` interfaces out of the
/// administrator's bridge. Removing a switch that is not there succeeds.
pub fn remove_switch(spec: &SwitchSpec) -> Result<(), NetError> {
    let bridge = bridge_name(spec)?;
    let mut nl = Netlink::open().map_err(kernel("opening a netlink socket"))?;
    let ctx = |what: &str| format!("switch \"{}\": {what} bridge {bridge}", spec.name);
    let Some(link) = nl.link(&bridge).map_err(kernel(ctx("looking up")))? else {
        return Ok(());
    };
    if link.kind.as_deref() != Some("bridge") {
        return Ok(()); // not ours, whatever it is
    }
    if link
        .alias
        .as_deref()
        .is_some_and(|a| a.starts_with(ALIAS_PREFIX))
    {
        return nl.delete_link(link.index).map_err(kernel(ctx("deleting")));
    }
    for member in &spec.members {
        if let Some(port) = nl.link(member).ok().flatten() {
            if port.master == Some(link.index) {
                nl.set_master(port.index, None)
                    .map_err(kernel(format!("bridge {bridge}: removing port {member}")))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> SwitchSpec {
        SwitchSpec::new(name)
    }

    #[test]
    fn short_plain_names_are_kept() {
        assert_eq!(bridge_name(&spec("uplink")).unwrap(), "kbr-uplink");
        assert_eq!(
            bridge_name(&spec("12345678901")).unwrap(),
            "kbr-12345678901"
        );
    }

    #[test]
    fn long_or_odd_names_are_hashed_to_fifteen_characters() {
        let a = bridge_name(&spec("a-very-long-switch-name")).unwrap();
        let b = bridge_name(&spec("a-very-long-switch-other")).unwrap();
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("kbr-a-ver-"), "{a}");
        assert_ne!(a, b);
        let odd = bridge_name(&spec("lan 2")).unwrap();
        assert!(odd.starts_with("kbr-lan2-"), "{odd}");
        assert!(validate_ifname(&odd).is_ok());
        // Stable across releases: the daemon must find it again after an upgrade.
        assert_eq!(a, bridge_name(&spec("a-very-long-switch-name")).unwrap());
    }

    proptest::proptest! {
        #[test]
        fn any_switch_name_gives_a_valid_bridge_name(name in "\\PC{0,80}") {
            let b = bridge_name(&spec(&name)).unwrap();
            proptest::prop_assert!(validate_ifname(&b).is_ok(), "{b}");
            proptest::prop_assert!(b.starts_with(BRIDGE_PREFIX));
        }
    }

    #[test]
    fn an_interface_line_names_the_bridge() {
        let mut s = spec("uplink");
        s.interface = Some("br0".into());
        assert_eq!(bridge_name(&s).unwrap(), "br0");
        s.interface = Some("bridge-name-too-long".into());
        assert!(matches!(
            bridge_name(&s),
            Err(NetError::InvalidIfname { .. })
        ));
    }
}
