//! Fuzzes the DHCP server with what a guest may send: any datagram must get
//! a well-formed reply or none, never a panic.
#![no_main]

use kapsel_config::MacAddr;
use kapsel_daemon::net::{handle_packet, DhcpLease};
use libfuzzer_sys::fuzz_target;
use std::net::Ipv4Addr;

fuzz_target!(|data: &[u8]| {
    // The first byte picks a locked or an open interface.
    let locked = data.first().is_some_and(|b| b & 1 == 1);
    let lease = DhcpLease {
        client: Ipv4Addr::new(100, 64, 1, 3),
        server: Ipv4Addr::new(100, 64, 1, 2),
        prefix_len: 31,
        router: Ipv4Addr::new(100, 64, 1, 2),
        dns: vec![Ipv4Addr::new(192, 0, 2, 53)],
        lease_secs: 86_400,
        client_mac: locked.then_some(MacAddr([0xfe, 0xe1, 0xbb, 1, 2, 3])),
        hostname: Some("vm1".into()),
    };
    if let Some(reply) = handle_packet(&lease, data.get(1..).unwrap_or_default()) {
        assert!(reply.bytes.len() >= 300);
        assert_eq!(reply.bytes[0], 2, "a BOOTREPLY");
        assert_eq!(&reply.bytes[236..240], &[99, 130, 83, 99]);
    }
});
