//! The host networking library, for real: bridges, taps, veths, nftables
//! rules, NAT and the DHCP server, each test in network namespaces of its
//! own (the host's namespace is never touched). Frames go through the taps
//! exactly as a VM's would: written to and read from the tap descriptor,
//! behind a virtio-net header. Needs root, `ip` and `nft`; the DHCP test
//! also busybox (udhcpc). Without them each test prints `SKIP: reason`.

use kapsel_config::{InterfaceSpec, Ipv4Prefix, MacAddr, SwitchSpec};
use kapsel_daemon::net::{
    self, GuestInterface, InterfaceKind, InterfaceRequest, LocalNetwork, NetError, TapDevice,
    TAP_VNET_HDR_LEN,
};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Why these tests cannot run here, if they cannot.
fn skip_reason(need_busybox: bool) -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces, bridges and taps need CAP_NET_ADMIN)");
    }
    let works = |prog: &str, arg: &str| {
        Command::new(prog)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !works("ip", "-V") {
        return Some("`ip` (iproute2) is not installed; run scripts/setup.sh");
    }
    if !works("nft", "--version") {
        return Some("`nft` (nftables) is not installed; run scripts/setup.sh");
    }
    if need_busybox && !works("busybox", "--help") {
        return Some("busybox is not installed; run scripts/setup.sh");
    }
    None
}

macro_rules! skip_unless_able {
    ($busybox:expr) => {
        if let Some(reason) = skip_reason($busybox) {
            eprintln!("SKIP: {reason}");
            return;
        }
    };
}

/// A named network namespace (`ip netns`), deleted on drop.
struct Netns {
    name: String,
}

static NEXT_NS: AtomicU32 = AtomicU32::new(0);

impl Netns {
    fn new() -> Netns {
        let name = format!(
            "kapsel-t{}-{}",
            std::process::id(),
            NEXT_NS.fetch_add(1, Ordering::Relaxed)
        );
        run(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command in the namespace; panics unless it succeeds.
    fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        String::from_utf8_lossy(&run(&full).stdout).into_owned()
    }

    /// Runs a command in the namespace, whatever its outcome.
    fn try_exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("running ip netns exec")
    }

    /// `ip -n NS ARGS`.
    fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        String::from_utf8_lossy(&run(&full).stdout).into_owned()
    }

    /// Whether the namespace has an interface called `ifname`.
    fn has_link(&self, ifname: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.name, "link", "show", ifname])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// The namespace's whole nftables ruleset.
    fn ruleset(&self) -> String {
        self.exec(&["nft", "list", "ruleset"])
    }

    /// Runs `f` on a thread inside the namespace: everything the library
    /// does from there (netlink, nft, /proc/sys/net) acts on this namespace.
    fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).expect("opening the namespace");
                // SAFETY: setns on a valid namespace fd; it changes only the
                // network namespace of this (scoped, short-lived) thread.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Runs a command; panics with its output unless it succeeds.
fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

const ETHERTYPE_TEST: u16 = 0x88b5; // IEEE local experimental

/// A broadcast test frame from `src`, behind an all-zero virtio-net header.
fn test_frame(src: MacAddr, marker: u8) -> Vec<u8> {
    let mut f = vec![0u8; TAP_VNET_HDR_LEN];
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&ETHERTYPE_TEST.to_be_bytes());
    f.extend_from_slice(b"kapsel test frame ");
    f.push(marker);
    f.resize(TAP_VNET_HDR_LEN + 60, 0);
    f
}

/// Reads frames from `tap` for up to `wait`; returns the first (without
/// its virtio-net header) that `pick` accepts. Other traffic (IPv6
/// neighbour discovery of the namespace) is skipped.
fn read_frame_where(
    tap: &TapDevice,
    wait: Duration,
    pick: impl Fn(&[u8]) -> bool,
) -> Option<Vec<u8>> {
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 65_536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let mut pfd = libc::pollfd {
            fd: tap.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) };
        match tap.read_frame(&mut buf) {
            Ok(n) if n > TAP_VNET_HDR_LEN => {
                let frame = &buf[TAP_VNET_HDR_LEN..n];
                if pick(frame) {
                    return Some(frame.to_vec());
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("reading {}: {e}", tap.name()),
        }
    }
}

/// The markers of the test frames read from `tap` up to and including
/// `last`; panics if `last` does not come within `wait`.
fn markers_until(tap: &TapDevice, last: u8, wait: Duration) -> Vec<u8> {
    let seen = std::cell::RefCell::new(Vec::new());
    read_frame_where(tap, wait, |f| {
        let is_test = f.len() > 32 && f[12..14] == ETHERTYPE_TEST.to_be_bytes();
        if is_test {
            seen.borrow_mut().push(f[14 + 18]);
        }
        is_test && f[14 + 18] == last
    })
    .unwrap_or_else(|| panic!("test frame {last} did not arrive"));
    seen.into_inner()
}

fn is_test_frame(marker: u8) -> impl Fn(&[u8]) -> bool {
    move |f: &[u8]| {
        f.len() > 32 && f[12..14] == ETHERTYPE_TEST.to_be_bytes() && f[14 + 18] == marker
    }
}

fn switch_iface(switch: &str) -> InterfaceSpec {
    InterfaceSpec {
        switch: Some(switch.into()),
        ..InterfaceSpec::default()
    }
}

fn request<'a>(
    guest: &'a str,
    guest_id: u32,
    spec: &'a InterfaceSpec,
    switch: Option<&'a SwitchSpec>,
    dns: &'a [Ipv4Addr],
) -> InterfaceRequest<'a> {
    InterfaceRequest {
        guest,
        guest_id,
        index: 0,
        spec,
        switch,
        local_prefix: Ipv4Prefix::default(),
        dns,
    }
}

#[test]
fn two_taps_on_a_switch_exchange_frames_and_a_locked_port_drops_spoofed_ones() {
    skip_unless_able!(false);
    let ns = Netns::new();
    let mut sw = SwitchSpec::new("t-lan");
    sw.locked_lladdr = false; // vm "a" locks itself; "b" stays open as a control
    let spec_a = InterfaceSpec {
        locked: true,
        ..switch_iface("t-lan")
    };
    let spec_b = switch_iface("t-lan");

    let (a, b): (GuestInterface, GuestInterface) = ns.run_in(|| {
        let first = net::ensure_switch(&sw).unwrap();
        assert_eq!(first.bridge, "kbr-t-lan");
        assert!(first.created);
        // A daemon restart finds the bridge instead of failing.
        let again = net::ensure_switch(&sw).unwrap();
        assert!(!again.created);
        assert_eq!(again.index, first.index);
        let a = net::start_vm_interface(&request("a", 1, &spec_a, Some(&sw), &[])).unwrap();
        let b = net::start_vm_interface(&request("b", 2, &spec_b, Some(&sw), &[])).unwrap();
        (a, b)
    });
    assert_eq!(a.ifname, "ktap1-0");
    assert_eq!(b.ifname, "ktap2-0");
    assert!(a.locked && !b.locked);
    assert_eq!(a.bridge.as_deref(), Some("kbr-t-lan"));
    let links = ns.ip(&["-o", "link", "show", "master", "kbr-t-lan"]);
    assert!(
        links.contains("ktap1-0") && links.contains("ktap2-0"),
        "{links}"
    );
    assert!(ns
        .ip(&["-o", "link", "show", "kbr-t-lan"])
        .contains("state UP"));

    let tap_a = a.tap.as_ref().unwrap();
    let tap_b = b.tap.as_ref().unwrap();
    let spoofed = MacAddr([0x02, 0, 0, 0, 0, 0x66]);
    let wait = Duration::from_millis(1500);

    // A frame from the guest's own MAC crosses the switch.
    tap_a.write_frame(&test_frame(a.mac, 1)).unwrap();
    let got = read_frame_where(tap_b, wait, is_test_frame(1)).expect("frame 1 not forwarded");
    assert_eq!(&got[6..12], &a.mac.0);

    // One from another MAC does not: the port is locked.
    tap_a.write_frame(&test_frame(spoofed, 2)).unwrap();
    // The unlocked port forwards anything, which shows the drop above is
    // the lock and not a broken bridge.
    tap_b.write_frame(&test_frame(spoofed, 3)).unwrap();
    assert!(read_frame_where(tap_a, wait, is_test_frame(3)).is_some());
    assert!(
        read_frame_where(tap_b, Duration::from_millis(300), is_test_frame(2)).is_none(),
        "the locked port let a spoofed frame through"
    );
    // And the locked port still works afterwards.
    tap_a.write_frame(&test_frame(a.mac, 4)).unwrap();
    assert!(read_frame_where(tap_b, wait, is_test_frame(4)).is_some());
    assert!(ns.ruleset().contains("lock-ktap1-0"));

    // VM stop: the VM process exits (its descriptors close), the daemon releases.
    drop(a);
    drop(b);
    ns.run_in(|| {
        net::release_interface("ktap1-0", InterfaceKind::Tap).unwrap();
        net::release_interface("ktap2-0", InterfaceKind::Tap).unwrap();
        // Twice is fine: a restarted daemon may release what is gone.
        net::release_interface("ktap1-0", InterfaceKind::Tap).unwrap();
    });
    assert!(!ns.has_link("ktap1-0") && !ns.has_link("ktap2-0"));
    // The last locked port took Kapsel's rules with it.
    assert_eq!(ns.ruleset().trim(), "");

    // Shutdown: nothing is left.
    ns.run_in(|| {
        net::remove_switch(&sw).unwrap();
        net::remove_switch(&sw).unwrap();
        net::remove_firewall().unwrap();
    });
    assert!(!ns.has_link("kbr-t-lan"));
    assert_eq!(ns.ruleset().trim(), "");
}

#[test]
fn a_switch_locked_lladdr_locks_every_port() {
    skip_unless_able!(false);
    let ns = Netns::new();
    let mut sw = SwitchSpec::new("t-dmz");
    sw.locked_lladdr = true;
    let spec = switch_iface("t-dmz");
    let (a, b) = ns.run_in(|| {
        net::ensure_switch(&sw).unwrap();
        let a = net::start_vm_interface(&request("a", 1, &spec, Some(&sw), &[])).unwrap();
        let b = net::start_vm_interface(&request("b", 2, &spec, Some(&sw), &[])).unwrap();
        (a, b)
    });
    assert!(a.locked && b.locked);
    let (tap_a, tap_b) = (a.tap.as_ref().unwrap(), b.tap.as_ref().unwrap());
    // Spoofed, then genuine: everything up to the genuine one is what the
    // switch let through.
    tap_b
        .write_frame(&test_frame(MacAddr([2, 0, 0, 0, 0, 7]), 5))
        .unwrap();
    tap_b.write_frame(&test_frame(b.mac, 6)).unwrap();
    let seen = markers_until(tap_a, 6, Duration::from_millis(1500));
    assert_eq!(
        seen,
        vec![6],
        "port b of a locked switch let a spoofed frame through"
    );
    tap_a
        .write_frame(&test_frame(MacAddr([2, 0, 0, 0, 0, 8]), 7))
        .unwrap();
    tap_a.write_frame(&test_frame(a.mac, 8)).unwrap();
    let seen = markers_until(tap_b, 8, Duration::from_millis(1500));
    assert_eq!(
        seen,
        vec![8],
        "port a of a locked switch let a spoofed frame through"
    );
}

#[test]
fn switch_ports_states_and_errors_name_the_fix() {
    skip_unless_able!(false);
    let ns = Netns::new();
    ns.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up0p"]);
    let mut sw = SwitchSpec::new("uplink");
    sw.interface = Some("br-t".into());
    sw.members = vec!["up0".into()];
    sw.up = false;
    ns.run_in(|| net::ensure_switch(&sw)).unwrap();
    assert!(ns
        .ip(&["-o", "link", "show", "up0"])
        .contains("master br-t"));
    assert!(!ns.ip(&["-o", "link", "show", "br-t"]).contains(",UP"));
    sw.up = true;
    ns.run_in(|| net::ensure_switch(&sw)).unwrap();
    assert!(ns.ip(&["-o", "link", "show", "br-t"]).contains(",UP"));

    // A missing port names itself and the line to fix.
    let mut missing = sw.clone();
    missing.members = vec!["eth9".into()];
    let e = ns.run_in(|| net::ensure_switch(&missing)).unwrap_err();
    assert!(matches!(e, NetError::MissingInterface { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("bridge br-t: interface eth9 does not exist")
            && msg.contains("`add eth9` line of switch \"uplink\""),
        "{msg}"
    );
    // A port of another bridge is not stolen.
    let mut other = SwitchSpec::new("other");
    other.members = vec!["up0".into()];
    let e = ns.run_in(|| net::ensure_switch(&other)).unwrap_err();
    assert!(e.to_string().contains("already a port of br-t"), "{e}");
    // `interface` naming something that is not a bridge.
    let mut notbr = SwitchSpec::new("odd");
    notbr.interface = Some("up0p".into());
    let e = ns.run_in(|| net::ensure_switch(&notbr)).unwrap_err();
    assert!(matches!(e, NetError::NotABridge { .. }), "{e}");
    assert!(e
        .to_string()
        .contains("up0p exists and is a veth interface"));

    // Kapsel's bridge goes away on removal; the administrator's stays and
    // only loses the ports Kapsel added.
    ns.run_in(|| net::remove_switch(&sw)).unwrap();
    assert!(!ns.has_link("br-t"));
    assert!(ns.has_link("up0"));
    ns.ip(&["link", "add", "br-admin", "type", "bridge"]);
    let mut admin = SwitchSpec::new("admin");
    admin.interface = Some("br-admin".into());
    admin.members = vec!["up0".into()];
    ns.run_in(|| net::ensure_switch(&admin)).unwrap();
    assert!(ns
        .ip(&["-o", "link", "show", "up0"])
        .contains("master br-admin"));
    ns.run_in(|| net::remove_switch(&admin)).unwrap();
    assert!(ns.has_link("br-admin"));
    assert!(!ns.ip(&["-o", "link", "show", "up0"]).contains("master"));
}

#[test]
fn a_tap_on_a_missing_switch_is_an_error_and_leaves_no_tap() {
    skip_unless_able!(false);
    let ns = Netns::new();
    let sw = SwitchSpec::new("nowhere");
    let spec = InterfaceSpec {
        locked: true,
        ..switch_iface("nowhere")
    };
    let e = ns
        .run_in(|| net::start_vm_interface(&request("vm", 3, &spec, Some(&sw), &[])))
        .unwrap_err();
    assert!(e.to_string().contains("kbr-nowhere does not exist"), "{e}");
    assert!(!ns.has_link("ktap3-0"));
    assert!(!ns.ruleset().contains("lock-ktap3-0"));

    // A tap name taken by another kind of interface.
    ns.ip(&["link", "add", "dum0", "type", "bridge"]);
    let taken = InterfaceSpec {
        name: Some("dum0".into()),
        ..InterfaceSpec::default()
    };
    let e = ns
        .run_in(|| net::start_vm_interface(&request("vm", 3, &taken, None, &[])))
        .unwrap_err();
    assert!(
        e.to_string().contains("tap dum0") && e.to_string().contains("not a tap"),
        "{e}"
    );
    // A container whose veth is missing.
    let e = ns
        .run_in(|| net::attach_veth(&request("ct", 5, &taken, None, &[]), "nosuchveth"))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("interface nosuchveth does not exist"),
        "{e}"
    );
}

/// Reads `udhcpc`'s report written by the script below.
const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
bound|renew)
    ip addr add "$ip/$mask" dev "$interface"
    ip route add default via "$router" dev "$interface"
    echo "ip=$ip subnet=$subnet router=$router dns=$dns serverid=$serverid hostname=$hostname" > "$KAPSEL_OUT"
    ;;
esac
exit 0
"#;

#[test]
fn a_local_interface_gets_its_address_from_dhcp_and_reaches_out_through_nat() {
    skip_unless_able!(true);
    let host = Netns::new();
    let guest = Netns::new();
    let outside = Netns::new();
    // The container's veth pair, its end in the guest namespace as eth0.
    host.ip(&["link", "add", "kv1", "type", "veth", "peer", "name", "kv1p"]);
    host.ip(&["link", "set", "kv1p", "netns", &guest.name]);
    guest.ip(&["link", "set", "kv1p", "name", "eth0"]);
    // The host's uplink to an "outside" that has no route back to the
    // local prefix: only masquerading makes replies come back.
    host.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "op0"]);
    host.ip(&["link", "set", "op0", "netns", &outside.name]);
    host.ip(&["addr", "add", "192.0.2.1/24", "dev", "up0"]);
    host.ip(&["link", "set", "up0", "up"]);
    outside.ip(&["addr", "add", "192.0.2.2/24", "dev", "op0"]);
    outside.ip(&["link", "set", "op0", "up"]);

    let spec = InterfaceSpec {
        local: true,
        locked: true,
        ..InterfaceSpec::default()
    };
    let dns = [Ipv4Addr::new(192, 0, 2, 53)];
    let iface = host.run_in(|| {
        LocalNetwork::ensure(Ipv4Prefix::default(), None).unwrap();
        net::attach_veth(&request("ct1", 1, &spec, None, &dns), "kv1").unwrap()
    });
    let link = iface.local.unwrap();
    assert_eq!(link.gateway, Ipv4Addr::new(100, 64, 1, 2));
    assert_eq!(link.guest, Ipv4Addr::new(100, 64, 1, 3));
    assert!(host
        .ip(&["-o", "addr", "show", "kv1"])
        .contains("100.64.1.2/31"));
    let mac = iface.mac.to_string();
    guest.ip(&["link", "set", "eth0", "address", &mac]);
    guest.ip(&["link", "set", "eth0", "up"]);
    let server = iface.dhcp.unwrap().spawn().unwrap();

    let dir = std::env::temp_dir().join(format!("kapsel-dhcp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("udhcpc.sh");
    let out = dir.join("lease");
    std::fs::write(&script, UDHCPC_SCRIPT).unwrap();
    run(&["chmod", "755", script.to_str().unwrap()]);
    let dhcp = Command::new("ip")
        .args(["netns", "exec", &guest.name])
        .args(["busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n"])
        .args(["-t", "5", "-T", "1", "-s", script.to_str().unwrap()])
        .env("KAPSEL_OUT", &out)
        .output()
        .unwrap();
    let lease = std::fs::read_to_string(&out).unwrap_or_default();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        dhcp.status.success(),
        "udhcpc failed: {}",
        String::from_utf8_lossy(&dhcp.stderr)
    );
    assert_eq!(
        lease.trim(),
        "ip=100.64.1.3 subnet=255.255.255.254 router=100.64.1.2 dns=192.0.2.53 \
         serverid=100.64.1.2 hostname=ct1"
    );

    let ping = |ns: &Netns, to: &str| {
        ns.try_exec(&["busybox", "ping", "-c", "1", "-W", "2", to])
            .status
            .success()
    };
    assert!(
        ping(&guest, "100.64.1.2"),
        "the guest cannot reach its gateway"
    );
    assert!(ping(&guest, "192.0.2.2"), "no NAT to the outside");

    // Locked: the same guest with another MAC is cut off.
    guest.ip(&["link", "set", "eth0", "address", "02:00:00:00:00:99"]);
    assert!(!ping(&guest, "100.64.1.2"), "a spoofed MAC got through");
    guest.ip(&["link", "set", "eth0", "address", &mac]);
    assert!(ping(&guest, "100.64.1.2"));

    // Stop and shutdown leave no rules behind.
    drop(server);
    host.run_in(|| {
        net::release_interface("kv1", InterfaceKind::Veth).unwrap();
        LocalNetwork::remove().unwrap();
    });
    assert_eq!(host.ruleset().trim(), "");
}

/// A DHCPDISCOVER from `mac` as a guest sends it: Ethernet, IPv4 and UDP
/// headers, behind a virtio-net header.
fn dhcp_discover_frame(mac: MacAddr) -> Vec<u8> {
    let mut dhcp = vec![0u8; 240];
    dhcp[0] = 1; // BOOTREQUEST
    dhcp[1] = 1;
    dhcp[2] = 6;
    dhcp[4..8].copy_from_slice(&[1, 2, 3, 4]);
    dhcp[28..34].copy_from_slice(&mac.0);
    dhcp[236..240].copy_from_slice(&[99, 130, 83, 99]);
    dhcp.extend_from_slice(&[53, 1, 1, 255]);
    let udp_len = 8 + dhcp.len();
    let mut udp = Vec::new();
    udp.extend_from_slice(&68u16.to_be_bytes());
    udp.extend_from_slice(&67u16.to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]); // no checksum (allowed over IPv4)
    udp.extend_from_slice(&dhcp);
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&[0, 0, 0, 0]);
    ip.extend_from_slice(&[255, 255, 255, 255]);
    let sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    let csum = !((folded & 0xffff) + (folded >> 16)) as u16;
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    let mut frame = vec![0u8; TAP_VNET_HDR_LEN];
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&mac.0);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&udp);
    frame
}

#[test]
fn a_vm_local_interface_answers_dhcp_through_its_tap() {
    skip_unless_able!(false);
    let ns = Netns::new();
    let spec = InterfaceSpec {
        local: true,
        ..InterfaceSpec::default()
    };
    let mut iface = ns.run_in(|| {
        LocalNetwork::ensure(Ipv4Prefix::default(), None).unwrap();
        net::start_vm_interface(&InterfaceRequest {
            index: 2,
            ..request("vm7", 7, &spec, None, &[])
        })
        .unwrap()
    });
    assert_eq!(iface.ifname, "ktap7-2");
    let link = iface.local.unwrap();
    assert_eq!(link.gateway, Ipv4Addr::new(100, 64, 7, 6));
    let server = iface.dhcp.take().unwrap().spawn().unwrap();
    let tap = iface.tap.take().unwrap();
    tap.write_frame(&dhcp_discover_frame(iface.mac)).unwrap();
    // The OFFER: UDP to port 68, yiaddr the guest side of the /31.
    let offer = read_frame_where(&tap, Duration::from_secs(2), |f| {
        f.len() > 14 + 20 + 8 + 240 && f[12..14] == [8, 0] && f[14 + 22..14 + 24] == [0, 68]
    })
    .expect("no DHCPOFFER came out of the tap");
    let bootp = &offer[14 + 20 + 8..];
    assert_eq!(bootp[0], 2);
    assert_eq!(&bootp[4..8], &[1, 2, 3, 4]);
    assert_eq!(&bootp[16..20], &[100, 64, 7, 7]);
    assert_eq!(&offer[14 + 12..14 + 16], &[100, 64, 7, 6], "source address");
    drop(server);
    drop(tap);
    ns.run_in(|| {
        net::release_interface("ktap7-2", InterfaceKind::Tap).unwrap();
        LocalNetwork::remove().unwrap();
    });
    assert!(!ns.has_link("ktap7-2"));
}

#[test]
fn an_administrators_persistent_tap_is_used_and_not_deleted() {
    skip_unless_able!(false);
    let ns = Netns::new();
    ns.ip(&["tuntap", "add", "dev", "tapadm", "mode", "tap", "vnet_hdr"]);
    let sw = SwitchSpec::new("t-adm");
    let spec = InterfaceSpec {
        name: Some("tapadm".into()),
        ..switch_iface("t-adm")
    };
    let iface = ns.run_in(|| {
        net::ensure_switch(&sw).unwrap();
        net::start_vm_interface(&request("vm", 4, &spec, Some(&sw), &[])).unwrap()
    });
    assert_eq!(iface.ifname, "tapadm");
    assert!(ns
        .ip(&["-o", "link", "show", "tapadm"])
        .contains("master kbr-t-adm"));
    drop(iface);
    ns.run_in(|| net::release_interface("tapadm", InterfaceKind::Tap))
        .unwrap();
    let after = ns.ip(&["-o", "link", "show", "tapadm"]);
    assert!(!after.contains("master"), "{after}");
}

#[test]
fn a_bridge_deleted_by_hand_gets_its_ports_back_locked() {
    skip_unless_able!(false);
    let ns = Netns::new();
    let mut sw = SwitchSpec::new("t-back");
    sw.locked_lladdr = true;
    let spec = switch_iface("t-back");
    let (a, b) = ns.run_in(|| {
        net::ensure_switch(&sw).unwrap();
        let a = net::start_vm_interface(&request("a", 1, &spec, Some(&sw), &[])).unwrap();
        let b = net::start_vm_interface(&request("b", 2, &spec, Some(&sw), &[])).unwrap();
        (a, b)
    });
    let (port_a, port_b) = (a.port(true).unwrap(), b.port(true).unwrap());
    assert_eq!(port_a.bridge, "kbr-t-back");
    assert!(port_a.locked);
    let (tap_a, tap_b) = (a.tap.as_ref().unwrap(), b.tap.as_ref().unwrap());
    let wait = Duration::from_millis(1500);
    tap_a.write_frame(&test_frame(a.mac, 1)).unwrap();
    assert!(read_frame_where(tap_b, wait, is_test_frame(1)).is_some());

    // Behind the daemon's back: the bridge and the locking rules go.
    ns.ip(&["link", "del", "kbr-t-back"]);
    ns.exec(&["nft", "delete", "table", "bridge", "kapsel"]);
    ns.run_in(|| {
        assert_eq!(net::port_state(&port_a).unwrap(), net::PortState::NoBridge);
        // No bridge to join: left alone.
        assert_eq!(
            net::reattach_port(&port_a).unwrap(),
            net::PortState::NoBridge
        );
        // Made again (`reset switches`): the taps are not its ports yet.
        assert!(net::ensure_switch(&sw).unwrap().created);
        assert_eq!(net::port_state(&port_a).unwrap(), net::PortState::Detached);
    });
    tap_a.write_frame(&test_frame(a.mac, 2)).unwrap();
    assert!(
        read_frame_where(tap_b, Duration::from_millis(300), is_test_frame(2)).is_none(),
        "a frame crossed a bridge the taps are not ports of"
    );
    ns.run_in(|| {
        for port in [&port_a, &port_b] {
            assert_eq!(net::reattach_port(port).unwrap(), net::PortState::Detached);
            assert_eq!(net::port_state(port).unwrap(), net::PortState::Attached);
            // Idempotent.
            assert_eq!(net::reattach_port(port).unwrap(), net::PortState::Attached);
        }
    });
    let ports = ns.ip(&["-o", "link", "show", "master", "kbr-t-back"]);
    assert!(
        ports.contains("ktap1-0") && ports.contains("ktap2-0"),
        "{ports}"
    );
    assert!(ns.ruleset().contains("lock-ktap1-0"));
    // Frames pass again, and the lock holds again.
    tap_a
        .write_frame(&test_frame(MacAddr([2, 0, 0, 0, 0, 9]), 3))
        .unwrap();
    tap_a.write_frame(&test_frame(a.mac, 4)).unwrap();
    assert_eq!(markers_until(tap_b, 4, wait), vec![4]);

    // A guest that stopped meanwhile: nothing to put back, no lock made.
    drop(a);
    ns.run_in(|| {
        net::release_interface("ktap1-0", InterfaceKind::Tap).unwrap();
        assert_eq!(net::reattach_port(&port_a).unwrap(), net::PortState::Gone);
    });
    assert!(!ns.ruleset().contains("lock-ktap1-0"));
}
