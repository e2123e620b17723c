//! Creating the host side of a VM's network interface: a tap device.
//!
//! The tap is created with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and *not*
//! made persistent: it lives as long as an open file descriptor refers to
//! it. The daemon creates it, configures it, passes the descriptor to the VM
//! process (inherited across exec) and closes its own copy, so the tap disappears by
//! itself when the VM process ends, however it ends; nothing is left behind
//! but the firewall rules, which [`super::release_interface`] removes.

use super::NetError;
use kapsel_host::tap::{Tap, TapError};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// The virtio-net header in front of every frame on the tap: 12 bytes, the
/// `virtio_net_hdr_v1` layout Kapsel's virtio-net device uses
/// (`kapsel_vmm::devices::virtio::net::VNET_HDR_LEN`).
pub const TAP_VNET_HDR_LEN: usize = 12;

/// An open tap device: the descriptor a VM reads and writes frames through.
#[derive(Debug)]
pub struct TapDevice(Tap);

impl TapDevice {
    /// Creates the tap `name` (or attaches to an existing persistent tap of
    /// that name) with a [`TAP_VNET_HDR_LEN`]-byte virtio-net header; the
    /// descriptor is non-blocking and close-on-exec.
    pub fn create(name: &str) -> Result<TapDevice, NetError> {
        Tap::open(name, TAP_VNET_HDR_LEN as i32)
            .map(TapDevice)
            .map_err(|e| {
                let hint = e.hint();
                match e {
                    TapError::InvalidName(e) => e.into(),
                    TapError::OpenTun(source)
                    | TapError::Attach(source)
                    | TapError::VnetHeader(source) => NetError::Tap {
                        ifname: name.to_string(),
                        source,
                        hint,
                    },
                }
            })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// Gives up the descriptor, to pass it to the VM process.
    pub fn into_fd(self) -> OwnedFd {
        self.0.into_fd()
    }

    /// Writes one frame, preceded by its virtio-net header, as a VM does.
    pub fn write_frame(&self, frame_with_header: &[u8]) -> io::Result<usize> {
        self.0.write(frame_with_header)
    }

    /// Reads one frame with its virtio-net header; `WouldBlock` when none
    /// is queued.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl AsFd for TapDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused_before_any_syscall() {
        for name in ["", "a-name-that-is-too-long", "a/b"] {
            assert!(matches!(
                TapDevice::create(name),
                Err(NetError::InvalidIfname { .. })
            ));
        }
    }
}
