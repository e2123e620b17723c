//! Tap devices on /dev/net/tun, with the virtio-net header in front of
//! every frame (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`).
//!
//! A tap created here is not persistent: it lives as long as a descriptor
//! refers to it. kapseld creates it, configures it, hands the descriptor to
//! the VM process (inherited across exec) and closes its own copy, so the
//! tap goes away with the VM process however that ends. `kapsel run
//! --net tap=NAME` opens one itself; `--net fd=N` takes over an inherited
//! one ([`Tap::from_fd`]).

use crate::ifname::{validate_ifname, InvalidIfname};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
/// TUNSETOFFLOAD: the reader takes frames with a partial checksum.
pub const TUN_F_CSUM: u32 = 0x01;
/// TUNSETOFFLOAD: the reader takes TCP/IPv4 segmentation-offload frames.
pub const TUN_F_TSO4: u32 = 0x02;
/// TUNSETOFFLOAD: the reader takes TCP/IPv6 segmentation-offload frames.
pub const TUN_F_TSO6: u32 = 0x04;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// `struct ifreq` as TUNSETIFF reads it: a name and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn name(&self) -> String {
        let end = self.name.iter().position(|b| *b == 0).unwrap_or(16);
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }
}

/// Why a tap could not be opened; [`TapError::hint`] says what to check.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is not a valid interface name.
    #[error(transparent)]
    InvalidName(#[from] InvalidIfname),
    /// /dev/net/tun could not be opened.
    #[error("opening /dev/net/tun: {0}")]
    OpenTun(#[source] io::Error),
    /// The kernel refused to create or attach the tap (TUNSETIFF).
    #[error("{0}")]
    Attach(#[source] io::Error),
    /// The kernel refused the virtio-net header size (TUNSETVNETHDRSZ).
    #[error("setting the virtio-net header size: {0}")]
    VnetHeader(#[source] io::Error),
}

impl TapError {
    /// What to check or change.
    pub fn hint(&self) -> &'static str {
        match self {
            TapError::InvalidName(_) => "choose another interface name",
            TapError::OpenTun(_) => {
                "/dev/net/tun must exist and be writable (modprobe tun; run as root)"
            }
            TapError::Attach(e) => match e.raw_os_error() {
                Some(libc::EBUSY) => {
                    "another process has it open (is a VM using it still running?)"
                }
                Some(libc::EINVAL) => {
                    "an interface of that name exists and is not a tap; \
                     pick another `interface` name"
                }
                Some(libc::EPERM) => "creating taps needs CAP_NET_ADMIN (run as root)",
                _ => "check `ip link show` for a conflicting interface",
            },
            TapError::VnetHeader(_) => "the kernel refused the virtio-net header size",
        }
    }

    /// The system's error, if the kernel refused something.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            TapError::InvalidName(_) => None,
            TapError::OpenTun(e) | TapError::Attach(e) | TapError::VnetHeader(e) => Some(e),
        }
    }
}

/// An open tap device: the descriptor frames are read and written through.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
}

impl Tap {
    /// Creates the tap `name` (or attaches to an existing persistent tap of
    /// that name) with a `vnet_hdr_len`-byte virtio-net header in front of
    /// every frame; the descriptor is non-blocking and close-on-exec.
    pub fn open(name: &str, vnet_hdr_len: i32) -> Result<Tap, TapError> {
        validate_ifname(name)?;
        let fd: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?
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
            return Err(TapError::Attach(io::Error::last_os_error()));
        }
        set_vnet_hdr_len(fd.as_raw_fd(), vnet_hdr_len).map_err(TapError::VnetHeader)?;
        Ok(Tap {
            fd,
            name: req.name(),
        })
    }

    /// Takes over the tap already open on descriptor `fd` (inherited from
    /// the daemon, which creates taps on bridges and keeps the privilege
    /// to do so). The descriptor must be a tap opened with `IFF_TAP |
    /// IFF_NO_PI | IFF_VNET_HDR`; anything else is refused without taking
    /// it over. It is made non-blocking and close-on-exec.
    pub fn from_fd(fd: RawFd, vnet_hdr_len: i32) -> io::Result<Tap> {
        let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
        if fd < 3 {
            return Err(invalid(format!(
                "descriptor {fd} is standard input, output or error, not a tap"
            )));
        }
        // SAFETY: F_GETFD only inspects the descriptor table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(invalid(format!("descriptor {fd} is not open")));
        }
        let mut req = IfReq {
            name: [0; 16],
            flags: 0,
            _pad: [0; 22],
        };
        // SAFETY: TUNGETIFF writes a struct ifreq, which `req` is laid out
        // as; on a descriptor that is not a tun device it fails (EBADFD,
        // ENOTTY or EINVAL) without writing.
        if unsafe { libc::ioctl(fd, TUNGETIFF as _, &mut req) } < 0 {
            let e = io::Error::last_os_error();
            return Err(invalid(format!(
                "descriptor {fd} is not an attached tun/tap device ({e})"
            )));
        }
        let want = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        if req.flags & want != want {
            return Err(invalid(format!(
                "descriptor {fd} is a tun/tap device without IFF_TAP | IFF_NO_PI | IFF_VNET_HDR \
                 (flags {:#x}); open it with those flags",
                req.flags
            )));
        }
        // SAFETY: the descriptor is open (checked above) and from here on
        // owned by this Tap only; the caller hands it over.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: F_GETFL/F_SETFL/F_SETFD on a descriptor we own.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        set_vnet_hdr_len(fd, vnet_hdr_len)?;
        Ok(Tap {
            fd: owned,
            name: req.name(),
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

    /// Tells the kernel which offloaded frames the reader (the guest) takes
    /// (`TUN_F_*`).
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        if unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                TUNSETOFFLOAD as _,
                flags as libc::c_ulong,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads one frame with its header; `WouldBlock` when none is queued.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: reading into a valid, writable buffer of the given length.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Writes one frame, preceded by its header.
    pub fn write(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: writing from a valid buffer of the given length.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

fn set_vnet_hdr_len(fd: RawFd, len: i32) -> io::Result<()> {
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer.
    if unsafe { libc::ioctl(fd, TUNSETVNETHDRSZ as _, &len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
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
        for name in ["", "a-name-that-is-too-long", "a/b", "a b"] {
            let err = Tap::open(name, 12).unwrap_err();
            assert!(matches!(err, TapError::InvalidName(_)), "{name}: {err}");
            assert!(err.io_error().is_none());
        }
    }

    #[test]
    fn hints_follow_the_kernel_error() {
        let attach = |errno| TapError::Attach(io::Error::from_raw_os_error(errno));
        assert!(attach(libc::EBUSY).hint().contains("another process"));
        assert!(attach(libc::EPERM).hint().contains("CAP_NET_ADMIN"));
        assert!(attach(libc::EINVAL).hint().contains("not a tap"));
    }

    #[test]
    fn descriptors_that_are_not_taps_are_refused_and_left_open() {
        let err = Tap::from_fd(1, 12).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("standard"), "{err}");
        let file = std::fs::File::open("/dev/null").unwrap();
        let fd = file.as_raw_fd();
        let err = Tap::from_fd(fd, 12).unwrap_err();
        assert!(err.to_string().contains("not an attached tun/tap"), "{err}");
        // Still ours: closing it through `file` must work.
        // SAFETY: F_GETFD only inspects the descriptor table.
        assert!(unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0);
        drop(file);
        let err = Tap::from_fd(fd, 12).unwrap_err();
        assert!(err.to_string().contains("not open"), "{err}");
    }
}
