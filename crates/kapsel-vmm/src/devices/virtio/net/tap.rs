//! A Linux tap interface opened through /dev/net/tun, with the virtio-net
//! header in front of every frame (IFF_VNET_HDR): the host's
//! ([`kapsel_host::tap`]), shared with kapseld, which creates the taps of
//! switch and local interfaces and hands them over by descriptor.

pub use kapsel_host::tap::{Tap, TapError, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6};
