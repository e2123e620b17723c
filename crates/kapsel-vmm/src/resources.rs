//! Every host resource a VM uses, opened once before the sandbox (which
//! takes away the filesystem and the syscalls to open anything) and reused
//! by every boot of the guest.

use crate::arch::x86_64::boot::BootFile;
use crate::config::{DiskConfig, NetConfig, TapSource, VmConfig};
use crate::console::Console;
use crate::devices::virtio::block::{BlockOptions, FastFile};
use crate::devices::virtio::net::tap::Tap;
use crate::devices::virtio::net::VNET_HDR_LEN;
use crate::error::{Error, Result};
use crate::user_files::UserCredentials;
use kapsel_image::{BlockBackend, ImageError};
use kvm_ioctls::Kvm;
use std::io;
use std::sync::{Arc, Mutex};

/// A disk image shared by the virtio-blk devices of successive boots: the
/// image (and its backing chain) stays open across guest reboots.
#[derive(Clone)]
pub struct SharedDisk(Arc<Mutex<Box<dyn BlockBackend>>>);

impl SharedDisk {
    /// Shares `backend`.
    pub fn new(backend: Box<dyn BlockBackend>) -> Self {
        SharedDisk(Arc::new(Mutex::new(backend)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Box<dyn BlockBackend>> {
        // A panic while holding the lock leaves a backend that is still
        // usable: its methods keep no state across a failed call.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl BlockBackend for SharedDisk {
    fn size(&self) -> u64 {
        self.lock().size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.lock().read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.lock().write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.lock().flush()
    }
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.lock().discard(offset, len)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64, may_unmap: bool) -> io::Result<()> {
        self.lock().write_zeroes(offset, len, may_unmap)
    }
    fn read_only(&self) -> bool {
        self.lock().read_only()
    }
}

/// An open disk and how the guest sees it.
pub struct OpenDisk {
    /// The image.
    pub backend: SharedDisk,
    /// Read-only flag, serial and caching.
    pub options: BlockOptions,
    /// The raw image's file for the io_uring fast path, opened (with
    /// O_DIRECT, through /proc) before the sandbox takes /proc away.
    pub fast: Option<FastFile>,
}

/// An open tap and the card's address.
pub struct OpenNet {
    /// The tap.
    pub tap: Arc<Tap>,
    /// The guest's MAC address (chosen once: a reboot keeps it).
    pub mac: [u8; 6],
}

/// The host side of one VM, open.
pub struct Resources {
    /// /dev/kvm.
    pub kvm: Kvm,
    /// The kernel image (None for a firmware boot).
    pub kernel: Option<BootFile>,
    /// The initrd.
    pub initrd: Option<BootFile>,
    /// The firmware image, for a boot without a kernel.
    pub firmware: Option<crate::arch::x86_64::firmware::FirmwareImage>,
    /// virtio-blk images, in order.
    pub disks: Vec<OpenDisk>,
    /// virtio-net taps, in order.
    pub nets: Vec<OpenNet>,
    /// Console output files and the terminal.
    pub console: Console,
}

impl Resources {
    /// Opens everything `cfg` names, after checking it against the host.
    pub fn open(cfg: &VmConfig) -> Result<Resources> {
        // Inherited descriptors first: opening anything else could take
        // the number of one that was not inherited after all, and the
        // message would then name the wrong file.
        check_inherited_fds(cfg)?;
        let nets = cfg.nets.iter().map(open_net).collect::<Result<_>>()?;
        let kvm = crate::vm::open_kvm()?;
        crate::vm::validate(cfg, &kvm)?;
        let firmware = match &cfg.firmware {
            Some(crate::config::Firmware::Bios(path)) => Some(
                crate::arch::x86_64::firmware::FirmwareImage::open(path, "--bios")?,
            ),
            None => None,
        };
        let kernel = if firmware.is_some() {
            None
        } else {
            Some(open_as(cfg, cfg.kernel_as_user, "kernel", || {
                BootFile::open("kernel", &cfg.kernel)
            })?)
        };
        let initrd = cfg
            .initrd
            .as_deref()
            .map(|p| {
                open_as(cfg, cfg.initrd_as_user, "initrd", || {
                    BootFile::open("initrd", p)
                })
            })
            .transpose()?;
        let disks = cfg
            .disks
            .iter()
            .map(|d| {
                let user = cfg.open_as.as_ref().filter(|_| d.as_user);
                open_as(cfg, d.as_user, "disk", || open_disk(d, user))
            })
            .collect::<Result<_>>()?;
        // The console last: it puts the terminal in raw mode.
        let console = Console::open(&cfg.console, cfg.virtio_console.as_ref())?;
        Ok(Resources {
            kvm,
            kernel,
            initrd,
            firmware,
            disks,
            nets,
            console,
        })
    }
}

/// Writes one byte on the inherited descriptor `fd` (`--ready-fd`) and
/// closes it: every resource is open. A supervisor that is gone is no
/// reason to stop the guest, so errors are ignored.
pub fn say_ready(fd: i32) {
    // SAFETY: fd is the inherited descriptor check_inherited_fds checked is
    // open and no tap's; it is written from a live byte and then closed,
    // once, here.
    unsafe {
        libc::write(fd, b"1".as_ptr().cast(), 1);
        libc::close(fd);
    }
}

/// Refuses one inherited descriptor named twice (two owners would close
/// it twice), and a `--ready-fd` that is not open.
fn check_inherited_fds(cfg: &VmConfig) -> Result<()> {
    let mut seen = Vec::new();
    if let Some(fd) = cfg.ready_fd {
        // SAFETY: F_GETFD only asks whether the descriptor is open.
        if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(Error::InvalidConfig(format!(
                "--ready-fd {fd}: not an inherited descriptor; pass the write end of a pipe \
                 left open across exec, numbered 3 or more"
            )));
        }
        seen.push(fd);
    }
    for net in &cfg.nets {
        if let TapSource::Fd(fd) = net.tap {
            if seen.contains(&fd) {
                return Err(Error::InvalidConfig(format!(
                    "--net fd={fd} is given twice; pass each card its own tap descriptor"
                )));
            }
            seen.push(fd);
        }
    }
    Ok(())
}

/// Runs `open` with the rights of `cfg.open_as` when `as_user` (see
/// [`crate::user_files`]), else with the VM process's own; `what` names
/// the file in messages.
fn open_as<T: Send>(
    cfg: &VmConfig,
    as_user: bool,
    what: &str,
    open: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    if !as_user {
        return open();
    }
    let Some(user) = &cfg.open_as else {
        return Err(Error::InvalidConfig(format!(
            "the {what} is to be opened with a user's rights, but no user is given; \
             add --open-as UID:GID"
        )));
    };
    let opened = user.run(open).map_err(|e| {
        Error::io(
            format!("opening the {what} with the rights of {}", user.describe()),
            e,
        )
    })?;
    opened.map_err(|e| match e {
        Error::File { what, path, source } if source.kind() == io::ErrorKind::PermissionDenied => {
            Error::InvalidConfig(format!(
                "{what} {}: permission denied for user {}: the user who starts the VM \
                 must be able to read it",
                path.display(),
                user.describe()
            ))
        }
        other => other,
    })
}

/// Opens a disk and its backing chain; `user` is the user whose rights
/// this thread has, when it has a user's.
fn open_disk(disk: &DiskConfig, user: Option<&UserCredentials>) -> Result<OpenDisk> {
    // The message names the image and the fix (format mismatch, missing
    // backing file, unreadable file). The backing chain is opened here too.
    let backend =
        kapsel_image::open(&disk.path, disk.format, disk.read_only).map_err(|e| {
            let denied = |source: &io::Error| source.kind() == io::ErrorKind::PermissionDenied;
            Error::InvalidConfig(match (user, &e) {
                (Some(u), ImageError::Open { path, source }) if denied(source) => {
                    format!(
                "disk {}: permission denied for user {}: the user who starts the VM must be \
                 able to {} it",
                path.display(),
                u.describe(),
                if disk.read_only { "read" } else { "read and write" }
            )
                }
                (
                    Some(u),
                    ImageError::MissingBacking {
                        image,
                        backing,
                        source,
                    },
                ) if denied(source) => format!(
                    "disk {}: its backing file {}: permission denied for user {}: the user who \
                 starts the VM must be able to read every file of the image's backing chain",
                    image.display(),
                    backing.display(),
                    u.describe()
                ),
                _ => format!("--disk: {e}"),
            })
        })?;
    let read_only = disk.read_only || backend.read_only();
    let fast = FastFile::open(backend.as_ref(), disk.cache, read_only);
    tracing::debug!(
        "--disk {}: {}",
        disk.path.display(),
        match &fast {
            Some(f) if f.is_direct() => "cache=none (O_DIRECT), io_uring",
            Some(_) => "cache=writeback, io_uring",
            None => "synchronous I/O through the page cache",
        }
    );
    Ok(OpenDisk {
        backend: SharedDisk::new(backend),
        options: BlockOptions {
            read_only: disk.read_only,
            serial: disk.serial.clone().unwrap_or_default(),
            cache: disk.cache,
        },
        fast,
    })
}

fn open_net(net: &NetConfig) -> Result<OpenNet> {
    let tap = match &net.tap {
        TapSource::Name(name) => Tap::open(name, VNET_HDR_LEN as i32).map_err(|e| {
            Error::InvalidConfig(format!(
                "--net tap={name}: cannot open the tap: {e}; {}",
                e.hint()
            ))
        })?,
        TapSource::Fd(fd) => Tap::from_fd(*fd, VNET_HDR_LEN as i32).map_err(|e| {
            Error::InvalidConfig(format!(
                "--net fd={fd}: {e}; pass a descriptor of a tap opened on /dev/net/tun with \
                 IFF_TAP|IFF_NO_PI|IFF_VNET_HDR and left open across exec"
            ))
        })?,
    };
    let mac = match net.mac {
        Some(mac) => mac,
        None => {
            // A random, locally administered, unicast address.
            let mut mac = [0x52, 0x54, 0, 0, 0, 0];
            getrandom::fill(&mut mac[3..])
                .map_err(|e| Error::io("choosing a MAC address", io::Error::other(e)))?;
            mac
        }
    };
    tracing::info!(
        "virtio-net on tap {} with MAC {}",
        tap.name(),
        mac.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    );
    Ok(OpenNet {
        tap: Arc::new(tap),
        mac,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kapsel_image::RawBackend;

    #[test]
    fn a_shared_disk_is_one_image_for_every_boot() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(4096).unwrap();
        let disk = SharedDisk::new(Box::new(RawBackend::from_file(file, false).unwrap()));
        let mut first_boot = disk.clone();
        first_boot.write_at(&[7; 512], 512).unwrap();
        first_boot.write_zeroes(0, 512, false).unwrap();
        drop(first_boot);
        let second_boot = disk.clone();
        let mut buf = [0u8; 512];
        second_boot.read_at(&mut buf, 512).unwrap();
        assert_eq!(buf, [7; 512]);
        assert_eq!(second_boot.size(), 4096);
        assert!(!second_boot.read_only());
    }

    #[test]
    fn an_inherited_descriptor_may_be_named_once() {
        let mut cfg = VmConfig::new("/dev/null");
        for fd in [5, 5] {
            cfg.nets.push(NetConfig {
                tap: TapSource::Fd(fd),
                mac: None,
            });
        }
        let err = check_inherited_fds(&cfg).unwrap_err();
        assert!(err.to_string().contains("fd=5 is given twice"), "{err}");
        assert_eq!(err.exit_code(), 2);
    }
}
