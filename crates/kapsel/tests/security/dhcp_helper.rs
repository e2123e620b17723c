//! A hostile guest against the code that parses its DHCP packets. The
//! attacker controls every byte a guest sends to port 67 of its local
//! interface; assume a parser bug gives it code execution in the process
//! that reads them. That process must not be kapseld (root, every
//! capability, the host's files and network), but the DHCP helper, which
//! holds nothing worth taking: no uid 0, no capability in any set,
//! no_new_privs, a seccomp allowlist, an empty root and network of its
//! own, no file it may write, and it dies with the daemon.

use crate::common::kapseld::{
    dhcp_container, dhcp_from, dhcp_helper_of, dhcp_lease, pid_of, proc_status, process_state,
    wait_dhcp_helper, Kapseld, Netns,
};
use crate::ctcommon;
use std::process::Command;

/// The inodes of the UDP sockets bound to port 67 in `pid`'s network
/// namespace.
fn dhcp_sockets(pid: u32) -> Vec<String> {
    let udp = std::fs::read_to_string(format!("/proc/{pid}/net/udp")).unwrap_or_default();
    udp.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1)?.ends_with(":0043")).then(|| f.get(9).map(|s| s.to_string()))?
        })
        .collect()
}

/// Whether `pid` holds one of the `sockets`.
fn holds(pid: i32, sockets: &[String]) -> bool {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    dir.flatten().any(|e| {
        std::fs::read_link(e.path()).is_ok_and(|l| {
            let l = l.to_string_lossy().into_owned();
            sockets.iter().any(|s| l == format!("socket:[{s}]"))
        })
    })
}

#[test]
fn a_guest_owning_the_dhcp_parser_gains_nothing() {
    if !ctcommon::ready() {
        return;
    }
    if Command::new("nft").arg("--version").output().is_err() {
        println!("SKIP: nft (Debian: nftables) is not installed");
        return;
    }
    let Some(ns) = Netns::create("secdhcp") else {
        return;
    };
    let root = ctcommon::Rootfs::new("sec-dhcp");
    let name = ctcommon::name("secdhcp");
    let mut d = Kapseld::start_in(Some(&ns.0), &dhcp_container(&name, &root.path));
    let text = d.console_text(&name, "LEASE");
    assert!(text.contains("LEASE ip=100.64.1.3"), "{text}\n{}", d.log());
    let ct = pid_of(&d.wait_state(&name, "running"));
    let daemon = d.child.as_ref().unwrap().id();
    let sockets = dhcp_sockets(daemon);
    assert!(!sockets.is_empty(), "no socket on port 67:\n{}", d.log());

    // Who reads the guest's packets.
    let Some(helper) = dhcp_helper_of(daemon) else {
        panic!(
            "no DHCP helper: kapseld (pid {daemon}, uid 0, every capability) reads the guest's \
             DHCP packets itself"
        );
    };
    assert!(
        holds(helper, &sockets),
        "the DHCP helper does not hold the port-67 socket"
    );
    assert!(dhcp_from(ct, 5), "no lease:\n{}", d.log());

    // What code execution there would get.
    let status = |f: &str| proc_status(helper, f).unwrap_or_default();
    for ids in ["Uid", "Gid"] {
        let v = status(ids);
        assert!(
            !v.is_empty() && v.split_whitespace().all(|id| id != "0"),
            "{ids}: {v}"
        );
    }
    assert_eq!(status("Groups"), "", "supplementary groups");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status(set), "0000000000000000", "{set}");
    }
    assert_eq!(status("NoNewPrivs"), "1");
    assert_eq!(status("Seccomp"), "2", "no seccomp filter");
    // An empty root: no host file to read, no binary to run.
    let seen: Vec<_> = std::fs::read_dir(format!("/proc/{helper}/root"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(seen.is_empty(), "the helper's root holds {seen:?}");
    // Its own mount and network namespaces: the host's interfaces,
    // sockets and the daemon's control socket are out of reach.
    for kind in ["mnt", "net", "ipc"] {
        let of = |pid: String| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok();
        assert_ne!(
            of(helper.to_string()),
            of(daemon.to_string()),
            "the helper shares the daemon's {kind} namespace"
        );
    }
    let limits = std::fs::read_to_string(format!("/proc/{helper}/limits")).unwrap();
    for (limit, want) in [
        ("Max file size", "0"),
        ("Max core file size", "0"),
        ("Max processes", "0"),
    ] {
        let line = limits.lines().find(|l| l.starts_with(limit)).unwrap();
        assert_eq!(
            line.split_whitespace().nth(limit.split(' ').count()),
            Some(want),
            "{line}"
        );
    }
    // Its descriptors: stdin/stdout/stderr, the daemon's connection and the
    // interface's socket; nothing else of the daemon's.
    let fds = std::fs::read_dir(format!("/proc/{helper}/fd"))
        .unwrap()
        .count();
    assert!(fds <= 5, "the helper holds {fds} descriptors");
    println!(
        "DHCP helper pid {helper}: VmRSS {}, VmData {}, VmSize {}",
        status("VmRSS"),
        status("VmData"),
        status("VmSize")
    );

    // It dies with its daemon (kill -9: no clean-up runs), and the next
    // daemon serves the guest, which outlived both, the same address.
    let mut child = d.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let gone = ctcommon::eventually(5, || process_state(helper).is_none_or(|s| s == 'Z'));
    assert!(gone, "the DHCP helper outlived its daemon");
    d.spawn();
    let daemon = d.child.as_ref().unwrap().id();
    d.wait_state(&name, "running");
    assert!(wait_dhcp_helper(daemon, None, 10).is_some(), "{}", d.log());
    assert_eq!(
        dhcp_lease(ct, 5).as_deref(),
        Some("100.64.1.3"),
        "{}",
        d.log()
    );
}
