//! Creating the host side of a VM's network interface: a tap device.
//!
//! The tap is created with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and *not*
//! made persistent: it lives as long as an open file descriptor refers to
//! it. The daemon creates it, configures it, passes the descriptor to the VM
//! process (SCM_RIGHTS) and closes its own copy, so the tap disappears by
//! itself when the VM process ends, however it ends; nothing is left behind
//! but the firewall rules, which [`super::release_interface`] removes.

use super::{validate_ifname, NetError};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// The virtio-net header in front of every frame on the tap: 12 bytes, the
/// `virtio_net_hdr_v1` layout Kapsel's virtio-net device uses
/// (`kapsel_vmm::devices::virtio::net::VNET_HDR_LEN`).
pub const TAP_VNET_HDR_LEN: usize = 12;

/// `struct ifreq` as TUNSETIFF reads it: a name and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open tap device: the descriptor a VM reads and writes frames through.
#[derive(Debug)]
pub struct TapDevice {
    fd: OwnedFd,
    name: String,
}

impl TapDevice {
    /// Creates the tap `name` (or attaches to an existing persistent tap of
    /// that name) with a [`TAP_VNET_HDR_LEN`]-byte virtio-net header; the
    /// descriptor is non-blocking and close-on-exec.
    pub fn create(name: &str) -> Result<TapDevice, NetError> {
        validate_ifname(name)?;
        let tap_err = |source: io::Error, hint| NetError::Tap {
            ifname: name.to_string(),
            source,
            hint,
        };
        let fd: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| {
                tap_err(
                    e,
                    "/dev/net/tun must exist and be writable (modprobe tun; run as root)",
                )
            })?
            .into();
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `req` is
        // laid out as (40 bytes); the fd is the tun device just opened.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req) } < 0 {
            let e = io::Error::last_os_error();
            let hint = match e.raw_os_error() {
                Some(libc::EBUSY) => {
                    "another process has it open (is a VM using it still running?)"
                }
                Some(libc::EINVAL) => {
                    "an interface of that name exists and is not a tap; \
                     pick another `interface` name"
                }
                Some(libc::EPERM) => "creating taps needs CAP_NET_ADMIN (run as root)",
                _ => "check `ip link show` for a conflicting interface",
            };
            return Err(tap_err(e, hint));
        }
        let hdr_len = TAP_VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETVNETHDRSZ as _, &hdr_len) } < 0 {
            return Err(tap_err(
                io::Error::last_os_error(),
                "the kernel refused the virtio-net header size",
            ));
        }
        let end = req.name.iter().position(|b| *b == 0).unwrap_or(16);
        Ok(TapDevice {
            fd,
            name: String::from_utf8_lossy(&req.name[..end]).into_owned(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Gives up the descriptor, to pass it to the VM process.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Writes one frame, preceded by its virtio-net header, as a VM does.
    pub fn write_frame(&self, frame_with_header: &[u8]) -> io::Result<usize> {
        // SAFETY: writing from a valid buffer of the given length.
        let n = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                frame_with_header.as_ptr().cast(),
                frame_with_header.len(),
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Reads one frame with its virtio-net header; `WouldBlock` when none
    /// is queued.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: reading into a valid, writable buffer of the given length.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

impl AsFd for TapDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }

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
