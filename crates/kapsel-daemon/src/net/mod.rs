//! Host networking for guests: switches (Linux bridges), taps and veths on
//! them, `local interface` addressing with NAT, and the built-in DHCP server.
