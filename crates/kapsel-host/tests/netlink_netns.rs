//! The rtnetlink client against the kernel, in network namespaces the test
//! makes for itself (one per thread, with `unshare(CLONE_NEWNET)`): the
//! host's namespace is never touched. Needs root; prints `SKIP: reason`
//! otherwise.

use kapsel_host::netlink::{link_up, Netlink};
use std::net::Ipv4Addr;
use std::sync::mpsc;

/// Why the tests cannot run here, if they cannot.
fn skip_reason() -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces and bridges need CAP_NET_ADMIN)");
    }
    None
}

/// Moves the calling thread into a new, empty network namespace.
fn enter_new_netns() {
    // SAFETY: unshare with a constant flag; it changes only this thread's
    // network namespace (a thread of the test's own).
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
}

fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// Runs `f` on a thread in a network namespace of its own.
fn in_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter_new_netns();
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// A thread parked in a network namespace of its own, until dropped: the
/// "container" a veth's peer goes to.
struct Peer {
    tid: i32,
    ask: mpsc::Sender<Box<dyn FnOnce() + Send>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Peer {
    fn new() -> Peer {
        let (tid_tx, tid_rx) = mpsc::channel();
        let (ask, jobs) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let thread = std::thread::spawn(move || {
            enter_new_netns();
            tid_tx.send(gettid()).unwrap();
            for job in jobs {
                job();
            }
        });
        Peer {
            tid: tid_rx.recv().unwrap(),
            ask,
            thread: Some(thread),
        }
    }

    /// Runs `f` in the peer's namespace and returns what it returns.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        self.ask
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .unwrap();
        rx.recv().expect("the peer's job panicked")
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let (dead, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.ask, dead));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn bridge_veth_ports_and_teardown() {
    if let Some(reason) = skip_reason() {
        eprintln!("SKIP: {reason}");
        return;
    }
    let peer = Peer::new();
    let peer_tid = peer.tid;
    in_netns(move || {
        let mut nl = Netlink::open().unwrap();
        assert_eq!(nl.link("kbr-test").unwrap(), None);

        // A bridge, named, with a MAC, an MTU, up.
        nl.create_link("kbr-test", "bridge").unwrap();
        let e = nl.create_link("kbr-test", "bridge").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        let br = nl.link("kbr-test").unwrap().unwrap();
        assert_eq!(br.kind.as_deref(), Some("bridge"));
        assert!(!br.is_up());
        nl.set_alias(br.index, "kapsel switch test").unwrap();
        nl.set_mac(br.index, [0xfe, 0xe1, 0xba, 0xd1, 0, 1])
            .unwrap();
        nl.set_mtu(br.index, 1400).unwrap();
        nl.set_up(br.index, true).unwrap();
        let br = nl.link_by_index(br.index).unwrap().unwrap();
        assert_eq!(br.name, "kbr-test");
        assert_eq!(br.alias.as_deref(), Some("kapsel switch test"));
        assert_eq!(br.mac, Some([0xfe, 0xe1, 0xba, 0xd1, 0, 1]));
        assert_eq!(br.mtu, Some(1400));
        assert!(br.is_up());

        // A veth pair: the host end up here, eth0 in the peer's namespace.
        let mac = [2, 0, 0, 0, 0, 7];
        nl.create_veth("kve-test", "eth0", peer_tid, Some(mac))
            .unwrap();
        let veth = nl.link("kve-test").unwrap().unwrap();
        assert_eq!(veth.kind.as_deref(), Some("veth"));
        assert!(veth.is_up());
        assert_eq!(nl.link("eth0").unwrap(), None, "the peer is not here");
        let inside = peer.run(|| {
            let mut nl = Netlink::open().unwrap();
            let before = nl.link("eth0").unwrap().unwrap();
            link_up(b"eth0\0").unwrap();
            let after = nl.link("eth0").unwrap().unwrap();
            (before, after, link_up(b"nope0\0"))
        });
        assert_eq!(inside.0.mac, Some(mac));
        assert_eq!(inside.0.kind.as_deref(), Some("veth"));
        assert!(!inside.0.is_up() && inside.1.is_up());
        assert_eq!(inside.2, Err(libc::ENODEV));

        // A second pair, both ends here (the peer in this thread's own
        // namespace): links that are no ports, to show the port list is
        // filtered. (No `dummy`: its module may be missing.)
        nl.create_veth("kvx-a", "kvx-b", gettid(), None).unwrap();
        let other = nl.link("kvx-a").unwrap().unwrap();
        let moving = nl.link("kvx-b").unwrap().unwrap();

        // Attach, list the ports, detach.
        assert_eq!(nl.ports(br.index).unwrap(), vec![]);
        nl.set_master(veth.index, Some(br.index)).unwrap();
        let ports = nl.ports(br.index).unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].name, "kve-test");
        assert_eq!(ports[0].master, Some(br.index));
        assert_eq!(nl.link("kve-test").unwrap().unwrap().master, Some(br.index));
        nl.set_master(veth.index, None).unwrap();
        assert_eq!(nl.ports(br.index).unwrap(), vec![]);
        assert_eq!(nl.link("kve-test").unwrap().unwrap().master, None);

        // Addresses.
        let gw = Ipv4Addr::new(100, 64, 1, 0);
        nl.add_ipv4(other.index, gw, 31).unwrap();
        nl.add_ipv4(other.index, gw, 31).unwrap(); // replaces: idempotent
        assert_eq!(nl.ipv4_addresses(other.index).unwrap(), vec![(gw, 31)]);

        // Moving a link into another namespace.
        nl.move_to_netns(moving.index, peer_tid as u32).unwrap();
        assert_eq!(nl.link("kvx-b").unwrap(), None);
        assert!(peer.run(|| Netlink::open().unwrap().link("kvx-b").unwrap().is_some()));

        // Teardown: deleting the host end takes the peer with it.
        nl.delete_link(veth.index).unwrap();
        assert_eq!(nl.link("kve-test").unwrap(), None);
        assert_eq!(nl.link_by_index(veth.index).unwrap(), None);
        assert!(peer.run(|| Netlink::open().unwrap().link("eth0").unwrap().is_none()));
        let e = nl.delete_link(veth.index).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV));
        nl.delete_link(br.index).unwrap();
        assert_eq!(nl.link("kbr-test").unwrap(), None);
    });
}

#[test]
fn a_tap_shows_as_a_tun_link_that_is_not_persistent() {
    if let Some(reason) = skip_reason() {
        eprintln!("SKIP: {reason}");
        return;
    }
    in_netns(|| {
        let tap = kapsel_host::tap::Tap::open("ktap-test", 12).unwrap();
        let mut nl = Netlink::open().unwrap();
        let link = nl.link(tap.name()).unwrap().unwrap();
        assert_eq!(link.kind.as_deref(), Some("tun"));
        assert_eq!(link.tun_persist, Some(false));
        drop(tap);
        assert_eq!(nl.link("ktap-test").unwrap(), None, "gone with its fd");
    });
}

#[test]
fn a_link_with_odd_bytes_fails_alone() {
    if let Some(reason) = skip_reason() {
        eprintln!("SKIP: {reason}");
        return;
    }
    if std::process::Command::new("ip").arg("-V").output().is_err() {
        eprintln!("SKIP: `ip` (iproute2) is not installed");
        return;
    }
    in_netns(|| {
        let mut nl = Netlink::open().unwrap();
        nl.create_link("kbr-odd", "bridge").unwrap();
        nl.create_veth("kdu-odd", "kdu-odd1", gettid(), None)
            .unwrap();
        let br = nl.link("kbr-odd").unwrap().unwrap();
        // An administrator's alias that is not UTF-8 (children inherit this
        // thread's namespace).
        let st = std::process::Command::new("ip")
            .args(["link", "set", "kdu-odd", "alias"])
            .arg(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"x\xff"))
            .status()
            .unwrap();
        assert!(st.success());
        // Our own links and the (filtered) port list are unaffected.
        assert!(nl.link("kbr-odd").unwrap().is_some());
        assert_eq!(nl.ports(br.index).unwrap(), vec![]);
        // The odd link itself cannot be read: an error, not a wrong answer.
        // (the old hand-written parser read it lossily; the crate refuses
        // the message, and the caller's error names the interface).
        let e = nl.link("kdu-odd").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    });
}
