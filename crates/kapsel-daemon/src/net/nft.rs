//! The nftables rules of Kapsel: MAC locking of guest ports and NAT of the
//! `local prefix`, written by running `nft -f -` with a script.
//!
//! Kapsel owns three tables and touches nothing else:
//!
//! - `bridge kapsel`: a `prerouting` chain that sends frames from a locked
//!   switch port (map `locked`: port name → `jump lock-PORT`) to a chain of
//!   that port, which drops frames and ARP packets whose source MAC is not
//!   the guest's;
//! - `ip kapsel`: the same for locked `local interface`s, which are routed,
//!   not bridged;
//! - `ip kapsel-nat`: masquerading of traffic from the `local prefix` to
//!   anywhere outside it.
//!
//! Each script is one nft transaction: it applies whole or not at all.
//! Removal scripts first `add` what they delete, so that removing something
//! already gone succeeds (Debian 12's nft 1.0.6 has no `destroy`).

use super::NetError;
use kapsel_config::{Ipv4Prefix, MacAddr};
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};

/// The nft table family a locked interface's rules live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Bridged frames (switch ports).
    Bridge,
    /// Routed packets (local interfaces).
    Ip,
}

impl Family {
    fn keyword(self) -> &'static str {
        match self {
            Family::Bridge => "bridge",
            Family::Ip => "ip",
        }
    }
}

/// Runs `nft -f -` with `script`; `context` names what it is for in errors.
pub fn run(script: &str, context: &str) -> Result<(), NetError> {
    let err = |detail: String| NetError::Nft {
        context: context.to_string(),
        detail,
    };
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            err(format!(
                "cannot run nft: {e}; install the nftables package (scripts/setup.sh does)"
            ))
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| err(format!("cannot write the rules to nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| err(format!("waiting for nft: {e}")))?;
    if !out.status.success() {
        return Err(err(format!(
            "nft exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The name of the chain holding the rules of port `ifname`. Interface
/// names may hold characters nft identifiers may not; those are hex-encoded.
pub fn lock_chain(ifname: &str) -> String {
    if ifname
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    {
        format!("lock-{ifname}")
    } else {
        let hex: String = ifname.bytes().map(|b| format!("{b:02x}")).collect();
        format!("lockx-{hex}")
    }
}

/// The table and the dispatching chain; idempotent. The chain is flushed
/// and refilled so that a table left by an older Kapsel gets today's rule.
fn base(family: Family) -> String {
    let f = family.keyword();
    let hook = match family {
        // Before the bridge's forwarding decision.
        Family::Bridge => "type filter hook prerouting priority -200",
        // Before routing and conntrack (raw priority).
        Family::Ip => "type filter hook prerouting priority -300",
    };
    format!(
        "add table {f} kapsel\n\
         add map {f} kapsel locked {{ type ifname : verdict; }}\n\
         add chain {f} kapsel prerouting {{ {hook}; policy accept; }}\n\
         flush chain {f} kapsel prerouting\n\
         add rule {f} kapsel prerouting iifname vmap @locked\n"
    )
}

/// Rules that drop what port `ifname` sends from any MAC but `mac`.
pub fn lock_script(family: Family, ifname: &str, mac: MacAddr) -> String {
    let f = family.keyword();
    let chain = lock_chain(ifname);
    let mut s = base(family);
    let _ = write!(
        s,
        "add chain {f} kapsel {chain}\n\
         flush chain {f} kapsel {chain}\n\
         add rule {f} kapsel {chain} ether saddr != {mac} drop\n"
    );
    if family == Family::Bridge {
        // ARP's own sender address too, or a guest could poison its
        // neighbours' caches while sending from its real MAC.
        let _ = writeln!(
            s,
            "add rule {f} kapsel {chain} ether type arp arp saddr ether != {mac} drop"
        );
    }
    let _ = writeln!(
        s,
        "add element {f} kapsel locked {{ \"{ifname}\" : jump {chain} }}"
    );
    s
}

/// Removes the rules of port `ifname`; succeeds when there were none.
pub fn unlock_script(family: Family, ifname: &str) -> String {
    let f = family.keyword();
    let chain = lock_chain(ifname);
    let mut s = base(family);
    let _ = write!(
        s,
        "add chain {f} kapsel {chain}\n\
         add element {f} kapsel locked {{ \"{ifname}\" : jump {chain} }}\n\
         delete element {f} kapsel locked {{ \"{ifname}\" }}\n\
         flush chain {f} kapsel {chain}\n\
         delete chain {f} kapsel {chain}\n"
    );
    s
}

/// Deletes Kapsel's locking table of `family` when no port is locked any
/// more, so that a host without locked guests has none of Kapsel's rules.
pub fn drop_unused_table(family: Family) -> Result<(), NetError> {
    let f = family.keyword();
    let out = Command::new("nft")
        .args(["list", "map", f, "kapsel", "locked"])
        .stderr(Stdio::null())
        .output();
    match out {
        // The map lists its entries after `elements =`; none: unused.
        Ok(o) if o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("elements") => {
            run(
                &format!("delete table {f} kapsel\n"),
                &format!("removing the unused table {f} kapsel"),
            )
        }
        // No table, no nft, or entries left: nothing to do.
        _ => Ok(()),
    }
}

/// Masquerading of `prefix` towards everything outside it; idempotent.
pub fn nat_script(prefix: Ipv4Prefix) -> String {
    format!(
        "add table ip kapsel-nat\n\
         add chain ip kapsel-nat postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         flush chain ip kapsel-nat postrouting\n\
         add rule ip kapsel-nat postrouting ip saddr {prefix} ip daddr != {prefix} masquerade\n"
    )
}

/// Removes the NAT table; succeeds when there was none.
pub fn remove_nat_script() -> &'static str {
    "add table ip kapsel-nat\ndelete table ip kapsel-nat\n"
}

/// Whether Kapsel's table of `family` has a lock chain for port `ifname`.
/// Without nft installed there can be none.
pub fn has_lock(family: Family, ifname: &str) -> Result<bool, NetError> {
    let status = Command::new("nft")
        .args([
            "list",
            "chain",
            family.keyword(),
            "kapsel",
            &lock_chain(ifname),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match status {
        Ok(s) => Ok(s.success()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(NetError::Nft {
            context: format!("listing the rules of {ifname}"),
            detail: format!("cannot run nft: {e}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_are_nft_identifiers() {
        assert_eq!(lock_chain("ktap1-0"), "lock-ktap1-0");
        assert_eq!(lock_chain("a@b"), "lockx-614062");
    }

    #[test]
    fn scripts_name_the_port_and_the_mac() {
        let mac = MacAddr([0xfe, 0xe1, 0xbb, 0, 0, 1]);
        let s = lock_script(Family::Bridge, "ktap1-0", mac);
        assert!(s.contains("ether saddr != fe:e1:bb:00:00:01 drop"));
        assert!(s.contains("arp saddr ether != fe:e1:bb:00:00:01 drop"));
        assert!(s.contains("\"ktap1-0\" : jump lock-ktap1-0"));
        let s = lock_script(Family::Ip, "ktap1-0", mac);
        assert!(!s.contains("arp"));
        let s = unlock_script(Family::Bridge, "ktap1-0");
        assert!(s.contains("delete chain bridge kapsel lock-ktap1-0"));
        let p = Ipv4Prefix::default();
        assert!(
            nat_script(p).contains("ip saddr 100.64.0.0/10 ip daddr != 100.64.0.0/10 masquerade")
        );
    }
}
