//! Kapsel's host OS helpers, in one place: the small wrappers around Linux
//! interfaces that the daemon, the VM process, the container runtime and
//! the command line all need.
//!
//! - [`ifname`]: the rule for network interface names;
//! - [`tap`]: tap devices on /dev/net/tun with the virtio-net header;
//! - [`netlink`]: the rtnetlink requests for links and addresses (on the
//!   `netlink-packet-route` and `netlink-sys` crates), and the one ioctl
//!   that brings a link up after `clone`;
//! - [`caps`]: capability sets and dropping capabilities;
//! - [`term`]: raw terminal mode and window sizes;
//! - [`signals`]: signals blocked and read through a signalfd;
//! - [`fd`]: pipes and eventfds as owned descriptors.
//!
//! Everything here acts on the calling thread's view of the host (its
//! network namespace, its terminal, its signal mask), holds no state of its
//! own and knows nothing of guests: policy (which capabilities a container
//! keeps, which names Kapsel gives its interfaces) stays with the callers.

pub mod caps;
pub mod fd;
pub mod ifname;
pub mod netlink;
pub mod signals;
pub mod tap;
pub mod term;

pub use ifname::{validate_ifname, InvalidIfname, IFNAMSIZ};

/// The calling thread's `errno`; `EIO` if there is none. Allocation-free,
/// so safe in a child after `clone`.
pub fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}
