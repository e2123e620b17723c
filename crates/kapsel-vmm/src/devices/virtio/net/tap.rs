//! A Linux tap interface opened through /dev/net/tun, with the virtio-net
//! header in front of every frame (IFF_VNET_HDR).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
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
/// Longest interface name, without the NUL.
pub const IFNAMSIZ: usize = 15;

/// struct ifreq as TUNSETIFF reads it: a name and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open tap interface.
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens the tap `name`, creating it if it does not exist (a tap the
    /// VMM creates disappears when the VMM exits). Frames carry a virtio-net
    /// header of `vnet_hdr_len` bytes.
    pub fn open(name: &str, vnet_hdr_len: i32) -> io::Result<Tap> {
        if name.is_empty() || name.len() > IFNAMSIZ || name.contains(['/', ' ', '\0']) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("\"{name}\" is not a valid interface name (1 to {IFNAMSIZ} characters)"),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")?;
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `req`
        // is laid out as (40 bytes); the fd is the tun device just opened.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: TUNSETVNETHDRSZ reads one int from the given pointer.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ as _, &vnet_hdr_len) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let end = req.name.iter().position(|b| *b == 0).unwrap_or(16);
        Ok(Tap {
            file,
            name: String::from_utf8_lossy(&req.name[..end]).into_owned(),
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
        // SAFETY: TUNSETVNETHDRSZ reads one int from the given pointer.
        if unsafe { libc::ioctl(fd, TUNSETVNETHDRSZ as _, &vnet_hdr_len) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let end = req.name.iter().position(|b| *b == 0).unwrap_or(16);
        Ok(Tap {
            file: File::from(owned),
            name: String::from_utf8_lossy(&req.name[..end]).into_owned(),
        })
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tells the kernel which offloaded frames the reader (the guest) takes.
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        if unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD as _,
                flags as libc::c_ulong,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads one frame (with its header); `WouldBlock` when none is queued.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: reading into a valid, writable buffer of the given length.
        let n = unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Writes one frame (with its header).
    pub fn write(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: writing from a valid buffer of the given length.
        let n = unsafe { libc::write(self.file.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused_before_any_syscall() {
        for name in ["", "a-name-that-is-too-long", "a/b", "a b"] {
            let err = Tap::open(name, 12).err().unwrap();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{name}");
        }
    }

    #[test]
    fn descriptors_that_are_not_taps_are_refused_and_left_open() {
        let err = Tap::from_fd(1, 12).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("standard"), "{err}");
        let file = File::open("/dev/null").unwrap();
        let fd = file.as_raw_fd();
        let err = Tap::from_fd(fd, 12).err().unwrap();
        assert!(err.to_string().contains("not an attached tun/tap"), "{err}");
        // Still ours: closing it through `file` must work.
        // SAFETY: F_GETFD only inspects the descriptor table.
        assert!(unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0);
        drop(file);
        let err = Tap::from_fd(fd, 12).err().unwrap();
        assert!(err.to_string().contains("not open"), "{err}");
    }

    #[test]
    fn ifreq_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }
}
